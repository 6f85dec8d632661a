"""``fedkafka bench-elastic``: how fast partitions move, as a producer sees it.

One run on a fresh 3-cluster local federation (``c3`` starts outside the map), with an
idempotent confluent-kafka producer (acks=all) sending keyed records at a steady rate to
a ``stable`` topic, and a consumer group reading it:

1. **cluster add → first write**: ``c3`` is added and a rebalance asked for; time from the
   ``cluster add`` to the first acknowledged write in a segment on ``c3``;
2. **write pause per rolled partition** (rebalance): for each rolled partition, the time
   between its last acknowledged write in the old segment and its first in the new one;
3. **drain**: ``c2`` drained while producing and consuming; time until drained (no active
   segment left there, every group past its sealed segments); its rolls' write pauses too;
4. **failover**: every broker of ``c3`` killed (SIGKILL); per affected partition, the time
   from the kill to its first acknowledged write in a new segment.

Nothing here asserts on timing: numbers are reported (p50/p99 over partitions).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from federation.core.errors import ConfigError

err = Console(stderr=True)


@dataclass(slots=True)
class _Ack:
    partition: int
    offset: int
    at: float


@dataclass
class _Producer:
    bootstrap: str
    topic: str
    rate: int
    keys: int = 256
    acks: list[_Ack] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _Producer:
        self._thread.start()
        return self

    def _run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True,
                             "acks": "all", "linger.ms": 5, "client.id": "fk-bench-elastic",
                             "topic.metadata.refresh.interval.ms": 2000})

        def delivered(error: Any, msg: Any) -> None:
            if error is not None:
                self.errors.append(str(error))
            else:
                self.acks.append(_Ack(msg.partition(), msg.offset(), time.monotonic()))

        sent = 0
        started = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while sent < due:
                try:
                    producer.produce(self.topic, value=str(sent).encode(),
                                     key=str(sent % self.keys).encode(), on_delivery=delivered)
                except BufferError:
                    break
                sent += 1
            producer.poll(0.002)
        producer.flush(120)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(180)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _pauses(acks: list[_Ack], seals: dict[int, int]) -> dict[int, float]:
    """Per rolled partition: first ack at/after its seal minus the last ack before it."""
    out = {}
    for p, seal in seals.items():
        before = [a.at for a in acks if a.partition == p and a.offset < seal]
        after = [a.at for a in acks if a.partition == p and a.offset >= seal]
        if before and after:
            out[p] = min(after) - max(before)
    return out


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ConfigError(f"bench-elastic: timed out waiting for {what}")
        time.sleep(0.05)


def run(base_port: int, kafka_version: str, rate: int, partitions: int,
        failover_after: float) -> dict[str, Any]:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        raise ConfigError("bench-elastic needs confluent-kafka: pip install "
                          "'confluent-kafka>=2.5' (or install fedkafka[test])") from None
    from federation.clusters import admin
    from federation.controller import elastic
    from federation.plugin import get_plugins, parse_store
    from federation.tooling.local import LocalFederation, temporary_federation

    report: dict[str, Any] = {"rate_records_per_s": rate, "partitions": partitions,
                              "failover_after_s": failover_after}
    with temporary_federation("fk-bench-elastic-", progress=err.print, clusters=3,
                              base_port=base_port, heap="256m", proxies=2,
                              kafka_version=kafka_version,
                              controller_options={"health_interval": 0.5, "down_after": 2,
                                                  "failover_after": failover_after}) as state:
        name, options = parse_store(state["store"])
        backend = get_plugins().backend(name, **options)
        local = LocalFederation(Path(state["workdir"]))

        def fmap() -> Any:
            m = backend.load()
            assert m is not None
            return m

        def seals(topic: str, cluster: str) -> dict[int, int]:
            """Partitions whose previous segment is on ``cluster``: their seal offsets."""
            lps = fmap().topics[topic].partitions
            return {lp.index: lp.active.logical_start for lp in lps
                    if len(lp.segments) > 1 and lp.segments[-2].cluster == cluster}

        try:
            c3 = next(c for c in state["clusters"] if c["name"] == "c3")
            asyncio.run(admin.remove_cluster(backend, "c3"))
            asyncio.run(admin.create_topic(backend, "bench", partitions, "stable"))
            producer = _Producer(state["bootstrap"], "bench", rate).start()
            _wait(lambda: len(producer.acks) >= rate * 3, 120, "the producer to warm up")

            err.print("adding c3 and rebalancing")
            t0 = time.monotonic()
            asyncio.run(admin.add_cluster(backend, "c3", c3["bootstrap"]))
            moves = asyncio.run(elastic.request_rebalance(backend, ["bench"]))
            asyncio.run(elastic.wait_moves(backend, moves))
            on_c3 = {lp.index: lp.active.logical_start for lp in fmap().topics["bench"].partitions
                     if lp.active.cluster == "c3"}
            _wait(lambda: all(any(a.partition == p and a.offset >= s for a in producer.acks)
                              for p, s in on_c3.items()), 60, "writes on c3")
            first_c3 = min(a.at for a in producer.acks
                           if a.partition in on_c3 and a.offset >= on_c3[a.partition])
            report["add_to_first_write_s"] = round(first_c3 - t0, 3)
            time.sleep(2)  # a steady stream again before the next measurement
            rebalance = _pauses(producer.acks, {p: s for p, s in on_c3.items()})

            err.print("draining c2")
            t0 = time.monotonic()
            asyncio.run(elastic.start_drain(backend, "c2"))
            done = False
            while not done:
                done = asyncio.run(elastic.drain_status(backend, "c2")).done
                if time.monotonic() - t0 > 600:
                    raise ConfigError("bench-elastic: c2 not drained after 600 s")
            report["drain_s"] = round(time.monotonic() - t0, 3)
            drained = seals("bench", "c2")
            _wait(lambda: all(any(a.partition == p and a.offset >= s for a in producer.acks)
                              for p, s in drained.items()), 60, "writes after the drain")
            drain_pauses = _pauses(producer.acks, drained)

            err.print("killing every broker of c3")
            killed_at = time.monotonic()
            for c in state["clusters"]:
                if c["name"] == "c3":
                    for b in c["brokers"]:
                        local.stop_component(f"c3-b{b['node_id']}", kill=True)
            _wait(lambda: not any(lp.active.cluster == "c3"
                                  for lp in fmap().topics["bench"].partitions), 120, "failover")
            failed = seals("bench", "c3")
            _wait(lambda: all(any(a.partition == p and a.offset >= s for a in producer.acks)
                              for p, s in failed.items()), 120, "writes after the failover")
            failover = {p: min(a.at for a in producer.acks if a.partition == p and a.offset >= s)
                        - killed_at for p, s in failed.items()}
            producer.stop()
        finally:
            backend.close()
    pauses = list(rebalance.values()) + list(drain_pauses.values())
    report.update({
        "rolled_partitions": len(pauses),
        "write_pause_p50_s": round(_pct(pauses, 0.5), 3),
        "write_pause_p99_s": round(_pct(pauses, 0.99), 3),
        "failover_partitions": len(failover),
        "failover_p50_s": round(_pct(list(failover.values()), 0.5), 3),
        "failover_p99_s": round(_pct(list(failover.values()), 0.99), 3),
        "acked": len(producer.acks), "send_errors": len(producer.errors),
        "baseline_gap_ms_per_partition": round(1000 * partitions / rate, 2),
        "mean_pause_s": round(statistics.fmean(pauses), 3) if pauses else None,
    })
    return report


def register(app: typer.Typer) -> None:
    """Add ``bench-elastic`` to ``app``."""
    from federation.tooling.kafka_dist import DEFAULT_KAFKA_VERSION

    @app.command("bench-elastic")
    def bench_elastic(
        rate: Annotated[int, typer.Option(help="Records/s the producer sends.")] = 2000,
        partitions: Annotated[int, typer.Option(help="Partitions of the topic.")] = 12,
        failover_after: Annotated[float, typer.Option(
            help="The controller's failover_after (s) for the run.")] = 3.0,
        base_port: Annotated[int, typer.Option(
            help="Base port of the federation started for the run.")] = 26092,
        kafka_version: Annotated[str, typer.Option(help="Kafka release.")]
        = DEFAULT_KAFKA_VERSION,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]
        = False,
    ) -> None:
        """Failover time, write pause per rolled partition, drain time, add → first write."""
        if rate < 1 or partitions < 3 or failover_after <= 0:
            raise typer.BadParameter("rate >= 1, partitions >= 3, failover-after > 0")
        report = run(base_port, kafka_version, rate, partitions, failover_after)
        if as_json:
            print(json.dumps(report, indent=2))
            return
        table = Table(title="fedkafka bench-elastic")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in report.items():
            table.add_row(key, str(value))
        Console().print(table)
