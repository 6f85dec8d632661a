"""The ``file`` metadata backend: compare-and-set publish, watches, members."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from federation import mapstore
from federation.mapstore import EMPTY_VERSION, MetadataBackend, VersionConflict
from federation.model import FederationMap, PhysicalCluster
from federation.plugin import Plugins, make_plugin_manager
from plugins.file_backend import MEMBERS_FILE, FileBackend, _atomic_write, _locked


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
    doc = json.loads(backend.path.read_text())  # the index of the incremental layout
    assert doc["format"] == 2 and doc["version"] == 2
    # written atomically: no temporary file left behind
    assert sorted(p.name for p in backend.path.parent.iterdir()) == [
        "map.json", "map.json.d", "map.json.lock"]
    assert not [p for p in backend.docs_path.iterdir() if p.name.startswith(".")]


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


def _member_entries(backend: FileBackend, kind: str) -> dict[str, dict[str, Any]]:
    """What ``members.json`` holds for ``kind``, expired entries included."""
    return dict(json.loads(backend.members_path.read_text()).get(kind, {}))


def _register_as_crashed_process(backend: FileBackend, kind: str, member_id: str,
                                 heartbeat: float) -> None:
    """Write a member the way another process would (locked, atomic), then never beat."""
    with _locked(backend.members_path.with_name(MEMBERS_FILE + ".lock")):
        members = json.loads(backend.members_path.read_text())
        members.setdefault(kind, {})[member_id] = {"data": {}, "heartbeat": heartbeat,
                                                   "pid": 1}
        _atomic_write(backend.members_path, json.dumps(members))


def test_members_register_expire_and_withdraw(tmp_path: Path) -> None:
    # A TTL that a loaded machine's scheduling and fsyncs cannot eat, and waits on
    # conditions (with deadlines far beyond the TTL), not on fixed sleeps.
    ttl = 3.0
    path = tmp_path / "map.json"
    proxy = FileBackend(path, member_ttl=ttl)
    observer = FileBackend(path, member_ttl=ttl)
    try:
        registered = time.time()
        proxy.register_member("proxy", "p1", {"host": "h1", "port": 9192})
        assert observer.members("proxy") == {"p1": {"host": "h1", "port": 9192}}
        assert observer.members("controller") == {}
        # A crashed process's member (no heartbeat after its registration) expires after
        # the TTL, and not before; it is hidden, not lost from the file.
        crashed = time.time()
        _register_as_crashed_process(observer, "proxy", "dead", crashed)
        wait_for(lambda: "dead" not in observer.members("proxy"), timeout=ttl + 60)
        assert time.time() - crashed >= ttl
        assert "dead" in _member_entries(observer, "proxy")
        # The heartbeat keeps p1 live beyond the TTL of its registration.
        wait_for(lambda: _member_entries(observer, "proxy")["p1"]["heartbeat"]
                 > registered + ttl, timeout=ttl + 60)
        assert set(observer.members("proxy")) == {"p1"}
        proxy.register_member("proxy", "p1", {"host": "h2"})  # re-registering replaces data
        assert observer.members("proxy")["p1"] == {"host": "h2"}
    finally:
        proxy.close()
    assert observer.members("proxy") == {}  # close withdraws at once
    assert "p1" not in _member_entries(observer, "proxy")
    observer.close()
    with pytest.raises(RuntimeError, match="closed"):
        proxy.register_member("proxy", "p1", {})


def test_backend_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        FileBackend(tmp_path / "m.json", poll_interval=0)
