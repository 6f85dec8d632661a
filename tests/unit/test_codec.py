"""Codec, versions and error responses, cross-checked against kafka-python's encoder/decoder."""

from __future__ import annotations

import contextlib
import datetime
import random
import struct
import uuid
from dataclasses import fields, is_dataclass, replace
from typing import Any

import pytest
from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse, MetadataRequest
from kafka.protocol.metadata import MetadataResponse as KpMetadataResponse
from kafka.protocol.producer import ProduceRequest as KpProduceRequest
from kafka.protocol.producer import ProduceResponse as KpProduceResponse
from kafka.record.default_records import DefaultRecordBatchBuilder
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode as KioErrorCode
from kio.schema.fetch.v12 import FetchRequest
from kio.schema.heartbeat.v4 import HeartbeatResponse
from kio.schema.metadata.v12 import MetadataResponse
from kio.schema.metadata.v12.response import MetadataResponseTopic
from kio.serial._introspect import (
    EntityField,
    EntityTupleField,
    PrimitiveTupleField,
    classify_field,
    get_field_tag,
    get_schema_field_type,
)
from kio.static.primitive import i32Timedelta, i64Timedelta

from federation.protocol import (
    API_NAMES,
    SUPPORTED,
    DecodeError,
    EncodeError,
    ErrorCode,
    RequestHeader,
    UnsupportedVersion,
    api_versions_fallback_response,
    clamp,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    error_response,
    parse_request_header,
    peek_correlation_id,
    to_kio,
)
from federation.protocol.framing import FrameReader
from federation.protocol.versions import codec_versions
from federation.proxy.apis import CAPS

# ---------------------------------------------------------------------------
# helpers


def unframe(parts: list[bytes]) -> bytes:
    [body] = FrameReader(1 << 24).feed(b"".join(parts))
    return body


def kp_frame(message: Any, correlation_id: int = 1, client_id: str = "kp") -> bytes:
    """Frame body exactly as kafka-python's client encodes it."""
    message.with_header(correlation_id=correlation_id, client_id=client_id)
    return bytes(message.encode(header=True, framed=False))


def records(count: int = 2, value_size: int = 20) -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 24)
    for i in range(count):
        builder.append(i, timestamp=1_000 + i, key=None, value=b"x" * value_size, headers=[])
    return bytes(builder.build())


def kp_produce_v9(partitions: int, value_size: int, per_partition_records: int = 1) -> bytes:
    request = KpProduceRequest[9]
    topic = request.TopicProduceData(
        name="orders",
        partition_data=[
            request.TopicProduceData.PartitionProduceData(
                index=i, records=records(per_partition_records, value_size)
            )
            for i in range(partitions)
        ],
    )
    return kp_frame(request(transactional_id=None, acks=-1, timeout_ms=30_000, topic_data=[topic]))


_SAMPLES: dict[str, Any] = {
    "int8": 1,
    "int16": 2,
    "int32": 3,
    "int64": 4,
    "uint16": 5,
    "string": "s",
    "bytes": b"b",
    "records": b"r",
    "bool": True,
    "uuid": uuid.UUID(int=7),
    "timedelta_i32": i32Timedelta.parse(datetime.timedelta(milliseconds=5)),
    "timedelta_i64": i64Timedelta.parse(datetime.timedelta(milliseconds=5)),
    "datetime_i64": datetime.datetime.fromtimestamp(1, tz=datetime.UTC),
    "error_code": KioErrorCode.none,
    "float64": 1.5,
}


def sample(entity_type: type[Any]) -> Any:
    """An instance with every array holding one element, tagged fields left default."""
    values: dict[str, Any] = {}
    for field in fields(entity_type):
        if get_field_tag(field) is not None:
            continue
        kind = classify_field(field)
        if isinstance(kind, EntityTupleField):
            values[field.name] = (sample(kind.type_),)
        elif isinstance(kind, EntityField):
            values[field.name] = sample(kind.type_)
        elif isinstance(kind, PrimitiveTupleField):
            values[field.name] = (_SAMPLES[get_schema_field_type(field)],)
        else:
            values[field.name] = _SAMPLES[get_schema_field_type(field)]
    return entity_type(**values)


def error_codes(entity: Any) -> list[int]:
    """Every error_code value anywhere in a decoded entity."""
    found: list[int] = []
    for field in fields(entity):
        value = getattr(entity, field.name)
        if field.metadata.get("kafka_type") == "error_code":
            found.append(int(value))
        elif is_dataclass(value):
            found += error_codes(value)
        elif isinstance(value, tuple):
            for item in value:
                if is_dataclass(item):
                    found += error_codes(item)
    return found


def all_versions() -> list[tuple[int, int]]:
    return [(k, v) for k, (lo, hi) in SUPPORTED.items() if k in CAPS for v in range(lo, hi + 1)]


# ---------------------------------------------------------------------------
# request headers


def test_parse_header_v2_from_real_client() -> None:
    request = MetadataRequest[12](
        topics=None, allow_auto_topic_creation=False, include_topic_authorized_operations=False
    )
    body = kp_frame(request, correlation_id=77, client_id="app-1")
    header, offset = parse_request_header(body)
    assert header == RequestHeader(3, 12, 77, "app-1")
    # 2+2+4 fixed, 2+5 client id, 1 byte of (empty) tagged fields
    assert offset == 16


def test_parse_header_v1_from_real_client() -> None:
    body = kp_frame(ApiVersionsRequest[0](), correlation_id=5, client_id="x")
    header, offset = parse_request_header(body)
    assert header == RequestHeader(18, 0, 5, "x")
    assert offset == 11 == len(body)


def test_parse_header_of_unknown_api_and_null_client_id() -> None:
    body = struct.pack(">hhih", 999, 3, 1234, -1) + b"opaque"
    header, offset = parse_request_header(body)
    assert header == RequestHeader(999, 3, 1234, None)
    assert offset == 10


def test_parse_header_of_future_flexible_version_skips_tags() -> None:
    # Produce v14 is unknown to kio but, like v9-v13, flexible: header v2.
    body = struct.pack(">hhih", 0, 14, 8, 1) + b"c" + b"\x01\x05\x02hi" + b"BODY"
    header, offset = parse_request_header(body)
    assert header == RequestHeader(0, 14, 8, "c")
    assert body[offset:] == b"BODY"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00\x03\x00", "truncated"),
        (struct.pack(">hhih", 3, 1, 1, 10) + b"abc", "client_id"),
        (struct.pack(">hhih", 3, 1, 1, -2), "client_id length"),
        (struct.pack(">hhih", 3, 1, 1, 2) + b"\xff\xfe", "UTF-8"),
        (struct.pack(">hhih", 3, 12, 1, -1) + b"\x01\x00\x09", "header"),
    ],
)
def test_parse_header_rejects_garbage(body: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        parse_request_header(body)


# ---------------------------------------------------------------------------
# requests


def test_decode_produce_v9_from_real_client_and_reencode_byte_exact() -> None:
    body = kp_produce_v9(partitions=3, value_size=100)
    request = decode_request(body)
    assert request.header == RequestHeader(0, 9, 1, "kp")
    entity = request.entity
    assert type(entity).__name__ == "ProduceRequest"
    assert entity.acks == -1
    assert entity.timeout == datetime.timedelta(seconds=30)
    [topic] = entity.topic_data
    assert topic.name == "orders"
    assert [p.index for p in topic.partition_data] == [0, 1, 2]
    assert topic.partition_data[0].records == records(1, 100)
    assert unframe(encode_request(entity, 1, "kp")) == body


def test_decode_request_accepts_writable_buffers() -> None:
    body = kp_produce_v9(partitions=1, value_size=10)
    assert decode_request(bytearray(body)) == decode_request(body)
    assert decode_request(memoryview(bytearray(body))) == decode_request(body)


def test_unsupported_version_keeps_the_header() -> None:
    body = struct.pack(">hhih", 0, 2, 31, 1) + b"c" + b"\x00" * 8
    with pytest.raises(UnsupportedVersion) as info:
        decode_request(body)
    assert info.value.header == RequestHeader(0, 2, 31, "c")


def test_unknown_api_key_is_unsupported() -> None:
    with pytest.raises(UnsupportedVersion) as info:
        decode_request(struct.pack(">hhih", 4242, 0, 1, -1))
    assert info.value.header is not None
    assert info.value.header.api_key == 4242


def test_trailing_bytes_are_ignored_like_kafka_does() -> None:
    body = kp_frame(ApiVersionsRequest[0]())
    assert decode_request(body + b"\x00") == decode_request(body)


# librdkafka 2.16's "all topics" Metadata request, captured from confluent-kafka's
# AdminClient.list_topics(): null topics, two booleans, no tags, then 3 more bytes.
RDKAFKA_ALL_TOPICS_V13 = (struct.pack(">hhih", 3, 13, 3, 7) + b"rdkafka" + b"\x00"
                          + bytes.fromhex("00000000" "010000"))


@pytest.mark.parametrize("version", [11, 12, 13])  # v9-v10 have one more boolean
def test_all_topics_metadata_with_3_trailing_bytes_decodes(version: int) -> None:
    body = struct.pack(">hh", 3, version) + RDKAFKA_ALL_TOPICS_V13[4:]
    req = decode_request(body)
    assert req.header == RequestHeader(3, version, 3, "rdkafka")
    assert req.entity.topics is None  # all topics
    assert req.entity.allow_auto_topic_creation is False
    assert req.entity.include_topic_authorized_operations is False
    # the same request without the extra bytes decodes to the same thing
    assert decode_request(body[:-3]) == req


def test_trailing_bytes_after_unknown_tagged_fields_are_ignored() -> None:
    plain = decode_request(metadata_v12_body())
    assert decode_request(metadata_v12_body(top_tags=b"\x01\x07\x02ab") + b"\x01\x00\x00") == plain


@pytest.mark.parametrize("topics", [
    b"\x7f",  # 126 topics announced, a few bytes in the frame
    b"\x80\x80\x80\x80\x08",  # 2**31 topics: would make kio's native reader abort
])
def test_array_longer_than_the_frame_is_still_rejected(topics: bytes) -> None:
    header = struct.pack(">hhih", 3, 12, 4, 1) + b"c" + b"\x00"
    # trailing-looking bytes must not make room for the announced elements
    body = header + topics + b"\x01\x00\x00" + b"\x00" * 16
    with pytest.raises(DecodeError, match="cannot fit") as info:
        decode_request(body)
    assert info.value.header == RequestHeader(3, 12, 4, "c")


def test_string_longer_than_the_frame_is_still_rejected() -> None:
    header = struct.pack(">hhih", 3, 12, 4, 1) + b"c" + b"\x00"
    topic = uuid.UUID(int=9).bytes + b"\x7ffoo"  # a 126-byte name in a short frame
    with pytest.raises(DecodeError, match="truncated"):
        decode_request(header + b"\x02" + topic + b"\x00\x01\x00\x00")


def test_every_truncation_of_a_request_is_a_decode_error() -> None:
    body = kp_produce_v9(partitions=2, value_size=10)
    for cut in range(len(body)):
        with pytest.raises(DecodeError):
            decode_request(body[:cut])


def test_random_garbage_bodies_raise_only_decode_error() -> None:
    rng = random.Random(1)
    header = struct.pack(">hhih", 3, 12, 1, -1) + b"\x00"
    for _ in range(2000):
        garbage = rng.randbytes(rng.randrange(0, 40))
        with contextlib.suppress(DecodeError):
            decode_request(header + garbage)


# ---------------------------------------------------------------------------
# kio snags


def metadata_v12_body(topic_tags: bytes = b"\x00", top_tags: bytes = b"\x00") -> bytes:
    header = struct.pack(">hhih", 3, 12, 4, 1) + b"c" + b"\x00"
    topic = uuid.UUID(int=9).bytes + b"\x04foo" + topic_tags
    return header + b"\x02" + topic + b"\x01\x00" + top_tags


def test_unknown_tagged_fields_are_skipped() -> None:
    plain = decode_request(metadata_v12_body())
    tagged = decode_request(
        metadata_v12_body(topic_tags=b"\x01\x05\x02ab", top_tags=b"\x02\x07\x00\x5a\x03xyz")
    )
    assert tagged == plain
    [topic] = tagged.entity.topics
    assert topic.name == "foo"
    assert topic.topic_id == uuid.UUID(int=9)
    assert tagged.entity.allow_auto_topic_creation is True


def test_known_tag_survives_next_to_an_unknown_one() -> None:
    entity = replace(sample(FetchRequest), cluster_id="cluster-A")
    body = unframe(encode_request(entity, 3, None))
    assert body.endswith(b"\x01\x00\x0a\x0acluster-A")  # one tag: 0, 10 bytes
    patched = body[: -len(b"\x01\x00\x0a\x0acluster-A")] + b"\x02\x00\x0a\x0acluster-A\x09\x01Z"
    decoded = decode_request(patched)
    assert decoded.entity == entity


def test_truncated_unknown_tag_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_request(metadata_v12_body(top_tags=b"\x01\x07\x09ab"))


@pytest.mark.parametrize("code", [500, 30_000, -300])
def test_unknown_error_codes_decode(code: int) -> None:
    # response header v1 (correlation id, no tags), throttle_time, error_code, no tags
    body = struct.pack(">ibih", 11, 0, 0, code) + b"\x00"
    correlation_id, entity = decode_response(12, 4, body)
    assert correlation_id == 11
    assert isinstance(entity, HeartbeatResponse)
    assert int(entity.error_code) == code
    assert entity.error_code.name == f"unknown_{code}"
    assert unframe(encode_response(RequestHeader(12, 4, 11, None), entity)) == body


def test_known_error_codes_keep_kio_members() -> None:
    body = struct.pack(">ibih", 1, 0, 0, 3) + b"\x00"
    _, entity = decode_response(12, 4, body)
    assert entity.error_code is KioErrorCode.unknown_topic_or_partition


# ---------------------------------------------------------------------------
# responses


def test_response_header_v1_decodes_in_kafka_python() -> None:
    topic = replace(
        sample(MetadataResponseTopic), name="orders", error_code=KioErrorCode.none, partitions=()
    )
    response = replace(sample(MetadataResponse), topics=(topic,), brokers=())
    parts = encode_response(RequestHeader(3, 12, 99, "c"), response)
    body = unframe(parts)
    assert body[:5] == b"\x00\x00\x00\x63\x00"  # correlation id + empty header tags
    decoded = KpMetadataResponse[12].decode(body, header=True)
    assert decoded.header.correlation_id == 99
    assert [t.name for t in decoded.topics] == ["orders"]


def test_api_versions_response_uses_header_v0_at_every_version() -> None:
    for version in range(SUPPORTED[18][0], SUPPORTED[18][1] + 1):
        schema = load_response_schema(18, version)
        response = replace(sample(schema), error_code=KioErrorCode.none)
        body = unframe(encode_response(RequestHeader(18, version, 7, None), response))
        assert body[:6] == b"\x00\x00\x00\x07\x00\x00"  # correlation id, then error code
        decoded = ApiVersionsResponse[version].decode(body, header=True)
        assert decoded.header.correlation_id == 7
        assert [(a.api_key, a.min_version, a.max_version) for a in decoded.api_keys] == [(2, 2, 2)]


def test_large_records_are_passed_by_reference() -> None:
    payload = records(10, 10_000)
    response_type = load_response_schema(1, 12)
    response = sample(response_type)
    [topic] = response.responses
    [partition] = topic.partitions
    partition = replace(partition, records=payload)
    response = replace(response, responses=(replace(topic, partitions=(partition,)),))
    parts = encode_response(RequestHeader(1, 12, 1, None), response)
    assert any(part is payload for part in parts)
    _, decoded = decode_response(1, 12, unframe(parts))
    assert decoded == response


def test_encode_response_refuses_other_version() -> None:
    response = sample(load_response_schema(3, 11))
    with pytest.raises(EncodeError, match="api_version=12"):
        encode_response(RequestHeader(3, 12, 1, None), response)


def test_encode_response_reports_bad_values() -> None:
    response = replace(sample(HeartbeatResponse), error_code="oops")
    with pytest.raises(EncodeError, match="HeartbeatResponse"):
        encode_response(RequestHeader(12, 4, 1, None), response)


def test_decode_response_from_real_broker_encoding() -> None:
    kp = KpProduceResponse[9](
        responses=[
            KpProduceResponse[9].TopicProduceResponse(
                name="t",
                partition_responses=[
                    KpProduceResponse[9].TopicProduceResponse.PartitionProduceResponse(
                        index=4,
                        error_code=6,
                        base_offset=100,
                        log_append_time_ms=-1,
                        log_start_offset=0,
                        record_errors=[],
                        error_message=None,
                    )
                ],
            )
        ],
        throttle_time_ms=0,
    )
    kp.with_header(correlation_id=321)
    body = bytes(kp.encode(header=True))
    assert peek_correlation_id(body) == 321
    correlation_id, entity = decode_response(0, 9, body)
    assert correlation_id == 321
    [partition] = entity.responses[0].partition_responses
    assert (partition.index, partition.error_code, partition.base_offset) == (
        4,
        KioErrorCode.not_leader_or_follower,
        100,
    )


def test_peek_correlation_id_needs_four_bytes() -> None:
    with pytest.raises(DecodeError):
        peek_correlation_id(b"\x00\x01")


def test_api_versions_fallback_decodes_in_kafka_python() -> None:
    header = RequestHeader(18, 9, 1234, "future-client")
    wire = api_versions_fallback_response(header, SUPPORTED)
    [body] = FrameReader(1 << 20).feed(wire)
    decoded = ApiVersionsResponse[0].decode(body, header=True)
    assert decoded.header.correlation_id == 1234
    assert decoded.error_code == 35
    assert {a.api_key: (a.min_version, a.max_version) for a in decoded.api_keys} == SUPPORTED


def test_fallback_for_unparsable_api_versions_request() -> None:
    body = struct.pack(">hhih", 18, 9, 55, 3) + b"cli" + b"\x00" + b"\x00\x00"
    with pytest.raises(UnsupportedVersion) as info:
        decode_request(body)
    assert info.value.header is not None
    wire = api_versions_fallback_response(info.value.header, {18: (0, 4)})
    # length 16 | correlation 55 | error 35 | 1 entry | key 18, versions 0..4
    assert wire == struct.pack(">iihihhh", 16, 55, 35, 1, 18, 0, 4)


# ---------------------------------------------------------------------------
# versions


def test_supported_ranges_come_from_kio() -> None:
    assert set(CAPS) <= set(SUPPORTED)
    assert SUPPORTED[18] == (0, 4)
    for api_key, (low, high) in SUPPORTED.items():
        assert set(range(low, high + 1)) <= set(codec_versions(api_key))
        assert high == max(codec_versions(api_key))
        for version in (low, high):
            assert load_request_schema(api_key, version).__version__ == version
            assert load_response_schema(api_key, version).__version__ == version


def test_clamp() -> None:
    low, high = SUPPORTED[3]
    assert clamp(3, 0, 99) == (low, high)
    assert clamp(3, 1, 5) == (max(low, 1), 5)
    assert clamp(3, high + 1, high + 5) is None
    assert clamp(4242, 0, 10) is None


def test_api_names() -> None:
    assert API_NAMES[18] == "ApiVersions"
    assert API_NAMES[23] == "OffsetForLeaderEpoch"
    assert API_NAMES[60] == "DescribeCluster"


# ---------------------------------------------------------------------------
# error codes and error responses


def test_error_codes_match_kio() -> None:
    for code in ErrorCode:
        assert KioErrorCode[code.name.lower()].value == code.value
    assert ErrorCode.UNSUPPORTED_VERSION == 35
    assert ErrorCode.UNKNOWN_TOPIC_ID == 100
    assert to_kio(ErrorCode.NOT_COORDINATOR) is KioErrorCode.not_coordinator


#: Responses without any error field at these versions: DescribeLogDirs before v3 (Kafka
#: answers a denial with no log dir, and so does error_response).
NO_ERROR_FIELD = {(35, 1), (35, 2)}


@pytest.mark.parametrize(("api_key", "version"), all_versions())
def test_error_response_for_every_supported_version(api_key: int, version: int) -> None:
    request_entity = sample(load_request_schema(api_key, version))
    body = unframe(encode_request(request_entity, 17, "cli"))
    request = decode_request(body)
    assert request.entity == request_entity

    response = error_response(request, ErrorCode.CLUSTER_AUTHORIZATION_FAILED)
    correlation_id, decoded = decode_response(
        api_key, version, unframe(encode_response(request.header, response))
    )
    assert correlation_id == 17
    assert decoded == response
    codes = error_codes(decoded)
    if (api_key, version) in NO_ERROR_FIELD:
        assert not codes and decoded.results == ()
        return
    assert codes, f"{API_NAMES[api_key]} v{version}: no error code in the response"
    assert set(codes) == {31}


def decoded_error_response(api_key: int, version: int, **changes: Any) -> Any:
    request_entity = replace(sample(load_request_schema(api_key, version)), **changes)
    request = decode_request(unframe(encode_request(request_entity, 1, None)))
    return error_response(request, ErrorCode.NOT_LEADER_OR_FOLLOWER)


def test_produce_error_response_mirrors_every_partition() -> None:
    request = decode_request(kp_produce_v9(partitions=3, value_size=1))
    response = error_response(request, ErrorCode.NOT_LEADER_OR_FOLLOWER)
    [topic] = response.responses
    assert topic.name == "orders"
    assert [(p.index, p.error_code, p.base_offset) for p in topic.partition_responses] == [
        (i, KioErrorCode.not_leader_or_follower, -1) for i in range(3)
    ]


def test_fetch_error_response_per_partition_before_v13_top_level_after() -> None:
    old = decoded_error_response(1, 12)
    assert old.error_code == KioErrorCode.not_leader_or_follower
    [topic] = old.responses
    assert topic.topic == "s"
    [partition] = topic.partitions
    assert (partition.partition_index, partition.high_watermark) == (3, -1)
    new = decoded_error_response(1, 13)
    assert new.error_code == KioErrorCode.not_leader_or_follower
    assert new.responses == ()


def test_find_coordinator_v4_error_per_key() -> None:
    response = decoded_error_response(10, 4, coordinator_keys=("g1", "g2"))
    assert [(c.key, c.node_id, c.error_code) for c in response.coordinators] == [
        ("g1", -1, KioErrorCode.not_leader_or_follower),
        ("g2", -1, KioErrorCode.not_leader_or_follower),
    ]


def test_offset_fetch_v8_error_per_group_and_partition() -> None:
    response = decoded_error_response(9, 8)
    [group] = response.groups
    assert group.group_id == "s"
    assert group.error_code == KioErrorCode.not_leader_or_follower
    [topic] = group.topics
    [partition] = topic.partitions
    assert (partition.partition_index, partition.committed_offset) == (3, -1)


def test_delete_topics_error_per_name_old_and_new() -> None:
    assert [(r.name, r.error_code) for r in decoded_error_response(20, 5).responses] == [
        ("s", KioErrorCode.not_leader_or_follower)
    ]
    [result] = decoded_error_response(20, 6).responses
    assert (result.name, result.topic_id) == ("s", uuid.UUID(int=7))


def test_metadata_error_response_for_all_topics_request() -> None:
    response = decoded_error_response(3, 12, topics=None)
    assert response.topics == ()
    assert response.brokers == ()


# ---------------------------------------------------------------------------
# hostile array counts: kio's native reader would abort the process on these


@pytest.mark.parametrize(
    "body",
    [
        # Metadata v12 (flexible): topics compact count 2**32 (varint), nothing after
        struct.pack(">hhih", 3, 12, 1, -1) + b"\x00" + b"\x80\x80\x80\x80\x10",
        # the 40-byte garbage request that first crashed kio in the fuzz test
        struct.pack(">hhih", 3, 12, 1, -1)
        + b"\x00"
        + bytes.fromhex(
            "8de3da970d560394e3f2c264d806aca54e019c2bf0fe282bd4b49280c790183afb5f69fb322603"
        ),
        # Metadata v4 (legacy): topics int32 count 2**31 - 1
        struct.pack(">hhih", 3, 4, 1, -1) + struct.pack(">i", 2**31 - 1) + b"\x00\x01a\x01",
        # DescribeGroups v0: legacy array of strings with count 2**31 - 1
        struct.pack(">hhih", 15, 0, 1, -1) + struct.pack(">i", 2**31 - 1) + b"\x00\x01g",
    ],
)
def test_huge_array_counts_are_decode_errors(body: bytes) -> None:
    with pytest.raises(DecodeError, match=r"cannot fit|truncated"):
        decode_request(body)


def test_huge_array_count_in_a_response() -> None:
    # ListGroups v0 response: error_code, groups int32 count 2**31 - 1
    body = struct.pack(">ihi", 1, 0, 2**31 - 1) + b"\x00"
    with pytest.raises(DecodeError, match="cannot fit"):
        decode_response(16, 0, body)


def test_mutated_frames_raise_only_codec_errors() -> None:
    rng = random.Random(7)
    bodies = []
    for api_key, version in all_versions():
        request = sample(load_request_schema(api_key, version))
        bodies.append(unframe(encode_request(request, 1, "c")))
    for _ in range(5000):
        mutated = bytearray(rng.choice(bodies))
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        with contextlib.suppress(DecodeError, UnsupportedVersion):
            decode_request(bytes(mutated))
