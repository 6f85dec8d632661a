"""The ``file`` metadata backend: compare-and-set publish, watches, members."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fedkafka_builtin.file_backend import MEMBERS_FILE, FileBackend, _atomic_write, _locked

from federation.core.model import FederationMap, PhysicalCluster
from federation.plugin import Plugins, make_plugin_manager
from federation.store import mapstore
from federation.store.mapstore import EMPTY_VERSION, MetadataBackend, VersionConflict


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


# -- the incremental layout (federation.store.maplayout, ADR 0015) ---------------------------------


def topics_map(version: int = 0, gen: int = 0, n: int = 30) -> FederationMap:
    from federation.core.model import LogicalPartition, LogicalTopic, Segment, new_topic_id

    def topic(name: str) -> LogicalTopic:
        return LogicalTopic(name, new_topic_id(name, "x"),
                            (LogicalPartition(0, (Segment("A", f"{name}.fk", 0, 0, 0),)),),
                            config={"gen": str(gen)})

    return FederationMap(version, {"A": PhysicalCluster("A", "a:9092", weight=gen + 1)},
                         {f"t{i:02d}": topic(f"t{i:02d}") for i in range(n)})


def with_gen(fmap: FederationMap, gen: int, names: tuple[str, ...]) -> FederationMap:
    """``fmap`` with topics ``names`` and the cluster's weight all at generation ``gen``."""
    import dataclasses

    for name in names:
        fmap = fmap.with_topic(dataclasses.replace(fmap.topics[name], config={"gen": str(gen)}))
    return fmap.with_cluster(dataclasses.replace(fmap.clusters["A"], weight=gen + 1))


def consistent(fmap: FederationMap, names: tuple[str, ...]) -> bool:
    gens = {fmap.topics[n].config["gen"] for n in names}
    return gens == {str(fmap.clusters["A"].weight - 1)}


def test_a_change_writes_only_its_shard_and_the_index(backend: FileBackend) -> None:
    backend.publish(topics_map(), EMPTY_VERSION)
    before = set(p.name for p in backend.docs_path.iterdir())
    import dataclasses

    stored = backend.load()
    assert stored is not None
    t = stored.topics["t05"]
    backend.publish(stored.with_topic(dataclasses.replace(t, config={"gen": "9"})), 1)
    added = set(p.name for p in backend.docs_path.iterdir()) - before
    assert len(added) == 1 and added.pop().startswith("s")  # one shard document, no base
    index = json.loads(backend.path.read_text())
    assert index["version"] == 2 and len(index["retired"]) == 1


def test_readers_racing_a_writer_never_see_half_a_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from federation.store import maplayout

    monkeypatch.setattr(maplayout, "RETIRE_GRACE_S", 0.0)  # collect at once: readers race it
    path = tmp_path / "map.json"
    names = ("t01", "t02", "t17")  # in different shards, changed together with the base
    writer = FileBackend(path, poll_interval=0.005)
    writer.publish(topics_map(), EMPTY_VERSION)
    readers = [FileBackend(path, poll_interval=0.005) for _ in range(2)]
    seen: list[list[int]] = [[], []]
    bad: list[str] = []

    def check(i: int) -> Callable[[FederationMap], None]:
        def on_map(m: FederationMap) -> None:
            seen[i].append(m.version)
            if not consistent(m, names):
                bad.append(f"watch {i}: version {m.version}")
        return on_map

    for i, r in enumerate(readers):
        r.watch(check(i))
    stop = threading.Event()

    def load_loop() -> None:
        r = FileBackend(path)
        try:
            while not stop.is_set():
                m = r.load()
                if m is not None and not consistent(m, names):
                    bad.append(f"load: version {m.version}")
        finally:
            r.close()

    loader = threading.Thread(target=load_loop)
    loader.start()
    try:
        for gen in range(1, 41):
            mapstore.update(writer, lambda m, g=gen: with_gen(m, g, names))  # type: ignore[misc]
    finally:
        stop.set()
        loader.join()
    wait_for(lambda: all(s and s[-1] == 41 for s in seen), timeout=30)
    for r in readers:
        r.close()
    writer.close()
    assert bad == []
    for s in seen:
        assert s == sorted(set(s))  # in order, each version once
    # collected: the documents left are those the index names (and the just retired)
    index = json.loads(path.read_text())
    left = {p.name for p in writer.docs_path.iterdir()}
    named = {index["base"], *(d for d in index["docs"] if d)}
    assert named <= left and len(left - named) <= len(index["retired"])


def test_a_watcher_that_missed_versions_catches_up(backend: FileBackend) -> None:
    backend.publish(topics_map(), EMPTY_VERSION)
    seen: list[int] = []
    release = threading.Event()

    def slow(m: FederationMap) -> None:
        seen.append(m.version)
        if m.version == 1:
            release.wait(30)  # the watch is stuck while versions 2..6 are published

    handle = backend.watch(slow)
    wait_for(lambda: seen == [1])
    for gen in range(1, 6):
        mapstore.update(backend, lambda m, g=gen: with_gen(m, g, ("t03",)))  # type: ignore[misc]
    release.set()
    wait_for(lambda: seen[-1] == 6)
    assert seen == sorted(set(seen)) and len(seen) < 6  # skipped to the latest, in order
    assert handle.gaps >= 1
    final = backend.load()
    assert final is not None and final.topics["t03"].config == {"gen": "5"}


def test_concurrent_topic_changes_never_both_win(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    FileBackend(path).publish(topics_map(), EMPTY_VERSION)
    a, b = FileBackend(path), FileBackend(path)
    try:
        base_a, base_b = a.load(), b.load()
        assert base_a is not None and base_b is not None
        wins = []
        for backend, fmap, name in ((a, base_a, "t01"), (b, base_b, "t02")):
            try:
                wins.append(backend.publish(with_gen(fmap, 7, (name,)), 1))
            except VersionConflict as e:
                assert (e.expected, e.actual) == (1, 2)
        assert wins == [2]
        final = b.load()
        assert final is not None
        assert final.topics["t01"].config == {"gen": "7"} and final.topics["t02"].config == {
            "gen": "0"}
    finally:
        a.close()
        b.close()


def test_a_format_1_file_is_read_and_converted(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    legacy = topics_map(version=5)
    _atomic_write(path, mapstore.dumps(legacy))  # as the layout before wrote it
    b = FileBackend(path, poll_interval=0.02)
    seen: list[FederationMap] = []
    try:
        assert b.load() == legacy
        assert b.health()["ok"] is True and b.health()["version"] == 5
        b.watch(seen.append)
        wait_for(lambda: len(seen) == 1)
        assert seen[0] == legacy
        assert b.migrate() == 6
        assert json.loads(path.read_text())["format"] == 2
        assert b.migrate() is None  # nothing left to convert
        wait_for(lambda: len(seen) == 2)
        assert seen[1] == legacy.with_version(6)
        reader = FileBackend(path)
        assert reader.load() == legacy.with_version(6)
        reader.close()
    finally:
        b.close()


def test_an_invalid_document_is_refused_and_reported(backend: FileBackend) -> None:
    backend.publish(topics_map(), EMPTY_VERSION)
    seen: list[int] = []
    handle = backend.watch(lambda m: seen.append(m.version))
    wait_for(lambda: seen == [1])
    good_index = backend.path.read_bytes()
    # A writer that wrote a document naming an unknown cluster (e.g. a buggy tool):
    index = json.loads(good_index)
    shard = next(i for i, d in enumerate(index["docs"]) if d)
    doc = json.loads((backend.docs_path / index["docs"][shard]).read_text())
    name = next(iter(doc["topics"]))
    doc["topics"][name]["partitions"][0][0]["cluster"] = "nowhere"
    bad_name = f"s{shard:04d}.2.00000000"
    (backend.docs_path / bad_name).write_text(json.dumps(doc))
    index["docs"][shard], index["version"] = bad_name, 2
    _atomic_write(backend.path, json.dumps(index))
    wait_for(lambda: handle.error is not None)
    health = backend.health()
    assert health["ok"] is False
    assert "unknown cluster 'nowhere'" in health["error"] and "version 1" in health["error"]
    assert seen == [1]  # the last good map is kept; the watch goes on
    with pytest.raises(mapstore.MapFormatError, match="unknown cluster"):
        backend.load()
    _atomic_write(backend.path, good_index.replace(b'"version":1', b'"version":3'))
    wait_for(lambda: seen == [1, 3])
    assert backend.health()["ok"] is True
