"""Plugin loading, the facade, and one test per hook (named after it)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pluggy
import pytest
from fedkafka_builtin.strategies import Contiguous
from structlog.testing import capture_logs

from federation import NAME
from federation.core.model import (
    ANONYMOUS,
    NO_MECHANISM,
    AuthDecision,
    ClusterState,
    FederationMap,
    PhysicalCluster,
    Principal,
    ProxyEndpoint,
    RoutingRule,
)
from federation.core.strategy import DistributingStrategy
from federation.plugin import (
    DEFAULT_PLUGINS,
    PluginError,
    Plugins,
    get_plugins,
    hookimpl,
    make_plugin_manager,
)

EXAMPLE = Path(__file__).parents[1] / "fixtures" / "example_plugin" / "fedkafka_example_plugin.py"

A = PhysicalCluster("A", "a:9092")
B = PhysicalCluster("B", "b:9092")


@pytest.fixture
def plugins() -> Plugins:
    return Plugins(make_plugin_manager(entry_points=False))


def small_map(**kw: object) -> FederationMap:
    return FederationMap(
        version=1, clusters={"A": A, "B": B}, coordination_cluster="A",
        pools={"default": (ProxyEndpoint(1, "p1", 9192),),
               "producer": (ProxyEndpoint(2, "p2", 9192),)},
        routing=(RoutingRule(r"orders-.*", "producer"),),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def example_module() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("fedkafka_example_plugin", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("fedkafka_example_plugin", None)


# -- loading -----------------------------------------------------------------------------------


def test_builtins_are_registered_like_third_party_plugins() -> None:
    pm = make_plugin_manager(entry_points=False)
    assert pm.project_name == NAME == "fedkafka"
    for name in DEFAULT_PLUGINS:
        plugin = pm.get_plugin(name)
        assert plugin is not None and plugin.__name__ == name


def test_get_plugins_is_built_once() -> None:
    assert get_plugins() is get_plugins()
    assert "contiguous" in get_plugins().strategies


def test_a_default_plugin_can_be_blocked() -> None:
    plugins = Plugins(make_plugin_manager(entry_points=False,
                                          blocked=["fedkafka_builtin.auth_default"]))
    assert plugins.authenticate(NO_MECHANISM, b"") is None
    assert plugins.authorize(ANONYMOUS, "Read", "Topic", "t") is False  # no answer denies


def test_implementing_an_unknown_hook_fails_at_start(plugins: Plugins) -> None:
    class Typo:
        @hookimpl
        def fedkafka_mapping_strategy(self) -> list[object]:  # missing "s"
            return []

    with pytest.raises(PluginError, match="unknown hook 'fedkafka_mapping_strategy'"):
        plugins.register(Typo())
    assert not any(isinstance(p, Typo) for p in plugins.manager.get_plugins())


def test_entry_point_plugins_are_loaded(monkeypatch: pytest.MonkeyPatch,
                                        example_module: ModuleType) -> None:
    """``load_setuptools_entrypoints`` runs after the built-ins (real install: later test)."""
    loaded: list[str] = []

    def fake_load(self: pluggy.PluginManager, group: str, name: str | None = None) -> int:
        loaded.append(group)
        self.register(example_module, name="example")
        return 1

    monkeypatch.setattr(pluggy.PluginManager, "load_setuptools_entrypoints", fake_load)
    plugins = Plugins(make_plugin_manager())
    assert loaded == ["fedkafka"]
    assert "reverse_contiguous" in plugins.strategies


# -- partition mapping -------------------------------------------------------------------------


def test_fedkafka_mapping_strategies(plugins: Plugins) -> None:
    assert set(plugins.strategies) == {"contiguous", "round_robin", "stable", "weighted"}
    parts = plugins.strategy("round_robin").layout("t", 4, [A, B], "t.fk")
    assert [(p.active.cluster, p.active.partition) for p in parts] == [
        ("A", 0), ("B", 0), ("A", 1), ("B", 1)]


def test_unknown_strategy_lists_the_available_ones(plugins: Plugins) -> None:
    with pytest.raises(PluginError,
                       match="'nope'; available: contiguous, round_robin, stable, weighted"):
        plugins.strategy("nope")


def test_a_third_party_strategy_registered_in_process_is_used(plugins: Plugins) -> None:
    class LastFirst(DistributingStrategy):
        name = "last_first"

        def assign(self, count: int, clusters: Sequence[PhysicalCluster]) -> list[str]:
            return [clusters[-1].id] * count

    class ThirdParty:
        @hookimpl
        def fedkafka_mapping_strategies(self) -> list[object]:
            return [LastFirst()]

    assert "last_first" not in plugins.strategies  # cached registry is refreshed below
    plugins.register(ThirdParty(), name="third-party")
    parts = plugins.strategy("last_first").layout("t", 3, [A, B], "t.fk")
    assert [(p.active.cluster, p.active.partition) for p in parts] == [
        ("B", 0), ("B", 1), ("B", 2)]


def test_example_plugin_strategy(plugins: Plugins, example_module: ModuleType) -> None:
    plugins.register(example_module)
    parts = plugins.strategy("reverse_contiguous").layout("t", 8, [A, B], "t.fk")
    assert [(p.active.cluster, p.active.partition) for p in parts] == (
        [("B", i) for i in range(4)] + [("A", i) for i in range(4)])


def test_duplicate_strategy_names_are_rejected(plugins: Plugins) -> None:
    class Clash:
        @hookimpl
        def fedkafka_mapping_strategies(self) -> list[object]:
            return [Contiguous()]

    plugins.register(Clash(), name="clash")
    with pytest.raises(PluginError, match="'contiguous' is provided by both") as e:
        _ = plugins.strategies
    assert "clash" in str(e.value) and "fedkafka_builtin.strategies" in str(e.value)


# -- security ----------------------------------------------------------------------------------


class Plain:
    """A toy PLAIN authenticator for the tests."""

    @hookimpl
    def fedkafka_sasl_mechanisms(self) -> list[str]:
        return ["PLAIN"]

    @hookimpl
    def fedkafka_authenticate(self, mechanism: str, auth_bytes: bytes) -> Principal | None:
        if mechanism != "PLAIN":
            return None
        _, user, password = auth_bytes.split(b"\0")
        if password != b"secret":
            raise PermissionError("bad password")
        return Principal(user.decode())


def test_fedkafka_sasl_mechanisms(plugins: Plugins) -> None:
    assert plugins.sasl_mechanisms() == []  # the default provides none (no PLAIN)

    class Scram:
        @hookimpl
        def fedkafka_sasl_mechanisms(self) -> list[str]:
            return ["SCRAM-SHA-512", "PLAIN"]

    plugins.register(Plain())
    plugins.register(Scram())
    assert sorted(plugins.sasl_mechanisms()) == ["PLAIN", "SCRAM-SHA-512"]


def test_fedkafka_authenticate(plugins: Plugins) -> None:
    assert plugins.authenticate(NO_MECHANISM, b"") == ANONYMOUS
    assert plugins.authenticate("PLAIN", b"\0alice\0secret") is None  # default has no PLAIN
    plugins.register(Plain())
    assert plugins.authenticate("PLAIN", b"\0alice\0secret") == Principal("alice")
    with pytest.raises(PermissionError):
        plugins.authenticate("PLAIN", b"\0alice\0wrong")
    assert plugins.authenticate(NO_MECHANISM, b"") == ANONYMOUS


def test_fedkafka_authorize(plugins: Plugins) -> None:
    alice = Principal("alice")
    assert plugins.authorize(alice, "Write", "Topic", "orders") is True  # default allows all

    class NoDeletes:
        @hookimpl
        def fedkafka_authorize(self, principal: Principal, operation: str,
                               resource_type: str, resource_name: str) -> AuthDecision | None:
            if operation == "Delete":
                return AuthDecision.DENY
            return None  # no opinion

    plugins.register(NoDeletes())
    assert plugins.authorize(alice, "Delete", "Topic", "orders") is False  # a deny wins
    assert plugins.authorize(alice, "Write", "Topic", "orders") is True


# -- routing -----------------------------------------------------------------------------------


def test_fedkafka_route_client(plugins: Plugins) -> None:
    fmap = small_map()
    assert plugins.route("orders-writer", fmap) == "producer"
    assert plugins.route("billing", fmap) == "default"
    assert plugins.route(None, fmap) == "default"

    class Vip:
        @hookimpl
        def fedkafka_route_client(self, client_id: str | None,
                                  federation_map: FederationMap) -> str | None:
            return "vip" if client_id == "ceo" else None

    plugins.register(Vip())
    assert plugins.route("ceo", fmap) == "vip"  # runs before the trylast default
    assert plugins.route("orders-x", fmap) == "producer"


def test_fedkafka_choose_coordination_cluster(plugins: Plugins) -> None:
    fmap = small_map()
    assert plugins.coordination_cluster("g1", fmap) == "A"

    class ByPrefix:
        @hookimpl
        def fedkafka_choose_coordination_cluster(self, group_id: str,
                                                 federation_map: FederationMap) -> str | None:
            return "B" if group_id.startswith("b-") else None

    plugins.register(ByPrefix())
    assert plugins.coordination_cluster("b-readers", fmap) == "B"
    assert plugins.coordination_cluster("g1", fmap) == "A"


# -- observers ---------------------------------------------------------------------------------


def test_fedkafka_map_published(plugins: Plugins) -> None:
    seen: list[tuple[int | None, int]] = []

    class Recorder:
        @hookimpl
        def fedkafka_map_published(self, old: FederationMap | None, new: FederationMap) -> None:
            seen.append((old.version if old else None, new.version))

    class OnlyNew:  # an implementation may take a subset of the arguments
        @hookimpl
        def fedkafka_map_published(self, new: FederationMap) -> None:
            seen.append((-1, new.version))

    class Broken:
        @hookimpl
        def fedkafka_map_published(self, new: FederationMap) -> None:
            raise RuntimeError("observer bug")

    plugins.register(Recorder())
    plugins.register(Broken())
    plugins.register(OnlyNew())
    first = small_map()
    with capture_logs() as logs:
        plugins.notify_map_published(None, first)
        plugins.notify_map_published(first, first.with_version(2))
    assert sorted(seen, key=str) == [(-1, 1), (-1, 2), (1, 2), (None, 1)]
    failures = [e for e in logs if e["event"] == "plugin observer failed"]
    assert len(failures) == 2 and failures[0]["hook"] == "fedkafka_map_published"


def test_fedkafka_cluster_state_changed(plugins: Plugins) -> None:
    seen: list[tuple[str, ClusterState | None, ClusterState]] = []

    class Recorder:
        @hookimpl
        def fedkafka_cluster_state_changed(self, cluster_id: str,
                                           old_state: ClusterState | None,
                                           new_state: ClusterState) -> None:
            seen.append((cluster_id, old_state, new_state))

    plugins.register(Recorder())
    plugins.notify_cluster_state_changed("B", None, ClusterState.ACTIVE)
    plugins.notify_cluster_state_changed("B", ClusterState.ACTIVE, ClusterState.DOWN)
    assert seen == [("B", None, ClusterState.ACTIVE),
                    ("B", ClusterState.ACTIVE, ClusterState.DOWN)]


def test_unregister_refreshes_the_registry(plugins: Plugins, example_module: ModuleType) -> None:
    plugins.register(example_module)
    assert "reverse_contiguous" in plugins.strategies
    plugins.unregister(example_module)
    assert "reverse_contiguous" not in plugins.strategies

