"""Two controller processes on a real ZooKeeper: one active, the standby takes over.

The map's clusters point at dead loopback ports, so every change a leader makes is
observable without Kafka: a newly added (active) cluster is marked ``down`` by
whichever controller leads, and only by a leader.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fedkafka_builtin.zookeeper_backend import ZooKeeperBackend

from federation.clusters import admin
from federation.core.model import ClusterState, FederationMap
from federation.tooling import procs
from tests.integration.zk_fixture import ZooKeeperServer

pytestmark = [pytest.mark.integration, pytest.mark.zookeeper]

SESSION_TIMEOUT = 2.0  # seconds: how long a killed leader's session outlives it


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # e.g. ZooKeeper restarting: retry
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class Controllers:
    def __init__(self, workdir: Path, hosts: str, root: str) -> None:
        self.workdir = workdir
        self.hosts = hosts
        self.root = root
        self.records: dict[str, procs.ProcessRecord] = {}

    def start(self, member_id: str, **extra: Any) -> procs.ProcessRecord:
        cfg = self.workdir / f"{member_id}.json"
        cfg.write_text(json.dumps({
            "metadata": {"backend": "zookeeper", "hosts": self.hosts, "root": self.root,
                         "session_timeout": SESSION_TIMEOUT},
            "metrics_port": 0, "health_interval": 0.3, "down_after": 1,
            "request_timeout": 1.0, "member_id": member_id, **extra}))
        rec, _ = procs.spawn(name=member_id, kind="controller",
                             cmd=[sys.executable, "-m", "federation.controller.service",
                                  "--config", str(cfg)],
                             log=self.workdir / f"{member_id}.log", ports=[], marker=str(cfg),
                             cwd=Path(__file__).resolve().parents[2])
        self.records[member_id] = rec
        return rec

    def log(self, member_id: str) -> str:
        return (self.workdir / f"{member_id}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        procs.stop(list(self.records.values()), grace=10)


@pytest.fixture
def env(zookeeper: ZooKeeperServer, tmp_path: Path
        ) -> Iterator[tuple[ZooKeeperBackend, Controllers]]:
    root = zookeeper.new_root()
    backend = ZooKeeperBackend(zookeeper.hosts, root, session_timeout=SESSION_TIMEOUT)
    controllers = Controllers(tmp_path, zookeeper.hosts, root)
    try:
        yield backend, controllers
    finally:
        controllers.stop_all()
        backend.close()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def _leaders(backend: ZooKeeperBackend) -> dict[str, dict[str, Any]]:
    return {m: d for m, d in backend.members("controller").items() if d.get("leader")}


async def _add_dead_cluster(backend: ZooKeeperBackend, cluster_id: str) -> None:
    await admin.add_cluster(backend, cluster_id, f"127.0.0.1:{_dead_port()}",
                            probe_first=False)


def _state(backend: ZooKeeperBackend, cluster_id: str) -> ClusterState | None:
    fmap: FederationMap | None = backend.load()
    cluster = fmap.clusters.get(cluster_id) if fmap else None
    return cluster.state if cluster else None


async def test_standby_takes_over_and_zookeeper_restart_loses_nothing(
        env: tuple[ZooKeeperBackend, Controllers], zookeeper: ZooKeeperServer) -> None:
    backend, controllers = env
    await _add_dead_cluster(backend, "d1")
    a = controllers.start("ctl-a")
    b = controllers.start("ctl-b")

    # Exactly one leader; it marks the unreachable cluster down.
    _until(lambda: _state(backend, "d1") is ClusterState.DOWN, 30,
           "the first leader to mark d1 down")
    leaders = _until(lambda: _leaders(backend), 10, "a leader registered")
    assert len(leaders) == 1 and set(backend.members("controller")) == {"ctl-a", "ctl-b"}
    (leader_id, leader), = leaders.items()
    standby_id = "ctl-b" if leader_id == "ctl-a" else "ctl-a"
    assert leader["pid"] == (a if leader_id == "ctl-a" else b).pid

    # Kill the active controller outright; the standby must act within seconds.
    os.kill(leader["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    await _add_dead_cluster(backend, "d2")
    # Waits for the condition (generously: a loaded CI machine is slow); how long the
    # takeover took is reported, not asserted.
    _until(lambda: _state(backend, "d2") is ClusterState.DOWN, 90,
           f"the standby to take over (log:\n{controllers.log(standby_id)})")
    print(f"standby took over in {time.monotonic() - t0:.1f}s "
          f"(session timeout {SESSION_TIMEOUT}s)")
    assert set(_until(lambda: _leaders(backend), 10, "the new leader registered")) == {
        standby_id}
    _until(lambda: set(backend.members("controller")) == {standby_id}, 10,
           "the dead controller's member to expire")
    metrics = backend.members("controller")[standby_id]["metrics"]
    text = _get(f"http://{metrics}/metrics")
    assert "fedkafka_controller_is_leader 1.0" in text
    assert 'fedkafka_controller_cluster_up{cluster="d2"} 0.0' in text

    # Restarting ZooKeeper loses nothing: the map, the member, and the leader's work.
    before = backend.load()
    assert before is not None
    zookeeper.restart()
    after = _until(backend.load, 30, "ZooKeeper back")
    assert after == before
    _until(lambda: set(_leaders(backend)) == {standby_id}, 30, "the leader after restart")
    await _add_dead_cluster(backend, "d3")
    _until(lambda: _state(backend, "d3") is ClusterState.DOWN, 30,
           f"the leader to act after the restart (log:\n{controllers.log(standby_id)})")
    final = backend.load()
    assert final is not None and final.version > before.version
    assert {c: final.clusters[c].state for c in ("d1", "d2")} == {
        "d1": ClusterState.DOWN, "d2": ClusterState.DOWN}

    # A graceful stop withdraws the member and resigns at once.
    controllers.stop_all()
    assert backend.members("controller") == {}


# -- intents through a failover (ADR 0015) ----------------------------------------------------

INTENT_PORT = int(os.environ.get("FEDKAFKA_TEST_INTENT_FAILOVER_PORT", "30480"))
TOKENS = {"admin": "failover-admin-token-0123456789", "proxy": "failover-proxy-token-0123456789"}


def _post(address: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{address}/v1/intents", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {TOKENS['admin']}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


async def test_intents_through_a_failover_are_applied_once(
        env: tuple[ZooKeeperBackend, Controllers], tmp_path: Path) -> None:
    """An intent whose answer was lost (its controller killed right after applying it) and
    an intent submitted while the leader is being killed: each is applied exactly once,
    and its submitter, retrying the same id, gets a success from the new leader."""
    import asyncio

    from federation.controller import intents
    from federation.core.model import PhysicalCluster

    backend, controllers = env
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    await admin.init_map(backend, [PhysicalCluster("d0", f"127.0.0.1:{_dead_port()}")],
                         coordination_cluster="d0", probe_first=False)
    await admin.set_route(backend, "to-remove-*", "default")
    procs_by_id = {member: controllers.start(
        member, intent_tokens_file=str(tokens), intent_listen=f"127.0.0.1:{INTENT_PORT + i}")
        for i, member in enumerate(("ctl-a", "ctl-b"))}
    leader_id, leader = next(iter(_until(
        lambda: {m: d for m, d in _leaders(backend).items() if d.get("intents")}, 30,
        "a leader with an intent endpoint").items()))
    standby_id = "ctl-b" if leader_id == "ctl-a" else "ctl-a"
    assert leader["pid"] == procs_by_id[leader_id].pid

    # 1. Applied, then the controller dies before its answer reaches anyone.
    lost = {"id": "lost-answer-0001", "kind": "set_route",
            "args": {"pattern": "lost-*", "pool": "default"}}
    assert _post(leader["intents"], lost)["status"] == "applied"
    applied = backend.load()
    assert applied is not None and "lost-answer-0001" in applied.intents
    os.kill(leader["pid"], signal.SIGKILL)

    # 2. Submitted during the failover (no leader for a while): the submitter retries.
    during = asyncio.create_task(intents.submit(
        backend, "remove_route", {"pattern": "to-remove-*"}, token=TOKENS["admin"],
        timeout=120, intent_id="during-failover-02"))
    retried = await intents.submit(backend, "set_route", lost["args"], token=TOKENS["admin"],
                                   timeout=120, intent_id="lost-answer-0001")
    assert retried["status"] == "duplicate"
    answer = await during
    assert answer["status"] in ("applied", "duplicate")
    # remove_route applied twice would have been refused ("no route"): once, exactly.
    again = await intents.submit(backend, "remove_route", {"pattern": "to-remove-*"},
                                 token=TOKENS["admin"], timeout=60,
                                 intent_id="during-failover-02")
    assert again["status"] == "duplicate"
    final = backend.load()
    assert final is not None
    assert [r.pattern for r in final.routing] == ["lost-*"]
    assert {"lost-answer-0001", "during-failover-02"} <= set(final.intents)
    _until(lambda: set(_leaders(backend)) == {standby_id}, 30, "the standby leading alone")
    # A new id for the same change is a new intent: refused clearly, not silently.
    with pytest.raises(admin.InvalidRequestError, match="no route with pattern"):
        await intents.submit(backend, "remove_route", {"pattern": "to-remove-*"},
                             token=TOKENS["admin"], timeout=60)
