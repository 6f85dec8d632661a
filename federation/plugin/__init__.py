"""Plugin loading and the typed facade through which components call hooks.

Usage::

    from federation.plugin import get_plugins, hookimpl

    plugins = get_plugins()
    strategy = plugins.strategy("contiguous")
    backend = plugins.backend("file", path=".fedkafka/map.json")

Writing a plugin: implement hooks from :mod:`federation.plugin.hookspecs` with ``@hookimpl`` in
a module and name that module in your package's ``fedkafka`` entry-point group::

    [project.entry-points.fedkafka]
    myplugin = "my_package.fedkafka_plugin"
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, cast

import pluggy
import structlog

from federation import NAME
from federation.core.errors import ConfigError, FedKafkaError
from federation.core.model import AuthDecision, ClusterState, FederationMap, Principal
from federation.core.strategy import MappingStrategy
from federation.plugin import hookspecs
from federation.security.sasl import SaslAuthenticator, SingleRound
from federation.store.mapstore import BackendInfo, MetadataBackend

__all__ = [
    "DEFAULT_PLUGINS",
    "PluginError",
    "Plugins",
    "get_plugins",
    "hookimpl",
    "make_plugin_manager",
    "parse_store",
]

log = structlog.get_logger(__name__)

#: The marker for hook implementations; the one public import for plugin authors.
hookimpl = pluggy.HookimplMarker(NAME)

#: Built-in plugins, registered exactly as third-party ones (each module under its name).
DEFAULT_PLUGINS: tuple[str, ...] = (
    "fedkafka_builtin.strategies",
    "fedkafka_builtin.file_backend",
    "fedkafka_builtin.zookeeper_backend",
    "fedkafka_builtin.auth_default",
    "fedkafka_builtin.acl",
    "fedkafka_builtin.sasl_plain",
    "fedkafka_builtin.sasl_scram",
    "fedkafka_builtin.sasl_oauthbearer",
    "fedkafka_builtin.routing_default",
)


class PluginError(FedKafkaError):
    """A plugin is missing, broken, or clashes with another (a user-facing error)."""

    exit_code = 2


def make_plugin_manager(*, entry_points: bool = True,
                        blocked: Iterable[str] = ()) -> pluggy.PluginManager:
    """A plugin manager with the built-in plugins and (optionally) installed ones.

    :param entry_points: also load plugins from the ``fedkafka`` entry-point group.
    :param blocked: plugin names not to register (a built-in module name such as
        ``"fedkafka_builtin.auth_default"``, or an entry-point name).
    :raises PluginError: if a plugin implements a hook that does not exist.
    """
    pm = pluggy.PluginManager(NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if not pm.is_blocked(module_name):
            pm.register(importlib.import_module(module_name), name=module_name)
    if entry_points:
        pm.load_setuptools_entrypoints(NAME)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginError(str(e)) from e
    return pm


class Plugins:
    """Typed access to every hook. Components use this, never ``pm.hook``."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm

    @property
    def manager(self) -> pluggy.PluginManager:
        """The underlying manager (for listing plugins, e.g. ``fedkafka plugins``)."""
        return self._pm

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register an in-process plugin object or module (tests, embedding)."""
        self._pm.register(plugin, name=name)
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as e:
            self._pm.unregister(plugin)
            raise PluginError(str(e)) from e
        self._clear_caches()

    def unregister(self, plugin: object) -> None:
        self._pm.unregister(plugin)
        self._clear_caches()

    def _clear_caches(self) -> None:
        for cached in ("strategies", "backends"):
            self.__dict__.pop(cached, None)

    # -- mapping strategies ----------------------------------------------------------------

    @functools.cached_property
    def strategies(self) -> Mapping[str, MappingStrategy]:
        """Every strategy by name. :raises PluginError: on a duplicate name."""
        registry: dict[str, MappingStrategy] = {}
        origin: dict[str, str] = {}
        for plugin_name, provided in self._each(self._pm.hook.fedkafka_mapping_strategies):
            for strategy in cast(list[MappingStrategy], provided):
                if strategy.name in registry:
                    raise PluginError(
                        f"mapping strategy {strategy.name!r} is provided by both "
                        f"{origin[strategy.name]} and {plugin_name}"
                    )
                registry[strategy.name] = strategy
                origin[strategy.name] = plugin_name
        return MappingProxyType(registry)

    def strategy(self, name: str) -> MappingStrategy:
        """The strategy called ``name``. :raises PluginError: listing the available ones."""
        try:
            return self.strategies[name]
        except KeyError:
            available = ", ".join(sorted(self.strategies))
            raise PluginError(
                f"unknown mapping strategy {name!r}; available: {available}"
            ) from None

    # -- metadata backends -----------------------------------------------------------------

    @functools.cached_property
    def backends(self) -> Mapping[str, BackendInfo]:
        """Every metadata backend by name. :raises PluginError: on a duplicate name."""
        registry: dict[str, BackendInfo] = {}
        for plugin_name, provided in self._each(self._pm.hook.fedkafka_metadata_backends):
            for info in cast(list[BackendInfo], provided):
                if info.name in registry:
                    raise PluginError(
                        f"metadata backend {info.name!r} is provided twice (again by {plugin_name})"
                    )
                registry[info.name] = info
        return MappingProxyType(registry)

    def backend(self, name: str, **options: Any) -> MetadataBackend:
        """Build the metadata backend called ``name`` with ``options``."""
        try:
            info = self.backends[name]
        except KeyError:
            available = ", ".join(sorted(self.backends))
            raise PluginError(
                f"unknown metadata backend {name!r}; available: {available}"
            ) from None
        return info.factory(**options)

    def parse_store(self, spec: str, name: str = "store") -> tuple[str, dict[str, Any]]:
        """A store spec ``BACKEND:LOCATION`` → (backend name, its factory's options); the
        backend's plugin parses the location (:attr:`BackendInfo.parse_location`).

        :param name: what to call the spec in an error (``"--store"``, a config field).
        :raises ConfigError: naming ``name``, the format and the valid backends.
        """
        backends = self.backends
        examples = " or ".join(b.example for _, b in sorted(backends.items()) if b.example)
        kind, sep, rest = spec.partition(":")
        if not sep or not kind or not rest:
            raise ConfigError(f"{name} {spec!r} must look like BACKEND:LOCATION"
                              + (f", e.g. {examples}" if examples else ""))
        info = backends.get(kind)
        if info is None:
            raise ConfigError(f"{name} {spec!r}: unknown metadata backend {kind!r}; valid: "
                              f"{', '.join(sorted(backends))}")
        if info.parse_location is None:
            return kind, {"location": rest}
        return kind, info.parse_location(rest, name)

    # -- security --------------------------------------------------------------------------

    def sasl_mechanisms(self, federation_map: FederationMap | None = None) -> list[str]:
        """Every SASL mechanism some plugin authenticates, without duplicates, in order."""
        results = cast(list[list[str]], self._pm.hook.fedkafka_sasl_mechanisms(
            federation_map=federation_map))
        return list(dict.fromkeys(m for mechanisms in results for m in mechanisms))

    def sasl_authenticator(self, mechanism: str,
                           federation_map: FederationMap) -> SaslAuthenticator:
        """One connection's authenticator for ``mechanism``: a plugin's multi-round one,
        else one round through ``fedkafka_authenticate``."""
        found = self._pm.hook.fedkafka_sasl_authenticator(mechanism=mechanism,
                                                          federation_map=federation_map)
        if found is not None:
            return cast(SaslAuthenticator, found)
        return SingleRound(lambda auth_bytes: self.authenticate(mechanism, auth_bytes,
                                                                federation_map))

    def authenticate(self, mechanism: str, auth_bytes: bytes,
                     federation_map: FederationMap | None = None) -> Principal | None:
        """The principal for these credentials, or None if no plugin accepts them.

        :raises PermissionError: if a plugin rejected the credentials outright.
        """
        result = self._pm.hook.fedkafka_authenticate(mechanism=mechanism, auth_bytes=auth_bytes,
                                                     federation_map=federation_map)
        return cast(Principal | None, result)

    def authorize(self, principal: Principal, operation: str, resource_type: str,
                  resource_name: str, federation_map: FederationMap | None = None) -> bool:
        """Whether the request is allowed: one DENY wins, else one ALLOW; no answer denies."""
        answers = cast(list[AuthDecision], self._pm.hook.fedkafka_authorize(
            principal=principal, operation=operation, resource_type=resource_type,
            resource_name=resource_name, federation_map=federation_map))
        return AuthDecision.DENY not in answers and AuthDecision.ALLOW in answers

    # -- routing ---------------------------------------------------------------------------

    def route(self, client_id: str | None, federation_map: FederationMap) -> str:
        """The pool that serves ``client_id`` (the map's default pool if no plugin answers)."""
        pool = self._pm.hook.fedkafka_route_client(client_id=client_id,
                                                   federation_map=federation_map)
        return cast(str | None, pool) or federation_map.default_pool

    def coordination_cluster(self, group_id: str, federation_map: FederationMap) -> str | None:
        """The cluster whose coordinator serves ``group_id`` (None if none is configured)."""
        cluster = self._pm.hook.fedkafka_choose_coordination_cluster(
            group_id=group_id, federation_map=federation_map)
        return cast(str | None, cluster) or federation_map.coordination_cluster

    # -- observers -------------------------------------------------------------------------

    def notify_map_published(self, old: FederationMap | None, new: FederationMap) -> None:
        self._observe(self._pm.hook.fedkafka_map_published, old=old, new=new)

    def notify_cluster_state_changed(self, cluster_id: str, old_state: ClusterState | None,
                                     new_state: ClusterState) -> None:
        self._observe(self._pm.hook.fedkafka_cluster_state_changed, cluster_id=cluster_id,
                      old_state=old_state, new_state=new_state)

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _impls(hook: pluggy.HookCaller) -> list[pluggy.HookImpl]:
        """Plain (non-wrapper) implementations, in pluggy's own call order."""
        return [impl for impl in reversed(hook.get_hookimpls())
                if not (impl.hookwrapper or impl.wrapper)]

    def _each(self, hook: pluggy.HookCaller, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call each implementation separately, to know who answered: (plugin name, result)."""
        results = []
        for impl in self._impls(hook):
            result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            if result is not None:
                results.append((impl.plugin_name, result))
        return results

    def _observe(self, hook: pluggy.HookCaller, **kwargs: Any) -> None:
        """Call every observer; one failing observer neither stops the others nor the caller."""
        for impl in self._impls(hook):
            call: Callable[..., object] = impl.function
            try:
                call(**{arg: kwargs[arg] for arg in impl.argnames})
            except Exception:
                log.exception("plugin observer failed", hook=hook.name, plugin=impl.plugin_name)


def parse_store(spec: str, name: str = "store") -> tuple[str, dict[str, Any]]:
    """:meth:`Plugins.parse_store` with the process's plugins."""
    return get_plugins().parse_store(spec, name)


@functools.cache
def get_plugins() -> Plugins:
    """The process-wide facade over the built-in and installed plugins (built once)."""
    return Plugins(make_plugin_manager())
