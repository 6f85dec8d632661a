"""Sans-IO encoding and decoding of Kafka requests and responses with kio.

Decoded messages are kio's generated frozen dataclasses.  Frames handed in are
frame *bodies* (what :class:`~federation.protocol.framing.FrameReader` returns);
encoders return framed parts ready for ``transport.writelines``, with large
byte fields (record batches) passed by reference instead of copied.

kio's native reader is the fast path; when it trips over something the Kafka
protocol allows (an unknown tagged field, an error code outside the
preallocated window) the message is decoded again by the tolerant pure-Python
reader in :mod:`._kio_compat`.

Requests are decoded as leniently as Kafka's brokers do (trailing bytes ignored);
responses from the brokers are decoded strictly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import IO, Any, Final, cast

from kio.index import KioIndexError, load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer
from kio.serial.errors import SerialError
from kio.static.protocol import RequestPayload, ResponsePayload

from . import _kio_compat
from .errors import ErrorCode
from .framing import BytesLike
from .versions import request_header_version

_kio_compat.install()

__all__ = (
    "CodecError",
    "DecodeError",
    "EncodeError",
    "LimitExceeded",
    "Request",
    "RequestHeader",
    "UnsupportedVersion",
    "api_versions_fallback_response",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "parse_request_header",
    "peek_correlation_id",
)

_I32: Final = struct.Struct(">i")
_REQUEST_HEADER_FIXED: Final = struct.Struct(">hhih")  # key, version, correlation, client_id len
_API_VERSION_ENTRY: Final = struct.Struct(">hhh")
_FALLBACK_HEAD: Final = struct.Struct(">ihi")  # correlation id, error code, array length

INLINE_LIMIT: Final = 4096
"""Byte fields at least this long are handed to ``writelines`` by reference."""


class CodecError(Exception):
    """Base class of codec errors; ``reason`` is meant for logs and error messages."""

    def __init__(self, reason: str, header: RequestHeader | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.header = header


class DecodeError(CodecError):
    """A frame is truncated or malformed.

    ``header`` is set when the request header itself could be parsed, so the
    caller may still know which request failed.
    """


class LimitExceeded(DecodeError):
    """A request holds an array of more elements than the caller allows (refused before
    it is decoded; ``count`` and ``limit`` say by how much)."""

    def __init__(self, reason: str, count: int, limit: int,
                 header: RequestHeader | None = None) -> None:
        super().__init__(reason, header)
        self.count = count
        self.limit = limit


class UnsupportedVersion(CodecError):
    """kio has no schema for the API key/version; ``header`` is always set for requests."""


class EncodeError(CodecError):
    """An entity cannot be encoded (wrong version for the request, out-of-range value...)."""


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """The client-chosen request header fields (v1 and v2 carry the same ones)."""

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request: its header and kio request entity."""

    header: RequestHeader
    entity: RequestPayload


# --------------------------------------------------------------------------
# Small primitives


def _read_uvarint(buf: bytes, offset: int) -> tuple[int, int]:
    value = 0
    shift = 0
    length = len(buf)
    while True:
        if offset >= length:
            raise DecodeError("truncated varint")
        byte = buf[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 28:
            raise DecodeError("varint longer than 5 bytes")


def _skip_tagged_fields(buf: bytes, offset: int) -> int:
    count, offset = _read_uvarint(buf, offset)
    for _ in range(count):
        _tag, offset = _read_uvarint(buf, offset)
        size, offset = _read_uvarint(buf, offset)
        offset += size
        if offset > len(buf):
            raise DecodeError("tagged field overruns the frame")
    return offset


def _readonly(frame: BytesLike) -> bytes | memoryview:
    # kio's native readers refuse writable buffers.
    if isinstance(frame, bytes):
        return frame
    if isinstance(frame, memoryview) and frame.readonly:
        return frame
    return bytes(frame)


_NO_SCHEMA: Final = object()
_REQUEST_SCHEMAS: dict[tuple[int, int], Any] = {}
_RESPONSE_SCHEMAS: dict[tuple[int, int], Any] = {}


def _request_schema(api_key: int, api_version: int) -> type[Any] | None:
    # kio resolves schemas by dotted-name import on every call; cache them.
    key = (api_key, api_version)
    schema = _REQUEST_SCHEMAS.get(key)
    if schema is None:
        try:
            schema = load_request_schema(api_key, api_version)
        except KioIndexError:
            return None  # not cached: keys and versions come from clients, any int16 pair
        _REQUEST_SCHEMAS[key] = schema
    return None if schema is _NO_SCHEMA else cast(type[Any], schema)


def _response_schema(api_key: int, api_version: int) -> type[Any] | None:
    key = (api_key, api_version)
    schema = _RESPONSE_SCHEMAS.get(key)
    if schema is None:
        try:
            schema = load_response_schema(api_key, api_version)
        except KioIndexError:
            schema = _NO_SCHEMA
        _RESPONSE_SCHEMAS[key] = schema
    return None if schema is _NO_SCHEMA else cast(type[Any], schema)


_NATIVE_READERS: dict[type[Any], Any] = {}


def _native_reader(schema: type[Any]) -> Any:
    reader = _NATIVE_READERS.get(schema)
    if reader is None:
        reader = _NATIVE_READERS[schema] = entity_reader(schema)
    return reader


def _read_entity(schema: type[Any], buf: bytes | memoryview, offset: int,
                 max_array: int | None = None, request: bool = False) -> tuple[Any, int]:
    """Decode one entity at ``offset``; return it and the number of bytes it took.

    The structure is pre-scanned first (kio's native reader would abort the
    process on a huge array count; ``max_array`` bounds every array), then read
    natively, falling back to the tolerant reader on kio's snags. A ``request`` with a
    null where its schema allows none is malformed (as Kafka parses requests).
    """
    try:
        _kio_compat.prescan_entity(schema, cast(bytes, buf), offset, max_array, request)
    except _kio_compat.ArrayTooLarge as exc:
        raise LimitExceeded(f"{schema.__name__}: {exc}", exc.count, exc.limit) from None
    except _kio_compat.NeedsTolerantReader:
        return _read_tolerant(schema, buf, offset)
    except _kio_compat.PrescanError as exc:
        raise DecodeError(f"malformed {schema.__name__}: {exc}") from exc
    try:
        result: tuple[Any, int] = _native_reader(schema)(buf, offset)
        return result
    except (KeyError, ValueError):
        # Unknown tagged field (KeyError) or error code (ValueError) — or
        # garbage, which the tolerant reader reports properly below.
        pass
    except SerialError as exc:
        raise DecodeError(f"malformed {schema.__name__}: {exc or type(exc).__name__}") from exc
    except (TypeError, OverflowError, IndexError) as exc:
        raise DecodeError(f"malformed {schema.__name__}: {exc}") from exc
    return _read_tolerant(schema, buf, offset)


def _read_tolerant(schema: type[Any], buf: bytes | memoryview, offset: int) -> tuple[Any, int]:
    try:
        reader = _kio_compat.tolerant_entity_reader(schema)
        return reader(cast(bytes, buf), offset)
    except _kio_compat.ArrayTooLarge as exc:
        raise LimitExceeded(f"{schema.__name__}: {exc}", exc.count, exc.limit) from None
    except (SerialError, KeyError, ValueError, TypeError, OverflowError, IndexError) as exc:
        raise DecodeError(f"malformed {schema.__name__}: {exc or type(exc).__name__}") from exc


class _PartsWriter:
    """File-like sink for kio writers that keeps large writes by reference."""

    __slots__ = ("_parts", "_pending", "size")

    def __init__(self, head: bytes) -> None:
        self._parts: list[bytes] = []
        self._pending = bytearray(head)
        self.size = len(head)

    def write(self, data: bytes) -> int:
        n = len(data)
        self.size += n
        if n >= INLINE_LIMIT:
            if self._pending:
                self._parts.append(bytes(self._pending))
                self._pending.clear()
            self._parts.append(data)
        else:
            self._pending += data
        return n

    def framed(self) -> list[bytes]:
        if self._pending:
            self._parts.append(bytes(self._pending))
        parts = self._parts
        prefix = _I32.pack(self.size)
        if parts and len(parts[0]) < INLINE_LIMIT:
            parts[0] = prefix + parts[0]
        else:
            parts.insert(0, prefix)
        return parts


def _write_entity(sink: _PartsWriter, entity: Any) -> list[bytes]:
    try:
        entity_writer(type(entity))(cast(IO[bytes], sink), entity)
    except (SerialError, struct.error, TypeError, ValueError, AttributeError) as exc:
        raise EncodeError(f"cannot encode {type(entity).__name__}: {exc}") from exc
    return sink.framed()


def _nullable_string(value: str | None) -> bytes:
    if value is None:
        return b"\xff\xff"
    raw = value.encode()
    if len(raw) > 0x7FFF:
        raise EncodeError(f"string of {len(raw)} bytes is too long for an int16 length")
    return len(raw).to_bytes(2, "big") + raw


# --------------------------------------------------------------------------
# Requests (client -> proxy)


def parse_request_header(frame: BytesLike) -> tuple[RequestHeader, int]:
    """Parse the request header of any API key/version; return it and the body offset.

    The header version (1, or 2 with tagged fields) follows from the API key and
    version, see :func:`~federation.protocol.versions.request_header_version`.

    :raises DecodeError: the header is truncated or malformed.
    """
    if len(frame) < _REQUEST_HEADER_FIXED.size:
        raise DecodeError(
            f"request header truncated: {len(frame)} bytes, need at least"
            f" {_REQUEST_HEADER_FIXED.size}"
        )
    api_key, api_version, correlation_id, client_len = _REQUEST_HEADER_FIXED.unpack_from(frame)
    offset = _REQUEST_HEADER_FIXED.size
    client_id: str | None = None
    if client_len >= 0:
        end = offset + client_len
        if end > len(frame):
            raise DecodeError(f"request header truncated inside client_id ({client_len} bytes)")
        try:
            client_id = bytes(frame[offset:end]).decode()
        except UnicodeDecodeError as exc:
            raise DecodeError(f"client_id is not valid UTF-8: {exc}") from exc
        offset = end
    elif client_len != -1:
        raise DecodeError(f"invalid client_id length {client_len}")
    header = RequestHeader(api_key, api_version, correlation_id, client_id)
    if request_header_version(api_key, api_version) >= 2:
        try:
            offset = _skip_tagged_fields(cast(bytes, frame), offset)
        except DecodeError as exc:
            raise DecodeError(f"request header: {exc.reason}", header) from None
    return header, offset


def decode_request(frame: BytesLike, max_array: int | None = None) -> Request:
    """Decode a request frame body into its header and kio entity.

    As lenient as Kafka's own request parsing: bytes after the body are ignored
    (librdkafka 2.x sends an "all topics" Metadata v9+ request with 3 of them) and
    unknown tagged fields are skipped.  Lengths are still checked against the
    frame: an array, string or bytes field that cannot fit in it is an error.

    ``max_array`` bounds the elements of every array: a request with more is refused
    before it is decoded (:class:`LimitExceeded`, cheap whatever the count).

    :raises UnsupportedVersion: kio has no schema for the key/version (``exc.header`` set).
    :raises LimitExceeded: an array holds more than ``max_array`` elements.
    :raises DecodeError: the frame is truncated or malformed.
    """
    buf = _readonly(frame)
    header, offset = parse_request_header(buf)
    schema = _request_schema(header.api_key, header.api_version)
    if schema is None:
        raise UnsupportedVersion(
            f"unsupported request: api_key={header.api_key} api_version={header.api_version}",
            header,
        )
    try:
        # Bytes after the entity are ignored, as Kafka does.
        entity, _size = _read_entity(schema, buf, offset, max_array, request=True)
    except LimitExceeded as exc:
        raise LimitExceeded(exc.reason, exc.count, exc.limit, header) from None
    except DecodeError as exc:
        raise DecodeError(exc.reason, header) from exc
    return Request(header, entity)


def encode_response(header: RequestHeader, response_entity: ResponsePayload) -> list[bytes]:
    """Encode a response to the request with ``header``; return framed parts.

    The response header version (0 or 1) follows the entity's schema
    (ApiVersions responses always use v0).  Record batches and other large byte
    fields are not copied: do not mutate them until the parts are written.

    :raises EncodeError: the entity does not match the request's API key and
        version, or holds a value that cannot be encoded.
    """
    if (
        response_entity.__api_key__ != header.api_key
        or response_entity.__version__ != header.api_version
    ):
        raise EncodeError(
            f"{type(response_entity).__name__} v{response_entity.__version__} (api key"
            f" {response_entity.__api_key__}) does not answer api_key={header.api_key}"
            f" api_version={header.api_version}"
        )
    head = _I32.pack(header.correlation_id)
    if response_entity.__header_schema__.__version__ >= 1:
        head += b"\x00"  # no tagged fields in the response header
    return _write_entity(_PartsWriter(head), response_entity)


def api_versions_fallback_response(
    header: RequestHeader, supported: dict[int, tuple[int, int]]
) -> bytes:
    """Framed ApiVersions v0 response with UNSUPPORTED_VERSION and our ranges.

    This is what a broker answers to an ApiVersions request of a version it does
    not know; the client then retries with the highest version listed for
    ApiVersions.  Works whatever version the request had.
    """
    entries = sorted(supported.items())
    body = bytearray(
        _FALLBACK_HEAD.pack(header.correlation_id, ErrorCode.UNSUPPORTED_VERSION, len(entries))
    )
    for api_key, (low, high) in entries:
        body += _API_VERSION_ENTRY.pack(api_key, low, high)
    return _I32.pack(len(body)) + bytes(body)


# --------------------------------------------------------------------------
# Upstream (proxy -> broker)


def encode_request(
    entity: RequestPayload, correlation_id: int, client_id: str | None
) -> list[bytes]:
    """Encode a kio request entity with its header; return framed parts.

    :raises EncodeError: a value cannot be encoded.
    """
    api_key = int(entity.__api_key__)
    api_version = int(entity.__version__)
    head = struct.pack(">hhi", api_key, api_version, correlation_id) + _nullable_string(client_id)
    if entity.__header_schema__.__version__ >= 2:
        head += b"\x00"
    return _write_entity(_PartsWriter(head), entity)


def peek_correlation_id(frame: BytesLike) -> int:
    """Correlation id of a *response* frame body (its first 4 bytes).

    :raises DecodeError: the frame is shorter than 4 bytes.
    """
    if len(frame) < 4:
        raise DecodeError(f"response frame of {len(frame)} bytes has no correlation id")
    correlation_id: int = _I32.unpack_from(frame)[0]
    return correlation_id


def decode_response(api_key: int, api_version: int, frame: BytesLike) -> tuple[int, Any]:
    """Decode a response frame body to a request we sent as ``api_key``/``api_version``.

    Returns ``(correlation_id, entity)``; the entity is the kio response type.

    :raises UnsupportedVersion: kio has no schema for the key/version.
    :raises DecodeError: truncated, malformed or trailing bytes.
    """
    buf = _readonly(frame)
    schema = _response_schema(api_key, api_version)
    if schema is None:
        raise UnsupportedVersion(
            f"unsupported response: api_key={api_key} api_version={api_version}"
        )
    header_version: int = schema.__header_schema__.__version__
    correlation_id = peek_correlation_id(buf)
    offset = 4
    if header_version >= 1:
        offset = _skip_tagged_fields(cast(bytes, buf), offset)
    entity, size = _read_entity(schema, buf, offset)
    trailing = len(buf) - offset - size
    if trailing:
        raise DecodeError(f"{schema.__name__} v{api_version}: {trailing} trailing bytes")
    return correlation_id, entity
