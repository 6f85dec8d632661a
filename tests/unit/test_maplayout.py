"""The incremental map layout (federation.store.maplayout): what a change writes, what a reader
fetches, validation of what changed, retired documents, gaps, and the format-1 layout."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

import pytest

from federation.core.model import (
    FederationMap,
    LogicalPartition,
    LogicalTopic,
    PhysicalCluster,
    Segment,
    new_topic_id,
)
from federation.store import maplayout, mapstore
from federation.store.maplayout import (
    Index,
    LayoutError,
    MapState,
    changed_topics,
    fetch_and_apply,
    parse_root,
    shard_of,
)

SHARDS = 16


def topic(name: str, cluster: str = "A", partitions: int = 2, *, retention: int = 1,
          physical: str | None = None, start: int = 0) -> LogicalTopic:
    ptopic = physical or f"{name}.fk"
    return LogicalTopic(
        name, new_topic_id(name, "t"),
        tuple(LogicalPartition(i, (Segment(cluster, ptopic, i, 0, start),))
              for i in range(partitions)),
        config={"retention.ms": str(retention)})


def base_map(n: int = 40) -> FederationMap:
    clusters = {c: PhysicalCluster(c, f"{c.lower()}:9092") for c in ("A", "B")}
    topics = {f"t{i:03d}": topic(f"t{i:03d}", "AB"[i % 2]) for i in range(n)}
    return FederationMap(0, clusters, topics, coordination_cluster="A")


class Store:
    """An in-memory store: the index and the documents (as a backend keeps them)."""

    def __init__(self) -> None:
        self.root: bytes | None = None
        self.docs: dict[str, bytes] = {}
        self.reads: list[str] = []

    def commit(self, plan: maplayout.Plan) -> None:
        self.docs.update(plan.docs)
        self.root = plan.index_bytes
        for name in plan.delete:
            self.docs.pop(name, None)

    def read_docs(self, names: list[str]) -> Mapping[str, bytes | None]:
        self.reads += names
        return {n: self.docs.get(n) for n in names}


def publish(store: Store, state: MapState, fmap: FederationMap, **kw: object) -> MapState:
    plan = state.plan(fmap, shards=SHARDS, **kw)  # type: ignore[arg-type]
    store.commit(plan)
    return plan.state


def empty() -> MapState:
    return MapState.from_legacy(FederationMap(0))


def test_first_publish_writes_the_base_and_every_shard() -> None:
    store = Store()
    plan = empty().plan(base_map(), shards=SHARDS, token="0badc0de")
    index = plan.index
    assert (index.version, index.shards) == (1, SHARDS)
    assert set(plan.docs) == index.names()
    assert index.base == "b.1.0badc0de"
    names = {f"t{i:03d}" for i in range(40)}
    for i, doc in enumerate(index.docs):  # each topic in its shard's document
        in_shard = {n for n in names if shard_of(n, SHARDS) == i}
        if not in_shard:
            assert doc is None
            continue
        assert doc == f"s{i:04d}.1.0badc0de"
        assert set(json.loads(plan.docs[doc])["topics"]) == in_shard
    assert max(len(d) for d in plan.docs.values()) <= maplayout.MAX_NODE_BYTES
    store.commit(plan)
    root = parse_root(store.root or b"")
    assert isinstance(root, Index)
    reader = MapState.build(root, store.docs)
    assert reader.fmap == plan.state.fmap and reader.version == 1


def test_a_topic_change_writes_one_shard_and_a_reader_fetches_only_it() -> None:
    store = Store()
    writer = publish(store, empty(), base_map())
    reader = fetch_and_apply(None, lambda: store.root, store.read_docs)
    assert reader is not None
    t = writer.fmap.topics["t007"]
    plan = writer.plan(writer.fmap.with_topic(dataclasses.replace(t, config={"x": "1"})))
    shard = shard_of("t007", writer.index.shards)  # type: ignore[union-attr]
    assert list(plan.docs) == [plan.index.docs[shard]]  # one document, the base unchanged
    assert plan.index.base == writer.index.base  # type: ignore[union-attr]
    assert plan.topics == {"t007"} and not plan.base
    store.commit(plan)
    store.reads.clear()
    old = reader.fmap
    reader = fetch_and_apply(reader, lambda: store.root, store.read_docs)
    assert reader is not None
    assert store.reads == [plan.index.docs[shard]]
    assert reader.fmap == plan.state.fmap and reader.version == 2
    assert reader.fmap.topics["t007"].config == {"x": "1"}
    # unchanged topics are the same objects; the change is known without a scan
    assert reader.fmap.topics["t008"] is old.topics["t008"]
    assert changed_topics(old, reader.fmap) == (frozenset({"t007"}), False)


def test_changed_topics_without_a_record_scans_identities() -> None:
    fmap = base_map()
    new = fmap.with_topic(topic("t001", "B", retention=9)).without_topic("t002")
    names, base = changed_topics(fmap, new)
    assert names == {"t001", "t002"} and base is False
    names, base = changed_topics(fmap, new.with_cluster(PhysicalCluster("C", "c:9092")))
    assert names == {"t001", "t002"} and base is True


def test_a_reader_that_missed_versions_catches_up_by_the_index_diff() -> None:
    store = Store()
    writer = publish(store, empty(), base_map())
    reader = fetch_and_apply(None, lambda: store.root, store.read_docs)
    assert reader is not None
    for i in range(5):  # the reader sees none of these
        fmap = writer.fmap.with_topic(topic(f"t{i:03d}", "A", retention=100 + i))
        writer = publish(store, writer, fmap)
    writer = publish(store, writer, writer.fmap.without_topic("t039").with_topic(
        topic("new", "B")))
    store.reads.clear()
    caught = fetch_and_apply(reader, lambda: store.root, store.read_docs)
    assert caught is not None and caught.version == 7
    assert caught.fmap == writer.fmap
    assert "t039" not in caught.fmap.topics and "new" in caught.fmap.topics
    changed_shards = {shard_of(n, SHARDS) for n in ("t000", "t001", "t002", "t003", "t004",
                                                     "t039", "new")}
    assert len(store.reads) == len(changed_shards)
    names, _ = changed_topics(reader.fmap, caught.fmap)
    assert names == {"t000", "t001", "t002", "t003", "t004", "t039", "new"}


def test_a_base_change_writes_the_base_and_validates_everything() -> None:
    store = Store()
    writer = publish(store, empty(), base_map())
    plan = writer.plan(writer.fmap.with_cluster(PhysicalCluster("C", "c:9092")))
    assert plan.base and list(plan.docs) == [plan.index.base] and plan.topics == set()
    bad = writer.fmap.with_cluster(PhysicalCluster("C", "no port"))
    with pytest.raises(ValueError, match="bad bootstrap server"):
        writer.plan(bad)


@pytest.mark.parametrize(("change", "error"), [
    (lambda m: m.with_topic(topic("t001", "Z")), "unknown cluster 'Z'"),
    (lambda m: m.with_topic(dataclasses.replace(topic("zz"), topic_id=m.topics["t003"].topic_id)),
     "share id"),
    (lambda m: m.with_topic(topic("zz", "A", physical="t000.fk")), "overlap on physical"),
    (lambda m: m.with_topic(topic("t000.fk", "B")), "collides with a logical"),
    (lambda m: m.with_topic(dataclasses.replace(topic("zz"), partitions=())), "no partition"),
])
def test_an_invalid_topic_change_is_refused(change: object, error: str) -> None:
    writer = publish(Store(), empty(), base_map())
    with pytest.raises(ValueError, match=error):
        writer.plan(change(writer.fmap))  # type: ignore[operator]


def test_a_topic_change_past_the_others_end_is_valid() -> None:
    writer = publish(Store(), empty(), base_map())
    # t000 (cluster A) ends nowhere: a new topic sharing its physical partitions overlaps;
    # a sealed predecessor followed by a later start does not.
    old = writer.fmap.topics["t000"]
    sealed = LogicalTopic(old.name, old.topic_id, tuple(
        LogicalPartition(p.index, (dataclasses.replace(p.active, sealed_end=10),
                                   Segment("B", "x.fk", p.index, 10, 0)))
        for p in old.partitions))
    writer = publish(Store(), writer, writer.fmap.with_topic(sealed))
    plan = writer.plan(writer.fmap.with_topic(topic("zz", "A", physical="t000.fk", start=10)))
    assert plan.topics == {"zz"}


def test_the_reader_refuses_a_document_it_cannot_validate() -> None:
    store = Store()
    writer = publish(store, empty(), base_map())
    reader = fetch_and_apply(None, lambda: store.root, store.read_docs)
    assert reader is not None
    plan = writer.plan(writer.fmap.with_topic(topic("t001", "B", retention=5)))
    store.commit(plan)
    doc = plan.index.docs[shard_of("t001", SHARDS)]
    assert doc is not None
    data = json.loads(store.docs[doc])
    data["topics"]["t001"]["partitions"][0][0]["cluster"] = "nowhere"
    store.docs[doc] = json.dumps(data).encode()
    with pytest.raises(LayoutError, match="unknown cluster 'nowhere'"):
        fetch_and_apply(reader, lambda: store.root, store.read_docs)
    data["topics"]["not-here"] = data["topics"].pop("t001")
    store.docs[doc] = json.dumps(data).encode()
    with pytest.raises(LayoutError, match="belongs to shard"):
        fetch_and_apply(reader, lambda: store.root, store.read_docs)


@pytest.mark.parametrize(("index", "error"), [
    (b"{ half", "not JSON"),
    (b'{"format": 9}', "unsupported map format 9"),
    (b'{"format": 2, "version": 1, "shards": 1, "base": "../../etc/passwd", "docs": [null]}',
     "bad document name"),
    (b'{"format": 2, "version": 1, "shards": 2, "base": "b.1.00000000", "docs": [null]}',
     "1 docs for 2 shards"),
    (b'{"format": 2, "version": -1, "shards": 1, "base": "b.1.00000000", "docs": [null]}',
     "version must be"),
    (b'{"format": 2, "version": 1, "shards": 1, "base": "b.1.00000000", "docs": [null], '
     b'"extra": 1}', "unknown keys"),
])
def test_a_bad_index_is_refused(index: bytes, error: str) -> None:
    with pytest.raises(LayoutError, match=error):
        parse_root(index)


def test_replaced_documents_are_deleted_after_the_grace_period() -> None:
    store = Store()
    writer = publish(store, empty(), base_map(), now=1000.0)
    first_doc = writer.index.docs[shard_of("t001", SHARDS)]  # type: ignore[union-attr]
    writer = publish(store, writer, writer.fmap.with_topic(topic("t001", "B", retention=2)),
                     now=1001.0)
    assert writer.index is not None
    assert [r[0] for r in writer.index.retired] == [first_doc]
    assert first_doc in store.docs  # readers of version 1 can still read it
    late = 1001.0 + maplayout.RETIRE_GRACE_S
    plan = writer.plan(writer.fmap.with_topic(topic("t002", "A", retention=3)), now=late)
    assert first_doc in plan.delete
    store.commit(plan)
    assert first_doc not in store.docs
    assert first_doc not in [r[0] for r in plan.index.retired]


def test_a_reader_rereads_the_index_when_its_documents_were_collected() -> None:
    store = Store()
    writer = publish(store, empty(), base_map())
    reader = fetch_and_apply(None, lambda: store.root, store.read_docs)
    assert reader is not None
    plan2 = writer.plan(writer.fmap.with_topic(topic("t001", "B", retention=2)))
    plan3 = plan2.state.plan(plan2.state.fmap.with_topic(topic("t001", "B", retention=3)))
    stale_root = plan2.index_bytes
    store.commit(plan2)
    store.commit(plan3)
    del store.docs[plan2.index.docs[shard_of("t001", SHARDS)]]  # type: ignore[arg-type]
    roots = [stale_root]  # the reader first reads the older index, then the newer one

    def read_root() -> bytes | None:
        return roots.pop() if roots else store.root

    caught = fetch_and_apply(reader, read_root, store.read_docs)
    assert caught is not None and caught.version == 3
    assert caught.fmap.topics["t001"].config == {"retention.ms": "3"}


def test_a_format_1_map_is_read_whole_and_converted_by_the_next_publish() -> None:
    legacy = base_map().with_version(7)
    store = Store()
    store.root = mapstore.dumps(legacy).encode()
    state = fetch_and_apply(None, lambda: store.root, store.read_docs)
    assert state is not None and state.index is None and state.fmap == legacy
    plan = state.plan(state.fmap)
    assert plan.index.version == 8 and set(plan.docs) == plan.index.names()
    store.commit(plan)
    reader = fetch_and_apply(state, lambda: store.root, store.read_docs)
    assert reader is not None and reader.index is not None
    assert reader.fmap == legacy.with_version(8)


def test_a_removed_topic_empties_its_shard() -> None:
    store = Store()
    only = FederationMap(0, {"A": PhysicalCluster("A", "a:9092")}, {"x": topic("x")})
    writer = publish(store, empty(), only)
    assert writer.index is not None and writer.index.docs.count(None) == SHARDS - 1
    reader = fetch_and_apply(None, lambda: store.root, store.read_docs)
    writer = publish(store, writer, writer.fmap.without_topic("x"))
    assert writer.index is not None and set(writer.index.docs) == {None}
    reader = fetch_and_apply(reader, lambda: store.root, store.read_docs)
    assert reader is not None and reader.fmap.topics == {}


def _decoded_topics(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the topics the reader decodes (FederationMap.from_dict on shard topics)."""
    seen: list[str] = []
    original = FederationMap.from_dict.__func__  # type: ignore[attr-defined]

    def spy(cls: type[FederationMap], data: Mapping[str, object]) -> FederationMap:
        seen.extend(data.get("topics", {}))  # type: ignore[arg-type]
        return original(cls, data)  # type: ignore[no-any-return]

    monkeypatch.setattr(FederationMap, "from_dict", classmethod(spy))
    return seen


def test_a_reader_decodes_only_the_changed_topic_of_a_shard(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store()
    writer = publish(store, empty(), base_map(200))  # ~12 topics per shard
    reader = fetch_and_apply(None, lambda: store.root, store.read_docs)
    assert reader is not None
    shard = shard_of("t007", SHARDS)
    neighbours = sorted(n for n in writer.fmap.topics if shard_of(n, SHARDS) == shard)
    assert len(neighbours) > 3
    t = writer.fmap.topics["t007"]
    writer = publish(store, writer, writer.fmap.with_topic(
        dataclasses.replace(t, config={"retention.ms": "5"})))
    decoded = _decoded_topics(monkeypatch)
    old = reader.fmap
    reader = fetch_and_apply(reader, lambda: store.root, store.read_docs)
    assert reader is not None and reader.version == writer.version
    assert decoded == ["t007"]  # not its shard's other topics
    assert reader.fmap == writer.fmap
    assert reader.fmap.topics["t007"].config == {"retention.ms": "5"}
    assert all(reader.fmap.topics[n] is old.topics[n] for n in neighbours if n != "t007")
    # a second change of the same shard: again only the topic that changed
    decoded.clear()
    other = next(n for n in neighbours if n != "t007")
    writer = publish(store, writer, writer.fmap.without_topic(other).with_topic(
        dataclasses.replace(writer.fmap.topics["t007"], config={"retention.ms": "6"})))
    reader = fetch_and_apply(reader, lambda: store.root, store.read_docs)
    assert reader is not None and decoded == ["t007"]
    assert reader.fmap == writer.fmap and other not in reader.fmap.topics
    assert other not in reader.topic_digests


def test_a_changed_topic_is_decoded_whatever_else_the_document_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The reader compares digests of what the document holds, not any claim in it: an
    # invalid change to a topic is decoded, validated and refused.
    store = Store()
    writer = publish(store, empty(), base_map(200))
    reader = fetch_and_apply(None, lambda: store.root, store.read_docs)
    assert reader is not None
    t = writer.fmap.topics["t007"]
    plan = writer.plan(writer.fmap.with_topic(dataclasses.replace(t, config={"x": "1"})))
    (doc_name,) = plan.docs
    data = json.loads(plan.docs[doc_name])
    neighbour = next(n for n in data["topics"] if n != "t007")
    data["topics"][neighbour]["partitions"][0][0]["cluster"] = "nowhere"
    plan.docs[doc_name] = json.dumps(data).encode()
    store.commit(plan)
    decoded = _decoded_topics(monkeypatch)
    with pytest.raises(LayoutError, match="nowhere"):
        fetch_and_apply(reader, lambda: store.root, store.read_docs)
    assert sorted(decoded) == sorted(["t007", neighbour])


def test_a_digest_that_does_not_match_decodes_the_topic(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store()
    writer = publish(store, empty(), base_map(200))
    reader = fetch_and_apply(None, lambda: store.root, store.read_docs)
    assert reader is not None
    t = writer.fmap.topics["t007"]
    plan = writer.plan(writer.fmap.with_topic(dataclasses.replace(t, config={"x": "1"})))
    store.commit(plan)
    known = dict(reader.topic_digests)
    neighbour = next(n for n in plan.state.fmap.topics
                     if shard_of(n, SHARDS) == shard_of("t007", SHARDS) and n != "t007")
    known[neighbour] = bytes(16)  # the reader's digest of a neighbour differs
    reader = dataclasses.replace(reader, topic_digests=known)
    decoded = _decoded_topics(monkeypatch)
    reader = fetch_and_apply(reader, lambda: store.root, store.read_docs)
    assert reader is not None and sorted(decoded) == sorted(["t007", neighbour])
    assert reader.fmap == plan.state.fmap
