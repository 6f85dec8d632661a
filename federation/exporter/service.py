"""The lag exporter: consumer lag over the federation and map health on ``/metrics``.

``fedkafka exporter --config FILE`` (``local up`` starts one). Every ``interval`` seconds it
loads the map, reads the groups' committed offsets from the coordination cluster and the
physical offsets from every cluster (:mod:`federation.exporter.lag`), and serves the last result;
a scrape never waits for Kafka. Labels are bounded: groups by allow/deny patterns and a
cap (``max_groups``), partitions and clusters by the map.

Metrics (all gauges unless noted; offsets and lags count records):

* ``fedkafka_consumer_group_lag_records{group,topic,partition}``: logical end offset
  minus committed offset
* ``fedkafka_consumer_group_committed_offset{group,topic,partition}``
* ``fedkafka_consumer_group_unread_records{group,cluster}``: records on that physical
  cluster the group has not read (sealed segments: what a drain waits for; and active ones)
* ``fedkafka_partition_end_offset{topic,partition}``: logical high watermark
* ``fedkafka_map_*``: version, cluster states, segments per cluster, fences, moves
* ``fedkafka_lag_exporter_*``: its own health (last success, duration, errors, groups)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from federation.core.errors import ConfigError, FedKafkaError
from federation.core.model import ClusterState, FederationMap
from federation.exporter.lag import GroupFilter, LagReport, OffsetReader, collect
from federation.store.mapstore import MetadataBackend

__all__ = ["Exporter", "ExporterConfig", "load_config", "serve"]

log = structlog.get_logger(__name__)

MEMBER_KIND = "exporter"


@dataclass(frozen=True, slots=True)
class ExporterConfig:
    """``fedkafka exporter`` settings (see :func:`load_config`)."""

    store: str  #: ``file:/path/map.json`` or ``zookeeper:host:port/root``
    listen: tuple[str, int] = ("127.0.0.1", 9309)  #: port 0 = any free port
    interval: float = 15.0
    timeout: float = 10.0
    groups: GroupFilter = field(default_factory=GroupFilter)
    member_id: str = "exporter-1"


def _bad(key: str, what: str) -> ConfigError:
    return ConfigError(f"exporter config: {key!r} must be {what}")


def config_from_dict(data: Mapping[str, Any]) -> ExporterConfig:
    """An :class:`ExporterConfig` from JSON data::

        {"store": "zookeeper:10.0.0.5:2181/fedkafka", "listen": "0.0.0.0:9309",
         "interval": 15, "group_allow": ["billing-.*"], "group_deny": ["tmp-.*"],
         "max_groups": 500}
    """
    known = {"store", "listen", "interval", "timeout", "group_allow", "group_deny",
             "max_groups", "member_id"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"exporter config: unknown field(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(known))}")
    store = data.get("store")
    if not isinstance(store, str) or ":" not in store:
        raise _bad("store", "a store like 'file:/path/map.json' or 'zookeeper:host:port/root'")
    listen = data.get("listen", "127.0.0.1:9309")
    host, sep, port = str(listen).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise _bad("listen", "'host:port' (port 0 = any free port)")
    numbers = {}
    for key, default in (("interval", 15.0), ("timeout", 10.0)):
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise _bad(key, "a number of seconds > 0")
        numbers[key] = float(value)
    lists = {}
    for key in ("group_allow", "group_deny"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _bad(key, "a list of regular expressions (full match on the group id)")
        lists[key] = tuple(value)
    max_groups = data.get("max_groups", 500)
    if isinstance(max_groups, bool) or not isinstance(max_groups, int) or max_groups < 0:
        raise _bad("max_groups", "an integer >= 0")
    try:
        groups = GroupFilter(lists["group_allow"], lists["group_deny"], max_groups)
    except ValueError as e:
        raise ConfigError(f"exporter config: {e}") from None
    member_id = data.get("member_id", "exporter-1")
    if not isinstance(member_id, str) or not re.fullmatch(r"[\w.-]{1,100}", member_id):
        raise _bad("member_id", "a short name of letters, digits, '.', '_' and '-'")
    return ExporterConfig(store=store, listen=(host, int(port)), interval=numbers["interval"],
                          timeout=numbers["timeout"], groups=groups, member_id=member_id)


def load_config(path: str | os.PathLike[str]) -> ExporterConfig:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read exporter config {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"exporter config {path} is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"exporter config {path} must hold a JSON object")
    return config_from_dict(data)


# -- metrics -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one collection found; served until the next one replaces it."""

    fmap: FederationMap | None = None
    report: LagReport | None = None
    groups_capped: int = 0


def map_families(fmap: FederationMap) -> Iterator[GaugeMetricFamily]:
    """Gauges describing the map itself (cheap: no I/O)."""
    version = GaugeMetricFamily("fedkafka_map_version", "Version of the federation map.")
    version.add_metric([], fmap.version)
    yield version
    states = GaugeMetricFamily("fedkafka_map_cluster_state",
                               "1 for the state each physical cluster is in, 0 for the others.",
                               labels=["cluster", "state"])
    for cluster in sorted(fmap.clusters.values(), key=lambda c: c.id):
        for state in ClusterState:
            states.add_metric([cluster.id, state.value], 1 if cluster.state is state else 0)
    yield states
    segments = GaugeMetricFamily("fedkafka_map_segments",
                                 "Segments each physical cluster holds, active or sealed.",
                                 labels=["cluster", "kind"])
    counts = {(c, k): 0 for c in fmap.clusters for k in ("active", "sealed")}
    fenced = 0
    partitions = 0
    for topic in fmap.topics.values():
        for lp in topic.partitions:
            partitions += 1
            fenced += lp.fence is not None
            for seg in lp.segments:
                key = (seg.cluster, "active" if seg.is_active else "sealed")
                counts[key] = counts.get(key, 0) + 1
    for (cid, kind), n in sorted(counts.items()):
        segments.add_metric([cid, kind], n)
    yield segments
    for name, doc, value in (
            ("fedkafka_map_topics", "Logical topics in the map.", len(fmap.topics)),
            ("fedkafka_map_partitions", "Logical partitions in the map.", partitions),
            ("fedkafka_map_fenced_partitions",
             "Logical partitions fenced for a roll (writes paused).", fenced),
            ("fedkafka_map_moves_pending", "Roll requests waiting for the controller.",
             len(fmap.moves))):
        family = GaugeMetricFamily(name, doc)
        family.add_metric([], value)
        yield family


def lag_families(report: LagReport) -> Iterator[GaugeMetricFamily]:
    """Gauges of one lag report."""
    ends = GaugeMetricFamily("fedkafka_partition_end_offset",
                             "Logical end offset (high watermark) of each logical partition.",
                             labels=["topic", "partition"])
    for (topic, partition), end in sorted(report.ends.items()):
        ends.add_metric([topic, str(partition)], end)
    yield ends
    lag = GaugeMetricFamily("fedkafka_consumer_group_lag_records",
                            "Records of a logical partition after the group's committed "
                            "offset (logical end offset - committed offset).",
                            labels=["group", "topic", "partition"])
    committed = GaugeMetricFamily("fedkafka_consumer_group_committed_offset",
                                  "Logical offset the group committed on a logical partition.",
                                  labels=["group", "topic", "partition"])
    for p in report.partitions:
        labels = [p.group, p.topic, str(p.partition)]
        committed.add_metric(labels, p.committed)
        if p.lag is not None:
            lag.add_metric(labels, max(0, p.lag))
    yield lag
    yield committed
    unread = GaugeMetricFamily("fedkafka_consumer_group_unread_records",
                               "Records the group has not read yet that are stored on each "
                               "physical cluster (sealed and active segments).",
                               labels=["group", "cluster"])
    for group, clusters in report.unread_by_cluster().items():
        for cluster, n in clusters.items():
            unread.add_metric([group, cluster], n)
    yield unread


class _SnapshotCollector(Collector):
    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot
        if snap.fmap is not None:
            yield from map_families(snap.fmap)
        if snap.report is not None:
            yield from lag_families(snap.report)
            reachable = GaugeMetricFamily(
                "fedkafka_lag_exporter_cluster_reachable",
                "1 if the physical cluster answered the last offset reads.", labels=["cluster"])
            if snap.fmap is not None:
                for cluster in sorted(snap.fmap.clusters):
                    reachable.add_metric([cluster], 0 if cluster in snap.report.unreachable
                                         else 1)
            yield reachable
            groups = GaugeMetricFamily("fedkafka_lag_exporter_groups",
                                       "Consumer groups reported, and left out by the cap.",
                                       labels=["status"])
            groups.add_metric(["exported"], len(snap.report.groups()))
            groups.add_metric(["capped"], snap.groups_capped)
            yield groups


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.snapshot = _SnapshotCollector()
        r.register(self.snapshot)
        self.last_success = Gauge("fedkafka_lag_exporter_last_success_timestamp_seconds",
                                  "When the last complete collection ended (unix time).",
                                  registry=r)
        self.duration = Gauge("fedkafka_lag_exporter_collect_seconds",
                              "How long the last collection took.", registry=r)
        self.errors = Counter("fedkafka_lag_exporter_errors_total",
                              "Collections that failed, by stage.", ["stage"], registry=r)
        for stage in ("store", "offsets"):
            self.errors.labels(stage)


# -- the process -------------------------------------------------------------------------------


class Exporter:
    """Collects every ``interval`` seconds until :meth:`stop`.

    :param backend: the metadata store (the exporter does not close it).
    """

    def __init__(self, config: ExporterConfig, backend: MetadataBackend) -> None:
        self.config = config
        self.backend = backend
        self.metrics = _Metrics()
        self.address: tuple[str, int] | None = None
        self.reader = OffsetReader(timeout=config.timeout / 2)
        self._stopping = asyncio.Event()
        self._http: Any = None

    def start_http(self) -> tuple[str, int]:
        host, port = self.config.listen
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.metrics.registry)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {host}:{port} ({e.strerror}); change "
                              "'listen' (port 0 = any free port)") from None
        self._http = server
        self.address = (host, int(server.server_address[1]))
        return self.address

    def stop(self) -> None:
        self._stopping.set()

    async def collect_once(self) -> Snapshot:
        """One collection; the snapshot served from now on."""
        t0 = time.perf_counter()
        try:
            fmap = await asyncio.to_thread(self.backend.load)
        except FedKafkaError as e:
            self.metrics.errors.labels("store").inc()
            log.warning("cannot load the map", error=str(e))
            return self.metrics.snapshot.snapshot
        if fmap is None:
            snap = Snapshot()
        else:
            try:
                report, capped = await collect(fmap, groups=self.config.groups,
                                               reader=self.reader, timeout=self.config.timeout)
            except FedKafkaError as e:
                self.metrics.errors.labels("offsets").inc()
                log.warning("cannot read offsets", error=str(e))
                snap = Snapshot(fmap=fmap)  # map gauges stay, stale lag goes
                self.metrics.snapshot.snapshot = snap
                return snap
            snap = Snapshot(fmap, report, len(capped))
        self.metrics.snapshot.snapshot = snap
        self.metrics.duration.set(time.perf_counter() - t0)
        self.metrics.last_success.set(time.time())
        return snap

    async def run(self) -> None:
        if self._http is None:
            self.start_http()
        await self._register()
        log.info("lag exporter started", address=self.address, interval=self.config.interval)
        try:
            while not self._stopping.is_set():
                try:
                    await self.collect_once()
                except Exception:
                    self.metrics.errors.labels("offsets").inc()
                    log.exception("collection failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.config.interval)
        finally:
            self.close()

    async def _register(self) -> None:
        assert self.address is not None
        data = {"metrics": f"{self.address[0]}:{self.address[1]}", "pid": os.getpid(),
                "started_at": time.time()}
        try:
            await asyncio.to_thread(self.backend.register_member, MEMBER_KIND,
                                    self.config.member_id, data)
        except FedKafkaError as e:
            log.warning("could not register as a member", error=str(e))

    def close(self) -> None:
        self.reader.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


async def serve(config: ExporterConfig) -> None:
    """Run an :class:`Exporter` until SIGTERM/SIGINT."""
    from federation.plugin import PluginError, get_plugins, parse_store

    name, options = parse_store(config.store)
    try:
        backend = await asyncio.to_thread(get_plugins().backend, name, **options)
    except PluginError as e:
        raise ConfigError(str(e)) from None
    exporter = Exporter(config, backend)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, exporter.stop)
    try:
        await exporter.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await asyncio.to_thread(backend.close)


def exporter_config(store: str, listen: str, interval: float = 15.0,
                    group_allow: Sequence[str] = (), group_deny: Sequence[str] = (),
                    max_groups: int = 500) -> dict[str, Any]:
    """The JSON config for :func:`config_from_dict` (what ``local up`` writes)."""
    return {"store": store, "listen": listen, "interval": interval,
            "group_allow": list(group_allow), "group_deny": list(group_deny),
            "max_groups": max_groups}
