"""Controller decisions (pure) and rounds against fake clusters, without sockets to Kafka."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fedkafka_builtin.file_backend import FileBackend, FileLockElection

from federation.clusters import admin
from federation.controller.service import (
    ClusterObservation,
    Controller,
    ControllerConfig,
    HealthMemory,
    Repair,
    StateChange,
    apply_state_changes,
    decide_states,
    load_config,
    plan_loss_rolls,
    plan_repairs,
)
from federation.core.errors import ConfigError
from federation.core.model import ClusterState, FederationMap, PhysicalCluster
from federation.plugin import get_plugins, hookimpl
from federation.store.election import elect_leader
from tests.unit.test_admin_plan import Fleet

A, D, RO = ClusterState.ACTIVE, ClusterState.DOWN, ClusterState.READ_ONLY


def _map(**states: ClusterState) -> FederationMap:
    clusters = {c: PhysicalCluster(c, f"127.0.0.1:{9092 + i}", state)
                for i, (c, state) in enumerate(states.items())}
    return FederationMap(version=1, clusters=clusters, coordination_cluster=next(iter(states)))


def _obs(cluster: str, up: bool, topics: dict[str, int] | None = None) -> ClusterObservation:
    return ClusterObservation(cluster, up, topics if up else None)


# -- decide_states -----------------------------------------------------------------------------


def test_down_only_after_consecutive_failures() -> None:
    fmap, memory = _map(a=A, b=A), HealthMemory()
    for _ in range(2):
        assert decide_states(fmap, [_obs("a", True), _obs("b", False)], memory, 3) == []
    assert decide_states(fmap, [_obs("a", True), _obs("b", False)], memory, 3) == [
        StateChange("b", A, D)]


def test_a_success_resets_the_failure_count() -> None:
    fmap, memory = _map(a=A), HealthMemory()
    decide_states(fmap, [_obs("a", False)], memory, 2)
    decide_states(fmap, [_obs("a", True)], memory, 2)
    assert decide_states(fmap, [_obs("a", False)], memory, 2) == []


def test_back_to_the_state_before_down() -> None:
    memory = HealthMemory()
    assert decide_states(_map(a=RO), [_obs("a", False)], memory, 1) == [StateChange("a", RO, D)]
    assert decide_states(_map(a=D), [_obs("a", True)], memory, 1) == [StateChange("a", D, RO)]


def test_the_state_before_down_survives_a_controller_failover() -> None:
    # The controller that marked it down wrote the previous state into the map; a new
    # controller (empty memory) restores it from there.
    fmap = _map(a=RO)
    new, _ = apply_state_changes(fmap, [StateChange("a", RO, D)])
    assert new is not None and new.clusters["a"].previous_state is RO
    from federation.store import mapstore

    reloaded = mapstore.loads(mapstore.dumps(new))
    assert decide_states(reloaded, [_obs("a", True)], HealthMemory(), 1) == [
        StateChange("a", D, RO)]
    back, _ = apply_state_changes(reloaded, [StateChange("a", D, RO)])
    assert back is not None and back.clusters["a"].previous_state is None


def test_down_cluster_without_memory_comes_back_active() -> None:
    # e.g. the controller that marked it down has failed over meanwhile
    assert decide_states(_map(a=D), [_obs("a", True)], HealthMemory(), 1) == [
        StateChange("a", D, A)]


def test_down_and_retired_clusters_stay_put_while_unreachable() -> None:
    fmap = _map(a=D, b=ClusterState.RETIRED)
    assert decide_states(fmap, [_obs("a", False), _obs("b", False)], HealthMemory(), 1) == []


def test_apply_state_changes_is_compare_and_set() -> None:
    fmap = _map(a=A, b=RO)
    new, applied = apply_state_changes(fmap, [StateChange("a", A, D), StateChange("b", A, D)])
    assert new is not None and applied == [StateChange("a", A, D)]
    assert new.clusters["a"].state is D and new.clusters["b"].state is RO
    assert apply_state_changes(fmap, [StateChange("b", A, D)]) == (None, [])


# -- plan_repairs ------------------------------------------------------------------------------


def test_plan_repairs_creates_missing_and_grows_short_topics() -> None:
    fmap = _map(a=A, b=A)
    fmap = fmap.with_topic(admin.plan_create_topic(fmap, "t", 4))  # a: t.fk (2) + shadow t (4)
    observations = [_obs("a", True, {"t.fk": 2}), _obs("b", True, {"t.fk": 1})]
    assert plan_repairs(fmap, observations) == [
        Repair("a", "t", 4, 0, shadow=True), Repair("b", "t.fk", 2, 1)]
    complete = [_obs("a", True, {"t.fk": 2, "t": 4}), _obs("b", True, {"t.fk": 2, "x": 9})]
    assert plan_repairs(fmap, complete) == []
    assert plan_repairs(fmap, [_obs("a", False), _obs("b", False)]) == []


def test_plan_loss_rolls_moves_active_segments_that_lost_their_records() -> None:
    fmap = _map(a=A, b=A, c=RO)
    fmap = fmap.with_topic(admin.plan_create_topic(fmap, "t", 4))  # t[0,1] on a, t[2,3] on b
    lost = {("b", "t.fk", 0), ("b", "t.fk", 1), ("b", "gone.fk", 0)}
    moves = plan_loss_rolls(fmap, lost)
    assert [(m.topic, m.partition, m.target, m.reason) for m in moves] == [
        ("t", 2, "a", "lost"), ("t", 3, "a", "lost")]  # c is read-only: not a target
    queued = dataclasses.replace(fmap, moves=tuple(moves))
    assert plan_loss_rolls(queued, lost) == []  # asked once
    alone = _map(b=A)
    alone = alone.with_topic(admin.plan_create_topic(alone, "t", 2))
    assert plan_loss_rolls(alone, {("b", "t.fk", 0)}) == []  # nowhere to go: reported only


def test_intent_endpoint_config(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, {
        "metadata": {"backend": "file", "path": "m"}, "intent_listen": "127.0.0.1:30455",
        "intent_tokens_file": "/etc/fedkafka/intent-tokens.json"}))
    assert (cfg.intent_listen, cfg.intent_tokens_file) == (
        "127.0.0.1:30455", "/etc/fedkafka/intent-tokens.json")
    with pytest.raises(ConfigError, match="'intent_listen' must be host:port"):
        load_config(_config(tmp_path, {"metadata": {"backend": "file", "path": "m"},
                                       "intent_listen": "nowhere"}))


# -- load_config -------------------------------------------------------------------------------


def _config(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "controller.json"
    path.write_text(json.dumps(data))
    return path


def test_load_config(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, {
        "metadata": {"backend": "zookeeper", "hosts": "127.0.0.1:2181", "root": "/fk"},
        "metrics_port": 9308, "health_interval": 0.5, "member_id": "ctl-1"}))
    assert cfg.backend == "zookeeper"
    assert cfg.backend_options == {"hosts": "127.0.0.1:2181", "root": "/fk"}
    assert (cfg.metrics_port, cfg.health_interval, cfg.member_id) == (9308, 0.5, "ctl-1")
    default = load_config(_config(tmp_path, {"metadata": {"backend": "file", "path": "m"}}))
    assert default.metrics_port == 0 and default.down_after == 3 and default.member_id


@pytest.mark.parametrize(("data", "match"), [
    ({}, "field 'metadata' must be an object with a 'backend'"),
    ({"metadata": {"backend": "etcd"}}, "'metadata.backend' is 'etcd'; valid: file, zookeeper"),
    ({"metadata": {"backend": "file"}}, "'metadata.path'"),
    ({"metadata": {"backend": "file", "path": "m"}, "metrics_port": "x"},
     "field 'metrics_port' must be an integer 0..65535"),
    ({"metadata": {"backend": "file", "path": "m"}, "health_interval": 0},
     "field 'health_interval' must be a number of seconds > 0"),
    ({"metadata": {"backend": "file", "path": "m"}, "down_after": 0},
     "field 'down_after' must be an integer >= 1"),
    ({"metadata": {"backend": "file", "path": "m"}, "helth_interval": 1},
     "unknown field.*helth_interval"),
    ([], "must be a JSON object"),
])
def test_load_config_errors_name_the_field(tmp_path: Path, data: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_config(tmp_path, data))


def test_load_config_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; pass --config"):
        load_config(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_config(tmp_path / "broken.json")


# -- file election -----------------------------------------------------------------------------


def test_file_lock_election_one_leader_then_takeover(tmp_path: Path) -> None:
    first = FileLockElection(tmp_path / "lock", "one", retry_interval=0.05)
    assert first.wait(5)
    second = FileLockElection(tmp_path / "lock", "two", retry_interval=0.05)
    assert not second.wait(0.3)
    assert second.leader() == "one"
    first.cancel()
    assert second.wait(5) and second.leader() == "two"
    second.cancel()


def test_elect_leader_for_file_backend_and_refusal(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "map.json")
    try:
        election = elect_leader(backend, "x")
        assert isinstance(election, FileLockElection) and election.wait(5)
        election.cancel()
    finally:
        backend.close()
    with pytest.raises(ConfigError, match="offers no leader election"):
        elect_leader(object(), "x")


# -- a controller over fake clusters -----------------------------------------------------------


class Observer:
    def __init__(self) -> None:
        self.changes: list[tuple[str, ClusterState | None, ClusterState]] = []
        self.published: list[int] = []

    @hookimpl
    def fedkafka_cluster_state_changed(self, cluster_id: str, old_state: ClusterState | None,
                                       new_state: ClusterState) -> None:
        self.changes.append((cluster_id, old_state, new_state))

    @hookimpl
    def fedkafka_map_published(self, old: FederationMap | None, new: FederationMap) -> None:
        self.published.append(new.version)


@pytest.fixture
def observer() -> Iterator[Observer]:
    plugins = get_plugins()
    obs = Observer()
    plugins.register(obs, name="test-controller-observer")
    yield obs
    plugins.unregister(obs)


async def test_controller_rounds(tmp_path: Path, observer: Observer) -> None:
    backend = FileBackend(tmp_path / "map.json")
    fleet = Fleet("a", "b")
    try:
        backend.publish(_map(a=A, b=RO), 0)
        await admin.create_topic(backend, "t", 2, connect=fleet.connect)  # both on a
        fleet.clusters["a"].topics.pop("t")  # the shadow topic got lost
        config = ControllerConfig(backend="file", backend_options={}, member_id="k1",
                                  metrics_port=0, health_interval=0.05, down_after=2)
        controller = Controller(config, backend, connect=fleet.connect)
        controller.election = elect_leader(backend, "k1")
        assert controller.election.wait(5)

        assert await controller.round() is None  # nothing to change: repairs only
        assert fleet.clusters["a"].topics == {"t.fk": 2, "t": 2}

        fleet.clusters["b"].down = True
        assert await controller.round() is None  # one failure is not yet down
        published = await controller.round()
        assert published is not None and published.clusters["b"].state is D
        assert observer.changes == [("b", RO, D)]
        assert published.version in observer.published

        fleet.clusters["b"].down = False
        back = await controller.round()
        assert back is not None and back.clusters["b"].state is RO
        assert observer.changes[-1] == ("b", D, RO)
        assert controller.metrics.registry.get_sample_value(
            "fedkafka_controller_cluster_up", {"cluster": "b"}) == 1
        assert controller.metrics.registry.get_sample_value(
            "fedkafka_controller_map_version") == back.version
        assert controller.metrics.registry.get_sample_value(
            "fedkafka_controller_publish_seconds_count") == 2
        controller.election.cancel()
    finally:
        backend.close()


async def test_controller_run_leads_registers_and_serves_metrics(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "map.json")
    fleet = Fleet("a")
    try:
        backend.publish(_map(a=A), 0)
        config = ControllerConfig(backend="file", backend_options={}, member_id="k1",
                                  metrics_port=0, health_interval=0.05)
        controller = Controller(config, backend, connect=fleet.connect)
        task = asyncio.create_task(controller.run())
        for _ in range(200):
            if backend.members("controller").get("k1", {}).get("leader"):
                break
            await asyncio.sleep(0.02)
        member = backend.members("controller")["k1"]
        assert member["leader"] is True
        host, port = member["metrics"].split(":")
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read())
        text = body.decode()
        assert "fedkafka_controller_is_leader 1.0" in text
        assert 'fedkafka_controller_cluster_up{cluster="a"} 1.0' in text
        controller.stop()
        await asyncio.wait_for(task, 10)
        assert controller.metrics.registry.get_sample_value("fedkafka_controller_is_leader") == 0
    finally:
        backend.close()
