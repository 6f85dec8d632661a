"""Bad input, broker restarts, transactions refused, metrics, segments with non-zero starts."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import urllib.request
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer

from federation.clusters import probe
from federation.core.model import Segment
from federation.tooling.testing.clients import ConfluentClient, KafkaPythonClient

from .fedtopics import create_logical_topic
from .kafka_admin import create_topic

pytestmark = pytest.mark.integration


def proxy_addr(state: dict[str, Any]) -> tuple[str, int]:
    host, port = state["bootstrap"].split(",")[0].rsplit(":", 1)
    return host, int(port)


def proxy_log(state: dict[str, Any]) -> str:
    return "".join(open(p["log"]).read() for p in state["processes"]
                   if p["kind"] in ("proxy", "nameservice"))


def send_raw(addr: tuple[str, int], data: bytes) -> bytes:
    """Send raw bytes; return what came back before the proxy closed the connection."""
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        s.settimeout(10)
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            got += chunk
        return got


@pytest.mark.parametrize("case", ["random", "oversize", "negative", "truncated", "unknown_key"])
def test_malformed_frames_close_only_that_connection(case: str,
                                                     local_federation: dict[str, Any]) -> None:
    addr = proxy_addr(local_federation)
    # A healthy client connected before and kept open across the bad one.
    healthy = socket.create_connection(addr, timeout=10)
    try:
        rnd = os.urandom(64)
        frames = {
            "random": struct.pack(">i", len(rnd)) + rnd,
            "oversize": struct.pack(">i", 2_000_000_000) + b"x" * 16,
            "negative": struct.pack(">i", -5) + b"x" * 16,
            # A Produce v9 header claiming more body than there is (length consistent, body
            # cut short inside the request).
            "truncated": struct.pack(">i", 14) + struct.pack(">hhih", 0, 9, 7, 2) + b"ab"
                         + b"\x00\x00",
            "unknown_key": struct.pack(">i", 12) + struct.pack(">hhih", 999, 0, 7, 2) + b"ab",
        }
        before = proxy_log(local_federation).count("closing connection from")
        got = send_raw(addr, frames[case])
        assert got == b"", "no response to a malformed frame: the connection is closed"
        deadline = time.monotonic() + 5
        while proxy_log(local_federation).count("closing connection from") <= before:
            assert time.monotonic() < deadline, "the proxy logs why it closed the connection"
            time.sleep(0.05)
        # The healthy connection still works, and so do new ones.
        body = struct.pack(">hhih", 18, 0, 1, 1) + b"h"
        healthy.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", healthy.recv(4))
        assert size > 6
        assert probe.metadata(*addr).brokers
    finally:
        healthy.close()


def test_unadvertised_version_gets_protocol_error(local_federation: dict[str, Any]) -> None:
    """An ApiVersions newer than we know gets the v0 fallback with UNSUPPORTED_VERSION."""
    addr = proxy_addr(local_federation)
    # Flexible header (v2): client id, then an empty tagged-field section; body unknown.
    body = struct.pack(">hhih", 18, 99, 42, 1) + b"c" + b"\x00" + b"\x01\x01\x00"
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", s.recv(4))
        data = b""
        while len(data) < size:
            data += s.recv(size - len(data))
    correlation, error = struct.unpack(">ih", data[:6])
    assert correlation == 42
    assert error == 35  # UNSUPPORTED_VERSION


def test_transactional_producer_gets_clear_error(local_federation: dict[str, Any]) -> None:
    create_logical_topic(local_federation, "txn-refused", 2)
    p = Producer({"bootstrap.servers": local_federation["bootstrap"],
                  "transactional.id": "tx-1", "client.id": "fk-txn"})
    with pytest.raises(KafkaException) as info:
        p.init_transactions(20)
    text = str(info.value).lower()
    assert "authoriz" in text or "transactional" in text


def test_metrics_endpoint(local_federation: dict[str, Any]) -> None:
    create_logical_topic(local_federation, "metered", 2)
    ConfluentClient().produce(local_federation["bootstrap"], "metered",
                              [(None, b"x" * 100)] * 50)
    ports = [p["ports"][1] for p in local_federation["processes"] if p["kind"] == "proxy"]
    text = "".join(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
                   .read().decode() for port in ports)
    assert 'fedkafka_proxy_requests_total{api="Produce",version=' in text
    assert 'fedkafka_proxy_bytes_in_total{topic="metered"}' in text
    assert "fedkafka_proxy_upstream_seconds_bucket" in text
    assert "fedkafka_proxy_map_version" in text
    bytes_in = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('fedkafka_proxy_bytes_in_total{topic="metered"}'))
    assert bytes_in >= 50 * 100


def test_segments_with_nonzero_starts(local_federation: dict[str, Any]) -> None:
    """Logical partition 0 = 300 records sealed on c1 (physical 0..299) followed by an active
    segment on c2 starting at physical offset 57; logical offsets run on without a gap."""
    clusters = {c["name"]: c["bootstrap"] for c in local_federation["clusters"]}
    name = "segmented"
    phys = f"{name}.fk"
    create_topic(clusters["c1"], phys, 1)
    create_topic(clusters["c2"], phys, 1)
    # Pre-fill: 300 records on c1, 57 unrelated records on c2 (before the segment starts).
    ConfluentClient().produce(clusters["c1"], phys, [(None, f"old-{i:03d}".encode())
                                                     for i in range(300)])
    ConfluentClient().produce(clusters["c2"], phys, [(None, b"not-part-of-the-topic")] * 57)
    layout = [[Segment("c1", phys, 0, logical_start=0, physical_start=0, sealed_end=300),
               Segment("c2", phys, 0, logical_start=300, physical_start=57)]]
    create_logical_topic(local_federation, name, 1, layout=layout)
    bootstrap = local_federation["bootstrap"]
    new = [(None, f"new-{i:03d}".encode()) for i in range(200)]
    KafkaPythonClient().produce(bootstrap, name, new)
    got = KafkaPythonClient().consume(bootstrap, name, 500, timeout=60)
    assert [r.offset for r in got] == list(range(500))
    assert [r.value for r in got] == [f"old-{i:03d}".encode() for i in range(300)] + [
        v for _, v in new]


def test_produce_and_fetch_survive_a_broker_restart(local_federation: dict[str, Any]) -> None:
    name = "restart-proof"
    create_logical_topic(local_federation, name, 4)  # c1 p0-1, c2 p0-1
    bootstrap = local_federation["bootstrap"]
    acked: list[bytes] = []
    errors: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                      "acks": "all", "linger.ms": 5, "client.id": "fk-restart",
                      "message.timeout.ms": 120000})

        def cb(err: Any, msg: Any) -> None:
            if err is None:
                acked.append(msg.value())
            else:
                errors.append(str(err))
        i = 0
        while not stop.is_set():
            p.produce(name, key=f"k{i % 13}".encode(), value=f"m-{i:06d}".encode(),
                      on_delivery=cb)
            p.poll(0)
            i += 1
            time.sleep(0.002)
        assert p.flush(150) == 0

    seen: Counter[bytes] = Counter()
    consumer_errors: list[str] = []
    consuming = threading.Event()
    consuming.set()

    def consume() -> None:
        from confluent_kafka import Consumer

        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "restart-watchers",
                      "auto.offset.reset": "earliest", "client.id": "fk-restart-consumer"})
        c.subscribe([name])
        try:
            while consuming.is_set():
                for m in c.consume(num_messages=500, timeout=0.2):
                    if m.error():
                        if m.error().fatal():
                            consumer_errors.append(str(m.error()))
                        continue
                    seen[m.value()] += 1
        finally:
            c.close()

    reader = threading.Thread(target=consume)
    reader.start()
    t = threading.Thread(target=produce)
    t.start()
    try:
        time.sleep(2)
        fed = local_federation["_fed"]
        fed.restart_component("c2-b1")  # the fetching consumer is mid-flight on it
        time.sleep(3)
    finally:
        stop.set()
        t.join(timeout=200)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not set(acked) <= set(seen):
            time.sleep(0.2)
        consuming.clear()
        reader.join(timeout=60)
    assert not errors, errors[:5]
    assert not consumer_errors, consumer_errors[:5]
    assert len(acked) > 500
    assert set(acked) <= set(seen), "the consumer that fetched across the restart got all"
    counts = seen
    assert max(counts.values()) == 1, "idempotence: no duplicates after retries"


@pytest.mark.parametrize("acks", [0, 1])
def test_produce_with_acks_0_and_1(acks: int, local_federation: dict[str, Any]) -> None:
    from kafka import KafkaProducer

    name = f"acks-{acks}"
    create_logical_topic(local_federation, name, 4)
    bootstrap = local_federation["bootstrap"]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=acks, linger_ms=5,
                             client_id=f"fk-acks{acks}")
    futures = [producer.send(name, key=f"k{i}".encode(), value=f"v{i}".encode())
               for i in range(500)]
    producer.flush(30)
    metas = [f.get(timeout=30) for f in futures]
    producer.close()
    if acks == 1:
        assert all(m.offset >= 0 for m in metas)  # logical offsets from the proxy
    got = KafkaPythonClient().consume(bootstrap, name, 500, timeout=60)
    assert sorted(r.value for r in got) == sorted(f"v{i}".encode() for i in range(500))


def test_describe_cluster_shows_proxies_not_brokers(local_federation: dict[str, Any]) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=local_federation["bootstrap"],
                             client_id="fk-describe")
    try:
        info = admin.describe_cluster()
    finally:
        admin.close()
    ports = {b["port"] for b in info["brokers"]}
    assert ports == {p["port"] for p in local_federation["proxies"]}
    assert info["cluster_id"] == "fedkafka"
