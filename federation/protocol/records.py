"""Fixed-offset access to magic-v2 record batches, which otherwise stay opaque bytes.

The proxy never decodes records on the hot path.  It only rewrites a few
header fields of each batch in a ``records`` blob (one or more concatenated
batches), such as the base offset when mapping offsets, the partition leader
epoch, or the producer id/epoch of idempotent producers, whose per-cluster ids
need translating.  Layout (all big-endian)::

    @0  baseOffset int64        @27 baseTimestamp int64
    @8  batchLength int32       @35 maxTimestamp int64
    @12 partitionLeaderEpoch    @43 producerId int64
    @16 magic int8              @51 producerEpoch int16
    @17 crc uint32 (CRC-32C of bytes @21..end)
    @21 attributes int16        @53 baseSequence int32
    @23 lastOffsetDelta int32   @57 recordCount int32

``batchLength`` counts the bytes after itself, so a batch spans
``12 + batchLength`` bytes.  baseOffset, batchLength and partitionLeaderEpoch
are not covered by the CRC; the producer fields are.

Trailing partial batch: a broker may cut a Fetch response in the middle of a
batch (it fills up to ``max_bytes``); Kafka clients ignore such a tail.
:func:`iter_batches` stops before it, and the rewriting functions copy it
through unchanged, so the blob we pass on is exactly as long as the one we got
and clients behave as they would against the broker.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, TypeAlias

import crc32c

__all__ = (
    "BATCH_HEADER_SIZE",
    "BatchInfo",
    "RecordBatchError",
    "batch_info",
    "count_records",
    "crc_ok",
    "iter_batches",
    "rewrite_producer",
    "set_partition_leader_epoch",
    "shift_base_offsets",
)

Buffer: TypeAlias = bytes | bytearray | memoryview

BATCH_HEADER_SIZE: Final = 61
"""Size of a v2 batch header; a batch is at least this long."""
_LOG_OVERHEAD: Final = 12  # baseOffset + batchLength
_CRC_START: Final = 21

_OFFSET_AND_LENGTH: Final = struct.Struct(">qi")
_INT64: Final = struct.Struct(">q")
_INT32: Final = struct.Struct(">i")
_UINT32: Final = struct.Struct(">I")
_PRODUCER: Final = struct.Struct(">qh")
_HEADER: Final = struct.Struct(">qiibIhiqqqhii")

_TRANSACTIONAL_FLAG: Final = 0x10
_CONTROL_FLAG: Final = 0x20


class RecordBatchError(ValueError):
    """A record batch is malformed (bad length, wrong magic)."""


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """Header fields of one record batch."""

    base_offset: int
    last_offset: int
    length: int
    """Total size in bytes, including the 12-byte offset/length prefix."""
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & _TRANSACTIONAL_FLAG)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & _CONTROL_FLAG)


def iter_batches(buf: Buffer) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` of every complete batch in ``buf``.

    A trailing partial batch (possible in Fetch responses) is not yielded.

    :raises RecordBatchError: a batch declares a length below the v2 header size.
    """
    pos = 0
    size = len(buf)
    while size - pos >= _LOG_OVERHEAD:
        _base_offset, batch_length = _OFFSET_AND_LENGTH.unpack_from(buf, pos)
        end = pos + _LOG_OVERHEAD + batch_length
        if batch_length < BATCH_HEADER_SIZE - _LOG_OVERHEAD:
            raise RecordBatchError(f"batch at byte {pos} declares invalid length {batch_length}")
        if end > size:
            return
        yield pos, end
        pos = end


def count_records(buf: Buffer | None) -> int:
    """Offsets the batches in ``buf`` occupy (``lastOffsetDelta + 1`` summed; 0 if none).

    A malformed blob counts 0: the broker, not the proxy, refuses it.
    """
    if not buf:
        return 0
    total = 0
    try:
        for start, _end in iter_batches(buf):
            total += _INT32.unpack_from(buf, start + 23)[0] + 1
    except RecordBatchError:
        return 0
    return total


def _check_magic(buf: Buffer, start: int) -> None:
    magic = buf[start + 16]
    if magic != 2:
        raise RecordBatchError(f"batch at byte {start} has magic {magic}, only v2 is supported")


def shift_base_offsets(buf: Buffer, delta: int) -> bytearray:
    """Copy of ``buf`` with ``delta`` added to every complete batch's baseOffset.

    The CRC does not cover baseOffset, so nothing else changes.
    """
    out = bytearray(buf)
    for start, _end in iter_batches(out):
        (base,) = _INT64.unpack_from(out, start)
        _INT64.pack_into(out, start, base + delta)
    return out


def set_partition_leader_epoch(buf: Buffer, epoch: int) -> bytearray:
    """Copy of ``buf`` with every complete batch's partitionLeaderEpoch set to ``epoch``."""
    out = bytearray(buf)
    for start, _end in iter_batches(out):
        _INT32.pack_into(out, start + 12, epoch)
    return out


def rewrite_producer(buf: Buffer, producer_id: int, epoch: int) -> bytearray:
    """Copy of ``buf`` with producerId/producerEpoch replaced and CRC-32C recomputed.

    :raises RecordBatchError: a batch is not magic v2.
    """
    out = bytearray(buf)
    view = memoryview(out)
    try:
        for start, end in iter_batches(out):
            _check_magic(out, start)
            _PRODUCER.pack_into(out, start + 43, producer_id, epoch)
            _UINT32.pack_into(out, start + 17, crc32c.crc32c(view[start + _CRC_START : end]))
    finally:
        view.release()
    return out


def batch_info(buf: Buffer, start: int = 0) -> BatchInfo:
    """Header fields of the batch beginning at ``start``.

    :raises RecordBatchError: fewer than a header's worth of bytes, or magic is not 2.
    """
    if len(buf) - start < BATCH_HEADER_SIZE:
        raise RecordBatchError(
            f"need {BATCH_HEADER_SIZE} bytes for a batch header at byte {start},"
            f" have {len(buf) - start}"
        )
    _check_magic(buf, start)
    (
        base_offset,
        batch_length,
        leader_epoch,
        magic,
        crc,
        attributes,
        last_offset_delta,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        record_count,
    ) = _HEADER.unpack_from(buf, start)
    return BatchInfo(
        base_offset=base_offset,
        last_offset=base_offset + last_offset_delta,
        length=_LOG_OVERHEAD + batch_length,
        partition_leader_epoch=leader_epoch,
        magic=magic,
        crc=crc,
        attributes=attributes,
        base_timestamp=base_timestamp,
        max_timestamp=max_timestamp,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        record_count=record_count,
    )


def crc_ok(buf: Buffer, start: int = 0) -> bool:
    """Whether the batch at ``start`` carries a valid CRC-32C."""
    info = batch_info(buf, start)
    end = start + info.length
    if end > len(buf):
        return False
    return bool(crc32c.crc32c(bytes(buf[start + _CRC_START : end])) == info.crc)
