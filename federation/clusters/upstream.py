"""Our own pipelined connections to physical brokers.

* :class:`BrokerConnection` — one TCP connection: requests are framed and written at
  once (pipelined), in-flight requests wait in a dict keyed by correlation id, every
  wait has a timeout, and ``close()`` fails every pending request with a reason.
* :class:`ClusterClient` — one physical cluster: its brokers, partition leaders and
  topic ids (refreshed via Metadata, and again whenever a leader moves), its ApiVersions,
  group coordinators, and connections per broker in *lanes* so that a long-polling
  Fetch never sits in front of a Produce on the same socket (a broker handles one
  request per connection at a time).

Requests are forwarded at the client's own version: nothing is downgraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import ssl
import struct
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from kio.index import load_request_schema

from federation.core.errors import ConfigError
from federation.core.model import PhysicalCluster
from federation.protocol import codec
from federation.protocol.errors import ErrorCode
from federation.security import tls
from federation.security.tls import ClusterSecurity

log = logging.getLogger("fedkafka.upstream")

MAX_RESPONSE = 256 << 20
SCRATCH_SIZE = 256 << 10  #: receive buffer of a broker connection (small answers)
BIG_FRAME = 64 << 10  #: answers larger than this are received into a buffer of their own
_LENGTH = struct.Struct(">i")
METADATA_VERSION = 12
API_VERSIONS_VERSION = 3
FIND_COORDINATOR_VERSION = 4
MAX_COORDINATORS = 10_000


class CloseReason(enum.Enum):
    LOCAL = "closed locally"
    PEER = "closed by broker"
    TIMEOUT = "request timed out"
    PROTOCOL = "protocol error"
    CONNECT = "could not connect"


class UpstreamError(Exception):
    """A request could not be completed on a physical broker (retriable for the client)."""

    def __init__(self, reason: str, error_code: int = ErrorCode.NETWORK_EXCEPTION) -> None:
        super().__init__(reason)
        self.error_code = error_code


@dataclass(slots=True)
class _Pending:
    api_key: int
    api_version: int
    future: asyncio.Future[Any]
    sent_at: float
    raw: bool = False  #: answer with the frame body itself, undecoded


class BufferPool:
    """Large receive buffers, used again once nothing refers to them any more.

    A new ``bytearray`` is zero-filled (``calloc``): for Fetch answers of several MiB that
    was ~8 % of the proxy's CPU while consuming, all spent writing zeros over memory the
    socket then overwrites. A pooled buffer is free again when its only references are
    the pool's: every view of it (a frame, the records views ``fetch_wire`` cuts from it,
    the transport holding an answer still being written) holds one, so a buffer is never
    reused while any part of it may still be read. At most ``max_bytes`` are kept; beyond,
    buffers are allocated as before and left to the allocator.
    """

    GRAIN = 1 << 20  #: sizes are rounded up to a multiple of this (fewer distinct sizes)

    def __init__(self, max_bytes: int = 64 << 20, max_buffers: int = 16) -> None:
        self.max_bytes = max_bytes
        self.max_buffers = max_buffers
        self._bufs: list[bytearray] = []
        self._bytes = 0

    def take(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes (contents undefined)."""
        best: bytearray | None = None
        free: list[int] = []  # indexes of free buffers
        bufs = self._bufs
        for i in range(len(bufs)):  # (not enumerate: its reused tuple holds a reference)
            buf = bufs[i]
            # References of a free buffer: the pool's list, ``buf``, getrefcount's argument.
            if sys.getrefcount(buf) <= 3:
                free.append(i)
                if len(buf) >= size and (best is None or len(buf) < len(best)):
                    best = buf
        if best is not None:
            return best
        want = -(-size // self.GRAIN) * self.GRAIN
        if len(self._bufs) >= self.max_buffers or self._bytes + want > self.max_bytes:
            # Make room: drop free buffers (all too small for this frame).
            dropped = set(free)
            kept = [b for i, b in enumerate(self._bufs) if i not in dropped]
            if len(kept) >= self.max_buffers or sum(map(len, kept)) + want > self.max_bytes:
                return bytearray(size)  # not pooled
            self._bufs = kept
            self._bytes = sum(map(len, kept))
        new = bytearray(want)
        self._bufs.append(new)
        self._bytes += want
        return new


#: Receive buffers of large answers, shared by the process's upstream connections.
BUFFERS = BufferPool()


class BrokerConnection(asyncio.BufferedProtocol):
    """One pipelined connection to a physical broker.

    Bytes are received straight into our buffers (``BufferedProtocol``): small answers
    into a scratch buffer they are copied out of, and a large one (a Fetch answer) into a
    buffer of its own from :data:`BUFFERS`, taken once its length prefix is in, that
    becomes the frame itself (a view of it): the records it carries are never copied by the
    proxy (see :mod:`federation.protocol.fetch_wire`).
    """

    def __init__(self, host: str, port: int, client_id: str, label: str) -> None:
        self.on_latency: Callable[[float], None] | None = None
        self.host = host
        self.port = port
        self.client_id = client_id
        self.label = label
        self._transport: asyncio.Transport | None = None
        self._scratch = bytearray(SCRATCH_SIZE)
        self._filled = 0  # bytes of the scratch buffer holding received data
        self._big: bytearray | None = None  # a large frame's body being received
        self._big_got = 0
        self._big_size = 0  # the frame's length (its buffer may be longer: BUFFERS)
        self._pending: dict[int, _Pending] = {}
        self._correlation = itertools.count(1)
        self._closed: CloseReason | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._paused = False

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    async def open(cls, host: str, port: int, client_id: str, label: str,
                   timeout: float = 10.0, security: ClusterSecurity | None = None
                   ) -> BrokerConnection:
        """Connect, with TLS and SASL as the cluster's ``security`` says (security.tls)."""
        loop = asyncio.get_running_loop()
        try:
            ctx = security.client_context() if security is not None else None
            async with asyncio.timeout(timeout):
                _, proto = await loop.create_connection(
                    lambda: cls(host, port, client_id, label), host, port, ssl=ctx,
                    server_hostname=host if ctx is not None else None)
                if security is not None and security.sasl:
                    try:
                        await tls.login(proto, security, timeout, label)
                    except BaseException:
                        proto.close()
                        raise
        except (OSError, TimeoutError, ConfigError, ssl.SSLError) as e:
            raise UpstreamError(f"{label}: cannot connect to {host}:{port}: {e}") from e
        except PermissionError as e:
            raise UpstreamError(str(e), ErrorCode.SASL_AUTHENTICATION_FAILED) from e
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._transport.set_write_buffer_limits(high=4 << 20)

    @property
    def alive(self) -> bool:
        return self._closed is None and self._transport is not None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def close(self, reason: CloseReason = CloseReason.LOCAL) -> None:
        if self._closed is None:
            self._closed = reason
        if self._transport is not None:
            self._transport.close()
        self._fail_all(f"{self.label}: connection {self._closed.value}")

    def _fail_all(self, message: str) -> None:
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if not p.future.done():
                p.future.set_exception(UpstreamError(message))
        for w in self._drain_waiters:
            if not w.done():
                w.set_exception(UpstreamError(message))
        self._drain_waiters.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed is None:
            self._closed = CloseReason.PEER
        self._fail_all(f"{self.label}: connection {self._closed.value}"
                       + (f" ({exc})" if exc else ""))

    # -- flow control --------------------------------------------------------

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()

    async def _drain(self) -> None:
        if self._paused:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(fut)
            await fut

    # -- requests --------------------------------------------------------------

    def send(self, entity: Any, expect_response: bool = True, client_id: str | None = None,
             raw: bool = False) -> asyncio.Future[Any] | None:
        """Write ``entity`` now (pipelined); returns the future of its response entity.

        :param client_id: the request header's client id (the application's, for requests
            forwarded on its behalf); None: this connection's own.
        :param raw: the future's result is the response frame body (``bytes``, correlation
            id first), not decoded: Fetch answers are read by
            :mod:`federation.protocol.fetch_wire` without copying their records.
        """
        if not self.alive or self._transport is None:
            raise UpstreamError(f"{self.label}: connection is closed")
        cid = next(self._correlation) & 0x7FFFFFFF
        parts = codec.encode_request(entity, cid, client_id or self.client_id)
        self._transport.writelines(parts)
        if not expect_response:
            return None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # An answer nobody waits for any more (an abandoned long-poll) must not log
        # "exception never retrieved".
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending[cid] = _Pending(int(entity.__api_key__), int(entity.__version__), fut,
                                      time.monotonic(), raw)
        return fut

    async def wait(self, fut: asyncio.Future[Any], timeout: float) -> Any:
        """Wait for a response sent with :meth:`send`; a timeout closes the connection."""
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            # The broker answers in order: a lost answer means this connection is unusable.
            self.close(CloseReason.TIMEOUT)
            raise UpstreamError(f"{self.label}: no answer within {timeout:.1f}s",
                                ErrorCode.REQUEST_TIMED_OUT) from None

    async def ready(self) -> None:
        """Wait while the socket's write buffer is over its limit (backpressure)."""
        await self._drain()

    async def request(self, entity: Any, timeout: float, client_id: str | None = None) -> Any:
        """Send ``entity`` and wait for its response entity (at most ``timeout`` s)."""
        await self._drain()
        fut = self.send(entity, client_id=client_id)
        assert fut is not None
        return await self.wait(fut, timeout)

    # -- receiving ------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_got:self._big_size]
        return memoryview(self._scratch)[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._big is not None:
            self._big_got += nbytes
            if self._big_got == self._big_size:
                whole, self._big = self._big, None
                self._on_frame(whole if len(whole) == self._big_size
                               else memoryview(whole)[:self._big_size])
            return
        self._filled += nbytes
        buf = self._scratch
        filled = self._filled
        pos = 0
        frames: list[bytes | bytearray] = []
        with memoryview(buf) as view:
            while filled - pos >= 4:
                size: int = _LENGTH.unpack_from(buf, pos)[0]
                if size <= 0 or size > MAX_RESPONSE:
                    log.error("%s: bad frame from broker: length %d", self.label, size)
                    self.close(CloseReason.PROTOCOL)
                    return
                start = pos + 4
                end = start + size
                if end <= filled:
                    frames.append(view[start:end].tobytes())
                    pos = end
                elif size > BIG_FRAME:  # receive the rest straight into the frame
                    big = BUFFERS.take(size)
                    have = filled - start
                    big[:have] = view[start:filled]
                    self._big, self._big_got, self._big_size = big, have, size
                    pos = filled
                    break
                else:
                    break
        if pos:
            left = filled - pos
            if left:
                buf[:left] = buf[pos:filled]
            self._filled = left
        for frame in frames:
            if self._closed is not None:
                return
            self._on_frame(frame)

    def _on_frame(self, frame: bytes | bytearray | memoryview) -> None:
        try:
            cid = codec.peek_correlation_id(frame)
        except codec.CodecError as e:
            log.error("%s: undecodable response: %s", self.label, e.reason)
            self.close(CloseReason.PROTOCOL)
            return
        pending = self._pending.pop(cid, None)
        if pending is None or pending.future.done():
            return  # the waiter gave up (timeout/cancel); drop the late answer
        if self.on_latency is not None:
            self.on_latency(time.monotonic() - pending.sent_at)
        if pending.raw:
            pending.future.set_result(frame)
            return
        try:
            _, entity = codec.decode_response(pending.api_key, pending.api_version, frame)
        except codec.CodecError as e:
            pending.future.set_exception(UpstreamError(
                f"{self.label}: undecodable response: {e.reason}"))
            return
        pending.future.set_result(entity)


@dataclass(slots=True)
class PartitionInfo:
    leader: int
    leader_epoch: int


@dataclass(slots=True)
class ClusterView:
    """What the last Metadata answer said about a physical cluster."""

    brokers: dict[int, tuple[str, int]] = field(default_factory=dict)
    partitions: dict[tuple[str, int], PartitionInfo] = field(default_factory=dict)
    topic_ids: dict[str, uuid.UUID] = field(default_factory=dict)
    topic_names: dict[uuid.UUID, str] = field(default_factory=dict)
    refreshed_at: float = 0.0


class ClusterClient:
    """Connections to and knowledge of one physical cluster."""

    def __init__(self, cluster: PhysicalCluster, client_id: str = "fedkafka-proxy",
                 request_timeout: float = 30.0) -> None:
        self.cluster = cluster
        self.client_id = client_id
        self.request_timeout = request_timeout
        self._security: ClusterSecurity | None = None
        self.view = ClusterView()
        self.api_versions: dict[int, tuple[int, int]] = {}
        self._conns: dict[tuple[int, str], BrokerConnection] = {}
        self._connecting: dict[tuple[int, str], asyncio.Future[BrokerConnection]] = {}
        self._refresh_lock = asyncio.Lock()
        #: group id → coordinator node, the most recently used MAX_COORDINATORS (group ids
        #: come from clients: the cache must not grow with them)
        self._coordinators: OrderedDict[str, int] = OrderedDict()
        self.last_error: str | None = None
        self.on_latency: Callable[[float], None] | None = None
        self.on_error: Callable[[], None] | None = None  #: called on every invalidate()

    @property
    def id(self) -> str:
        return self.cluster.id

    @property
    def security(self) -> ClusterSecurity:
        """The cluster's ``security`` of the map, parsed (every connection applies it)."""
        if self._security is None:
            try:
                self._security = tls.cluster_security(self.cluster.security, self.id)
            except ConfigError as e:
                raise UpstreamError(str(e)) from e
        return self._security

    def bootstrap_addresses(self) -> list[tuple[str, int]]:
        out = []
        for item in self.cluster.bootstrap.split(","):
            host, _, port = item.strip().rpartition(":")
            out.append((host, int(port)))
        return out

    # -- connections ---------------------------------------------------------

    async def _bootstrap_conn(self) -> BrokerConnection:
        errors = []
        for host, port in self.bootstrap_addresses():
            try:
                return await BrokerConnection.open(host, port, self.client_id,
                                                   f"{self.id}/bootstrap", timeout=5.0,
                                                   security=self.security)
            except UpstreamError as e:
                errors.append(str(e))
        raise UpstreamError(f"cluster {self.id} unreachable: {'; '.join(errors)}")

    async def connection(self, node_id: int, lane: str = "main") -> BrokerConnection:
        key = (node_id, lane)
        conn = self._conns.get(key)
        if conn is not None and conn.alive:
            return conn
        waiting = self._connecting.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        fut: asyncio.Future[BrokerConnection] = asyncio.get_running_loop().create_future()
        self._connecting[key] = fut
        try:
            if node_id not in self.view.brokers:
                await self.refresh()
            if node_id not in self.view.brokers:
                raise UpstreamError(f"cluster {self.id} has no broker {node_id}",
                                    ErrorCode.NOT_LEADER_OR_FOLLOWER)
            host, port = self.view.brokers[node_id]
            conn = await BrokerConnection.open(host, port, self.client_id,
                                               f"{self.id}/{node_id}/{lane}",
                                               security=self.security)
            self._conns[key] = conn
            fut.set_result(conn)
            return conn
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved
            raise
        finally:
            del self._connecting[key]

    def dedicated(self) -> _DedicatedLanes:
        """Connections owned by one client connection (for long-polling Fetch)."""
        return _DedicatedLanes(self)

    async def open_to(self, node_id: int, label: str) -> BrokerConnection:
        if node_id not in self.view.brokers:
            await self.refresh()
        if node_id not in self.view.brokers:
            raise UpstreamError(f"cluster {self.id} has no broker {node_id}",
                                ErrorCode.NOT_LEADER_OR_FOLLOWER)
        host, port = self.view.brokers[node_id]
        conn = await BrokerConnection.open(host, port, self.client_id, label,
                                           security=self.security)
        conn.on_latency = self.on_latency
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    # -- metadata ------------------------------------------------------------

    async def refresh(self, force: bool = True) -> ClusterView:
        """Re-read brokers, leaders and topic ids (coalesced when called concurrently)."""
        started = time.monotonic()
        async with self._refresh_lock:
            if self.view.refreshed_at >= started and not force:
                return self.view
            if self.view.refreshed_at >= started:
                return self.view
            conn = await self._any_conn()
            try:
                if not self.api_versions:
                    await self._load_api_versions(conn)
                schema: Any = load_request_schema(3, METADATA_VERSION)
                req = schema(topics=None, allow_auto_topic_creation=False,
                             include_topic_authorized_operations=False)
                resp = await conn.request(req, self.request_timeout)
            except UpstreamError as e:
                self.last_error = str(e)
                raise
            view = ClusterView(refreshed_at=time.monotonic())
            for b in resp.brokers:
                view.brokers[int(b.node_id)] = (b.host, int(b.port))
            for t in resp.topics:
                if t.name is None:
                    continue
                view.topic_ids[t.name] = t.topic_id
                view.topic_names[t.topic_id] = t.name
                for p in t.partitions:
                    view.partitions[(t.name, int(p.partition_index))] = PartitionInfo(
                        int(p.leader_id), int(p.leader_epoch))
            self.view = view
            self.last_error = None
            return view

    async def any_connection(self) -> BrokerConnection:
        """A shared connection to any live broker of this cluster."""
        return await self._any_conn()

    async def _any_conn(self) -> BrokerConnection:
        for key, conn in self._conns.items():
            if conn.alive and key[1] == "main":
                return conn
        for node_id in list(self.view.brokers):
            try:
                return await self.connection(node_id, "main")
            except UpstreamError:
                continue
        conn = await self._bootstrap_conn()
        self._conns[(-1, "main")] = conn
        return conn

    async def _load_api_versions(self, conn: BrokerConnection) -> None:
        schema: Any = load_request_schema(18, API_VERSIONS_VERSION)
        req = schema(client_software_name="fedkafka", client_software_version="0.1.0")
        resp = await conn.request(req, self.request_timeout)
        self.api_versions = {int(k.api_key): (int(k.min_version), int(k.max_version))
                             for k in resp.api_keys}

    async def leader(self, topic: str, partition: int) -> PartitionInfo:
        info = self.view.partitions.get((topic, partition))
        if info is None or info.leader < 0:
            await self.refresh()
            info = self.view.partitions.get((topic, partition))
        if info is None:
            raise UpstreamError(f"{self.id}: no partition {topic}-{partition}",
                                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
        if info.leader < 0:
            raise UpstreamError(f"{self.id}: {topic}-{partition} has no leader",
                                ErrorCode.LEADER_NOT_AVAILABLE)
        return info

    def invalidate(self) -> None:
        """Forget leaders (after NOT_LEADER and similar): the next lookup refreshes."""
        if self.on_error is not None:
            self.on_error()
        self.view.refreshed_at = 0.0
        for info in self.view.partitions.values():
            info.leader = -1

    # -- group coordinators ----------------------------------------------------

    async def coordinator(self, key: str, key_type: int = 0) -> int:
        """Node id of the coordinator for group ``key`` on this cluster (cached)."""
        cached = self._coordinators.get(key)
        if cached is not None:
            self._coordinators.move_to_end(key)
        if cached is not None:
            return cached
        conn = await self._any_conn()
        schema: Any = load_request_schema(10, FIND_COORDINATOR_VERSION)
        req = schema(key_type=key_type, coordinator_keys=(key,))
        deadline = time.monotonic() + self.request_timeout
        while True:
            resp = await conn.request(req, self.request_timeout)
            c = resp.coordinators[0]
            if int(c.error_code) == 0:
                self.view.brokers.setdefault(int(c.node_id), (c.host, int(c.port)))
                self._coordinators[key] = int(c.node_id)
                while len(self._coordinators) > MAX_COORDINATORS:
                    self._coordinators.popitem(last=False)
                return int(c.node_id)
            if int(c.error_code) != ErrorCode.COORDINATOR_NOT_AVAILABLE or (
                    time.monotonic() > deadline):
                raise UpstreamError(f"{self.id}: FindCoordinator({key}) failed: "
                                    f"{c.error_code}", int(c.error_code))
            await asyncio.sleep(0.2)

    def forget_coordinator(self, key: str) -> None:
        self._coordinators.pop(key, None)


class _DedicatedLanes:
    """Per-client-connection upstream connections (one per broker), closed with it."""

    def __init__(self, client: ClusterClient) -> None:
        self.client = client
        self._conns: dict[int, BrokerConnection] = {}

    async def get(self, node_id: int) -> BrokerConnection:
        conn = self._conns.get(node_id)
        if conn is not None and conn.alive:
            return conn
        conn = await self.client.open_to(node_id, f"{self.client.id}/{node_id}/fetch")
        self._conns[node_id] = conn
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
