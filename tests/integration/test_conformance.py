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
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from federation.protocol import decode_response, encode_request
from federation.tooling.kafka_dist import KafkaDist, java_executable

from .fedtopics import create_logical_topic, stored_map

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


def wait_served(proxy: str, name: str) -> None:
    """Until ``proxy`` serves logical topic ``name`` (it follows the map asynchronously)."""
    def served() -> bool:
        [t] = send_raw(proxy, metadata_v12([name])).topics
        return int(t.error_code) == 0
    wait_for(served, f"{proxy} to serve {name}")


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
    wait_served(proxy, name)
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
    wait_served(proxy, name)
    client = admin_mod.AdminClient({"bootstrap.servers": proxy, "client.id": "fk-conformance"})
    # list_topics() without a topic: librdkafka's "all topics" request (trailing bytes).
    metadata = client.list_topics(timeout=30)
    assert name in metadata.topics
    assert len(metadata.topics[name].partitions) == 4
    assert set(metadata.brokers) <= {p["node_id"] for p in local_federation["proxies"]}


def test_librdkafka_regex_subscription_reads_every_matching_topic(
        local_federation: dict[str, Any]) -> None:
    """A regex subscription needs librdkafka's full metadata request (with its trailing
    bytes) to succeed: the consumer finds both matching topics and reads both."""
    kafka = pytest.importorskip("confluent_kafka")
    prefix = _name("rx")
    names = [f"{prefix}-a", f"{prefix}-b"]
    for name in names:
        create_logical_topic(local_federation, name, 2)
    bootstrap = local_federation["bootstrap"]
    producer = kafka.Producer({"bootstrap.servers": bootstrap, "client.id": "fk-rx"})
    for name in names:
        for i in range(10):
            producer.produce(name, value=f"{name}:{i}".encode())
    assert producer.flush(60) == 0
    consumer = kafka.Consumer({"bootstrap.servers": bootstrap, "client.id": "fk-rx",
                               "group.id": f"g-{prefix}", "auto.offset.reset": "earliest",
                               "topic.metadata.refresh.interval.ms": 1000})
    consumer.subscribe([f"^{prefix}-.*"])
    got: set[str] = set()
    deadline = time.monotonic() + 120
    try:
        while len(got) < 20 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.add(msg.value().decode())
    finally:
        consumer.close()
    assert got == {f"{name}:{i}" for name in names for i in range(10)}


# -- 2. CreateTopics answered as Kafka answers it ---------------------------------------


def _row(result: Any) -> tuple[Any, ...]:
    configs = None if result.configs is None else len(result.configs)
    return (int(result.error_code), result.error_message, int(result.num_partitions),
            int(result.replication_factor), configs)


def _configs(result: Any) -> set[tuple[Any, ...]]:
    return {(c.name, c.value, c.read_only, int(c.config_source), c.is_sensitive)
            for c in result.configs if c.name != "fedkafka.strategy"}


def _config_values(result: Any) -> dict[str, str | None]:
    return {c.name: c.value for c in result.configs if c.name != "fedkafka.strategy"}


def federation_partitions(state: dict[str, Any], clusters: list[dict[str, Any]], name: str
                          ) -> tuple[int, int]:
    """(partitions of ``name``'s physical data topics summed over every cluster, partitions
    of its shadow topic on the coordination cluster)."""
    fmap = stored_map(state)
    physical = fmap.physical_topic_name(name)
    data = sum(physical_partitions(c["bootstrap"], [physical]).get(physical, 0)
               for c in clusters)
    coordination = next(c for c in clusters if c["name"] == fmap.coordination_cluster)
    shadow = physical_partitions(coordination["bootstrap"], [name]).get(name, 0)
    return data, shadow


def assert_nothing_created(state: dict[str, Any], clusters: list[dict[str, Any]],
                           name: str) -> None:
    assert name not in stored_map(state).topics
    assert federation_partitions(state, clusters, name) == (0, 0)


def _assign(n: int, broker: int) -> Assignment:
    return [(i, [broker]) for i in range(n)]


# name, partitions, rf, assignment (of n partitions to the first broker), configs, validate
CASES: dict[str, tuple[int, int, int, dict[str, str | None], bool]] = {
    "configs set": (3, -1, 0, {"retention.ms": "1000", "cleanup.policy": "compact"}, False),
    "explicit replication factor": (2, 1, 0, {}, False),
    "broker default partitions and replication": (-1, -1, 0, {}, False),
    "replica assignment of 22 partitions": (-1, -1, 22, {}, False),
    "invalid config value": (3, -1, 0, {"retention.ms": "abc"}, False),
    "unknown config": (3, -1, 0, {"no.such.config": "1"}, False),
    "null config value": (1, -1, 0, {"retention.ms": None}, False),
    "replication factor beyond the brokers": (3, 3, 0, {}, False),
    "replication factor 0": (1, 0, 0, {}, False),
    "0 partitions": (0, -1, 0, {}, False),
    "assignment with a partition count": (22, -1, 22, {}, False),
    "assignment with a replication factor": (-1, 1, 2, {}, False),
    "validate only, bad config": (2, -1, 0, {"retention.ms": "abc"}, True),
    "validate only, replication factor beyond the brokers": (2, 3, 0, {}, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_create_topics_v7_answers_like_kafka(case: str, local_federation: dict[str, Any],
                                             clusters: list[dict[str, Any]], proxy: str,
                                             c1: str, c1_broker: int,
                                             proxy_ids: list[int]) -> None:
    partitions, rf, assigned, configs, validate_only = CASES[case]
    direct_name, fed_name = _name("direct"), _name("fed")
    direct = create_one(c1, direct_name, partitions, rf, _assign(assigned, c1_broker), configs,
                        validate_only)
    fed = create_one(proxy, fed_name, partitions, rf, _assign(assigned, proxy_ids[0]), configs,
                     validate_only)
    assert _row(fed) == _row(direct)
    if int(direct.error_code) or validate_only:
        assert fed.configs == ()  # empty, never null
        assert_nothing_created(local_federation, clusters, fed_name)
        return
    assert fed.topic_id is not None
    # Every config of the topic with its value, as Kafka. (Sources come from the physical
    # topic's DescribeConfigs, which Kafka itself answers differently from CreateTopics for
    # a few broker-derived defaults, e.g. retention.ms from log.retention.hours.)
    assert _config_values(fed) == _config_values(direct)
    for name in configs:
        assert (name, configs[name], False, DYNAMIC_TOPIC_CONFIG, False) in _configs(fed)
    expected = int(fed.num_partitions)
    assert expected == (assigned or (1 if partitions == -1 else partitions))
    assert stored_map(local_federation).topics[fed_name].partition_count == expected
    assert federation_partitions(local_federation, clusters, fed_name) == (expected, expected)
    if rf > 0:  # the physical topics have the replication factor asked for
        fmap = stored_map(local_federation)
        physical = fmap.physical_topic_name(fed_name)
        for c in clusters:
            for t in send_raw(c["bootstrap"].split(",")[0], metadata_v12([physical])).topics:
                if int(t.error_code) == 0:
                    assert {len(p.replica_nodes) for p in t.partitions} == {rf}


def test_validate_only_creates_nothing(local_federation: dict[str, Any],
                                       clusters: list[dict[str, Any]], proxy: str) -> None:
    name = _name("val")
    answer = create_one(proxy, name, 4, -1, configs={"retention.ms": "1000"},
                        validate_only=True)
    assert (int(answer.error_code), int(answer.num_partitions)) == (0, 4)
    assert ("retention.ms", "1000", False, DYNAMIC_TOPIC_CONFIG, False) in _configs(answer)
    assert_nothing_created(local_federation, clusters, name)
    created = create_one(proxy, name, 4, -1, configs={"retention.ms": "1000"})
    assert int(created.error_code) == 0  # the name was not taken by the validation
    assert federation_partitions(local_federation, clusters, name) == (4, 4)


def test_existing_duplicate_and_invalid_names(proxy: str, c1: str) -> None:
    existing_direct, existing_fed = _name("dup"), _name("dup")
    for address, name in ((c1, existing_direct), (proxy, existing_fed)):
        assert int(create_one(address, name).error_code) == 0
    again = [create_one(c1, existing_direct), create_one(proxy, existing_fed)]
    assert [int(r.error_code) for r in again] == [TOPIC_ALREADY_EXISTS] * 2
    assert [r.error_message for r in again] == [f"Topic '{existing_direct}' already exists.",
                                               f"Topic '{existing_fed}' already exists."]
    twice = _name("twice")
    request = create_topics_request([(twice, 1, -1, [], {}), (twice, 1, -1, [], {})])
    assert ([_row(r) for r in send_raw(proxy, request).topics]
            == [_row(r) for r in send_raw(c1, request).topics]
            == [(INVALID_REQUEST, "Duplicate topic name.", -1, -1, 0)])  # one answer
    bad = ["bad name!", "a" * 250, ".", "..", ""]
    request = create_topics_request([(n, 1, -1, [], {}) for n in bad])
    fed = send_raw(proxy, request).topics
    assert [_row(r) for r in fed] == [_row(r) for r in send_raw(c1, request).topics]
    assert {int(r.error_code) for r in fed} == {INVALID_TOPIC_EXCEPTION}


def test_create_topics_v4_answers_without_configs(local_federation: dict[str, Any],
                                                  clusters: list[dict[str, Any]],
                                                  proxy: str) -> None:
    name = _name("v4")
    answer = create_one(proxy, name, 2, -1, version=4)
    assert int(answer.error_code) == 0 and not hasattr(answer, "configs")
    assert federation_partitions(local_federation, clusters, name) == (2, 2)


def test_metadata_of_invalid_names_is_invalid_topic(proxy: str, c1: str) -> None:
    names = ["bad name!", "a" * 250, ".", "..", _name("unknown")]
    direct = send_raw(c1, metadata_v12(names)).topics
    fed = send_raw(proxy, metadata_v12(names)).topics
    assert ({t.name: int(t.error_code) for t in fed}
            == {t.name: int(t.error_code) for t in direct}
            == {**dict.fromkeys(names[:4], INVALID_TOPIC_EXCEPTION),
                names[4]: UNKNOWN_TOPIC_OR_PARTITION})


# -- Kafka's Java AdminClient: kafka-topics.sh --create -------------------------------

_QUIET_LOG4J2 = """status = error
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
"""
_QUIET_LOG4J = """log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=%p %m%n
"""

Tool = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def kafka_topics(kafka_dist: KafkaDist, tmp_path_factory: pytest.TempPathFactory) -> Tool:
    """Runs Kafka's TopicCommand (kafka-topics.sh: the Java AdminClient) quietly."""
    folder: Path = tmp_path_factory.mktemp("java-tools")
    if kafka_dist.major >= 4:
        (folder / "log4j2.properties").write_text(_QUIET_LOG4J2)
        logging = f"-Dlog4j2.configurationFile={folder / 'log4j2.properties'}"
        main = "org.apache.kafka.tools.TopicCommand"
    else:
        (folder / "log4j.properties").write_text(_QUIET_LOG4J)
        logging = f"-Dlog4j.configuration=file:{folder / 'log4j.properties'}"
        main = "kafka.admin.TopicCommand"

    def run(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [java_executable(), "-Xmx256m", "-XX:+UseSerialGC",
                   "-XX:TieredStopAtLevel=1", logging, "-cp", kafka_dist.classpath, main,
                   "--bootstrap-server", bootstrap, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=180)

    return run


def _same_output(direct: subprocess.CompletedProcess[str], direct_name: str,
                 fed: subprocess.CompletedProcess[str], fed_name: str) -> None:
    assert "NullPointerException" not in fed.stderr + fed.stdout, fed
    assert fed.returncode == direct.returncode, (direct, fed)
    assert fed.stdout.replace(fed_name, "NAME") == direct.stdout.replace(direct_name, "NAME")


def test_kafka_topics_create_through_the_federation(local_federation: dict[str, Any],
                                                    clusters: list[dict[str, Any]],
                                                    proxy: str, c1: str,
                                                    kafka_topics: Tool) -> None:
    direct_name, fed_name = _name("jdirect"), _name("jfed")
    args = ["--partitions", "5", "--replication-factor", "1", "--config", "retention.ms=60000"]
    direct = kafka_topics(c1, "--create", "--topic", direct_name, *args)
    fed = kafka_topics(proxy, "--create", "--topic", fed_name, *args)
    _same_output(direct, direct_name, fed, fed_name)
    assert fed.returncode == 0 and fed.stdout.strip() == f"Created topic {fed_name}."
    assert federation_partitions(local_federation, clusters, fed_name) == (5, 5)
    assert stored_map(local_federation).topics[fed_name].config == {"retention.ms": "60000"}
    # No partition count or replication factor: the brokers' defaults (-1, -1).
    direct_name, fed_name = _name("jdirect"), _name("jfed")
    direct = kafka_topics(c1, "--create", "--topic", direct_name)
    fed = kafka_topics(proxy, "--create", "--topic", fed_name)
    _same_output(direct, direct_name, fed, fed_name)
    assert fed.returncode == 0
    assert federation_partitions(local_federation, clusters, fed_name) == (
        physical_partitions(c1, [direct_name])[direct_name],) * 2


def test_kafka_topics_replica_assignment(local_federation: dict[str, Any],
                                         clusters: list[dict[str, Any]], proxy: str, c1: str,
                                         c1_broker: int, proxy_ids: list[int],
                                         kafka_topics: Tool) -> None:
    n = 22
    direct_name, fed_name = _name("jdirect"), _name("jfed")
    direct = kafka_topics(c1, "--create", "--topic", direct_name,
                          "--replica-assignment", ",".join([str(c1_broker)] * n))
    fed = kafka_topics(proxy, "--create", "--topic", fed_name,
                       "--replica-assignment", ",".join([str(proxy_ids[0])] * n))
    _same_output(direct, direct_name, fed, fed_name)
    assert fed.returncode == 0
    assert wait_for(lambda: physical_partitions(c1, [direct_name]),
                    "the direct topic") == {direct_name: n}
    assert stored_map(local_federation).topics[fed_name].partition_count == n
    assert federation_partitions(local_federation, clusters, fed_name) == (n, n)


# Refusals by the brokers (kafka-topics checks config names and value types itself).
@pytest.mark.parametrize(("args", "exception"), [
    (["--partitions", "3", "--config", "remote.storage.enable=true"],
     "InvalidConfigurationException"),  # INVALID_CONFIG: tiered storage is off
    (["--partitions", "3", "--replication-factor", "3"],
     "InvalidReplicationFactorException"),  # 1 broker per cluster
], ids=["invalid-config", "replication-factor"])
def test_kafka_topics_refusals_match_kafka(args: list[str], exception: str,
                                           local_federation: dict[str, Any],
                                           clusters: list[dict[str, Any]], proxy: str,
                                           c1: str, kafka_topics: Tool) -> None:
    direct_name, fed_name = _name("jdirect"), _name("jfed")
    direct = kafka_topics(c1, "--create", "--topic", direct_name, *args)
    fed = kafka_topics(proxy, "--create", "--topic", fed_name, *args)
    assert direct.returncode != 0 and "Error while executing topic command" in direct.stdout
    assert exception in direct.stderr and exception in fed.stderr  # the same Kafka error
    _same_output(direct, direct_name, fed, fed_name)
    assert_nothing_created(local_federation, clusters, fed_name)
