"""Attacks on a live proxy (a process of its own, SASL required): a connection flood,
slowloris, a CreateTopics asking for 2^31-1 partitions, a FindCoordinator with 2 million
keys, 100 MiB frames before authentication. During each, a real client (librdkafka, SCRAM)
produces and consumes through the same proxy and gets every record back; the proxy's
resident memory never grows by more than MEMORY_BOUND over its warmed-up size."""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation.protocol.errors import ErrorCode

from .elastic_tools import wait_until
from .fedtopics import backend_of, create_logical_topic, route_to_proxy
from .proxy_process import (
    ProxyProcess,
    authenticate,
    client_config,
    closed_within,
    federation_port,
    request,
    round_trip,
    sasl_user,
)

pytestmark = pytest.mark.integration

USER, PASSWORD = "limits-user", "limits-secret"
TOPIC = "limits-canary"
NODE_ID = 1961
RECORDS = 50
#: The proxy's high-water resident memory stays within this of its size once warmed up
#: (connections cost tens of KiB each; no frame of an attack is ever held whole).
MEMORY_BOUND = 48 << 20
POLICY_VIOLATION = 44


@pytest.fixture(scope="module")
def proxy(local_federation: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ProxyProcess]:
    create_logical_topic(local_federation, TOPIC, 2)
    port = federation_port(local_federation, 31)
    route_to_proxy(local_federation, "resource-limits", NODE_ID, port, "fk-limits-.*")
    with sasl_user(local_federation, USER, PASSWORD):
        proc = ProxyProcess(local_federation["store"], port,
                            federation_port(local_federation, 32), NODE_ID,
                            "resource-limits", Path(tmp_path_factory.mktemp("limits")),
                            sasl_required=True,
                            limits={"max_connections": 300, "max_connections_per_address": 250,
                                    "frame_timeout": 3.0, "idle_timeout": 60.0})
        proc.start()
        try:
            yield proc
        finally:
            proc.stop()


@pytest.fixture(scope="module")
def warmed(proxy: ProxyProcess) -> int:
    """The proxy's RSS after serving a client (its working set), in bytes."""
    assert round_trip(_canary(proxy), TOPIC, RECORDS) == RECORDS
    return proxy.memory()[0]


def _canary(proxy: ProxyProcess) -> dict[str, Any]:
    return client_config(proxy.bootstrap, "fk-limits-canary", USER, PASSWORD)


class _During:
    """A canary round trip on its own thread while the test attacks."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self.got: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(proxy,), daemon=True)
        self._thread.start()

    def _run(self, proxy: ProxyProcess) -> None:
        try:
            self.got = round_trip(_canary(proxy), TOPIC, RECORDS)
        except BaseException as e:
            self.error = e

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self) -> int | None:
        self._thread.join(240)
        if self.error is not None:
            raise self.error
        return self.got


def _check_memory(proxy: ProxyProcess, warmed: int) -> None:
    rss, peak = proxy.memory()
    print(f"proxy memory: warmed {warmed >> 20} MiB, now {rss >> 20} MiB, "
          f"high-water mark {peak >> 20} MiB")
    assert peak - warmed <= MEMORY_BOUND, (
        f"the proxy's resident memory peaked at {peak >> 20} MiB, {(peak - warmed) >> 20} MiB "
        f"over its warmed-up {warmed >> 20} MiB")
    assert proxy.alive()


def _connect(port: int, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30,
                                    source_address=(source, 0))
    return sock


def _refused(socks: list[socket.socket], want: int) -> int:
    """How many of ``socks`` the proxy closed, waiting (bounded) until ``want`` are."""
    refused: set[socket.socket] = set()
    deadline = time.monotonic() + 60
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        while len(refused) < want and time.monotonic() < deadline:
            for key, _ in sel.select(0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    closed = sock.recv(65536) == b""
                except OSError:
                    closed = True
                if closed:
                    refused.add(sock)
                    sel.unregister(sock)
    return len(refused)


def test_connection_flood(proxy: ProxyProcess, warmed: int) -> None:
    before = proxy.metric("fedkafka_proxy_limit_hits_total",
                          limit="max_connections_per_address")
    flood = [_connect(proxy.port, "127.0.0.2") for _ in range(300)]  # 250 per address
    more: list[socket.socket] = []
    try:
        assert _refused(flood, 50) >= 50
        canary = _During(proxy)  # from 127.0.0.1: its own address budget
        assert canary.result() == RECORDS
        # The proxy-wide limit (300): 250 held from .2, so at most 50 more from .3.
        more = [_connect(proxy.port, "127.0.0.3") for _ in range(80)]
        assert _refused(more, 30) >= 30
        assert proxy.metric("fedkafka_proxy_limit_hits_total",
                            limit="max_connections_per_address") >= before + 50
        assert proxy.metric("fedkafka_proxy_limit_hits_total", limit="max_connections") >= 30
        _check_memory(proxy, warmed)
    finally:
        for s in flood + more:
            s.close()
    # Capacity comes back as the flood goes.
    wait_until(lambda: proxy.metric("fedkafka_proxy_connections") < 20, 60,
               "the flood's connections to be released")
    assert round_trip(_canary(proxy), TOPIC, RECORDS) == RECORDS


def test_slowloris(proxy: ProxyProcess, warmed: int) -> None:
    before = proxy.metric("fedkafka_proxy_limit_hits_total", limit="frame_timeout")
    slow = [_connect(proxy.port, "127.0.0.4") for _ in range(150)]
    stop = threading.Event()

    def trickle() -> None:  # one byte of a 1000-byte frame per connection, now and then
        for s in slow:
            try:
                s.sendall(struct.pack(">i", 1000) + b"\x00\x12")
            except OSError:
                pass
        while not stop.wait(0.5):
            for s in slow:
                try:
                    s.send(b"\x00")
                except OSError:
                    pass

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        canary = _During(proxy)
        assert canary.result() == RECORDS
        assert _refused(slow, len(slow)) == len(slow), "every slow frame is cut off"
        assert proxy.metric("fedkafka_proxy_limit_hits_total",
                            limit="frame_timeout") >= before + len(slow)
        _check_memory(proxy, warmed)
    finally:
        stop.set()
        thread.join(10)
        for s in slow:
            s.close()


def _authenticated(proxy: ProxyProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=60)
    authenticate(sock, USER, PASSWORD)
    return sock


def test_create_topics_with_2_31_partitions_is_refused(
        proxy: ProxyProcess, warmed: int, local_federation: dict[str, Any]) -> None:
    # CreateTopics v2 with one topic: 33 bytes of body after the header.
    name = "limits-huge"
    canary = _During(proxy)
    attacks = 0
    with _authenticated(proxy) as sock:
        while canary.running or attacks < 20:
            resp = request(sock, 19, 2, correlation_id=attacks, topics=(_creatable(name),),
                           timeout=_ms(30000), validate_only=False)
            (result,) = resp.topics
            assert result.error_code == POLICY_VIOLATION, result
            assert "max_partitions_per_request" in result.error_message
            grow = request(sock, 37, 1, correlation_id=attacks,
                           topics=(_partitions(TOPIC, 2**31 - 1),), timeout=_ms(30000),
                           validate_only=False)
            assert grow.results[0].error_code == POLICY_VIOLATION, grow
            attacks += 1
    assert canary.result() == RECORDS
    backend = backend_of(local_federation)
    try:
        fmap = backend.load()
        assert fmap is not None
        assert name not in fmap.topics
        assert len(fmap.topics[TOPIC].partitions) == 2
    finally:
        backend.close()
    assert proxy.metric("fedkafka_proxy_limit_hits_total",
                        limit="max_partitions_per_request") >= 2 * attacks
    _check_memory(proxy, warmed)


def _ms(value: int) -> Any:
    import datetime

    return datetime.timedelta(milliseconds=value)


def _creatable(name: str) -> Any:
    from kio.schema.create_topics.v2.request import CreatableTopic

    build: Any = CreatableTopic
    return build(name=name, num_partitions=2**31 - 1, replication_factor=-1,
                          assignments=(), configs=())


def _partitions(name: str, count: int) -> Any:
    from kio.schema.create_partitions.v1.request import CreatePartitionsTopic

    build: Any = CreatePartitionsTopic
    return build(name=name, count=count, assignments=None)


def _find_coordinator(keys: int) -> bytes:
    """A framed FindCoordinator v4 with ``keys`` two-byte keys (authenticated use)."""
    head = struct.pack(">hhih", 10, 4, 9, 9) + b"fk-limits" + b"\x00"
    count, varint = keys + 1, bytearray()
    while count >= 0x80:
        varint.append(count & 0x7F | 0x80)
        count >>= 7
    varint.append(count)
    body = head + b"\x00" + bytes(varint) + b"\x03ab" * keys + b"\x00"
    return struct.pack(">i", len(body)) + body


def test_find_coordinator_with_2_million_keys_is_refused(
        proxy: ProxyProcess, warmed: int) -> None:
    before = proxy.metric("fedkafka_proxy_limit_hits_total", limit="max_array_elements")
    frame = _find_coordinator(2_000_000)  # 6 MB
    canary = _During(proxy)
    attacks = 0
    while canary.running or attacks < 3:
        with _authenticated(proxy) as sock:
            try:
                sock.sendall(frame)
            except OSError:
                pass  # cut off while sending: refused all the same
            assert closed_within(sock, 60), "the request is refused: the connection closes"
        attacks += 1
    assert canary.result() == RECORDS
    assert proxy.metric("fedkafka_proxy_limit_hits_total",
                        limit="max_array_elements") == before + attacks
    # A FindCoordinator of a sane size is still served on an authenticated connection.
    with _authenticated(proxy) as sock:
        resp = request(sock, 10, 4, key_type=0, coordinator_keys=("g1", "g2"))
        assert [int(c.error_code) for c in resp.coordinators] == [ErrorCode.NONE] * 2
    _check_memory(proxy, warmed)


def test_100_mib_frames_before_authentication_are_refused(
        proxy: ProxyProcess, warmed: int) -> None:
    before = proxy.metric("fedkafka_proxy_limit_hits_total",
                          limit="max_frame_size_unauthenticated")
    canary = _During(proxy)
    chunk = b"\x00" * (1 << 20)
    sent = 0
    while canary.running or sent < 20:
        with _connect(proxy.port, "127.0.0.5") as sock:
            try:
                sock.sendall(struct.pack(">i", 100 << 20))
                for _ in range(8):  # what it can of the 100 MiB before the proxy cuts it off
                    sock.sendall(chunk)
            except OSError:
                pass
            assert closed_within(sock, 30)
        sent += 1
    assert canary.result() == RECORDS
    assert proxy.metric("fedkafka_proxy_limit_hits_total",
                        limit="max_frame_size_unauthenticated") == before + sent
    _check_memory(proxy, warmed)


def test_negative_and_huge_client_timeouts_are_clamped(proxy: ProxyProcess,
                                                       warmed: int) -> None:
    """Produce and Fetch with timeouts of -2^31 and 2^31-1 ms are served like sane ones:
    no upstream wait times out, no upstream connection is dropped and re-made."""
    import random

    from kio.schema.fetch.v12 import request as fetch
    from kio.schema.produce.v9 import request as produce

    from federation.tooling.fuzz import record_batch

    upstream_errors = proxy.metric("fedkafka_proxy_upstream_errors_total")
    clamped = proxy.metric("fedkafka_proxy_limit_hits_total", limit="max_client_timeout")
    waits = proxy.metric("fedkafka_proxy_limit_hits_total", limit="max_fetch_wait")
    rng = random.Random(7)
    part: Any = produce.PartitionProduceData
    topic: Any = produce.TopicProduceData
    fetch_topic: Any = fetch.FetchTopic
    fetch_part: Any = fetch.FetchPartition
    rounds = 20
    with _authenticated(proxy) as sock:
        for i in range(rounds):
            timeout = -(2**31) if i % 2 else 2**31 - 1
            resp = request(sock, 0, 9, correlation_id=i, transactional_id=None, acks=1,
                           timeout=_ms(timeout), topic_data=(topic(
                               name=TOPIC, partition_data=(part(
                                   index=0, records=record_batch(rng, 2)),)),))
            (result,) = resp.responses[0].partition_responses
            assert result.error_code == 0, result
            got = request(sock, 1, 12, correlation_id=i, cluster_id=None, replica_id=-1,
                          max_wait=_ms(timeout), min_bytes=1, max_bytes=1 << 20,
                          isolation_level=0, session_id=0, session_epoch=-1,
                          topics=(fetch_topic(topic=TOPIC, partitions=(fetch_part(
                              partition=0, current_leader_epoch=-1,
                              fetch_offset=int(result.base_offset), last_fetched_epoch=-1,
                              log_start_offset=-1, partition_max_bytes=1 << 20),)),),
                          forgotten_topics_data=(), rack_id="")
            assert got.error_code == 0 and got.responses[0].partitions[0].error_code == 0, got
            assert got.responses[0].partitions[0].records  # the batch just written
    assert proxy.metric("fedkafka_proxy_limit_hits_total",
                        limit="max_client_timeout") == clamped + rounds
    assert proxy.metric("fedkafka_proxy_limit_hits_total",
                        limit="max_fetch_wait") == waits + rounds
    assert proxy.metric("fedkafka_proxy_upstream_errors_total") == upstream_errors
    _check_memory(proxy, warmed)
