"""federation.clusters.admin planning (pure) and its I/O orchestration against fake clusters."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path

import pytest
import typer
from fedkafka_builtin.file_backend import FileBackend
from typer.testing import CliRunner

from federation.cli.admin import endpoint_from_text, register
from federation.cli.common import resolve_store
from federation.clusters import admin
from federation.core.errors import ConfigError
from federation.core.model import (
    ClusterState,
    FederationMap,
    LogicalPartition,
    LogicalTopic,
    PhysicalCluster,
    Segment,
    new_topic_id,
)
from federation.plugin import parse_store


def _map(*ids: str, coordination: str | None = None) -> FederationMap:
    clusters = {c: PhysicalCluster(c, f"127.0.0.1:{9092 + i}") for i, c in enumerate(ids)}
    return FederationMap(version=1, clusters=clusters,
                         coordination_cluster=coordination or (ids[0] if ids else None))


# -- pure planning ---------------------------------------------------------------------------


def test_plan_create_topic_contiguous_layout() -> None:
    topic = admin.plan_create_topic(_map("a", "b"), "orders", 8)
    assert [(p.active.cluster, p.active.partition) for p in topic.partitions] == [
        ("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0), ("b", 1), ("b", 2), ("b", 3)]
    assert {s.topic for p in topic.partitions for s in p.segments} == {"orders.fk"}


def test_plan_create_topic_only_on_writable_clusters() -> None:
    fmap = _map("a", "b", "c")
    fmap = fmap.with_cluster(fmap.clusters["b"].with_state(ClusterState.READ_ONLY))
    topic = admin.plan_create_topic(fmap, "t", 4, "round_robin")
    assert {p.active.cluster for p in topic.partitions} == {"a", "c"}


@pytest.mark.parametrize(("name", "partitions", "strategy", "error", "match"), [
    ("x", 1, "nope", admin.InvalidRequestError, "unknown mapping strategy 'nope'.*contiguous"),
    ("x", 0, "contiguous", admin.InvalidPartitionsError, r"partitions must be >= 1, got 0"),
    ("bad name", 1, "contiguous", admin.InvalidTopicError, "illegal topic name"),
    ("", 1, "contiguous", admin.InvalidTopicError, "illegal topic name"),
    ("exists", 1, "contiguous", admin.TopicExistsError, "topic 'exists' already exists"),
])
def test_plan_create_topic_refusals(name: str, partitions: int, strategy: str,
                                    error: type[Exception], match: str) -> None:
    fmap = _map("a")
    fmap = fmap.with_topic(admin.plan_create_topic(fmap, "exists", 1))
    with pytest.raises(error, match=match):
        admin.plan_create_topic(fmap, name, partitions, strategy)


def test_plan_create_topic_needs_a_writable_cluster() -> None:
    fmap = _map("a")
    fmap = fmap.with_cluster(fmap.clusters["a"].with_state(ClusterState.DOWN))
    with pytest.raises(admin.InvalidRequestError, match="no cluster is active"):
        admin.plan_create_topic(fmap, "t", 1)


def test_error_codes_are_kafka_codes() -> None:
    assert admin.TopicExistsError.error_code == 36
    assert admin.UnknownTopicError.error_code == 3
    assert admin.InvalidPartitionsError.error_code == 37
    assert admin.InvalidTopicError.error_code == 17


def test_physical_needs_include_the_shadow_topic() -> None:
    fmap = _map("a", "b")
    topic = admin.plan_create_topic(fmap, "t", 5)
    assert admin.physical_needs(fmap, topic) == {"a": {"t.fk": 3, "t": 5}, "b": {"t.fk": 2}}


def test_plan_add_partitions() -> None:
    fmap = _map("a", "b")
    fmap = fmap.with_topic(admin.plan_create_topic(fmap, "t", 4))
    grown = admin.plan_add_partitions(fmap, "t", 6)
    assert grown.partitions[:4] == fmap.topics["t"].partitions
    assert [(p.active.cluster, p.active.partition) for p in grown.partitions[4:]] == [
        ("a", 2), ("b", 2)]
    assert grown.topic_id == fmap.topics["t"].topic_id
    with pytest.raises(admin.InvalidPartitionsError, match="must be larger, got 4"):
        admin.plan_add_partitions(fmap, "t", 4)
    with pytest.raises(admin.UnknownTopicError, match="'nope' does not exist"):
        admin.plan_add_partitions(fmap, "nope", 9)


def test_plan_add_cluster() -> None:
    first = admin.plan_add_cluster(None, PhysicalCluster("a", "127.0.0.1:1"))
    assert first.coordination_cluster == "a" and set(first.clusters) == {"a"}
    second = admin.plan_add_cluster(first, PhysicalCluster("b", "127.0.0.1:2", weight=3))
    assert second.coordination_cluster == "a" and second.clusters["b"].weight == 3
    with pytest.raises(admin.InvalidRequestError, match="'a' already exists"):
        admin.plan_add_cluster(second, PhysicalCluster("a", "127.0.0.1:3"))
    with pytest.raises(admin.InvalidRequestError, match=r"127\.0\.0\.1:2 already belongs to "
                       r"cluster 'b'"):
        admin.plan_add_cluster(second, PhysicalCluster("c", "127.0.0.1:2"))
    with pytest.raises(admin.InvalidRequestError, match="bad bootstrap"):
        admin.plan_add_cluster(second, PhysicalCluster("d", "nohost"))


def test_plan_set_cluster_state_and_remove() -> None:
    fmap = _map("a", "b", "c", "d", coordination="d")
    fmap = fmap.with_cluster(fmap.clusters["c"].with_state(ClusterState.READ_ONLY))
    fmap = fmap.with_cluster(fmap.clusters["d"].with_state(ClusterState.READ_ONLY))
    fmap = fmap.with_topic(admin.plan_create_topic(fmap, "t", 2))  # on a and b
    assert admin.plan_set_cluster_state(fmap, "b", "draining").clusters["b"].state is (
        ClusterState.DRAINING)
    with pytest.raises(admin.InvalidRequestError, match="valid: active, read_only"):
        admin.plan_set_cluster_state(fmap, "b", "asleep")
    with pytest.raises(admin.InvalidRequestError, match=r"still holds segments of t\[1\]"):
        admin.plan_set_cluster_state(fmap, "b", "retired")
    with pytest.raises(admin.UnknownClusterError, match="known: a, b, c, d"):
        admin.plan_set_cluster_state(fmap, "z", "active")
    with pytest.raises(admin.InvalidRequestError, match=r"still holds segments of t\[1\]"):
        admin.plan_remove_cluster(fmap, "b")
    with pytest.raises(admin.InvalidRequestError, match="coordinates consumer groups"):
        admin.plan_remove_cluster(fmap, "d")
    with pytest.raises(admin.InvalidRequestError, match="coordinates consumer groups"):
        admin.plan_set_cluster_state(fmap, "d", "retired")
    assert admin.plan_set_cluster_state(fmap, "c", "retired").clusters["c"].state is (
        ClusterState.RETIRED)
    assert set(admin.plan_remove_cluster(fmap, "c").clusters) == {"a", "b", "d"}


# -- orchestration against fake clusters -----------------------------------------------------


class FakeCluster:
    """An in-memory physical cluster; ``down`` makes it unreachable, ``fail_on`` refuses
    to create one topic name."""

    def __init__(self) -> None:
        self.topics: dict[str, int] = {}
        self.down = False
        self.fail_on: str | None = None
        self.configs: dict[str, dict[str, str]] = {}
        #: deleted topics still shown by this many ``topics()`` calls (brokers drop a
        #: deleted topic from their metadata after the delete is answered)
        self.linger = 0
        self.lingering: dict[str, int] = {}
        self.topics_calls = 0


class FakeAdmin:
    def __init__(self, cluster: FakeCluster, cid: str) -> None:
        self.cluster = cluster
        self.cid = cid

    async def topics(self) -> dict[str, int]:
        self.cluster.topics_calls += 1
        shown = dict(self.cluster.topics)
        for name in list(self.cluster.lingering):
            shown.setdefault(name, 1)
            self.cluster.lingering[name] -= 1
            if self.cluster.lingering[name] <= 0:
                del self.cluster.lingering[name]
        return shown

    async def create(self, topics: Mapping[str, int], replication: int | None = None,
                     config: Mapping[str, str] | None = None) -> None:
        for name, count in topics.items():
            if name == self.cluster.fail_on:
                raise admin.AdminError(f"cluster {self.cid!r} refused {name}")
            if name in self.cluster.topics:
                raise admin.TopicExistsError(name)
            self.cluster.topics[name] = count
            self.cluster.configs[name] = dict(config or {})

    async def grow(self, topic: str, partitions: int) -> None:
        self.cluster.topics[topic] = partitions

    async def delete(self, topics: Iterable[str]) -> None:
        for name in topics:
            if self.cluster.topics.pop(name, None) is not None and self.cluster.linger:
                self.cluster.lingering[name] = self.cluster.linger


class Fleet:
    def __init__(self, *ids: str) -> None:
        self.clusters = {c: FakeCluster() for c in ids}

    @contextlib.asynccontextmanager
    async def connect(self, cluster: PhysicalCluster) -> AsyncIterator[admin.ClusterAdmin]:
        fake = self.clusters[cluster.id]
        if fake.down:
            raise admin.ClusterUnreachableError(f"cluster {cluster.id!r} cannot be reached")
        yield FakeAdmin(fake, cluster.id)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileBackend]:
    backend = FileBackend(tmp_path / "map.json")
    backend.publish(_map("a", "b"), 0)
    yield backend
    backend.close()


async def test_create_topic_creates_physical_and_shadow_then_publishes(
        store: FileBackend) -> None:
    fleet = Fleet("a", "b")
    topic = await admin.create_topic(store, "t", 4, config={"retention.ms": "1000"},
                                     connect=fleet.connect)
    assert fleet.clusters["a"].topics == {"t.fk": 2, "t": 4}
    assert fleet.clusters["b"].topics == {"t.fk": 2}
    assert fleet.clusters["a"].configs == {"t.fk": {"retention.ms": "1000"}, "t": {}}
    stored = store.load()
    assert stored is not None and stored.version == 2 and stored.topics["t"] == topic


@pytest.mark.parametrize("failure", ["b down", "shadow refused", "data refused on b"])
async def test_failed_create_leaves_nothing(store: FileBackend, failure: str) -> None:
    fleet = Fleet("a", "b")
    if failure == "b down":
        fleet.clusters["b"].down = True
    elif failure == "shadow refused":
        fleet.clusters["a"].fail_on = "t"
    else:
        fleet.clusters["b"].fail_on = "t.fk"
    with pytest.raises(admin.AdminError):
        await admin.create_topic(store, "t", 4, connect=fleet.connect)
    assert all(c.topics == {} for c in fleet.clusters.values())
    stored = store.load()
    assert stored is not None and stored.version == 1 and not stored.topics


async def test_refused_create_answers_once_rolled_back_topics_are_gone(
        store: FileBackend) -> None:
    fleet = Fleet("a", "b")
    fleet.clusters["b"].fail_on = "t.fk"  # the shadow on a is created, then rolled back
    fleet.clusters["a"].linger = 3
    with pytest.raises(admin.AdminError):
        await admin.create_topic(store, "t", 4, connect=fleet.connect)
    assert fleet.clusters["a"].lingering == {}  # waited until a's metadata dropped them
    assert "t" not in await FakeAdmin(fleet.clusters["a"], "a").topics()


async def test_create_refuses_existing_physical_topic_and_keeps_it(store: FileBackend) -> None:
    fleet = Fleet("a", "b")
    fleet.clusters["b"].topics["t.fk"] = 7  # someone else's data: must survive
    with pytest.raises(admin.TopicExistsError, match=r"t\.fk already exist.*'b'"):
        await admin.create_topic(store, "t", 4, connect=fleet.connect)
    assert fleet.clusters["b"].topics == {"t.fk": 7}
    assert fleet.clusters["a"].topics == {}


async def test_create_publish_conflict_rolls_back(store: FileBackend) -> None:
    fleet = Fleet("a", "b")
    real_connect = fleet.connect

    @contextlib.asynccontextmanager
    async def racing(cluster: PhysicalCluster) -> AsyncIterator[admin.ClusterAdmin]:
        # Another admin publishes the same topic while we create physical topics.
        current = store.load()
        assert current is not None
        if "t" not in current.topics:
            other = LogicalTopic("t", new_topic_id("t"), (LogicalPartition(
                0, (Segment("b", "other.fk", 0, 0, 0),)),))
            store.publish(current.with_topic(other), current.version)
        async with real_connect(cluster) as a:
            yield a

    with pytest.raises(admin.TopicExistsError):
        await admin.create_topic(store, "t", 2, connect=racing)
    assert all(c.topics == {} for c in fleet.clusters.values())


async def test_add_partitions_grows_physical_and_shadow(store: FileBackend) -> None:
    fleet = Fleet("a", "b")
    await admin.create_topic(store, "t", 4, connect=fleet.connect)
    grown = await admin.add_partitions(store, "t", 6, connect=fleet.connect)
    assert grown.partition_count == 6
    assert fleet.clusters["a"].topics == {"t.fk": 3, "t": 6}
    assert fleet.clusters["b"].topics == {"t.fk": 3}


async def test_delete_topic_unpublishes_then_deletes(store: FileBackend) -> None:
    fleet = Fleet("a", "b")
    await admin.create_topic(store, "t", 4, connect=fleet.connect)
    fleet.clusters["b"].down = True
    deleted = await admin.delete_topic(store, "t", connect=fleet.connect)
    assert deleted.leftovers == (("b", "t.fk"),)
    assert fleet.clusters["a"].topics == {}
    assert fleet.clusters["b"].topics == {"t.fk": 2}
    stored = store.load()
    assert stored is not None and "t" not in stored.topics
    with pytest.raises(admin.UnknownTopicError):
        await admin.delete_topic(store, "t", connect=fleet.connect)


async def test_operations_on_an_empty_store_say_how_to_start(tmp_path: Path) -> None:
    empty = FileBackend(tmp_path / "empty.json")
    try:
        with pytest.raises(admin.NoMapError, match="fedkafka cluster add"):
            await admin.create_topic(empty, "t", 1, connect=Fleet().connect)
        assert await admin.list_topics(empty) == []
    finally:
        empty.close()


async def test_init_map(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "m.json")
    try:
        clusters = [PhysicalCluster("a", "127.0.0.1:1"), PhysicalCluster("b", "127.0.0.1:2")]
        first = await admin.init_map(backend, clusters, "a", probe_first=False)
        assert first.version == 1 and first.coordination_cluster == "a"
        with pytest.raises(admin.MapExistsError, match="already holds map version 1"):
            await admin.init_map(backend, clusters, "a", probe_first=False)
        again = await admin.init_map(backend, clusters, "a", probe_first=False, exist_ok=True)
        assert again == first
        with pytest.raises(admin.InvalidRequestError, match="coordination_cluster 'z'"):
            await admin.init_map(FileBackend(tmp_path / "n.json"), clusters, "z",
                                 probe_first=False)
    finally:
        backend.close()


async def test_add_cluster_refuses_unreachable(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "m.json")
    try:
        with pytest.raises(admin.ClusterUnreachableError, match="no bootstrap server answers"):
            await admin.add_cluster(backend, "a", "127.0.0.1:1")
        assert backend.load() is None
        added = await admin.add_cluster(backend, "a", "127.0.0.1:1", probe_first=False)
        assert added.state is ClusterState.ACTIVE
        fmap = backend.load()
        assert fmap is not None and fmap.coordination_cluster == "a"
    finally:
        backend.close()


# -- CLI helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), [
    ("file:/tmp/map.json", ("file", {"path": "/tmp/map.json"})),
    ("zookeeper:127.0.0.1:2181/fedkafka", ("zookeeper", {"hosts": "127.0.0.1:2181",
                                                         "root": "/fedkafka"})),
    ("zookeeper:h1:2181,h2:2181", ("zookeeper", {"hosts": "h1:2181,h2:2181",
                                                 "root": "/fedkafka"})),
    ("zookeeper:zk:2181/a/b/", ("zookeeper", {"hosts": "zk:2181", "root": "/a/b"})),
])
def test_parse_store(spec: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_store(spec) == expected


@pytest.mark.parametrize(("spec", "match"), [
    ("map.json", "--store .map.json. must look like BACKEND:LOCATION, e.g. file:"),
    ("zookeeper:nohostport/x", "--store .zookeeper:nohostport/x. must look like zookeeper:HOST"),
    ("etcd:127.0.0.1:2379", "unknown metadata backend 'etcd'; valid: file, zookeeper"),
])
def test_parse_store_errors(spec: str, match: str) -> None:
    """The backend's plugin parses the location; the error names the option."""
    with pytest.raises(ConfigError, match=match):
        parse_store(spec, "--store")


def test_resolve_store_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDKAFKA_STORE", raising=False)
    (tmp_path / "federation.json").write_text(json.dumps({"store": "file:/x/map.json"}))
    assert resolve_store(None, tmp_path) == "file:/x/map.json"
    monkeypatch.setenv("FEDKAFKA_STORE", "file:/env.json")
    assert resolve_store(None, tmp_path) == "file:/env.json"
    assert resolve_store("file:/flag.json", tmp_path) == "file:/flag.json"
    monkeypatch.delenv("FEDKAFKA_STORE")
    with pytest.raises(ConfigError, match="pass --store"):
        resolve_store(None, tmp_path / "nowhere")


def test_endpoint_from_text() -> None:
    e = endpoint_from_text("1000@127.0.0.1:19092/producer")
    assert (e.node_id, e.host, e.port, e.roles) == (1000, "127.0.0.1", 19092,
                                                    frozenset({"producer"}))
    assert endpoint_from_text("1@h:1").roles == frozenset({"producer", "consumer"})
    with pytest.raises(ConfigError, match="NODE_ID@HOST:PORT"):
        endpoint_from_text("h:1")


def _cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_cli_topic_and_cluster_commands(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    fmap = _map("a", "b")
    fmap = fmap.with_topic(admin.plan_create_topic(fmap, "orders", 4))
    backend = FileBackend(path)
    backend.publish(fmap, 0)
    backend.close()
    runner = CliRunner()
    store = f"file:{path}"

    result = runner.invoke(_cli(), ["topic", "describe", "orders", "--store", store, "--json"])
    assert result.exit_code == 0, result.output
    described = json.loads(result.output)
    assert described["partition_count"] == 4
    assert described["partitions"][3]["segments"] == [{
        "cluster": "b", "topic": "orders.fk", "partition": 1, "logical_start": 0,
        "physical_start": 0, "sealed_end": None}]

    result = runner.invoke(_cli(), ["topic", "describe", "orders", "--store", store])
    assert result.exit_code == 0 and "orders.fk[1]" in result.output

    result = runner.invoke(_cli(), ["cluster", "list", "--store", store, "--json"])
    assert [c["id"] for c in json.loads(result.output)] == ["a", "b"]

    result = runner.invoke(_cli(), ["cluster", "set-state", "b", "read_only", "--store", store])
    assert result.exit_code == 0 and "now read_only" in result.output

    result = runner.invoke(_cli(), ["pool", "set", "default", "--endpoint",
                                    "1000@127.0.0.1:19092", "--store", store])
    assert result.exit_code == 0, result.output
    result = runner.invoke(_cli(), ["pool", "list", "--store", store, "--json"])
    assert json.loads(result.output)["pools"]["default"][0]["port"] == 19092

    result = runner.invoke(_cli(), ["topic", "create", "x", "-p", "2", "--strategy", "nope",
                                    "--store", store])
    assert result.exit_code != 0
    assert isinstance(result.exception, admin.InvalidRequestError)
    assert "available: contiguous, round_robin, stable, weighted" in str(result.exception)

    result = runner.invoke(_cli(), ["topic", "list", "--store", "bogus"])
    assert isinstance(result.exception, ConfigError)
    assert "--store" in str(result.exception)
