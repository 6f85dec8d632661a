"""Record batch header rewrites, checked with kafka-python's own batch reader."""

from __future__ import annotations

import struct

import pytest
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords

from federation.protocol.records import (
    BATCH_HEADER_SIZE,
    RecordBatchError,
    batch_info,
    crc_ok,
    iter_batches,
    rewrite_producer,
    set_partition_leader_epoch,
    shift_base_offsets,
)


def build_batch(
    *,
    base_offset: int = 0,
    count: int = 3,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    transactional: bool = False,
) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=transactional,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        batch_size=1 << 20,
    )
    for i in range(count):
        builder.append(
            i, timestamp=1_700_000_000_000 + i, key=b"k%d" % i, value=b"v" * 50, headers=[]
        )
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base_offset)
    return bytes(data)


def read_batches(buf: bytes) -> list[DefaultRecordBatch]:
    records = MemoryRecords(bytes(buf))
    batches = []
    while records.has_next():
        batch = records.next_batch()
        assert batch is not None
        batches.append(batch)
    return batches


def test_batch_info_matches_kafka_python() -> None:
    data = build_batch(base_offset=100, count=4, producer_id=77, producer_epoch=3, base_sequence=9)
    info = batch_info(data)
    [batch] = read_batches(data)
    assert info.base_offset == 100 == batch.base_offset
    assert info.last_offset == 103 == batch.last_offset
    assert info.record_count == 4
    assert info.length == len(data)
    assert info.magic == 2
    assert (info.producer_id, info.producer_epoch, info.base_sequence) == (77, 3, 9)
    assert info.base_timestamp == 1_700_000_000_000
    assert info.max_timestamp == 1_700_000_000_003
    assert not info.is_transactional
    assert not info.is_control
    assert info.crc == batch.crc
    assert crc_ok(data)


def test_transactional_flag() -> None:
    data = build_batch(producer_id=5, producer_epoch=0, base_sequence=0, transactional=True)
    assert batch_info(data).is_transactional
    assert not batch_info(data).is_control


def test_control_flag() -> None:
    data = bytearray(build_batch())
    attributes = struct.unpack_from(">h", data, 21)[0] | 0x20
    struct.pack_into(">h", data, 21, attributes)
    assert batch_info(data).is_control


def test_iter_batches_over_concatenated_batches() -> None:
    first = build_batch(base_offset=0, count=2)
    second = build_batch(base_offset=2, count=5)
    buf = first + second
    assert list(iter_batches(buf)) == [(0, len(first)), (len(first), len(buf))]
    assert [batch_info(buf, start).record_count for start, _ in iter_batches(buf)] == [2, 5]


def test_iter_batches_skips_trailing_partial_batch() -> None:
    first = build_batch(count=2)
    partial = build_batch(base_offset=2)[:30]
    assert list(iter_batches(first + partial)) == [(0, len(first))]
    assert list(iter_batches(first + partial[:7])) == [(0, len(first))]
    assert list(iter_batches(b"")) == []


def test_iter_batches_rejects_impossible_length() -> None:
    bad = struct.pack(">qi", 0, 10) + bytes(60)
    with pytest.raises(RecordBatchError, match="invalid length 10"):
        list(iter_batches(bad))


def test_shift_base_offsets_keeps_crc_valid_and_partial_tail() -> None:
    first = build_batch(base_offset=0, count=2)
    second = build_batch(base_offset=2, count=3)
    partial = build_batch(base_offset=5)[:40]
    buf = first + second + partial
    out = shift_base_offsets(buf, 1_000)
    assert len(out) == len(buf)
    assert out[-40:] == partial  # untouched tail
    assert all(b.validate_crc() for b in read_batches(bytes(out)))
    batches = read_batches(bytes(out))
    assert [b.base_offset for b in batches] == [1_000, 1_002]
    assert [[r.offset for r in b] for b in batches] == [[1_000, 1_001], [1_002, 1_003, 1_004]]
    assert buf == first + second + partial  # input not modified


def test_shift_base_offsets_negative_delta() -> None:
    out = shift_base_offsets(build_batch(base_offset=500), -500)
    assert batch_info(out).base_offset == 0


def test_set_partition_leader_epoch() -> None:
    buf = build_batch(count=1) + build_batch(base_offset=1, count=1)
    out = set_partition_leader_epoch(buf, 42)
    batches = read_batches(bytes(out))
    assert [b.leader_epoch for b in batches] == [42, 42]
    assert all(b.validate_crc() for b in batches)


def test_rewrite_producer_recomputes_crc() -> None:
    buf = build_batch(producer_id=1, producer_epoch=0, base_sequence=0, count=3) + build_batch(
        base_offset=3, producer_id=1, producer_epoch=0, base_sequence=3, count=2
    )
    out = rewrite_producer(buf, producer_id=9_000_000_001, epoch=7)
    assert all(b.validate_crc() for b in read_batches(bytes(out)))
    batches = read_batches(bytes(out))
    assert [(b.producer_id, b.producer_epoch, b.base_sequence) for b in batches] == [
        (9_000_000_001, 7, 0),
        (9_000_000_001, 7, 3),
    ]
    assert [[r.value for r in b] for b in batches] == [[b"v" * 50] * 3, [b"v" * 50] * 2]


def test_producer_fields_are_under_crc() -> None:
    # Shows why rewrite_producer must recompute: a bare patch breaks the CRC.
    data = bytearray(build_batch(producer_id=1, producer_epoch=0, base_sequence=0))
    struct.pack_into(">q", data, 43, 2)
    assert not crc_ok(data)
    [batch] = read_batches(bytes(data))
    assert not batch.validate_crc()


def test_rewrite_producer_rejects_old_magic() -> None:
    data = bytearray(build_batch())
    data[16] = 1
    with pytest.raises(RecordBatchError, match="magic 1"):
        rewrite_producer(data, 1, 1)


def test_batch_info_needs_a_full_header() -> None:
    with pytest.raises(RecordBatchError, match=str(BATCH_HEADER_SIZE)):
        batch_info(build_batch()[:60])
