"""Admin APIs on logical entities (issue 10), each run through the federation and, for
comparison in the same test, straight against one physical cluster with Kafka's own tools:
kafka-configs.sh (topic and broker configs), kafka-delete-records.sh (logical offsets over
segments), kafka-consumer-groups.sh (list, describe, members' client ids, reset offsets,
delete), automatic topic creation on and off, read-your-writes of topic changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from federation.clusters import admin
from federation.core.model import AutoCreatePolicy, Segment
from federation.tooling.kafka_dist import KafkaDist

from .fedtopics import backend_of, create_logical_topic
from .java_tools import Tool, java_tool
from .test_conformance import (
    create_one,
    federation_partitions,
    metadata_v12,
    send_raw,
    stored_map,
    wait_for,
    wait_served,
)

pytestmark = pytest.mark.integration

DYNAMIC_TOPIC_CONFIG = 1
INVALID_REQUEST = 42
LEADER_NOT_AVAILABLE = 5
UNKNOWN_TOPIC_OR_PARTITION = 3
OFFSET_OUT_OF_RANGE = 1


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
def tools(kafka_dist: KafkaDist, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tool]:
    folder: Path = tmp_path_factory.mktemp("admin-tools")
    return {name: java_tool(kafka_dist, folder, name)
            for name in ("configs", "consumer-groups", "delete-records", "topics")}


def same_output(direct: Any, direct_name: str, fed: Any, fed_name: str) -> None:
    assert fed.returncode == direct.returncode, (direct, fed)
    assert fed.stdout.replace(fed_name, "NAME") == direct.stdout.replace(direct_name, "NAME"), (
        direct.stdout, fed.stdout)


# -- configs ---------------------------------------------------------------------------------


def describe_configs_v4(topic: str, resource_type: int = 2) -> Any:
    from kio.schema.describe_configs.v4.request import (
        DescribeConfigsRequest,
        DescribeConfigsResource,
    )
    from kio.static.primitive import i8

    return DescribeConfigsRequest(resources=(DescribeConfigsResource(
        resource_type=i8(resource_type), resource_name=topic, configuration_keys=None),),
        include_synonyms=False, include_documentation=False)


def dynamic_configs(address: str, topic: str) -> dict[str, str | None]:
    """A topic's dynamic (per-topic) configs as its cluster describes them."""
    [result] = send_raw(address, describe_configs_v4(topic)).results
    assert int(result.error_code) == 0, result
    return {c.name: c.value for c in result.configs
            if int(c.config_source) == DYNAMIC_TOPIC_CONFIG}


def physical_holders(state: dict[str, Any], clusters: list[dict[str, Any]], name: str
                     ) -> list[str]:
    """Bootstrap of every cluster holding a segment of logical topic ``name``."""
    fmap = stored_map(state)
    used = {s.cluster for p in fmap.topics[name].partitions for s in p.segments}
    return [c["bootstrap"].split(",")[0] for c in clusters if c["name"] in used]


def test_kafka_configs_alters_and_describes_a_topic(local_federation: dict[str, Any],
                                                    clusters: list[dict[str, Any]],
                                                    proxy: str, c1: str,
                                                    tools: dict[str, Tool]) -> None:
    direct_name, fed_name = _name("cfgd"), _name("cfgf")
    assert int(create_one(c1, direct_name, 4).error_code) == 0
    assert int(create_one(proxy, fed_name, 4).error_code) == 0
    physical = stored_map(local_federation).physical_topic_name(fed_name)
    holders = physical_holders(local_federation, clusters, fed_name)
    assert len(holders) == 2  # 4 partitions, contiguous over both clusters

    def both(*args: str) -> tuple[Any, Any]:
        common = ("--entity-type", "topics", "--entity-name")
        return (tools["configs"](c1, *common, direct_name, *args),
                tools["configs"](proxy, *common, fed_name, *args))

    direct, fed = both("--alter", "--add-config",
                       "retention.ms=123456,cleanup.policy=[compact,delete]")
    same_output(direct, direct_name, fed, fed_name)
    assert fed.returncode == 0, fed
    expected = {"retention.ms": "123456", "cleanup.policy": "compact,delete"}
    # Every physical data topic has it, and so does the map (for segments created later).
    for address in holders:
        assert dynamic_configs(address, physical) == expected
    assert dict(stored_map(local_federation).topics[fed_name].config) == expected
    direct, fed = both("--describe")
    same_output(direct, direct_name, fed, fed_name)
    assert "retention.ms=123456" in fed.stdout

    direct, fed = both("--alter", "--delete-config", "retention.ms")
    same_output(direct, direct_name, fed, fed_name)
    for address in holders:
        assert dynamic_configs(address, physical) == {"cleanup.policy": "compact,delete"}
    assert dict(stored_map(local_federation).topics[fed_name].config) == {
        "cleanup.policy": "compact,delete"}
    direct, fed = both("--describe")
    same_output(direct, direct_name, fed, fed_name)

    # A value the brokers refuse: the same Kafka error, and nothing changes anywhere.
    direct, fed = both("--alter", "--add-config", "retention.ms=abc")
    assert direct.returncode != 0 and fed.returncode == direct.returncode
    assert "InvalidConfigurationException" in direct.stderr + direct.stdout
    assert "InvalidConfigurationException" in fed.stderr + fed.stdout
    for address in holders:
        assert dynamic_configs(address, physical) == {"cleanup.policy": "compact,delete"}

    # --describe --all: every config Kafka lists, plus the read-only strategy.
    direct, fed = both("--describe", "--all")
    assert fed.returncode == direct.returncode == 0

    def names(out: str) -> set[str]:
        return {line.strip().split("=", 1)[0] for line in out.splitlines()
                if line.startswith("  ")}
    assert names(fed.stdout) == names(direct.stdout) | {"fedkafka.strategy"}


def test_describe_configs_of_an_unknown_topic_matches_kafka(proxy: str, c1: str,
                                                            tools: dict[str, Tool]) -> None:
    for name in (_name("nosuch"), "bad name!", "a" * 250):
        direct = send_raw(c1, describe_configs_v4(name)).results[0]
        fed = send_raw(proxy, describe_configs_v4(name)).results[0]
        assert (int(fed.error_code), fed.error_message) == (int(direct.error_code),
                                                            direct.error_message), name
    name = _name("nosuch")
    direct = tools["configs"](c1, "--entity-type", "topics", "--entity-name", name, "--describe")
    fed = tools["configs"](proxy, "--entity-type", "topics", "--entity-name", name, "--describe")
    same_output(direct, name, fed, name)


def alter_configs_v2(topic: str, configs: dict[str, str]) -> Any:
    from kio.schema.alter_configs.v2.request import (
        AlterableConfig,
        AlterConfigsRequest,
        AlterConfigsResource,
    )
    from kio.static.primitive import i8

    return AlterConfigsRequest(resources=(AlterConfigsResource(
        resource_type=i8(2), resource_name=topic,
        configs=tuple(AlterableConfig(name=k, value=v) for k, v in configs.items())),),
        validate_only=False)


def test_legacy_alter_configs_replaces_the_dynamic_set(local_federation: dict[str, Any],
                                                       clusters: list[dict[str, Any]],
                                                       proxy: str, c1: str) -> None:
    direct_name, fed_name = _name("altd"), _name("altf")
    for address, name in ((c1, direct_name), (proxy, fed_name)):
        assert int(create_one(address, name, 2, configs={"cleanup.policy": "compact"}
                              ).error_code) == 0
    physical = stored_map(local_federation).physical_topic_name(fed_name)
    direct = send_raw(c1, alter_configs_v2(direct_name, {"retention.ms": "7777"})).responses[0]
    fed = send_raw(proxy, alter_configs_v2(fed_name, {"retention.ms": "7777"})).responses[0]
    assert (int(fed.error_code), fed.error_message) == (int(direct.error_code),
                                                        direct.error_message) == (0, None)
    assert dynamic_configs(c1, direct_name) == {"retention.ms": "7777"}
    for address in physical_holders(local_federation, clusters, fed_name):
        assert dynamic_configs(address, physical) == {"retention.ms": "7777"}
    assert dict(stored_map(local_federation).topics[fed_name].config) == {"retention.ms": "7777"}
    # The strategy is read-only: changing it is refused, nothing changes.
    refused = send_raw(proxy, alter_configs_v2(fed_name, {"fedkafka.strategy": "round_robin",
                                                          "retention.ms": "1"})).responses[0]
    assert int(refused.error_code) == 40  # INVALID_CONFIG
    for address in physical_holders(local_federation, clusters, fed_name):
        assert dynamic_configs(address, physical) == {"retention.ms": "7777"}


def test_kafka_configs_brokers(local_federation: dict[str, Any], proxy: str, c1: str,
                               clusters: list[dict[str, Any]], tools: dict[str, Tool]) -> None:
    proxy_id = str(local_federation["proxies"][0]["node_id"])
    broker_id = str(clusters[0]["brokers"][0]["node_id"])
    direct = tools["configs"](c1, "--entity-type", "brokers", "--entity-name", broker_id,
                              "--describe", "--all")
    fed = tools["configs"](proxy, "--entity-type", "brokers", "--entity-name", proxy_id,
                           "--describe", "--all")
    assert direct.returncode == fed.returncode == 0, fed

    def values(out: str) -> dict[str, str]:
        found = {}
        for line in out.splitlines():
            if line.startswith("  "):
                key, _, rest = line.strip().partition("=")
                found[key] = rest.split(" sensitive=")[0]
        return found
    direct_values, fed_values = values(direct.stdout), values(fed.stdout)
    assert set(fed_values) == set(direct_values)
    # The federation's own values where the proxies are the brokers.
    assert fed_values["node.id"] == proxy_id
    assert fed_values["auto.create.topics.enable"] == "true"
    assert fed_values["advertised.listeners"] == f"PLAINTEXT://{proxy}"
    assert fed_values["num.io.threads"] == direct_values["num.io.threads"]
    # Cluster-wide defaults: described as Kafka does.
    direct = tools["configs"](c1, "--entity-type", "brokers", "--entity-default", "--describe")
    fed = tools["configs"](proxy, "--entity-type", "brokers", "--entity-default", "--describe")
    assert (fed.returncode, fed.stdout) == (direct.returncode, direct.stdout)
    # Altering a broker through the federation is refused, clearly.
    fed = tools["configs"](proxy, "--entity-type", "brokers", "--entity-default", "--alter",
                           "--add-config", "log.cleaner.threads=2")
    assert fed.returncode != 0
    assert "InvalidRequestException" in fed.stderr + fed.stdout
    assert "broker configs cannot be altered through the federation" in fed.stderr + fed.stdout


# -- kafka-delete-records.sh -----------------------------------------------------------------


def produce(bootstrap: str, topic: str, count: int, partition: int = 0) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="fk-admin-apis",
                             enable_idempotence=False, acks="all")
    try:
        for i in range(count):
            producer.send(topic, f"r{i}".encode(), partition=partition)
        producer.flush(timeout=60)
    finally:
        producer.close()


def earliest(bootstrap: str, topic: str, partition: int = 0) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="fk-admin-apis")
    try:
        tp = TopicPartition(topic, partition)
        return int(consumer.beginning_offsets([tp])[tp])
    finally:
        consumer.close()


def delete_records(tool: Tool, bootstrap: str, topic: str, offset: int, folder: Path) -> Any:
    spec = folder / f"delete-{uuid.uuid4().hex[:6]}.json"
    spec.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": topic, "partition": 0, "offset": offset}]}))
    return tool(bootstrap, "--offset-json-file", str(spec))


def test_kafka_delete_records_over_segments(local_federation: dict[str, Any],
                                            clusters: list[dict[str, Any]], proxy: str,
                                            c1: str, tools: dict[str, Tool],
                                            tmp_path: Path) -> None:
    """A logical partition of two segments: logical 0..9 sealed on c1, 10.. active on c2."""
    c2 = clusters[1]["bootstrap"].split(",")[0]
    names = {c["name"]: c for c in clusters}
    first, second = clusters[0]["name"], clusters[1]["name"]
    assert set(names) >= {first, second}
    direct_name, fed_name = _name("deld"), _name("delf")
    assert int(create_one(c1, direct_name, 1).error_code) == 0
    physical = stored_map(local_federation).physical_topic_name(fed_name)
    create_logical_topic(local_federation, fed_name, 1, layout=[[
        Segment(first, physical, 0, 0, 0, sealed_end=10), Segment(second, physical, 0, 10, 0)]])
    wait_served(proxy, fed_name)
    produce(c1, direct_name, 20)
    produce(c1, physical, 10)  # the sealed segment's records, on c1
    produce(proxy, fed_name, 10)  # through the federation: logical 10..19, on c2
    tool = tools["delete-records"]

    # Beyond the high watermark: refused as Kafka refuses it, nothing deleted.
    direct = delete_records(tool, c1, direct_name, 25, tmp_path)
    fed = delete_records(tool, proxy, fed_name, 25, tmp_path)
    same_output(direct, direct_name, fed, fed_name)
    assert "OffsetOutOfRangeException" in fed.stdout
    assert (earliest(c1, physical), earliest(c2, physical)) == (0, 0)

    # Logical 15: all of c1's segment, c2's records before its physical offset 5.
    direct = delete_records(tool, c1, direct_name, 15, tmp_path)
    fed = delete_records(tool, proxy, fed_name, 15, tmp_path)
    assert (earliest(c1, physical), earliest(c2, physical)) == (10, 5), fed.stdout
    same_output(direct, direct_name, fed, fed_name)
    assert f"partition: {fed_name}-0\tlow_watermark: 15" in fed.stdout
    assert earliest(proxy, fed_name) == earliest(c1, direct_name) == 15

    # Before the low watermark: nothing happens, the low watermark is answered.
    direct = delete_records(tool, c1, direct_name, 3, tmp_path)
    fed = delete_records(tool, proxy, fed_name, 3, tmp_path)
    same_output(direct, direct_name, fed, fed_name)
    assert "low_watermark: 15" in fed.stdout

    # -1: up to the high watermark.
    direct = delete_records(tool, c1, direct_name, -1, tmp_path)
    fed = delete_records(tool, proxy, fed_name, -1, tmp_path)
    same_output(direct, direct_name, fed, fed_name)
    assert "low_watermark: 20" in fed.stdout
    assert earliest(c2, physical) == 10 and earliest(proxy, fed_name) == 20


# -- kafka-consumer-groups.sh ----------------------------------------------------------------


class GroupMember:
    """A confluent-kafka consumer in a group, with the application's own client.id."""

    def __init__(self, bootstrap: str, group: str, topic: str, client_id: str) -> None:
        from confluent_kafka import Consumer

        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group, "client.id": client_id,
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "session.timeout.ms": 10000, "heartbeat.interval.ms": 500})
        self.consumer.subscribe([topic])

    def consume(self, count: int, timeout: float = 60) -> None:
        got = 0
        deadline = time.monotonic() + timeout
        while got < count:
            assert time.monotonic() < deadline, f"consumed {got} of {count}"
            msg = self.consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got += 1
        self.consumer.commit(asynchronous=False)

    def close(self) -> None:
        self.consumer.close()


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if line.strip()]


def test_kafka_consumer_groups_through_the_federation(local_federation: dict[str, Any],
                                                      proxy: str, c1: str,
                                                      tools: dict[str, Tool]) -> None:
    tag = uuid.uuid4().hex[:8]
    direct_topic, fed_topic = f"cgd-{tag}", f"cgf-{tag}"  # same lengths: same column widths
    direct_group, fed_group = f"gd-{tag}", f"gf-{tag}"
    app_id = f"fk-app-{tag}"
    assert int(create_one(c1, direct_topic, 4).error_code) == 0
    assert int(create_one(proxy, fed_topic, 4).error_code) == 0
    for p in range(4):
        produce(c1, direct_topic, 5, partition=p)
        produce(proxy, fed_topic, 5, partition=p)
    run = tools["consumer-groups"]
    members = [GroupMember(c1, direct_group, direct_topic, app_id),
               GroupMember(local_federation["bootstrap"], fed_group, fed_topic, app_id)]
    try:
        for m in members:
            m.consume(20)

        def described(address: str, group: str) -> Any:
            out = run(address, "--describe", "--group", group, "--members")
            return out if out.returncode == 0 and app_id in out.stdout else None

        # The application's own client id, as the coordinator sees it (not the proxy's).
        direct = wait_for(lambda: described(c1, direct_group), "direct members")
        fed = wait_for(lambda: described(proxy, fed_group), "members through the proxy")
        assert _rows(fed.stdout)[0] == _rows(direct.stdout)[0]  # the header
        [row] = _rows(fed.stdout)[1:]
        assert row[0] == fed_group and row[3] == app_id and row[-1] == "4"
        assert "fedkafka" not in fed.stdout
    finally:
        for m in members:
            m.close()

    # An empty group with committed offsets: --list, --describe.
    listed = run(proxy, "--list")
    assert listed.returncode == 0 and fed_group in listed.stdout.split()

    def both(*args: str) -> tuple[Any, Any]:
        return (run(c1, *args, "--group", direct_group, *_topic(args, direct_topic)),
                run(proxy, *args, "--group", fed_group, *_topic(args, fed_topic)))

    def same(direct: Any, fed: Any) -> None:
        """The same answer, rows in any order (Kafka lists partitions unsorted)."""
        norm = [(out.returncode, sorted(out.stdout.replace(direct_topic, "T")
                                        .replace(fed_topic, "T").replace(direct_group, "G")
                                        .replace(fed_group, "G").splitlines()))
                for out in (direct, fed)]
        assert norm[0] == norm[1], (direct, fed)

    direct, fed = both("--describe")
    same(direct, fed)
    assert {r[2]: (r[3], r[4]) for r in _rows(fed.stdout)[1:]} == {
        str(p): ("5", "5") for p in range(4)}
    direct, fed = both("--reset-offsets", "--to-earliest", "--execute")
    same(direct, fed)
    direct, fed = both("--describe")
    same(direct, fed)
    assert {r[3] for r in _rows(fed.stdout)[1:]} == {"0"}
    direct, fed = both("--reset-offsets", "--to-offset", "3", "--dry-run")
    same(direct, fed)
    direct, fed = both("--delete-offsets")
    same(direct, fed)
    direct, fed = both("--delete")
    same(direct, fed)
    assert "successful" in fed.stdout
    listed = run(proxy, "--list")
    assert listed.returncode == 0 and fed_group not in listed.stdout.split()
    direct, fed = both("--delete")  # again: the group is gone
    same(direct, fed)


def _topic(args: tuple[str, ...], topic: str) -> tuple[str, ...]:
    """The --topic option for the sub-commands that need one."""
    if args[0] in ("--reset-offsets", "--delete-offsets"):
        return ("--topic", topic)
    return ()


# -- DescribeProducers -----------------------------------------------------------------------


def describe_producers_v0(topic: str, partitions: list[int]) -> Any:
    from kio.schema.describe_producers.v0.request import DescribeProducersRequest, TopicRequest
    from kio.static.primitive import i32

    return DescribeProducersRequest(topics=(TopicRequest(
        name=topic, partition_indexes=tuple(i32(p) for p in partitions)),))


def test_describe_producers_answers_from_the_active_segment(proxy: str, c1: str) -> None:
    from kafka import KafkaProducer

    direct_name, fed_name = _name("prodd"), _name("prodf")
    for address, name in ((c1, direct_name), (proxy, fed_name)):
        assert int(create_one(address, name, 1).error_code) == 0
        producer = KafkaProducer(bootstrap_servers=address, enable_idempotence=True,
                                 client_id="fk-admin-apis")
        try:
            for i in range(5):
                producer.send(name, f"v{i}".encode(), partition=0).get(timeout=60)
        finally:
            producer.close()
    direct = send_raw(c1, describe_producers_v0(direct_name, [0, 7])).topics[0].partitions
    fed = send_raw(proxy, describe_producers_v0(fed_name, [0, 7])).topics[0].partitions

    def summary(parts: Any) -> list[tuple[int, int, list[int]]]:
        return [(int(p.partition_index), int(p.error_code),
                 [int(s.last_sequence) for s in p.active_producers]) for p in parts]
    assert summary(fed) == summary(direct) == [(0, 0, [4]), (7, UNKNOWN_TOPIC_OR_PARTITION, [])]


# -- automatic topic creation ----------------------------------------------------------------


def served_policy(address: str, node_id: int) -> tuple[str | None, ...]:
    """auto.create.topics.enable and num.partitions as a proxy answers them (from the
    policy in the map it serves)."""
    from kio.schema.describe_configs.v4.request import (
        DescribeConfigsRequest,
        DescribeConfigsResource,
    )
    from kio.static.primitive import i8

    request = DescribeConfigsRequest(resources=(DescribeConfigsResource(
        resource_type=i8(4), resource_name=str(node_id),
        configuration_keys=("auto.create.topics.enable", "num.partitions")),),
        include_synonyms=False, include_documentation=False)
    [result] = send_raw(address, request).results
    values = {c.name: c.value for c in result.configs}
    return values.get("auto.create.topics.enable"), values.get("num.partitions")


def set_policy(state: dict[str, Any], policy: AutoCreatePolicy) -> None:
    """Publish the policy and wait until every proxy and the name service serve it."""
    backend = backend_of(state)
    try:
        asyncio.run(admin.set_auto_create(backend, policy))
    finally:
        backend.close()
    wanted = ("true" if policy.enabled else "false", str(policy.partitions))
    members = [(f"{p['host']}:{p['port']}", int(p["node_id"])) for p in state["proxies"]]
    members.append((state["bootstrap"], 999))  # the name service
    for address, node_id in members:
        wait_for(lambda a=address, n=node_id: served_policy(a, n) == wanted,  # type: ignore[misc]
                 f"{address} to serve auto-creation {wanted}")


@pytest.fixture
def auto_create(local_federation: dict[str, Any]) -> Iterator[Callable[[AutoCreatePolicy], None]]:
    """Set the federation's policy for one test; the default policy is restored after."""
    yield lambda policy: set_policy(local_federation, policy)
    set_policy(local_federation, AutoCreatePolicy())


def metadata_allowing(names: list[str], allow: bool = True) -> Any:
    return dataclasses.replace(metadata_v12(names), allow_auto_topic_creation=allow)


def produce_confluent(bootstrap: str, topic: str, timeout: float = 60) -> tuple[Any, float]:
    """Produce one record; (delivery error or None, seconds until the delivery report)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "client.id": "fk-auto-create",
                         "topic.metadata.propagation.max.ms": 3000,
                         "message.timeout.ms": int(timeout * 1000)})
    outcome: list[Any] = []
    started = time.monotonic()
    producer.produce(topic, b"first", on_delivery=lambda err, _msg: outcome.append(err))
    while not outcome and time.monotonic() - started < timeout + 10:
        producer.poll(0.2)
    assert outcome, "no delivery report"
    return outcome[0], time.monotonic() - started


def test_auto_create_on_creates_with_the_policy(local_federation: dict[str, Any],
                                                clusters: list[dict[str, Any]], proxy: str,
                                                auto_create: Callable[[AutoCreatePolicy],
                                                                      None]) -> None:
    auto_create(AutoCreatePolicy(enabled=True, partitions=3, strategy="round_robin"))
    name = _name("auto")
    # Not asked for: nothing created.
    [t] = send_raw(proxy, metadata_allowing([name], allow=False)).topics
    assert int(t.error_code) == UNKNOWN_TOPIC_OR_PARTITION
    # Asked for: LEADER_NOT_AVAILABLE first, as Kafka answers, then the topic.
    [t] = send_raw(proxy, metadata_allowing([name])).topics
    assert int(t.error_code) == LEADER_NOT_AVAILABLE

    def served() -> Any:
        [t] = send_raw(proxy, metadata_allowing([name])).topics
        return t if int(t.error_code) == 0 else None
    assert len(wait_for(served, "the auto-created topic").partitions) == 3
    topic = stored_map(local_federation).topics[name]
    assert (topic.partition_count, topic.strategy) == (3, "round_robin")
    assert federation_partitions(local_federation, clusters, name) == (3, 3)
    # Internal names are never created on demand.
    [t] = send_raw(proxy, metadata_allowing(["__" + name])).topics
    assert int(t.error_code) == UNKNOWN_TOPIC_OR_PARTITION

    # A producer to a new topic, through the name service: delivered, topic created.
    fresh = _name("autop")
    error, _ = produce_confluent(local_federation["bootstrap"], fresh)
    assert error is None, error
    assert stored_map(local_federation).topics[fresh].partition_count == 3
    assert "__" + name not in stored_map(local_federation).topics


def test_auto_create_off_refuses_at_once_as_kafka(local_federation: dict[str, Any],
                                                  clusters: list[dict[str, Any]], proxy: str,
                                                  c1: str, auto_create: Callable[
                                                      [AutoCreatePolicy], None]) -> None:
    auto_create(AutoCreatePolicy(enabled=False))
    name = _name("noauto")
    # The physical clusters run with auto.create.topics.enable=false: the same answer.
    [direct] = send_raw(c1, metadata_allowing([name])).topics
    [fed] = send_raw(proxy, metadata_allowing([name])).topics
    assert int(fed.error_code) == int(direct.error_code) == UNKNOWN_TOPIC_OR_PARTITION
    direct_error, direct_took = produce_confluent(c1, name)
    fed_error, fed_took = produce_confluent(local_federation["bootstrap"], name)
    assert direct_error is not None and fed_error is not None
    assert fed_error.code() == direct_error.code()  # librdkafka: unknown topic
    # Refused, not timed out: a timeout would be librdkafka's _MSG_TIMED_OUT, not the
    # broker's code (checked above); the times are reported, never asserted.
    print(f"refused after {fed_took:.1f}s through the federation, {direct_took:.1f}s direct")
    assert name not in stored_map(local_federation).topics
    assert federation_partitions(local_federation, clusters, name) == (0, 0)


# -- read-your-writes ------------------------------------------------------------------------


def everyone(state: dict[str, Any]) -> list[str]:
    """Every address a client may bootstrap from: each proxy and the name service."""
    return [f"{p['host']}:{p['port']}" for p in state["proxies"]] + [state["bootstrap"]]


def partitions_seen(address: str, names: list[str]) -> dict[str, int]:
    """Logical topic → partition count, as a fresh connection to ``address`` is told."""
    topics = send_raw(address, metadata_v12(names)).topics
    return {t.name: len(t.partitions) if int(t.error_code) == 0 else -int(t.error_code)
            for t in topics}


def create_partitions_v3(name: str, count: int) -> Any:
    from kio.schema.create_partitions.v3.request import (
        CreatePartitionsRequest,
        CreatePartitionsTopic,
    )
    from kio.static.primitive import i32

    return CreatePartitionsRequest(topics=(CreatePartitionsTopic(
        name=name, count=i32(count), assignments=None),),
        timeout=datetime.timedelta(seconds=30), validate_only=False)


def delete_topics_v6(name: str) -> Any:
    from kio.schema.delete_topics.v6.request import DeleteTopicsRequest, DeleteTopicState

    return DeleteTopicsRequest(topics=(DeleteTopicState(name=name, topic_id=None),),
                               timeout=datetime.timedelta(seconds=30))


def test_topic_changes_are_served_everywhere_when_answered(local_federation: dict[str, Any]
                                                           ) -> None:
    """Create, grow and delete through each proxy in turn; right after each answer, a new
    connection to every proxy and to the name service sees the change."""
    from confluent_kafka.admin import AdminClient

    addresses = everyone(local_federation)
    for via in addresses:
        name = _name("ryw")
        assert int(create_one(via, name, 2).error_code) == 0
        assert {a: partitions_seen(a, [name]) for a in addresses} == {
            a: {name: 2} for a in addresses}
        # A new client bootstrapping through the name service sees it as well.
        client = AdminClient({"bootstrap.servers": local_federation["bootstrap"],
                              "client.id": "fk-ryw"})
        assert len(client.list_topics(name, timeout=30).topics[name].partitions) == 2
        [grown] = send_raw(via, create_partitions_v3(name, 5)).results
        assert int(grown.error_code) == 0
        assert {a: partitions_seen(a, [name]) for a in addresses} == {
            a: {name: 5} for a in addresses}
        [deleted] = send_raw(via, delete_topics_v6(name)).responses
        assert int(deleted.error_code) == 0
        assert {a: partitions_seen(a, [name]) for a in addresses} == {
            a: {name: -UNKNOWN_TOPIC_OR_PARTITION} for a in addresses}


def test_one_hundred_topics_in_one_create_topics(local_federation: dict[str, Any],
                                                 clusters: list[dict[str, Any]],
                                                 proxy: str) -> None:
    from .test_conformance import create_topics_request

    prefix = _name("many")
    names = [f"{prefix}-{i:03d}" for i in range(100)]
    request = dataclasses.replace(create_topics_request([(n, 2, -1, [], {}) for n in names]),
                                  timeout=datetime.timedelta(seconds=120))
    started = time.monotonic()
    answer = send_raw(proxy, request, timeout=180)
    took = time.monotonic() - started
    print(f"\n100 topics (2 partitions each) in one CreateTopics: {took:.1f} s")
    assert [int(t.error_code) for t in answer.topics] == [0] * 100
    for address in everyone(local_federation):
        assert partitions_seen(address, names) == dict.fromkeys(names, 2)
    fmap = stored_map(local_federation)
    assert all(fmap.topics[n].partition_count == 2 for n in names)
    assert federation_partitions(local_federation, clusters, names[-1]) == (2, 2)


# -- kafka-topics.sh --describe, --alter, --delete -------------------------------------------


def _topic_lines(out: str, name: str) -> list[str]:
    """kafka-topics --describe output with what differs by nature masked: the topic id and
    broker ids (physical brokers there, proxies here)."""
    import re

    text = out.replace(name, "NAME")
    text = re.sub(r"TopicId: \S+", "TopicId: ID", text)
    text = re.sub(r"(Leader|Replicas|Isr|Elr|LastKnownElr): [\d,]+", r"\1: N", text)
    return sorted(line.strip() for line in text.splitlines() if line.strip())


def test_kafka_topics_describe_alter_delete(local_federation: dict[str, Any], proxy: str,
                                            c1: str, tools: dict[str, Tool]) -> None:
    run = tools["topics"]
    direct_name, fed_name = _name("topd"), _name("topf")
    for address, name in ((c1, direct_name), (proxy, fed_name)):
        created = run(address, "--create", "--topic", name, "--partitions", "3",
                      "--config", "retention.ms=86400000")
        assert created.returncode == 0, created
    direct = run(c1, "--describe", "--topic", direct_name)
    fed = run(proxy, "--describe", "--topic", fed_name)
    assert fed.returncode == direct.returncode == 0, fed
    assert _topic_lines(fed.stdout, fed_name) == _topic_lines(direct.stdout, direct_name)

    for address, name in ((c1, direct_name), (proxy, fed_name)):
        grown = run(address, "--alter", "--topic", name, "--partitions", "5")
        assert grown.returncode == 0, grown
    direct = run(c1, "--describe", "--topic", direct_name)
    fed = run(proxy, "--describe", "--topic", fed_name)
    assert _topic_lines(fed.stdout, fed_name) == _topic_lines(direct.stdout, direct_name)
    assert "PartitionCount: 5" in fed.stdout

    direct = run(c1, "--delete", "--topic", direct_name)
    fed = run(proxy, "--delete", "--topic", fed_name)
    assert (fed.returncode, fed.stdout) == (direct.returncode,
                                            direct.stdout.replace(direct_name, fed_name))
    assert fed_name not in stored_map(local_federation).topics
    listed = run(proxy, "--list")
    assert listed.returncode == 0 and fed_name not in listed.stdout.split()


def test_describe_topic_partitions_pages_as_kafka(proxy: str, c1: str) -> None:
    from kio.schema.describe_topic_partitions.v0.request import (
        Cursor,
        DescribeTopicPartitionsRequest,
        TopicRequest,
    )
    from kio.static.primitive import i32

    tag = uuid.uuid4().hex[:8]
    pairs = {c1: (f"dtpd-{tag}-a", f"dtpd-{tag}-b"), proxy: (f"dtpf-{tag}-a", f"dtpf-{tag}-b")}
    for address, (a, b) in pairs.items():
        for name in (a, b):
            assert int(create_one(address, name, 3).error_code) == 0

    def pages(address: str) -> list[list[tuple[str, int]]]:
        a, b = pairs[address]
        out, cursor = [], None
        while True:
            answer = send_raw(address, DescribeTopicPartitionsRequest(
                topics=(TopicRequest(name=b), TopicRequest(name=a),
                        TopicRequest(name=a + "-missing")),
                response_partition_limit=i32(2), cursor=cursor))
            out.append([(t.name.replace(a, "A").replace(b, "B"), int(t.error_code),
                         len(t.partitions)) for t in answer.topics])
            if answer.next_cursor is None:
                return out
            cursor = Cursor(topic_name=answer.next_cursor.topic_name,
                            partition_index=answer.next_cursor.partition_index)
    assert pages(proxy) == pages(c1)


# -- client libraries' admin clients ---------------------------------------------------------


def test_confluent_admin_client_creates_alters_describes_deletes(
        local_federation: dict[str, Any], clusters: list[dict[str, Any]]) -> None:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewPartitions,
        NewTopic,
    )

    client = AdminClient({"bootstrap.servers": local_federation["bootstrap"],
                          "client.id": "fk-confluent-admin"})
    name = _name("rdkadm")
    client.create_topics([NewTopic(name, 3, 1, config={"retention.ms": "3600000"})]
                         )[name].result(60)
    resource = ConfigResource("TOPIC", name)
    client.incremental_alter_configs([ConfigResource("TOPIC", name, incremental_configs=[
        ConfigEntry("max.message.bytes", "2000000",
                    incremental_operation=AlterConfigOpType.SET)])])[resource].result(60)
    described = client.describe_configs([resource])[resource].result(60)
    assert described["retention.ms"].value == "3600000"
    assert described["max.message.bytes"].value == "2000000"
    assert dict(stored_map(local_federation).topics[name].config) == {
        "retention.ms": "3600000", "max.message.bytes": "2000000"}
    client.create_partitions([NewPartitions(name, 4)])[name].result(60)
    assert len(client.list_topics(name, timeout=30).topics[name].partitions) == 4
    produce(local_federation["bootstrap"], name, 6, partition=1)
    [deleted] = client.delete_records([TopicPartition(name, 1, 4)]).values()
    assert deleted.result(60).low_watermark == 4  # logical
    client.delete_topics([name])[name].result(60)
    assert name not in stored_map(local_federation).topics


def test_aiokafka_admin_client_creates_alters_describes_deletes(
        local_federation: dict[str, Any]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    name = _name("aioadm")

    async def scenario() -> None:
        client = AIOKafkaAdminClient(bootstrap_servers=local_federation["bootstrap"],
                                     client_id="fk-aiokafka-admin")
        await client.start()
        try:
            await client.create_topics([NewTopic(name, 2, 1)])
            await client.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name,
                                                       {"retention.ms": "7200000"})])
            [response] = await client.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name)])
            [(code, _, _, _, entries)] = response.resources
            assert code == 0
            assert {e[0]: e[1] for e in entries}["retention.ms"] == "7200000"
            assert dict(stored_map(local_federation).topics[name].config) == {
                "retention.ms": "7200000"}
            described = await client.describe_topics([name])
            assert len(described[0]["partitions"]) == 2
            await client.delete_topics([name])
        finally:
            await client.close()

    asyncio.run(scenario())
    assert name not in stored_map(local_federation).topics


# -- every advertised version of the new admin APIs -----------------------------------------


def _versions(api_key: int) -> list[int]:
    from federation.protocol.versions import clamp
    from federation.proxy.server import CAPS

    rng = clamp(api_key, *CAPS[api_key])
    assert rng is not None
    return list(range(rng[0], rng[1] + 1))


ADMIN_VERSIONS = [(key, v) for key in (32, 33, 44, 21, 42, 47, 61, 75) for v in _versions(key)]


@pytest.mark.parametrize(("api_key", "version"), ADMIN_VERSIONS,
                         ids=[f"{k}v{v}" for k, v in ADMIN_VERSIONS])
def test_every_served_version_answers_as_kafka(api_key: int, version: int, proxy: str,
                                               c1: str, local_federation: dict[str, Any],
                                               clusters: list[dict[str, Any]]) -> None:
    """The same request at each served version, to a physical cluster and to the
    federation: the same error codes (and, where they must match, the same answers)."""
    from kio.static.primitive import i8, i32, i64

    from tests.kafka_requests import make

    tag = uuid.uuid4().hex[:8]
    names = {c1: f"verd-{tag}", proxy: f"verf-{tag}"}
    for address, name in names.items():
        assert int(create_one(address, name, 1).error_code) == 0

    def request(name: str) -> Any:
        if api_key == 32:
            return make(32, version, resources=(make(32, version, "DescribeConfigsResource",
                        resource_type=i8(2), resource_name=name,
                        configuration_keys=("retention.ms",)),))
        if api_key == 33:
            return make(33, version, resources=(make(33, version, "AlterConfigsResource",
                        resource_type=i8(2), resource_name=name, configs=(make(
                            33, version, "AlterableConfig", name="retention.ms",
                            value="4242"),)),))
        if api_key == 44:
            return make(44, version, resources=(make(44, version, "AlterConfigsResource",
                        resource_type=i8(2), resource_name=name, configs=(make(
                            44, version, "AlterableConfig", name="retention.ms",
                            config_operation=i8(0), value="4343"),)),))
        if api_key == 21:
            return make(21, version, timeout=datetime.timedelta(seconds=10), topics=(make(
                21, version, "DeleteRecordsTopic", name=name, partitions=(make(
                    21, version, "DeleteRecordsPartition", partition_index=i32(0),
                    offset=i64(0)),)),))
        if api_key == 42:
            return make(42, version, groups_names=(f"no-such-group-{tag}",))
        if api_key == 47:
            return make(47, version, group_id=f"no-such-group-{tag}", topics=(make(
                47, version, "OffsetDeleteRequestTopic", name=name, partitions=(make(
                    47, version, "OffsetDeleteRequestPartition", partition_index=i32(0)),)),))
        if api_key == 61:
            return make(61, version, topics=(make(61, version, "TopicRequest", name=name,
                                                  partition_indexes=(i32(0), i32(3))),))
        return make(75, version, response_partition_limit=i32(10),
                    topics=(make(75, version, "TopicRequest", name=name),))

    def codes(entity: Any) -> list[int]:
        """Every error code in an answer, depth first."""
        import dataclasses as dc

        out = []
        for f in dc.fields(entity):
            value = getattr(entity, f.name)
            if f.name == "error_code":
                out.append(int(value))
            elif isinstance(value, tuple):
                for item in value:
                    if dc.is_dataclass(item):
                        out.extend(codes(item))
            elif dc.is_dataclass(value):
                out.extend(codes(value))
        return out

    def settled(address: str, name: str) -> Any:
        """The answer once the group coordinator is up (clients ask FindCoordinator and
        retry these, as a cold cluster has none loaded yet)."""
        if api_key in (42, 47):  # the physical clusters have one broker: the coordinator
            send_raw(address, make(10, 4, key_type=i8(0),
                                   coordinator_keys=(f"no-such-group-{tag}",)))
        answer = send_raw(address, request(name))
        return None if set(codes(answer)) & {14, 15, 16} else answer

    direct = wait_for(lambda: settled(c1, names[c1]), "a direct answer")
    fed = wait_for(lambda: settled(proxy, names[proxy]), "an answer through the proxy")
    assert codes(fed) == codes(direct)
    if api_key in (33, 44):
        fmap = stored_map(local_federation)
        segment = fmap.topics[names[proxy]].partitions[0].active
        where = next(c["bootstrap"] for c in clusters if c["name"] == segment.cluster)
        assert dynamic_configs(c1, names[c1]) == dynamic_configs(where, segment.topic)
        assert dict(fmap.topics[names[proxy]].config) == dynamic_configs(c1, names[c1])
    if api_key == 32:
        [d], [f] = direct.results, fed.results
        assert [(c.name, c.value) for c in f.configs] == [(c.name, c.value) for c in d.configs]

