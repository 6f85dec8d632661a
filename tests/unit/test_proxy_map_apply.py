"""The proxy's map-change handling looks only at the topics that changed, and ends where
looking at every topic would: fences, ceilings, acknowledged offsets and rolls."""

from __future__ import annotations

import dataclasses
import random

from federation.controller.rolls import fenced_partitions, phys_key
from federation.core.model import (
    FederationMap,
    LogicalPartition,
    LogicalTopic,
    PhysicalCluster,
    Segment,
    new_topic_id,
)
from federation.proxy.config import ProxyConfig
from federation.proxy.server import ProxyState


class _NoBackend:
    def close(self) -> None:
        pass


def topic(name: str, partitions: int = 3) -> LogicalTopic:
    return LogicalTopic(name, new_topic_id(name, "p"), tuple(
        LogicalPartition(i, (Segment("A", f"{name}.fk", i, 0, 0),)) for i in range(partitions)))


def make_state(fmap: FederationMap) -> ProxyState:
    cfg = ProxyConfig.from_dict({"node_id": 1940, "listen": "127.0.0.1:1",
                                 "store": "file:/nonexistent/map.json"})
    return ProxyState(cfg, fmap, backend=_NoBackend())  # type: ignore[arg-type]


def change_partition(fmap: FederationMap, name: str, index: int,
                     new: LogicalPartition) -> FederationMap:
    t = fmap.topics[name]
    parts = list(t.partitions)
    parts[index] = new
    return fmap.with_topic(dataclasses.replace(t, partitions=tuple(parts))).with_version(
        fmap.version + 1)


def test_incremental_map_changes_end_where_a_full_pass_would() -> None:
    clusters = {c: PhysicalCluster(c, f"{c.lower()}:9092") for c in ("A", "B")}
    fmap = FederationMap(1, clusters, {f"t{i}": topic(f"t{i}") for i in range(30)})
    state = make_state(fmap)
    state._after_map_change(fmap)  # as MapFollower.start does
    rng = random.Random(3)
    rolled = 0
    for step in range(200):
        m = state.fmap
        name = f"t{rng.randrange(30)}"
        index = rng.randrange(3)
        lp = m.topics[name].partitions[index]
        key = phys_key(lp.active)
        state.acked[key] = step  # this proxy wrote there
        action = rng.choice(("fence", "unfence", "roll", "delete", "other"))
        if action == "fence":
            new = change_partition(m, name, index, lp.fenced("B"))
        elif action == "unfence":
            state.ceilings[key] = step
            new = change_partition(m, name, index, lp.fenced(None))
        elif action == "roll":
            active = lp.active
            start = active.logical_start + 10
            new = change_partition(m, name, index, lp.rolled(
                start, "B", f"{name}.r{step}", index, 0).fenced(None))
            rolled += 1
        elif action == "delete":
            new = m.without_topic(name).with_topic(topic(name)).with_version(m.version + 1)
        else:
            new = m.with_topic(dataclasses.replace(m.topics["t0"], config={"s": str(step)})
                               ).with_version(m.version + 1)
        state.set_map(new)
        # what a full pass computes, from scratch
        fenced = {phys_key(p.active) for _, p in fenced_partitions(new)}
        assert state.fenced_keys(state.fmap) == fenced
        assert set(state.ceilings) <= fenced
        live = {phys_key(p.active) for t in new.topics.values() for p in t.partitions}
        assert set(state.acked) <= live
    assert rolled and state.recent_rolls
    for key, (sealed, _) in state.recent_rolls.items():
        assert sealed.sealed_end is not None and key[0] == "B"


def test_a_map_not_from_a_store_watch_is_diffed_by_identity() -> None:
    clusters = {"A": PhysicalCluster("A", "a:9092"), "B": PhysicalCluster("B", "b:9092")}
    fmap = FederationMap(1, clusters, {f"t{i}": topic(f"t{i}") for i in range(5)})
    state = make_state(fmap)
    state._after_map_change(fmap)
    lp = fmap.topics["t2"].partitions[1]
    fenced = change_partition(fmap, "t2", 1, lp.fenced("B"))
    # a map built elsewhere (e.g. returned by mapstore.update) with equal, not shared, topics
    rebuilt = FederationMap.from_dict(fenced.to_dict())
    state.set_map(rebuilt)
    assert state.fenced_keys(state.fmap) == {phys_key(lp.active)}
