"""A proxy with ``workers: 2``: two full proxy processes share one listener (SO_REUSEPORT),
each with its own metrics endpoint and member record; a crashed worker is started again;
SIGTERM to the proxy stops every worker (no strays)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BASE_PORT
from tests.integration.fedtopics import backend_of, create_logical_topic, route_to_proxy

pytestmark = pytest.mark.integration

NODE_ID = 1973
PORT = BASE_PORT + 472
METRICS_PORT = BASE_PORT + 473  # worker 0; worker 1 on + 1


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _wait(what: str, cond: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _api_versions(sock: socket.socket) -> None:
    body = struct.pack(">hhih", 18, 0, 7, 2) + b"fk"
    sock.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", sock.recv(4, socket.MSG_WAITALL))[0]
    data = sock.recv(size, socket.MSG_WAITALL)
    assert struct.unpack(">ih", data[:6]) == (7, 0)


@pytest.fixture()
def proxy(local_federation: dict[str, Any], tmp_path: Path) -> Any:
    cfg = tmp_path / "proxy.json"
    cfg.write_text(json.dumps({
        "node_id": NODE_ID, "listen": f"127.0.0.1:{PORT}", "advertised": f"127.0.0.1:{PORT}",
        "store": local_federation["store"], "pool": "workers2",
        "metrics": f"127.0.0.1:{METRICS_PORT}", "workers": 2, "shutdown_grace": 2,
    }))
    log_path = tmp_path / "proxy.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "federation.cli.main", "proxy", "--config",
                             str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parents[2])
    workers: list[int] = []
    try:
        for port in (METRICS_PORT, METRICS_PORT + 1):
            _wait(f"metrics on {port}", lambda p=port: _metric(p, "fedkafka_proxy_connections")
                  is not None or proc.poll() is not None)
            assert proc.poll() is None, log_path.read_text()[-3000:]
        workers = _children(proc.pid)
        yield proc, log_path
    finally:
        workers = list({*workers, *_children(proc.pid)})
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in workers:  # never leave one behind, even when the test failed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()


def test_two_workers_share_the_listener(local_federation: dict[str, Any], proxy: Any) -> None:
    proc, log_path = proxy
    workers = _children(proc.pid)
    assert len(workers) == 2, workers

    # Each worker is a member of its own in the store (it reports its own fences).
    backend = backend_of(local_federation)
    try:
        _wait("both workers' member records", lambda: len({
            m for m in backend.members("proxy") if m.startswith(f"127.0.0.1:{PORT}/")}) == 2)
        members = {m: d for m, d in backend.members("proxy").items()
                   if m.startswith(f"127.0.0.1:{PORT}/")}
    finally:
        backend.close()
    assert sorted(members) == [f"127.0.0.1:{PORT}/w0", f"127.0.0.1:{PORT}/w1"]
    assert sorted(d["worker"] for d in members.values()) == [0, 1]

    # The kernel spreads connections over both; every one is served.
    socks = [socket.create_connection(("127.0.0.1", PORT), timeout=30) for _ in range(40)]
    try:
        for s in socks:
            _api_versions(s)
        counts = _wait("connections on both workers", lambda: (
            c := [_metric(p, "fedkafka_proxy_connections") or 0
                  for p in (METRICS_PORT, METRICS_PORT + 1)]) and sum(c) >= 40 and c)
        assert all(c > 0 for c in counts), counts
    finally:
        for s in socks:
            s.close()

    # Real clients through the pool that routes to this proxy.
    topic = f"workers-{uuid.uuid4().hex[:6]}"
    create_logical_topic(local_federation, topic, 4)
    route_to_proxy(local_federation, "workers2", NODE_ID, PORT, "fk-workers-*")
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    producer = Producer({"bootstrap.servers": f"127.0.0.1:{PORT}",
                         "client.id": "fk-workers-p", "acks": "all"})
    errors: list[Any] = []
    for n in range(200):
        producer.produce(topic, value=str(n).encode(), partition=n % 4,
                         on_delivery=lambda e, m: e is not None and errors.append(e))
    assert producer.flush(120) == 0 and errors == []
    consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{PORT}", "client.id": "fk-workers-c",
                         "group.id": f"g-{topic}", "enable.auto.commit": False})
    got: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(4)])
        deadline = time.monotonic() + 120
        while len(got) < 200 and time.monotonic() < deadline:
            got += [m.value() for m in consumer.consume(num_messages=500, timeout=1.0)
                    if m.error() is None]
    finally:
        consumer.close()
    assert sorted(got) == sorted(str(n).encode() for n in range(200))

    # A worker that dies is started again by the supervisor.
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    _wait("a new worker", lambda: len([p for p in _children(proc.pid) if p not in workers
                                       and _alive(p)]) == 1)
    for port in (METRICS_PORT, METRICS_PORT + 1):
        _wait(f"metrics on {port} again", lambda p=port: _metric(
            p, "fedkafka_proxy_connections") is not None)
    with socket.create_connection(("127.0.0.1", PORT), timeout=30) as s:
        _api_versions(s)

    # SIGTERM to the proxy stops every worker.
    current = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    _wait("every worker gone", lambda: not any(_alive(p) for p in current), timeout=30)
    assert "starting it again" in log_path.read_text()  # the restart was logged
