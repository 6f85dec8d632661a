"""Proxy roles honoured end to end: producers only on producer proxies, consumers only on
consumer proxies, with Java, librdkafka and aiokafka clients.

Two producer-only and two consumer-only proxies form one pool; routing rules name the
clients' roles by client.id. Every client bootstraps through the name service; afterwards
each proxy must have seen only clients of its role, and every record must have arrived.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation.core.model import FederationMap, ProxyEndpoint, RoutingRule
from federation.store.mapstore import update
from federation.tooling.kafka_dist import KafkaDist

from .fedtopics import backend_of, create_logical_topic
from .inprocess import InProcessProxy

pytestmark = pytest.mark.integration

POOL = "split"
COUNT = 300


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def split_pool(local_federation: dict[str, Any]) -> Iterator[dict[str, InProcessProxy]]:
    ports = _free_ports(4)
    specs = [("p1", 1911, ports[0], ("producer",)), ("p2", 1912, ports[1], ("producer",)),
             ("c1", 1913, ports[2], ("consumer",)), ("c2", 1914, ports[3], ("consumer",))]
    backend = backend_of(local_federation)
    try:
        def change(fmap: FederationMap | None) -> FederationMap:
            assert fmap is not None
            endpoints = tuple(ProxyEndpoint(node, "127.0.0.1", port, frozenset(roles))
                              for _, node, port, roles in specs)
            rules = (RoutingRule(".*-producer", POOL, "producer"),
                     RoutingRule(".*-consumer", POOL, "consumer"))
            return dataclasses.replace(fmap, pools={**fmap.pools, POOL: endpoints},
                                       routing=(*rules, *fmap.routing))
        update(backend, change)
    finally:
        backend.close()
    proxies = {name: InProcessProxy(local_federation["store"], port, pool=POOL, node_id=node,
                                    roles=roles) for name, node, port, roles in specs}
    for p in proxies.values():
        p.__enter__()
    try:
        yield proxies
    finally:
        for p in proxies.values():
            p.__exit__(None, None, None)


def _seen(proxy: InProcessProxy) -> set[str]:
    assert proxy.state is not None
    return set(proxy.state.clients_seen)


def _confluent(bootstrap: str, topic: str) -> list[bytes]:
    from confluent_kafka import Consumer, Producer

    producer = Producer({"bootstrap.servers": bootstrap, "client.id": "rdkafka-producer",
                         "enable.idempotence": True})
    errors: list[Any] = []
    for i in range(COUNT):
        producer.produce(topic, key=f"k{i}".encode(), value=f"rd-{i}".encode(),
                         on_delivery=lambda err, _m: err is not None and errors.append(err))
    assert producer.flush(60) == 0 and not errors, errors[:3]
    consumer = Consumer({"bootstrap.servers": bootstrap, "client.id": "rdkafka-consumer",
                         "group.id": f"g-{topic}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got: list[bytes] = []
    try:
        for _ in range(600):
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
            if len(got) >= COUNT:
                break
    finally:
        consumer.close()
    return got


async def _aiokafka(bootstrap: str, topic: str) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="aio-producer")
    await producer.start()
    try:
        for i in range(COUNT):
            await producer.send(topic, key=f"k{i}".encode(), value=f"aio-{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, client_id="aio-consumer",
                                group_id=f"g-{topic}", auto_offset_reset="earliest")
    await consumer.start()
    got: list[bytes] = []
    try:
        async with asyncio.timeout(120):
            async for msg in consumer:
                got.append(msg.value)
                if len(got) >= COUNT:
                    break
    finally:
        await consumer.stop()
    return got


def _java(dist: KafkaDist, bootstrap: str, topic: str) -> list[bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        props = Path(tmp) / "p.properties"
        props.write_text("client.id=java-producer\nacks=all\n")
        lines = "".join(f"java-{i}\n" for i in range(COUNT)).encode()
        subprocess.run(dist.java_command(dist.console_producer, "--bootstrap-server", bootstrap,
                                         "--topic", topic, "--producer.config", str(props)),
                       input=lines, check=True, capture_output=True, timeout=180)
        cprops = Path(tmp) / "c.properties"
        cprops.write_text("client.id=java-consumer\n")
        proc = subprocess.run(dist.java_command(
            dist.console_consumer, "--bootstrap-server", bootstrap, "--topic", topic,
            "--from-beginning", "--max-messages", str(COUNT), "--timeout-ms", "60000",
            "--group", f"g-{topic}", "--consumer.config", str(cprops)),
            capture_output=True, timeout=180, check=False)
    return [line for line in proc.stdout.splitlines() if line.startswith(b"java-")]


@pytest.mark.parametrize("family", ["librdkafka", "aiokafka", "java"])
def test_producers_and_consumers_land_on_proxies_of_their_role(
        family: str, local_federation: dict[str, Any], split_pool: dict[str, InProcessProxy],
        kafka_dist: KafkaDist) -> None:
    topic = f"roles-{family}"
    create_logical_topic(local_federation, topic, 4)
    bootstrap = local_federation["bootstrap"]  # the name service
    if family == "librdkafka":
        got = _confluent(bootstrap, topic)
        producer_id, consumer_id = "rdkafka-producer", "rdkafka-consumer"
    elif family == "aiokafka":
        got = asyncio.run(_aiokafka(bootstrap, topic))
        producer_id, consumer_id = "aio-producer", "aio-consumer"
    else:
        got = _java(kafka_dist, bootstrap, topic)
        producer_id, consumer_id = "java-producer", "java-consumer"
    assert sorted(got) == sorted(v for v in got if v.split(b"-")[-1].isdigit())
    assert len(set(got)) == len(got) == COUNT
    producers = _seen(split_pool["p1"]) | _seen(split_pool["p2"])
    consumers = _seen(split_pool["c1"]) | _seen(split_pool["c2"])
    assert producer_id in producers and consumer_id not in producers
    assert consumer_id in consumers and producer_id not in consumers
    assert all(c.endswith("-producer") for c in producers), producers
    assert all(c.endswith("-consumer") for c in consumers), consumers
