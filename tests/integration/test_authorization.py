"""The authorization hook on the data path: a third-party plugin denies writes to a topic."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from federation.core.model import AuthDecision, Principal
from federation.plugin import get_plugins, hookimpl
from federation.tooling.testing.clients import ConfluentClient

from .fedtopics import create_logical_topic, route_to_proxy
from .inprocess import InProcessProxy

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
    route_to_proxy(local_federation, "authz", 1901, port, "fk-authz")
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


class PlainUsers:
    """A SASL/PLAIN authenticator plugin with a user table, and a per-user authorizer."""

    users = {"alice": "wonderland", "bob": "builder"}

    @hookimpl
    def fedkafka_sasl_mechanisms(self) -> list[str]:
        return ["PLAIN"]

    @hookimpl
    def fedkafka_authenticate(self, mechanism: str, auth_bytes: bytes) -> Principal | None:
        if mechanism != "PLAIN":
            return None
        _authzid, user, password = auth_bytes.decode().split("\0")
        if self.users.get(user) != password:
            raise PermissionError(f"bad password for {user}")
        return Principal(user)

    @hookimpl
    def fedkafka_authorize(self, principal: Principal, operation: str, resource_type: str,
                           resource_name: str) -> AuthDecision | None:
        if principal.name == "bob" and operation == "Write":
            return AuthDecision.DENY
        return None


def test_sasl_plain_and_per_principal_authorization(local_federation: dict[str, Any]) -> None:
    create_logical_topic(local_federation, "sasl-topic", 2)
    port = int(local_federation["bootstrap"].rsplit(":", 1)[1]) + 7
    route_to_proxy(local_federation, "sasl", 1902, port, "fk-sasl-.*")
    plugin = PlainUsers()
    plugins = get_plugins()
    plugins.register(plugin, name="plain-users")
    try:
        proxy = InProcessProxy(local_federation["store"], port, pool="sasl", node_id=1902)
        proxy.config = dataclasses.replace(proxy.config, sasl_required=True)
        with proxy:
            bootstrap = f"127.0.0.1:{port}"

            def produce(user: str, password: str) -> tuple[list[bytes], list[Any]]:
                ok: list[bytes] = []
                errors: list[Any] = []
                p = Producer({"bootstrap.servers": bootstrap, "client.id": f"fk-sasl-{user}",
                              "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                              "sasl.username": user, "sasl.password": password,
                              "message.timeout.ms": 8000})

                def cb(err: Any, msg: Any) -> None:
                    (errors.append(err) if err else ok.append(msg.value()))
                p.produce("sasl-topic", f"from-{user}".encode(), on_delivery=cb)
                p.flush(20)
                return ok, errors

            ok, errors = produce("alice", "wonderland")
            assert ok == [b"from-alice"] and not errors
            ok, errors = produce("bob", "builder")
            assert not ok
            assert [e.code() for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
            ok, errors = produce("alice", "wrong")
            assert not ok and errors  # authentication failed: nothing was accepted
    finally:
        plugins.unregister(plugin)
