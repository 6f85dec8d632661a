"""Run real Kafka clients against any bootstrap address (tests and benchmarks).

Each client has the same two operations:

* ``produce(bootstrap, topic, records, idempotent=...)`` sends ``(key, value)``
  pairs (key may be None) and returns once every record is acknowledged;
* ``consume(bootstrap, topic, count, ...)`` reads from the beginning until
  ``count`` records arrived (or the timeout) and returns them as ``Rec``.

The Python clients (aiokafka, kafka-python, confluent-kafka) are imported
lazily: they are test extras, not runtime dependencies. ``kcat`` and Kafka's
own Java console tools run as subprocesses.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from federation.tooling.kafka_dist import KafkaDist

Record = tuple[bytes | None, bytes]


@dataclass(frozen=True, slots=True)
class Rec:
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class Client(Protocol):
    name: str
    supports_idempotence: bool

    def produce(self, bootstrap: str, topic: str, records: Sequence[Record], *,
                idempotent: bool = False) -> None: ...

    def consume(self, bootstrap: str, topic: str, count: int, *, timeout: float = 60.0,
                group: str | None = None) -> list[Rec]: ...


# -- kafka-python -------------------------------------------------------------


class KafkaPythonClient:
    name = "kafka-python"
    supports_idempotence = True

    def produce(self, bootstrap: str, topic: str, records: Sequence[Record], *,
                idempotent: bool = False) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                 enable_idempotence=idempotent, linger_ms=5,
                                 client_id="fk-kafka-python", retries=10)
        try:
            futures = [producer.send(topic, key=k, value=v) for k, v in records]
            producer.flush(timeout=120)
            for f in futures:
                f.get(timeout=60)
        finally:
            producer.close(timeout=10)

    def consume(self, bootstrap: str, topic: str, count: int, *, timeout: float = 60.0,
                group: str | None = None) -> list[Rec]:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                 auto_offset_reset="earliest", enable_auto_commit=False,
                                 client_id="fk-kafka-python", consumer_timeout_ms=1000)
        out: list[Rec] = []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < count and time.monotonic() < deadline:
                batch = consumer.poll(timeout_ms=500)
                for msgs in batch.values():
                    out.extend(Rec(m.partition, m.offset, m.key, m.value) for m in msgs)
            if group:
                consumer.commit()
        finally:
            consumer.close()
        return out


# -- aiokafka -------------------------------------------------------------------


class AioKafkaClient:
    name = "aiokafka"
    supports_idempotence = True

    def produce(self, bootstrap: str, topic: str, records: Sequence[Record], *,
                idempotent: bool = False) -> None:
        asyncio.run(self._produce(bootstrap, topic, records, idempotent))

    @staticmethod
    async def _produce(bootstrap: str, topic: str, records: Sequence[Record],
                       idempotent: bool) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                    enable_idempotence=idempotent, linger_ms=5,
                                    client_id="fk-aiokafka")
        await producer.start()
        try:
            futures = [await producer.send(topic, key=k, value=v) for k, v in records]
            await producer.flush()
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    def consume(self, bootstrap: str, topic: str, count: int, *, timeout: float = 60.0,
                group: str | None = None) -> list[Rec]:
        return asyncio.run(self._consume(bootstrap, topic, count, time.monotonic() + timeout,
                                         group))

    @staticmethod
    async def _consume(bootstrap: str, topic: str, count: int, deadline: float,
                       group: str | None) -> list[Rec]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    client_id="fk-aiokafka")
        await consumer.start()
        out: list[Rec] = []
        try:
            while len(out) < count and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    out.extend(Rec(m.partition, m.offset, m.key, m.value) for m in msgs)
            if group:
                await consumer.commit()
        finally:
            await consumer.stop()
        return out


# -- confluent-kafka (librdkafka) --------------------------------------------------


class ConfluentClient:
    name = "confluent-kafka"
    supports_idempotence = True

    def produce(self, bootstrap: str, topic: str, records: Sequence[Record], *,
                idempotent: bool = False) -> None:
        from confluent_kafka import Producer

        errors: list[Any] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        producer = Producer({
            "bootstrap.servers": bootstrap, "acks": "all",
            "enable.idempotence": idempotent, "linger.ms": 5,
            "partitioner": "murmur2_random",  # Java's partitioner: keys land where Java puts them
            "client.id": "fk-confluent",
        })
        for k, v in records:
            while True:
                try:
                    producer.produce(topic, key=k, value=v, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        remaining = producer.flush(120)
        if remaining or errors:
            raise RuntimeError(f"confluent-kafka: {remaining} undelivered, errors: {errors[:3]}")

    def consume(self, bootstrap: str, topic: str, count: int, *, timeout: float = 60.0,
                group: str | None = None) -> list[Rec]:
        from confluent_kafka import Consumer

        consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group or f"fk-probe-{os.getpid()}-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "client.id": "fk-confluent",
        })
        consumer.subscribe([topic])
        out: list[Rec] = []
        try:
            deadline = time.monotonic() + timeout
            while len(out) < count and time.monotonic() < deadline:
                for m in consumer.consume(num_messages=1000, timeout=0.5):
                    if m.error():
                        continue
                    out.append(Rec(m.partition() or 0, m.offset() or 0, m.key(),
                                   m.value() or b""))
            if group and out:
                consumer.commit(asynchronous=False)
        finally:
            consumer.close()
        return out


# -- kcat --------------------------------------------------------------------------


class KcatClient:
    name = "kcat"
    supports_idempotence = True

    def _kcat(self) -> str:
        path = shutil.which("kcat") or shutil.which("kafkacat")
        if not path:
            raise RuntimeError("kcat is not installed (apt-get install kcat)")
        return path

    def produce(self, bootstrap: str, topic: str, records: Sequence[Record], *,
                idempotent: bool = False) -> None:
        keyed = [r for r in records if r[0] is not None]
        unkeyed = [r for r in records if r[0] is None]
        for group, use_key in ((keyed, True), (unkeyed, False)):
            if not group:
                continue
            lines = b"".join(
                ((k or b"") + b"\t" + v if use_key else v) + b"\n" for k, v in group
            )
            cmd = [self._kcat(), "-b", bootstrap, "-P", "-t", topic,
                   "-X", "partitioner=murmur2_random", "-X", "acks=all",
                   "-X", f"enable.idempotence={'true' if idempotent else 'false'}",
                   "-X", "client.id=fk-kcat"]
            if use_key:
                cmd += ["-K", "\t"]
            proc = subprocess.run(cmd, input=lines, capture_output=True, timeout=300,
                                  check=False)
            # "Failed to acquire idempotence PID ...: retrying" is a retried warning; a lost
            # record shows as "Delivery failed".
            if proc.returncode != 0 or b"delivery failed" in proc.stderr.lower():
                raise RuntimeError(f"kcat produce failed: {proc.stderr.decode()[-500:]}")

    def consume(self, bootstrap: str, topic: str, count: int, *, timeout: float = 60.0,
                group: str | None = None) -> list[Rec]:
        cmd = [self._kcat(), "-b", bootstrap, "-C", "-t", topic, "-o", "beginning",
               "-c", str(count), "-f", "%p\t%o\t%K\t%k\t%s\n", "-X", "client.id=fk-kcat"]
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        out = []
        for line in proc.stdout.splitlines():
            p, o, klen, rest = line.split(b"\t", 3)
            n = int(klen)
            key = None if n < 0 else rest[:n]
            value = rest[max(n, 0) + 1:] if n >= 0 else rest[1:]
            out.append(Rec(int(p), int(o), key, value))
        return out


# -- Kafka's own Java console tools ---------------------------------------------------


class JavaConsoleClient:
    name = "java-console"
    supports_idempotence = True

    def __init__(self, dist: KafkaDist) -> None:
        self.dist = dist

    def produce(self, bootstrap: str, topic: str, records: Sequence[Record], *,
                idempotent: bool = False) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            props = Path(tmp) / "producer.properties"
            props.write_text(
                f"acks=all\nenable.idempotence={str(idempotent).lower()}\nlinger.ms=5\n"
                "client.id=fk-java\n"
            )
            keyed = [r for r in records if r[0] is not None]
            unkeyed = [r for r in records if r[0] is None]
            for group, use_key in ((keyed, True), (unkeyed, False)):
                if not group:
                    continue
                lines = b"".join(
                    ((k or b"") + b"\t" + v if use_key else v) + b"\n" for k, v in group
                )
                args = ["--bootstrap-server", bootstrap, "--topic", topic,
                        "--producer.config",
                        str(props)]
                if use_key:
                    args += ["--property", "parse.key=true", "--property", "key.separator=\t"]
                proc = subprocess.run(
                    self.dist.java_command(self.dist.console_producer, *args, heap="256m"),
                    input=lines, capture_output=True, timeout=300, check=False,
                )
                if proc.returncode != 0 or b"ERROR" in proc.stdout + proc.stderr:
                    raise RuntimeError(
                        f"console producer failed: {(proc.stdout + proc.stderr).decode()[-800:]}")

    def consume(self, bootstrap: str, topic: str, count: int, *, timeout: float = 60.0,
                group: str | None = None) -> list[Rec]:
        args = ["--bootstrap-server", bootstrap, "--topic", topic, "--from-beginning",
                "--max-messages", str(count), "--timeout-ms", str(int(timeout * 1000)),
                "--property", "print.key=true", "--property", "print.partition=true",
                "--property", "print.offset=true", "--property", "key.separator=\t",
                "--property", "print.timestamp=false"]
        if group:
            args += ["--group", group]
        proc = subprocess.run(
            self.dist.java_command(self.dist.console_consumer, *args, heap="256m"),
            capture_output=True, timeout=timeout + 60, check=False,
        )
        out = []
        for line in proc.stdout.splitlines():
            fields = line.split(b"\t")
            if len(fields) < 4 or not fields[0].startswith(b"Partition:"):
                continue
            part = int(fields[0].split(b":", 1)[1])
            off = int(fields[1].split(b":", 1)[1])
            key = None if fields[2] == b"null" else fields[2]
            out.append(Rec(part, off, key, b"\t".join(fields[3:])))
        return out


def all_clients(dist: KafkaDist) -> list[Client]:
    return [AioKafkaClient(), KafkaPythonClient(), ConfluentClient(), KcatClient(),
            JavaConsoleClient(dist)]


def java_murmur2_partition(key: bytes, partitions: int) -> int:
    """Java's default partitioner for a keyed record: positive murmur2 modulo partitions."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (seed 0x9747b28c), as a signed 32-bit int like Java's."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = (data[i4] & 0xFF) | ((data[i4 + 1] & 0xFF) << 8) | ((data[i4 + 2] & 0xFF) << 16) | (
            (data[i4 + 3] & 0xFF) << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    extra = length % 4
    idx = length & ~3
    if extra >= 3:
        h ^= (data[idx + 2] & 0xFF) << 16
    if extra >= 2:
        h ^= (data[idx + 1] & 0xFF) << 8
    if extra >= 1:
        h ^= data[idx] & 0xFF
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h
