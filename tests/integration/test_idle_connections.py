"""One proxy holds 10,000 idle client connections in under 1 GiB, and still serves a real
client meanwhile (issue 9's target).

The proxy runs as its own process (``fedkafka proxy``), as in production, so its RSS is
its own; the test process opens the connections (from 10 loopback source addresses, 1,000
each: the proxy's default ``limits.max_connections_per_address`` is 2,000) after raising
its soft RLIMIT_NOFILE.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BASE_PORT
from tests.integration.fedtopics import create_logical_topic, route_to_proxy

pytestmark = pytest.mark.integration

CONNECTIONS = 10_000
SOURCES = 10
NODE_ID = 1972
PORT = BASE_PORT + 470
METRICS_PORT = BASE_PORT + 471
RSS_LIMIT = 1 << 30


def _metric(name: str) -> float | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics",
                                    timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _wait(what: str, cond: Any, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture()
def proxy_process(local_federation: dict[str, Any], tmp_path: Path) -> Any:
    cfg = tmp_path / "proxy.json"
    cfg.write_text(json.dumps({
        "node_id": NODE_ID, "listen": f"127.0.0.1:{PORT}", "advertised": f"127.0.0.1:{PORT}",
        "store": local_federation["store"], "pool": "idle10k",
        "metrics": f"127.0.0.1:{METRICS_PORT}",
    }))
    log = (tmp_path / "proxy.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "federation.cli.main", "proxy", "--config",
                             str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        _wait("the proxy's metrics", lambda: _metric("fedkafka_proxy_connections") is not None
              or proc.poll() is not None)
        assert proc.poll() is None, (tmp_path / "proxy.log").read_text()[-3000:]
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_ten_thousand_idle_connections_under_a_gibibyte(
        local_federation: dict[str, Any], proxy_process: Any) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CONNECTIONS + 1000
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {wanted}: this machine "
                        "cannot open 10,000 client connections from one process")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    topic = f"idle-{uuid.uuid4().hex[:6]}"
    create_logical_topic(local_federation, topic, 2)
    route_to_proxy(local_federation, "idle10k", NODE_ID, PORT, "fk-idle-*")

    socks: list[socket.socket] = []
    try:
        for i in range(CONNECTIONS):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((f"127.0.0.{2 + i % SOURCES}", 0))
            s.settimeout(30)
            s.connect(("127.0.0.1", PORT))
            socks.append(s)
            if (i + 1) % 1000 == 0:  # let the proxy accept them: its backlog is 1024
                _wait(f"{i + 1} connections held",
                      lambda n=i + 1: (_metric("fedkafka_proxy_connections") or 0) >= n)
        _wait("every connection held", lambda: (
            _metric("fedkafka_proxy_connections") or 0) >= CONNECTIONS)
        held = _metric("fedkafka_proxy_connections")
        assert held is not None and held >= CONNECTIONS
        rss = _rss(proxy_process.pid)
        print(f"proxy RSS with {CONNECTIONS:,} idle connections: {rss / (1 << 20):.0f} MiB")
        assert rss < RSS_LIMIT, f"proxy RSS {rss / (1 << 20):.0f} MiB"

        # A real client is still served, by this proxy (its pool routes fk-idle-*).
        from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

        bootstrap = f"127.0.0.1:{PORT}"
        producer = Producer({"bootstrap.servers": bootstrap, "client.id": "fk-idle-producer",
                             "acks": "all"})
        delivered: list[Any] = []
        for n in range(20):
            producer.produce(topic, value=f"v{n}".encode(), partition=n % 2,
                             on_delivery=lambda e, m: delivered.append((e, m)))
        assert producer.flush(120) == 0
        assert [e for e, _ in delivered if e is not None] == []
        assert len(delivered) == 20
        consumer = Consumer({"bootstrap.servers": bootstrap, "client.id": "fk-idle-consumer",
                             "group.id": f"g-{topic}", "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in (0, 1)])
            got: list[bytes] = []
            deadline = time.monotonic() + 120
            while len(got) < 20 and time.monotonic() < deadline:
                for m in consumer.consume(num_messages=100, timeout=1.0):
                    if m.error() is None:
                        got.append(m.value())
        finally:
            consumer.close()
        assert sorted(got) == sorted(f"v{n}".encode() for n in range(20))
        assert (_metric("fedkafka_proxy_connections") or 0) >= CONNECTIONS
        assert proxy_process.poll() is None
    finally:
        for s in socks:
            s.close()
    assert os.path.exists(f"/proc/{proxy_process.pid}")
