"""``fedkafka bench-workers``: does one proxy host's throughput scale with its workers?

Issue 9's target: 1 → 2 workers ≥ 1.8 x the throughput, where the brokers are not the
bottleneck. On a small machine brokers, clients and proxy share the cores, so the proxy
is made the bottleneck on purpose: **each worker process is capped at ``--worker-cpu``
cores with its own cgroup** (:mod:`federation.tooling.cgroups`; v1 ``cpu.cfs_quota_us``
or v2 ``cpu.max``) and stands in for one core of a bigger proxy host, while the brokers
and clients stay uncapped; the report shows their CPU and the machine's idle share, the
evidence that they had headroom.

For each worker count W of ``--workers`` (``--rounds`` times, alternating): the proxy of a
1-cluster federation is (re)started with W workers, each worker is put into its own
capped cgroup, ``--connections`` confluent-kafka producers (one connection each, in
threads of this process) send ``--record-size`` records as fast as they can to one
logical topic, and after ``--warmup`` seconds the acknowledged bytes are counted over a
``--seconds`` window: a time window, so an uneven spread of connections over the
workers does not matter as long as every worker has some (checked: each worker's
received record bytes from its own metrics; the producers reconnect when one had none).
The cgroups are removed at the end, also on an error or Ctrl-C.

Nothing here asserts on timing: numbers are reported, with a verdict against the target.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import signal
import statistics
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console
from rich.table import Table

from federation.core.errors import FedKafkaError
from federation.tooling.bench import (
    MB,
    _cpu_seconds,
    _descendants,
    _loadavg,
    _logs_to_stderr,
    _machine_busy_seconds,
    create_logical_topic,
    emit,
    federation_for,
    machine,
    require_client,
    wait_topic,
)
from federation.tooling.cgroups import CpuCaps, CpuHierarchy, find_cpu_hierarchy

err = Console(stderr=True)
Progress = Callable[[str], None]

TARGET_RATIO: Final = 1.8
AT_CAP: Final = 0.85
"""A worker using at least this share of its cap sat at it (CFS accounting is coarse)."""
MIN_SPARE: Final = 0.10
"""The share of the machine's CPU left to brokers and clients (idle, plus what processes
below their weight used) below which they may have lacked CPU."""
STEADY: Final = 0.10
"""Acknowledged and received rates further apart than this share: not a steady state (the
clients' queues were still filling or draining, so acknowledgements lag what was sent)."""
SPREAD_ATTEMPTS: Final = 5
PRIMING: Final = 16


@dataclass(frozen=True, slots=True)
class Settings:
    workers: tuple[int, ...]
    worker_cpu: float
    connections: int = 16
    partitions: int = 8
    record_size: int = 1024
    linger_ms: int = 5
    acks: str = "all"
    warmup_s: float = 5.0
    seconds: float = 20.0
    rounds: int = 1
    period_us: int = 100_000
    reserve: bool = True
    queue_messages: int = 5_000


# -- clients ---------------------------------------------------------------------------


class Producer:
    """One confluent-kafka producer (its own connections) sending as fast as it can in a
    thread; ``acked`` counts acknowledged records."""

    def __init__(self, index: int, bootstrap: str, topic: str, settings: Settings,
                 go: threading.Event) -> None:
        self.index = index
        self.go = go
        self.bootstrap = bootstrap
        self.topic = topic
        self.settings = settings
        self.acked = 0
        self.failed = 0
        self.errors: list[str] = []
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"producer-{index}",
                                        daemon=True)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 60.0) -> None:
        self._thread.join(timeout)

    def _on_delivery(self, error: Any, _msg: Any) -> None:
        if error is None:
            self.acked += 1
        elif not self._stop.is_set():  # purged at the end: not a failure
            self.failed += 1
            if len(self.errors) < 3:
                self.errors.append(str(error))

    def _run(self) -> None:
        from confluent_kafka import Producer as Client

        s = self.settings
        try:
            client = Client({
                "bootstrap.servers": self.bootstrap, "acks": s.acks,
                "linger.ms": s.linger_ms, "enable.idempotence": False,
                "compression.type": "none", "client.id": f"fk-bench-workers-{self.index}",
                "queue.buffering.max.messages": s.queue_messages,
            })
            value = os.urandom(s.record_size)
            client.list_topics(topic=self.topic, timeout=30)
            for _ in range(PRIMING):
                client.produce(self.topic, value=value, on_delivery=self._on_delivery)
            client.flush(60)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            self.error = e
            self.ready.set()
            return
        self.ready.set()
        # Every producer connects and primes first: a flood from the first ones would
        # queue the others' connection set-up behind it on a capped worker.
        while not self.go.wait(0.1) and not self._stop.is_set():
            client.poll(0)
        produce, poll = client.produce, client.poll
        while not self._stop.is_set():
            try:
                produce(self.topic, value=value, on_delivery=self._on_delivery)
            except BufferError:
                poll(0.05)
                continue
            poll(0)
        with contextlib.suppress(Exception):
            client.purge(in_queue=True, in_flight=False)
            client.flush(30)


@contextlib.contextmanager
def producers(bootstrap: str, topic: str, settings: Settings) -> Iterator[list[Producer]]:
    """``settings.connections`` producers, started and primed, then all let go at once;
    stopped at the end."""
    go = threading.Event()
    group = [Producer(i, bootstrap, topic, settings, go).start()
             for i in range(settings.connections)]
    try:
        for p in group:
            if not p.ready.wait(120):
                raise FedKafkaError(f"producer {p.index} did not connect within 120 s")
            if p.error is not None:
                raise FedKafkaError(f"producer {p.index} failed: {p.error}")
        go.set()
        yield group
    finally:
        for p in group:
            p.stop()
        for p in group:
            p.join()


# -- the proxy's processes -------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def worker_pids(proxy_pid: int, workers: int) -> list[int]:
    """The worker processes of a proxy, by index: the proxy itself with 1 worker, else its
    children started with ``--worker I``. Missing ones are 0."""
    if workers == 1:
        return [proxy_pid]
    out = [0] * workers
    for pid in _descendants(proxy_pid):
        args = _cmdline(pid)
        if "--worker" in args:
            i = args.index("--worker")
            with contextlib.suppress(IndexError, ValueError):
                index = int(args[i + 1])
                if 0 <= index < workers:
                    out[index] = pid
    return out


def _tcp_sockets(port: int) -> dict[int, str]:
    """Socket inode → TCP state (``01`` established, ``0A`` listening) of every socket
    whose local port is ``port`` (``/proc/net/tcp``, IPv4 and IPv6)."""
    out: dict[int, str] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10:
                continue
            with contextlib.suppress(ValueError):
                if int(f[1].rsplit(":", 1)[1], 16) == port:
                    out[int(f[9])] = f[3]
    return out


def _socket_inodes(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return out
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                out.add(int(target[8:-1]))
    return out


def connections_by_worker(pids: list[int], port: int) -> list[tuple[int, bool]]:
    """For each worker: its established client connections on ``port`` and whether it has
    the listening socket."""
    sockets = _tcp_sockets(port)
    out = []
    for pid in pids:
        mine = _socket_inodes(pid)
        out.append((sum(1 for i in mine if sockets.get(i) == "01"),
                    any(sockets.get(i) == "0A" for i in mine)))
    return out


def _metric_sum(port: int, name: str, label: str = "") -> float | None:
    """The sum of a Prometheus metric's samples at ``127.0.0.1:port`` (with ``label``, e.g.
    ``api="Produce"``, only those having it; None: no answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and label in line:
            with contextlib.suppress(ValueError):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _proxy_record(state: dict[str, Any]) -> dict[str, Any]:
    recs = [p for p in state.get("processes", []) if p.get("kind") == "proxy"]
    if len(recs) != 1:
        raise FedKafkaError(f"expected one proxy in the federation, found {len(recs)}")
    rec: dict[str, Any] = recs[0]
    return rec


def wait_workers(state: dict[str, Any], workers: int, timeout: float = 120.0) -> list[int]:
    """Wait until the proxy has ``workers`` worker processes, each listening and serving
    its metrics; their pids by index."""
    rec = _proxy_record(state)
    port, metrics = int(state["proxies"][0]["port"]), int(rec["ports"][1])
    deadline = time.monotonic() + timeout
    last = "no worker yet"
    while time.monotonic() < deadline:
        pids = worker_pids(int(rec["pid"]), workers)
        if all(pids):
            listening = [ok for _, ok in connections_by_worker(pids, port)]
            serving = [_metric_sum(metrics + i, "fedkafka_proxy_connections") is not None
                       for i in range(workers)]
            if all(listening) and all(serving):
                return pids
            last = f"listening {listening}, metrics {serving}"
        time.sleep(0.2)
    raise FedKafkaError(f"the proxy's {workers} worker(s) were not all up within "
                        f"{timeout:.0f}s ({last})")


def restart_proxy(state: dict[str, Any], workers: int, progress: Progress) -> dict[str, Any]:
    """Restart the federation's proxy with ``workers`` workers; the new state."""
    from federation.tooling.local import LocalFederation

    fed = LocalFederation(Path(state["workdir"]))
    rec = _proxy_record(state)
    cfg_path = Path(rec["marker"])
    cfg = json.loads(cfg_path.read_text())
    if workers > 1:
        cfg["workers"] = workers
    else:
        cfg.pop("workers", None)
    progress(f"restarting {rec['name']} with {workers} worker(s)")
    fed.stop_component(rec["name"])
    cfg_path.write_text(json.dumps(cfg, indent=2))
    fed.start_component(rec["name"])
    new = fed.load()
    if new is None:
        raise FedKafkaError(f"the federation in {state['workdir']} has no state any more")
    new["proxy_workers"] = workers
    return new


# -- one measurement ------------------------------------------------------------------


def _snapshot(groups: dict[str, list[int]], caps: CpuCaps, labels: list[str],
              metrics_ports: list[int], group: list[Producer]) -> dict[str, Any]:
    return {
        "t": time.perf_counter(),
        "acked": sum(p.acked for p in group),
        "failed": sum(p.failed for p in group),
        "cpu": {name: _cpu_seconds(pids) for name, pids in groups.items()},
        "wait": {name: runqueue_wait_seconds(groups[name]) for name in ("brokers", "clients")},
        "each": [_cpu_seconds([pid]) for pid in groups["workers"]],
        "busy": _machine_busy_seconds(),
        "stat": [caps.stat(label) for label in labels],
        "bytes_in": [_metric_sum(port, "fedkafka_proxy_bytes_in_total")
                     for port in metrics_ports],
        "produces": [_metric_sum(port, "fedkafka_proxy_requests_total", 'api="Produce"')
                     for port in metrics_ports],
    }


def runqueue_wait_seconds(pids: list[int]) -> float | None:
    """Seconds the threads of ``pids`` have spent runnable but waiting for a CPU
    (``/proc/PID/task/TID/schedstat``): a process short of CPU waits, one with headroom
    hardly does. None when unknown."""
    total = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            return None
        for task in tasks:
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def measure(state: dict[str, Any], caps: CpuCaps, settings: Settings, topic: str,
            workers: int, rnd: int, progress: Progress) -> dict[str, Any]:
    """Cap each worker, load the proxy through ``settings.connections`` producers and
    count the acknowledged bytes over the window."""
    rec = _proxy_record(state)
    port, metrics = int(state["proxies"][0]["port"]), int(rec["ports"][1])
    pids = wait_workers(state, workers)
    labels = [f"w{workers}-r{rnd}-{i}" for i in range(workers)]
    for label, pid in zip(labels, pids, strict=True):
        caps.cap(label, [pid], settings.worker_cpu)
    cap = caps.caps[labels[0]]
    supervisor = [int(rec["pid"])] if workers > 1 else []
    groups = {
        "workers": pids,
        "supervisor": supervisor,
        "brokers": [int(p["pid"]) for p in state["processes"] if p.get("kind") == "kafka-broker"],
        "clients": [os.getpid()],
    }
    metrics_ports = [metrics + i for i in range(workers)]
    load_start = _loadavg()
    attempts = 0
    while True:
        attempts += 1
        progress(f"{workers} worker(s), round {rnd + 1}: {settings.connections} producers, "
                 f"warm-up {settings.warmup_s:g} s (attempt {attempts})")
        with producers(state["bootstrap"], topic, settings) as group:
            before = [_metric_sum(p, "fedkafka_proxy_bytes_in_total") for p in metrics_ports]
            time.sleep(settings.warmup_s)
            after = [_metric_sum(p, "fedkafka_proxy_bytes_in_total") for p in metrics_ports]
            idle = [i for i, (a, b) in enumerate(zip(before, after, strict=True))
                    if a is not None and b is not None and b - a <= 0]
            if idle and attempts < SPREAD_ATTEMPTS:
                progress(f"worker(s) {idle} received nothing during the warm-up (the kernel "
                         "put no busy connection there): reconnecting")
                continue
            progress(f"{workers} worker(s), round {rnd + 1}: measuring {settings.seconds:g} s")
            s0 = _snapshot(groups, caps, labels, metrics_ports, group)
            time.sleep(settings.seconds)
            s1 = _snapshot(groups, caps, labels, metrics_ports, group)
            conns = connections_by_worker(pids, port)
            in_cgroup = [caps.contains(label, pid)
                         for label, pid in zip(labels, pids, strict=True)]
            errors = [e for p in group for e in p.errors][:3]
            break
    now_pids = worker_pids(int(rec["pid"]), workers)
    wall = s1["t"] - s0["t"]
    records = s1["acked"] - s0["acked"]
    size = settings.record_size
    cores = os.cpu_count() or 1

    def util(name: str) -> float | None:
        if not groups[name]:
            return 0.0
        d = _diff(s0["cpu"][name], s1["cpu"][name])
        return None if d is None else round(d / wall, 3)

    per_worker = []
    received: list[float | None] = []  # record bytes each worker took in over the window
    for i, pid in enumerate(pids):
        st0, st1 = s0["stat"][i], s1["stat"][i]
        cpu = _diff(s0["each"][i], s1["each"][i])
        got = _diff(s0["bytes_in"][i], s1["bytes_in"][i])
        reqs = _diff(s0["produces"][i], s1["produces"][i])
        received.append(got)
        per_worker.append({
            "index": i, "pid": pid, "cgroup": caps.path_of(labels[i]),
            "in_cgroup": in_cgroup[i], "restarted": now_pids[i] != pid,
            "cap_cpus": round(cap, 4),
            "cpu_util": None if cpu is None else round(cpu / wall, 3),
            "nr_throttled": _diff(st0.get("nr_throttled"), st1.get("nr_throttled")),
            "throttled_s": _round(_diff(st0.get("throttled_s"), st1.get("throttled_s"))),
            "connections": conns[i][0],
            "record_mb_per_s": None if got is None else round(got / MB / wall, 2),
            "produce_requests_per_s": None if reqs is None else round(reqs / wall, 1),
            "kib_per_request": None if not reqs or got is None else round(got / reqs / 1024, 1),
        })
    busy = _diff(s0["busy"], s1["busy"])
    busy_cores = None if busy is None else round(busy / wall, 3)
    named = [util(g) for g in ("workers", "supervisor", "brokers", "clients")]
    result: dict[str, Any] = {
        "workers": workers, "round": rnd + 1, "window_s": round(wall, 3),
        "records": records, "failed": s1["failed"] - s0["failed"], "errors": errors,
        "records_per_s": round(records / wall, 1),
        "mb_per_s": round(records * size / MB / wall, 2),
        "per_worker": per_worker,
        "workers_cpu_util": named[0], "supervisor_cpu_util": named[1],
        "brokers_cpu_util": named[2], "clients_cpu_util": named[3],
        # Cores' worth of runnable threads waiting for a CPU (short of CPU when high).
        "brokers_runqueue_wait": _round(_per_s(s0["wait"]["brokers"], s1["wait"]["brokers"],
                                               wall)),
        "clients_runqueue_wait": _round(_per_s(s0["wait"]["clients"], s1["wait"]["clients"],
                                               wall)),
        "machine_busy_cores": busy_cores,
        "machine_idle_share": None if busy_cores is None
        else round(max(0.0, 1 - busy_cores / cores), 3),
        "other_cpu_util": None if busy_cores is None or None in named
        else round(busy_cores - sum(x or 0.0 for x in named), 3),
        "mb_per_worker_cpu_s": None if not named[0] else round(records * size / MB / wall
                                                                / named[0], 1),
        "spread_attempts": attempts,
        "load_average_start": load_start, "load_average_end": _loadavg(),
    }
    result["received_mb_per_s"] = None if None in received else round(
        sum(x or 0.0 for x in received) / MB / wall, 2)
    # CPU brokers and clients could have had: idle, and with ``reserve`` also what other
    # processes (default weight, below theirs) used.
    spare = None if busy_cores is None else cores - busy_cores + (
        max(0.0, result["other_cpu_util"] or 0.0) if settings.reserve else 0.0)
    result["spare_cores"] = _round(spare)
    result["spare_share"] = None if spare is None else round(spare / cores, 3)
    result["checks"] = checks(result)
    return result


def _per_s(a: float | None, b: float | None, wall: float) -> float | None:
    d = _diff(a, b)
    return None if d is None else d / wall


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def checks(run: dict[str, Any]) -> dict[str, bool]:
    """Whether a run isolated the proxy: every worker in its cgroup, busy, at its cap
    (throttled: it had more work than its cap let it do), and CPU to spare for brokers and
    clients."""
    ws = run["per_worker"]
    return {
        "in_cgroups": all(w["in_cgroup"] and not w["restarted"] for w in ws),
        "every_worker_busy": all((w["record_mb_per_s"] or 0) > 0 and w["connections"] > 0
                                 for w in ws),
        "workers_at_cap": all(w["cpu_util"] is not None
                              and w["cpu_util"] >= AT_CAP * w["cap_cpus"] for w in ws),
        "spare_cpu": (run["spare_share"] or 0.0) >= MIN_SPARE,
        "steady": bool(run.get("received_mb_per_s"))
        and abs(run["mb_per_s"] - run["received_mb_per_s"]) <= STEADY * run["received_mb_per_s"],
    }


# -- the run ---------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[int, list[float]] = {}
    for r in runs:
        by.setdefault(r["workers"], []).append(r["mb_per_s"])
    medians = {w: statistics.median(v) for w, v in sorted(by.items())}
    out: dict[str, Any] = {"mb_per_s_median": {str(w): round(m, 2) for w, m in medians.items()},
                           "isolated": all(all(r["checks"].values()) for r in runs)}
    if 1 in medians and 2 in medians and medians[1] > 0:
        ratio = medians[2] / medians[1]
        out["ratio_2_over_1"] = round(ratio, 3)
        out["target"] = TARGET_RATIO
        out["met"] = ratio >= TARGET_RATIO
    base = min(medians)
    if medians[base] > 0:
        out["ratio_to_fewest"] = {str(w): round(m / medians[base], 3)
                                  for w, m in medians.items()}
    return out


def run(settings: Settings, base_port: int, kafka_version: str, progress: Progress,
        hierarchy: CpuHierarchy | None = None) -> dict[str, Any]:
    """The whole benchmark: a federation, each worker count in turn, cgroups removed."""
    import confluent_kafka

    hierarchy = hierarchy or find_cpu_hierarchy()  # fail first, before starting anything
    require_client()
    order = [w for _ in range(settings.rounds) for w in settings.workers]
    runs: list[dict[str, Any]] = []
    caps = CpuCaps(hierarchy, period_us=settings.period_us, reserve=settings.reserve)
    left: list[Path] = []
    with federation_for(None, base_port, kafka_version, progress, 1, order[0]) as state:
        topic = f"bench-workers-{uuid.uuid4().hex[:6]}"
        layout = create_logical_topic(state, topic, settings.partitions)
        wait_topic(state["bootstrap"], topic, settings.partitions)
        progress(f"topic {topic}: {settings.partitions} partitions on "
                 + ", ".join(sorted(layout)))
        current = order[0]
        caps.open()
        try:
            if settings.reserve:  # brokers and clients: uncapped, ahead of other work
                caps.prioritize("uncapped", [os.getpid()] + [
                    int(p["pid"]) for p in state["processes"] if p.get("kind") == "kafka-broker"])
            for i, workers in enumerate(order):
                if workers != current:
                    state = restart_proxy(state, workers, progress)
                    current = workers
                runs.append(measure(state, caps, settings, topic, workers,
                                    i // len(settings.workers), progress))
        finally:
            left = caps.close()
            if left:
                err.print("[red]could not remove the cgroups "
                          + ", ".join(map(str, left)) + " (rmdir them once empty)[/]")
    return {
        "machine": machine(),
        "kafka_version": state.get("kafka_version"),
        "client": f"confluent-kafka {importlib.metadata.version('confluent-kafka')} "
                  f"(librdkafka {confluent_kafka.libversion()[0]})",
        "settings": {
            "workers": list(settings.workers), "worker_cpu": settings.worker_cpu,
            "connections": settings.connections, "partitions": settings.partitions,
            "record_size": settings.record_size, "linger_ms": settings.linger_ms,
            "acks": settings.acks, "warmup_s": settings.warmup_s,
            "seconds": settings.seconds, "rounds": settings.rounds,
            "cfs_period_us": settings.period_us, "reserve": settings.reserve,
            "queue_records": settings.queue_messages,
        },
        "cgroup": {"version": hierarchy.version, "root": str(hierarchy.root),
                   "group": str(caps.group), "removed": not left,
                   "left": [str(p) for p in left]},
        "runs": runs,
        "summary": summarize(runs),
        "load_average": _loadavg(),
    }


# -- output ------------------------------------------------------------------------------


def _f(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def render(report: dict[str, Any], console: Console) -> None:
    s = report["settings"]
    runs = report["runs"]
    table = Table(title=f"fedkafka bench-workers: {s['connections']} producers, "
                        f"{s['record_size']} B records, acks={s['acks']}, each worker capped "
                        f"at {s['worker_cpu']:g} CPU, {s['seconds']:g} s windows")
    table.add_column("run")
    for r in runs:
        table.add_column(f"{r['workers']} worker(s), round {r['round']}", justify="right")

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
        table.add_row(label, *(cell(r) for r in runs))

    def each(key: str, fmt: str = "{:.2f}") -> Callable[[dict[str, Any]], str]:
        return lambda r: " / ".join(_f(w[key], fmt) for w in r["per_worker"])

    def pct(key: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: _f(None if r[key] is None else 100 * r[key], "{:.0f} %")

    row("MB/s acknowledged", lambda r: _f(r["mb_per_s"], "{:.1f}"))
    row("MB/s received by the workers", lambda r: _f(r.get("received_mb_per_s"), "{:.1f}"))
    row("records/s", lambda r: f"{r['records_per_s']:,.0f}")
    row("each worker's CPU (cap)",
        lambda r: each("cpu_util")(r) + f" ({r['per_worker'][0]['cap_cpus']:g})")
    row("each worker's MB/s", each("record_mb_per_s", "{:.1f}"))
    row("each worker's connections", each("connections", "{}"))
    row("each worker's KiB/request", each("kib_per_request", "{:.0f}"))
    row("MB per worker CPU-second", lambda r: _f(r.get("mb_per_worker_cpu_s"), "{:.0f}"))
    row("supervisor CPU", lambda r: _f(r["supervisor_cpu_util"]))
    row("brokers CPU", lambda r: _f(r["brokers_cpu_util"]))
    row("clients CPU", lambda r: _f(r["clients_cpu_util"]))
    row("run-queue wait, brokers / clients",
        lambda r: _f(r["brokers_runqueue_wait"]) + " / " + _f(r["clients_runqueue_wait"]))
    row("other processes CPU", lambda r: _f(r["other_cpu_util"]))
    row("machine idle", pct("machine_idle_share"))
    row("spare for brokers, clients", pct("spare_share"))
    row("load average (1 min)", lambda r: _f((r.get("load_average_end") or [None])[0],
                                             "{:.1f}"))
    row("proxy isolated", lambda r: "yes" if all(r["checks"].values()) else "NO: " + ", ".join(
        k for k, ok in r["checks"].items() if not ok))
    console.print(table)
    sm = report["summary"]
    console.print("median MB/s by workers: " + ", ".join(
        f"{w}: {v}" for w, v in sm["mb_per_s_median"].items()))
    if "ratio_2_over_1" in sm:
        verdict = "met" if sm["met"] else "MISSED"
        console.print(f"throughput 2 workers / 1 worker: {sm['ratio_2_over_1']:.2f} x "
                      f"(target >= {sm['target']:g}: {verdict})"
                      + ("" if sm["isolated"] else
                         " [yellow]but not every run isolated the proxy (see `proxy "
                         "isolated`): read the ratio with care[/]"))
    cg = report["cgroup"]
    console.print("CPU in cores (utime+stime over the window); run-queue wait: cores' worth "
                  "of threads runnable but waiting for a CPU; spare: idle plus, with "
                  "reserved weights, what other processes used; KiB/request: record bytes "
                  f"per Produce request; cgroup v{cg['version']} under {cg['root']}, "
                  + ("removed" if cg["removed"] else "NOT removed: " + ", ".join(cg["left"])))
    m = report["machine"]
    load = report.get("load_average")
    console.print(f"machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}; Kafka "
                  f"{report['kafka_version']}; {report['client']}"
                  + (f"; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
                     if load else ""))


# -- the command ---------------------------------------------------------------------------


def _parse_workers(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"--workers {text!r}: a comma-separated list of counts, "
                                 "e.g. 1,2") from None
    if not out or any(w < 1 for w in out):
        raise typer.BadParameter("--workers: counts must be positive")
    return out


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    """Add ``bench-workers`` to ``app``."""
    from federation.tooling.kafka_dist import DEFAULT_KAFKA_VERSION

    @app.command("bench-workers")
    def bench_workers(
        workers: Annotated[str, typer.Option(
            help="Worker counts to measure, in order (comma-separated).")] = "1,2",
        worker_cpu: Annotated[float, typer.Option(
            help="CPU cap of each worker process (cores), set with its own cgroup.")] = 0.1,
        connections: Annotated[int, typer.Option(
            help="Producers, each with its own connection to the proxy.")] = 16,
        seconds: Annotated[float, typer.Option(help="Measured window per run (s).")] = 20.0,
        warmup: Annotated[float, typer.Option(help="Load before the window (s).")] = 5.0,
        queue_records: Annotated[int, typer.Option(
            help="Records each producer may have queued or in flight (its "
                 "queue.buffering.max.messages): enough to keep the workers busy, few "
                 "enough that acknowledgements follow within the warm-up.")] = 5000,
        rounds: Annotated[int, typer.Option(
            help="Times the whole --workers list is measured (alternating).")] = 1,
        record_size: Annotated[int, typer.Option(help="Bytes per record value.")] = 1024,
        partitions: Annotated[int, typer.Option(help="Partitions of the topic.")] = 8,
        linger_ms: Annotated[int, typer.Option(help="Producer linger.ms.")] = 5,
        acks: Annotated[str, typer.Option(help="Producer acks (1 or all).")] = "all",
        cfs_period_us: Annotated[int, typer.Option(
            help="CFS period of the caps (µs); the quota is worker-cpu x period.")] = 100_000,
        reserve: Annotated[bool, typer.Option(
            help="Give the capped workers, the brokers and this process's clients the "
                 "highest CPU weight (brokers and clients uncapped), so that other work on "
                 "the machine does not decide the result (--no-reserve: default weights).")]
        = True,
        base_port: Annotated[int, typer.Option(
            help="Base port of the federation started for the run.")] = 20092,
        kafka_version: Annotated[str, typer.Option(
            help="Kafka release of the federation started for the run.")]
        = DEFAULT_KAFKA_VERSION,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]
        = False,
    ) -> None:
        """Throughput of one proxy with 1, 2, … workers, each capped at --worker-cpu cores
        (cgroups), brokers and clients uncapped: does it scale with its workers?"""
        counts = _parse_workers(workers)
        if worker_cpu <= 0 or connections < 1 or seconds <= 0 or warmup < 0 or rounds < 1 \
                or queue_records < 1 \
                or record_size < 1 or partitions < 1 or cfs_period_us < 1000 \
                or acks not in ("0", "1", "all", "-1"):
            raise typer.BadParameter("counts, sizes and durations must be positive; "
                                     "acks one of 0, 1, all")
        settings = Settings(workers=counts, worker_cpu=worker_cpu, connections=connections,
                            partitions=partitions, record_size=record_size,
                            linger_ms=linger_ms, acks=acks, warmup_s=warmup, seconds=seconds,
                            rounds=rounds, period_us=cfs_period_us, reserve=reserve,
                            queue_messages=queue_records)

        def progress(msg: str) -> None:
            err.print(f"[dim]{msg}[/]")

        _logs_to_stderr()
        previous = signal.signal(signal.SIGTERM, _interrupt)  # clean up on SIGTERM too
        try:
            report = run(settings, base_port, kafka_version, progress)
        except FedKafkaError as e:
            err.print(f"[red]error:[/] {e}")
            raise typer.Exit(e.exit_code) from e
        finally:
            signal.signal(signal.SIGTERM, previous)
        emit(report, as_json, render)


def main() -> None:
    """``python -m federation.tooling.bench_workers``: the command on its own."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
