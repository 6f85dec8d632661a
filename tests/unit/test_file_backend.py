"""The ``file`` metadata backend: compare-and-set publish, watches, members."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from federation import mapstore
from federation.mapstore import EMPTY_VERSION, MetadataBackend, VersionConflict
from federation.model import FederationMap, PhysicalCluster
from federation.plugin import Plugins, make_plugin_manager
from plugins.file_backend import FileBackend


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def cluster_map(*ids: str) -> FederationMap:
    return FederationMap(0, {i: PhysicalCluster(i, f"{i.lower()}:9092") for i in ids})


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[FileBackend]:
    b = FileBackend(tmp_path / "store" / "map.json", poll_interval=0.02)
    yield b
    b.close()


def test_fedkafka_metadata_backends(tmp_path: Path) -> None:
    plugins = Plugins(make_plugin_manager(entry_points=False))
    info = plugins.backends["file"]
    assert info.name == "file" and "JSON" in info.description
    b = plugins.backend("file", path=tmp_path / "m.json", poll_interval=0.5)
    try:
        assert isinstance(b, FileBackend) and isinstance(b, MetadataBackend)
        assert b.poll_interval == 0.5
    finally:
        b.close()
    with pytest.raises(Exception, match="unknown metadata backend 'zk'; available: file"):
        plugins.backend("zk")


def test_publish_is_compare_and_set(backend: FileBackend) -> None:
    assert backend.load() is None
    assert backend.publish(cluster_map("A"), EMPTY_VERSION) == 1
    loaded = backend.load()
    assert loaded is not None and loaded.version == 1 and set(loaded.clusters) == {"A"}
    with pytest.raises(VersionConflict) as e:
        backend.publish(cluster_map("A", "B"), EMPTY_VERSION)
    assert (e.value.expected, e.value.actual) == (0, 1)
    assert backend.publish(cluster_map("A", "B"), 1) == 2
    doc = json.loads(backend.path.read_text())
    assert doc["format"] == 1 and doc["version"] == 2
    # written atomically: no temporary file left behind
    assert sorted(p.name for p in backend.path.parent.iterdir()) == ["map.json", "map.json.lock"]


def test_publish_refuses_an_invalid_map(backend: FileBackend) -> None:
    bad = FederationMap(0, {}, coordination_cluster="nowhere")
    with pytest.raises(ValueError, match="coordination_cluster"):
        backend.publish(bad, EMPTY_VERSION)
    assert backend.load() is None


def test_concurrent_publishers_never_lose_an_update(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    writers = 8
    errors: list[BaseException] = []

    def add_cluster(n: int) -> None:
        b = FileBackend(path)  # each its own instance: the fcntl lock is what serialises
        try:
            mapstore.update(b, lambda m: (m or cluster_map()).with_cluster(
                PhysicalCluster(f"C{n}", f"c{n}:9092")), attempts=100)
        except BaseException as e:
            errors.append(e)
        finally:
            b.close()

    threads = [threading.Thread(target=add_cluster, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    final = FileBackend(path).load()
    assert final is not None
    assert final.version == writers
    assert set(final.clusters) == {f"C{n}" for n in range(writers)}


def test_update_returns_the_published_map_and_can_skip(backend: FileBackend) -> None:
    published = mapstore.update(backend, lambda m: cluster_map("A"))
    assert published is not None and published.version == 1
    assert mapstore.update(backend, lambda m: None) is None
    loaded = backend.load()
    assert loaded is not None and loaded.version == 1


def test_watch_delivers_current_and_new_maps(backend: FileBackend) -> None:
    backend.publish(cluster_map("A"), EMPTY_VERSION)
    seen: list[int] = []
    handle = backend.watch(lambda m: seen.append(m.version))
    wait_for(lambda: seen == [1])
    backend.publish(cluster_map("A", "B"), 1)
    wait_for(lambda: seen == [1, 2])
    backend.publish(cluster_map("A", "B", "C"), 2)  # same size class, right after: racy case
    wait_for(lambda: seen == [1, 2, 3])
    handle.cancel()
    backend.publish(cluster_map("A"), 3)
    time.sleep(0.1)
    assert seen == [1, 2, 3]


def test_watch_on_an_empty_store_waits_for_the_first_map(backend: FileBackend) -> None:
    seen: list[FederationMap] = []
    backend.watch(seen.append)
    time.sleep(0.1)
    assert seen == []
    backend.publish(cluster_map("A"), EMPTY_VERSION)
    wait_for(lambda: len(seen) == 1)
    assert set(seen[0].clusters) == {"A"}


def test_watch_keeps_the_last_map_over_a_corrupt_file(backend: FileBackend) -> None:
    backend.publish(cluster_map("A"), EMPTY_VERSION)
    seen: list[int] = []
    calls_failed = threading.Event()

    def callback(m: FederationMap) -> None:
        seen.append(m.version)
        if m.version == 1:
            calls_failed.set()
            raise RuntimeError("callback bug")  # logged; the watch goes on

    backend.watch(callback)
    wait_for(calls_failed.is_set)
    backend.path.write_text("{ half a docu")
    time.sleep(0.1)
    assert seen == [1]
    assert backend.health()["ok"] is False
    backend.path.write_text(mapstore.dumps(cluster_map("A", "B").with_version(2)))
    wait_for(lambda: seen == [1, 2])
    assert backend.health() == {"backend": "file", "path": str(backend.path), "ok": True,
                                "version": 2, "watches": 1}


def test_members_register_expire_and_withdraw(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    proxy = FileBackend(path, member_ttl=0.3)
    observer = FileBackend(path, member_ttl=0.3)
    try:
        proxy.register_member("proxy", "p1", {"host": "h1", "port": 9192})
        assert observer.members("proxy") == {"p1": {"host": "h1", "port": 9192}}
        assert observer.members("controller") == {}
        time.sleep(0.6)  # beyond the TTL: the heartbeat keeps it live
        assert set(observer.members("proxy")) == {"p1"}
        # a crashed process's member (no heartbeat) expires after the TTL
        members = json.loads((tmp_path / "members.json").read_text())
        members["proxy"]["dead"] = {"data": {}, "heartbeat": time.time() - 1, "pid": 1}
        (tmp_path / "members.json").write_text(json.dumps(members))
        assert set(observer.members("proxy")) == {"p1"}
        proxy.register_member("proxy", "p1", {"host": "h2"})  # re-registering replaces data
        assert observer.members("proxy")["p1"] == {"host": "h2"}
    finally:
        proxy.close()
    assert observer.members("proxy") == {}  # close withdraws at once
    observer.close()
    with pytest.raises(RuntimeError, match="closed"):
        proxy.register_member("proxy", "p1", {})


def test_backend_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        FileBackend(tmp_path / "m.json", poll_interval=0)
