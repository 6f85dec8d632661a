"""``fedkafka bench-metadata``: control-plane benchmark of the metadata backends.

Two measurements, for the ``file`` and the ``zookeeper`` backend (``--backend``):

* **refresh latency**: a local federation (1 KRaft cluster, ``--proxies`` proxies, the name
  service and the controller; ``LocalFederation.up``) is started on the backend, then
  ``--changes`` times the bench publishes a real map change exactly as the admin path does
  (:func:`federation.store.mapstore.update` with a topic laid out by
  :func:`federation.clusters.admin.plan_create_topic`: the previous bench topic leaves the map, a
  new one-partition topic ``fkbench-md-<run>-<i>`` enters it) and measures, from the
  moment ``update`` is called, when *every* proxy serves it, two ways at once:

  - **Metadata**: a Kafka Metadata v4 request for the new topic, on one persistent
    connection per proxy, repeated every ``--poll-ms`` until the topic is answered without
    error (end to end: what a client sees);
  - **/metrics**: the proxy's Prometheus ``fedkafka_proxy_map_version`` reaching the
    published version (the moment ``ProxyState.set_map`` ran).

  The latency of one change is the slowest proxy's; p50/p99/max are over the changes.
  Between changes the bench pauses a random 20-120 ms, so that publishes land at random
  points of the file backend's poll cycle.

* **at scale** (issue 12's targets, :data:`TARGETS`): a map of ``--clusters`` fake
  clusters x ``--topics`` logical topics x ``--partitions`` partitions (contiguous
  strategy; each topic's cluster list is rotated so that every cluster holds segments) is
  composed and validated (also serialised and parsed as one format-1 document, for
  comparison), published into an empty store of each backend (the incremental layout of
  :mod:`federation.store.maplayout`; ZooKeeper runs in its own process with its default
  ``jute.maxbuffer``), and ``--proxies`` proxy processes start on it (``ProxyState`` and
  ``MapFollower`` as ``serve`` builds them, without listeners: the clusters are fake).
  Then ``--changes`` one-topic changes (a random topic's ``retention.ms``) are published
  with :func:`federation.store.mapstore.update`, each timed until every proxy's
  ``ProxyState.set_map`` ran it. Each proxy runs an event-loop stall probe (a task
  sleeping 1 ms at a time, its lateness recorded) during the changes; an idle process
  runs the same probe, to show what the machine alone costs. The largest stored node
  (file or znode) is measured. Each number is printed next to its target.

Nothing here asserts on timing: numbers are reported, not judged.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import random
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from federation.core.errors import FedKafkaError
from federation.core.model import FederationMap, LogicalTopic, PhysicalCluster, new_topic_id
from federation.store.mapstore import EMPTY_VERSION, MetadataBackend, dumps, loads, update

HOST = "127.0.0.1"
BACKENDS = ("file", "zookeeper")
#: Refresh latency of the system fedkafka replaces (map change → every proxy), seconds.
REFERENCE_REFRESH_S = 1.0
#: ZooKeeper's default ``jute.maxbuffer``: the largest znode (and request) it accepts.
ZK_DEFAULT_MAXBUFFER = 0xFFFFF
#: Seconds a proxy may take to serve one change before it counts as not observed.
CHANGE_TIMEOUT = 30.0
TOPIC_PREFIX = "fkbench-md"
#: Updates of the big map timed per backend (medians reported).
#: Issue 12's targets at 200 clusters x 10,000 topics x 8 partitions.
TARGETS = {"compose_ms": 1000.0, "change_p99_ms": 100.0, "proxy_start_ms": 2000.0,
           "loop_stall_ms": 10.0, "node_bytes": float(1024 * 1024)}
MIB = 1024 * 1024

err = Console(stderr=True)
Progress = Callable[[str], None]


# -- small helpers -------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0..1) of ascending ``sorted_values``; None if empty."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), -(-len(sorted_values) * q // 1)))
    return sorted_values[int(rank) - 1]


def summarize(values_s: list[float]) -> dict[str, float | int | None]:
    """p50/p99/max/mean in milliseconds of ``values_s`` (seconds), and their count."""
    ms = sorted(v * 1000 for v in values_s)
    return {
        "count": len(ms),
        "p50_ms": percentile(ms, 0.50),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": ms[-1] if ms else None,
        "mean_ms": statistics.fmean(ms) if ms else None,
    }


def _timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Median seconds of ``repeat`` calls of ``fn`` and the last result."""
    times = []
    result: Any = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def machine() -> dict[str, Any]:
    from federation.tooling.bench import machine as bench_machine

    return bench_machine()


# -- observing a proxy ------------------------------------------------------------------------


class ProbeError(Exception):
    """A proxy answered something this probe cannot read."""


class MetadataProbe:
    """Metadata v4 requests for one topic, on one persistent connection to one proxy."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._correlation = 0

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        return self._sock

    def _recv_exact(self, sock: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ProbeError("connection closed by the proxy")
            buf += chunk
        return bytes(buf)

    def topic_served(self, topic: str) -> bool:
        """Whether the proxy answers Metadata for ``topic`` without error (reconnects once
        on a broken connection; raises OSError/ProbeError if the proxy cannot answer)."""
        try:
            return self._ask(topic)
        except (OSError, ProbeError):
            self.close()
            return self._ask(topic)

    def _ask(self, topic: str) -> bool:
        sock = self._connect()
        self._correlation = (self._correlation + 1) & 0x7FFFFFFF
        cid = b"fkbench-md"
        name = topic.encode()
        body = (struct.pack(">hhih", 3, 4, self._correlation, len(cid)) + cid
                + struct.pack(">ih", 1, len(name)) + name + struct.pack(">?", False))
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", self._recv_exact(sock, 4))
        if size <= 0 or size > 16 * MIB:
            raise ProbeError(f"bad response length {size}")
        data = self._recv_exact(sock, size)
        pos = 0

        def take(fmt: str) -> int:
            nonlocal pos
            (value,) = struct.unpack_from(fmt, data, pos)
            pos += struct.calcsize(fmt)
            return int(value)

        def string() -> str | None:
            nonlocal pos
            n = take(">h")
            if n < 0:
                return None
            s = data[pos:pos + n].decode()
            pos += n
            return s

        if take(">i") != self._correlation:
            raise ProbeError("correlation id mismatch")
        take(">i")  # throttle_time_ms
        for _ in range(take(">i")):  # brokers: node_id, host, port, rack
            take(">i")
            string()
            take(">i")
            string()
        string()  # cluster_id
        take(">i")  # controller_id
        for _ in range(take(">i")):
            error_code = take(">h")
            answered = string()
            take(">?")  # is_internal
            if answered == topic:
                return error_code == 0
            for _ in range(take(">i")):  # partitions of another topic: skip
                take(">h")
                take(">i")
                take(">i")
                for _ in range(2):
                    for _ in range(take(">i")):
                        take(">i")
        return False


def map_version_metric(host: str, port: int, timeout: float = 5.0) -> int | None:
    """The proxy's ``fedkafka_proxy_map_version`` from its Prometheus endpoint."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        if resp.status != 200:
            raise ProbeError(f"/metrics answered HTTP {resp.status}")
        text = resp.read().decode()
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith("fedkafka_proxy_map_version "):
            return int(float(line.split()[1]))
    return None


@dataclass(slots=True)
class _Target:
    index: int
    topic: str
    version: int
    started: float


@dataclass(slots=True)
class _Board:
    """Shared between the publishing thread and the observers of one run."""

    observers: int
    cond: threading.Condition = field(default_factory=threading.Condition)
    target: _Target | None = None
    stopped: bool = False
    #: observer key -> per change index: seconds from publish to observation, None = timeout
    seen: dict[str, dict[int, float | None]] = field(default_factory=dict)

    def publish_target(self, target: _Target) -> None:
        with self.cond:
            self.target = target
            self.cond.notify_all()

    def set_version(self, version: int) -> None:
        with self.cond:
            if self.target is not None:
                self.target.version = version

    def current_version(self) -> int:
        with self.cond:
            return self.target.version if self.target is not None else EMPTY_VERSION

    def next_target(self, after: int) -> _Target | None:
        with self.cond:
            self.cond.wait_for(lambda: self.stopped or (
                self.target is not None and self.target.index > after))
            return None if self.stopped else self.target

    def report(self, key: str, index: int, latency: float | None) -> None:
        with self.cond:
            self.seen.setdefault(key, {})[index] = latency
            self.cond.notify_all()

    def wait_all(self, index: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: sum(index in v for v in self.seen.values()) >= self.observers, timeout)

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


def _observe(board: _Board, key: str, check: Callable[[_Target], bool], poll_s: float,
             close: Callable[[], None]) -> None:
    """Observer thread: for each change, poll ``check`` until it holds (or time out)."""
    last = -1
    try:
        while (target := board.next_target(last)) is not None:
            last = target.index
            deadline = target.started + CHANGE_TIMEOUT
            while True:
                try:
                    ok = check(target)
                except (OSError, ProbeError, ValueError):
                    ok = False
                now = time.perf_counter()
                if ok:
                    board.report(key, target.index, now - target.started)
                    break
                if now > deadline or board.stopped:
                    board.report(key, target.index, None)
                    break
                time.sleep(poll_s)
    finally:
        close()


# -- refresh latency on a running federation ---------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxyEndpoints:
    name: str
    port: int
    metrics_port: int


def proxies_of(state: dict[str, Any]) -> list[ProxyEndpoints]:
    """The proxies of a ``LocalFederation`` state with their Kafka and metrics ports."""
    out = []
    for p in state.get("processes", []):
        if p.get("kind") == "proxy" and len(p.get("ports", [])) >= 2:
            out.append(ProxyEndpoints(p["name"], int(p["ports"][0]), int(p["ports"][1])))
    if not out:
        raise FedKafkaError("the federation has no proxy with a metrics port to observe")
    return out


def measure_refresh(backend: MetadataBackend, proxies: list[ProxyEndpoints], changes: int,
                    poll_s: float, progress: Progress) -> dict[str, Any]:
    """Publish ``changes`` map changes through ``backend``; time when every proxy serves each."""
    from federation.clusters.admin import plan_create_topic

    run = uuid.uuid4().hex[:6]
    board = _Board(observers=2 * len(proxies))
    threads = []
    for p in proxies:
        probe = MetadataProbe(HOST, p.port)

        def metadata_check(t: _Target, probe: MetadataProbe = probe) -> bool:
            return probe.topic_served(t.topic)

        def metrics_check(t: _Target, port: int = p.metrics_port) -> bool:
            version = map_version_metric(HOST, port)
            return version is not None and version >= board.current_version()

        for key, check, close in ((f"metadata:{p.name}", metadata_check, probe.close),
                                  (f"metrics:{p.name}", metrics_check, lambda: None)):
            th = threading.Thread(target=_observe, args=(board, key, check, poll_s, close),
                                  name=f"fkbench-{key}", daemon=True)
            th.start()
            threads.append(th)

    publish_s: list[float] = []
    versions: list[int] = []
    prev: str | None = None
    rng = random.Random()  # noqa: S311 - pauses between changes, not cryptography
    try:
        current = backend.load()
        if current is None:
            raise FedKafkaError("the federation's metadata store holds no map")
        for i in range(changes):
            name = f"{TOPIC_PREFIX}-{run}-{i}"

            def change(fmap: FederationMap | None, name: str = name,
                       prev: str | None = prev) -> FederationMap:
                if fmap is None:
                    raise FedKafkaError("the federation map disappeared")
                base = fmap.without_topic(prev) if prev is not None else fmap
                return base.with_topic(plan_create_topic(base, name, 1))

            started = time.perf_counter()
            board.publish_target(_Target(i, name, current.version + 1, started))
            new = update(backend, change)
            publish_s.append(time.perf_counter() - started)
            assert new is not None
            board.set_version(new.version)
            versions.append(new.version)
            current, prev = new, name
            if not board.wait_all(i, CHANGE_TIMEOUT + 5):
                raise FedKafkaError(f"observers did not report change {i} in time")
            if (i + 1) % 20 == 0 or i + 1 == changes:
                progress(f"  {i + 1}/{changes} changes observed")
            time.sleep(0.02 + 0.1 * rng.random())
        # Leave the map as it was: without the last bench topic.
        if prev is not None:
            last = prev
            update(backend, lambda fmap: fmap.without_topic(last) if fmap else None)
    finally:
        board.stop()
        for th in threads:
            th.join(timeout=10)

    result: dict[str, Any] = {
        "changes": changes,
        "proxies": [p.name for p in proxies],
        "versions": [versions[0], versions[-1]] if versions else [],
        "publish": summarize(publish_s),
    }
    for method in ("metadata", "metrics"):
        keys = [f"{method}:{p.name}" for p in proxies]
        per_change: list[float] = []
        missed = 0
        for i in range(changes):
            lat = [board.seen.get(k, {}).get(i) for k in keys]
            if any(v is None for v in lat):
                missed += 1
            else:
                per_change.append(max(v for v in lat if v is not None))
        result[method] = {
            "all_proxies": summarize(per_change),
            "missed": missed,
            "observed": {p.name: sum(v is not None for v in board.seen.get(k, {}).values())
                         for p, k in zip(proxies, keys, strict=True)},
            "per_proxy": {p.name: summarize([v for v in board.seen.get(k, {}).values()
                                             if v is not None])
                          for p, k in zip(proxies, keys, strict=True)},
            "samples_ms": [round(v * 1000, 3) for v in per_change],
        }
    return result


@contextlib.contextmanager
def local_federation(backend: str, proxies: int, base_port: int, kafka_version: str,
                     progress: Progress) -> Iterator[dict[str, Any]]:
    """A federation of one cluster and ``proxies`` proxies on ``backend``, stopped at the end."""
    from federation.tooling.local import temporary_federation

    progress(f"federation on {backend}: 1 cluster, {proxies} proxies")
    with temporary_federation(f"fedkafka-bench-md-{backend}-", progress, clusters=1,
                              proxies=proxies, metadata=backend, base_port=base_port,
                              kafka_version=kafka_version, heap="256m") as state:
        yield state


def run_refresh(backend: str, *, changes: int, proxies: int, poll_s: float, base_port: int,
                kafka_version: str, progress: Progress) -> dict[str, Any]:
    from federation.plugin import get_plugins, parse_store

    with local_federation(backend, proxies, base_port, kafka_version, progress) as state:
        name, options = parse_store(state["store"])
        store = get_plugins().backend(name, **options)
        try:
            progress(f"{backend}: {changes} map changes, observing {proxies} proxies every "
                     f"{poll_s * 1000:g} ms")
            result = measure_refresh(store, proxies_of(state), changes, poll_s, progress)
        finally:
            store.close()
    result["store"] = state["store"]
    if backend == "file":
        result["watch"] = ("poll of the index every 0.02 s (FileBackend poll_interval), "
                           "then the changed documents")
    else:
        result["watch"] = ("kazoo DataWatch on the index (notification, then a read), "
                           "then the changed documents")
    return result


# -- compose and publish at scale ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scale:
    clusters: int
    topics: int
    partitions: int


def compose_map(scale: Scale) -> FederationMap:
    """A map of ``scale`` laid out by the contiguous strategy (fake bootstrap addresses).

    Each topic gets the cluster list rotated by ``partitions`` from the previous one, so
    segments spread over every cluster rather than the first ``partitions`` of them. The
    strategy is given the clusters it will use only (with ``partitions`` <= clusters the
    contiguous layout puts one partition on each of the first ``partitions`` clusters, so
    the layout is the same as with all of them, without looking at 200 clusters per topic).
    """
    from federation.plugin import get_plugins

    strategy = get_plugins().strategy("contiguous")
    clusters = [PhysicalCluster(id=f"c{i + 1}",
                                bootstrap=f"10.{i // 250}.{i % 250}.1:9092,"
                                          f"10.{i // 250}.{i % 250}.2:9092")
                for i in range(scale.clusters)]
    skeleton = FederationMap(version=0, clusters={c.id: c for c in clusters},
                             coordination_cluster=clusters[0].id)
    n = len(clusters)
    used = min(scale.partitions, n)
    topics = {}
    for j in range(scale.topics):
        name = f"topic-{j:05d}"
        shift = (j * scale.partitions) % n
        order = ([clusters[(shift + k) % n] for k in range(used)] if used < n
                 else clusters[shift:] + clusters[:shift])
        layout = strategy.layout(name, scale.partitions, order,
                                 skeleton.physical_topic_name(name))
        topics[name] = LogicalTopic(name=name, topic_id=new_topic_id(name, "bench-metadata"),
                                    partitions=layout, strategy="contiguous",
                                    config={"retention.ms": "604800000"})
    return FederationMap(version=0, clusters=skeleton.clusters, topics=topics,
                         coordination_cluster=clusters[0].id)


def _bump_topic(name: str) -> Callable[[FederationMap | None], FederationMap | None]:
    """A small real change of a big map: topic ``name``'s retention.ms, one more."""

    def change(fmap: FederationMap | None) -> FederationMap | None:
        if fmap is None:
            return None
        t = fmap.topics[name]
        config = {**t.config, "retention.ms": str(int(t.config.get("retention.ms", 0)) + 1)}
        return fmap.with_topic(LogicalTopic(t.name, t.topic_id, t.partitions, t.strategy,
                                            config))

    return change


# -- a proxy at scale: its own process, its own event loop -----------------------------------


def _scale_proxy(store: str, node_id: int, conn: Any) -> None:
    """Child process: a proxy's map state (ProxyState + MapFollower, as ``serve`` builds
    them) on ``store``, without its listeners (the map's clusters are fake). Reports its
    start time, each map version it applied (``ProxyState.set_map``, monotonic clock) and
    its largest event-loop stall, measured by a probe task sleeping 1 ms at a time."""
    import asyncio

    from federation.core import logs
    from federation.plugin import get_plugins, parse_store
    from federation.proxy.config import ProxyConfig
    from federation.proxy.server import MapFollower, ProxyState

    logs.configure("WARNING")

    import fedkafka_builtin.file_backend as file_backend
    import fedkafka_builtin.zookeeper_backend as zookeeper_backend

    from federation.store import maplayout

    apply_cpu = [0.0]
    measuring_flag = threading.Event()

    def timed_fetch(*args: Any, **kwargs: Any) -> Any:
        """The backends' watch threads read and parse each change here: its CPU time."""
        cpu = time.thread_time()
        try:
            return maplayout.fetch_and_apply(*args, **kwargs)
        finally:
            if measuring_flag.is_set():
                apply_cpu[0] = max(apply_cpu[0], time.thread_time() - cpu)

    file_backend.fetch_and_apply = timed_fetch  # type: ignore[assignment,attr-defined]
    zookeeper_backend.fetch_and_apply = timed_fetch  # type: ignore[assignment,attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        t0, cpu0 = time.monotonic(), time.process_time()
        plugins = get_plugins()
        name, options = parse_store(store)
        backend = plugins.backend(name, **options)
        fmap = await asyncio.to_thread(backend.load)
        assert fmap is not None
        config = ProxyConfig(node_id=node_id, listen=(HOST, 0), advertised=(HOST, 1),
                             store=store)
        state = ProxyState(config, fmap, plugins, backend)
        stall = {"max": 0.0, "samples": 0}
        measuring = asyncio.Event()
        done = asyncio.Event()
        original = state.set_map
        apply_max = [0.0]

        def set_map(m: FederationMap) -> None:
            t = time.perf_counter()
            original(m)
            if measuring.is_set():
                apply_max[0] = max(apply_max[0], time.perf_counter() - t)
            conn.send(("applied", m.version, time.monotonic()))

        state.set_map = set_map  # type: ignore[method-assign,assignment]
        follower = MapFollower(state, loop)
        follower.start()
        conn.send(("ready", time.monotonic() - t0, time.process_time() - cpu0))

        async def probe() -> None:
            while not done.is_set():
                before = loop.time()
                await asyncio.sleep(0.001)
                late = loop.time() - before - 0.001
                if measuring.is_set():
                    stall["samples"] += 1
                    stall["max"] = max(stall["max"], late)

        def commands() -> None:
            while True:
                cmd = conn.recv()
                if cmd == "measure":
                    measuring_flag.set()
                    loop.call_soon_threadsafe(measuring.set)
                elif cmd == "stop":
                    loop.call_soon_threadsafe(done.set)
                    return

        task = asyncio.create_task(probe())
        threading.Thread(target=commands, daemon=True).start()
        await done.wait()
        await task
        follower.stop()
        conn.send(("stopped", stall["max"], stall["samples"], apply_max[0], apply_cpu[0]))

    asyncio.run(main())


def _idle_probe(conn: Any) -> None:
    """Child process: the same event-loop stall probe with nothing else to do (what the
    machine alone costs a proxy: other processes, the OS scheduler)."""
    import asyncio

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        measuring = asyncio.Event()
        worst = [0.0, 0]

        def commands() -> None:
            while True:
                cmd = conn.recv()
                loop.call_soon_threadsafe((measuring if cmd == "measure" else done).set)
                if cmd == "stop":
                    return

        threading.Thread(target=commands, daemon=True).start()
        conn.send(("ready", 0.0, 0))
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.001)
            if measuring.is_set():
                worst[0] = max(worst[0], loop.time() - before - 0.001)
                worst[1] += 1
        conn.send(("stopped", worst[0], worst[1], 0.0, 0.0))

    asyncio.run(main())


@dataclass
class _Fleet:
    """The proxy processes of one at-scale measurement and what they reported."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    ready: dict[int, float] = field(default_factory=dict)
    ready_cpu: dict[int, float] = field(default_factory=dict)
    applied: dict[int, dict[int, float]] = field(default_factory=dict)  # proxy → version → t
    stopped: dict[int, tuple[float, int, float, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def listen(self, i: int, conn: Any) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                with self.cond:
                    if i not in self.stopped:
                        self.errors.append(f"proxy {i} exited early")
                    self.cond.notify_all()
                return
            with self.cond:
                if msg[0] == "ready":
                    self.ready[i], self.ready_cpu[i] = msg[1], msg[2]
                elif msg[0] == "applied":
                    self.applied.setdefault(i, {})[msg[1]] = msg[2]
                elif msg[0] == "stopped":
                    self.stopped[i] = (msg[1], msg[2], msg[3], msg[4])
                self.cond.notify_all()

    def wait(self, what: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: what() or bool(self.errors), timeout)

    def applied_by_all(self, version: int, n: int) -> bool:
        return all(any(v >= version for v in self.applied.get(i, {})) for i in range(n))

    def when_all(self, version: int, n: int) -> float:
        """The moment the last proxy applied ``version`` (or a later one)."""
        return max(min(t for v, t in self.applied[i].items() if v >= version)
                   for i in range(n))


def _largest_file(path: Path) -> int:
    sizes = [path.stat().st_size]
    docs = path.with_name(path.name + ".d")
    if docs.is_dir():
        sizes += [p.stat().st_size for p in docs.iterdir()]
    return max(sizes)


def _largest_znode(hosts: str, root: str) -> int:
    from kazoo.client import KazooClient

    client = KazooClient(hosts=hosts, timeout=10.0)
    client.start(timeout=15)
    try:
        sizes = [client.get(f"{root}/map")[1].dataLength]
        for child in client.get_children(f"{root}/mapdocs"):
            sizes.append(client.exists(f"{root}/mapdocs/{child}").dataLength)
        return int(max(sizes))
    finally:
        client.stop()
        client.close()


def measure_backend_at_scale(make: Callable[[], MetadataBackend], fmap: FederationMap, *,
                             store: str, largest: Callable[[], int], changes: int,
                             proxies: int, progress: Progress) -> dict[str, Any]:
    """Publish ``fmap`` into an empty store, start ``proxies`` proxy processes on it, then
    publish ``changes`` one-topic changes and time each until every proxy applied it."""
    import multiprocessing

    publisher = make()
    ctx = multiprocessing.get_context("spawn")
    fleet = _Fleet()
    procs_: list[Any] = []
    conns: list[Any] = []
    try:
        if publisher.load() is not None:
            raise FedKafkaError("the scale test needs an empty store")
        first_s, version = _timed(lambda: publisher.publish(fmap, EMPTY_VERSION))
        largest_node = largest()
        progress(f"  published {len(fmap.topics):,} topics in {first_s:.2f} s; "
                 f"starting {proxies} proxies")
        for i in range(proxies):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_scale_proxy, args=(store, 1 + i, child), daemon=True,
                            name=f"fkbench-md-proxy-{i}")
            p.start()
            procs_.append(p)
            conns.append(parent)
            threading.Thread(target=fleet.listen, args=(i, parent), daemon=True).start()
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_idle_probe, args=(child,), daemon=True,
                        name="fkbench-md-idle-probe")
        p.start()
        procs_.append(p)
        conns.append(parent)
        threading.Thread(target=fleet.listen, args=(proxies, parent), daemon=True).start()
        if not fleet.wait(lambda: len(fleet.ready) == proxies + 1, 300) or fleet.errors:
            raise FedKafkaError(f"the proxies did not start: {fleet.errors or 'timeout'}")
        for c in conns:
            c.send("measure")
        rng = random.Random(7)  # noqa: S311 - which topic changes, not cryptography
        names = sorted(fmap.topics)
        change_s: list[float] = []
        publish_s: list[float] = []
        progress(f"  {changes} one-topic changes")
        for _ in range(changes):
            time.sleep(0.02 + 0.1 * rng.random())
            t0 = time.monotonic()
            new = update(publisher, _bump_topic(rng.choice(names)))
            publish_s.append(time.monotonic() - t0)
            assert new is not None
            version = new.version
            if not fleet.wait(functools.partial(fleet.applied_by_all, version, proxies),
                              CHANGE_TIMEOUT) or fleet.errors:
                raise FedKafkaError(f"the proxies did not apply map version {version}: "
                                    f"{fleet.errors or 'timeout'}")
            change_s.append(fleet.when_all(version, proxies) - t0)
        for c in conns:
            c.send("stop")
        if not fleet.wait(lambda: len(fleet.stopped) == proxies + 1, 60):
            raise FedKafkaError("the proxies did not report their event-loop stalls")
        loader = make()
        try:
            load_s, _ = _timed(loader.load)
        finally:
            loader.close()
        stalls = [fleet.stopped[i][0] for i in range(proxies)]
        return {"ok": True, "publish_first_s": first_s, "updates": changes,
                "update_s": statistics.median(publish_s), "update_max_s": max(publish_s),
                "update_to_watcher_s": statistics.median(change_s),
                "update_to_watcher_max_s": max(change_s),
                "change_to_all_proxies": summarize(change_s),
                "publish": summarize(publish_s),
                "proxy_start_s": [fleet.ready[i] for i in range(proxies)],
                "proxy_start_max_s": max(fleet.ready[i] for i in range(proxies)),
                "proxy_start_cpu_max_s": max(fleet.ready_cpu[i] for i in range(proxies)),
                "loop_stall_max_ms": max(stalls) * 1000,
                "loop_stall_ms": [s * 1000 for s in stalls],
                "loop_stall_samples": [fleet.stopped[i][1] for i in range(proxies)],
                "set_map_max_ms": max(fleet.stopped[i][2] for i in range(proxies)) * 1000,
                "watch_apply_cpu_max_ms": max(fleet.stopped[i][3]
                                              for i in range(proxies)) * 1000,
                "idle_process_stall_max_ms": fleet.stopped[proxies][0] * 1000,
                "largest_node_bytes": largest_node, "load_s": load_s,
                "version": version, "proxies": proxies}
    finally:
        for c in conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                c.send("stop")
        for p in procs_:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        publisher.close()


@contextlib.contextmanager
def own_zookeeper(workdir: Path, port: int, maxbuffer: int | None, progress: Progress
                  ) -> Iterator[str]:
    """A ZooKeeper of our own on ``port`` (``-Djute.maxbuffer`` when given), stopped after."""
    from federation.tooling import procs
    from federation.tooling.kafka_dist import install_zookeeper
    from federation.tooling.local import zookeeper_ok

    dist, _ = install_zookeeper()
    zdir = workdir / f"zookeeper-{port}"
    (zdir / "data").mkdir(parents=True, exist_ok=True)
    cfg = zdir / "zoo.cfg"
    cfg.write_text(
        f"tickTime=2000\ninitLimit=10\nsyncLimit=5\ndataDir={zdir / 'data'}\n"
        f"clientPort={port}\nclientPortAddress={HOST}\nmaxClientCnxns=50\n"
        "admin.enableServer=false\n")
    cmd = dist.java_command(cfg, heap="512m")
    if maxbuffer is not None:
        cmd.insert(1, f"-Djute.maxbuffer={maxbuffer}")
    from federation.clusters.probe import port_in_use

    if port_in_use(HOST, port):
        raise FedKafkaError(f"port {port} (for a benchmark ZooKeeper) is in use; "
                            "pass another --base-port")
    limit = f"jute.maxbuffer={maxbuffer}" if maxbuffer else "default jute.maxbuffer"
    progress(f"starting ZooKeeper on {HOST}:{port} ({limit})")
    rec, child = procs.spawn(name=f"zookeeper-{port}", kind="zookeeper", cmd=cmd,
                             log=zdir / "zookeeper.log", ports=[port], marker=str(cfg))
    try:
        deadline = time.monotonic() + 60
        while not zookeeper_ok(HOST, port):
            # The Popen handle, not procs.is_ours: right after the spawn /proc/PID/cmdline
            # can still read empty, which is_ours takes for "exited".
            if child.poll() is not None or time.monotonic() > deadline:
                raise FedKafkaError(f"ZooKeeper on {HOST}:{port} did not start; see "
                                    f"{zdir / 'zookeeper.log'}")
            time.sleep(0.2)
        yield f"{HOST}:{port}"
    finally:
        procs.stop([rec], grace=10)


def run_scale(backends: list[str], scale: Scale, *, base_port: int, changes: int,
              proxies: int, progress: Progress) -> dict[str, Any]:
    from federation.plugin import get_plugins

    progress(f"composing {scale.clusters} clusters x {scale.topics:,} topics x "
             f"{scale.partitions} partitions")
    cpu0 = time.process_time()
    build_s, fmap = _timed(lambda: compose_map(scale), repeat=3)
    validate_s, _ = _timed(fmap.validate, repeat=3)
    compose_cpu_s = (time.process_time() - cpu0) / 3  # the machine's load aside
    dumps_s, text = _timed(lambda: dumps(fmap))
    loads_s, _ = _timed(lambda: loads(text))
    size = len(text.encode())
    segments = sum(len(p.segments) for t in fmap.topics.values() for p in t.partitions)
    result: dict[str, Any] = {
        "clusters": scale.clusters, "topics": scale.topics, "partitions": scale.partitions,
        "segments": segments, "repeat": 3,
        "clusters_used": len({s.cluster for t in fmap.topics.values() for p in t.partitions
                              for s in p.segments}),
        "build_s": build_s, "validate_s": validate_s, "compose_s": build_s + validate_s,
        "compose_cpu_s": compose_cpu_s,
        "dumps_s": dumps_s, "size_bytes": size, "loads_s": loads_s, "backends": {},
        "changes": changes, "proxies": proxies, "targets": dict(TARGETS),
    }
    plugins = get_plugins()
    work = Path(tempfile.mkdtemp(prefix="fedkafka-bench-md-scale-"))
    ok = False
    try:
        if "file" in backends:
            progress("file: publishing the big map")
            path = work / "file" / "map.json"
            result["backends"]["file"] = measure_backend_at_scale(
                lambda: plugins.backend("file", path=str(path)), fmap, store=f"file:{path}",
                largest=lambda: _largest_file(path), changes=changes, proxies=proxies,
                progress=progress)
        if "zookeeper" in backends:
            zk: dict[str, Any] = {"default_maxbuffer": ZK_DEFAULT_MAXBUFFER}
            with own_zookeeper(work, base_port + 30, None, progress) as hosts:
                progress("zookeeper (default jute.maxbuffer): publishing the big map")
                zk["default"] = _zk_attempt(plugins, hosts, fmap, changes, proxies, progress)
            zk["fits_default"] = bool(zk["default"].get("ok")) and (
                zk["default"]["largest_node_bytes"] <= ZK_DEFAULT_MAXBUFFER)
            result["backends"]["zookeeper"] = zk
        ok = True
    finally:
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            progress(f"files and logs kept in {work}")
    return result


def _zk_attempt(plugins: Any, hosts: str, fmap: FederationMap, changes: int, proxies: int,
                progress: Progress) -> dict[str, Any]:
    root = "/fkbench"

    def make() -> MetadataBackend:
        backend: MetadataBackend = plugins.backend("zookeeper", hosts=hosts, root=root,
                                                   session_timeout=10.0)
        return backend

    try:
        return measure_backend_at_scale(make, fmap, store=f"zookeeper:{hosts}{root}",
                                        largest=lambda: _largest_znode(hosts, root),
                                        changes=changes, proxies=proxies, progress=progress)
    except Exception as e:  # noqa: BLE001 - a refused znode is a result, not a crash
        error = f"{type(e).__name__}: {e}"
        reason = ("ZooKeeper dropped the connection (ConnectionLoss): the request is larger "
                  "than its jute.maxbuffer" if "ConnectionLoss" in error else error)
        return {"ok": False, "error": error, "reason": reason}


# -- the whole run ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    backends: tuple[str, ...]
    changes: int
    proxies: int
    poll_ms: float
    scale: Scale
    base_port: int
    kafka_version: str
    refresh: bool
    at_scale: bool


def run(settings: Settings, progress: Progress) -> dict[str, Any]:
    report: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "backends": list(settings.backends), "changes": settings.changes,
            "proxies": settings.proxies, "poll_ms": settings.poll_ms,
            "clusters": settings.scale.clusters, "topics": settings.scale.topics,
            "partitions": settings.scale.partitions, "base_port": settings.base_port,
            "kafka_version": settings.kafka_version,
        },
        "reference": {"refresh_latency_s": REFERENCE_REFRESH_S,
                      "what": "the original system: map change to every proxy serving it"},
        "refresh": {},
        "scale": None,
    }
    if settings.refresh:
        for backend in settings.backends:
            report["refresh"][backend] = run_refresh(
                backend, changes=settings.changes, proxies=settings.proxies,
                poll_s=settings.poll_ms / 1000, base_port=settings.base_port,
                kafka_version=settings.kafka_version, progress=progress)
    if settings.at_scale:
        report["scale"] = run_scale(list(settings.backends), settings.scale,
                                    base_port=settings.base_port, changes=settings.changes,
                                    proxies=settings.proxies, progress=progress)
    return report


# -- output -----------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f} ms"


def render(report: dict[str, Any], console: Console) -> None:
    s = report["settings"]
    ref_ms = report["reference"]["refresh_latency_s"] * 1000
    if report["refresh"]:
        table = Table(title=f"refresh latency: publish -> all {s['proxies']} proxies serve "
                            f"it ({s['changes']} changes, probe every {s['poll_ms']:g} ms)")
        for col in ("backend", "measured", "p50 ms", "p99 ms", "max ms", "seen", "ref. ms"):
            table.add_column(col, justify="left" if col in ("backend", "measured")
                             else "right")
        for backend, r in report["refresh"].items():
            for method, label in (("metadata", "Metadata"), ("metrics", "/metrics")):
                m = r[method]
                a = m["all_proxies"]
                seen = min(m["observed"].values()) if m["observed"] else 0
                table.add_row(backend, label, _ms(a["p50_ms"]), _ms(a["p99_ms"]),
                              _ms(a["max_ms"]), f"{seen}/{r['changes']}", f"~{ref_ms:,.0f}")
            p = r["publish"]
            table.add_row(backend, "publish", _ms(p["p50_ms"]), _ms(p["p99_ms"]),
                          _ms(p["max_ms"]), "", "")
        console.print(table)
        console.print("Metadata = the new topic answered by a Kafka Metadata request to every "
                      "proxy; /metrics = fedkafka_proxy_map_version; publish = the "
                      "controller-side mapstore.update alone (included in the others); "
                      "seen = changes every proxy served; ref. = the original system")
    sc = report["scale"]
    if sc is not None:
        table = Table(title=f"compose and publish at scale: {sc['clusters']} clusters x "
                            f"{sc['topics']:,} topics x {sc['partitions']} partitions "
                            f"({sc['segments']:,} segments on {sc['clusters_used']} clusters)")
        table.add_column("step")
        table.add_column("time", justify="right")
        table.add_row("compose: build the map (strategy layout)", _s(sc["build_s"]))
        table.add_row("compose: validate", _s(sc["validate_s"]))
        table.add_row("serialise (mapstore.dumps)", _s(sc["dumps_s"]))
        table.add_row("serialised size",
                      f"{sc['size_bytes']:,} B ({sc['size_bytes'] / MIB:.2f} MiB)")
        table.add_row("format-1 document: parse (mapstore.loads)", _s(sc["loads_s"]))
        for backend, b in sc["backends"].items():
            _scale_rows(table, backend, b["default"] if backend == "zookeeper" else b)
        console.print(table)
        _render_targets(sc, console)
    m = report["machine"]
    console.print(f"reference: ~{ref_ms:,.0f} ms refresh latency in the original system; "
                  f"machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}")


def _scale_rows(table: Table, label: str, b: dict[str, Any]) -> None:
    if not b.get("ok"):
        table.add_row(f"{label}: publish", f"[red]failed[/]: {b.get('reason', '?')}")
        return
    table.add_row(f"{label}: first publish (every document)", _s(b["publish_first_s"]))
    table.add_row(f"{label}: one-topic change (read-modify-publish)",
                  f"{_s(b['update_s'])} (max {_s(b['update_max_s'])})")
    table.add_row(f"{label}: full load (a new backend)", _s(b["load_s"]))


def _render_targets(sc: dict[str, Any], console: Console) -> None:
    """Each measured number next to its target (issue 12)."""
    t = sc["targets"]
    table = Table(title=f"targets at {sc['clusters']} x {sc['topics']:,} x {sc['partitions']}: "
                        f"{sc['changes']} one-topic changes, {sc['proxies']} proxy processes")
    for col in ("measure", "backend", "measured", "target", "met"):
        table.add_column(col, justify="right" if col in ("measured", "target") else "left")

    def row(what: str, backend: str, value: float | None, limit: float, unit: str,
            strict: bool = False) -> None:
        if value is None:
            table.add_row(what, backend, "-", "", "[red]no[/]")
            return
        met = value < limit if strict else value <= limit
        shown = f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
        table.add_row(what, backend, shown, f"{'<' if strict else '<='} {limit:,g} {unit}",
                      "[green]yes[/]" if met else "[red]no[/]")

    row("compose (build + validate)", "-", sc["compose_s"] * 1000, t["compose_ms"], "ms",
        strict=True)
    table.add_row("  its CPU time", "-", f"{sc['compose_cpu_s'] * 1000:,.0f} ms", "", "")
    for backend, b in sc["backends"].items():
        r = b["default"] if backend == "zookeeper" else b
        if not r.get("ok"):
            table.add_row("(all)", backend, "failed", "", f"[red]{r.get('reason', '?')}[/]")
            continue
        row("topic change -> every proxy, p99", backend,
            r["change_to_all_proxies"]["p99_ms"], t["change_p99_ms"], "ms")
        table.add_row("  p50; publish (update) p50", backend,
                      f"{r['change_to_all_proxies']['p50_ms']:.1f} ms; "
                      f"{r['publish']['p50_ms']:.1f} ms", "", "")
        row("proxy start with the full map (slowest)", backend,
            r["proxy_start_max_s"] * 1000, t["proxy_start_ms"], "ms", strict=True)
        table.add_row("  its CPU time (all threads)", backend,
                      f"{r['proxy_start_cpu_max_s'] * 1000:,.0f} ms", "", "")
        row("largest event-loop stall, changes", backend, r["loop_stall_max_ms"],
            t["loop_stall_ms"], "ms")
        table.add_row("  of which set_map on the loop (max)", backend,
                      f"{r['set_map_max_ms']:.1f} ms", "", "")
        table.add_row("  a change's read+parse in the watch thread, CPU (max)", backend,
                      f"{r['watch_apply_cpu_max_ms']:.1f} ms", "", "(GIL 1 ms at a time)")
        table.add_row("  an idle process's stall meanwhile", backend,
                      f"{r['idle_process_stall_max_ms']:.1f} ms", "", "(machine)")
        row("largest store node", backend, r["largest_node_bytes"] / 1024,
            t["node_bytes"] / 1024, "KiB")
    console.print(table)
    console.print("change -> every proxy: from mapstore.update's call to the moment the last "
                  "proxy's ProxyState.set_map ran; start: backend, map load, ProxyState and "
                  "watch in a fresh process; stall: a 1 ms sleep loop in each proxy's event "
                  "loop during the changes (includes the OS scheduler on a busy machine)")


# -- the command ---------------------------------------------------------------------------------


def _logs_to_stderr() -> None:
    """Library logs on stderr, warnings and worse only: stdout is the report."""
    from federation.core import logs

    logs.configure("WARNING")


def register(app: typer.Typer) -> None:
    """Add ``bench-metadata`` to ``app``."""
    from federation.tooling.kafka_dist import DEFAULT_KAFKA_VERSION

    @app.command("bench-metadata")
    def bench_metadata(
        backend: Annotated[str, typer.Option(
            help="Metadata backend to measure: file, zookeeper or both.")] = "both",
        changes: Annotated[int, typer.Option(
            help="Map changes published for the refresh latency.")] = 100,
        proxies: Annotated[int, typer.Option(help="Proxies of the federation (1-9).")] = 2,
        poll_ms: Annotated[float, typer.Option(
            help="Milliseconds between two probes of one proxy.")] = 2.0,
        clusters: Annotated[int, typer.Option(help="Clusters of the big map.")] = 60,
        topics: Annotated[int, typer.Option(help="Logical topics of the big map.")] = 1000,
        partitions: Annotated[int, typer.Option(
            help="Partitions of each topic of the big map.")] = 8,
        refresh: Annotated[bool, typer.Option(
            help="Measure the refresh latency (starts Kafka).")] = True,
        scale: Annotated[bool, typer.Option(help="Measure compose/publish at scale.")] = True,
        base_port: Annotated[int, typer.Option(
            help="Base port of what the run starts (federation, ZooKeeper at +30/+31).")]
        = 27592,
        kafka_version: Annotated[str, typer.Option(
            help="Kafka release of the federation.")] = DEFAULT_KAFKA_VERSION,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]
        = False,
    ) -> None:
        """Control plane: map refresh latency to every proxy, and a big map's cost."""
        if backend not in (*BACKENDS, "both"):
            raise typer.BadParameter("--backend must be file, zookeeper or both")
        if changes < 1 or not 1 <= proxies <= 9 or poll_ms <= 0:
            raise typer.BadParameter("--changes >= 1, --proxies 1-9 and --poll-ms > 0")
        if clusters < 1 or topics < 1 or partitions < 1:
            raise typer.BadParameter("--clusters, --topics and --partitions must be >= 1")
        if not refresh and not scale:
            raise typer.BadParameter("nothing to do: both --no-refresh and --no-scale")
        settings = Settings(
            backends=BACKENDS if backend == "both" else (backend,), changes=changes,
            proxies=proxies, poll_ms=poll_ms, scale=Scale(clusters, topics, partitions),
            base_port=base_port, kafka_version=kafka_version, refresh=refresh,
            at_scale=scale)

        def progress(msg: str) -> None:
            err.print(f"[dim]{msg}[/]")

        _logs_to_stderr()
        try:
            report = run(settings, progress)
        except FedKafkaError as e:
            err.print(f"[red]error:[/] {e}")
            raise typer.Exit(e.exit_code) from e
        if as_json:
            sys.stdout.write(json.dumps(report, indent=2) + "\n")
        else:
            # A fixed width when not on a terminal, so that captured tables are readable.
            render(report, Console(width=None if sys.stdout.isatty() else 100))


def main() -> None:
    """``python -m federation.tooling.bench_metadata``: the command without the rest of the CLI."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app()


if __name__ == "__main__":
    main()


__all__ = [
    "REFERENCE_REFRESH_S",
    "MetadataProbe",
    "compose_map",
    "main",
    "measure_refresh",
    "register",
    "run",
]
