"""The proxy process: a thin asyncio server around the sans-IO protocol core.

One :class:`ClientConnection` per client socket: bytes → frames (bounded size) →
decoded requests → :class:`~federation.proxy.handlers.Session` → responses written in
request order. A malformed frame closes that one connection with a logged reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

from federation.clusters import admin
from federation.clusters.upstream import BrokerConnection, CloseReason, ClusterClient, UpstreamError
from federation.controller import intents
from federation.controller.rolls import PhysKey, fenced_partitions, phys_key, phys_key_text
from federation.core.model import FederationMap, ProxyEndpoint, Segment
from federation.nameservice.service import serving
from federation.plugin import Plugins, get_plugins, parse_store
from federation.protocol import codec, fetch_wire
from federation.protocol.errors import ErrorCode
from federation.protocol.framing import FrameError, FrameReader, FrameTooLarge
from federation.proxy import apis, core
from federation.proxy.admin_handlers import submitter
from federation.proxy.autocreate import AutoCreator
from federation.proxy.config import ProxyConfig
from federation.proxy.handlers import Session
from federation.proxy.limits import idle_reason
from federation.proxy.metrics import ProxyMetrics
from federation.security import tls
from federation.store.maplayout import changed_topics
from federation.store.mapstore import MetadataBackend

log = logging.getLogger("fedkafka.proxy")

#: The APIs and versions implemented end to end (the registry's: federation.proxy.apis).
CAPS = apis.CAPS
#: Client ids a proxy remembers having served (for operators and tests; bounded).
MAX_CLIENT_IDS = 1024
#: How long after seeing a roll a proxy checks writes to the new segment for retries of
#: writes the sealed segment already holds (a lost acknowledgement's retry comes within
#: the producer's delivery timeout, 120 s by default).
ROLL_DEDUP_SECONDS = 180.0
#: Longest a fence report waits for the proxy's writes in flight to the fenced partitions.
FENCE_DRAIN_SECONDS = 5.0


class ProxyState:
    """What every connection of one proxy shares: config, current map, upstream clients."""

    def __init__(self, config: ProxyConfig, fmap: FederationMap,
                 plugins: Plugins | None = None, backend: MetadataBackend | None = None
                 ) -> None:
        self.config = config
        self.fmap = fmap
        self.plugins = plugins or get_plugins()
        if backend is None:
            name, options = parse_store(config.store)
            backend = self.plugins.backend(name, **options)
        self.backend: MetadataBackend = backend
        self.metrics = ProxyMetrics()
        self.clusters: dict[str, ClusterClient] = {}
        self.request_timeout = config.request_timeout
        self.cluster_id = config.federation_name
        self.store_ok = True
        self.sessions: set[Session] = set()
        self.connections: set[ClientConnection] = set()
        self._advertised: dict[int, tuple[int, int]] | None = None
        # Writes per physical partition, for rolls (docs/adr/0011-rolls.md):
        self.inflight: dict[PhysKey, int] = {}  #: produce requests sent, not answered
        self.acked: dict[PhysKey, int] = {}  #: end offset of the last acknowledged write
        self.ceilings: dict[PhysKey, int] = {}  #: reported for a fence: ack nothing beyond
        self.member_id: str | None = None  #: set when registered in the store
        self.member_data: dict[str, Any] = {}
        self._member_lock: asyncio.Lock | None = None
        self._report_task: asyncio.Task[None] | None = None
        self._version_task: asyncio.Task[None] | None = None
        self.auto_creator = AutoCreator(self)  #: topics created on demand (ADR 0013)
        #: new active segment → (the segment its roll sealed, when this proxy saw the roll)
        self.recent_rolls: dict[PhysKey, tuple[Segment, float]] = {}
        self._sealed_states: dict[PhysKey, asyncio.Future[dict[int, tuple[int, int]]]] = {}
        #: (new segment, producer id) whose first write there was in sequence
        self.roll_established: set[tuple[PhysKey, int]] = set()
        #: client.id → connections that announced it (the most recent MAX_CLIENT_IDS ids)
        self.clients_seen: dict[str, int] = {}
        self.per_address: dict[str, int] = {}  #: source address → client connections
        #: topic → its fenced partitions' active segments, as of map ``_fenced_version``
        self._fenced: dict[str, set[PhysKey]] = {}
        self._fenced_version = -1
        self._gone_acked: set[PhysKey] = set()  #: no longer active, a write still in flight
        self.metrics.map_version.set(fmap.version)
        self.metrics.map_age.set(time.time())
        self.metrics.store_healthy.set(1)
        self.metrics.info.labels(str(config.node_id), config.pool,
                                 ",".join(sorted(config.roles))).set(1)

    # -- map --------------------------------------------------------------------

    def set_map(self, fmap: FederationMap) -> None:
        if fmap.version < self.fmap.version:
            return
        old = self.fmap
        self.fmap = fmap
        if old.users is not fmap.users and old.users != fmap.users:
            self._advertised = None  # SASL is advertised while a mechanism is offered
        # Work proportional to the change: unchanged parts are shared between versions.
        for cid, client in (list(self.clusters.items()) if old.clusters is not fmap.clusters
                            else ()):
            new = fmap.clusters.get(cid)
            if new is None or new.bootstrap != client.cluster.bootstrap or (
                    new.security != client.cluster.security):  # reconnect with the new one
                client.close()
                del self.clusters[cid]
            else:
                client.cluster = new
        self.metrics.map_version.set(fmap.version)
        self.metrics.map_age.set(time.time())
        if old.version != fmap.version:
            log.info("serving map version %d (was %d)", fmap.version, old.version)
            changed, _ = changed_topics(old, fmap)
            self._after_map_change(fmap, old, changed)
            self._note_rolls(old, fmap, changed)
            self._report_version()

    def admit(self, address: str) -> str | None:
        """Count a new client connection from ``address``; why it is refused, if it is."""
        limits = self.config.limits
        if len(self.connections) >= limits.max_connections:
            self.metrics.limit_hit("max_connections")
            return f"the proxy holds {len(self.connections)} connections (limits.max_connections)"
        count = self.per_address.get(address, 0)
        if count >= limits.max_connections_per_address:
            self.metrics.limit_hit("max_connections_per_address")
            return (f"{count} connections from {address} already "
                    "(limits.max_connections_per_address)")
        self.per_address[address] = count + 1
        return None

    def release(self, address: str) -> None:
        left = self.per_address.get(address, 0) - 1
        if left > 0:
            self.per_address[address] = left
        else:
            self.per_address.pop(address, None)

    def check_timeouts(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            conn.check_timeouts(now)

    def saw_client(self, client_id: str | None) -> None:
        key = client_id or ""
        count = self.clients_seen.pop(key, 0) + 1
        self.clients_seen[key] = count  # most recent last
        if len(self.clients_seen) > MAX_CLIENT_IDS:
            del self.clients_seen[next(iter(self.clients_seen))]

    # -- rolls: fences and acknowledged offsets ---------------------------------------

    def fenced_keys(self, fmap: FederationMap) -> set[PhysKey]:
        if fmap is self.fmap and self._fenced_version == fmap.version:
            return set().union(*self._fenced.values())  # kept up to date by set_map
        return {phys_key(lp.active) for _, lp in fenced_partitions(fmap)}

    def _after_map_change(self, fmap: FederationMap, old: FederationMap | None = None,
                          changed: Iterable[str] | None = None) -> None:
        """Fences, ceilings and acknowledged offsets after a map change: only the topics
        ``changed`` since ``old`` are looked at (all of them without ``old``)."""
        gone: set[PhysKey] = set(self._gone_acked)
        if old is None or changed is None or self._fenced_version != old.version:
            self._fenced = {}
            for t in fmap.topics.values():
                keys = {phys_key(lp.active) for lp in t.partitions if lp.fence is not None}
                if keys:
                    self._fenced[t.name] = keys
            live = {phys_key(lp.active) for t in fmap.topics.values() for lp in t.partitions}
            gone |= {k for k in self.acked if k not in live}
        else:
            for name in changed:
                topic = fmap.topics.get(name)
                keys = ({phys_key(lp.active) for lp in topic.partitions if lp.fence is not None}
                        if topic is not None else set())
                if keys:
                    self._fenced[name] = keys
                else:
                    self._fenced.pop(name, None)
                was = old.topics.get(name)
                if was is not None:
                    now_active = ({phys_key(lp.active) for lp in topic.partitions}
                                  if topic is not None else set())
                    gone |= {phys_key(lp.active) for lp in was.partitions} - now_active
        self._fenced_version = fmap.version
        fenced = self.fenced_keys(fmap)
        # Ceilings of partitions no longer fenced are enforced by their seal in the map.
        for key in [k for k in self.ceilings if k not in fenced]:
            del self.ceilings[key]
        self._gone_acked = {k for k in gone if k in self.inflight}  # dropped once answered
        for key in gone - self._gone_acked:
            self.acked.pop(key, None)
        if fenced and self.member_id is not None and (
                self._report_task is None or self._report_task.done()):
            self._report_task = asyncio.get_running_loop().create_task(self._report_fences())

    def _note_rolls(self, old: FederationMap, new: FederationMap,
                    changed: Iterable[str] | None = None) -> None:
        """Remember partitions rolled between two maps (new active → sealed predecessor),
        for a while: retries of writes whose acknowledgement was lost arrive then.

        Only topics ``changed`` are looked at (every topic without it).
        """
        now = time.monotonic()
        for key in [k for k, (_, at) in self.recent_rolls.items() if now - at > ROLL_DEDUP_SECONDS]:
            del self.recent_rolls[key]
            self._sealed_states.pop(key, None)
            self.roll_established = {e for e in self.roll_established if e[0] != key}
        for name in (new.topics if changed is None else changed):
            topic = new.topics.get(name)
            before = old.topics.get(name)
            if topic is None or before is None or before.topic_id != topic.topic_id:
                continue
            for lp, was in zip(topic.partitions, before.partitions, strict=False):
                if len(lp.segments) < 2 or lp.active == was.active:
                    continue
                sealed = lp.segments[-2]
                if phys_key(sealed) == phys_key(was.active) and (
                        sealed.physical_start == was.active.physical_start):
                    self.recent_rolls[phys_key(lp.active)] = (sealed, now)

    async def sealed_producers(self, key: PhysKey) -> dict[int, tuple[int, int]]:
        """Producer states of the segment sealed just before the active one at ``key``
        (empty when unknown, or when anything lies beyond its seal)."""
        fut = self._sealed_states.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._load_sealed_producers(key))
            self._sealed_states[key] = fut
        return await asyncio.shield(fut)

    async def _load_sealed_producers(self, key: PhysKey) -> dict[int, tuple[int, int]]:
        from federation.clusters.offsets import list_offsets, producer_states

        entry = self.recent_rolls.get(key)
        if entry is None:
            return {}
        sealed = entry[0]
        try:
            client = self.cluster(sealed.cluster)
            end = (await list_offsets(client, [(sealed.topic, sealed.partition)],
                                      timeout=self.request_timeout))
            if end.get((sealed.topic, sealed.partition)) != sealed.physical_end:
                return {}  # a late write lies beyond the seal: its producer state misleads
            return await producer_states(client, sealed.topic, sealed.partition,
                                         self.request_timeout)
        except UpstreamError as e:
            log.info("no producer states for the sealed %s/%s/%d (%s): retried writes into "
                     "its successor are not de-duplicated", sealed.cluster, sealed.topic,
                     sealed.partition, e)
            return {}

    def _report_version(self) -> None:
        """Tell the store, through this proxy's member record, which map version it serves:
        admin requests answer once every proxy serves their change (read-your-writes)."""
        if self.member_id is not None and (self._version_task is None
                                           or self._version_task.done()):
            self._version_task = asyncio.get_running_loop().create_task(self._write_version())

    async def _write_version(self) -> None:
        """One member write at a time; the latest version wins (versions only grow)."""
        while self.member_id is not None:
            version = self.fmap.version
            if self.member_data.get("map_version") == version:
                return
            self.member_data = {**self.member_data, "map_version": version}
            try:
                await self._write_member()
            except Exception as e:  # noqa: BLE001 - the store may be away; next map retries
                log.warning("could not report map version %d to the store: %s", version, e)
                self.member_data = {k: v for k, v in self.member_data.items()
                                    if k != "map_version"}
                return

    async def _write_member(self) -> None:
        """Write this proxy's member record: one write at a time, always the latest data
        (a fence report and a map version written concurrently could else land in the
        wrong order and the older record hide the newer)."""
        if self._member_lock is None:
            self._member_lock = asyncio.Lock()
        async with self._member_lock:
            assert self.member_id is not None
            await asyncio.to_thread(self.backend.register_member, "proxy", self.member_id,
                                    dict(self.member_data))

    async def _report_fences(self) -> None:
        """Tell the controller, through the store, what this proxy acknowledged on every
        fenced partition, once its writes in flight there are answered (bounded wait)."""
        loop = asyncio.get_running_loop()
        reported = -1
        while True:
            fmap = self.fmap
            fenced = self.fenced_keys(fmap)
            if not fenced or fmap.version <= reported:
                return
            deadline = loop.time() + FENCE_DRAIN_SECONDS
            while any(self.inflight.get(k) for k in fenced) and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.005)  # a poll: answers arrive on other tasks
            fmap = self.fmap
            fenced = self.fenced_keys(fmap)
            acked = {}
            for key in fenced:  # from here on, nothing beyond these is acknowledged
                end = self.acked.get(key, -1)
                self.ceilings[key] = max(end, 0)
                acked[phys_key_text(key)] = end
            data = {**self.member_data,
                    "fence_report": {"version": fmap.version, "acked": acked}}
            self.member_data = data  # kept by later member writes (the map version served)
            try:
                await self._write_member()
            except Exception as e:  # noqa: BLE001 - the store may be away; retried next map
                log.warning("could not report fences to the store: %s", e)
                return
            reported = fmap.version
            log.info("reported %d fenced partition(s) at map version %d", len(acked),
                     fmap.version)

    def cluster(self, cluster_id: str) -> ClusterClient:
        client = self.clusters.get(cluster_id)
        if client is None:
            spec = self.fmap.clusters.get(cluster_id)
            if spec is None:
                raise UpstreamError(f"unknown physical cluster {cluster_id!r}",
                                    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
            client = ClusterClient(spec, client_id=f"fedkafka-proxy-{self.config.node_id}",
                                   request_timeout=self.request_timeout)
            client.on_latency = lambda s, c=cluster_id: (
                self.metrics.upstream_latency.labels(c).observe(s))
            client.on_error = lambda c=cluster_id: self.metrics.upstream_errors.labels(c).inc()
            self.clusters[cluster_id] = client
        return client

    def pool_name(self, client_id: str | None = None) -> str:
        """The pool a client is served by: routed by client.id (name service and proxies
        alike, so a metadata refresh from any proxy keeps the client in its pool)."""
        name = self.plugins.route(client_id, self.fmap)
        if not self.fmap.pools.get(name):
            name = self.config.pool
        if self.config.route_by_client_id:
            self.metrics.routed(name)
        return name

    def pool(self, client_id: str | None = None, role: str | None = None
             ) -> tuple[ProxyEndpoint, ...]:
        """The proxies a client may be sent to: its pool's, those with its ``role``."""
        return serving(self.pool_members(self.pool_name(client_id)), role)

    def pool_members(self, name: str) -> tuple[ProxyEndpoint, ...]:
        members = self.fmap.pools.get(name)
        if members:
            return tuple(members)
        host, port = self.config.advertised
        return (ProxyEndpoint(node_id=self.config.node_id, host=host, port=port),)

    def pid_cluster(self) -> str:
        if self.fmap.coordination_cluster:
            return self.fmap.coordination_cluster
        return sorted(self.fmap.clusters)[0]

    def coordination_cluster(self, group_id: str) -> str:
        chosen = self.plugins.coordination_cluster(group_id, self.fmap)
        return chosen or self.pid_cluster()

    # -- versions -----------------------------------------------------------------

    async def load_cluster_versions(self) -> None:
        """Ask every physical cluster for its ApiVersions (the advertised ranges intersect)."""
        for cid in list(self.fmap.clusters):
            try:
                await self.cluster(cid).refresh()
            except UpstreamError as e:
                log.warning("cluster %s not reachable at start: %s", cid, e)
        self._advertised = None

    def advertised(self) -> dict[int, tuple[int, int]]:
        if self._advertised is not None:
            return self._advertised
        out = apis.advertised(bool(self.plugins.sasl_mechanisms(self.fmap)),
                              [c.api_versions for c in self.clusters.values()])
        if any(c.api_versions for c in self.clusters.values()):
            self._advertised = out
        return out


class ClientConnection(asyncio.Protocol):
    """One client socket: frames in, responses out in request order."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        config = state.config
        # Before SASL authentication, on a listener that requires it, frames stay small.
        self.reader = FrameReader(min(config.max_frame_size,
                                      config.limits.max_frame_size_unauthenticated)
                                  if config.sasl_required else config.max_frame_size)
        self.transport: asyncio.Transport | None = None
        self.address = "?"
        self.last_activity = time.monotonic()
        self.frame_started: float | None = None  # first byte of an incomplete frame
        self._queued_bytes = 0  # of requests received and not yet answered
        self._reply_sizes: deque[int] = deque()  # frame sizes of self._replies
        self._counted = False  # in the proxy's connection counts
        self.peer = "?"
        self.session: Session | None = None
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._replies: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.driver: Driver | None = None
        self._reply_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._paused_reading = False
        self._closing = False  # no more responses will be written
        self._aborted = False  # a malformed request: drop everything else it sent
        self._close_after: str | None = None  # close once answered (failed SASL): why
        self._write_ok = asyncio.Event()
        self._write_ok.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.address = str(peer[0]) if peer else "?"
        try:  # mTLS: the client certificate's subject, mapped (federation.security.tls)
            cert_principal = tls.peer_principal(transport, self.state.config.tls)
        except PermissionError as e:
            self._closing = self._aborted = True
            log.warning("refusing TLS connection from %s: %s", self.peer, e)
            self.state.metrics.authentication("SSL", "failed")
            self.transport.abort()
            return
        refused = self.state.admit(self.address)
        if refused is not None:
            self._closing = self._aborted = True
            log.warning("refusing connection from %s: %s", self.peer, refused)
            self.state.metrics.closed_bad_frames.labels("connection_limit").inc()
            self.transport.abort()
            return
        self._counted = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.session = Session(self.state, self.peer, asyncio.get_running_loop().time)
        self.driver = Driver(self.state, self.session, self.peer)
        if cert_principal is not None:
            self.session.set_certificate_principal(cert_principal)
        self.state.sessions.add(self.session)
        self.state.connections.add(self)
        self.state.metrics.connections.inc()
        self._tasks = [asyncio.create_task(self._dispatch_loop()),
                       asyncio.create_task(self._reply_loop())]

    def data_received(self, data: bytes) -> None:
        if self._aborted:
            return
        now = time.monotonic()
        self.last_activity = now
        try:
            frames = self.reader.feed(data)
        except FrameError as e:
            if isinstance(e, FrameTooLarge) and (
                    self.reader.max_frame_size < self.state.config.max_frame_size):
                self.state.metrics.limit_hit("max_frame_size_unauthenticated")
            self.abort("bad_frame", e.reason)
            return
        if self.reader.buffered:
            if self.frame_started is None or frames:
                self.frame_started = now  # a (new) frame is on its way
        else:
            self.frame_started = None
        for frame in frames:
            self._queued_bytes += len(frame)
            self._frames.put_nowait(frame)
        limits = self.state.config.limits
        if self.transport and not self._paused_reading:
            if self._frames.qsize() + len(self._replies) > limits.max_requests_in_flight:
                self.state.metrics.limit_hit("max_requests_in_flight")
            elif self._queued_bytes > limits.max_queued_bytes:
                self.state.metrics.limit_hit("max_queued_bytes")
            else:
                return
            self.transport.pause_reading()
            self._paused_reading = True

    def check_timeouts(self, now: float) -> None:
        """Close the connection if a frame is too slow to arrive or it sat idle too long."""
        if self._closing:
            return
        reason = idle_reason(self.state.config.limits, now, self.last_activity,
                             self.frame_started, self.busy)
        if reason is not None:
            self.state.metrics.limit_hit("frame_timeout" if reason == "slow_frame"
                                         else "idle_timeout")
            self.abort(reason, "a frame took too long to arrive" if reason == "slow_frame"
                       else "idle for too long")

    def _maybe_resume(self) -> None:
        if self._paused_reading and self.transport and (
                self._frames.qsize() + len(self._replies)
                <= self.state.config.limits.max_requests_in_flight // 2) and (
                self._queued_bytes <= self.state.config.limits.max_queued_bytes // 2):
            self.transport.resume_reading()
            self._paused_reading = False

    @property
    def busy(self) -> bool:
        """Requests received and not yet answered."""
        return bool(self._replies) or not self._frames.empty()

    def pause_writing(self) -> None:
        self._write_ok.clear()

    def resume_writing(self) -> None:
        self._write_ok.set()

    def abort(self, reason: str, detail: str) -> None:
        if self._closing:
            return
        log.warning("closing connection from %s: %s", self.peer, detail)
        self.state.metrics.closed_bad_frames.labels(reason).inc()
        self._closing = True
        self._aborted = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        # Requests the client sent before it went away are still forwarded (a broker would
        # process them too: think of acks=0 produces sent just before close); only their
        # answers are dropped. The dispatch loop closes the session when it has drained.
        self._closing = True
        if not self._counted:
            return  # refused at once: it never got a session
        self._counted = False
        self.state.release(self.address)
        self.state.metrics.connections.dec()
        self.state.connections.discard(self)
        self._frames.put_nowait(None)
        self._tasks[1].cancel()  # the reply writer: nobody to write to

    def _finish(self) -> None:
        if self.session is not None:
            self.state.sessions.discard(self.session)
            session = self.session
            self.session = None
            # Let forwarded requests leave our buffers before the upstream sockets close.
            asyncio.get_running_loop().call_later(1.0, session.close)

    async def _dispatch_loop(self) -> None:
        try:
            await self._dispatch_frames()
        finally:
            self._finish()

    async def _dispatch_frames(self) -> None:
        """Feed each request to the core; run it up to its Detach, in order (phase 1), then
        on its own while the next one is dispatched (phase 2)."""
        session = self.session
        assert session is not None and self.driver is not None
        driver = self.driver
        loop = asyncio.get_running_loop()
        while True:
            frame = await self._frames.get()
            if frame is None or self._aborted:
                return
            started = time.monotonic()
            gen = session.receive(frame)
            try:
                finished, outcome = await driver.drive(gen, detach=True)
            except Exception as e:  # noqa: BLE001 - a bug must not take the others down
                outcome, finished = session.failure(e), True
            self.reader.max_frame_size = session.max_frame_size(self.reader.max_frame_size)
            if finished:
                if outcome is None:
                    self._queued_bytes -= len(frame)  # nothing to answer (acks=0)
                    self._maybe_resume()
                    continue
                if isinstance(outcome, core.Close):
                    if outcome.limit is not None:
                        self.state.metrics.limit_hit(outcome.limit)
                    self.abort(outcome.reason, outcome.detail)
                    return
                answer: asyncio.Future[Any] = loop.create_future()
                answer.set_result(outcome)
            else:
                answer = loop.create_task(driver.finish(outcome, session))
                answer.add_done_callback(_retrieve)
            self._replies.append((answer, started))
            self._reply_sizes.append(len(frame))  # in flight until answered
            self._reply_ready.set()
            if session.close_reason is not None:
                # Answer, then close (Kafka after a failed SASL exchange): nothing it sends
                # after this request is read.
                self._close_after = session.close_reason
                self._aborted = True
                return

    async def _reply_loop(self) -> None:
        while True:
            while not self._replies:
                self._reply_ready.clear()
                await self._reply_ready.wait()
            fut, started = self._replies[0]
            try:
                outcome = await fut
                if isinstance(outcome, core.Close):
                    self.abort(outcome.reason, outcome.detail)
                    return
                header = outcome.header
                entity = outcome.body
                # An answer that cannot be encoded is a bug: it must close the connection
                # (logged), never end this loop silently and leave the client waiting.
                parts = ([entity.data] if isinstance(entity, core.Raw)
                         else entity.parts if isinstance(entity, fetch_wire.Encoded)
                         else codec.encode_response(header, entity))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not fut.cancelled() or (task is not None and task.cancelling()):
                    raise  # this loop is being stopped (the connection is gone)
                log.error("an answer to %s was cancelled", self.peer)
                self.abort("internal_error", "internal error while answering")
                return
            except Exception:
                log.exception("internal error answering %s", self.peer)
                self.abort("internal_error", "internal error while answering")
                return
            self._replies.popleft()
            self._queued_bytes -= self._reply_sizes.popleft()
            if self.transport is None or self._closing:
                return
            self.transport.writelines(parts)
            self.state.metrics.request(header.api_key, time.monotonic() - started,
                                       header.api_version)
            self._maybe_resume()
            if self._close_after is not None and not self._replies:
                log.warning("closing connection from %s after answering: %s", self.peer,
                            self._close_after)
                self.state.metrics.closed_bad_frames.labels(self._close_after).inc()
                self._closing = True
                self.transport.close()  # once the answer is flushed
                return
            await self._write_ok.wait()


class Driver:
    """Runs the core's handlers for one client connection: executes their commands with
    real upstream connections and the event loop's clock, and sends the events back.

    Transport only: no protocol decision is taken here (federation.proxy.core).
    """

    def __init__(self, state: ProxyState, session: Session, peer: str) -> None:
        self.state = state
        self.session = session
        self.peer = peer
        self.loop = asyncio.get_running_loop()
        self._lanes: dict[tuple[str, int], BrokerConnection] = {}
        self._lane_lock = asyncio.Lock()
        self.closed = False
        session.io = self
        self._run: dict[type, Callable[[Any], Any]] = {
            core.Send: self._send, core.WaitAny: self._wait_any, core.Leader: self._leader,
            core.Coordinator: self._coordinator, core.Refresh: self._refresh,
            core.Ends: self._ends, core.SealedProducers: self._sealed,
            core.Spawn: self._spawn, core.Gather: self._gather, core.Offload: self._offload,
            core.CreateTopic: self._create_topic, core.SubmitIntent: self._submit_intent,
            core.ValidatePhysical: self._validate_physical,
            core.DescribePhysical: self._describe_physical,
        }

    async def drive(self, gen: Any, detach: bool = False) -> tuple[bool, Any]:
        """Run ``gen`` to its end: (True, its result); or, with ``detach``, up to its Detach:
        (False, ``gen``)."""
        value: Any = None
        error: BaseException | None = None
        run = self._run
        while True:
            try:
                cmd = gen.send(value) if error is None else gen.throw(error)
            except StopIteration as e:
                return True, e.value
            value = error = None
            if cmd is core.DETACH:
                if detach:
                    return False, gen
                continue
            try:
                value = await run[type(cmd)](cmd)
            except Exception as e:  # noqa: BLE001 - the event: thrown into the handler
                error = e

    async def run(self, gen: Any) -> Any:
        return (await self.drive(gen))[1]

    async def finish(self, gen: Any, session: Session) -> Any:
        """Phase 2 of a request: what the core answers (a failure closes the connection)."""
        try:
            return (await self.drive(gen))[1]
        except Exception as e:  # noqa: BLE001 - a bug must not take the other clients down
            return session.failure(e)

    # -- commands ---------------------------------------------------------------------

    async def _send(self, cmd: core.Send) -> core.Pending | None:
        if cmd.node is None:
            conn = await cmd.cluster.any_connection()
            await conn.ready()
        elif cmd.shared:
            conn = await cmd.cluster.connection(cmd.node)
            await conn.ready()
        else:
            conn = await self.lane(cmd.cluster, cmd.node)
        fut = conn.send(cmd.request, expect_response=cmd.expect_response,
                        client_id=cmd.client_id, raw=cmd.raw)
        if fut is None:
            return None
        pending = core.Pending(self.loop.time() + cmd.timeout, (conn, fut))
        fut.add_done_callback(lambda f: _fill(pending, f))
        return pending

    async def _wait_any(self, cmd: core.WaitAny) -> list[core.Pending]:
        done = [p for p in cmd.pending if p.done]
        if done:
            return done
        if not cmd.pending:  # a timer
            if cmd.deadline is not None:
                await asyncio.sleep(max(0.0, cmd.deadline - self.loop.time()))
            return []
        limit = cmd.deadline
        for p in cmd.pending:
            if p.deadline is not None and (limit is None or p.deadline < limit):
                limit = p.deadline
        now = self.loop.time()
        await asyncio.wait([p.link[1] for p in cmd.pending],
                           timeout=None if limit is None else max(0.0, limit - now),
                           return_when=asyncio.FIRST_COMPLETED)
        now = self.loop.time()
        for p in cmd.pending:
            conn, fut = p.link
            if not p.done and fut.done():
                _fill(p, fut)
            if not p.done and p.deadline is not None and now >= p.deadline:
                # The broker answers in order: a lost answer means this connection is
                # unusable.
                conn.close(CloseReason.TIMEOUT)
                p.fail(UpstreamError(f"{conn.label}: no answer in time",
                                     ErrorCode.REQUEST_TIMED_OUT))
        return [p for p in cmd.pending if p.done]

    async def _leader(self, cmd: core.Leader) -> Any:
        return await cmd.cluster.leader(cmd.topic, cmd.partition)

    async def _coordinator(self, cmd: core.Coordinator) -> int:
        node: int = await cmd.cluster.coordinator(cmd.group_id)
        return node

    async def _refresh(self, cmd: core.Refresh) -> Any:
        return await cmd.cluster.refresh()

    async def _ends(self, cmd: core.Ends) -> dict[tuple[str, int], int]:
        from federation.clusters.offsets import list_offsets

        return await list_offsets(cmd.cluster, cmd.partitions, cmd.timestamp, timeout=cmd.timeout)

    async def _sealed(self, cmd: core.SealedProducers) -> Any:
        return await self.state.sealed_producers(cmd.key)

    async def _spawn(self, cmd: core.Spawn) -> core.Pending:
        task = self.loop.create_task(self.run(cmd.step))
        pending = core.Pending(None, (None, task))
        task.add_done_callback(lambda f: _fill(pending, f))
        return pending

    async def _gather(self, cmd: core.Gather) -> list[Any]:
        return list(await asyncio.gather(*(self.run(s) for s in cmd.steps)))

    async def _offload(self, cmd: core.Offload) -> Any:
        return await asyncio.to_thread(cmd.fn, *cmd.args)

    async def _create_topic(self, cmd: core.CreateTopic) -> None:
        self.state.auto_creator.start(cmd.name)

    async def _submit_intent(self, cmd: core.SubmitIntent) -> dict[str, Any]:
        # the proxy's token (a credential: held here, not in the core); the core's timeout
        return await intents.submit(self.state.backend, cmd.kind, cmd.args,
                                    token=submitter(self.state).token, timeout=cmd.timeout)

    async def _validate_physical(self, cmd: core.ValidatePhysical) -> None:
        await admin.validate_physical(cmd.fmap, cmd.name, cmd.needs, cmd.replication,
                                      cmd.config)

    async def _describe_physical(self, cmd: core.DescribePhysical) -> Any:
        return await admin.describe_physical_many(cmd.fmap, cmd.topics)

    # -- upstream connections -------------------------------------------------------------

    async def lane(self, cluster: ClusterClient, node: int) -> BrokerConnection:
        """This client connection's own upstream connection to one physical broker."""
        key = (cluster.id, node)
        conn = self._lanes.get(key)
        if conn is None or not conn.alive:
            # One opening at a time: two requests of one client (ListOffsets' partitions,
            # gathered) opened two and the second replaced the first, which then stayed
            # open for good (found by fuzzing, as the next case).
            async with self._lane_lock:
                conn = self._lanes.get(key)
                if conn is None or not conn.alive:
                    conn = await cluster.open_to(node, f"{cluster.id}/{node}/{self.peer}")
                    self._lanes[key] = conn
                    if self.closed:
                        # Opened for a request of a client already gone (forwarded after
                        # a slow coordinator lookup): the grace the others got, then closed.
                        self.loop.call_later(1.0, self.close)
        await conn.ready()
        return conn

    def close(self) -> None:
        self.closed = True
        for conn in self._lanes.values():
            conn.close()
        self._lanes.clear()


def _fill(pending: core.Pending, fut: asyncio.Future[Any]) -> None:
    """A pending's event, from its future."""
    if pending.done:
        return
    if fut.cancelled():
        pending.fail(UpstreamError("cancelled"))
    elif fut.exception() is not None:
        pending.fail(cast(BaseException, fut.exception()))
    else:
        pending.set(fut.result())


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark an answer's failure as seen (its client may be gone; the reply loop logs)."""
    if not task.cancelled():
        task.exception()


# -- process ------------------------------------------------------------------------------


class MapFollower:
    """Keeps a ProxyState's map current from the metadata store (watch → event loop)."""

    def __init__(self, state: ProxyState, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.loop = loop
        self.backend = state.backend
        self._handle: Any = None
        self._stop = threading.Event()

    def start(self) -> None:
        def on_map(fmap: FederationMap) -> None:
            self.loop.call_soon_threadsafe(self.state.set_map, fmap)

        # Maps are read and parsed in the backend's watch thread; only set_map (work
        # proportional to the change) runs on the event loop. So that the watch thread
        # holds the GIL for at most ~1 ms at a time, not Python's default 5 ms:
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        # The map loaded at start (~1M objects at 10,000 topics) leaves the cyclic
        # collector's generations: a full collection scanning it would hold the GIL for
        # 100s of ms. It is acyclic data, freed by reference counting when replaced.
        gc.collect(1)  # young garbage first (cheap), so that it is not frozen with it
        gc.freeze()
        self._handle = self.backend.watch(on_map)
        config = self.state.config
        host, port = config.advertised
        data = {"node_id": config.node_id, "host": host, "port": port,
                "roles": sorted(config.roles), "pool": config.pool,
                "map_version": self.state.fmap.version}
        # Each worker process acknowledges writes on its own: it is a member of its own
        # (fence reports, the map version it serves).
        member = f"{host}:{port}"
        if config.workers > 1:
            member += f"/w{config.worker}"
            data["worker"] = config.worker
        with contextlib.suppress(Exception):
            self.backend.register_member("proxy", member, data)
            self.state.member_data = data
            self.state.member_id = member
            self.loop.call_soon_threadsafe(self.state._after_map_change, self.state.fmap)
        threading.Thread(target=self._health_loop, daemon=True, name="store-health").start()

    def _health_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                ok = bool(self.backend.health().get("ok", True))
            except Exception:  # noqa: BLE001 - a broken backend means "not ok", never a dead proxy
                ok = False
            if self._stop.is_set():
                return
            try:
                self.loop.call_soon_threadsafe(self._set_health, ok)
            except RuntimeError:  # the proxy's event loop closed meanwhile: it has stopped
                return

    def _set_health(self, ok: bool) -> None:
        if ok != self.state.store_ok:
            if ok:
                log.info("metadata store reachable again")
            else:
                log.warning("metadata store unreachable: serving the last map (version %d)",
                            self.state.fmap.version)
        self.state.store_ok = ok
        self.state.metrics.store_healthy.set(1 if ok else 0)

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        with contextlib.suppress(Exception):
            self.backend.close()


async def serve(config: ProxyConfig, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None,
                on_state: Callable[[ProxyState], None] | None = None) -> None:
    """Run one proxy until ``stop`` is set (or SIGTERM/SIGINT)."""
    loop = asyncio.get_running_loop()
    plugins = get_plugins()
    backend_name, options = parse_store(config.store)
    backend = plugins.backend(backend_name, **options)
    fmap = await asyncio.to_thread(backend.load)  # parsed off the event loop
    if fmap is None:
        backend.close()
        from federation.core.errors import FedKafkaError

        raise FedKafkaError(f"the metadata store {config.store} holds no map yet; "
                            "initialise the federation first (e.g. `fedkafka local up`)")
    state = ProxyState(config, fmap, plugins, backend)
    if on_state is not None:
        on_state(state)
    follower = MapFollower(state, loop)
    follower.start()
    await state.load_cluster_versions()

    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(lambda: ClientConnection(state), config.listen[0],
                                      config.listen[1], reuse_address=True, backlog=1024,
                                      reuse_port=config.workers > 1,  # workers share it
                                      **tls.server_kwargs(config.tls, "tls"))
    metrics_server = None
    if config.metrics is not None:
        from prometheus_client import start_http_server

        # One endpoint per worker process: the configured port + the worker's index.
        metrics_server, _ = start_http_server(config.metrics[1] + config.worker,
                                              addr=config.metrics[0],
                                              registry=state.metrics.registry,
                                              **tls.prometheus_kwargs(config.metrics_tls))
    log.info("proxy %d listening on %s:%d (advertised %s:%d), roles %s, map version %d%s",
             config.node_id, *config.listen, *config.advertised, sorted(config.roles),
             fmap.version, f", worker {config.worker + 1} of {config.workers}"
             if config.workers > 1 else "")
    http_server = None
    if config.http is not None and config.worker == 0:
        from federation.nameservice.service import start_http

        http_server = await start_http(state, *config.http,
                                       **tls.server_kwargs(config.http_tls, "http_tls"))
    if ready is not None:
        ready.set()

    async def sweep() -> None:  # idle connections and frames that never complete
        while True:
            await asyncio.sleep(1.0)
            state.check_timeouts()

    sweeper = asyncio.create_task(sweep())
    try:
        await stop.wait()
    finally:
        sweeper.cancel()
        if http_server is not None:
            http_server.close()
        log.info("proxy %d stopping", config.node_id)
        server.close()  # stop accepting
        # Let in-flight requests finish (bounded), then close every client connection.
        loop_time = asyncio.get_running_loop().time
        deadline = loop_time() + config.shutdown_grace
        while loop_time() < deadline and any(c.busy for c in state.connections):  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # a poll: there is no single event for "all idle"
        for conn in list(state.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for session in list(state.sessions):
            session.close()
        await asyncio.sleep(0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()
        follower.stop()
        for client in state.clusters.values():
            client.close()
        if metrics_server is not None:
            metrics_server.shutdown()
