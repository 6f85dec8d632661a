"""Consumer groups through the proxy, on Kafka's own group coordinator (shadow topics)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from federation.tooling.testing.clients import ConfluentClient

from .fedtopics import create_logical_topic

pytestmark = pytest.mark.integration

PARTITIONS = 8
ROOT = Path(__file__).resolve().parents[2]


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return out


def last_assignment(path: Path) -> list[int] | None:
    found = None
    for rec in read_lines(path):
        if "assigned" in rec:
            found = rec["assigned"]
    return found


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        parts = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
        return {tp.partition: tp.offset for tp in parts}
    finally:
        c.close()


def test_group_of_three_rebalances_and_commits_survive_proxy_restart(
        local_federation: dict[str, Any], tmp_path: Path) -> None:
    topic = "groups-orders"
    group = "billing"
    create_logical_topic(local_federation, topic, PARTITIONS)
    bootstrap = local_federation["bootstrap"]
    producer = ConfluentClient()
    first = [(f"k{i % 101}".encode(), f"a-{i:05d}".encode()) for i in range(6000)]
    producer.produce(bootstrap, topic, first, idempotent=True)

    outs = [tmp_path / f"member-{i}.jsonl" for i in range(3)]
    members = [subprocess.Popen(
        [sys.executable, "-m", "tests.integration.group_member", "--bootstrap", bootstrap,
         "--topic", topic, "--group", group, "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}) for out in outs]
    try:
        def three_way_split() -> bool:
            assigned = [last_assignment(o) for o in outs]
            if any(not a for a in assigned):
                return False
            flat = [p for a in assigned for p in a or []]
            return sorted(flat) == list(range(PARTITIONS))
        wait_for(three_way_split, 90, "3 members to share the 8 partitions")

        def consumed() -> Counter[str]:
            return Counter(r["v"] for o in outs for r in read_lines(o) if "v" in r)
        wait_for(lambda: len(consumed()) >= len(first), 90, "the first 6000 records")

        # One member leaves; the other two take over all 8 partitions.
        members[0].send_signal(signal.SIGTERM)
        assert members[0].wait(timeout=60) == 0

        def two_way_split() -> bool:
            assigned = [last_assignment(o) for o in outs[1:]]
            flat = [p for a in assigned for p in a or []]
            return sorted(flat) == list(range(PARTITIONS))
        wait_for(two_way_split, 90, "2 remaining members to take all 8 partitions")

        second = [(f"k{i % 101}".encode(), f"b-{i:05d}".encode()) for i in range(6000)]
        producer.produce(bootstrap, topic, second, idempotent=True)
        wait_for(lambda: len(consumed()) >= len(first) + len(second), 120,
                 "the second 6000 records")
        # Stop the remaining members cleanly (each commits what it consumed).
        for m in members[1:]:
            m.send_signal(signal.SIGTERM)
        for m in members[1:]:
            assert m.wait(timeout=60) == 0
    finally:
        for m in members:
            if m.poll() is None:
                m.kill()
                m.wait()

    counts = consumed()
    sent = {v.decode() for _, v in first + second}
    assert set(counts) == sent, "nothing lost"
    dups = sum(n - 1 for n in counts.values())
    assert dups <= 1000, f"duplicates only within at-least-once bounds, got {dups}"
    assert all(r.get("commit_error") is None for o in outs for r in read_lines(o))

    # Committed offsets are logical (= records per logical partition) and survive a restart
    # of every proxy.
    before = committed(bootstrap, group, topic)
    ends = {}
    for o in outs:
        for r in read_lines(o):
            if "v" in r:
                ends[r["p"]] = max(ends.get(r["p"], 0), r["o"] + 1)
    assert set(ends) == set(range(PARTITIONS)), "every logical partition got records"
    assert before == ends
    assert sum(before.values()) == len(sent)

    fed = local_federation["_fed"]
    for proc in local_federation["processes"]:
        if proc["kind"] == "proxy":
            fed.restart_component(proc["name"])
    after = committed(bootstrap, group, topic)
    assert after == before
