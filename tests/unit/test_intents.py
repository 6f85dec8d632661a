"""Intents (controller.intents) against a file store on loopback: the controller's endpoint
applies each intent id once, authenticates and authorizes submitters, and a deposed
controller publishes nothing. No physical cluster is involved (map-only intents)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fedkafka_builtin.file_backend import FileBackend

from federation.clusters import admin
from federation.controller import intents
from federation.core.errors import ConfigError
from federation.core.model import FederationMap, PhysicalCluster, ProxyEndpoint

PORT = int(os.environ.get("FEDKAFKA_TEST_INTENT_PORT", "30450"))
TOKENS = {"admin": "a" * 32, "proxy": "p" * 32}


class Leader:
    """A switchable leadership flag (the election's is_leader)."""

    def __init__(self, leading: bool = True) -> None:
        self.leading = leading

    def __call__(self) -> bool:
        return self.leading


@pytest.fixture
def store(tmp_path: Path) -> FileBackend:
    backend = FileBackend(tmp_path / "map.json")
    fmap = FederationMap(version=0, clusters={"c1": PhysicalCluster("c1", "127.0.0.1:1")},
                         coordination_cluster="c1",
                         pools={"default": (ProxyEndpoint(1, "127.0.0.1", 2),)})
    backend.publish(fmap, 0)
    yield backend
    backend.close()


async def _server(store: FileBackend, leader: Leader, port: int, member: str
                  ) -> intents.IntentServer:
    server = intents.IntentServer(store, TOKENS, leader, host="127.0.0.1", port=port)
    await server.start()
    store.register_member("controller", member, {"leader": leader(),
                                                 "intents": server.address})
    return server


@pytest.fixture
async def controller(store: FileBackend) -> AsyncIterator[tuple[intents.IntentServer, Leader]]:
    leader = Leader()
    server = await _server(store, leader, PORT, "ctl-1")
    yield server, leader
    await server.close()


ADMIN = intents.Submitter(token=TOKENS["admin"], timeout=10)
PROXY = intents.Submitter(token=TOKENS["proxy"], timeout=10)


async def test_intent_applied_once_and_recorded(
        store: FileBackend, controller: tuple[intents.IntentServer, Leader]) -> None:
    server, _ = controller
    answer = await intents.submit(store, "set_route", {"pattern": "app-*", "pool": "default"},
                                  token=TOKENS["admin"], intent_id="intent-0001")
    assert answer["status"] == "applied"
    fmap = store.load()
    assert fmap is not None and fmap.intents == {"intent-0001": answer["version"]}
    assert [r.pattern for r in fmap.routing] == ["app-*"]
    # The same id again (a retry after a lost answer): not applied twice.
    again = await intents.submit(store, "set_route", {"pattern": "app-*", "pool": "default"},
                                 token=TOKENS["admin"], intent_id="intent-0001")
    assert again == {"status": "duplicate", "version": answer["version"], "result": {}}
    assert store.load() == fmap
    assert (server.applied, server.duplicates) == (1, 1)
    # A refusal comes back as the admin error class, with its message.
    with pytest.raises(admin.InvalidRequestError, match="no route with pattern 'nope'"):
        await intents.remove_route(store, "nope", via=ADMIN)


async def test_authentication_and_identities(
        store: FileBackend, controller: tuple[intents.IntentServer, Leader]) -> None:
    before = store.load()
    with pytest.raises(admin.AdminError, match="missing or wrong intent token"):
        await intents.submit(store, "set_cluster_state", {"cluster": "c1", "state": "read_only"},
                             token="x" * 32)
    with pytest.raises(admin.AdminError, match="identity 'proxy' may not submit "
                       "'set_cluster_state'"):
        await intents.set_cluster_state(store, "c1", "read_only", via=PROXY)
    assert store.load() == before
    cluster = await intents.set_cluster_state(store, "c1", "read_only", via=ADMIN)
    assert cluster.state.value == "read_only"


async def test_failover_retry_is_applied_once(store: FileBackend) -> None:
    """Controller A applies an intent and dies before answering; the submitter's retry
    with the same id reaches the new leader B, which answers duplicate."""
    a_leads, b_leads = Leader(True), Leader(False)
    a = await _server(store, a_leads, PORT + 1, "ctl-a")
    b = await _server(store, b_leads, PORT + 2, "ctl-b")
    try:
        reply = await a.handle("admin", {"id": "failover-01", "kind": "set_pool",
                                         "args": {"name": "eu", "endpoints": [
                                             {"node_id": 7, "host": "127.0.0.1",
                                              "port": 3}]}})
        assert reply.status == 200 and reply.body["status"] == "applied"
        applied = store.load()
        # A dies (its answer is lost); B wins the election.
        await a.close()
        a_leads.leading = False
        store.register_member("controller", "ctl-a", {"leader": False})
        b_leads.leading = True
        store.register_member("controller", "ctl-b", {"leader": True, "intents": b.address})
        answer = await intents.submit(store, "set_pool", {"name": "eu", "endpoints": [
            {"node_id": 7, "host": "127.0.0.1", "port": 3}]}, token=TOKENS["admin"],
            intent_id="failover-01")
        assert answer["status"] == "duplicate"
        assert store.load() == applied  # nothing published twice
        # A standby refuses (503) and the submitter gives up clearly at its deadline.
        b_leads.leading = False
        with pytest.raises(intents.NoControllerError, match="not the active one"):
            await intents.submit(store, "set_route", {"pattern": "x", "pool": "eu"},
                                 token=TOKENS["admin"], timeout=1.0)
        assert store.load() == applied
    finally:
        await a.close()
        await b.close()


async def test_deposed_controller_publishes_nothing(
        store: FileBackend, controller: tuple[intents.IntentServer, Leader]) -> None:
    """Leadership is checked inside the compare-and-set: a controller that loses it while
    applying an intent publishes nothing (the new leader applies the retry)."""
    server, leader = controller
    before = store.load()
    real_load = store.load
    calls = 0

    def load_then_lose() -> FederationMap | None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the read inside the compare-and-set loop
            leader.leading = False
        return real_load()

    store.load = load_then_lose  # type: ignore[method-assign]
    try:
        reply = await server.handle("admin", {"id": "deposed-01", "kind": "set_route",
                                              "args": {"pattern": "p", "pool": "default"}})
    finally:
        store.load = real_load  # type: ignore[method-assign]
    assert reply.status == 503 and reply.body["error"]["type"] == "NotLeaderError"
    assert store.load() == before


async def test_direct_only_without_any_controller(store: FileBackend) -> None:
    """The bootstrap path: with no controller registered the admin CLI writes itself; a
    proxy never does (it waits for a controller, then fails clearly)."""
    fmap = await intents.set_route(store, "boot-*", "default",
                                   via=intents.Submitter(allow_direct=True))
    assert [r.pattern for r in fmap.routing] == ["boot-*"] and not fmap.intents
    with pytest.raises(intents.NoControllerError, match="no controller leads"):
        await intents.set_route(store, "proxy-*", "default",
                                via=intents.Submitter(token=TOKENS["proxy"], timeout=0.5))


def test_tokens_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text('{"admin": "short"}')
    with pytest.raises(ConfigError, match="at least 16 characters"):
        intents.load_tokens(path)
    path.write_text('{"root": "' + "r" * 20 + '"}')
    with pytest.raises(ConfigError, match="unknown identity 'root'") as refused:
        intents.load_tokens(path)
    assert "r" * 20 not in str(refused.value)  # a token is never in a message


def test_store_credentials_roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(intents.CONFIG_DIR_ENV, str(tmp_path))
    path = intents.save_store_credentials("file:/x/map.json", TOKENS)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert intents.store_token("file:/x/map.json", "proxy") == TOKENS["proxy"]
    assert intents.store_token("file:/y/map.json", "proxy") is None
    intents.forget_store_credentials("file:/x/map.json")
    assert intents.store_token("file:/x/map.json", "admin") is None




def test_submitted_layout_for_a_strategy_not_installed_here() -> None:
    """The controller lacks the admin's strategy plugin: it takes the submitter's layout,
    checked (writable clusters, physical partitions 0..n-1 per cluster)."""
    fmap = FederationMap(version=1, clusters={c: PhysicalCluster(c, f"127.0.0.1:{i + 1}")
                                              for i, c in enumerate(("c1", "c2"))},
                         coordination_cluster="c1")
    topic = admin.plan_create_topic(fmap, "rev", 3, "not-here", layout=[("c2", 0), ("c2", 1),
                                                                        ("c1", 0)])
    assert [(p.active.cluster, p.active.partition) for p in topic.partitions] == [
        ("c2", 0), ("c2", 1), ("c1", 0)]
    assert topic.strategy == "not-here"
    with pytest.raises(admin.InvalidRequestError, match=r"must be 0\.\.1"):
        admin.plan_create_topic(fmap, "rev", 2, "not-here", layout=[("c2", 0), ("c2", 5)])
    with pytest.raises(admin.InvalidRequestError, match="unknown mapping strategy"):
        admin.plan_create_topic(fmap, "rev", 2, "not-here")
