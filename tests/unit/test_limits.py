"""Resource limits as pure decisions: config validation, partition budgets, clamped client
timeouts, and arrays refused by the codec before they are decoded."""

from __future__ import annotations

import datetime
import struct
from typing import Any

import pytest
from kio.index import load_request_schema

from federation.core.errors import ConfigError
from federation.protocol import _kio_compat, codec
from federation.protocol.versions import ApiKey
from federation.proxy.limits import Limits, PartitionBudget, clamp_timeouts


def test_defaults_and_overrides() -> None:
    limits = Limits.from_dict({"max_array_elements": 500,
                               "max_array_elements_by_api": {"FindCoordinator": 20},
                               "max_client_timeout": 60})
    assert limits.array_limit(ApiKey.FIND_COORDINATOR) == 20
    assert limits.array_limit(ApiKey.METADATA) == 500
    assert limits.max_client_timeout == 60.0
    assert Limits().max_partitions_per_request == 10_000
    assert Limits().array_limit(ApiKey.PRODUCE) == 10_000


@pytest.mark.parametrize(("data", "words"), [
    ({"max_array_elements": 0}, "limits.max_array_elements must be a positive integer"),
    ({"max_array_elements_by_api": {"FindCoordinatr": 5}}, "'FindCoordinatr', which is no"),
    ({"max_array_elements_by_api": {"FindCoordinator": -1}},
     "max_array_elements_by_api.FindCoordinator must be a positive integer"),
    ({"max_array_elements_by_api": [1]}, "must be an object of API name"),
    ({"max_partitions_per_request": 1.5}, "must be a positive integer"),
    ({"max_fetch_wait": -1}, "positive number of seconds"),
])
def test_bad_limits_name_the_field(data: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        Limits.from_dict(data)


def test_partition_budget_spans_the_request() -> None:
    budget = PartitionBudget(Limits(max_partitions_per_request=10))
    assert budget.take(6) is None
    refused = budget.take(5)
    assert refused is not None and refused[0] == 44  # POLICY_VIOLATION
    assert "max_partitions_per_request" in refused[1]
    assert budget.take(4) is None and budget.hit
    assert PartitionBudget(Limits()).take(2**31 - 1) is not None


def _produce(timeout_ms: int) -> Any:
    schema: Any = load_request_schema(ApiKey.PRODUCE, 9)
    return schema(transactional_id=None, acks=1,
                  timeout=datetime.timedelta(milliseconds=timeout_ms), topic_data=())


@pytest.mark.parametrize(("given", "want"), [(-2**31, 0), (-1, 0), (1500, 1500),
                                             (2**31 - 1, 300_000)])
def test_client_timeouts_are_clamped(given: int, want: int) -> None:
    entity, changed = clamp_timeouts(Limits(), ApiKey.PRODUCE, _produce(given))
    assert entity.timeout == datetime.timedelta(milliseconds=want)
    assert changed == ([] if given == want else ["timeout"])
    # the clamped request still encodes
    assert b"".join(codec.encode_request(entity, 1, "c"))


def test_fetch_wait_and_join_group_rebalance_are_clamped() -> None:
    fetch: Any = load_request_schema(ApiKey.FETCH, 12)
    req = fetch(replica_id=-1, max_wait=datetime.timedelta(milliseconds=-5), min_bytes=1,
                max_bytes=1, isolation_level=0, session_id=0, session_epoch=-1, topics=(),
                forgotten_topics_data=(), rack_id="")
    out, changed = clamp_timeouts(Limits(max_fetch_wait=2), ApiKey.FETCH, req)
    assert out.max_wait == datetime.timedelta(0) and changed == ["max_wait"]
    join: Any = load_request_schema(ApiKey.JOIN_GROUP, 5)
    req = join(group_id="g", session_timeout=datetime.timedelta(seconds=10),
               rebalance_timeout=datetime.timedelta(days=20), member_id="",
               group_instance_id=None, protocol_type="consumer", protocols=())
    out, changed = clamp_timeouts(Limits(), ApiKey.JOIN_GROUP, req)
    assert out.rebalance_timeout == datetime.timedelta(seconds=300)
    assert out.session_timeout == datetime.timedelta(seconds=10)  # the broker checks it
    assert changed == ["rebalance_timeout"]


def _find_coordinator_frame(keys: int) -> bytes:
    """FindCoordinator v4 (flexible) with ``keys`` one-byte keys."""
    head = struct.pack(">hhih", ApiKey.FIND_COORDINATOR, 4, 7, 1) + b"c" + b"\x00"
    count = keys + 1
    varint = bytearray()
    while count >= 0x80:
        varint.append(count & 0x7F | 0x80)
        count >>= 7
    varint.append(count)
    return head + b"\x00" + bytes(varint) + b"\x02k" * keys + b"\x00"


def test_a_huge_array_is_refused_before_decoding() -> None:
    frame = _find_coordinator_frame(2_000_000)
    with pytest.raises(codec.LimitExceeded) as info:
        codec.decode_request(frame, max_array=10_000)
    assert info.value.count == 2_000_000 and info.value.limit == 10_000
    assert info.value.header is not None and info.value.header.correlation_id == 7
    small = codec.decode_request(_find_coordinator_frame(3), max_array=3)
    assert len(small.entity.coordinator_keys) == 3  # type: ignore[union-attr]
    # without a limit, the codec still decodes it (the proxy always passes one)
    assert len(codec.decode_request(frame).entity.coordinator_keys) == 2_000_000  # type: ignore[union-attr]


def test_the_tolerant_reader_is_bounded_too() -> None:
    # A request with an unknown tagged field is read by the tolerant reader after the
    # pre-scan set the limit (in this thread): its arrays are bounded by the same limit.
    frame = _find_coordinator_frame(50)
    frame = frame[:-1] + b"\x01\x63\x01\x00"  # one unknown tagged field (tag 99, 1 byte)
    assert len(codec.decode_request(frame).entity.coordinator_keys) == 50  # type: ignore[union-attr]
    _, offset = codec.parse_request_header(frame)
    schema: Any = load_request_schema(ApiKey.FIND_COORDINATOR, 4)
    with pytest.raises(codec.LimitExceeded):
        codec._read_entity(schema, frame, offset, max_array=49)
    _kio_compat._LIMIT.max_array = 10  # as a pre-scan leaves it
    with pytest.raises(_kio_compat.ArrayTooLarge):
        _kio_compat.tolerant_entity_reader(schema)(frame, offset)
    _kio_compat._LIMIT.max_array = 1 << 62


def test_a_null_where_the_schema_allows_none_is_malformed() -> None:
    # CreatePartitions v3: topics is not nullable (a null crashed the handler).
    head = struct.pack(">hhih", ApiKey.CREATE_PARTITIONS, 3, 5, 1) + b"c" + b"\x00"
    frame = head + b"\x00" + struct.pack(">i", 1000) + b"\x00" + b"\x00"
    with pytest.raises(codec.DecodeError, match="non-nullable field topics"):
        codec.decode_request(frame)
    # Metadata v1: topics is nullable (all topics): fine.
    meta = struct.pack(">hhih", ApiKey.METADATA, 1, 6, 1) + b"c" + struct.pack(">i", -1)
    assert codec.decode_request(meta).entity.topics is None  # type: ignore[union-attr]
    # A non-nullable string sent as null (ListOffsets v1 topic name) is malformed too.
    lo = (struct.pack(">hhih", ApiKey.LIST_OFFSETS, 1, 7, 1) + b"c" + struct.pack(">i", -1)
          + struct.pack(">i", 1) + struct.pack(">h", -1) + struct.pack(">i", 0))
    with pytest.raises(codec.DecodeError, match="non-nullable field name"):
        codec.decode_request(lo)
    # Responses from brokers are read as they come.
    assert _kio_compat._LIMIT.reject_nulls is True
