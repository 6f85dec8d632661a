"""A tiny blocking Kafka Metadata probe for health checks and readiness waits.

Deliberately independent of the proxy's protocol core: it hand-encodes one
Metadata v4 request (supported by every Kafka from 1.0 to 4.x) and reads only
the broker list and cluster id from the answer.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    node_id: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class MetadataAnswer:
    cluster_id: str | None
    controller_id: int
    brokers: tuple[BrokerInfo, ...]
    topics: tuple[str, ...]


class ProbeError(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProbeError("connection closed by peer")
        buf += chunk
    return bytes(buf)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return s


def metadata(host: str, port: int, timeout: float = 2.0, client_id: str = "fedkafka-probe",
             security: Mapping[str, str] | None = None) -> MetadataAnswer:
    """Ask one broker for Metadata (all topics); raise ProbeError/OSError if it can't answer.

    :param security: the cluster's ``security`` (TLS and SASL first,
        :mod:`federation.security.tls`).
    """
    cid = client_id.encode()
    body = struct.pack(">hhih", 3, 4, 1, len(cid)) + cid + struct.pack(">i?", -1, False)
    if security:
        from federation.core.errors import ConfigError
        from federation.security import tls

        try:
            opened = tls.open_blocking(host, port, security, timeout)
        except (ConfigError, PermissionError, ConnectionError) as e:
            raise ProbeError(str(e)) from e
    else:
        opened = socket.create_connection((host, port), timeout=timeout)
    with opened as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if size <= 0 or size > 64 << 20:
            raise ProbeError(f"bad response length {size}")
        r = _Reader(_recv_exact(sock, size))
    if r.take(">i") != 1:
        raise ProbeError("correlation id mismatch")
    r.take(">i")  # throttle_time_ms
    brokers = []
    for _ in range(r.take(">i")):
        node_id = r.take(">i")
        bhost = r.string() or ""
        bport = r.take(">i")
        r.string()  # rack
        brokers.append(BrokerInfo(node_id, bhost, bport))
    cluster_id = r.string()
    controller_id = r.take(">i")
    topics = []
    for _ in range(r.take(">i")):
        r.take(">h")  # error code
        name = r.string()
        r.take(">?")  # is_internal
        for _ in range(r.take(">i")):
            r.take(">h")
            r.take(">i")
            r.take(">i")
            for _ in range(2):  # replicas, isr (offline replicas only from v5)
                for _ in range(r.take(">i")):
                    r.take(">i")
        if name is not None:
            topics.append(name)
    return MetadataAnswer(cluster_id, controller_id, tuple(brokers), tuple(topics))


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on (host, port) or the port can't be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False
