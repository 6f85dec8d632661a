"""Length-prefixed framing of the Kafka wire protocol (sans-IO).

Every Kafka request and response travels as a big-endian ``int32`` byte count
followed by that many bytes.  :class:`FrameReader` turns a stream of arbitrary
chunks into complete frame bodies; :func:`frame` and :func:`frame_parts` do the
reverse.  Nothing here touches a socket.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final, TypeAlias

__all__ = (
    "LENGTH_PREFIX_SIZE",
    "BadFrameLength",
    "BytesLike",
    "FrameError",
    "FrameReader",
    "FrameTooLarge",
    "frame",
    "frame_parts",
)

BytesLike: TypeAlias = bytes | bytearray | memoryview
"""Anything ``transport.writelines`` accepts as one part."""

LENGTH_PREFIX_SIZE: Final = 4
_LENGTH: Final = struct.Struct(">i")


class FrameError(Exception):
    """The peer sent a frame that cannot be accepted; the connection must be closed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameTooLarge(FrameError):
    """The announced frame size exceeds the configured maximum."""

    def __init__(self, size: int, max_frame_size: int) -> None:
        super().__init__(
            f"frame of {size} bytes exceeds the maximum frame size of {max_frame_size} bytes"
        )
        self.size = size
        self.max_frame_size = max_frame_size


class BadFrameLength(FrameError):
    """The announced frame size is zero or negative."""

    def __init__(self, size: int) -> None:
        super().__init__(f"invalid frame length {size}: a frame must carry at least one byte")
        self.size = size


class FrameReader:
    """Incremental decoder of length-prefixed frames.

    Bytes are appended to one ``bytearray``; complete frames are sliced out by
    offset and the consumed prefix is dropped once per :meth:`feed` call, so a
    1 MiB frame arriving in many small chunks is copied a bounded number of
    times (no quadratic re-copying).  Oversized or malformed length prefixes are
    rejected as soon as the 4 prefix bytes are available, before the body is
    buffered.  After a :class:`FrameError` the reader stays failed: every later
    :meth:`feed` raises the same error.
    """

    __slots__ = ("_buf", "_error", "_max_frame_size")

    def __init__(self, max_frame_size: int) -> None:
        if max_frame_size <= 0:
            raise ValueError(f"max_frame_size must be positive, got {max_frame_size}")
        self._max_frame_size = max_frame_size
        self._buf = bytearray()
        self._error: FrameError | None = None

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        """Change the limit for frames whose length prefix is not read yet (e.g. raise it
        once the client has authenticated)."""
        if value <= 0:
            raise ValueError(f"max_frame_size must be positive, got {value}")
        self._max_frame_size = value

    @property
    def buffered(self) -> int:
        """Number of bytes held that do not yet form a complete frame."""
        return len(self._buf)

    def feed(self, data: BytesLike) -> list[bytes]:
        """Add received bytes; return the bodies of all frames now complete, in order.

        :raises FrameTooLarge: a length prefix announces more than ``max_frame_size``.
        :raises BadFrameLength: a length prefix is zero or negative.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        unpack = _LENGTH.unpack_from
        with memoryview(buf) as view:  # one copy per frame (a bytearray slice is another)
            while end - pos >= LENGTH_PREFIX_SIZE:
                (size,) = unpack(buf, pos)
                if size <= 0:
                    self._error = BadFrameLength(size)
                    raise self._error
                if size > self._max_frame_size:
                    self._error = FrameTooLarge(size, self._max_frame_size)
                    raise self._error
                body_start = pos + LENGTH_PREFIX_SIZE
                body_end = body_start + size
                if body_end > end:
                    break
                frames.append(view[body_start:body_end].tobytes())
                pos = body_end
        if pos == end:
            buf.clear()
        elif pos:
            del buf[:pos]
        return frames


def frame(payload: BytesLike) -> bytes:
    """Return ``payload`` preceded by its int32 length (one copy of the payload)."""
    return _LENGTH.pack(len(payload)) + payload


def frame_parts(parts: Iterable[BytesLike]) -> list[BytesLike]:
    """Return the length prefix followed by ``parts`` (not copied), for ``writelines``."""
    out: list[BytesLike] = [b""]
    total = 0
    for part in parts:
        total += len(part)
        out.append(part)
    out[0] = _LENGTH.pack(total)
    return out
