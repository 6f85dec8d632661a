"""Kafka error codes the proxy uses, and generic error responses.

:class:`ErrorCode` is our own small ``IntEnum``; its values are Kafka's and its
names match kio's ``ErrorCode`` members (upper-cased), which a unit test checks.
kio entities carry kio's enum: convert with :func:`to_kio`.

:func:`error_response` builds a well-formed response entity for any decoded
request of an API in :data:`~federation.protocol.versions.SUPPORTED`, with the
given error in every topic/partition/group entry mirrored from the request and
in every top-level error field — what the proxy answers when it must refuse a
request cleanly.
"""

from __future__ import annotations

import datetime
import enum
import uuid
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING, Any, Final

from kio.index import load_response_schema
from kio.schema.errors import ErrorCode as KioErrorCode
from kio.serial._introspect import (
    EntityField,
    EntityTupleField,
    PrimitiveField,
    PrimitiveTupleField,
    classify_field,
    get_schema_field_type,
    is_optional,
)
from kio.static.primitive import i32Timedelta, i64Timedelta

if TYPE_CHECKING:
    from kio.static.protocol import ResponsePayload

    from .codec import Request

__all__ = ("ErrorCode", "error_response", "to_kio")


class ErrorCode(enum.IntEnum):
    """The Kafka error codes the proxy produces or reacts to."""

    UNKNOWN_SERVER_ERROR = -1
    NONE = 0
    OFFSET_OUT_OF_RANGE = 1
    CORRUPT_MESSAGE = 2
    UNKNOWN_TOPIC_OR_PARTITION = 3
    LEADER_NOT_AVAILABLE = 5
    NOT_LEADER_OR_FOLLOWER = 6
    REQUEST_TIMED_OUT = 7
    BROKER_NOT_AVAILABLE = 8
    MESSAGE_TOO_LARGE = 10
    NETWORK_EXCEPTION = 13
    COORDINATOR_LOAD_IN_PROGRESS = 14
    COORDINATOR_NOT_AVAILABLE = 15
    NOT_COORDINATOR = 16
    INVALID_TOPIC_EXCEPTION = 17
    INVALID_REQUIRED_ACKS = 21
    ILLEGAL_GENERATION = 22
    INVALID_GROUP_ID = 24
    UNKNOWN_MEMBER_ID = 25
    REBALANCE_IN_PROGRESS = 27
    TOPIC_AUTHORIZATION_FAILED = 29
    GROUP_AUTHORIZATION_FAILED = 30
    CLUSTER_AUTHORIZATION_FAILED = 31
    UNSUPPORTED_SASL_MECHANISM = 33
    ILLEGAL_SASL_STATE = 34
    UNSUPPORTED_VERSION = 35
    TOPIC_ALREADY_EXISTS = 36
    INVALID_PARTITIONS = 37
    INVALID_REPLICATION_FACTOR = 38
    INVALID_CONFIG = 40
    INVALID_REQUEST = 42
    POLICY_VIOLATION = 44
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45
    DUPLICATE_SEQUENCE_NUMBER = 46
    INVALID_PRODUCER_EPOCH = 47
    INVALID_TXN_STATE = 48
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
    KAFKA_STORAGE_ERROR = 56
    SASL_AUTHENTICATION_FAILED = 58
    UNKNOWN_PRODUCER_ID = 59
    NON_EMPTY_GROUP = 68
    GROUP_ID_NOT_FOUND = 69
    FETCH_SESSION_ID_NOT_FOUND = 70
    INVALID_FETCH_SESSION_EPOCH = 71
    FENCED_LEADER_EPOCH = 74
    UNKNOWN_LEADER_EPOCH = 75
    THROTTLING_QUOTA_EXCEEDED = 89
    PRODUCER_FENCED = 90
    UNKNOWN_TOPIC_ID = 100
    INCONSISTENT_TOPIC_ID = 103


def to_kio(code: int) -> KioErrorCode:
    """kio's enum member for ``code`` (also for codes kio does not know)."""
    return KioErrorCode(int(code))


# --------------------------------------------------------------------------
# Generic error responses


@dataclass(frozen=True, slots=True)
class _Mirror:
    """One response array filled with an entry per item of a request array.

    ``copy`` maps response field -> request item field; ``""`` means the item
    itself (for requests that carry plain string/int arrays).  The first
    ``_Mirror`` for a response field whose request field exists is used.
    """

    response_field: str
    request_field: str
    copy: Mapping[str, str]
    nested: tuple[_Mirror, ...] = ()
    max_version: int | None = None


_NAME_OR_ID: Final = {"name": "name", "topic_id": "topic_id"}

_MIRRORS: Final[Mapping[int, tuple[_Mirror, ...]]] = {
    3: (_Mirror("topics", "topics", _NAME_OR_ID),),  # Metadata
    0: (  # Produce
        _Mirror(
            "responses",
            "topic_data",
            _NAME_OR_ID,
            (_Mirror("partition_responses", "partition_data", {"index": "index"}),),
        ),
    ),
    1: (  # Fetch: since v13 Kafka answers errors at top level only, without partitions.
        _Mirror(
            "responses",
            "topics",
            {"topic": "topic", "topic_id": "topic_id"},
            (_Mirror("partitions", "partitions", {"partition_index": "partition"}),),
            max_version=12,
        ),
    ),
    2: (  # ListOffsets
        _Mirror(
            "topics",
            "topics",
            _NAME_OR_ID,
            (_Mirror("partitions", "partitions", {"partition_index": "partition_index"}),),
        ),
    ),
    23: (  # OffsetForLeaderEpoch
        _Mirror(
            "topics",
            "topics",
            {"topic": "topic"},
            (_Mirror("partitions", "partitions", {"partition": "partition"}),),
        ),
    ),
    10: (_Mirror("coordinators", "coordinator_keys", {"key": ""}),),  # FindCoordinator v4+
    13: (  # LeaveGroup v3+
        _Mirror(
            "members",
            "members",
            {"member_id": "member_id", "group_instance_id": "group_instance_id"},
        ),
    ),
    8: (  # OffsetCommit
        _Mirror(
            "topics",
            "topics",
            _NAME_OR_ID,
            (_Mirror("partitions", "partitions", {"partition_index": "partition_index"}),),
        ),
    ),
    9: (  # OffsetFetch: v1-7 topics at top level, v8+ grouped
        _Mirror(
            "topics",
            "topics",
            _NAME_OR_ID,
            (_Mirror("partitions", "partition_indexes", {"partition_index": ""}),),
        ),
        _Mirror(
            "groups",
            "groups",
            {"group_id": "group_id"},
            (
                _Mirror(
                    "topics",
                    "topics",
                    _NAME_OR_ID,
                    (_Mirror("partitions", "partition_indexes", {"partition_index": ""}),),
                ),
            ),
        ),
    ),
    15: (_Mirror("groups", "groups", {"group_id": ""}),),  # DescribeGroups
    19: (_Mirror("topics", "topics", {"name": "name"}),),  # CreateTopics
    20: (  # DeleteTopics: v6 has entities, earlier versions plain names
        _Mirror("responses", "topics", _NAME_OR_ID),
        _Mirror("responses", "topic_names", {"name": ""}),
    ),
    37: (_Mirror("results", "topics", {"name": "name"}),),  # CreatePartitions
    32: (  # DescribeConfigs
        _Mirror(
            "results",
            "resources",
            {"resource_type": "resource_type", "resource_name": "resource_name"},
        ),
    ),
    33: (  # AlterConfigs
        _Mirror(
            "responses",
            "resources",
            {"resource_type": "resource_type", "resource_name": "resource_name"},
        ),
    ),
    44: (  # IncrementalAlterConfigs
        _Mirror(
            "responses",
            "resources",
            {"resource_type": "resource_type", "resource_name": "resource_name"},
        ),
    ),
    21: (  # DeleteRecords
        _Mirror(
            "topics",
            "topics",
            {"name": "name"},
            (_Mirror("partitions", "partitions", {"partition_index": "partition_index"}),),
        ),
    ),
    42: (_Mirror("results", "groups_names", {"group_id": ""}),),  # DeleteGroups
    47: (  # OffsetDelete
        _Mirror(
            "topics",
            "topics",
            {"name": "name"},
            (_Mirror("partitions", "partitions", {"partition_index": "partition_index"}),),
        ),
    ),
    75: (_Mirror("topics", "topics", {"name": "name"}),),  # DescribeTopicPartitions
    61: (  # DescribeProducers
        _Mirror(
            "topics",
            "topics",
            {"name": "name"},
            (_Mirror("partitions", "partition_indexes", {"partition_index": ""}),),
        ),
    ),
}

_ZERO_I32_TIMEDELTA: Final = i32Timedelta.parse(datetime.timedelta(0))
_ZERO_I64_TIMEDELTA: Final = i64Timedelta.parse(datetime.timedelta(0))
_EPOCH: Final = datetime.datetime.fromtimestamp(0, tz=datetime.UTC)


@dataclass(frozen=True, slots=True)
class _FieldPlan:
    name: str
    kafka_type: str | None  # None for entity fields
    optional: bool
    has_default: bool
    array: bool
    entity: type[Any] | None


_PLANS: dict[type[Any], tuple[_FieldPlan, ...]] = {}


def _plan(entity_type: type[Any]) -> tuple[_FieldPlan, ...]:
    found = _PLANS.get(entity_type)
    if found is None:
        found = _PLANS[entity_type] = _build_plan(entity_type)
    return found


def _build_plan(entity_type: type[Any]) -> tuple[_FieldPlan, ...]:
    plans = []
    for field in fields(entity_type):
        field_class = classify_field(field)
        is_entity = isinstance(field_class, EntityField | EntityTupleField)
        plans.append(
            _FieldPlan(
                name=field.name,
                kafka_type=None if is_entity else get_schema_field_type(field),
                optional=is_optional(field),
                has_default=field.default is not MISSING or field.default_factory is not MISSING,
                array=isinstance(field_class, EntityTupleField | PrimitiveTupleField),
                entity=field_class.type_ if is_entity else None,
            )
        )
        assert isinstance(field_class, PrimitiveField | PrimitiveTupleField) or is_entity
    return tuple(plans)


def _placeholder(plan: _FieldPlan, error: KioErrorCode) -> Any:
    if plan.array:
        return ()
    if plan.entity is not None:
        return None if plan.optional else _build(plan.entity, None, (), error, {}, 0)
    kafka_type = plan.kafka_type
    if kafka_type == "error_code":
        return error
    if plan.optional:
        return None
    if kafka_type in ("int8", "int16", "int32", "int64"):
        return -1  # "unknown" for ids, offsets, epochs, ports
    if kafka_type in ("uint8", "uint16", "uint32", "uint64"):
        return 0
    if kafka_type == "string":
        return ""
    if kafka_type in ("bytes", "records"):
        return b""
    if kafka_type == "bool":
        return False
    if kafka_type == "uuid":
        return uuid.UUID(int=0)
    if kafka_type == "timedelta_i32":
        return _ZERO_I32_TIMEDELTA
    if kafka_type == "timedelta_i64":
        return _ZERO_I64_TIMEDELTA
    if kafka_type == "datetime_i64":
        return _EPOCH
    if kafka_type == "float64":
        return 0.0
    raise TypeError(f"no placeholder for field {plan.name} of kafka type {kafka_type!r}")


def _item_value(item: Any, source: str) -> Any:
    return item if source == "" else getattr(item, source, None)


def _build(
    entity_type: type[Any],
    item: Any,
    mirrors: tuple[_Mirror, ...],
    error: KioErrorCode,
    copy: Mapping[str, str],
    version: int,
) -> Any:
    values: dict[str, Any] = {}
    for plan in _plan(entity_type):
        mirror = next(
            (
                m
                for m in mirrors
                if m.response_field == plan.name
                and item is not None
                and hasattr(item, m.request_field)
                and (m.max_version is None or version <= m.max_version)
            ),
            None,
        )
        if mirror is not None and plan.entity is not None:
            sources = getattr(item, mirror.request_field) or ()
            values[plan.name] = tuple(
                _build(plan.entity, source, mirror.nested, error, mirror.copy, version)
                for source in sources
            )
        elif plan.kafka_type == "error_code":
            values[plan.name] = error
        elif plan.name in copy and item is not None:
            value = _item_value(item, copy[plan.name])
            values[plan.name] = (
                _placeholder(plan, error) if value is None and not plan.optional else value
            )
        elif not plan.has_default:
            values[plan.name] = _placeholder(plan, error)
    return entity_type(**values)


def error_response(request: Request, error_code: int) -> ResponsePayload:
    """A response entity answering ``request`` with ``error_code`` everywhere.

    Every topic/partition (or group, coordinator key, member, resource) the
    request names gets an entry carrying the error, and every top-level error
    field is set; offsets, ids and epochs are -1, strings empty, arrays empty.
    Encode it with :func:`~federation.protocol.codec.encode_response`.
    Note that Produce with ``acks=0`` must get no response at all.

    :raises kio.index.KioIndexError: kio has no response schema for the request.
    """
    header = request.header
    schema = load_response_schema(header.api_key, header.api_version)
    mirrors = _MIRRORS.get(header.api_key, ())
    response: ResponsePayload = _build(
        schema, request.entity, mirrors, to_kio(error_code), {}, header.api_version
    )
    return response
