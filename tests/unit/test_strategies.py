"""Built-in mapping strategies: contiguous, round_robin, weighted, and growing topics."""

from __future__ import annotations

import pytest
from fedkafka_builtin.strategies import Contiguous, RoundRobin, Weighted

from federation.core.model import (
    ClusterState,
    FederationMap,
    LogicalPartition,
    LogicalTopic,
    PhysicalCluster,
    new_topic_id,
)
from federation.core.strategy import MappingStrategy

A = PhysicalCluster("A", "a:9092")
B = PhysicalCluster("B", "b:9092")
C = PhysicalCluster("C", "c:9092")


def placement(partitions: tuple[LogicalPartition, ...]) -> list[tuple[str, int]]:
    return [(p.active.cluster, p.active.partition) for p in partitions]


def check_fresh(partitions: tuple[LogicalPartition, ...], count: int) -> None:
    assert [p.index for p in partitions] == list(range(count))
    for p in partitions:
        p.validate()
        assert len(p.segments) == 1
        seg = p.active
        assert (seg.logical_start, seg.physical_start, seg.sealed_end) == (0, 0, None)
        assert seg.topic == "orders.fk"


def as_topic(partitions: tuple[LogicalPartition, ...], strategy: str) -> LogicalTopic:
    return LogicalTopic("orders", new_topic_id("orders", "x"), partitions, strategy)


def test_builtins_satisfy_the_protocol() -> None:
    for strategy in (Contiguous(), RoundRobin(), Weighted()):
        assert isinstance(strategy, MappingStrategy)


def test_contiguous_is_the_seed_figure() -> None:
    parts = Contiguous().layout("orders", 8, [A, B], "orders.fk")
    check_fresh(parts, 8)
    assert placement(parts) == [("A", 0), ("A", 1), ("A", 2), ("A", 3),
                                ("B", 0), ("B", 1), ("B", 2), ("B", 3)]


def test_contiguous_remainders_go_to_the_first_clusters() -> None:
    parts = Contiguous().layout("orders", 8, [A, B, C], "orders.fk")
    assert placement(parts) == [("A", 0), ("A", 1), ("A", 2), ("B", 0), ("B", 1), ("B", 2),
                                ("C", 0), ("C", 1)]
    # fewer partitions than clusters: the last clusters get none
    assert placement(Contiguous().layout("orders", 2, [A, B, C], "orders.fk")) == [
        ("A", 0), ("B", 0)]


def test_round_robin() -> None:
    parts = RoundRobin().layout("orders", 7, [A, B, C], "orders.fk")
    check_fresh(parts, 7)
    assert placement(parts) == [("A", 0), ("B", 0), ("C", 0), ("A", 1), ("B", 1), ("C", 1),
                                ("A", 2)]


def test_weighted_is_proportional_with_largest_remainder() -> None:
    heavy = PhysicalCluster("B", "b:9092", weight=3)
    parts = Weighted().layout("orders", 8, [A, heavy], "orders.fk")
    check_fresh(parts, 8)
    assert placement(parts) == [("A", 0), ("A", 1)] + [("B", i) for i in range(6)]
    # quotas 10*1/6=1.67, 10*2/6=3.33, 10*3/6=5: floors 1,3,5 (9); remainder .67 wins
    w2 = PhysicalCluster("B", "b:9092", weight=2)
    w3 = PhysicalCluster("C", "c:9092", weight=3)
    counts = [c for c, _ in placement(Weighted().layout("orders", 10, [A, w2, w3], "orders.fk"))]
    assert (counts.count("A"), counts.count("B"), counts.count("C")) == (2, 3, 5)


def test_weighted_ties_go_to_the_earlier_cluster_and_weight_zero_gets_nothing() -> None:
    zero = PhysicalCluster("C", "c:9092", weight=0)
    parts = Weighted().layout("orders", 3, [A, B, zero], "orders.fk")
    assert placement(parts) == [("A", 0), ("A", 1), ("B", 0)]
    with pytest.raises(ValueError, match="weight 0"):
        Weighted().layout("orders", 3, [zero], "orders.fk")


@pytest.mark.parametrize("strategy", [Contiguous(), RoundRobin(), Weighted()])
def test_layout_rejects_bad_input(strategy: MappingStrategy) -> None:
    with pytest.raises(ValueError, match="no writable cluster"):
        strategy.layout("orders", 4, [], "orders.fk")
    with pytest.raises(ValueError, match=">= 1"):
        strategy.layout("orders", 0, [A], "orders.fk")
    down = A.with_state(ClusterState.READ_ONLY)
    with pytest.raises(ValueError, match="not writable"):
        strategy.layout("orders", 4, [down, B], "orders.fk")


def test_grow_adds_partitions_on_the_new_cluster_as_the_seed_does() -> None:
    topic = as_topic(Contiguous().layout("orders", 8, [A, B], "orders.fk"), "contiguous")
    grown = Contiguous().grow(topic, 12, [C], "orders.fk")
    assert grown[:8] == topic.partitions  # existing partitions untouched
    assert placement(grown[8:]) == [("C", 0), ("C", 1), ("C", 2), ("C", 3)]
    check_fresh(grown, 12)


def test_grow_continues_physical_numbering_on_existing_clusters() -> None:
    topic = as_topic(RoundRobin().layout("orders", 5, [A, B], "orders.fk"), "round_robin")
    grown = RoundRobin().grow(topic, 8, [A, B, C], "orders.fk")
    assert placement(grown[5:]) == [("A", 3), ("B", 2), ("C", 0)]
    fmap = FederationMap(1, {c.id: c for c in (A, B, C)},
                         {"orders": as_topic(grown, "round_robin")})
    fmap.validate()  # no physical partition is used twice
    assert fmap.physical_topics_on("A") == {"orders.fk": 4}
    assert fmap.physical_topics_on("C") == {"orders.fk": 1}


def test_grow_counts_sealed_segments_when_numbering() -> None:
    base = Contiguous().layout("orders", 1, [A], "orders.fk")
    moved = base[0].rolled(100, "B", "orders.fk", 0, physical_start=0)
    topic = as_topic((moved,), "contiguous")
    grown = Contiguous().grow(topic, 2, [A], "orders.fk")
    assert placement(grown[1:]) == [("A", 1)]  # A p0 still holds the sealed segment


def test_grow_must_grow() -> None:
    topic = as_topic(Contiguous().layout("orders", 4, [A], "orders.fk"), "contiguous")
    with pytest.raises(ValueError, match="must exceed 4"):
        Contiguous().grow(topic, 4, [B], "orders.fk")
