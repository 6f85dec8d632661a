"""The authorization hook on the data path: a third-party plugin denies writes to a topic."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from federation.mapstore import update
from federation.model import AuthDecision, FederationMap, Principal, ProxyEndpoint, RoutingRule
from federation.plugin import get_plugins, hookimpl
from federation.testing.clients import ConfluentClient

from .fedtopics import backend_of, create_logical_topic
from .test_idempotence import InProcessProxy

pytestmark = pytest.mark.integration


class DenyWritesToLocked:
    seen: list[tuple[str, str, str]] = []

    @hookimpl
    def fedkafka_authorize(self, principal: Principal, operation: str, resource_type: str,
                           resource_name: str) -> AuthDecision | None:
        self.seen.append((operation, resource_type, resource_name))
        if operation == "Write" and resource_name == "locked":
            return AuthDecision.DENY
        return None


def test_fedkafka_authorize_denies_on_the_data_path(local_federation: dict[str, Any]) -> None:
    create_logical_topic(local_federation, "locked", 2)
    create_logical_topic(local_federation, "open-door", 2)
    port = int(local_federation["bootstrap"].rsplit(":", 1)[1]) + 8
    backend = backend_of(local_federation)
    try:
        def change(fmap: FederationMap | None) -> FederationMap:
            assert fmap is not None
            return dataclasses.replace(
                fmap, pools={**fmap.pools, "authz": (ProxyEndpoint(
                    node_id=1901, host="127.0.0.1", port=port),)},
                routing=(*fmap.routing, RoutingRule(pattern="fk-authz", pool="authz")))
        update(backend, change)
    finally:
        backend.close()
    plugin = DenyWritesToLocked()
    plugins = get_plugins()
    plugins.register(plugin, name="deny-locked")
    try:
        with InProcessProxy(local_federation["store"], port, pool="authz", node_id=1901):
            bootstrap = f"127.0.0.1:{port}"
            errors: list[Any] = []
            ok: list[bytes] = []
            p = Producer({"bootstrap.servers": bootstrap, "client.id": "fk-authz",
                          "message.timeout.ms": 20000})

            def cb(err: Any, msg: Any) -> None:
                (errors.append(err) if err else ok.append(msg.value()))
            p.produce("locked", b"nope", on_delivery=cb)
            p.produce("open-door", b"yes", on_delivery=cb)
            p.flush(30)
            assert ok == [b"yes"]
            assert [e.code() for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
            assert ("Write", "Topic", "locked") in plugin.seen
            # Reads are not denied by this plugin.
            got = ConfluentClient().consume(bootstrap, "open-door", 1, timeout=30)
            assert [r.value for r in got] == [b"yes"]
    finally:
        plugins.unregister(plugin)
