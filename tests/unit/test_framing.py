"""FrameReader / frame / frame_parts: split, joined and hostile length prefixes."""

from __future__ import annotations

import struct

import pytest
from kafka.protocol.metadata import MetadataRequest

from federation.protocol.framing import (
    BadFrameLength,
    FrameError,
    FrameReader,
    FrameTooLarge,
    frame,
    frame_parts,
)


def _prefixed(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def test_frame_prepends_big_endian_length() -> None:
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_frame_parts_keeps_parts_by_reference() -> None:
    big = b"x" * 10_000
    parts = frame_parts([b"head", big])
    assert parts[0] == struct.pack(">i", 10_004)
    assert parts[2] is big
    assert b"".join(parts) == frame(b"head" + big)


def test_single_frame_in_one_chunk() -> None:
    reader = FrameReader(1024)
    assert reader.feed(frame(b"hello")) == [b"hello"]
    assert reader.buffered == 0


def test_several_frames_and_a_partial_one_in_one_chunk() -> None:
    reader = FrameReader(1024)
    data = frame(b"one") + frame(b"two") + frame(b"three")[:5]
    assert reader.feed(data) == [b"one", b"two"]
    assert reader.buffered == 5
    assert reader.feed(b"hree" + frame(b"4")) == [b"three", b"4"]
    assert reader.buffered == 0


def test_frame_delivered_byte_by_byte() -> None:
    reader = FrameReader(1024)
    data = frame(b"payload") + frame(b"second")
    got: list[bytes] = []
    for i in range(len(data)):
        got += reader.feed(data[i : i + 1])
    assert got == [b"payload", b"second"]


def test_accepts_bytearray_and_memoryview_chunks() -> None:
    reader = FrameReader(1024)
    data = frame(b"abcdef")
    assert reader.feed(bytearray(data[:6])) == []
    assert reader.feed(memoryview(data)[6:]) == [b"abcdef"]


def test_one_mib_frame_in_small_chunks_is_linear() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    data = frame(body) + frame(b"tail")
    chunk = 1024
    reader = FrameReader(2 * 1024 * 1024)
    got: list[bytes] = []
    most = 0
    for i in range(0, len(data), chunk):
        got += reader.feed(data[i : i + chunk])
        most = max(most, reader.buffered)
    assert got == [body, b"tail"]
    # ~1030 feeds; the reader holds at most one incomplete frame (no re-buffering of
    # consumed bytes), which is what keeps it linear. No wall-clock assertion: a loaded
    # CI machine must not fail a correct implementation.
    assert most <= len(frame(body))
    assert reader.buffered == 0


def test_real_client_request_frame() -> None:
    request = MetadataRequest[12](
        topics=[MetadataRequest[12].MetadataRequestTopic(topic_id=None, name="orders")],
        allow_auto_topic_creation=False,
        include_topic_authorized_operations=False,
    )
    request.with_header(correlation_id=9, client_id="c")
    wire = bytes(request.encode(header=True, framed=True))
    [body] = FrameReader(1 << 20).feed(wire)
    assert body == wire[4:]
    assert body[:4] == b"\x00\x03\x00\x0c"  # api key 3, version 12


def test_too_large_frame_is_rejected_from_its_prefix_alone() -> None:
    reader = FrameReader(100)
    with pytest.raises(FrameTooLarge) as info:
        reader.feed(struct.pack(">i", 101))
    assert info.value.size == 101
    assert info.value.max_frame_size == 100
    assert "101" in info.value.reason and "100" in info.value.reason


def test_frame_of_exactly_the_maximum_is_accepted() -> None:
    reader = FrameReader(100)
    assert reader.feed(frame(b"x" * 100)) == [b"x" * 100]


@pytest.mark.parametrize("length", [0, -1, -(2**31)])
def test_zero_or_negative_length_is_rejected(length: int) -> None:
    reader = FrameReader(100)
    with pytest.raises(BadFrameLength) as info:
        reader.feed(frame(b"ok") + struct.pack(">i", length))
    assert info.value.size == length
    assert str(length) in str(info.value)


def test_errors_are_sticky() -> None:
    reader = FrameReader(10)
    with pytest.raises(FrameTooLarge):
        reader.feed(_prefixed(b"x" * 11))
    with pytest.raises(FrameError):
        reader.feed(frame(b"fine"))


def test_frames_before_a_bad_prefix_are_lost_with_the_connection() -> None:
    # The error aborts feed(); the caller closes the connection anyway.
    reader = FrameReader(10)
    with pytest.raises(BadFrameLength):
        reader.feed(frame(b"ok") + b"\x00\x00\x00\x00")


def test_invalid_max_frame_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        FrameReader(0)
