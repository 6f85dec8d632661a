"""The raw Fetch response reader/writer agrees with kio's generated codec, byte for byte,
for every version the proxy serves."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from kio.index import load_payload_module
from kio.static.constants import EntityType

from federation.protocol import codec, fetch_wire
from federation.protocol.errors import to_kio
from federation.proxy.routing import build, replace

VERSIONS = range(fetch_wire.MIN_VERSION, fetch_wire.MAX_VERSION + 1)
TOPIC_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
BIG = bytes(range(256)) * 40  # above INLINE_LIMIT: passed by reference
SMALL = b"\x01\x02\x03"


def _kio_answer(version: int) -> Any:
    mod = load_payload_module(1, version, EntityType.response)
    parts = (
        build(mod.PartitionData, partition_index=3, error_code=to_kio(0), high_watermark=1234,
              last_stable_offset=1200, log_start_offset=7,
              aborted_transactions=(build(mod.AbortedTransaction, producer_id=9,
                                          first_offset=1100),),
              preferred_read_replica=-1, records=BIG),
        build(mod.PartitionData, partition_index=0, error_code=to_kio(6), high_watermark=-1,
              last_stable_offset=-1, log_start_offset=-1, aborted_transactions=None,
              preferred_read_replica=-1, records=None),
        build(mod.PartitionData, partition_index=1, error_code=to_kio(0), high_watermark=5,
              last_stable_offset=5, log_start_offset=0, aborted_transactions=(),
              preferred_read_replica=-1, records=SMALL),
    )
    topics = (build(mod.FetchableTopicResponse, topic="orders.fk", topic_id=TOPIC_ID,
                    partitions=parts),
              build(mod.FetchableTopicResponse, topic="t2", topic_id=TOPIC_ID, partitions=()))
    return build(mod.FetchResponse, throttle_time=datetime.timedelta(milliseconds=17),
                 error_code=to_kio(0), session_id=0, responses=topics)


def _join(parts: list[Any]) -> bytes:
    return b"".join(bytes(p) for p in parts)


@pytest.mark.parametrize("version", VERSIONS)
def test_parse_reads_what_kio_writes(version: int) -> None:
    header = codec.RequestHeader(1, version, 4242, "c")
    framed = _join(codec.encode_response(header, _kio_answer(version)))
    cid, answer = fetch_wire.parse_fetch_response(version, framed[4:])
    assert cid == 4242
    assert answer.throttle_time_ms == 17
    assert [len(t.partitions) for t in answer.topics] == [3, 0]
    t = answer.topics[0]
    if version >= 13:
        assert t.topic_id == TOPIC_ID and t.name is None
    else:
        assert t.name == "orders.fk" and t.topic_id is None
    p0, p1, p2 = t.partitions
    assert (p0.partition_index, p0.error_code, p0.high_watermark, p0.last_stable_offset) == (
        3, 0, 1234, 1200)
    assert p0.log_start_offset == (7 if version >= 5 else -1)
    assert p0.aborted == [(9, 1100)]
    assert p0.records is not None and bytes(p0.records) == BIG
    assert isinstance(p0.records, memoryview)  # a view of the frame, not a copy
    assert (p1.error_code, p1.records, p1.aborted) == (6, None, None)
    assert p2.records is not None and bytes(p2.records) == SMALL and p2.aborted == []


@pytest.mark.parametrize("version", VERSIONS)
def test_write_is_what_kio_writes(version: int) -> None:
    header = codec.RequestHeader(1, version, 4242, "c")
    expected = _join(codec.encode_response(header, _kio_answer(version)))
    _, answer = fetch_wire.parse_fetch_response(version, expected[4:])
    if version >= 13:
        for t in answer.topics:
            assert t.topic_id is not None
    parts = fetch_wire.encode_fetch_response(version, 4242, answer)
    assert _join(parts) == expected
    assert any(isinstance(p, memoryview) and len(p) == len(BIG) for p in parts)


def test_tagged_fields_of_partitions_are_dropped() -> None:
    from kio.schema.types import BrokerId

    mod = load_payload_module(1, 16, EntityType.response)
    answer = _kio_answer(16)
    first = replace(answer.responses[0].partitions[0], current_leader=mod.LeaderIdAndEpoch(
        leader_id=BrokerId(5), leader_epoch=3))
    hinted = replace(answer, responses=(replace(answer.responses[0], partitions=(first,)),))
    framed = _join(codec.encode_response(codec.RequestHeader(1, 16, 1, None), hinted))
    _, parsed = fetch_wire.parse_fetch_response(16, framed[4:])
    out = _join(fetch_wire.encode_fetch_response(16, 1, parsed))
    assert len(out) < len(framed)  # the hint is gone
    _, again = codec.decode_response(1, 16, out[4:])
    assert again.responses[0].partitions[0].current_leader.leader_id == -1
    assert bytes(again.responses[0].partitions[0].records) == BIG


@pytest.mark.parametrize("cut", [0, 3, 10, 40, 100])
def test_truncated_is_an_error(cut: int) -> None:
    framed = _join(codec.encode_response(codec.RequestHeader(1, 12, 1, None), _kio_answer(12)))
    with pytest.raises(fetch_wire.WireError):
        fetch_wire.parse_fetch_response(12, framed[4:4 + cut])


def test_trailing_bytes_are_an_error() -> None:
    framed = _join(codec.encode_response(codec.RequestHeader(1, 11, 1, None), _kio_answer(11)))
    with pytest.raises(fetch_wire.WireError, match="trailing"):
        fetch_wire.parse_fetch_response(11, framed[4:] + b"\x00")
