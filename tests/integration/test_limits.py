"""Resource limits against a live proxy: connection floods, slowloris, idle connections and
large frames before authentication close only the connections concerned; other clients
keep being served."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kio.index import load_request_schema

from federation.protocol import decode_response, encode_request

from .inprocess import InProcessProxy
from .proxy_process import federation_port

pytestmark = pytest.mark.integration


def _closed_within(sock: socket.socket, seconds: float) -> bool:
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


def _metadata(port: int) -> int:
    """One ApiVersions round trip (served before SASL) on a new connection: APIs listed."""
    schema: Any = load_request_schema(18, 3)
    req = schema(client_software_name="fk-limits", client_software_version="1")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"".join(encode_request(req, 1, "fk-limits")))
        size = struct.unpack(">i", _exact(sock, 4))[0]
        _, resp = decode_response(18, 3, _exact(sock, size))
    return len(resp.api_keys)


def _exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "closed"
        data += chunk
    return data


@pytest.fixture(scope="module")
def limited(local_federation: dict[str, Any]) -> Iterator[int]:
    port = federation_port(local_federation, 30)  # the test range, not an ephemeral port
    limits = {"max_connections": 40, "idle_timeout": 3.0, "frame_timeout": 2.0,
              "max_frame_size_unauthenticated": 4096}
    with InProcessProxy(local_federation["store"], port, pool="limits", node_id=1960,
                        limits=limits, sasl_required=True):
        yield port


def test_a_connection_flood_is_refused_and_others_are_served(limited: int) -> None:
    held = [socket.create_connection(("127.0.0.1", limited)) for _ in range(20)]
    flood: list[socket.socket] = []
    try:
        for _ in range(60):
            flood.append(socket.create_connection(("127.0.0.1", limited)))
        # 20 held + 60 new against a limit of 40: at least 40 of the new ones are refused
        # (waited for, not timed: a loaded machine accepts slowly).
        refused: set[int] = set()
        deadline = time.monotonic() + 60
        while len(refused) < 40 and time.monotonic() < deadline:
            for i, s in enumerate(flood):
                if i not in refused and _closed_within(s, 0.05):
                    refused.add(i)
        assert len(refused) >= 40, f"only {len(refused)} of 60 flood connections were refused"
    finally:
        for s in flood:
            s.close()
    # Capacity comes back as connections go; a new client is served.
    deadline = time.monotonic() + 30
    while True:
        try:
            assert _metadata(limited) >= 1
            break
        except (AssertionError, OSError):
            assert time.monotonic() < deadline, "the proxy did not serve again"
            time.sleep(0.2)
    for s in held:
        s.close()


def test_slowloris_and_idle_connections_are_closed(limited: int) -> None:
    slow = socket.create_connection(("127.0.0.1", limited))
    idle = socket.create_connection(("127.0.0.1", limited))
    try:
        slow.sendall(struct.pack(">i", 100) + b"\x00\x03")  # 2 of 100 bytes, then nothing
        assert _metadata(limited) >= 1  # others are served meanwhile
        assert _closed_within(slow, 15), "a frame that never completes must close"
        assert _closed_within(idle, 20), "an idle connection must close"
    finally:
        slow.close()
        idle.close()


def test_large_frames_before_authentication_close_the_connection(limited: int) -> None:
    with socket.create_connection(("127.0.0.1", limited)) as sock:
        sock.sendall(struct.pack(">i", 100 << 20))  # announces 100 MiB, before SASL
        assert _closed_within(sock, 5)
    assert _metadata(limited) >= 1
