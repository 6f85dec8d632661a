"""Real clients that run *throughout* a test: Kafka's VerifiableProducer and a consumer group.

Both record every outcome, so a test can check, after faults, that every acknowledged
record was consumed, that keys kept their partition and order, and count duplicates.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federation.tooling.bench import wait_topic
from federation.tooling.kafka_dist import KafkaDist

from .fedtopics import stored_map


@dataclass(frozen=True, slots=True)
class Ack:
    key: str | None
    value: str
    partition: int
    offset: int
    at: float  # monotonic time the acknowledgement was read


class VerifiableProducer:
    """Kafka's own ``VerifiableProducer`` (Java, idempotent, acks=all, default retries)."""

    def __init__(self, dist: KafkaDist, bootstrap: str, topic: str, workdir: Path, *,
                 messages: int, throughput: int, keys: int = 64,
                 client_id: str = "fk-verifiable") -> None:
        props = workdir / f"producer-{topic}.properties"
        props.write_text("enable.idempotence=true\nacks=all\nlinger.ms=5\nretries=2147483647\n"
                         f"client.id={client_id}\nmetadata.max.age.ms=5000\n")
        self.cmd = dist.java_command(
            "org.apache.kafka.tools.VerifiableProducer", "--bootstrap-server", bootstrap,
            "--topic", topic, "--max-messages", str(messages), "--throughput", str(throughput),
            "--acks", "-1", "--repeating-keys", str(keys), "--producer.config", str(props),
            heap="256m")
        self.log = workdir / f"producer-{topic}.log"
        self.acks: list[Ack] = []
        self.errors: list[dict[str, Any]] = []
        self.done = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> VerifiableProducer:
        self._proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE,
                                      stderr=self.log.open("wb"))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            name = event.get("name")
            if name == "producer_send_success":
                self.acks.append(Ack(event.get("key"), str(event["value"]),
                                     int(event["partition"]), int(event["offset"]),
                                     time.monotonic()))
            elif name == "producer_send_error":
                self.errors.append(event)
        self.done.set()

    def wait_acks(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acks) < count:
            if time.monotonic() > deadline or self.done.is_set():
                raise AssertionError(f"producer: {len(self.acks)} of {count} acks "
                                     f"({len(self.errors)} errors); log {self.log}")
            time.sleep(0.1)

    def wait(self, timeout: float) -> int:
        assert self._proc is not None
        rc = self._proc.wait(timeout)
        self.done.wait(10)
        return rc

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


@dataclass(slots=True)
class Consumed:
    key: str | None
    value: str
    partition: int
    offset: int


@dataclass
class GroupConsumer:
    """A consumer group member (librdkafka) reading a topic in a thread (auto-commit)."""

    bootstrap: str
    topic: str
    group: str
    records: list[Consumed] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> GroupConsumer:
        self._thread.start()
        return self

    def _run(self) -> None:
        # librdkafka: kafka-python 3.0's group member at times stopped heartbeating right
        # after its second join (no records, no error, expelled 45 s later), a client-side
        # hang seen only in this in-process, many-threaded setting. kafka-python's groups
        # stay covered by the client-family tests (test_compat_matrix, test_groups).
        from confluent_kafka import Consumer, KafkaError

        consumer = Consumer({
            "bootstrap.servers": self.bootstrap, "group.id": self.group,
            "client.id": f"fk-group-{self.group}", "auto.offset.reset": "earliest",
            "enable.auto.commit": True, "auto.commit.interval.ms": 500,
            "topic.metadata.refresh.interval.ms": 3000, "retry.backoff.ms": 200,
            # A loaded CI machine starves this thread at times: a short session would get
            # the member kicked out of its group over and over, reading nothing.
            "session.timeout.ms": 45000, "heartbeat.interval.ms": 3000,
            "max.poll.interval.ms": 300000})
        consumer.subscribe([self.topic])
        try:
            while not self._stop.is_set():
                for m in consumer.consume(num_messages=2000, timeout=0.2):
                    err = m.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            self.errors.append(str(err))
                        continue
                    key, value, partition, offset = m.key(), m.value(), m.partition(), m.offset()
                    assert value is not None and partition is not None and offset is not None
                    self.records.append(Consumed(
                        None if key is None else bytes(key).decode(), bytes(value).decode(),
                        partition, offset))
        finally:
            consumer.close()  # commits what was read (auto-commit), leaves the group

    def wait_for(self, values: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            missing = values - {r.value for r in self.records}
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"group {self.group}: {len(missing)} acknowledged "
                                     f"record(s) never consumed, e.g. {sorted(missing)[:5]}; "
                                     f"errors {self.errors[-3:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def check_delivery(acks: list[Ack], consumed: list[Consumed]) -> dict[str, int]:
    """Every acknowledged record consumed, at the partition and offset it was acknowledged
    at; keys in one partition each and in send order; no record written twice.

    :returns: counts (acked, consumed, distinct, duplicates).
    """
    where: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for r in consumed:
        where[r.value].add((r.partition, r.offset))
    lost = [a for a in acks if a.value not in where]
    assert not lost, f"{len(lost)} acknowledged record(s) lost, e.g. {lost[:3]}"
    misplaced = [a for a in acks if (a.partition, a.offset) not in where[a.value]]
    assert not misplaced, f"acknowledged at another offset than consumed: {misplaced[:3]}"
    duplicates = sum(len(places) - 1 for places in where.values())
    # Per key: one partition, values increasing with offsets.
    by_key: dict[str | None, list[tuple[int, int, int]]] = defaultdict(list)
    seen: set[tuple[int, int]] = set()
    for r in consumed:
        if (r.partition, r.offset) in seen:
            continue  # read twice (a group rebalance): the same record
        seen.add((r.partition, r.offset))
        by_key[r.key].append((r.partition, r.offset, int(r.value)))
    for key, items in by_key.items():
        parts = {p for p, _, _ in items}
        assert len(parts) == 1, f"key {key!r} is in partitions {sorted(parts)}"
        values = [v for _, _, v in sorted(items)]
        assert values == sorted(values), f"key {key!r} out of order: {values[:20]}"
    return {"acked": len(acks), "consumed": len(consumed), "distinct": len(where),
            "duplicates": duplicates}


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def run_clients(state: dict[str, Any], dist: KafkaDist, topic: str, tmp: Path,
                 messages: int, throughput: int) -> tuple[VerifiableProducer, GroupConsumer]:
    # Every proxy must show the topic before the group starts: a kafka-python group leader
    # that assigns while its metadata lacks the topic ("No partition metadata for topic")
    # can leave the group with nothing assigned for good (dpkp/kafka-python#2377).
    partitions = int(stored_map(state).topics[topic].partition_count)
    for proxy in state["proxy_bootstrap"].split(","):
        wait_topic(proxy, topic, partitions, timeout=120)
    consumer = GroupConsumer(state["bootstrap"], topic, f"g-{topic}").start()
    producer = VerifiableProducer(dist, state["bootstrap"], topic, tmp, messages=messages,
                                  throughput=throughput).start()
    return producer, consumer


def finish(producer: VerifiableProducer, consumer: GroupConsumer) -> dict[str, int]:
    try:
        assert producer.wait(300) == 0, f"producer failed; log {producer.log}"
        assert not producer.errors, f"{len(producer.errors)} send(s) failed: {producer.errors[:3]}"
        consumer.wait_for({a.value for a in producer.acks}, timeout=180)
    finally:
        producer.stop()
        consumer.stop()
    counts = check_delivery(producer.acks, consumer.records)
    assert counts["duplicates"] == 0, counts
    return counts
