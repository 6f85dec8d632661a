"""A failed broker does not stop producers: clusters of 3 brokers, one killed mid-stream.

Two physical clusters of 3 KRaft brokers each (every broker also a controller voter),
topics replicated 3 times. Kafka's VerifiableProducer (Java, idempotent, acks=all) and a
consumer group run through the proxies while the broker leading most partitions of ``c1``
is killed with SIGKILL and started again; the physical cluster elects new leaders, the
proxies follow them, and every acknowledged record arrives once, in per-key order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation.clusters import admin
from federation.tooling.kafka_dist import KafkaDist
from federation.tooling.local import LocalFederation, temporary_federation

from .elastic_tools import GroupConsumer, VerifiableProducer, finish
from .fedtopics import backend_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_PORT = int(os.environ.get("FEDKAFKA_TEST_BROKER_FAILURE_PORT", "31500"))


@pytest.fixture(scope="module")
def fed(kafka_dist: KafkaDist) -> Iterator[dict[str, Any]]:
    with temporary_federation("fk-brokers-", clusters=2, brokers_per_cluster=3,
                              base_port=BASE_PORT, heap="256m", proxies=2,
                              kafka_version=kafka_dist.version) as state:
        yield state


def _leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """partition → leader broker id, straight from the physical cluster."""
    from kafka import KafkaAdminClient

    client = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fk-test-leaders")
    try:
        described = client.describe_topics([topic])
    finally:
        client.close()
    return {p["partition_index"]: p["leader_id"] for p in described[0]["partitions"]}


def test_producers_keep_going_when_a_broker_dies(fed: dict[str, Any], kafka_dist: KafkaDist,
                                                 tmp_path: Path) -> None:
    backend = backend_of(fed)
    try:
        import asyncio

        asyncio.run(admin.create_topic(backend, "replicated", 8, "contiguous",
                                       replication=3))
        fmap = backend.load()
    finally:
        backend.close()
    assert fmap is not None
    c1 = next(c for c in fed["clusters"] if c["name"] == "c1")
    physical = fmap.physical_topic_name("replicated")
    # The broker we ask may not know the just-created topic's partitions yet: wait for them.
    deadline = time.monotonic() + 120
    while True:
        try:
            before = _leaders(c1["bootstrap"], physical)
        except Exception:  # the topic not known there yet
            before = {}
        if before and all(leader >= 0 for leader in before.values()):
            break
        assert time.monotonic() < deadline, f"leaders of {physical} never known: {before}"
        time.sleep(0.5)
    victim = max(set(before.values()), key=list(before.values()).count)
    local = LocalFederation(Path(fed["workdir"]))

    consumer = GroupConsumer(fed["bootstrap"], "replicated", "g-replicated").start()
    producer = VerifiableProducer(kafka_dist, fed["bootstrap"], "replicated", tmp_path,
                                  messages=12000, throughput=800).start()
    try:
        producer.wait_acks(2000, timeout=120)
        local.stop_component(f"c1-b{victim}", kill=True)
        acked = len(producer.acks)
        # c1's partitions get new leaders among the two survivors; writes go on.
        deadline = time.monotonic() + 120
        while True:
            survivors = [b["port"] for b in c1["brokers"] if b["node_id"] != victim]
            try:
                after = _leaders(f"127.0.0.1:{survivors[0]}", physical)
            except Exception:
                after = {}
            if after and victim not in after.values():
                break
            assert time.monotonic() < deadline, f"leaders still on broker {victim}: {after}"
            time.sleep(0.2)
        producer.wait_acks(acked + 2000, timeout=120)
        local.start_component(f"c1-b{victim}")
    except BaseException:
        producer.stop()
        consumer.stop()
        raise
    counts = finish(producer, consumer)
    moved = [p for p, leader in before.items() if leader == victim]
    assert moved
    # Records acknowledged after the kill on partitions the dead broker led: written to
    # their new leaders through the proxy.
    c1_logical = [lp.index for lp in fmap.topics["replicated"].partitions
                  if lp.active.cluster == "c1" and lp.active.partition in moved]
    assert any(a.partition in c1_logical for a in producer.acks[acked:])
    print(f"broker {victim} of c1 killed; {counts}")
