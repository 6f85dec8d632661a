"""The ``zookeeper`` metadata backend against a real ZooKeeper."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from fedkafka_builtin.zookeeper_backend import StoreUnavailableError, ZooKeeperBackend

from federation.core.model import (
    FederationMap,
    LogicalPartition,
    LogicalTopic,
    PhysicalCluster,
    Segment,
)
from federation.plugin import get_plugins
from federation.store import mapstore
from federation.store.election import LeaderElection, elect_leader
from tests.integration.zk_fixture import ZooKeeperServer

pytestmark = [pytest.mark.integration, pytest.mark.zookeeper]


def _map(topics: int = 0) -> FederationMap:
    clusters = {"c1": PhysicalCluster("c1", "127.0.0.1:9092")}
    fmap = FederationMap(version=0, clusters=clusters, coordination_cluster="c1")
    for i in range(topics):
        name = f"t{i}"
        fmap = fmap.with_topic(LogicalTopic(
            name, uuid.uuid4(), (LogicalPartition(0, (Segment("c1", f"{name}.fk", 0, 0, 0),)),)))
    return fmap


def _until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def make(zookeeper: ZooKeeperServer) -> Iterator[Callable[..., ZooKeeperBackend]]:
    root = zookeeper.new_root()
    made: list[ZooKeeperBackend] = []

    def factory(**options: object) -> ZooKeeperBackend:
        backend = get_plugins().backend("zookeeper", hosts=zookeeper.hosts, root=root,
                                        session_timeout=2.0, **options)
        assert isinstance(backend, ZooKeeperBackend)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


def test_is_a_metadata_backend(make: Callable[..., ZooKeeperBackend]) -> None:
    backend = make()
    assert isinstance(backend, mapstore.MetadataBackend)
    assert backend.load() is None
    assert backend.health()["ok"] is True
    assert backend.health()["state"] == "connected"


def test_publish_is_compare_and_set(make: Callable[..., ZooKeeperBackend]) -> None:
    a, b = make(), make()
    assert a.publish(_map(), mapstore.EMPTY_VERSION) == 1
    with pytest.raises(mapstore.VersionConflict) as e:
        b.publish(_map(1), mapstore.EMPTY_VERSION)
    assert (e.value.expected, e.value.actual) == (0, 1)
    assert b.publish(_map(1), 1) == 2
    loaded = a.load()
    assert loaded is not None and loaded.version == 2 and set(loaded.topics) == {"t0"}


def test_concurrent_publishers_exactly_one_wins_each_version(
        make: Callable[..., ZooKeeperBackend]) -> None:
    backends = [make() for _ in range(4)]
    backends[0].publish(_map(), 0)
    wins: list[int] = []
    lock = threading.Lock()

    def race(backend: ZooKeeperBackend) -> None:
        try:
            version = backend.publish(_map(1), 1)
        except mapstore.VersionConflict:
            return
        with lock:
            wins.append(version)

    threads = [threading.Thread(target=race, args=(b,)) for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins == [2]


def test_update_retries_on_conflict(make: Callable[..., ZooKeeperBackend]) -> None:
    a, b = make(), make()
    a.publish(_map(), 0)
    calls = 0

    def change(current: FederationMap | None) -> FederationMap:
        nonlocal calls
        calls += 1
        assert current is not None
        if calls == 1:  # someone else publishes between our read and our write
            b.publish(current.with_topic(_map(1).topics["t0"]), current.version)
        return current.with_cluster(PhysicalCluster("c2", "127.0.0.1:9093"))

    new = mapstore.update(a, change)
    assert new is not None and new.version == 3 and calls == 2
    assert set(new.topics) == {"t0"} and set(new.clusters) == {"c1", "c2"}


def test_watch_delivers_current_then_each_newer_map(
        make: Callable[..., ZooKeeperBackend]) -> None:
    writer, reader = make(), make()
    writer.publish(_map(), 0)
    seen: list[int] = []
    handle = reader.watch(lambda m: seen.append(m.version))
    _until(lambda: seen == [1])
    writer.publish(_map(1), 1)
    writer.publish(_map(2), 2)
    _until(lambda: seen[-1:] == [3])
    assert seen == sorted(set(seen)) and seen[0] == 1
    handle.cancel()
    writer.publish(_map(), 3)
    time.sleep(0.5)
    assert seen[-1] == 3
    assert reader.health()["version"] == 3  # what the reader saw last


def test_watch_callback_error_does_not_stop_the_watch(
        make: Callable[..., ZooKeeperBackend]) -> None:
    writer, reader = make(), make()
    seen: list[int] = []

    def callback(m: FederationMap) -> None:
        seen.append(m.version)
        if m.version == 1:
            raise RuntimeError("boom")

    reader.watch(callback)
    writer.publish(_map(), 0)
    _until(lambda: seen == [1])
    writer.publish(_map(1), 1)
    _until(lambda: seen == [1, 2])


def test_members_are_ephemeral(make: Callable[..., ZooKeeperBackend]) -> None:
    a, b = make(), make()
    a.register_member("proxy", "p1", {"host": "127.0.0.1", "port": 1})
    a.register_member("proxy", "p1", {"host": "127.0.0.1", "port": 2})  # replaces
    b.register_member("proxy", "p2", {"port": 3})
    b.register_member("controller", "k1", {})
    assert a.members("proxy") == {"p1": {"host": "127.0.0.1", "port": 2}, "p2": {"port": 3}}
    assert a.members("nobody") == {}
    b.close()
    assert a.members("proxy") == {"p1": {"host": "127.0.0.1", "port": 2}}
    assert a.members("controller") == {}


def test_members_of_a_dead_session_disappear(make: Callable[..., ZooKeeperBackend]) -> None:
    a, b = make(), make()
    b.register_member("proxy", "p9", {})
    b.client.stop()  # the session ends without withdrawing anything explicitly
    _until(lambda: a.members("proxy") == {})


def test_unreachable_zookeeper_is_a_clear_error() -> None:
    with pytest.raises(StoreUnavailableError, match=r"cannot reach ZooKeeper at 127\.0\.0\.1:1"):
        ZooKeeperBackend("127.0.0.1:1", connect_timeout=1.0)


def test_election_exactly_one_leader_and_takeover(make: Callable[..., ZooKeeperBackend]) -> None:
    a, b = make(), make()
    ea: LeaderElection = elect_leader(a, "ctl-a")
    assert ea.wait(10)
    eb = elect_leader(b, "ctl-b")
    time.sleep(0.5)
    assert ea.is_leader and not eb.is_leader
    assert eb.leader() == "ctl-a"
    a.client.stop()  # the leader's session dies
    assert eb.wait(10)
    assert eb.leader() == "ctl-b"
    eb.cancel()
    assert not eb.is_leader


def test_zookeeper_restart_keeps_map_members_and_watches(
        zookeeper: ZooKeeperServer, make: Callable[..., ZooKeeperBackend]) -> None:
    writer, reader = make(), make()
    writer.publish(_map(2), 0)
    reader.register_member("proxy", "px", {"n": 1})
    seen: list[FederationMap] = []
    reader.watch(seen.append)
    _until(lambda: len(seen) == 1)
    zookeeper.stop()
    _until(lambda: reader.health()["state"] != "connected")
    health = reader.health()
    assert health["ok"] is False and health["version"] == 1 and "last map" in health["error"]
    with pytest.raises(StoreUnavailableError):
        writer.load()
    assert seen[-1].version == 1  # the watcher keeps its last map
    zookeeper.start()
    _until(lambda: writer.health()["ok"] and reader.health()["ok"], timeout=30)
    stored = writer.load()
    assert stored is not None and stored.version == 1 and set(stored.topics) == {"t0", "t1"}
    _until(lambda: writer.members("proxy") == {"px": {"n": 1}}, timeout=30)
    writer.publish(_map(), 1)
    _until(lambda: seen[-1].version == 2)
