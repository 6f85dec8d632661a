"""A whole federation on ZooKeeper: controller failover, proxies keep serving, ZooKeeper
restarts lose nothing, topics created with the CLI are usable at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from federation.core.model import ClusterState
from federation.plugin import get_plugins, parse_store
from federation.tooling.kafka_dist import KafkaDist
from federation.tooling.local import LocalFederation
from federation.tooling.testing.clients import ConfluentClient

pytestmark = [pytest.mark.integration, pytest.mark.zookeeper, pytest.mark.slow]

BASE = int(os.environ.get("FEDKAFKA_TEST_ZK_FED_BASE_PORT", "21592"))


@pytest.fixture(scope="module")
def zkfed(tmp_path_factory: pytest.TempPathFactory, kafka_dist: KafkaDist
          ) -> Iterator[tuple[LocalFederation, dict[str, Any]]]:
    fed = LocalFederation(tmp_path_factory.mktemp("zkfed"))
    state = fed.up(clusters=2, proxies=1, controllers=2, metadata="zookeeper",
                   kafka_version=kafka_dist.version, base_port=BASE, heap="256m")
    try:
        yield fed, state
    finally:
        fed.down(grace=15)


def cli(state: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "federation.cli.main", *args, "--store",
                           state["store"]], capture_output=True, text=True, timeout=120,
                          check=False)


def backend(state: dict[str, Any]) -> Any:
    name, opts = parse_store(state["store"])
    return get_plugins().backend(name, **opts)


def wait_for(what: str, cond: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = cond()
        except Exception:  # the store may be restarting
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def roundtrip(state: dict[str, Any], topic: str, tag: str, n: int = 200) -> None:
    records = [(f"k{i}".encode(), f"{tag}-{i:04d}".encode()) for i in range(n)]
    ConfluentClient().produce(state["bootstrap"], topic, records, idempotent=True)
    got = ConfluentClient().consume(state["bootstrap"], topic, 10**9, timeout=15)
    values = {r.value for r in got}
    assert {v for _, v in records} <= values, f"{tag}: produced records come back"


def leader(state: dict[str, Any]) -> str | None:
    b = backend(state)
    try:
        for member_id, data in b.members("controller").items():
            if data.get("leader"):
                return member_id
        return None
    finally:
        b.close()


def test_cli_topic_is_usable_at_once(zkfed: tuple[LocalFederation, dict[str, Any]]) -> None:
    _, state = zkfed
    res = cli(state, "topic", "create", "zk-orders", "--partitions", "4", "--strategy",
              "round_robin")
    assert res.returncode == 0, res.stderr
    desc = cli(state, "topic", "describe", "zk-orders", "--json")
    assert desc.returncode == 0, desc.stderr
    described = json.loads(desc.stdout)
    text = json.dumps(described)
    assert "c1" in text and "c2" in text and "round_robin" in text
    roundtrip(state, "zk-orders", "first")
    again = cli(state, "topic", "create", "zk-orders", "--partitions", "4")
    assert again.returncode != 0 and "zk-orders" in again.stderr
    smaller = cli(state, "topic", "add-partitions", "zk-orders", "2")
    assert smaller.returncode != 0 and "4" in smaller.stderr


def test_controller_failover_and_zookeeper_restart(
        zkfed: tuple[LocalFederation, dict[str, Any]]) -> None:
    fed, state = zkfed
    if cli(state, "topic", "describe", "zk-orders").returncode != 0:
        assert cli(state, "topic", "create", "zk-orders", "--partitions", "4").returncode == 0
    active = wait_for("an active controller", lambda: leader(state))
    standby = {"controller-1": "controller-2", "controller-2": "controller-1"}[active]

    # Kill the active controller: proxies keep serving, the standby takes over.
    fed.stop_component(active, kill=True)
    roundtrip(state, "zk-orders", "after-kill")
    t0 = time.monotonic()
    assert wait_for("the standby to lead", lambda: leader(state) == standby, 30)
    takeover = time.monotonic() - t0
    assert takeover < 30

    # The new active controller publishes the next change: a cluster going down and up.
    def c2_state() -> ClusterState:
        b = backend(state)
        try:
            return b.load().clusters["c2"].state
        finally:
            b.close()
    fed.stop_component("c2-b1")
    wait_for("c2 marked down by the new controller", lambda: c2_state() == ClusterState.DOWN,
             60)
    fed.start_component("c2-b1")
    wait_for("c2 back to active", lambda: c2_state() == ClusterState.ACTIVE, 60)

    # Restart ZooKeeper: nothing is lost, proxies serve throughout and afterwards.
    b = backend(state)
    try:
        before = b.load()
    finally:
        b.close()
    fed.restart_component("zookeeper")
    roundtrip(state, "zk-orders", "after-zk-restart")
    after = wait_for("the map after the restart", lambda: backend(state).load())
    assert after.version >= before.version
    assert set(after.topics) == set(before.topics)
    assert after.topics["zk-orders"].topic_id == before.topics["zk-orders"].topic_id
    res = cli(state, "topic", "create", "zk-after", "--partitions", "2")
    assert res.returncode == 0, res.stderr
    roundtrip(state, "zk-after", "new-topic")
    fed.start_component(active)  # leave the federation as it was


def test_store_loss_is_reported_and_the_last_map_served(
        zkfed: tuple[LocalFederation, dict[str, Any]]) -> None:
    fed, state = zkfed
    if cli(state, "topic", "describe", "zk-orders").returncode != 0:
        assert cli(state, "topic", "create", "zk-orders", "--partitions", "4").returncode == 0
    metrics = next(p for p in state["processes"] if p["name"] == "proxy-1")["ports"][1]
    import urllib.request

    def store_healthy() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5
                                      ).read().decode()
        line = next(x for x in text.splitlines() if x.startswith("fedkafka_proxy_store_healthy"))
        return float(line.split()[1])
    fed.stop_component("zookeeper")
    try:
        wait_for("the proxy to report its store lost", lambda: store_healthy() == 0.0, 60)
        roundtrip(state, "zk-orders", "without-store")  # serves the last map
    finally:
        fed.start_component("zookeeper")
    wait_for("the proxy to report its store back", lambda: store_healthy() == 1.0, 60)
    Path(state["workdir"]).exists()
