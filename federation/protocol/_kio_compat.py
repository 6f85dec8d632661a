"""Work-arounds for kio 0.6.5 snags (see docs/adr/0002-protocol-codec-kio.md).

1. Unknown error codes: kio's native reader maps ``int16`` error codes to
   members of ``kio.schema.errors.ErrorCode`` using a table it builds from the
   enum's members on its first decode, and raises ``ValueError`` for a value
   that is not a member.  :func:`install` adds placeholder members
   (``unknown_<n>``) for every code in :data:`PREALLOCATED_ERROR_CODES` *before*
   that table is built, and a ``_missing_`` hook so ``ErrorCode(n)`` works for
   every other ``int16`` (used by the tolerant reader below).
2. Unknown tagged fields: the native reader raises ``KeyError`` on a tag it has
   no field for, while the protocol says such tags must be skipped.
   :func:`tolerant_entity_reader` is a pure-Python reader driven by the same
   generated dataclasses that skips unknown tags; the codec uses it only as a
   fallback when the native reader fails, so the hot path stays native.
3. Unbounded array pre-allocation: the native reader reserves memory for an
   array's element count *before* reading the elements, so a 40-byte request
   announcing 2**31 elements makes Rust's allocator abort the whole process
   (not an exception).  :func:`prescan_entity` walks a message's structure in
   Python first and rejects any array count larger than the bytes left, and a
   null (or negative length) in a field the schema does not declare nullable
   (Kafka's "non-nullable field was serialized as null": kio would hand the
   handlers a None where they expect a tuple or a string); it also spots
   unknown tagged fields (and walks on past them) so those messages go to the
   tolerant reader. Given a ``max_array``, it also refuses any array of more elements
   (:class:`ArrayTooLarge`) as soon as it reads the count: a request announcing
   millions of small elements costs one count read, not a walk and a decode.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import MISSING, Field, fields
from typing import Any, Final, TypeAlias

from kio._kio_native import get_field_reader, get_reader
from kio.schema.errors import ErrorCode
from kio.serial._implicit_defaults import get_tagged_field_default
from kio.serial._introspect import (
    EntityField,
    EntityTupleField,
    PrimitiveField,
    PrimitiveTupleField,
    classify_field,
    get_field_tag,
    get_schema_field_type,
    is_optional,
)
from kio.serial.errors import BufferUnderflow
from kio.serial.errors import DecodeError as KioDecodeError
from kio.serial.readers import (
    read_compact_array_length,
    read_int8,
    read_int16,
    read_legacy_array_length,
    read_unsigned_varint,
)
from kio.static.primitive import i16

__all__ = (
    "PREALLOCATED_ERROR_CODES",
    "ArrayTooLarge",
    "FieldReader",
    "NeedsTolerantReader",
    "PrescanError",
    "install",
    "prescan_entity",
    "tolerant_entity_reader",
    "unknown_error_code",
)

FieldReader: TypeAlias = Callable[[bytes, int], tuple[Any, int]]
"""kio's reader convention: ``reader(buffer, offset) -> (value, bytes consumed)``."""

PREALLOCATED_ERROR_CODES: Final = range(-128, 1024)
"""Codes given an enum member up front, so kio's native reader accepts them.

Kafka's codes run from -1 to ~135 today; the window leaves room for decades of
additions without bloating the enum with all 65536 ``int16`` values.  Codes
outside it still decode, through the tolerant (slower) reader.
"""

_installed = False


def unknown_error_code(value: int) -> ErrorCode:
    """Return the ``ErrorCode`` member for ``value``, creating a placeholder if needed."""
    existing = ErrorCode._value2member_map_.get(value)
    if existing is not None:
        return existing  # type: ignore[return-value]
    member = int.__new__(ErrorCode, value)
    member._value_ = i16(value)
    member._name_ = f"unknown_{value}"
    member.retriable = False
    ErrorCode._value2member_map_[value] = member
    return member


def _missing_error_code(cls: type[ErrorCode], value: object) -> ErrorCode | None:
    if isinstance(value, int) and not isinstance(value, bool) and -(2**15) <= value < 2**15:
        return unknown_error_code(value)
    return None


def install() -> None:
    """Apply the ErrorCode extension once; must run before kio's first decode."""
    global _installed
    if _installed:
        return
    _installed = True
    for value in PREALLOCATED_ERROR_CODES:
        if value in ErrorCode._value2member_map_:
            continue
        member = unknown_error_code(value)
        # Register as a real (named, iterable) member: kio's native reader
        # builds its lookup table by iterating the enum.
        ErrorCode._member_map_[member._name_] = member
        ErrorCode._member_names_.append(member._name_)
    ErrorCode._missing_ = classmethod(_missing_error_code)  # type: ignore[assignment,method-assign]


# --------------------------------------------------------------------------
# Tolerant reader: skips unknown tagged fields.


def _read_error_code(buf: bytes, offset: int) -> tuple[ErrorCode, int]:
    value, size = read_int16(buf, offset)
    return unknown_error_code(value), size


def _nullable_entity(inner: FieldReader) -> FieldReader:
    # KIP-893: a nullable struct is preceded by an int8 marker, -1 for null.
    def read(buf: bytes, offset: int) -> tuple[Any, int]:
        marker, size = read_int8(buf, offset)
        if marker < 0:
            return None, size
        value, inner_size = inner(buf, offset + size)
        return value, size + inner_size

    return read


def _entity_array(inner: FieldReader, flexible: bool) -> FieldReader:
    def read(buf: bytes, start: int) -> tuple[Any, int]:
        length: int | None
        if flexible:
            length, size = read_compact_array_length(buf, start)
        else:
            length, size = read_legacy_array_length(buf, start)
            if length < 0:
                length = None
        offset = start + size
        if length is None:
            return None, size
        if length > _LIMIT.max_array:
            raise ArrayTooLarge(length, _LIMIT.max_array)
        if length > len(buf) - offset:
            # Every element takes at least one byte; refuse absurd lengths early.
            raise BufferUnderflow(f"array of {length} items cannot fit in the buffer")
        items = []
        for _ in range(length):
            item, size = inner(buf, offset)
            offset += size
            items.append(item)
        return tuple(items), offset - start

    return read


def _field_reader(entity_type: type[Any], field: Field[Any], is_tag: bool) -> FieldReader:
    field_class = classify_field(field)
    flexible: bool = entity_type.__flexible__
    match field_class:
        case PrimitiveField():
            if get_schema_field_type(field) == "error_code":
                return _read_error_code
            is_header = entity_type.__name__ == "RequestHeader"
            reader: FieldReader = get_field_reader(entity_type, field, is_header, is_tag)
            return reader
        case PrimitiveTupleField():
            # Not kio's native array reader: it pre-allocates from the count.
            element: FieldReader = get_reader(get_schema_field_type(field), flexible, False)
            return _entity_array(element, flexible)
        case EntityField(nested):
            inner = tolerant_entity_reader(nested)
            if is_optional(field) and not is_tag:
                return _nullable_entity(inner)
            return inner
        case EntityTupleField(nested):
            return _entity_array(tolerant_entity_reader(nested), flexible)
    raise TypeError(f"unsupported field {field.name} of {entity_type.__name__}")


_TOLERANT_READERS: dict[type[Any], FieldReader] = {}


def tolerant_entity_reader(entity_type: type[Any]) -> FieldReader:
    """Return a reader for ``entity_type`` that skips tagged fields it does not know."""
    reader = _TOLERANT_READERS.get(entity_type)
    if reader is None:
        reader = _TOLERANT_READERS[entity_type] = _build_tolerant_reader(entity_type)
    return reader


def _build_tolerant_reader(entity_type: type[Any]) -> FieldReader:
    flexible: bool = entity_type.__flexible__
    plain: list[tuple[str, FieldReader]] = []
    tagged: dict[int, tuple[str, FieldReader]] = {}
    tag_defaults: dict[str, Any] = {}
    for field in fields(entity_type):
        tag = get_field_tag(field)
        if tag is None:
            plain.append((field.name, _field_reader(entity_type, field, False)))
        else:
            tagged[tag] = (field.name, _field_reader(entity_type, field, True))
            if field.default is MISSING and field.default_factory is MISSING:
                tag_defaults[field.name] = get_tagged_field_default(field)

    def read(buf: bytes, start: int) -> tuple[Any, int]:
        values: dict[str, Any] = {}
        offset = start
        for name, reader in plain:
            values[name], used = reader(buf, offset)
            offset += used
        if flexible:
            count, used = read_unsigned_varint(buf, offset)
            offset += used
            for _ in range(count):
                tag, used = read_unsigned_varint(buf, offset)
                offset += used
                size, used = read_unsigned_varint(buf, offset)
                offset += used
                end = offset + size
                if end > len(buf):
                    raise BufferUnderflow(f"tagged field {tag} overruns the buffer")
                known = tagged.get(tag)
                if known is not None:
                    name, reader = known
                    values[name], used = reader(buf, offset)
                    if used != size:
                        raise KioDecodeError(
                            f"tagged field {tag} ({name}) has size {size} but decodes"
                            f" to {used} bytes"
                        )
                offset = end
            for name, default in tag_defaults.items():
                values.setdefault(name, default)
        return entity_type(**values), offset - start

    return read


# --------------------------------------------------------------------------
# Pre-scan: structural walk that bounds array counts before the native reader.


class PrescanError(Exception):
    """The message is truncated or announces an impossible array/string size."""


class ArrayTooLarge(PrescanError):
    """An array announces more elements than the caller's ``max_array``."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"an array of {count} elements, more than the {limit} allowed")
        self.count = count
        self.limit = limit


class _Limit(threading.local):
    max_array: int = 1 << 62  # per thread: the proxy's loop and upstream decoders differ
    unknown_tag: bool = False  # the pre-scan saw a tagged field kio does not know
    reject_nulls: bool = False  # nulls in non-nullable fields are errors (requests)


_LIMIT: Final = _Limit()


class NeedsTolerantReader(Exception):
    """The message holds an unknown tagged field; kio's native reader would raise."""


Skipper: TypeAlias = Callable[[bytes, int], int]
"""``skip(buffer, offset) -> offset after the value`` (absolute, unlike kio readers)."""

_FIXED_SIZES: Final[dict[str, int]] = {
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "int16": 2,
    "uint16": 2,
    "error_code": 2,
    "int32": 4,
    "uint32": 4,
    "timedelta_i32": 4,
    "int64": 8,
    "uint64": 8,
    "timedelta_i64": 8,
    "datetime_i64": 8,
    "float64": 8,
    "uuid": 16,
}


def _uvarint(buf: bytes, offset: int) -> tuple[int, int]:
    byte = buf[offset]
    if byte < 0x80:
        return byte, offset + 1
    value = byte & 0x7F
    shift = 7
    while True:
        offset += 1
        byte = buf[offset]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset + 1
        shift += 7
        if shift > 35:
            raise PrescanError("varint longer than 5 bytes")


def _skip_compact_bytes(buf: bytes, offset: int) -> int:
    length, offset = _uvarint(buf, offset)
    return offset + length - 1 if length else offset


def _skip_legacy_string(buf: bytes, offset: int) -> int:
    length = int.from_bytes(buf[offset : offset + 2], "big", signed=True)
    if length < -1:
        raise PrescanError(f"string of negative length {length}")
    return offset + 2 + max(length, 0)


def _skip_legacy_bytes(buf: bytes, offset: int) -> int:
    length = int.from_bytes(buf[offset : offset + 4], "big", signed=True)
    if length < -1:
        raise PrescanError(f"bytes of negative length {length}")
    return offset + 4 + max(length, 0)


def _not_null(skip: Skipper, name: str, flexible: bool, width: int) -> Skipper:
    """``skip`` for a string/bytes field that must not be null (length -1; compact: 0)."""

    def check(buf: bytes, offset: int) -> int:
        if flexible:
            null = buf[offset] == 0
        else:
            null = buf[offset] == 0xFF and buf[offset + width - 1] == 0xFF and (
                int.from_bytes(buf[offset : offset + width], "big", signed=True) == -1)
        if null and _LIMIT.reject_nulls:
            raise PrescanError(f"non-nullable field {name} was serialized as null")
        return skip(buf, offset)

    return check


def _primitive_skipper(kafka_type: str, flexible: bool) -> int | Skipper:
    fixed = _FIXED_SIZES.get(kafka_type)
    if fixed is not None:
        return fixed
    if kafka_type in ("string", "bytes", "records"):
        if flexible:
            return _skip_compact_bytes
        return _skip_legacy_string if kafka_type == "string" else _skip_legacy_bytes
    raise TypeError(f"no pre-scan rule for kafka type {kafka_type!r}")


def _array_skipper(element: int | Skipper, min_size: int, flexible: bool,
                   name: str = "", nullable: bool = True) -> Skipper:
    def skip(buf: bytes, offset: int) -> int:
        if flexible:
            count, offset = _uvarint(buf, offset)
            count -= 1  # 0 encodes null
        else:
            count = int.from_bytes(buf[offset : offset + 4], "big", signed=True)
            offset += 4
        if count < 0 and (count < -1 or not (nullable or not _LIMIT.reject_nulls)):
            raise PrescanError(f"non-nullable field {name} was serialized as null"
                               if count == -1 else f"array of negative length {count}")
        if count <= 0:
            return offset
        if count > _LIMIT.max_array:
            raise ArrayTooLarge(count, _LIMIT.max_array)
        if count * min_size > len(buf) - offset:
            raise PrescanError(
                f"array of {count} elements cannot fit in the {len(buf) - offset} bytes left"
            )
        if isinstance(element, int):
            return offset + count * element
        for _ in range(count):
            offset = element(buf, offset)
        return offset

    return skip


def _fixed_skipper(size: int) -> Skipper:
    def skip(buf: bytes, offset: int) -> int:
        return offset + size

    return skip


def _nullable_skipper(inner: Skipper) -> Skipper:
    def skip(buf: bytes, offset: int) -> int:
        if buf[offset] >= 0x80:  # int8 marker -1: null
            return offset + 1
        return inner(buf, offset + 1)

    return skip


_SKIPPERS: dict[type[Any], tuple[Skipper, int]] = {}


def _entity_skipper(entity_type: type[Any]) -> tuple[Skipper, int]:
    """The skipper of ``entity_type`` and the minimum encoded size of one instance."""
    found = _SKIPPERS.get(entity_type)
    if found is None:
        found = _SKIPPERS[entity_type] = _build_entity_skipper(entity_type)
    return found


def _build_entity_skipper(entity_type: type[Any]) -> tuple[Skipper, int]:
    flexible: bool = entity_type.__flexible__
    ops: list[int | Skipper] = []
    tagged: dict[int, Skipper] = {}
    min_size = 1 if flexible else 0

    def add(op: int | Skipper) -> None:
        if isinstance(op, int) and ops and isinstance(ops[-1], int):
            ops[-1] += op  # fuse runs of fixed-size fields
        else:
            ops.append(op)

    for field in fields(entity_type):
        field_class = classify_field(field)
        tag = get_field_tag(field)
        op: int | Skipper
        size: int
        nullable = is_optional(field) or tag is not None
        match field_class:
            case PrimitiveField():
                kafka_type = get_schema_field_type(field)
                op = _primitive_skipper(kafka_type, flexible)
                size = op if isinstance(op, int) else 1
                if not isinstance(op, int) and not nullable:
                    op = _not_null(op, field.name, flexible, 2 if kafka_type == "string" else 4)
            case PrimitiveTupleField():
                element = _primitive_skipper(get_schema_field_type(field), flexible)
                elem_size = element if isinstance(element, int) else 1
                op = _array_skipper(element, max(elem_size, 1), flexible, field.name, nullable)
                size = 1 if flexible else 4
            case EntityField(nested):
                op, size = _entity_skipper(nested)
                if is_optional(field) and tag is None:
                    op = _nullable_skipper(op)
                    size = 1
            case EntityTupleField(nested):
                inner, inner_size = _entity_skipper(nested)
                op = _array_skipper(inner, max(inner_size, 1), flexible, field.name, nullable)
                size = 1 if flexible else 4
            case _:
                raise TypeError(f"unsupported field {field.name} of {entity_type.__name__}")
        if tag is not None:
            tagged[tag] = _fixed_skipper(op) if isinstance(op, int) else op
            continue
        add(op)
        min_size += size

    frozen_ops = tuple(ops)

    def skip(buf: bytes, offset: int) -> int:
        for op in frozen_ops:
            offset = offset + op if isinstance(op, int) else op(buf, offset)
        if flexible:
            count, offset = _uvarint(buf, offset)
            for _ in range(count):
                tag, offset = _uvarint(buf, offset)
                size, offset = _uvarint(buf, offset)
                known = tagged.get(tag)
                if known is None:
                    _LIMIT.unknown_tag = True  # walk on: the rest is checked all the same
                elif known(buf, offset) != offset + size:
                    raise PrescanError(f"tagged field {tag} does not match its size {size}")
                offset += size
        return offset

    return skip, min_size


def prescan_entity(entity_type: type[Any], buf: bytes, offset: int,
                   max_array: int | None = None, reject_nulls: bool = False) -> int:
    """Walk one encoded ``entity_type`` at ``offset``; return the offset after it.

    ``reject_nulls``: a null in a field the schema does not declare nullable is an error
    (as Kafka parses requests; responses from brokers are read as they come).

    :raises ArrayTooLarge: an array announces more than ``max_array`` elements.
    :raises PrescanError: truncated, an array count exceeds the bytes left, or a null
        where none is allowed (with ``reject_nulls``).
    :raises NeedsTolerantReader: an unknown tagged field is present.
    """
    skip, _min_size = _entity_skipper(entity_type)
    _LIMIT.max_array = (1 << 62) if max_array is None else max_array
    _LIMIT.unknown_tag = False
    _LIMIT.reject_nulls = reject_nulls
    try:
        end = skip(buf, offset)
    except IndexError:
        raise PrescanError("message truncated") from None
    if end > len(buf):
        raise PrescanError(
            f"message truncated: needs {end - offset} bytes, has {len(buf) - offset}"
        )
    if _LIMIT.unknown_tag:
        raise NeedsTolerantReader("unknown tagged field")
    return end
