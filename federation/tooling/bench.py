"""``fedkafka bench``: direct-to-Kafka versus through-the-proxy, same client, same records.

One run measures both paths with confluent-kafka (librdkafka does the work in C, so the
Python client is not the bottleneck):

* **produce**: ``--records`` records of ``--record-size`` bytes (no key, no compression,
  ``acks=all``) as fast as the client can send them; records/s and MB/s from the first
  ``produce()`` to the last acknowledgement, and p50/p99 of each record's latency
  (librdkafka's own ``produce()`` → acknowledgement time) *under that load*;
* **latency**: ``--latency-records`` records sent at a steady ``--latency-rate`` (same
  producer settings): p50/p99 of a lightly loaded round trip, ``linger.ms`` included;
* **consume**: every produced record read back from the beginning (manual assignment),
  records/s and MB/s from ``assign()`` to the last record, and the count read.

Equal footing: the proxy path writes to a logical topic; the direct path to physical
topics on the same physical clusters, with as many partitions on each as the logical
topic has there (one client per cluster, in parallel, when it spans several; ``fedkafka
bench`` starts a 1-cluster federation unless ``--clusters N``). ``--rounds`` rounds
alternate direct and proxy phase by phase; the summary is each metric's median. During
each phase the CPU of the proxy processes (a supervisor and its workers) and of the
broker JVMs is read from ``/proc/PID/stat``: CPU seconds per MB moved, for both paths, and
the proxy's over the brokers' in the same phases. Each path is warmed up first on its
own throw-away topic. ``--java`` adds Kafka's own ``ProducerPerformance``/
``ConsumerPerformance`` (acks=all, idempotent) on fresh topics, both paths.

Nothing here asserts on timing: numbers are reported, not judged.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from federation.core.errors import ConfigError, FedKafkaError

HOST = "127.0.0.1"
err = Console(stderr=True)

# (key, label, higher is better) for every metric, in table order.
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("produce_records_per_s", "produce records/s", True),
    ("produce_mb_per_s", "produce MB/s", True),
    ("produce_p50_ms", "produce p50 ms, full load", False),
    ("produce_p99_ms", "produce p99 ms, full load", False),
    ("latency_p50_ms", "produce p50 ms, paced", False),
    ("latency_p99_ms", "produce p99 ms, paced", False),
    ("consume_records_per_s", "consume records/s", True),
    ("consume_mb_per_s", "consume MB/s", True),
)
JAVA_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("produce_records_per_s", "Java produce records/s", True),
    ("produce_mb_per_s", "Java produce MB/s", True),
    ("produce_avg_ms", "Java produce avg ms", False),
    ("produce_p50_ms", "Java produce p50 ms", False),
    ("produce_p99_ms", "Java produce p99 ms", False),
    ("consume_records_per_s", "Java consume records/s", True),
    ("consume_mb_per_s", "Java consume MB/s", True),
)
MB = 1024 * 1024  # MB/s as Kafka's perf tools print it (MiB)
PRIMING = 64  # records sent (and counted as produced) before each timed produce


@dataclass(frozen=True, slots=True)
class Settings:
    records: int
    record_size: int
    partitions: int
    latency_records: int
    latency_rate: int
    warmup_records: int
    linger_ms: int
    rounds: int = 1


# -- topics --------------------------------------------------------------------------


def _admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "client.id": "fk-bench-admin",
                        "log_level": 3})


def create_physical_topic(bootstrap: str, name: str, partitions: int) -> None:
    """Create ``name`` on one physical cluster (the cluster's default replication)."""
    from confluent_kafka.cimpl import NewTopic

    admin = _admin(bootstrap)  # kept alive until the answer: destroying it fails the future
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=-1)],
        request_timeout=30)
    futures[name].result(timeout=60)
    del admin


def create_logical_topic(state: dict[str, Any], name: str, partitions: int,
                         strategy: str = "contiguous") -> dict[str, int]:
    """Lay out a logical topic, create its physical topics and publish it in the map.

    Physical ``<name>.fk`` topics where the strategy puts segments, the same-named shadow
    topic on the coordination cluster, then the topic in the map (the proxies pick it up
    through their store watch), all by :func:`federation.clusters.admin.create_topic`.

    :returns: physical cluster → how many of its partitions it holds (the layout the
        direct path copies, so that both paths use the same brokers).
    """
    import asyncio

    from federation.plugin import get_plugins, parse_store

    plugins = get_plugins()
    kind, opts = parse_store(state["store"])
    backend = plugins.backend(kind, **opts)
    from federation.clusters import admin

    try:
        topic = asyncio.run(admin.create_topic(backend, name, partitions, strategy))
    finally:
        backend.close()
    layout: dict[str, int] = {}
    for lp in topic.partitions:
        layout[lp.active.cluster] = layout.get(lp.active.cluster, 0) + 1
    return layout


def wait_topic(bootstrap: str, name: str, partitions: int, timeout: float = 60.0) -> None:
    """Wait until ``bootstrap`` reports ``name`` with ``partitions`` partitions and leaders."""
    admin = _admin(bootstrap)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(topic=name, timeout=5)
            t = md.topics.get(name)
            if t is not None and t.error is None and len(t.partitions) == partitions and all(
                    p.leader >= 0 and p.error is None for p in t.partitions.values()):
                return
            last = f"{t.error if t is not None else 'missing'}"
        except Exception as e:  # noqa: BLE001 - a KafkaException while topics appear
            last = str(e)
        time.sleep(0.2)
    raise FedKafkaError(f"topic {name} did not appear at {bootstrap} within {timeout:.0f}s "
                        f"({last})")


# -- measurements -------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[idx]


def _producer(bootstrap: str, linger_ms: int) -> Any:
    from confluent_kafka import Producer

    return Producer({
        "bootstrap.servers": bootstrap, "acks": "all", "linger.ms": linger_ms,
        "enable.idempotence": False, "compression.type": "none",
        "client.id": "fk-bench",
    })


def produce(bootstrap: str, topic: str, count: int, size: int, *, linger_ms: int,
            rate: float | None = None) -> dict[str, Any]:
    """Send ``count`` records of ``size`` bytes; at most ``rate`` per second when given."""
    producer = _producer(bootstrap, linger_ms)
    value = os.urandom(size)
    latencies: list[float] = []
    errors: list[str] = []

    def on_delivery(error: Any, msg: Any) -> None:
        if error is not None:
            errors.append(str(error))
        else:
            latencies.append(msg.latency())

    # Connections and metadata first, so they do not count as throughput or latency:
    # a few records to every partition leader, acknowledged before the clock starts.
    producer.list_topics(topic=topic, timeout=30)
    for _ in range(PRIMING):
        producer.produce(topic, value=value, on_delivery=on_delivery)
    producer.flush(60)
    primed = len(latencies)
    latencies.clear()
    t0 = time.perf_counter()
    for i in range(count):
        if rate is not None:
            # Sleep (not a short poll(), which spins) so the brokers keep their CPU.
            due = t0 + i / rate
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
        while True:
            try:
                producer.produce(topic, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(300)
    elapsed = time.perf_counter() - t0
    latencies.sort()
    acked = len(latencies)
    if remaining or errors:
        err.print(f"[yellow]{topic}: {remaining} undelivered, {len(errors)} failed "
                  f"{errors[:3]}[/]")
    return {
        "records": acked, "primed": primed, "failed": len(errors) + remaining,
        "seconds": round(elapsed, 3),
        "records_per_s": acked / elapsed if elapsed else 0.0,
        "mb_per_s": acked * size / MB / elapsed if elapsed else 0.0,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] * 1000) if latencies else float("nan"),
        "_latencies": latencies,
    }


def consume(bootstrap: str, topic: str, partitions: int, expected: int, size: int,
            idle_timeout: float = 30.0) -> dict[str, Any]:
    """Read ``topic`` from the beginning until ``expected`` records (or nothing for a while)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"fk-bench-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "client.id": "fk-bench",
    })
    got = 0
    try:
        consumer.list_topics(topic=topic, timeout=30)
        t0 = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        last = t0
        first: float | None = None
        while got < expected:
            batch = consumer.consume(num_messages=10_000, timeout=0.5)
            now = time.perf_counter()
            n = sum(1 for m in batch if m.error() is None)
            if n:
                got += n
                last = now
                if first is None:
                    first = now - t0
            elif now - last > idle_timeout:
                err.print(f"[yellow]{topic}: nothing for {idle_timeout:.0f}s after "
                          f"{got} of {expected} records[/]")
                break
        elapsed = last - t0
    finally:
        consumer.close()
    return {
        "records": got, "seconds": round(elapsed, 3),
        "first_record_s": round(first, 3) if first is not None else None,
        "records_per_s": got / elapsed if elapsed > 0 else 0.0,
        "mb_per_s": got * size / MB / elapsed if elapsed > 0 else 0.0,
    }


# -- CPU ---------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a proxy's worker processes), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def _cpu_seconds(pids: list[int]) -> float | None:
    """User+system CPU time of ``pids`` so far (Linux /proc), None when unknown."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (threads started later inherit it)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        with suppress(ProcessLookupError, PermissionError):  # a thread just ended
            os.sched_setaffinity(tid, cpus)


def pin_proxy_apart(state: dict[str, Any]) -> dict[str, list[int]]:
    """The proxy's processes on the machine's last CPU; brokers, the rest of the
    federation and this process (the clients) on the others.

    Equal footing on a small machine: both paths get the same CPUs for brokers and
    clients, and the proxy gets a core of its own, as it would on its own host. Without
    it the proxy's CPU comes out of the brokers' and clients' share, and the throughput
    ratio measures the machine's core count, not the proxy.
    """
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("--pin-proxy needs Linux (sched_setaffinity)")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise ConfigError(f"--pin-proxy needs at least 2 CPUs; this process may use {cpus}")
    proxy_cpus, rest_cpus = {cpus[-1]}, set(cpus[:-1])
    for p in state.get("processes", []):
        pids = _descendants(int(p["pid"]))
        for pid in pids:
            _set_affinity(pid, proxy_cpus if p.get("kind") == "proxy" else rest_cpus)
    _set_affinity(os.getpid(), rest_cpus)
    return {"proxy": sorted(proxy_cpus), "brokers_and_clients": sorted(rest_cpus)}


def _machine_busy_seconds() -> float | None:
    """CPU seconds spent not idle by the whole machine so far (Linux /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(f) for f in fields[:8]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


@contextmanager
def _cpu_meter(groups: dict[str, list[int]], into: dict[str, Any]) -> Iterator[None]:
    """Record the CPU seconds of each process group (``proxy``: the proxy processes and
    their workers, ``broker``: the broker JVMs) and the machine's during the block.

    Sets ``<group>_cpu_s`` and ``<group>_cpu_util`` (cores busy over the phase), and
    ``machine_cpu_util``; ``<group>_cpu_s_per_mb`` is added by :func:`_per_mb`.
    """
    before = {g: _cpu_seconds(p) for g, p in groups.items() if p}
    proxies = groups.get("proxy") or []
    each_before = {pid: _cpu_seconds([pid]) for pid in proxies} if len(proxies) > 1 else {}
    busy_before = _machine_busy_seconds()
    t0 = time.perf_counter()
    yield
    wall = time.perf_counter() - t0
    busy_after = _machine_busy_seconds()
    if each_before:  # a proxy with worker processes: how the work was spread over them
        into["proxy_cpu_s_by_process"] = {
            str(pid): round(now - was, 3) for pid, was in each_before.items()
            if was is not None and (now := _cpu_seconds([pid])) is not None}
    for group, was in before.items():
        now = _cpu_seconds(groups[group])
        if was is None or now is None:
            continue
        into[f"{group}_cpu_s"] = round(now - was, 3)
        if into.get("seconds"):
            into[f"{group}_cpu_util"] = round((now - was) / into["seconds"], 2)
    if busy_before is not None and busy_after is not None and wall > 0:
        into["machine_cpu_util"] = round((busy_after - busy_before) / wall, 2)


def _per_mb(res: dict[str, Any], size: int) -> None:
    """Add ``<group>_cpu_s_per_mb`` (CPU seconds per MiB of record values moved)."""
    mb = res.get("records", 0) * size / MB
    for group in ("proxy", "broker"):
        cpu = res.get(f"{group}_cpu_s")
        if cpu is not None and mb > 0:
            res[f"{group}_cpu_s_per_mb"] = round(cpu / mb, 5)


# -- Java tools -------------------------------------------------------------------------

_PRODUCER_RE = re.compile(
    r"(?P<n>\d+) records sent, (?P<rps>[\d.]+) records/sec \((?P<mbs>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency, (?P<p50>\d+) ms 50th, "
    r"(?P<p95>\d+) ms 95th, (?P<p99>\d+) ms 99th")


def java_produce(dist: Any, bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    cmd = dist.java_command(
        dist.producer_perf, "--topic", topic, "--num-records", str(count),
        "--record-size", str(size), "--throughput", "-1",
        "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all",
        "enable.idempotence=true", "client.id=fk-bench-java", heap="512m")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    match = None
    for line in proc.stdout.splitlines():
        match = _PRODUCER_RE.search(line) or match
    if proc.returncode != 0 or match is None:
        raise FedKafkaError(f"ProducerPerformance failed (exit {proc.returncode}):\n"
                            f"{(proc.stdout + proc.stderr)[-1500:]}")
    return {
        "records": int(match["n"]), "records_per_s": float(match["rps"]),
        "mb_per_s": float(match["mbs"]), "avg_ms": float(match["avg"]),
        "p50_ms": float(match["p50"]), "p99_ms": float(match["p99"]),
        "max_ms": float(match["max"]), "summary": match.group(0),
    }


def java_consume(dist: Any, bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    cmd = dist.java_command(
        dist.consumer_perf, "--bootstrap-server", bootstrap, "--topic", topic,
        "--messages", str(count), "--timeout", "60000", "--hide-header",
        heap="512m")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    row: list[str] | None = None
    for line in proc.stdout.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 6 and re.match(r"^\d{4}-", fields[0]):
            row = fields
    if proc.returncode != 0 or row is None:
        raise FedKafkaError(f"ConsumerPerformance failed (exit {proc.returncode}):\n"
                            f"{(proc.stdout + proc.stderr)[-1500:]}")
    # start, end, MB, MB/s, records, records/s[, rebalance ms, fetch ms, fetch MB/s, fetch rec/s]
    out: dict[str, Any] = {"records": int(row[4]), "mb_per_s": float(row[3]),
                           "records_per_s": float(row[5]), "row": ", ".join(row)}
    if len(row) >= 10:
        out["rebalance_ms"] = float(row[6])
        out["fetch_mb_per_s"] = float(row[8])
        out["fetch_records_per_s"] = float(row[9])
    return out


# -- the run ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "system": platform.platform(),
            "python": platform.python_version()}


def _ratio(proxy: float, direct: float) -> float | None:
    if not direct or direct != direct or proxy != proxy:  # zero or NaN
        return None
    return round(proxy / direct, 3)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one client of a path talks to: a bootstrap, a topic and its partition count."""

    bootstrap: str
    topic: str
    partitions: int


def _split(count: int, targets: list[Target]) -> list[int]:
    """``count`` split over ``targets`` in proportion to their partitions (exact sum)."""
    total = sum(t.partitions for t in targets)
    shares = [count * t.partitions // total for t in targets]
    shares[0] += count - sum(shares)
    return shares


def _parallel(jobs: list[Callable[[], dict[str, Any]]]) -> list[dict[str, Any]]:
    if len(jobs) == 1:
        return [jobs[0]()]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: job(), jobs))


def produce_to(targets: list[Target], count: int, size: int, *, linger_ms: int,
               rate: float | None = None) -> dict[str, Any]:
    """:func:`produce` to every target at once (one client per physical cluster on the
    direct path of a multi-cluster topic), ``count`` split by partitions; merged result."""
    shares = _split(count, targets)
    total_parts = sum(t.partitions for t in targets)
    parts = _parallel([
        functools.partial(produce, t.bootstrap, t.topic, n, size, linger_ms=linger_ms,
                          rate=None if rate is None else rate * t.partitions / total_parts)
        for t, n in zip(targets, shares, strict=True)])
    per_target = [p["records"] + p["primed"] for p in parts]
    if len(parts) == 1:
        parts[0].pop("_latencies")
        return {**parts[0], "per_target": per_target}
    latencies = sorted(x for p in parts for x in p.pop("_latencies"))
    acked = sum(p["records"] for p in parts)
    elapsed = max(p["seconds"] for p in parts)
    return {
        "records": acked, "primed": sum(p["primed"] for p in parts),
        "failed": sum(p["failed"] for p in parts), "seconds": elapsed,
        "records_per_s": acked / elapsed if elapsed else 0.0,
        "mb_per_s": acked * size / MB / elapsed if elapsed else 0.0,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] * 1000) if latencies else float("nan"),
        "clients": len(parts), "per_target": per_target,
    }


def consume_from(targets: list[Target], expected: list[int], size: int) -> dict[str, Any]:
    """:func:`consume` from every target at once; merged result."""
    parts = _parallel([functools.partial(consume, t.bootstrap, t.topic, t.partitions, n, size)
                       for t, n in zip(targets, expected, strict=True)])
    if len(parts) == 1:
        return parts[0]
    got = sum(p["records"] for p in parts)
    elapsed = max(p["seconds"] for p in parts)
    return {"records": got, "seconds": elapsed,
            "first_record_s": min((p["first_record_s"] for p in parts
                                   if p["first_record_s"] is not None), default=None),
            "records_per_s": got / elapsed if elapsed > 0 else 0.0,
            "mb_per_s": got * size / MB / elapsed if elapsed > 0 else 0.0,
            "clients": len(parts)}


def _median(values: list[float]) -> float:
    clean = sorted(v for v in values if v == v)
    if not clean:
        return float("nan")
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


def _summary(r: dict[str, Any]) -> dict[str, float]:
    nan = float("nan")
    return {
        "produce_records_per_s": r["produce"]["records_per_s"],
        "produce_mb_per_s": r["produce"]["mb_per_s"],
        "produce_p50_ms": r["produce"]["p50_ms"],
        "produce_p99_ms": r["produce"]["p99_ms"],
        "latency_p50_ms": r.get("latency", {}).get("p50_ms", nan),
        "latency_p99_ms": r.get("latency", {}).get("p99_ms", nan),
        "consume_records_per_s": r["consume"]["records_per_s"],
        "consume_mb_per_s": r["consume"]["mb_per_s"],
        "produce_broker_cpu_s_per_mb": r["produce"].get("broker_cpu_s_per_mb", nan),
        "produce_proxy_cpu_s_per_mb": r["produce"].get("proxy_cpu_s_per_mb", nan),
        "consume_broker_cpu_s_per_mb": r["consume"].get("broker_cpu_s_per_mb", nan),
        "consume_proxy_cpu_s_per_mb": r["consume"].get("proxy_cpu_s_per_mb", nan),
    }


def _targets(layout: dict[str, int], bootstraps: dict[str, str], topic: str) -> list[Target]:
    return [Target(bootstraps[c], topic, n) for c, n in sorted(layout.items())]


def run_bench(state: dict[str, Any], settings: Settings, *, java: bool,
              progress: Callable[[str], None], pin_proxy: bool = False) -> dict[str, Any]:
    """Measure both paths on the running federation described by ``state``.

    Equal footing: the direct path writes to and reads from physical topics on the same
    physical clusters, with the same partition counts, as the logical topic's segments
    (one client per cluster, in parallel, when the logical topic spans several).
    ``settings.rounds`` rounds alternate direct and proxy phase by phase; the summary is
    the median of the rounds.
    """
    import confluent_kafka

    bootstraps = {c["name"]: c["bootstrap"] for c in state["clusters"]}
    proxy_bs: str = state["bootstrap"]
    procs = state.get("processes", [])
    proxy_pids = [q for p in procs if p.get("kind") == "proxy"
                  for q in _descendants(int(p["pid"]))]
    broker_pids = [int(p["pid"]) for p in procs if p.get("kind") == "kafka-broker"]
    pinning = pin_proxy_apart(state) if pin_proxy else None
    if pinning is not None:
        progress(f"CPUs: proxy {pinning['proxy']}, brokers and clients "
                 f"{pinning['brokers_and_clients']}")
    tag = uuid.uuid4().hex[:6]
    n = settings.partitions
    layouts: dict[str, dict[str, int]] = {}

    def topics(suffix: str) -> tuple[list[Target], list[Target]]:
        direct, logical = f"bench-{tag}-{suffix}-direct", f"bench-{tag}-{suffix}"
        layout = create_logical_topic(state, logical, n)
        layouts[suffix] = layout
        progress(f"topics {logical} (logical: "
                 + ", ".join(f"{k} partitions on {c}" for c, k in sorted(layout.items()))
                 + f") and {direct} (the same partitions direct)")
        for cluster, count in layout.items():
            create_physical_topic(bootstraps[cluster], direct, count)
        for cluster, count in layout.items():
            wait_topic(bootstraps[cluster], direct, count)
        wait_topic(proxy_bs, logical, n)
        return _targets(layout, bootstraps, direct), [Target(proxy_bs, logical, n)]

    size = settings.record_size
    warm = topics("warm")
    for name, targets in (("direct", warm[0]), ("proxy", warm[1])):
        if settings.warmup_records:
            progress(f"{name}: warm-up, {settings.warmup_records:,} records")
            produce_to(targets, settings.warmup_records, size, linger_ms=settings.linger_ms)
    rounds: list[dict[str, dict[str, Any]]] = []
    for rnd in range(settings.rounds):
        main = topics(f"r{rnd}")
        paths = {"direct": main[0], "proxy": main[1]}
        results: dict[str, dict[str, Any]] = {"direct": {}, "proxy": {}}
        for phase in ("produce", "latency", "consume"):
            for name, targets in paths.items():
                groups = {"broker": broker_pids, "proxy": proxy_pids if name == "proxy" else []}
                res: dict[str, Any] = {}
                label = f"round {rnd + 1}/{settings.rounds}, {name}"
                if phase == "produce":
                    progress(f"{label}: producing {settings.records:,} x {size} B")
                    with _cpu_meter(groups, res):
                        res.update(produce_to(targets, settings.records, size,
                                              linger_ms=settings.linger_ms))
                elif phase == "latency":
                    if not settings.latency_records:
                        continue
                    progress(f"{label}: {settings.latency_records:,} records at "
                             f"{settings.latency_rate}/s for latency")
                    with _cpu_meter(groups, res):
                        res.update(produce_to(targets, settings.latency_records, size,
                                              linger_ms=settings.linger_ms,
                                              rate=settings.latency_rate))
                else:
                    expected = sum(r["records"] + r["primed"] for r in results[name].values())
                    progress(f"{label}: consuming {expected:,} records")
                    res = {"expected": expected}
                    # Each target holds what was produced to it.
                    per = [sum(r["per_target"][i] for r in results[name].values())
                           for i in range(len(targets))]
                    with _cpu_meter(groups, res):
                        res.update(consume_from(targets, per, size))
                _per_mb(res, size)
                results[name][phase] = res
        rounds.append(results)

    summaries = [{name: _summary(r) for name, r in results.items()} for results in rounds]
    keys = list(summaries[0]["direct"])
    summary = {name: {k: _median([s[name][k] for s in summaries]) for k in keys}
               for name in ("direct", "proxy")}
    ratio = {k: _ratio(summary["proxy"][k], summary["direct"][k]) for k, _, _ in METRICS}
    per_round_ratio = [{k: _ratio(s["proxy"][k], s["direct"][k]) for k, _, _ in METRICS}
                       for s in summaries]
    sp = summary["proxy"]
    targets_met = {
        "produce_ratio": ratio["produce_records_per_s"],
        "consume_ratio": ratio["consume_records_per_s"],
        "paced_p99_overhead_ms": _delta(sp["latency_p99_ms"], summary["direct"]["latency_p99_ms"]),
        "paced_p50_overhead_ms": _delta(sp["latency_p50_ms"], summary["direct"]["latency_p50_ms"]),
        # The proxy's CPU per MB against the brokers' in the same (proxy-path) phases.
        "produce_cpu_proxy_over_broker": _ratio(sp["produce_proxy_cpu_s_per_mb"],
                                                sp["produce_broker_cpu_s_per_mb"]),
        "consume_cpu_proxy_over_broker": _ratio(sp["consume_proxy_cpu_s_per_mb"],
                                                sp["consume_broker_cpu_s_per_mb"]),
    }
    layout = layouts.get("r0", {})
    report: dict[str, Any] = {
        "machine": machine(),
        "kafka_version": state.get("kafka_version"),
        "client": f"confluent-kafka {importlib.metadata.version('confluent-kafka')} "
                  f"(librdkafka {confluent_kafka.libversion()[0]})",
        "settings": {
            "records": settings.records, "record_size": size, "partitions": n,
            "acks": "all", "linger_ms": settings.linger_ms, "compression": "none",
            "latency_records": settings.latency_records,
            "latency_rate": settings.latency_rate, "warmup_records": settings.warmup_records,
            "rounds": settings.rounds, "cpu_pinning": pinning,
        },
        "topics": {
            "direct": {"clusters": {c: {"bootstrap": bootstraps[c], "partitions": k}
                                    for c, k in sorted(layout.items())}},
            "proxy": {"clusters": len(layout), "bootstrap": proxy_bs,
                      "proxy_processes": len(proxy_pids),
                      "workers": state.get("proxy_workers", 1)},
        },
        "results": rounds[-1],
        "rounds": rounds,
        "summary": summary,
        "ratio": ratio,
        "ratio_per_round": per_round_ratio,
        "targets": targets_met,
        "load_average": _loadavg(),
        "java": None,
    }
    if java:
        report["java"] = run_java(state, settings, topics, progress,
                                  {"broker": broker_pids, "proxy": proxy_pids})
    return report


def _delta(a: float, b: float) -> float | None:
    if a != a or b != b:
        return None
    return round(a - b, 3)


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def run_java(state: dict[str, Any], settings: Settings,
             topics: Callable[[str], tuple[list[Target], list[Target]]],
             progress: Callable[[str], None], groups: dict[str, list[int]]) -> dict[str, Any]:
    """Kafka's ProducerPerformance then ConsumerPerformance on both paths (acks=all,
    idempotent, ``--record-size`` records); several direct clusters run side by side and
    their throughputs add up (their latencies: the slowest's)."""
    from federation.tooling.kafka_dist import install_kafka

    dist, _ = install_kafka(state.get("kafka_version") or "4.1.1")
    direct, logical = topics("java")
    paths = {"direct": direct, "proxy": logical}
    out: dict[str, Any] = {"direct": {}, "proxy": {}}
    size = settings.record_size
    for name, targets in paths.items():
        progress(f"{name}: Java ProducerPerformance, {settings.records:,} records")
        res: dict[str, Any] = {}
        meter = {**groups, "proxy": groups["proxy"] if name == "proxy" else []}
        t0 = time.perf_counter()
        with _cpu_meter(meter, res):
            parts = _parallel([functools.partial(java_produce, dist, t.bootstrap, t.topic, k,
                                                 size)
                               for t, k in zip(targets, _split(settings.records, targets),
                                               strict=True)])
            res["seconds"] = time.perf_counter() - t0
        res.update(_merge_java(parts))
        _per_mb(res, size)
        out[name]["produce"] = res
    for name, targets in paths.items():
        progress(f"{name}: Java ConsumerPerformance")
        res = {}
        meter = {**groups, "proxy": groups["proxy"] if name == "proxy" else []}
        t0 = time.perf_counter()
        counts = _split(out[name]["produce"]["records"], targets)
        with _cpu_meter(meter, res):
            parts = _parallel([functools.partial(java_consume, dist, t.bootstrap, t.topic, k)
                               for t, k in zip(targets, counts, strict=True)])
            res["seconds"] = time.perf_counter() - t0
        res.update(_merge_java(parts))
        _per_mb(res, size)
        out[name]["consume"] = res
    summary = {}
    for name in ("direct", "proxy"):
        p, c = out[name]["produce"], out[name]["consume"]
        summary[name] = {
            "produce_records_per_s": p["records_per_s"], "produce_mb_per_s": p["mb_per_s"],
            "produce_avg_ms": p.get("avg_ms", float("nan")),
            "produce_p50_ms": p.get("p50_ms", float("nan")),
            "produce_p99_ms": p.get("p99_ms", float("nan")),
            "consume_records_per_s": c["records_per_s"],
            "consume_mb_per_s": c["mb_per_s"],
        }
    out["summary"] = summary
    out["ratio"] = {k: _ratio(summary["proxy"][k], summary["direct"][k])
                    for k, _, _ in JAVA_METRICS}
    return out


def _merge_java(parts: list[dict[str, Any]]) -> dict[str, Any]:
    if len(parts) == 1:
        return parts[0]
    out: dict[str, Any] = {
        "records": sum(p["records"] for p in parts),
        "records_per_s": sum(p["records_per_s"] for p in parts),
        "mb_per_s": sum(p["mb_per_s"] for p in parts),
    }
    for key in ("avg_ms", "p50_ms", "p99_ms", "max_ms"):
        if all(key in p for p in parts):
            out[key] = max(p[key] for p in parts)
    return out


# -- output --------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _no_nan(value: Any) -> Any:
    """``value`` with NaN floats as None (strict JSON has no NaN)."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def render(report: dict[str, Any], console: Console) -> None:
    s = report["settings"]
    m = report["machine"]
    rounds = s.get("rounds", 1)
    table = Table(title=f"fedkafka bench: {s['records']:,} records x {s['record_size']} B, "
                        f"{s['partitions']} partitions, acks=all"
                        + (f", median of {rounds} rounds" if rounds > 1 else ""))
    table.add_column("metric")
    table.add_column("direct", justify="right")
    table.add_column("proxy", justify="right")
    table.add_column("proxy/direct", justify="right")
    rows: list[tuple[dict[str, Any], tuple[tuple[str, str, bool], ...]]] = [
        (report, METRICS)]
    if report.get("java"):
        rows.append((report["java"], JAVA_METRICS))
    for part, metrics in rows:
        for key, label, _ in metrics:
            table.add_row(label, _fmt(part["summary"]["direct"][key]),
                          _fmt(part["summary"]["proxy"][key]), _fmt(part["ratio"][key]))
    r = report["results"]
    table.add_row("consumed / produced",
                  f"{r['direct']['consume']['records']:,} / {r['direct']['consume']['expected']:,}",
                  f"{r['proxy']['consume']['records']:,} / {r['proxy']['consume']['expected']:,}",
                  "")

    def cores(path: str, key: str) -> str:
        vals = [r[path][ph].get(key) for ph in ("produce", "consume")]
        return "-" if None in vals else f"{vals[0]:.2f} / {vals[1]:.2f}"

    def per_mb(path: str, group: str) -> str:
        vals = [report["summary"][path].get(f"{ph}_{group}_cpu_s_per_mb")
                for ph in ("produce", "consume")]
        return "-" if any(v is None or v != v for v in vals) else \
            f"{vals[0] * 1000:.2f} / {vals[1] * 1000:.2f}"

    table.add_row("machine CPU, prod/cons", cores("direct", "machine_cpu_util"),
                  cores("proxy", "machine_cpu_util"), "")
    table.add_row("brokers CPU ms/MB, prod/cons", per_mb("direct", "broker"),
                  per_mb("proxy", "broker"), "")
    table.add_row("proxy CPU ms/MB, prod/cons", "", per_mb("proxy", "proxy"), "")
    console.print(table)
    t = report.get("targets") or {}

    def verdict(value: float | None, ok: bool) -> str:
        return "-" if value is None else f"{value:.2f} ({'met' if ok else 'MISSED'})"

    def at_least(key: str, bound: float) -> str:
        v = t.get(key)
        return verdict(v, v is not None and v >= bound)

    def at_most(key: str, bound: float) -> str:
        v = t.get(key)
        return verdict(v, v is not None and v <= bound)

    console.print(
        "targets: produce ratio " + at_least("produce_ratio", 0.95)
        + "; consume ratio " + at_least("consume_ratio", 0.95)
        + "; paced p99 overhead ms " + at_most("paced_p99_overhead_ms", 1.0)
        + "; proxy/broker CPU per MB, produce " + at_most("produce_cpu_proxy_over_broker", 0.5)
        + ", consume " + at_most("consume_cpu_proxy_over_broker", 0.5))
    load = report.get("load_average")
    if load and m.get("cores") and max(load[:2]) > m["cores"]:
        console.print(f"[yellow]warning: the load average ({load[0]:.1f}, {load[1]:.1f}) exceeds "
                      f"the {m['cores']} cores: other work competed for the CPU, so the "
                      "throughput and latency ratios say little (CPU per MB holds up better)[/]")
    if s.get("cpu_pinning"):
        pin = s["cpu_pinning"]
        console.print(f"CPUs: the proxy on {pin['proxy']}, brokers and clients on "
                      f"{pin['brokers_and_clients']} (both paths; --pin-proxy)")
    if rounds > 1:
        console.print("per round, produce/consume ratio: " + ", ".join(
            f"{_fmt(x['produce_records_per_s'])}/{_fmt(x['consume_records_per_s'])}"
            for x in report["ratio_per_round"]))
    console.print(f"paced = {s['latency_records']:,} records at {s['latency_rate']:,}/s; "
                  "CPU in cores busy or CPU ms per MB of record values; MB = 2^20 bytes")
    console.print(f"machine: {m['cores']} cores ({m['cpu']}), {m['system']}, "
                  f"Python {m['python']}"
                  + (f"; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
                     if load else ""))
    direct = ", ".join(f"{c} ({d['bootstrap']}, {d['partitions']} partitions)"
                       for c, d in report["topics"]["direct"]["clusters"].items())
    proxy = report["topics"]["proxy"]
    console.print(f"Kafka {report['kafka_version']}; client {report['client']}; "
                  f"direct = {direct}; proxy = {proxy['bootstrap']} over "
                  f"{proxy['clusters']} cluster(s), {proxy['proxy_processes']} proxy "
                  "process(es)")


# -- the command ---------------------------------------------------------------------------


@contextmanager
def federation_for(workdir: Path | None, base_port: int, kafka_version: str,
                   progress: Callable[[str], None], clusters: int = 1,
                   workers: int = 1) -> Iterator[dict[str, Any]]:
    """An existing running federation (``workdir``), or a new one stopped at the end."""
    from federation.tooling.local import LocalFederation

    if workdir is not None:
        fed = LocalFederation(workdir)
        state = fed.load()
        if state is None or not fed.running():
            raise ConfigError(f"no running local federation in {fed.workdir}; start one with "
                              "`fedkafka local up` or leave out --workdir")
        if not state.get("proxies"):
            raise ConfigError(f"the federation in {fed.workdir} has no proxy to measure")
        yield state
        return
    from federation.tooling.local import temporary_federation

    with temporary_federation("fedkafka-bench-", progress, clusters=clusters, proxies=1,
                              base_port=base_port, kafka_version=kafka_version,
                              heap="512m", exporter=False, proxy_workers=workers) as state:
        yield state


def require_client() -> None:
    """The benchmark's client library, or exactly what to install."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        raise ConfigError("fedkafka bench needs confluent-kafka (librdkafka): install it with "
                          "`pip install 'confluent-kafka>=2.5'` (a dependency of fedkafka "
                          "since it has the benchmark)") from None


def _logs_to_stderr() -> None:
    """Library logs on stderr, warnings and worse only: stdout is the report."""
    from federation.core import logs

    logs.configure("WARNING")


def register(app: typer.Typer) -> None:
    """Add ``bench`` to ``app``."""
    from federation.tooling.kafka_dist import DEFAULT_KAFKA_VERSION

    @app.command("bench")
    def bench(
        records: Annotated[int, typer.Option(
            help="Records per path for the throughput phases.")] = 200_000,
        record_size: Annotated[int, typer.Option(help="Bytes per record value.")] = 1024,
        partitions: Annotated[int, typer.Option(help="Partitions of both topics.")] = 8,
        latency_records: Annotated[int, typer.Option(
            help="Records sent at --latency-rate for the light-load latency (0: skip).")]
        = 5000,
        latency_rate: Annotated[int, typer.Option(help="Records/s of the latency phase.")]
        = 1000,
        warmup: Annotated[int | None, typer.Option(
            help="Warm-up records per path (default: min(records, 20000)).")] = None,
        linger_ms: Annotated[int, typer.Option(help="Producer linger.ms.")] = 5,
        java: Annotated[bool, typer.Option(
            "--java", help="Also run Kafka's ProducerPerformance/ConsumerPerformance.")]
        = False,
        workdir: Annotated[Path | None, typer.Option(
            help="Use the running `fedkafka local up` in this directory instead of "
                 "starting one.")] = None,
        base_port: Annotated[int, typer.Option(
            help="Base port of the federation started for the run.")] = 25092,
        rounds: Annotated[int, typer.Option(
            help="Rounds (direct and proxy alternating); the summary is their median.")] = 3,
        clusters: Annotated[int, typer.Option(
            help="Physical clusters of the federation started for the run (the logical "
                 "topic spans them; the direct path uses the same ones).")] = 1,
        workers: Annotated[int, typer.Option(
            help="Worker processes of the proxy started for the run.")] = 1,
        kafka_version: Annotated[str, typer.Option(
            help="Kafka release of the federation started for the run.")]
        = DEFAULT_KAFKA_VERSION,
        pin_proxy: Annotated[bool, typer.Option(
            "--pin-proxy", help="Run the proxy on a CPU of its own and brokers and clients "
                                "on the others (both paths), as on separate hosts.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]
        = False,
    ) -> None:
        """Throughput and latency, direct to Kafka versus through the proxy (one run)."""
        if records < 1 or record_size < 1 or partitions < 1 or latency_records < 0 or (
                latency_rate < 1) or rounds < 1 or clusters < 1 or workers < 1:
            raise typer.BadParameter("counts and sizes must be positive")
        settings = Settings(records=records, record_size=record_size, partitions=partitions,
                            latency_records=latency_records, latency_rate=latency_rate,
                            warmup_records=min(records, 20_000) if warmup is None else warmup,
                            linger_ms=linger_ms, rounds=rounds)

        def progress(msg: str) -> None:
            err.print(f"[dim]{msg}[/]")

        _logs_to_stderr()

        try:
            require_client()
            with federation_for(workdir, base_port, kafka_version, progress, clusters,
                                workers) as state:
                report = run_bench(state, settings, java=java, progress=progress,
                                   pin_proxy=pin_proxy)
        except FedKafkaError as e:
            err.print(f"[red]error:[/] {e}")
            raise typer.Exit(1) from e
        emit(report, as_json, render)


def emit(report: dict[str, Any], as_json: bool,
         render_table: Callable[[dict[str, Any], Console], None]) -> None:
    """A bench command's report on stdout: JSON (NaN as null) or its rendered table."""
    if as_json:
        sys.stdout.write(json.dumps(_no_nan(report), indent=2) + "\n")
    else:
        render_table(report, Console())


def main() -> None:
    """``python -m federation.tooling.bench``: the same command without the rest of the CLI."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
