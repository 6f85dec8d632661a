"""The incremental map layout on a real ZooKeeper (federation.store.maplayout, ADR 0015): no znode
above 1 MiB, a change writes one document and the index in one transaction, a watcher
disconnected from ZooKeeper catches up, readers racing a writer never see half a change,
two writers never both win, format-1 maps are converted, invalid maps are refused."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from fedkafka_builtin.zookeeper_backend import ZooKeeperBackend

from federation.core.model import (
    FederationMap,
    LogicalPartition,
    LogicalTopic,
    PhysicalCluster,
    Segment,
)
from federation.plugin import get_plugins
from federation.store import maplayout, mapstore
from tests.integration.zk_fixture import ZooKeeperServer

pytestmark = [pytest.mark.integration, pytest.mark.zookeeper]

#: The TCP relay between a reader and ZooKeeper, which the disconnection test cuts
#: (default: the test ZooKeeper's port + 1).
RELAY_PORT = os.environ.get("FEDKAFKA_TEST_ZK_RELAY_PORT")
NAMES = ("t01", "t02", "t17")  # changed together with the base, in different shards


def _map(topics: int = 30, partitions: int = 1, gen: int = 0) -> FederationMap:
    clusters = {"c1": PhysicalCluster("c1", "127.0.0.1:9092", weight=gen + 1)}
    return FederationMap(0, clusters, {
        f"t{i:02d}": LogicalTopic(
            f"t{i:02d}", uuid.uuid5(uuid.NAMESPACE_DNS, f"t{i}"),
            tuple(LogicalPartition(p, (Segment("c1", f"t{i:02d}.fk", p, 0, 0),))
                  for p in range(partitions)),
            config={"gen": str(gen), "retention.ms": "604800000"})
        for i in range(topics)}, coordination_cluster="c1")


def _with_gen(fmap: FederationMap, gen: int, names: tuple[str, ...] = NAMES) -> FederationMap:
    for name in names:
        fmap = fmap.with_topic(dataclasses.replace(fmap.topics[name], config={"gen": str(gen)}))
    return fmap.with_cluster(dataclasses.replace(fmap.clusters["c1"], weight=gen + 1))


def _consistent(fmap: FederationMap, names: tuple[str, ...] = NAMES) -> bool:
    return {fmap.topics[n].config["gen"] for n in names} == {
        str(fmap.clusters["c1"].weight - 1)}


def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture
def make(zookeeper: ZooKeeperServer) -> Iterator[Callable[..., ZooKeeperBackend]]:
    root = zookeeper.new_root()
    made: list[ZooKeeperBackend] = []

    def factory(hosts: str | None = None, **options: object) -> ZooKeeperBackend:
        options.setdefault("session_timeout", 4.0)
        backend = get_plugins().backend("zookeeper", hosts=hosts or zookeeper.hosts,
                                        root=root, **options)
        assert isinstance(backend, ZooKeeperBackend)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


def _sizes(backend: ZooKeeperBackend) -> dict[str, int]:
    client = backend.client
    out = {backend.map_path: client.exists(backend.map_path).dataLength}
    for child in client.get_children(backend.docs_path):
        out[child] = client.exists(f"{backend.docs_path}/{child}").dataLength
    return out


def test_a_big_map_fits_default_znodes_and_a_change_writes_one_document(
        make: Callable[..., ZooKeeperBackend]) -> None:
    writer, reader = make(), make()
    big = _map(topics=3000, partitions=8)  # ~3 MB as one document: several requests
    assert len(mapstore.dumps(big)) > 2 * maplayout.MAX_NODE_BYTES
    assert writer.publish(big, mapstore.EMPTY_VERSION) == 1
    sizes = _sizes(writer)
    assert max(sizes.values()) < 1024 * 1024  # ZooKeeper's default jute.maxbuffer
    index = json.loads(writer.client.get(writer.map_path)[0])
    assert index["format"] == 2 and index["version"] == 1
    loaded = reader.load()
    assert loaded is not None and loaded == big.with_version(1)
    before = set(writer.client.get_children(writer.docs_path))
    new = mapstore.update(writer, lambda m: _with_gen(m, 1, ("t05",)) if m else None)
    assert new is not None and new.version == 2
    added = set(writer.client.get_children(writer.docs_path)) - before
    # one shard document (the topic) and the base (the cluster's weight changed)
    assert sorted(n[0] for n in added) == ["b", "s"]
    _until(lambda: (m := reader.load()) is not None and m.version == 2)
    assert reader.load() == new


class Relay:
    """A TCP relay to ZooKeeper that can be cut (a reader disconnected from the store)."""

    def __init__(self, target: int) -> None:
        port = int(RELAY_PORT) if RELAY_PORT else target + 1
        self.server = socket.create_server(("127.0.0.1", port))
        self.port = self.server.getsockname()[1]
        self.target = target
        self.cut = threading.Event()
        self.closed = False
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.cut.is_set():
                conn.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                conn.close()
                continue
            with self.lock:
                self.socks += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def disconnect(self) -> None:
        self.cut.set()
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def reconnect(self) -> None:
        self.cut.clear()

    def close(self) -> None:
        self.closed = True
        self.server.close()
        self.disconnect()


def test_a_watcher_disconnected_from_zookeeper_catches_up(
        zookeeper: ZooKeeperServer, make: Callable[..., ZooKeeperBackend]) -> None:
    relay = Relay(zookeeper.port)
    try:
        writer = make()
        reader = make(hosts=f"127.0.0.1:{relay.port}", session_timeout=20.0)
        writer.publish(_map(), mapstore.EMPTY_VERSION)
        seen: list[FederationMap] = []
        handle = reader.watch(seen.append)
        _until(lambda: bool(seen) and seen[-1].version == 1)
        relay.disconnect()
        _until(lambda: reader.health()["ok"] is False)
        for gen in range(1, 6):  # the reader is away for all of these
            mapstore.update(writer, lambda m, g=gen: _with_gen(m, g))  # type: ignore[misc]
        mapstore.update(writer, lambda m: m.without_topic("t29") if m else None)
        assert [m.version for m in seen] == [1]  # it kept its last map meanwhile
        relay.reconnect()
        _until(lambda: seen[-1].version == 7, timeout=60)
        versions = [m.version for m in seen]
        assert versions == sorted(set(versions)) and len(versions) < 7
        assert handle.gaps >= 1
        assert seen[-1] == writer.load()
        assert "t29" not in seen[-1].topics and _consistent(seen[-1])
        _until(lambda: reader.health()["ok"] is True)
    finally:
        relay.close()


def test_readers_racing_a_writer_never_see_half_a_change(
        make: Callable[..., ZooKeeperBackend], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maplayout, "RETIRE_GRACE_S", 0.0)  # collect at once: readers race it
    writer = make()
    writer.publish(_map(), mapstore.EMPTY_VERSION)
    bad: list[str] = []
    seen: list[list[int]] = [[], []]
    for i in range(2):
        def on_map(m: FederationMap, i: int = i) -> None:
            seen[i].append(m.version)
            if not _consistent(m):
                bad.append(f"watch {i}: version {m.version}")
        make().watch(on_map)
    stop = threading.Event()
    loader_backend = make()

    def load_loop() -> None:
        while not stop.is_set():
            m = loader_backend.load()
            if m is not None and not _consistent(m):
                bad.append(f"load: version {m.version}")

    loader = threading.Thread(target=load_loop)
    loader.start()
    try:
        for gen in range(1, 31):
            mapstore.update(writer, lambda m, g=gen: _with_gen(m, g))  # type: ignore[misc]
    finally:
        stop.set()
        loader.join()
    _until(lambda: all(s and s[-1] == 31 for s in seen))
    assert bad == []
    for s in seen:
        assert s == sorted(set(s))


def test_two_writers_on_one_version_never_both_win(
        make: Callable[..., ZooKeeperBackend]) -> None:
    a, b = make(), make()
    a.publish(_map(), mapstore.EMPTY_VERSION)
    base_a, base_b = a.load(), b.load()
    assert base_a is not None and base_b is not None
    results: list[object] = []
    barrier = threading.Barrier(2)

    def publish(backend: ZooKeeperBackend, fmap: FederationMap) -> None:
        barrier.wait()
        try:
            results.append(backend.publish(fmap, 1))
        except mapstore.VersionConflict as e:
            results.append(e)

    threads = [threading.Thread(target=publish, args=(a, _with_gen(base_a, 1, ("t01",)))),
               threading.Thread(target=publish, args=(b, _with_gen(base_b, 2, ("t02",))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(type, results), key=str) == sorted([int, mapstore.VersionConflict],
                                                         key=str)
    assert 2 in results
    final = a.load()
    assert final is not None and final.version == 2
    # exactly one writer's change, whole
    assert {final.topics["t01"].config["gen"], final.topics["t02"].config["gen"]} in (
        {"1", "0"}, {"2", "0"})
    # the loser's documents were deleted: only the index's, and the retired, remain
    index = json.loads(a.client.get(a.map_path)[0])
    named = {index["base"], *(d for d in index["docs"] if d)}
    left = set(a.client.get_children(a.docs_path))
    assert left - named <= {r[0] for r in index["retired"]}


def test_a_format_1_map_is_read_watched_and_converted(
        make: Callable[..., ZooKeeperBackend]) -> None:
    writer, reader = make(), make()
    legacy = _map().with_version(4)
    writer.client.create(writer.map_path, mapstore.dumps(legacy).encode(), makepath=True)
    assert reader.load() == legacy
    seen: list[FederationMap] = []
    reader.watch(seen.append)
    _until(lambda: len(seen) == 1)
    assert seen[0] == legacy
    assert writer.migrate() == 5
    assert writer.migrate() is None
    assert json.loads(writer.client.get(writer.map_path)[0])["format"] == 2
    _until(lambda: len(seen) == 2)
    assert seen[1] == legacy.with_version(5)
    assert make().load() == legacy.with_version(5)


def test_an_invalid_document_is_refused_and_reported(
        make: Callable[..., ZooKeeperBackend]) -> None:
    writer, reader = make(), make()
    writer.publish(_map(), mapstore.EMPTY_VERSION)
    seen: list[int] = []
    handle = reader.watch(lambda m: seen.append(m.version))
    _until(lambda: seen == [1])
    raw, _ = writer.client.get(writer.map_path)
    index = json.loads(raw)
    shard = next(i for i, d in enumerate(index["docs"]) if d)
    doc = json.loads(writer.client.get(f"{writer.docs_path}/{index['docs'][shard]}")[0])
    name = next(iter(doc["topics"]))
    doc["topics"][name]["partitions"][0][0]["cluster"] = "nowhere"
    bad = f"s{shard:04d}.2.00000000"
    writer.client.create(f"{writer.docs_path}/{bad}", json.dumps(doc).encode())
    index["docs"][shard], index["version"] = bad, 2
    writer.client.set(writer.map_path, json.dumps(index).encode())
    _until(lambda: handle.error is not None)
    health = reader.health()
    assert health["ok"] is False and "unknown cluster 'nowhere'" in health["error"]
    assert seen == [1]
    writer.client.set(writer.map_path, raw.replace(b'"version":1', b'"version":3'))
    _until(lambda: seen == [1, 3])
    _until(lambda: reader.health()["ok"] is True)
