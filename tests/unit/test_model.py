"""The data model: offset translation, validation, and the JSON map format."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from federation.core.model import (
    ANONYMOUS,
    MAP_FORMAT,
    ClusterState,
    FederationMap,
    LogicalPartition,
    LogicalTopic,
    PhysicalCluster,
    ProxyEndpoint,
    RoutingRule,
    Segment,
    new_topic_id,
)
from federation.store import mapstore

A_P0 = Segment("A", "orders.fk", 0, logical_start=0, physical_start=0, sealed_end=100)
B_P3 = Segment("B", "orders.fk", 3, logical_start=100, physical_start=57)
MOVED = LogicalPartition(0, (A_P0, B_P3))


def make_map(**changes: object) -> FederationMap:
    fmap = FederationMap(
        version=3,
        clusters={
            "A": PhysicalCluster("A", "a1:9092,a2:9092"),
            "B": PhysicalCluster("B", "b1:9092", weight=2, security={"security.protocol": "SSL"}),
            "C": PhysicalCluster("C", "c1:9092", state=ClusterState.READ_ONLY),
        },
        topics={
            "orders": LogicalTopic("orders", new_topic_id("orders", "n1"), (
                MOVED,
                LogicalPartition(1, (Segment("A", "orders.fk", 1, 0, 0),)),
            ), strategy="contiguous", config={"retention.ms": "60000"}),
        },
        coordination_cluster="A",
        pools={"default": (ProxyEndpoint(1, "p1", 9192),),
               "producer": (ProxyEndpoint(2, "p2", 9192, frozenset({"producer"})),)},
        routing=(RoutingRule(r"orders-.*", "producer"),),
    )
    return dataclasses.replace(fmap, **changes)  # type: ignore[arg-type]


# -- segments and offset translation ---------------------------------------------------------


def test_segment_translation_with_nonzero_starts() -> None:
    assert B_P3.to_physical(100) == 57
    assert B_P3.to_physical(150) == 107
    assert B_P3.to_logical(57) == 100
    assert B_P3.to_logical(107) == 150
    assert A_P0.to_physical(42) == 42
    # a sealed segment's end translates too (its physical "high watermark")
    assert A_P0.physical_end == 100
    assert B_P3.physical_end is None


def test_segment_containment() -> None:
    assert A_P0.contains_logical(0) and A_P0.contains_logical(99)
    assert not A_P0.contains_logical(100)
    assert B_P3.contains_logical(100) and B_P3.contains_logical(10**12)
    assert not B_P3.contains_logical(99)
    assert B_P3.contains_physical(57) and not B_P3.contains_physical(56)
    assert not A_P0.is_active and B_P3.is_active


def test_segment_rejects_negative_and_inverted_ranges() -> None:
    with pytest.raises(ValueError, match="negative"):
        Segment("A", "t", -1, 0, 0)
    with pytest.raises(ValueError, match="sealed_end before logical_start"):
        Segment("A", "t", 0, 10, 0, sealed_end=5)


def test_segment_for_finds_the_right_segment() -> None:
    assert MOVED.segment_for(0) is A_P0
    assert MOVED.segment_for(99) is A_P0
    assert MOVED.segment_for(100) is B_P3
    assert MOVED.segment_for(5000) is B_P3
    assert MOVED.active is B_P3
    # fetch at logical 120 reads B p3 from physical 77
    segment = MOVED.segment_for(120)
    assert segment is not None and (segment.cluster, segment.partition) == ("B", 3)
    assert segment.to_physical(120) == 77


def test_segment_for_before_the_first_segment_is_none() -> None:
    pruned = LogicalPartition(0, (B_P3,))
    assert pruned.segment_for(99) is None
    assert pruned.logical_start == 100


def test_rolled_seals_the_active_segment_and_opens_a_new_one() -> None:
    rolled = MOVED.rolled(250, "C", "orders.fk", 0, physical_start=0)
    rolled.validate()
    assert [s.cluster for s in rolled.segments] == ["A", "B", "C"]
    assert rolled.segments[1].sealed_end == 250
    assert rolled.segments[1].physical_end == 207
    assert rolled.segment_for(249) == rolled.segments[1]
    assert rolled.segment_for(250) is rolled.active
    assert rolled.active.to_physical(260) == 10
    with pytest.raises(ValueError, match="before the active segment"):
        MOVED.rolled(50, "C", "orders.fk", 0, 0)


def test_partition_validate_rejects_gaps_and_unsealed_middles() -> None:
    gap = LogicalPartition(0, (A_P0, dataclasses.replace(B_P3, logical_start=101)))
    with pytest.raises(ValueError, match="contiguous"):
        gap.validate()
    unsealed = LogicalPartition(0, (dataclasses.replace(A_P0, sealed_end=None), B_P3))
    with pytest.raises(ValueError, match="not sealed"):
        unsealed.validate()
    with pytest.raises(ValueError, match="no active segment"):
        LogicalPartition(0, (A_P0,)).validate()
    with pytest.raises(ValueError, match="has no segment"):
        LogicalPartition(0, ()).validate()


# -- clusters, topics, ids ---------------------------------------------------------------------


def test_cluster_states() -> None:
    assert [s for s in ClusterState if s.writable] == [ClusterState.ACTIVE]
    assert {s for s in ClusterState if s.readable} == {
        ClusterState.ACTIVE, ClusterState.READ_ONLY, ClusterState.DRAINING}
    assert PhysicalCluster("A", "a:1", state="down").state is ClusterState.DOWN  # type: ignore[arg-type]
    assert PhysicalCluster("A", "a:1,b:2").bootstrap_servers == ("a:1", "b:2")


def test_mappings_are_read_only() -> None:
    fmap = make_map()
    with pytest.raises(TypeError):
        fmap.clusters["X"] = PhysicalCluster("X", "x:1")  # type: ignore[index]
    with pytest.raises(TypeError):
        fmap.clusters["B"].security["x"] = "y"  # type: ignore[index]
    hash(fmap.clusters["B"])  # hashable despite the mapping field


def test_topic_ids_are_stable_and_distinct() -> None:
    assert new_topic_id("orders", "n1") == new_topic_id("orders", "n1")
    assert new_topic_id("orders", "n1") != new_topic_id("orders", "n2")
    assert new_topic_id("orders") != new_topic_id("orders")
    fmap = make_map()
    assert fmap.topic_by_id(new_topic_id("orders", "n1")) is fmap.topics["orders"]
    assert fmap.topic_by_id(uuid.uuid4()) is None


def test_physical_topics_on_counts_sealed_segments_too() -> None:
    fmap = make_map()
    assert fmap.physical_topics_on("A") == {"orders.fk": 2}
    assert fmap.physical_topics_on("B") == {"orders.fk": 4}
    assert fmap.physical_topics_on("C") == {}
    assert fmap.physical_topic_name("orders") == "orders.fk"


def test_writable_clusters_keep_map_order() -> None:
    assert [c.id for c in make_map().writable_clusters()] == ["A", "B"]


def test_with_helpers_return_new_maps() -> None:
    fmap = make_map()
    assert fmap.with_version(9).version == 9 and fmap.version == 3
    d = PhysicalCluster("D", "d:9092")
    assert "D" in fmap.with_cluster(d).clusters and "D" not in fmap.clusters
    assert "orders" not in fmap.without_topic("orders").topics


def test_pool_for_falls_back_to_default() -> None:
    fmap = make_map()
    assert fmap.pool_for("producer")[0].node_id == 2
    assert fmap.pool_for("nope")[0].node_id == 1


def test_routing_rule_matches_whole_client_id() -> None:
    rule = RoutingRule(r"orders-.*", "producer")
    assert rule.matches("orders-writer")
    assert not rule.matches("preorders-writer")
    assert not rule.matches(None)


def test_principal_prints_like_kafka() -> None:
    assert str(ANONYMOUS) == "User:ANONYMOUS"


# -- map validation ----------------------------------------------------------------------------


def test_valid_map_validates() -> None:
    make_map().validate()


@pytest.mark.parametrize(("changes", "message"), [
    ({"version": -1}, "version must be >= 0"),
    ({"coordination_cluster": "Z"}, "coordination_cluster 'Z' is not a cluster"),
    ({"physical_topic_template": "{topic}"}, "must contain {topic} and differ"),
    ({"physical_topic_template": "fk.data"}, "must contain {topic}"),
    ({"physical_topic_template": "{name}.fk"}, "physical_topic_template"),
    ({"default_pool": "missing"}, "default pool 'missing'"),
    ({"routing": (RoutingRule("(", "default"),)}, "routing pattern"),
    ({"routing": (RoutingRule("x", "nowhere"),)}, "unknown pool 'nowhere'"),
    ({"pools": {"default": (ProxyEndpoint(1, "p1", 9192), ProxyEndpoint(1, "p2", 9192))}},
     "node id 1 appears twice"),
    ({"pools": {"default": (ProxyEndpoint(1, "p1", 9192),),
                "producer": (ProxyEndpoint(1, "p9", 9192),)}}, "node id 1 is both"),
    ({"pools": {"default": (ProxyEndpoint(1, "p1", 0),)}}, "bad endpoint"),
])
def test_map_validate_names_the_problem(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("{", r"\{")):
        make_map(**changes).validate()


def test_validate_rejects_unknown_cluster_in_segment() -> None:
    fmap = make_map()
    clusters = {k: v for k, v in fmap.clusters.items() if k != "B"}
    with pytest.raises(ValueError, match="unknown cluster 'B'"):
        make_map(clusters=clusters).validate()


def test_validate_rejects_two_logical_partitions_on_one_physical_partition() -> None:
    fmap = make_map()
    clash = LogicalTopic("clicks", new_topic_id("clicks", "n"),
                         (LogicalPartition(0, (Segment("B", "orders.fk", 3, 0, 500),)),))
    with pytest.raises(ValueError, match=r"overlap on physical partition B/orders\.fk/3"):
        fmap.with_topic(clash).validate()
    # a sealed range before the active one is fine
    ok = LogicalTopic("clicks", new_topic_id("clicks", "n"), (LogicalPartition(0, (
        Segment("B", "orders.fk", 3, 0, 0, sealed_end=57),
        Segment("A", "clicks.fk", 0, 57, 0))),))
    fmap.with_topic(ok).validate()


def test_validate_rejects_shared_topic_ids_and_bad_names() -> None:
    fmap = make_map()
    twin = dataclasses.replace(fmap.topics["orders"], name="orders2",
                               partitions=(LogicalPartition(0, (Segment("C", "o2.fk", 0, 0, 0),)),))
    with pytest.raises(ValueError, match="share id"):
        fmap.with_topic(twin).validate()
    bad = LogicalTopic("bad name", uuid.uuid4(),
                       (LogicalPartition(0, (Segment("C", "x", 0, 0, 0),)),))
    with pytest.raises(ValueError, match="illegal topic name"):
        fmap.with_topic(bad).validate()


def test_validate_rejects_physical_topic_named_like_a_shadow_topic() -> None:
    fmap = make_map()
    shadowed = LogicalTopic("clicks", uuid.uuid4(),
                            (LogicalPartition(0, (Segment("A", "orders", 0, 0, 0),)),))
    with pytest.raises(ValueError, match="collides with a logical"):
        fmap.with_topic(shadowed).validate()


# -- JSON format -------------------------------------------------------------------------------


def test_map_round_trips_through_json() -> None:
    fmap = make_map()
    text = mapstore.dumps(fmap)
    assert mapstore.loads(text) == fmap
    assert mapstore.dumps(mapstore.loads(text)) == text  # stable


def test_json_document_shape() -> None:
    doc = json.loads(mapstore.dumps(make_map()))
    assert doc["format"] == MAP_FORMAT == 1
    assert doc["version"] == 3
    assert doc["clusters"]["B"] == {"bootstrap": "b1:9092", "state": "active", "weight": 2,
                                    "security": {"security.protocol": "SSL"}}
    assert doc["topics"]["orders"]["partitions"][0] == [
        {"cluster": "A", "topic": "orders.fk", "partition": 0, "logical_start": 0,
         "physical_start": 0, "sealed_end": 100},
        {"cluster": "B", "topic": "orders.fk", "partition": 3, "logical_start": 100,
         "physical_start": 57, "sealed_end": None},
    ]
    assert doc["topics"]["orders"]["topic_id"] == str(new_topic_id("orders", "n1"))
    assert doc["pools"]["default"] == [{"node_id": 1, "host": "p1", "port": 9192,
                                        "roles": ["consumer", "producer"]}]
    assert doc["routing"] == [{"pattern": "orders-.*", "pool": "producer"}]


@pytest.mark.parametrize(("text", "message"), [
    ("not json", "not JSON"),
    ("[1]", "not a JSON object"),
    ('{"format": 2, "version": 1}', "unsupported map format 2"),
    ('{"format": 1, "version": 1, "clusters": {}, "topics": {}, "extra": 1}', "unknown keys"),
    ('{"format": 1, "clusters": {}, "topics": {}}', "malformed"),
    ('{"format": 1, "version": 1, "clusters": {"A": {"bootstrap": "a:1", "state": "on"}},'
     ' "topics": {}}', "'on' is not a valid ClusterState"),
])
def test_loads_rejects_bad_documents(text: str, message: str) -> None:
    with pytest.raises(mapstore.MapFormatError, match=message):
        mapstore.loads(text)


def test_loads_validates() -> None:
    doc = make_map().to_dict()
    doc["coordination_cluster"] = "nowhere"
    with pytest.raises(mapstore.MapFormatError, match="coordination_cluster"):
        mapstore.loads(json.dumps(doc))
