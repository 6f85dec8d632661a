"""Every hook a fedkafka plugin can implement.

Plugins implement hooks with :data:`federation.plugin.hookimpl` and are found through
the ``fedkafka`` entry-point group; the built-in ones under ``plugins/`` are registered
the same way (see :data:`federation.plugin.DEFAULT_PLUGINS`). Components call hooks
through the typed facade :class:`federation.plugin.Plugins`, never ``pm.hook`` directly.

Each hook is documented in ``docs/plugins.md``; a test fails when one is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from federation import NAME

if TYPE_CHECKING:
    from federation.core.model import AuthDecision, ClusterState, FederationMap, Principal
    from federation.core.strategy import MappingStrategy
    from federation.security.sasl import SaslAuthenticator
    from federation.store.mapstore import BackendInfo

hookspec = pluggy.HookspecMarker(NAME)


# -- partition mapping ---------------------------------------------------------------------


@hookspec
def fedkafka_mapping_strategies() -> list[MappingStrategy]:
    """Return the mapping strategies this plugin provides.

    Every plugin's strategies are collected into one registry by name; two strategies
    with the same name are an error at start-up.

    :returns: a list of objects implementing :class:`federation.core.strategy.MappingStrategy`.

    Not firstresult: every implementation is called.
    """
    raise NotImplementedError


# -- metadata backend ----------------------------------------------------------------------


@hookspec
def fedkafka_metadata_backends() -> list[BackendInfo]:
    """Return the metadata backends this plugin provides.

    A backend is chosen by name (``--metadata-backend file``) and built by calling its
    factory with the backend's options as keyword arguments.

    :returns: a list of :class:`federation.store.mapstore.BackendInfo`
        (``name``, ``factory``, ``description``) whose factories return objects
        implementing :class:`federation.store.mapstore.MetadataBackend`.

    Not firstresult: every implementation is called; duplicate names are an error.
    """
    raise NotImplementedError


# -- security ------------------------------------------------------------------------------


@hookspec
def fedkafka_sasl_mechanisms(federation_map: FederationMap | None) -> list[str]:
    """Return the SASL mechanisms this plugin can authenticate (e.g. ``["PLAIN"]``).

    The proxies advertise the union in their SaslHandshake responses, and SaslHandshake
    and SaslAuthenticate in ApiVersions only while the union is not empty.

    :param federation_map: the map the proxy serves (its ``users``), or None outside one.
    :returns: mechanism names as Kafka spells them.

    Not firstresult: every implementation is called.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def fedkafka_sasl_authenticator(mechanism: str,
                                federation_map: FederationMap) -> SaslAuthenticator | None:
    """Start the server side of a (multi-round) SASL exchange for one connection.

    Called when a client's SaslHandshake names an offered mechanism. The proxy then
    feeds every SaslAuthenticate's bytes to the returned object's
    ``step(client_bytes) -> SaslStep(server_bytes, done, principal)`` (in a worker
    thread) until ``done``; a step raising ``PermissionError`` fails the authentication,
    and the proxy answers SASL_AUTHENTICATION_FAILED and closes the connection.

    :param mechanism: the mechanism the client chose, e.g. ``"SCRAM-SHA-256"``.
    :param federation_map: the map the proxy serves (its ``users``).
    :returns: a :class:`federation.security.sasl.SaslAuthenticator` for this one connection, or
        None if this plugin does not handle ``mechanism``.

    firstresult: stops at the first non-None result. With no result, the exchange is
    one round through ``fedkafka_authenticate``.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def fedkafka_authenticate(mechanism: str, auth_bytes: bytes,
                          federation_map: FederationMap | None) -> Principal | None:
    """Authenticate a client connection in one round.

    Called once per connection: with the SASL mechanism and the client's
    SaslAuthenticate bytes when no plugin answered ``fedkafka_sasl_authenticator`` for
    that mechanism, or with ``mechanism == federation.core.model.NO_MECHANISM`` (``""``) and
    empty bytes for a connection that did no SASL.

    :param mechanism: the SASL mechanism the client chose, or ``""`` for none.
    :param auth_bytes: the client's authentication bytes.
    :param federation_map: the map the proxy serves (its ``users``), or None outside one.
    :returns: the authenticated :class:`federation.core.model.Principal`, or None if this
        plugin does not handle ``mechanism`` or the credentials are not its to judge.
        To reject credentials outright, raise ``PermissionError``.

    firstresult: stops at the first non-None result. No result = authentication fails.
    """
    raise NotImplementedError


@hookspec
def fedkafka_authorize(principal: Principal, operation: str, resource_type: str,
                       resource_name: str, federation_map: FederationMap | None
                       ) -> AuthDecision | None:
    """Decide whether ``principal`` may perform ``operation`` on a resource.

    :param principal: who asks (from ``fedkafka_authenticate``).
    :param operation: a :class:`federation.core.model.Operation` value, e.g. ``"Write"``.
    :param resource_type: a :class:`federation.core.model.ResourceType` value, e.g. ``"Topic"``.
    :param resource_name: the logical topic name, group id, transactional id or
        ``"kafka-cluster"``.
    :param federation_map: the map the asking proxy serves (its ``acls`` are the built-in
        ACL plugin's rules), or None when the caller has none. Implementations that do not
        need it leave it out of their signature.
    :returns: ``AuthDecision.ALLOW``, ``AuthDecision.DENY``, or None for "no opinion".

    Not firstresult: a chain. One DENY anywhere wins; otherwise one ALLOW allows;
    with no answer at all the request is denied. The built-in default allows all.
    """
    raise NotImplementedError


# -- name-service routing and group coordination ------------------------------------------


@hookspec(firstresult=True)
def fedkafka_route_client(client_id: str | None, federation_map: FederationMap) -> str | None:
    """Choose the proxy pool that serves a client.

    The name service answers the client's first Metadata request with that pool's
    proxies as the brokers.

    :param client_id: the client's ``client.id`` (None if it sent none).
    :param federation_map: the current map (its ``pools`` and ``routing`` rules).
    :returns: a pool name, or None to let the next plugin decide.

    firstresult: stops at the first non-None result. The built-in routing applies the
    map's regex rules and falls back to its default pool.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def fedkafka_choose_coordination_cluster(group_id: str,
                                         federation_map: FederationMap) -> str | None:
    """Choose the physical cluster whose group coordinator serves a consumer group.

    :param group_id: the consumer group id.
    :param federation_map: the current map.
    :returns: a cluster id from the map, or None to let the next plugin decide.

    firstresult: stops at the first non-None result. The built-in default returns the
    map's ``coordination_cluster``. Must be stable for a group: moving a group loses its
    committed offsets.
    """
    raise NotImplementedError


# -- observation ---------------------------------------------------------------------------


@hookspec
def fedkafka_map_published(old: FederationMap | None, new: FederationMap) -> None:
    """Observe a newly published map (called in the controller after each publish).

    :param old: the map it replaced (None for the first one).
    :param new: the published map, with its new version.

    Not firstresult: every implementation is called; an exception is logged and does
    not affect the publish or other observers.
    """


@hookspec
def fedkafka_cluster_state_changed(cluster_id: str, old_state: ClusterState | None,
                                   new_state: ClusterState) -> None:
    """Observe a physical cluster changing state (e.g. ``active`` → ``down``).

    :param cluster_id: the cluster.
    :param old_state: its previous state (None for a newly added cluster).
    :param new_state: its new state.

    Not firstresult: every implementation is called; an exception is logged and does
    not affect the caller or other observers.
    """
