"""A proxy in a process of its own (its memory measured from /proc), a SASL user for it, and
a real client round trip through it: for resource-limit and fuzz tests."""

from __future__ import annotations

import asyncio
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from kio.index import load_request_schema

from federation.controller import users
from federation.protocol import decode_response, encode_request
from federation.security.sasl import ScramClient
from federation.tooling.fuzz import proxy_memory

from .elastic_tools import wait_until
from .fedtopics import backend_of

MECHANISM = "SCRAM-SHA-512"


class ProxyProcess:
    """``fedkafka proxy`` as a subprocess, with Prometheus metrics on ``metrics_port``."""

    def __init__(self, store: str, port: int, metrics_port: int, node_id: int, pool: str,
                 workdir: Path, **settings: Any) -> None:
        self.port = port
        self.metrics_port = metrics_port
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / f"proxy-{node_id}.json"
        self.config.write_text(json.dumps({
            "node_id": node_id, "listen": f"127.0.0.1:{port}", "store": store, "pool": pool,
            "metrics": f"127.0.0.1:{metrics_port}", **settings}))
        self.log = workdir / f"proxy-{node_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ProxyProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "federation.cli.main", "proxy", "--config",
                 str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self.answers, 60, f"the proxy on {self.port} to answer")
        return self

    def answers(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"the proxy exited: {self.log.read_text()[-3000:]}"
        try:
            return api_versions(self.port) > 0
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def memory(self) -> tuple[int, int]:
        """(RSS, high-water mark) in bytes."""
        mem = proxy_memory(self.pid)
        assert mem is not None, "the proxy process is gone"
        return mem

    def sockets(self) -> int:
        """Sockets the proxy process holds (clients, upstream, listeners)."""
        count = 0
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            try:
                count += os.readlink(fd).startswith("socket:")
            except OSError:
                continue  # closed meanwhile
        return count

    def metric(self, name: str, **labels: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=10).read().decode()
        want = [f'{k}="{v}"' for k, v in labels.items()]
        total = 0.0
        for line in text.splitlines():
            head, _, value = line.rpartition(" ")
            if (head == name or head.startswith(name + "{")) and all(w in head for w in want):
                total += float(value)
        return total

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def request(sock: socket.socket, api_key: int, version: int, correlation_id: int = 1,
            **fields: Any) -> Any:
    """One request/response on ``sock`` (raises ConnectionError when the proxy closes it)."""
    schema: Any = load_request_schema(api_key, version)
    sock.sendall(b"".join(encode_request(schema(**fields), correlation_id, "fk-limits")))
    size = struct.unpack(">i", _exact(sock, 4))[0]
    return decode_response(api_key, version, _exact(sock, size))[1]


def api_versions(port: int) -> int:
    """One ApiVersions round trip (served before SASL) on a new connection: APIs listed."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        resp = request(sock, 18, 3, client_software_name="fk-limits",
                       client_software_version="1")
    return len(resp.api_keys)


def authenticate(sock: socket.socket, user: str, password: str) -> None:
    """SASL/SCRAM-SHA-512 on a raw socket."""
    assert request(sock, 17, 1, mechanism=MECHANISM).error_code == 0
    client = ScramClient(MECHANISM, user, password)
    first = request(sock, 36, 2, auth_bytes=client.first())
    assert first.error_code == 0, first
    final = request(sock, 36, 2, auth_bytes=client.final(bytes(first.auth_bytes)))
    assert final.error_code == 0, final
    client.verify(bytes(final.auth_bytes))


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes ``sock`` within ``seconds`` (reads and drops any data)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


@contextmanager
def sasl_user(federation: dict[str, Any], name: str, password: str) -> Iterator[None]:
    """A SCRAM user in the shared federation's map for the duration (removed after)."""
    backend = backend_of(federation)
    try:
        fmap, _ = asyncio.run(users.add_user(backend, name, password, (MECHANISM,)))
        health = f"{federation['nameservice_http']}/health"
        wait_until(lambda: json.load(urllib.request.urlopen(health))["map_version"]
                   >= fmap.version, 30, "the name service to serve the map with the user")
        yield
    finally:
        asyncio.run(users.remove_user(backend, name))
        backend.close()


def client_config(bootstrap: str, client_id: str, user: str | None = None,
                  password: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "client.id": client_id}
    if user is not None:
        conf.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": MECHANISM,
                     "sasl.username": user, "sasl.password": password})
    return conf


def round_trip(conf: dict[str, Any], topic: str, count: int = 50) -> int:
    """Produce ``count`` records (acks=all) and read exactly those back: how many came back
    intact (each checked by partition, offset and value)."""
    tag = uuid.uuid4().hex[:8]
    values = [f"{tag}-{i}".encode() for i in range(count)]
    delivered: dict[bytes, tuple[int, int]] = {}
    errors: list[Any] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered[msg.value()] = (msg.partition(), msg.offset())

    producer = Producer({**conf, "acks": "all", "message.timeout.ms": 60000})
    for value in values:
        producer.produce(topic, value, on_delivery=on_delivery)
    assert producer.flush(90) == 0 and not errors, errors
    consumer = Consumer({**conf, "group.id": f"fk-limits-{tag}", "enable.auto.commit": False})
    first: dict[int, int] = {}
    for p, o in delivered.values():
        first[p] = min(o, first.get(p, o))
    seen: set[bytes] = set()
    try:
        consumer.assign([TopicPartition(topic, p, o) for p, o in first.items()])
        deadline = time.monotonic() + 90
        while len(seen) < len(delivered) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            got = msg.value()
            if got is not None and delivered.get(got) == (msg.partition(), msg.offset()):
                seen.add(got)
    finally:
        consumer.close()
    return len(seen)


def federation_port(federation: dict[str, Any], offset: int) -> int:
    """A port of the test range: the federation's bootstrap port + ``offset``."""
    return int(federation["bootstrap"].rsplit(":", 1)[1]) + offset
