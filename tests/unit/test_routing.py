"""Sans-IO routing: logical ↔ physical with segments whose starts are not zero."""

from __future__ import annotations

import uuid

import pytest
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from federation.core.model import (
    ClusterState,
    FederationMap,
    LogicalPartition,
    LogicalTopic,
    PhysicalCluster,
    ProxyEndpoint,
    Segment,
)
from federation.protocol.errors import ErrorCode
from federation.protocol.records import batch_info
from federation.proxy import routing

SEALED = Segment("A", "t.fk", 0, logical_start=0, physical_start=0, sealed_end=100)
ACTIVE = Segment("B", "t.fk", 3, logical_start=100, physical_start=57)


def fmap(b_state: ClusterState = ClusterState.ACTIVE) -> FederationMap:
    topic = LogicalTopic(name="t", topic_id=uuid.uuid4(), partitions=(
        LogicalPartition(index=0, segments=(SEALED, ACTIVE)),
        LogicalPartition(index=1, segments=(Segment("A", "t.fk", 1, 0, 0),)),
    ))
    return FederationMap(version=3, clusters={
        "A": PhysicalCluster("A", "127.0.0.1:1"),
        "B": PhysicalCluster("B", "127.0.0.1:2", state=b_state)}, topics={"t": topic})


def batch(base: int, n: int) -> bytes:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                  producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                  batch_size=1 << 20)
    for i in range(n):
        b.append(i, timestamp=1000 + i, key=None, value=f"v{base + i}".encode(), headers=[])
    data = bytearray(b.build())
    data[0:8] = base.to_bytes(8, "big", signed=True)
    return bytes(data)


def test_produce_goes_to_the_active_segment() -> None:
    tgt = routing.produce_target(fmap(), "t", 0)
    assert (tgt.segment.cluster, tgt.segment.partition) == ("B", 3)


def test_produce_to_a_cluster_that_takes_no_writes_is_retriable() -> None:
    with pytest.raises(routing.RouteError) as e:
        routing.produce_target(fmap(ClusterState.READ_ONLY), "t", 0)
    assert e.value.error_code == ErrorCode.NOT_LEADER_OR_FOLLOWER


def test_unknown_topic_and_partition() -> None:
    for name, part in (("nope", 0), ("t", 2), ("t", -1)):
        with pytest.raises(routing.RouteError) as e:
            routing.produce_target(fmap(), name, part)
        assert e.value.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_fetch_picks_the_segment_holding_the_offset() -> None:
    assert routing.fetch_target(fmap(), "t", 0, 0).segment is SEALED
    assert routing.fetch_target(fmap(), "t", 0, 99).segment is SEALED
    assert routing.fetch_target(fmap(), "t", 0, 100).segment is ACTIVE
    assert routing.fetch_target(fmap(), "t", 0, 100).segment.to_physical(100) == 57
    assert routing.fetch_target(fmap(), "t", 0, 250).segment.to_physical(250) == 207


def test_fetch_before_the_log_start_is_out_of_range() -> None:
    late = Segment("B", "t.fk", 3, logical_start=40, physical_start=57)
    topic = LogicalTopic(name="u", topic_id=uuid.uuid4(),
                         partitions=(LogicalPartition(index=0, segments=(late,)),))
    m = FederationMap(version=1, clusters={"B": PhysicalCluster("B", "127.0.0.1:2")},
                      topics={"u": topic})
    with pytest.raises(routing.RouteError) as e:
        routing.fetch_target(m, "u", 0, 39)
    assert e.value.error_code == ErrorCode.OFFSET_OUT_OF_RANGE


def test_fetched_batches_are_shifted_to_logical_offsets() -> None:
    data = batch(57, 3) + batch(60, 2)
    out = routing.translate_records(data, ACTIVE)
    assert out is not None
    first = batch_info(out, 0)
    assert first.base_offset == 100
    assert batch_info(out, first.length).base_offset == 103
    # The records are intact (CRC still valid: baseOffset is outside it).
    parsed = DefaultRecordBatch(bytes(out[:first.length]))
    assert parsed.validate_crc()
    assert [r.offset for r in parsed] == [100, 101, 102]


def test_batches_past_a_seal_are_dropped() -> None:
    data = batch(97, 3) + batch(100, 5)  # physical == logical on the sealed segment
    out = routing.translate_records(data, SEALED)
    assert out is not None
    assert len(out) == len(batch(97, 3))


def test_watermarks_translate_and_stop_at_the_seal() -> None:
    assert routing.logical_offset(ACTIVE, 57) == 100
    assert routing.logical_offset(ACTIVE, 60) == 103
    assert routing.logical_offset(ACTIVE, -1) == -1
    assert routing.logical_offset(SEALED, 180) == 100


def test_leaders_spread_over_the_pool() -> None:
    pool = tuple(ProxyEndpoint(node_id=i, host="h", port=9000 + i) for i in range(3))
    leaders = [routing.leader_for(pool, "t", p).node_id for p in range(9)]
    assert sorted(set(leaders)) == [0, 1, 2]
    assert leaders[:3] != leaders[1:4] or len(set(leaders[:3])) == 3
    assert routing.leader_for(pool, "t", 4) == routing.leader_for(pool, "t", 4)
    with pytest.raises(routing.RouteError):
        routing.leader_for((), "t", 0)


def test_records_as_views_of_a_received_frame_translate_alike() -> None:
    # Fetch answers hand their records over as memoryviews of the frame (fetch_wire).
    frame = bytearray(b"head" + batch(57, 3) + batch(60, 2) + b"tail")
    view = memoryview(frame)[4:-4]
    out = routing.translate_records(view, ACTIVE)
    assert out is not None and bytes(out) == bytes(
        routing.translate_records(bytes(view), ACTIVE) or b"")
    assert frame[4:12] == batch(57, 3)[:8]  # the received frame itself is left as it was
    sealed = routing.translate_records(memoryview(bytearray(batch(97, 3) + batch(100, 5))),
                                       SEALED)
    assert sealed is not None and bytes(sealed) == batch(97, 3)
