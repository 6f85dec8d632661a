"""Fetch responses read and written without touching their records (sans-IO).

A Fetch answer is mostly record batches. Decoding it into kio entities copies every
records blob into a new ``bytes``, and encoding the merged answer walks it again; the
broker itself sends its log files with zero copy. Here a broker's answer is scanned
for its fixed fields only (partition index, error code, watermarks, aborted
transactions, preferred replica) and each partition's records stay a ``memoryview`` of
the received frame. The client's answer is written as a few small header parts around
those views, for ``transport.writelines``: the record bytes are never copied in Python.

Versions 4-17 (what the proxy serves, ``server.CAPS``). Tagged fields of a partition
(diverging epoch, current leader, snapshot id) and of the answer (node endpoints) are
dropped, as the proxy answers with no physical leader hints; aborted transactions keep
their own (empty) tagged fields.

Checked against kio's generated codec for every version in
``tests/unit/test_fetch_wire.py``.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from typing import Final

from .framing import BytesLike

_ZERO_ID: Final = uuid.UUID(int=0)

__all__ = (
    "Encoded",
    "FetchAnswer",
    "FetchPartition",
    "FetchTopic",
    "WireError",
    "encode_fetch_response",
    "parse_fetch_response",
)

MIN_VERSION: Final = 4
MAX_VERSION: Final = 17
INLINE_LIMIT: Final = 4096
"""Records blobs at least this long are passed by reference, shorter ones copied inline."""

_I16: Final = struct.Struct(">h")
_I32: Final = struct.Struct(">i")
_I64: Final = struct.Struct(">q")
_PART_HEAD: Final = struct.Struct(">ihqq")  # index, error, high watermark, last stable
_ABORTED: Final = struct.Struct(">qq")
_TOP: Final = struct.Struct(">ihi")  # throttle, error, session id


class WireError(ValueError):
    """A Fetch response is truncated or malformed."""


class Encoded:
    """A response already framed (length prefix first): the server writes ``parts`` as
    they are, in one ``writelines``."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[BytesLike]) -> None:
        self.parts = parts


@dataclass(slots=True)
class FetchPartition:
    partition_index: int
    error_code: int
    high_watermark: int
    last_stable_offset: int
    log_start_offset: int
    aborted: list[tuple[int, int]] | None  #: (producer id, first offset); None: null
    preferred_read_replica: int
    records: BytesLike | None


@dataclass(slots=True)
class FetchTopic:
    name: str | None  #: versions < 13
    topic_id: uuid.UUID | None  #: versions >= 13
    partitions: list[FetchPartition] = field(default_factory=list)


@dataclass(slots=True)
class FetchAnswer:
    throttle_time_ms: int
    error_code: int
    session_id: int
    topics: list[FetchTopic] = field(default_factory=list)


# -- reading ------------------------------------------------------------------------------


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def need(self, n: int) -> int:
        start = self.pos
        end = start + n
        if n < 0 or end > len(self.buf):
            raise WireError(f"truncated Fetch response: need {n} bytes at byte {start}, "
                            f"have {len(self.buf) - start}")
        self.pos = end
        return start

    def i16(self) -> int:
        value: int = _I16.unpack_from(self.buf, self.need(2))[0]
        return value

    def i32(self) -> int:
        value: int = _I32.unpack_from(self.buf, self.need(4))[0]
        return value

    def i64(self) -> int:
        value: int = _I64.unpack_from(self.buf, self.need(8))[0]
        return value

    def uvarint(self) -> int:
        value = shift = 0
        buf = self.buf
        while True:
            if self.pos >= len(buf):
                raise WireError("truncated varint in a Fetch response")
            byte = buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise WireError("varint longer than 5 bytes in a Fetch response")

    def array_len(self, flexible: bool) -> int:
        """-1 for a null array."""
        return self.uvarint() - 1 if flexible else self.i32()

    def string(self, flexible: bool) -> str | None:
        n = self.uvarint() - 1 if flexible else self.i16()
        if n < 0:
            return None
        start = self.need(n)
        try:
            return bytes(self.buf[start:start + n]).decode()
        except UnicodeDecodeError as e:
            raise WireError(f"topic name is not UTF-8: {e}") from None

    def nullable_bytes(self, flexible: bool) -> memoryview | None:
        n = self.uvarint() - 1 if flexible else self.i32()
        if n < 0:
            return None
        start = self.need(n)
        return self.buf[start:start + n]

    def skip_tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self.need(self.uvarint())


def parse_fetch_response(version: int, frame: BytesLike) -> tuple[int, FetchAnswer]:
    """``(correlation id, answer)`` of a Fetch response frame body; records are views of
    ``frame`` (keep it alive, and unchanged, while they are used).

    :raises WireError: truncated, malformed, or trailing bytes.
    """
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise WireError(f"Fetch v{version} is not read here (v{MIN_VERSION}-{MAX_VERSION})")
    flexible = version >= 12
    r = _Reader(memoryview(frame), 0)
    correlation_id = r.i32()
    if flexible:
        r.skip_tags()  # response header v1
    throttle = r.i32()
    error_code = session_id = 0
    if version >= 7:
        error_code = r.i16()
        session_id = r.i32()
    answer = FetchAnswer(throttle, error_code, session_id)
    n_topics = r.array_len(flexible)
    for _ in range(max(0, n_topics)):
        if version >= 13:
            start = r.need(16)
            topic = FetchTopic(None, uuid.UUID(bytes=bytes(r.buf[start:start + 16])))
        else:
            topic = FetchTopic(r.string(flexible), None)
        n_parts = r.array_len(flexible)
        for _ in range(max(0, n_parts)):
            index, code, hwm, lso = _PART_HEAD.unpack_from(r.buf, r.need(_PART_HEAD.size))
            log_start = r.i64() if version >= 5 else -1
            n_aborted = r.array_len(flexible)
            aborted: list[tuple[int, int]] | None = None
            if n_aborted >= 0:
                aborted = []
                for _ in range(n_aborted):
                    pid, first = _ABORTED.unpack_from(r.buf, r.need(_ABORTED.size))
                    aborted.append((pid, first))
                    if flexible:
                        r.skip_tags()
            preferred = r.i32() if version >= 11 else -1
            records = r.nullable_bytes(flexible)
            if flexible:
                r.skip_tags()
            topic.partitions.append(FetchPartition(index, code, hwm, lso, log_start, aborted,
                                                   preferred, records))
        if flexible:
            r.skip_tags()
        answer.topics.append(topic)
    if flexible:
        r.skip_tags()
    if r.pos != len(r.buf):
        raise WireError(f"Fetch v{version} response: {len(r.buf) - r.pos} trailing bytes")
    return correlation_id, answer


# -- writing ------------------------------------------------------------------------------


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_fetch_response(version: int, correlation_id: int, answer: FetchAnswer
                          ) -> list[BytesLike]:
    """The framed response (length prefix included) as parts for ``writelines``; records
    blobs of at least :data:`INLINE_LIMIT` bytes are referenced, not copied."""
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise WireError(f"Fetch v{version} is not written here (v{MIN_VERSION}-{MAX_VERSION})")
    flexible = version >= 12
    parts: list[BytesLike] = []
    head = bytearray(4)  # the length prefix, filled in at the end
    head += _I32.pack(correlation_id)
    if flexible:
        head += b"\x00"
    head += _I32.pack(answer.throttle_time_ms)
    if version >= 7:
        head += _I16.pack(answer.error_code)
        head += _I32.pack(answer.session_id)

    def array_len(n: int) -> bytes:
        return _uvarint(n + 1) if flexible else _I32.pack(n)

    head += array_len(len(answer.topics))
    size = 0
    for topic in answer.topics:
        if version >= 13:
            # (None: the request named the all-zero id, which kio reads as None)
            head += (topic.topic_id or _ZERO_ID).bytes
        else:
            raw = (topic.name or "").encode()
            head += _uvarint(len(raw) + 1) if flexible else _I16.pack(len(raw))
            head += raw
        head += array_len(len(topic.partitions))
        for p in topic.partitions:
            head += _PART_HEAD.pack(p.partition_index, p.error_code, p.high_watermark,
                                    p.last_stable_offset)
            if version >= 5:
                head += _I64.pack(p.log_start_offset)
            if p.aborted is None:
                head += b"\x00" if flexible else b"\xff\xff\xff\xff"
            else:
                head += array_len(len(p.aborted))
                for pid, first in p.aborted:
                    head += _ABORTED.pack(pid, first)
                    if flexible:
                        head += b"\x00"
            if version >= 11:
                head += _I32.pack(p.preferred_read_replica)
            records = p.records
            if records is None:
                head += b"\x00" if flexible else b"\xff\xff\xff\xff"
            else:
                n = len(records)
                head += _uvarint(n + 1) if flexible else _I32.pack(n)
                if n >= INLINE_LIMIT:
                    size += len(head)
                    parts.append(head)
                    parts.append(records)
                    size += n
                    head = bytearray()
                else:
                    head += records
            if flexible:
                head += b"\x00"
        if flexible:
            head += b"\x00"
    if flexible:
        head += b"\x00"
    if head:
        size += len(head)
        parts.append(head)
    prefix = parts[0]
    assert isinstance(prefix, bytearray)
    _I32.pack_into(prefix, 0, size - 4)
    return parts
