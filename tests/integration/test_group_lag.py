"""Consumer lag over a logical topic whose partitions span two physical clusters.

The session federation (2 clusters) runs the lag exporter that ``local up`` starts. A topic
is written on c1, rolled onto c2 by the controller, and written again: every partition is
a chain [c1 sealed, c2 active]. A group reads part of it and stops; the exported lag per
logical partition and the unread records per physical cluster must be exactly what was
produced minus what was committed, and 0 once the group catches up. ``fedkafka group
describe`` must agree, with the exporter and with Kafka's own ``kafka-consumer-groups.sh
--describe`` run through a proxy on a running group.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from federation.controller import elastic
from federation.core.model import FederationMap, Move, Segment
from federation.store.mapstore import update
from federation.tooling.kafka_dist import KafkaDist

from .fedtopics import backend_of, create_logical_topic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "lag-chain"
FIRST = {0: 30, 1: 40, 2: 25}  # records per partition on c1, before the roll
SECOND = {0: 20, 1: 10, 2: 35}  # on c2, after it
ENDS = {p: FIRST[p] + SECOND[p] for p in FIRST}
# Where the group stops: inside the c1 segment, exactly at the seal, inside the c2 segment.
STOP = {0: 15, 1: 40, 2: 45}


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def produce(bootstrap: str, topic: str, counts: dict[int, int], tag: str) -> dict[int, list[int]]:
    """Write counts[p] records to each logical partition p; the offsets acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 5})
    acked: dict[int, list[int]] = {p: [] for p in counts}
    errors: list[str] = []

    def done(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            acked[msg.partition()].append(msg.offset())

    for p, n in counts.items():
        for i in range(n):
            producer.produce(topic, value=f"{tag}-{p}-{i}".encode(), partition=p,
                             on_delivery=done)
    assert producer.flush(60) == 0
    assert not errors, errors
    return acked


def read_and_commit(bootstrap: str, group: str, topic: str, upto: dict[int, int],
                    start: dict[int, int] | None = None) -> None:
    """A group member reads each partition from ``start`` (its committed offsets; default
    the beginning) up to ``upto`` in offset order, commits exactly ``upto`` and leaves."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "client.id": f"fk-{group}", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    read = {p: (start or {}).get(p, 0) for p in upto}
    try:
        deadline = time.monotonic() + 120
        while any(read[p] < upto[p] for p in upto):
            assert time.monotonic() < deadline, f"read only {read} of {upto}"
            m = consumer.poll(0.5)
            if m is None or m.error():
                continue
            p, o = m.partition(), m.offset()
            if o < upto[p]:
                assert o == read[p], f"partition {p}: offset {o} after {read[p]}"
                read[p] = o + 1
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in upto.items()],
                        asynchronous=False)
    finally:
        consumer.close()


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def group_view(url: str, group: str, topic: str) -> dict[str, dict[Any, float]]:
    """The exporter's numbers for one group and topic."""
    got = scrape(url)
    view: dict[str, dict[Any, float]] = {"lag": {}, "committed": {}, "ends": {}, "unread": {}}
    for (name, labels), value in got.items():
        lab = dict(labels)
        if name == "fedkafka_partition_end_offset" and lab["topic"] == topic:
            view["ends"][int(lab["partition"])] = value
        if lab.get("group") != group:
            continue
        if name == "fedkafka_consumer_group_lag_records" and lab["topic"] == topic:
            view["lag"][int(lab["partition"])] = value
        elif name == "fedkafka_consumer_group_committed_offset" and lab["topic"] == topic:
            view["committed"][int(lab["partition"])] = value
        elif name == "fedkafka_consumer_group_unread_records":
            view["unread"][lab["cluster"]] = value
    return view


def fedkafka(state: dict[str, Any], *args: str, check: bool = True
             ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "federation.cli.main", *args, "--store",
                           state["store"]], capture_output=True, text=True, timeout=120,
                          check=False, cwd=ROOT)
    if check:
        assert proc.returncode == 0, f"fedkafka {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def describe_json(state: dict[str, Any], group: str) -> dict[str, Any]:
    return json.loads(fedkafka(state, "group", "describe", group, "--json").stdout)


def roll_all_to(state: dict[str, Any], topic: str, partitions: int, target: str) -> FederationMap:
    """Ask the controller to roll every partition of ``topic`` onto ``target``; wait."""
    backend = backend_of(state)
    try:
        moves = [Move(topic, p, target, reason="test") for p in range(partitions)]

        def change(fmap: FederationMap | None) -> FederationMap:
            assert fmap is not None
            return dataclasses.replace(fmap, moves=(*fmap.moves, *moves))

        update(backend, change)
        asyncio.run(elastic.wait_moves(backend, moves, timeout=120))
        fmap = backend.load()
        assert fmap is not None
        return fmap
    finally:
        backend.close()


@pytest.fixture(scope="module")
def chain_topic(local_federation: dict[str, Any]) -> dict[str, Any]:
    """TOPIC: FIRST records per partition on c1, rolled onto c2, SECOND more there."""
    state = local_federation
    phys = f"{TOPIC}.fk"
    create_logical_topic(state, TOPIC, 3, layout=[[Segment("c1", phys, p, 0, 0)]
                                                  for p in range(3)])
    first = produce(state["bootstrap"], TOPIC, FIRST, "a")
    assert {p: offs for p, offs in first.items()} == {p: list(range(n))
                                                      for p, n in FIRST.items()}
    fmap = roll_all_to(state, TOPIC, 3, "c2")
    for lp in fmap.topics[TOPIC].partitions:
        assert [(s.cluster, s.logical_start, s.sealed_end) for s in lp.segments] == [
            ("c1", 0, FIRST[lp.index]), ("c2", FIRST[lp.index], None)]
    second = produce(state["bootstrap"], TOPIC, SECOND, "b")
    assert second == {p: list(range(FIRST[p], ENDS[p])) for p in FIRST}
    return state


def test_exported_lag_per_partition_and_cluster_then_zero_after_catching_up(
        chain_topic: dict[str, Any]) -> None:
    state = chain_topic
    url = state["exporter"]["metrics"]
    group = "lag-halfway"
    read_and_commit(state["bootstrap"], group, TOPIC, STOP)

    def settled(committed: dict[int, int]) -> Callable[[], dict[str, dict[Any, float]] | None]:
        def check() -> dict[str, dict[Any, float]] | None:
            view = group_view(url, group, TOPIC)
            ok = view["ends"] == ENDS and view["committed"] == committed
            return view if ok else None
        return check

    view = wait_for(settled(STOP), 60, "the exporter to see the commits")
    expected_lag = {p: ENDS[p] - STOP[p] for p in STOP}
    assert expected_lag == {0: 35, 1: 10, 2: 15}
    assert view["lag"] == expected_lag
    # c1 holds the sealed segments [0, FIRST), c2 the active ones [FIRST, END).
    unread_c1 = sum(max(0, FIRST[p] - STOP[p]) for p in STOP)
    unread_c2 = sum(ENDS[p] - max(FIRST[p], STOP[p]) for p in STOP)
    assert (unread_c1, unread_c2) == (15, 45)
    assert view["unread"] == {"c1": unread_c1, "c2": unread_c2}
    assert sum(view["unread"].values()) == sum(view["lag"].values())

    # The CLI shows the same numbers, and where the unread records are.
    desc = describe_json(state, group)
    assert desc["state"] == "Empty" and desc["members"] == []
    rows = {r["partition"]: r for r in desc["partitions"] if r["topic"] == TOPIC}
    assert {p: (r["committed"], r["end"], r["lag"]) for p, r in rows.items()} == {
        p: (STOP[p], ENDS[p], expected_lag[p]) for p in STOP}
    assert {p: r["unread"] for p, r in rows.items()} == {
        0: {"c1": 15, "c2": 20}, 1: {"c2": 10}, 2: {"c2": 15}}
    assert desc["unread_by_cluster"] == {"c1": 15, "c2": 45}
    listing = json.loads(fedkafka(state, "group", "list", "--json").stdout)["groups"]
    mine = next(g for g in listing if g["group"] == group)
    assert mine["lag"] == 60 and mine["state"] == "Empty" and mine["topics"] == [TOPIC]

    # The group catches up: lag 0 everywhere.
    read_and_commit(state["bootstrap"], group, TOPIC, ENDS, start=STOP)
    view = wait_for(settled(ENDS), 60, "the exporter to see the group caught up")
    assert view["lag"] == {0: 0, 1: 0, 2: 0}
    assert view["unread"] == {"c1": 0, "c2": 0}
    assert describe_json(state, group)["lag"] == 0


def test_reset_offsets_to_earliest_and_shift(chain_topic: dict[str, Any]) -> None:
    state = chain_topic
    group = "lag-reset"
    read_and_commit(state["bootstrap"], group, TOPIC, ENDS)
    dry = json.loads(fedkafka(state, "group", "reset-offsets", group, "--topic", TOPIC,
                              "--to-earliest", "--json").stdout)
    assert not dry["executed"]
    assert {r["partition"]: (r["committed"], r["new"]) for r in dry["partitions"]} == {
        p: (ENDS[p], 0) for p in ENDS}
    assert describe_json(state, group)["lag"] == 0  # a dry run commits nothing

    fedkafka(state, "group", "reset-offsets", group, "--topic", TOPIC, "--to-earliest",
             "--execute")
    desc = describe_json(state, group)
    assert {r["partition"]: r["committed"] for r in desc["partitions"]} == dict.fromkeys(ENDS, 0)
    assert desc["lag"] == sum(ENDS.values())
    assert desc["unread_by_cluster"] == {"c1": sum(FIRST.values()), "c2": sum(SECOND.values())}

    # Shifts are clamped to what the chain holds; some partitions only.
    shifted = json.loads(fedkafka(state, "group", "reset-offsets", group, "--topic",
                                  f"{TOPIC}:1,2", "--shift-by", "42", "--execute",
                                  "--json").stdout)
    assert {r["partition"]: r["new"] for r in shifted["partitions"]} == {1: 42, 2: 42}
    again = json.loads(fedkafka(state, "group", "reset-offsets", group, "--all-topics",
                                "--shift-by", "1000", "--execute", "--json").stdout)
    assert {r["partition"]: r["new"] for r in again["partitions"]} == ENDS
    assert describe_json(state, group)["lag"] == 0


def quiet_java(dist: KafkaDist, folder: Path, main: str, *args: str) -> list[str]:
    config = folder / "log4j2.properties"
    config.write_text("status = error\nappender.err.type = Console\nappender.err.name = E\n"
                      "appender.err.target = SYSTEM_ERR\nappender.err.layout.type = "
                      "PatternLayout\nappender.err.layout.pattern = %p %m%n\n"
                      "rootLogger.level = WARN\nrootLogger.appenderRef.err.ref = E\n")
    command = [c for c in dist.java_command(main, *args) if not c.startswith("-Dlog4j")]
    command[1:1] = [f"-Dlog4j2.configurationFile={config}", "-XX:TieredStopAtLevel=1"]
    return command


def kafka_describe(dist: KafkaDist, folder: Path, bootstrap: str, group: str
                   ) -> list[dict[str, str]]:
    """Rows of ``kafka-consumer-groups.sh --describe --group`` (Kafka's own tool)."""
    cmd = quiet_java(dist, folder, "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                     "--bootstrap-server", bootstrap, "--describe", "--group", group)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    header = next(i for i, cols in enumerate(lines) if cols[:2] == ["GROUP", "TOPIC"])
    names = lines[header]
    return [dict(zip(names, cols, strict=True)) for cols in lines[header + 1:]]


def test_group_describe_agrees_with_kafka_consumer_groups_through_the_proxy(
        chain_topic: dict[str, Any], kafka_dist: KafkaDist, tmp_path: Path) -> None:
    state = chain_topic
    group = "lag-running"
    stop = {0: 10, 1: 40, 2: 30}
    member = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.lag_member", "--bootstrap",
         state["bootstrap"], "--topic", TOPIC, "--group", group, "--stop", json.dumps(stop)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert member.stdout is not None
        line = member.stdout.readline()
        assert json.loads(line) == {"committed": {str(p): o for p, o in stop.items()}}, line
        ours = describe_json(state, group)
        proxy = state["proxy_bootstrap"].split(",")[0]
        theirs = kafka_describe(kafka_dist, tmp_path, proxy, group)
        assert member.poll() is None, "the member is still running"

        assert ours["state"] == "Stable" and len(ours["members"]) == 1
        mine = {r["partition"]: r for r in ours["partitions"]}
        kafka = {int(r["PARTITION"]): r for r in theirs if r["TOPIC"] == TOPIC}
        assert set(mine) == set(kafka) == {0, 1, 2}
        for p in stop:
            assert (mine[p]["committed"], mine[p]["end"], mine[p]["lag"]) == (
                stop[p], ENDS[p], ENDS[p] - stop[p])
            assert (int(kafka[p]["CURRENT-OFFSET"]), int(kafka[p]["LOG-END-OFFSET"]),
                    int(kafka[p]["LAG"])) == (mine[p]["committed"], mine[p]["end"],
                                             mine[p]["lag"])
            assert kafka[p]["CONSUMER-ID"] == mine[p]["member_id"] == \
                ours["members"][0]["member_id"]
            # The member's own client id (the proxy forwards it); its host is the proxy's.
            assert kafka[p]["CLIENT-ID"] == mine[p]["client_id"] == "fk-lag-member"
            assert kafka[p]["HOST"] == mine[p]["host"]
        # Offsets of a running group are not reset.
        refused = fedkafka(state, "group", "reset-offsets", group, "--topic", TOPIC,
                           "--to-earliest", "--execute", check=False)
        assert refused.returncode != 0 and "inactive" in refused.stderr
    finally:
        member.send_signal(signal.SIGTERM)
        try:
            member.wait(timeout=60)
        except subprocess.TimeoutExpired:
            member.kill()
            member.wait()
