"""Rolls planned without I/O: evacuation, fences, seals, rebalance, drain progress, retire."""

from __future__ import annotations

import pytest
from fedkafka_builtin.strategies import Contiguous, Stable

from federation.controller import rolls
from federation.core.model import (
    ClusterState,
    FederationMap,
    LogicalPartition,
    LogicalTopic,
    Move,
    PhysicalCluster,
    Segment,
    new_topic_id,
)
from federation.protocol import records
from federation.store import mapstore


def _map(states: dict[str, ClusterState] | None = None, partitions: int = 8,
         clusters: tuple[str, ...] = ("a", "b", "c"), on: tuple[str, ...] = ("a", "b"),
         weights: dict[str, int] | None = None) -> FederationMap:
    states = states or {}
    cl = {c: PhysicalCluster(c, f"127.0.0.1:{9000 + i}", weight=(weights or {}).get(c, 1))
          for i, c in enumerate(clusters)}
    layout = Contiguous().layout("t", partitions, [cl[c] for c in on], "t.fk")
    topic = LogicalTopic("t", new_topic_id("t"), layout, "contiguous")
    cl = {c: x.with_state(states.get(c, ClusterState.ACTIVE)) for c, x in cl.items()}
    fmap = FederationMap(version=5, clusters=cl, topics={"t": topic}, coordination_cluster="a")
    fmap.validate()
    return fmap


def test_a_down_cluster_fails_over_only_after_failover_after() -> None:
    fmap = _map({"b": ClusterState.DOWN})
    assert rolls.plan_evacuations(fmap, {"b": 3.0}, failover_after=10.0) == []
    moves = rolls.plan_evacuations(fmap, {"b": 12.0}, failover_after=10.0)
    assert sorted(m.partition for m in moves) == [4, 5, 6, 7]
    assert {m.reason for m in moves} == {"failover"}
    # By weight over the writable, reachable clusters: a holds 4 already, c none.
    assert [m.target for m in moves].count("c") >= 3
    assert {m.target for m in moves} <= {"a", "c"}


def test_read_only_and_draining_clusters_are_evacuated_at_once() -> None:
    for state in (ClusterState.READ_ONLY, ClusterState.DRAINING):
        moves = rolls.plan_evacuations(_map({"a": state}), {}, failover_after=10.0)
        assert sorted(m.partition for m in moves) == [0, 1, 2, 3]
        assert {m.reason for m in moves} == {"drain"}
        assert {m.target for m in moves} <= {"b", "c"}


def test_unreachable_clusters_are_never_targets() -> None:
    fmap = _map({"a": ClusterState.DRAINING})
    moves = rolls.plan_evacuations(fmap, {"c": 1.0}, failover_after=10.0)
    assert {m.target for m in moves} == {"b"}


def test_fence_then_seal_rolls_the_partition() -> None:
    fmap = _map()
    fenced_map, fenced, refused = rolls.apply_fences(fmap, [Move("t", 5, "c", "rebalance"),
                                                            Move("t", 1, "a")])
    assert [m.partition for m in fenced] == [5]
    assert refused[0][0].partition == 1 and "already on a" in refused[0][1]
    fenced_map.validate()
    lp = fenced_map.topics["t"].partitions[5]
    assert lp.fence == "c"
    assert rolls.fenced_partitions(fenced_map) == [("t", lp)]
    # The fence survives the store's JSON round trip.
    assert mapstore.loads(mapstore.dumps(fenced_map)).topics["t"].partitions[5].fence == "c"

    old = lp.active
    seal = rolls.Seal("t", 5, old, seal_physical=120, target="c", target_topic="t.fk",
                      target_partition=0, target_start=0)
    sealed_map, done = rolls.apply_seals(fenced_map, [seal])
    assert done == [seal]
    sealed_map.validate()
    new_lp = sealed_map.topics["t"].partitions[5]
    assert new_lp.fence is None
    assert new_lp.segments[0] == Segment("b", "t.fk", 1, 0, 0, sealed_end=120)
    assert new_lp.active == Segment("c", "t.fk", 0, logical_start=120, physical_start=0)
    # A seal planned against another active segment (a stale plan) is not applied.
    again, done = rolls.apply_seals(sealed_map, [seal])
    assert done == [] and again.topics == sealed_map.topics


def test_seal_never_before_the_segment_start() -> None:
    fmap = _map()
    lp = fmap.topics["t"].partitions[0]
    rolled = lp.rolled(50, "c", "t.fk", 0, 0)
    fmap = fmap.with_topic(LogicalTopic("t", fmap.topics["t"].topic_id,
                                        (rolled, *fmap.topics["t"].partitions[1:])))
    fenced_map, _, _ = rolls.apply_fences(fmap, [Move("t", 0, "b")])
    active = fenced_map.topics["t"].partitions[0].active  # on c, logical 50, physical 0
    seal = rolls.Seal("t", 0, active, -1, "b", "t.fk", 4, 0)
    sealed_map, _ = rolls.apply_seals(fenced_map, [seal])
    segs = sealed_map.topics["t"].partitions[0].segments
    assert segs[1].sealed_end == 50 and segs[2].logical_start == 50


def test_rebalance_moves_a_weighted_share_and_keeps_the_partition_count() -> None:
    fmap = _map(clusters=("a", "b", "c"), on=("a", "b"), partitions=12)
    moves = rolls.plan_rebalance(fmap)
    assert len(moves) == 4 and {m.target for m in moves} == {"c"}
    fenced, ok, _ = rolls.apply_fences(fmap, moves)
    seals = [rolls.Seal("t", m.partition, fmap.topics["t"].partitions[m.partition].active, 10,
                        "c", "t.fk", i, 0) for i, m in enumerate(ok)]
    done, _ = rolls.apply_seals(fenced, seals)
    done.validate()
    assert done.topics["t"].partition_count == 12
    assert rolls.active_load(done) == {"a": 4, "b": 4, "c": 4}
    assert rolls.plan_rebalance(done) == []


def test_rebalance_follows_weights() -> None:
    fmap = _map(clusters=("a", "b", "c"), on=("a", "b"), partitions=8, weights={"c": 2})
    moves = rolls.plan_rebalance(fmap)
    assert len(moves) == 4 and {m.target for m in moves} == {"c"}


def test_drain_progress_counts_unread_records_per_group() -> None:
    fmap = _map()
    t = fmap.topics["t"]
    # partition 4 (on b) rolled at 100 onto c
    parts = list(t.partitions)
    parts[4] = parts[4].rolled(100, "c", "t.fk", 0, 0)
    parts[5] = parts[5].rolled(40, "c", "t.fk", 1, 0)
    parts[6] = parts[6].rolled(0, "c", "t.fk", 2, 0)
    parts[7] = parts[7].fenced("c")
    fmap = fmap.with_topic(LogicalTopic("t", t.topic_id, tuple(parts)))
    progress = rolls.drain_progress(fmap, "b", {"g1": {("t", 4): 30, ("t", 5): 40},
                                                "g2": {("t", 4): 100}})
    assert progress.active == ["t[7]"]
    assert progress.remaining_records == 70 and progress.groups == {"g1": 70}
    assert not progress.done
    # Retention removed the first 90 physical records of partition 4: only 10 unread.
    progress = rolls.drain_progress(fmap, "b", {"g1": {("t", 4): 30}}, {("b", "t.fk", 0): 90})
    assert progress.remaining_records == 10


def test_retire_drops_the_clusters_segments_and_refuses_active_ones() -> None:
    fmap = _map()
    with pytest.raises(ValueError, match="still written on cluster 'b'"):
        rolls.plan_retire(fmap, "b")
    with pytest.raises(ValueError, match="coordinates consumer groups"):
        rolls.plan_retire(fmap, "a")
    t = fmap.topics["t"]
    parts = [lp if lp.active.cluster != "b" else lp.rolled(10 * lp.index, "c", "t.fk",
                                                          lp.index - 4, 0)
             for lp in t.partitions]
    fmap = fmap.with_topic(LogicalTopic("t", t.topic_id, tuple(parts)))
    retired = rolls.plan_retire(fmap, "b")
    retired.validate()
    assert retired.clusters["b"].state is ClusterState.RETIRED
    for lp in retired.topics["t"].partitions:
        assert all(s.cluster != "b" for s in lp.segments)
    assert retired.topics["t"].partitions[5].logical_start == 50


def test_stable_topics_refuse_to_grow() -> None:
    fmap = _map()
    topic = LogicalTopic("s", new_topic_id("s"), Stable().layout(
        "s", 4, list(fmap.clusters.values()), "s.fk"), "stable")
    with pytest.raises(ValueError, match="rebalance"):
        Stable().grow(topic, 6, list(fmap.clusters.values()), "s.fk")


def test_moves_survive_the_store_round_trip() -> None:
    import dataclasses

    fmap = dataclasses.replace(_map(), moves=(Move("t", 3, "c", "rebalance"),))
    assert mapstore.loads(mapstore.dumps(fmap)).moves == (Move("t", 3, "c", "rebalance"),)


def test_count_records_sums_offsets_of_every_batch() -> None:
    def batch(last_delta: int) -> bytes:
        header = bytearray(61)
        header[8:12] = (49).to_bytes(4, "big")  # batch length: header only
        header[16] = 2
        header[23:27] = last_delta.to_bytes(4, "big")
        return bytes(header)

    assert records.count_records(batch(4) + batch(0)) == 6
    assert records.count_records(b"") == 0 and records.count_records(None) == 0


def test_fenced_partition_is_unwritable_in_routing() -> None:
    from federation.proxy import routing
    from federation.proxy.routing import RouteError

    fenced, _, _ = rolls.apply_fences(_map(), [Move("t", 2, "c")])
    with pytest.raises(RouteError) as e:
        routing.produce_target(fenced, "t", 2)
    assert e.value.error_code == 6  # NOT_LEADER_OR_FOLLOWER: retriable
    assert routing.produce_target(fenced, "t", 3).segment.cluster == "a"
    lp: LogicalPartition = fenced.topics["t"].partitions[2]
    assert not routing.writable(fenced, lp)


def test_written_before_seal_only_for_the_same_producer_epoch_and_covered_sequences() -> None:
    sealed = {7: (0, 19)}  # producer 7, epoch 0, last sequence 19 in the sealed segment
    assert rolls.written_before_seal(7, 0, 15, 5, sealed)  # 15..19: already there
    assert not rolls.written_before_seal(7, 0, 20, 5, sealed)  # the next batch
    assert not rolls.written_before_seal(7, 0, 18, 5, sealed)  # runs past: not a retry
    assert not rolls.written_before_seal(7, 1, 15, 5, sealed)  # another epoch
    assert not rolls.written_before_seal(8, 0, 0, 5, sealed)  # another producer
    assert not rolls.written_before_seal(-1, -1, -1, 5, sealed)  # not idempotent


def test_next_after_seal_orders_a_producers_first_write_into_the_new_segment() -> None:
    sealed = {7: (0, 567)}  # producer 7 wrote sequences up to 567 before the seal
    assert rolls.next_after_seal(7, 0, 568, sealed)  # the next one: may go first
    assert not rolls.next_after_seal(7, 0, 640, sealed)  # a later one must wait for 568
    assert rolls.next_after_seal(7, 1, 0, sealed)  # a new epoch starts again at 0
    assert rolls.next_after_seal(8, 0, 100, sealed)  # unknown there: nothing to order
    assert rolls.next_after_seal(7, 0, 0, {7: (0, 2**31 - 1)})  # sequences wrap
