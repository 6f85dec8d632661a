"""``fedkafka bench-metadata``: control-plane benchmark of the metadata backends.

Two measurements, for the ``file`` and the ``zookeeper`` backend (``--backend``):

* **refresh latency**: a local federation (1 KRaft cluster, ``--proxies`` proxies, the name
  service and the controller; ``LocalFederation.up``) is started on the backend, then
  ``--changes`` times the bench publishes a real map change exactly as the admin path does
  (:func:`federation.mapstore.update` with a topic laid out by
  :func:`federation.admin.plan_create_topic`: the previous bench topic leaves the map, a
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

* **compose and publish at scale**: a map of ``--clusters`` fake clusters x ``--topics``
  logical topics x ``--partitions`` partitions (contiguous strategy; each topic's cluster
  list is rotated so that every cluster holds segments) is composed and validated,
  serialised (:func:`federation.mapstore.dumps`), parsed back as a proxy does
  (:func:`federation.mapstore.loads`) and published through each backend: a first publish
  into an empty store, then an update (read-modify-publish) whose delivery to an
  independent watcher (a second backend instance, as a proxy holds) is timed. ZooKeeper
  runs in its own process here, once with its default ``jute.maxbuffer`` (1 MiB - 1 byte:
  the largest znode it accepts) and, if the map is larger, once more with the limit raised
  (``-Djute.maxbuffer``; kazoo itself has no client-side limit).

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

from federation.errors import FedKafkaError
from federation.mapstore import EMPTY_VERSION, MetadataBackend, dumps, loads, update
from federation.model import FederationMap, LogicalTopic, PhysicalCluster, new_topic_id

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
SCALE_UPDATES = 3
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
    from federation.bench import machine as bench_machine

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
    from federation.admin import plan_create_topic

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
    from federation.local import temporary_federation

    progress(f"federation on {backend}: 1 cluster, {proxies} proxies")
    with temporary_federation(f"fedkafka-bench-md-{backend}-", progress, clusters=1,
                              proxies=proxies, metadata=backend, base_port=base_port,
                              kafka_version=kafka_version, heap="256m") as state:
        yield state


def run_refresh(backend: str, *, changes: int, proxies: int, poll_s: float, base_port: int,
                kafka_version: str, progress: Progress) -> dict[str, Any]:
    from federation.plugin import get_plugins
    from federation.proxy.config import parse_store

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
        result["watch"] = "poll every 0.1 s (FileBackend poll_interval)"
    else:
        result["watch"] = "kazoo DataWatch (notification, then a read of the znode)"
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
    segments spread over every cluster rather than the first ``partitions`` of them.
    """
    from federation.plugin import get_plugins

    strategy = get_plugins().strategy("contiguous")
    clusters = [PhysicalCluster(id=f"c{i + 1}",
                                bootstrap=f"10.{i // 250}.{i % 250}.1:9092,"
                                          f"10.{i // 250}.{i % 250}.2:9092")
                for i in range(scale.clusters)]
    skeleton = FederationMap(version=0, clusters={c.id: c for c in clusters},
                             coordination_cluster=clusters[0].id)
    topics = {}
    for j in range(scale.topics):
        name = f"topic-{j:05d}"
        shift = (j * scale.partitions) % scale.clusters
        order = clusters[shift:] + clusters[:shift]
        layout = strategy.layout(name, scale.partitions, order,
                                 skeleton.physical_topic_name(name))
        topics[name] = LogicalTopic(name=name, topic_id=new_topic_id(name, "bench-metadata"),
                                    partitions=layout, strategy="contiguous",
                                    config={"retention.ms": "604800000"})
    return FederationMap(version=0, clusters=skeleton.clusters, topics=topics,
                         coordination_cluster=clusters[0].id)


def _bump(fmap: FederationMap | None) -> FederationMap | None:
    """A small real change of a big map: one topic's config value."""
    if fmap is None:
        return None
    first = next(iter(fmap.topics.values()))
    config = {**first.config, "retention.ms": str(int(first.config.get("retention.ms", 0)) + 1)}
    return fmap.with_topic(LogicalTopic(first.name, first.topic_id, first.partitions,
                                        first.strategy, config))


def measure_backend_at_scale(make: Callable[[], MetadataBackend], fmap: FederationMap
                             ) -> dict[str, Any]:
    """Publish ``fmap`` into an empty store, then update it while a second backend
    instance (as a proxy holds) watches: seconds for each step."""
    publisher = make()
    watcher: MetadataBackend | None = None
    try:
        current = publisher.load()
        if current is not None:
            raise FedKafkaError("the scale test needs an empty store")
        first_s, version = _timed(lambda: publisher.publish(fmap, EMPTY_VERSION))
        watcher = make()
        delivered: dict[int, float] = {}
        arrived = threading.Condition()

        def on_map(m: FederationMap) -> None:
            with arrived:
                delivered[m.version] = time.perf_counter()
                arrived.notify_all()

        handle = watcher.watch(on_map)
        with arrived:
            if not arrived.wait_for(lambda: version in delivered, 60):
                raise FedKafkaError("the watcher never saw the first big map")
        update_s: list[float] = []
        watch_s: list[float] = []
        for _ in range(SCALE_UPDATES):
            time.sleep(1.2)  # past the file backend's "racily clean" second
            t0 = time.perf_counter()
            new = update(publisher, _bump)
            update_s.append(time.perf_counter() - t0)
            assert new is not None
            wanted = new.version
            with arrived:
                if not arrived.wait_for(functools.partial(delivered.__contains__, wanted), 60):
                    raise FedKafkaError("the watcher never saw the updated big map")
            watch_s.append(delivered[new.version] - t0)
            version = new.version
        handle.cancel()
        load_s, _ = _timed(watcher.load, repeat=3)
        return {"ok": True, "publish_first_s": first_s, "updates": SCALE_UPDATES,
                "update_s": statistics.median(update_s), "update_max_s": max(update_s),
                "update_to_watcher_s": statistics.median(watch_s),
                "update_to_watcher_max_s": max(watch_s), "load_s": load_s,
                "version": version}
    finally:
        if watcher is not None:
            watcher.close()
        publisher.close()


@contextlib.contextmanager
def own_zookeeper(workdir: Path, port: int, maxbuffer: int | None, progress: Progress
                  ) -> Iterator[str]:
    """A ZooKeeper of our own on ``port`` (``-Djute.maxbuffer`` when given), stopped after."""
    from federation import procs
    from federation.kafka_dist import install_zookeeper
    from federation.local import zookeeper_ok

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
    from federation.probe import port_in_use

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


def run_scale(backends: list[str], scale: Scale, *, base_port: int, maxbuffer: int | None,
              progress: Progress) -> dict[str, Any]:
    from federation.plugin import get_plugins

    progress(f"composing {scale.clusters} clusters x {scale.topics:,} topics x "
             f"{scale.partitions} partitions")
    build_s, fmap = _timed(lambda: compose_map(scale), repeat=3)
    validate_s, _ = _timed(fmap.validate, repeat=3)
    dumps_s, text = _timed(lambda: dumps(fmap), repeat=3)
    loads_s, _ = _timed(lambda: loads(text), repeat=3)
    size = len(text.encode())
    segments = sum(len(p.segments) for t in fmap.topics.values() for p in t.partitions)
    result: dict[str, Any] = {
        "clusters": scale.clusters, "topics": scale.topics, "partitions": scale.partitions,
        "segments": segments, "repeat": 3,
        "clusters_used": len({s.cluster for t in fmap.topics.values() for p in t.partitions
                              for s in p.segments}),
        "build_s": build_s, "validate_s": validate_s, "compose_s": build_s + validate_s,
        "dumps_s": dumps_s, "size_bytes": size, "loads_s": loads_s, "backends": {},
    }
    plugins = get_plugins()
    work = Path(tempfile.mkdtemp(prefix="fedkafka-bench-md-scale-"))
    ok = False
    try:
        if "file" in backends:
            progress("file: publishing the big map")
            path = work / "file" / "map.json"
            result["backends"]["file"] = measure_backend_at_scale(
                lambda: plugins.backend("file", path=str(path)), fmap)
        if "zookeeper" in backends:
            zk: dict[str, Any] = {"default_maxbuffer": ZK_DEFAULT_MAXBUFFER,
                                  "fits_default": size <= ZK_DEFAULT_MAXBUFFER}
            with own_zookeeper(work, base_port + 30, None, progress) as hosts:
                progress("zookeeper (default jute.maxbuffer): publishing the big map")
                zk["default"] = _zk_attempt(plugins, hosts, fmap)
            if not zk["default"]["ok"]:
                raised = maxbuffer or max(4 * MIB, -(-2 * size // MIB) * MIB)
                zk["raised_maxbuffer"] = raised
                with own_zookeeper(work, base_port + 31, raised, progress) as hosts:
                    progress(f"zookeeper (jute.maxbuffer={raised}): publishing the big map")
                    zk["raised"] = _zk_attempt(plugins, hosts, fmap)
            result["backends"]["zookeeper"] = zk
        ok = True
    finally:
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            progress(f"files and logs kept in {work}")
    return result


def _zk_attempt(plugins: Any, hosts: str, fmap: FederationMap) -> dict[str, Any]:
    def make() -> MetadataBackend:
        backend: MetadataBackend = plugins.backend("zookeeper", hosts=hosts, root="/fkbench",
                                                   session_timeout=10.0)
        return backend

    try:
        return measure_backend_at_scale(make, fmap)
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
    zk_maxbuffer: int | None


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
                                    base_port=settings.base_port,
                                    maxbuffer=settings.zk_maxbuffer, progress=progress)
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
        table.add_row("proxy load (mapstore.loads)", _s(sc["loads_s"]))
        for backend, b in sc["backends"].items():
            if backend == "zookeeper":
                for key, label in (("default", "default jute.maxbuffer (1 MiB)"),
                                   ("raised", f"jute.maxbuffer={b.get('raised_maxbuffer')}")):
                    if key in b:
                        _scale_rows(table, f"zookeeper, {label}", b[key])
            else:
                _scale_rows(table, backend, b)
        console.print(table)
        zk = sc["backends"].get("zookeeper")
        if zk is not None and not zk["fits_default"]:
            console.print(f"[yellow]the map ({sc['size_bytes']:,} B) exceeds ZooKeeper's "
                          f"default jute.maxbuffer ({ZK_DEFAULT_MAXBUFFER:,} B): the servers "
                          "need -Djute.maxbuffer (and Java clients too; kazoo has no limit)[/]")
    m = report["machine"]
    console.print(f"reference: ~{ref_ms:,.0f} ms refresh latency in the original system; "
                  f"machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}")


def _scale_rows(table: Table, label: str, b: dict[str, Any]) -> None:
    if not b.get("ok"):
        table.add_row(f"{label}: publish", f"[red]failed[/]: {b.get('reason', '?')}")
        return
    table.add_row(f"{label}: first publish", _s(b["publish_first_s"]))
    table.add_row(f"{label}: update (read-modify-publish)",
                  f"{_s(b['update_s'])} (max {_s(b['update_max_s'])})")
    table.add_row(f"{label}: update -> a watcher has it",
                  f"{_s(b['update_to_watcher_s'])} (max {_s(b['update_to_watcher_max_s'])})")
    table.add_row(f"{label}: load", _s(b["load_s"]))


# -- the command ---------------------------------------------------------------------------------


def _logs_to_stderr() -> None:
    """Library logs on stderr, warnings and worse only: stdout is the report."""
    from federation import logs

    logs.configure("WARNING")


def register(app: typer.Typer) -> None:
    """Add ``bench-metadata`` to ``app``."""
    from federation.kafka_dist import DEFAULT_KAFKA_VERSION

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
        zk_maxbuffer: Annotated[int | None, typer.Option(
            help="jute.maxbuffer (bytes) for the ZooKeeper that takes a map too big for the "
                 "default [default: max(4 MiB, 2 x map size)]")] = None,
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
            at_scale=scale, zk_maxbuffer=zk_maxbuffer)

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
    """``python -m federation.bench_metadata``: the command without the rest of the CLI."""
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
