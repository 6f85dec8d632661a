"""Conformance: the federation answers what one Kafka cluster answers (issue 10).

Each test sends the same thing to a proxy of the session federation and, where it makes
sense, straight to one physical cluster, and compares the answers: raw requests encoded
with the codec (a Metadata v12 with trailing bytes, CreateTopics v7), confluent-kafka's
``list_topics()`` and Kafka's own Java AdminClient (``kafka-topics.sh --create``).
"""

from __future__ import annotations

import datetime
import importlib
import socket
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from federation.model import FederationMap
from federation.protocol import decode_response, encode_request

from .fedtopics import backend_of, create_logical_topic

pytestmark = pytest.mark.integration

INVALID_TOPIC_EXCEPTION = 17
UNKNOWN_TOPIC_OR_PARTITION = 3
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38
INVALID_REPLICA_ASSIGNMENT = 39
INVALID_CONFIG = 40
INVALID_REQUEST = 42
DEFAULT_CONFIG = 5
DYNAMIC_TOPIC_CONFIG = 1


# -- raw Kafka requests --------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def send_raw(address: str, entity: Any, extra: bytes = b"", timeout: float = 30.0) -> Any:
    """Send one kio request entity (with ``extra`` bytes appended to its frame) and decode
    the answer as Kafka's response to it."""
    host, _, port = address.rpartition(":")
    body = b"".join(encode_request(entity, 7, "fk-conformance"))[4:] + extra
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        frame = _recv_exact(sock, size)
    correlation_id, response = decode_response(int(entity.__api_key__),
                                               int(entity.__version__), frame)
    assert correlation_id == 7
    return response


def metadata_v12(names: list[str] | None) -> Any:
    from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic

    topics = None if names is None else tuple(MetadataRequestTopic(topic_id=None, name=n)
                                              for n in names)
    return MetadataRequest(topics=topics, allow_auto_topic_creation=False,
                           include_topic_authorized_operations=False)


Assignment = list[tuple[int, list[int]]]


def create_topics_request(topics: list[tuple[str, int, int, Assignment, dict[str, str | None]]],
                          validate_only: bool = False, version: int = 7) -> Any:
    m = importlib.import_module(f"kio.schema.create_topics.v{version}.request")
    return m.CreateTopicsRequest(
        topics=tuple(m.CreatableTopic(
            name=name, num_partitions=partitions, replication_factor=rf,
            assignments=tuple(m.CreatableReplicaAssignment(partition_index=i,
                                                           broker_ids=tuple(brokers))
                              for i, brokers in assignment),
            configs=tuple(m.CreatableTopicConfig(name=k, value=v) for k, v in configs.items()))
            for name, partitions, rf, assignment, configs in topics),
        timeout=datetime.timedelta(seconds=20), validate_only=validate_only)


def create_one(address: str, name: str, partitions: int = 1, rf: int = -1,
               assignment: Assignment | None = None, configs: dict[str, str | None] | None = None,
               validate_only: bool = False, version: int = 7) -> Any:
    request = create_topics_request([(name, partitions, rf, assignment or [], configs or {})],
                                    validate_only, version)
    [result] = send_raw(address, request).topics
    return result


def physical_partitions(bootstrap: str, names: list[str]) -> dict[str, int]:
    """Partition counts of the named topics on a physical cluster (absent: not listed)."""
    response = send_raw(bootstrap.split(",")[0], metadata_v12(names))
    return {t.name: len(t.partitions) for t in response.topics if int(t.error_code) == 0}


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def stored_map(state: dict[str, Any]) -> FederationMap:
    backend = backend_of(state)
    try:
        fmap = backend.load()
        assert fmap is not None
        return fmap
    finally:
        backend.close()


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def proxy(local_federation: dict[str, Any]) -> str:
    first = local_federation["proxies"][0]
    return f"{first['host']}:{first['port']}"


@pytest.fixture(scope="module")
def c1(clusters: list[dict[str, Any]]) -> str:
    return str(clusters[0]["bootstrap"]).split(",")[0]


@pytest.fixture(scope="module")
def c1_broker(clusters: list[dict[str, Any]]) -> int:
    return int(clusters[0]["brokers"][0]["node_id"])


@pytest.fixture(scope="module")
def proxy_ids(local_federation: dict[str, Any]) -> list[int]:
    return [int(p["node_id"]) for p in local_federation["proxies"]]


# -- 1. requests with trailing bytes ------------------------------------------------------

# librdkafka 2.x's "all topics" Metadata v9+ request carries 3 bytes after its body.
TRAILING = b"\x01\x00\x00"


def test_metadata_v12_with_trailing_bytes_is_answered(local_federation: dict[str, Any],
                                                      proxy: str, c1: str) -> None:
    name = _name("trail")
    create_logical_topic(local_federation, name, 3)
    # Kafka itself ignores the extra bytes...
    direct = send_raw(c1, metadata_v12(None), TRAILING)
    assert direct.brokers and direct.cluster_id
    # ...and so does the proxy: a full MetadataResponse, not a closed connection.
    answer = send_raw(proxy, metadata_v12(None), TRAILING)
    assert {b.node_id for b in answer.brokers} == {
        p["node_id"] for p in local_federation["proxies"]}
    topics = {t.name: t for t in answer.topics}
    assert int(topics[name].error_code) == 0 and len(topics[name].partitions) == 3
    # Named topics, with trailing bytes too.
    named = send_raw(proxy, metadata_v12([name, "no-such-topic"]), b"\x00" * 5)
    codes = {t.name: (int(t.error_code), len(t.partitions)) for t in named.topics}
    assert codes == {name: (0, 3), "no-such-topic": (UNKNOWN_TOPIC_OR_PARTITION, 0)}


def test_array_longer_than_its_frame_still_closes_the_connection(proxy: str) -> None:
    # Metadata v12 announcing 2**31 topics in a 20-byte frame: refused, proxy unharmed.
    body = (struct.pack(">hhih", 3, 12, 9, 1) + b"c" + b"\x00"
            + b"\x80\x80\x80\x80\x08" + b"\x00" * 8)
    host, _, port = proxy.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        assert sock.recv(1) == b"", "the proxy closes a connection it cannot decode"
    assert send_raw(proxy, metadata_v12(None)).brokers  # and still serves the next one


def test_confluent_kafka_lists_all_topics_through_the_proxy(local_federation: dict[str, Any],
                                                            proxy: str) -> None:
    admin_mod = pytest.importorskip("confluent_kafka.admin")
    name = _name("rdk")
    create_logical_topic(local_federation, name, 4)
    client = admin_mod.AdminClient({"bootstrap.servers": proxy, "client.id": "fk-conformance"})
    # list_topics() without a topic: librdkafka's "all topics" request (trailing bytes).
    metadata = client.list_topics(timeout=30)
    assert name in metadata.topics
    assert len(metadata.topics[name].partitions) == 4
    assert set(metadata.brokers) <= {p["node_id"] for p in local_federation["proxies"]}
