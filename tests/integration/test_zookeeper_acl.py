"""The ZooKeeper store locked down (ADR 0016), against a real ZooKeeper: only the writer
identities (controller, admin) change the map; an unauthenticated client and a proxy's
identity cannot, though the proxy reads the map and keeps its own member record. Then a
whole path: a proxy with that read-only identity serves CreateTopics (through an intent
to the in-process controller), Produce and Fetch."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fedkafka_builtin.zookeeper_acl import digest_id
from fedkafka_builtin.zookeeper_backend import StoreUnavailableError, ZooKeeperBackend
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import OPEN_ACL_UNSAFE as OPEN

from federation.clusters import admin
from federation.controller.service import Controller, ControllerConfig
from federation.core.model import FederationMap, PhysicalCluster, ProxyEndpoint
from tests.integration.zk_fixture import ZooKeeperServer

pytestmark = pytest.mark.integration

PASSWORDS = {"controller": "ctl-secret-1", "admin": "adm-secret-2", "proxy": "prx-secret-3"}
POLICY = {"writers": [digest_id("controller", PASSWORDS["controller"]),
                      digest_id("admin", PASSWORDS["admin"])],
          "members": [digest_id("proxy", PASSWORDS["proxy"])],
          "readers": []}  # the members read; nobody else (not even anonymously)


def _auth(who: str) -> str:
    return f"{who}:{PASSWORDS[who]}"


@pytest.fixture
def locked(zookeeper: ZooKeeperServer) -> Iterator[tuple[str, ZooKeeperBackend]]:
    """A fresh root whose first map the controller identity published, ACLs on."""
    root = zookeeper.new_root()
    writer = ZooKeeperBackend(zookeeper.hosts, root, auth=_auth("controller"), acl=POLICY,
                              session_timeout=4.0)
    fmap = FederationMap(version=0, clusters={"c1": PhysicalCluster("c1", "127.0.0.1:1")},
                         coordination_cluster="c1")
    writer.publish(fmap, 0)
    try:
        yield root, writer
    finally:
        writer.close()


def _raw(zookeeper: ZooKeeperServer, who: str | None) -> KazooClient:
    client = KazooClient(hosts=zookeeper.hosts,
                         auth_data=[("digest", _auth(who))] if who else None)
    client.start(timeout=15)
    return client


def test_only_writers_change_the_map(zookeeper: ZooKeeperServer,
                                     locked: tuple[str, ZooKeeperBackend]) -> None:
    root, writer = locked
    before = writer.load()
    assert before is not None and before.version == 1
    index = f"{root}/map"
    docs = writer.client.get_children(f"{root}/mapdocs")
    assert docs

    # No credentials: cannot read, write, delete or add anything of the map.
    anon = _raw(zookeeper, None)
    try:
        for attempt in (lambda: anon.get(index), lambda: anon.set(index, b"{}"),
                        lambda: anon.delete(f"{root}/mapdocs/{docs[0]}"),
                        lambda: anon.create(f"{root}/mapdocs/evil", b"{}"),
                        lambda: anon.create(f"{root}/members/controller/evil", b"{}"),
                        lambda: anon.set_acls(index, OPEN)):
            with pytest.raises(NoAuthError):
                attempt()
    finally:
        anon.stop()
        anon.close()

    # The proxy's identity: reads the map, registers itself, changes nothing else.
    proxy = ZooKeeperBackend(zookeeper.hosts, root, auth=_auth("proxy"), session_timeout=4.0)
    try:
        assert proxy.load() == before
        proxy.register_member("proxy", "p-1", {"map_version": 1})
        assert writer.members("proxy") == {"p-1": {"map_version": 1}}
        bigger = dataclasses.replace(before, clusters={
            **before.clusters, "evil": PhysicalCluster("evil", "10.6.6.6:9092")})
        with pytest.raises(StoreUnavailableError, match="identity is not allowed"):
            proxy.publish(bigger, before.version)
        with pytest.raises(StoreUnavailableError, match="identity is not allowed"):
            proxy.register_member("controller", "fake",
                                  {"leader": True, "intents": "http://10.6.6.6:1"})
        raw = proxy.client
        for attempt in (lambda: raw.set(index, b"{}"),
                        lambda: raw.delete(f"{root}/mapdocs/{docs[0]}"),
                        lambda: raw.create(f"{root}/mapdocs/evil", b"{}"),
                        lambda: raw.create(f"{root}/election/n_", b"{}", ephemeral=True,
                                           sequence=True),
                        lambda: raw.set_acls(index, OPEN),
                        lambda: raw.set_acls(f"{root}/members/proxy", OPEN)):
            with pytest.raises(NoAuthError):
                attempt()
    finally:
        proxy.close()
    assert writer.load() == before

    # The admin identity writes (the bootstrap and the tests' admin).
    admin_store = ZooKeeperBackend(zookeeper.hosts, root, auth=_auth("admin"),
                                   session_timeout=4.0)
    try:
        assert admin_store.publish(before, before.version) == 2
    finally:
        admin_store.close()


def test_credentials_are_not_logged(zookeeper: ZooKeeperServer,
                                    locked: tuple[str, ZooKeeperBackend],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = locked
    proxy = ZooKeeperBackend(zookeeper.hosts, root, auth=_auth("proxy"), session_timeout=4.0)
    try:
        with pytest.raises(StoreUnavailableError) as refused:
            proxy.publish(FederationMap(version=0), 1)
        health = json.dumps(proxy.health())
    finally:
        proxy.close()
    captured = capsys.readouterr()
    for text in (str(refused.value), health, captured.out, captured.err):
        assert PASSWORDS["proxy"] not in text


# -- a proxy with a read-only identity, end to end --------------------------------------------

NODE_ID = 1950
PROXY_PORT = int(os.environ.get("FEDKAFKA_TEST_ZKACL_PROXY_PORT", "30470"))
INTENT_PORT = PROXY_PORT + 1


class ControllerThread:
    """A controller on its own event loop thread (its own, writing, backend)."""

    def __init__(self, config: ControllerConfig, backend: ZooKeeperBackend) -> None:
        self.controller = Controller(config, backend)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.controller.run()
        asyncio.run(main())

    def __enter__(self) -> ControllerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.controller.stop)
        self.thread.join(30)


async def test_read_only_proxy_serves_create_produce_fetch(
        zookeeper: ZooKeeperServer, clusters: list[dict[str, Any]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from tests.integration.inprocess import InProcessProxy

    root = zookeeper.new_root()
    writer = ZooKeeperBackend(zookeeper.hosts, root, auth=_auth("controller"), acl=POLICY,
                              session_timeout=4.0)
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"admin": "A" * 32, "proxy": "P" * 32}))
    tokens.chmod(0o600)
    proxy_auth = tmp_path / "proxy.auth"
    proxy_auth.write_text(_auth("proxy"))
    try:
        await admin.init_map(writer, [PhysicalCluster(c["name"], c["bootstrap"])
                                      for c in clusters[:2]],
                             coordination_cluster=clusters[0]["name"],
                             pools={"zkacl": [ProxyEndpoint(NODE_ID, "127.0.0.1", PROXY_PORT)]},
                             default_pool="zkacl")
        config = ControllerConfig(backend="zookeeper", backend_options={},
                                  member_id="ctl-zkacl", metrics_port=None,
                                  health_interval=1.0,
                                  intent_listen=f"127.0.0.1:{INTENT_PORT}",
                                  intent_tokens_file=str(tokens))
        # The proxy's process environment: its ZooKeeper identity and its intent token.
        monkeypatch.setenv("FEDKAFKA_ZK_AUTH_FILE", str(proxy_auth))
        monkeypatch.setenv("FEDKAFKA_INTENT_TOKEN", "P" * 32)
        store = f"zookeeper:{zookeeper.hosts}{root}"
        with ControllerThread(config, writer), \
                InProcessProxy(store, PROXY_PORT, pool="zkacl", node_id=NODE_ID) as proxy:
            assert proxy.state is not None
            assert proxy.state.backend.acl_policy is None  # type: ignore[attr-defined]
            bootstrap = f"127.0.0.1:{PROXY_PORT}"
            client = AIOKafkaAdminClient(bootstrap_servers=bootstrap,
                                         client_id="zkacl-admin", request_timeout_ms=60_000)
            await client.start()
            try:
                await client.create_topics([NewTopic("zkacl-orders", 4, 1)],
                                           timeout_ms=60_000)
            finally:
                await client.close()
            fmap = writer.load()
            assert fmap is not None and "zkacl-orders" in fmap.topics
            assert len(fmap.intents) == 1  # applied by the controller, as an intent

            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="zkacl-p")
            await producer.start()
            try:
                for i in range(100):
                    await producer.send("zkacl-orders", f"v{i}".encode(), partition=i % 4)
                await producer.flush()
            finally:
                await producer.stop()
            consumer = AIOKafkaConsumer("zkacl-orders", bootstrap_servers=bootstrap,
                                        client_id="zkacl-c", auto_offset_reset="earliest",
                                        enable_auto_commit=False)
            await consumer.start()
            got: list[bytes] = []
            try:
                deadline = asyncio.get_running_loop().time() + 90
                while len(got) < 100 and asyncio.get_running_loop().time() < deadline:
                    batch = await consumer.getmany(timeout_ms=1000)
                    got += [r.value for records in batch.values() for r in records
                            if r.value is not None]
            finally:
                await consumer.stop()
            assert sorted(got) == sorted(f"v{i}".encode() for i in range(100))
            assert writer.members("proxy"), "the proxy keeps its own member record"
    finally:
        writer.close()
