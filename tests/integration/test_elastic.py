"""Partitions that move, on a federation of 3 real clusters with real clients running.

Kafka's VerifiableProducer (Java, idempotent, acks=all, default retries) and a librdkafka
consumer group run throughout each test; afterwards every acknowledged record must have
been consumed at the offset it was acknowledged at, each key in one partition and in
order, and no record written twice.

1. key-stable expansion: a cluster is added and ``fedkafka rebalance`` rolls a share of
   the active segments onto it while producing;
2. failover: every broker of one cluster is killed (SIGKILL) mid-stream;
3. drain and retire: ``fedkafka cluster drain --wait`` then ``retire`` under load, and the
   retired cluster's brokers are stopped while producing.

The tests share one module-scoped federation and run in this order.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation.clusters import admin
from federation.tooling.kafka_dist import KafkaDist
from federation.tooling.local import LocalFederation, temporary_federation
from federation.tooling.testing.clients import java_murmur2_partition

from .elastic_tools import finish, run_clients, wait_until
from .fedtopics import backend_of, stored_map

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_PORT = int(os.environ.get("FEDKAFKA_TEST_ELASTIC_PORT", "29500"))  # session: 29092+
FAILOVER_AFTER = 3.0


@pytest.fixture(scope="module")
def fed(kafka_dist: KafkaDist, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    failed_before = request.session.testsfailed
    with temporary_federation("fk-elastic-", clusters=3, base_port=BASE_PORT, heap="256m",
                              proxies=2, kafka_version=kafka_dist.version,
                              controller_options={"health_interval": 0.5, "down_after": 2,
                                                  "failover_after": FAILOVER_AFTER,
                                                  "fence_timeout": 5.0}) as state:
        yield state
        if request.session.testsfailed > failed_before:
            # Fail the block so the federation's logs (proxies, controller, brokers) stay.
            raise RuntimeError(f"a test failed: logs kept in {state['workdir']}/logs")


def _admin(state: dict[str, Any], op: Any, *args: Any, **kwargs: Any) -> Any:
    backend = backend_of(state)
    try:
        return asyncio.run(op(backend, *args, **kwargs))
    finally:
        backend.close()


def _cli(state: dict[str, Any], *args: str, timeout: float = 300
         ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "federation.cli.main", *args, "--store",
                           state["store"]], capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"fedkafka {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _brokers(state: dict[str, Any], cluster: str) -> list[str]:
    return [f"{cluster}-b{b['node_id']}" for c in state["clusters"] if c["name"] == cluster
            for b in c["brokers"]]


def test_rebalance_onto_an_added_cluster_keeps_keys_and_order(
        fed: dict[str, Any], kafka_dist: KafkaDist, tmp_path: Path) -> None:
    c3 = next(c for c in fed["clusters"] if c["name"] == "c3")
    _admin(fed, admin.remove_cluster, "c3")  # c3 joins later, as a new cluster would
    _admin(fed, admin.create_topic, "keyed", 6, "stable")
    before = stored_map(fed).topics["keyed"]
    assert {lp.active.cluster for lp in before.partitions} == {"c1", "c2"}

    producer, consumer = run_clients(fed, kafka_dist, "keyed", tmp_path, 12000, 800)
    try:
        producer.wait_acks(2000, timeout=120)
        _cli(fed, "cluster", "add", "c3", c3["bootstrap"])
        moved = json.loads(_cli(fed, "rebalance", "--topic", "keyed", "--json").stdout)["moves"]
        asked = time.monotonic()
    except BaseException:
        producer.stop()
        consumer.stop()
        raise
    assert len(moved) == 2 and {m["target"] for m in moved} == {"c3"}
    assert all(m["now_on"] == "c3" for m in moved)
    counts = finish(producer, consumer)

    after = stored_map(fed).topics["keyed"]
    assert after.partition_count == 6
    for m in moved:
        lp = after.partitions[m["partition"]]
        assert lp.active.cluster == "c3" and len(lp.segments) == 2
        assert lp.segments[0].sealed_end is not None
        # New writes landed on the new cluster: acknowledged offsets beyond the seal.
        late = [a for a in producer.acks if a.partition == lp.index and a.at > asked]
        assert late and max(a.offset for a in late) >= lp.segments[0].sealed_end
    # Every key kept the partition Kafka's own partitioner gives it for 6 partitions.
    for a in producer.acks:
        assert a.key is not None
        assert a.partition == java_murmur2_partition(a.key.encode(), 6), a
    print(f"rebalance: {counts}")
    _admin(fed, admin.delete_topic, "keyed")


def test_failover_when_every_broker_of_a_cluster_is_killed(
        fed: dict[str, Any], kafka_dist: KafkaDist, tmp_path: Path) -> None:
    _admin(fed, admin.create_topic, "orders", 6, "contiguous")
    layout = stored_map(fed).topics["orders"]
    on_c3 = [lp.index for lp in layout.partitions if lp.active.cluster == "c3"]
    assert on_c3, "the topic should have partitions on c3"
    local = LocalFederation(Path(fed["workdir"]))

    producer, consumer = run_clients(fed, kafka_dist, "orders", tmp_path, 16000, 800)
    killed_at = 0.0
    try:
        producer.wait_acks(2500, timeout=120)
        killed_at = time.monotonic()
        for broker in _brokers(fed, "c3"):
            local.stop_component(broker, kill=True)

        def rolled() -> bool:
            lps = stored_map(fed).topics["orders"].partitions
            return all(lps[p].active.cluster != "c3" for p in on_c3)
        wait_until(rolled, 120, "c3's partitions rolled onto other clusters")
        fmap = stored_map(fed)
        starts = {}
        for p in on_c3:
            lp = fmap.topics["orders"].partitions[p]
            assert lp.segments[-2].cluster == "c3" and lp.segments[-2].sealed_end is not None
            starts[p] = lp.active.logical_start

        def written() -> bool:  # acknowledged writes in every new segment
            return all(any(a.partition == p and a.offset >= starts[p]
                           for a in producer.acks[-4000:]) for p in on_c3)
        wait_until(written, 120, "acknowledged writes in the new segments")
        failover = {p: min(a.at for a in producer.acks if a.partition == p
                           and a.offset >= starts[p]) - killed_at for p in on_c3}
        for broker in _brokers(fed, "c3"):
            local.start_component(broker)
    except BaseException:
        producer.stop()
        consumer.stop()
        raise
    counts = finish(producer, consumer)
    print(f"failover: seconds from kill to the first acknowledged write per partition "
          f"{ {p: round(s, 2) for p, s in failover.items()} } (failover_after "
          f"{FAILOVER_AFTER}); {counts}")
    _admin(fed, admin.delete_topic, "orders")


def test_drain_and_retire_a_cluster_under_load(
        fed: dict[str, Any], kafka_dist: KafkaDist, tmp_path: Path) -> None:
    wait_until(lambda: stored_map(fed).clusters["c3"].writable, 60, "c3 active again")
    _admin(fed, admin.create_topic, "drained", 6, "contiguous")
    on_c2 = [lp.index for lp in stored_map(fed).topics["drained"].partitions
             if lp.active.cluster == "c2"]
    assert on_c2
    local = LocalFederation(Path(fed["workdir"]))
    producer, consumer = run_clients(fed, kafka_dist, "drained", tmp_path, 14000, 800)
    try:
        producer.wait_acks(2500, timeout=120)
        started = time.monotonic()
        proc = _cli(fed, "cluster", "drain", "c2", "--wait", "--json", "--interval", "0.5")
        drain_seconds = time.monotonic() - started
        progress = json.loads(proc.stdout)
        assert progress["done"] and progress["active"] == [], progress
        _cli(fed, "cluster", "retire", "c2")
        fmap = stored_map(fed)
        assert fmap.clusters["c2"].state.value == "retired"
        assert all(s.cluster != "c2" for t in fmap.topics.values() for lp in t.partitions
                   for s in lp.segments)
        acked_before_stop = len(producer.acks)
        for broker in _brokers(fed, "c2"):
            local.stop_component(broker)
        producer.wait_acks(acked_before_stop + 1000, timeout=120)
    except BaseException:
        producer.stop()
        consumer.stop()
        raise
    counts = finish(producer, consumer)
    for p in on_c2:
        assert any(a.partition == p and a.at > started for a in producer.acks)
    print(f"drain: {drain_seconds:.1f}s until drained; {counts}")
