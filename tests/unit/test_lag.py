"""Lag over segment chains (pure), the exporter's metric families and its config."""

from __future__ import annotations

import json
import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from federation.controller.rolls import drain_progress
from federation.core.errors import ConfigError
from federation.core.model import (
    ClusterState,
    FederationMap,
    LogicalPartition,
    LogicalTopic,
    PhysicalCluster,
    Segment,
)
from federation.exporter.lag import (
    GroupFilter,
    Offsets,
    compute_lag,
    logical_end,
    logical_log_start,
)
from federation.exporter.service import Snapshot, _SnapshotCollector, config_from_dict

PT = "t.fk"


def fmap_of(partitions: list[list[Segment]], states: dict[str, ClusterState] | None = None
            ) -> FederationMap:
    states = states or {}
    clusters = {c: PhysicalCluster(c, f"127.0.0.1:{9000 + i}",
                                   states.get(c, ClusterState.ACTIVE))
                for i, c in enumerate(("c1", "c2"))}
    topic = LogicalTopic("t", uuid.uuid4(), tuple(LogicalPartition(i, tuple(segs))
                                                   for i, segs in enumerate(partitions)))
    fmap = FederationMap(version=7, clusters=clusters, topics={"t": topic},
                         coordination_cluster="c1")
    fmap.validate()
    return fmap


# p0: 100 records on c1 (sealed), then c2 (active, physical 0..)
# p1: c1 only (active)
# p2: c1 0..50, c2 50..80 (physical 0..30), c1 again from 80 (physical partition 3, from 50)
CHAINS = [
    [Segment("c1", PT, 0, 0, 0, 100), Segment("c2", PT, 0, 100, 0)],
    [Segment("c1", PT, 1, 0, 0)],
    [Segment("c1", PT, 2, 0, 0, 50), Segment("c2", PT, 1, 50, 0, 80),
     Segment("c1", PT, 3, 80, 50)],
]
HWS = {("c1", PT, 0): 100, ("c2", PT, 0): 60, ("c1", PT, 1): 30, ("c1", PT, 2): 50,
       ("c2", PT, 1): 30, ("c1", PT, 3): 70}


def test_lag_and_unread_per_cluster_over_the_chain() -> None:
    fmap = fmap_of(CHAINS)
    committed = {"g1": {("t", 0): 40, ("t", 1): 30, ("t", 2): 60},
                 "g2": {("t", 0): 160}}
    report = compute_lag(fmap, committed, Offsets(HWS))
    assert report.ends == {("t", 0): 160, ("t", 1): 30, ("t", 2): 100}
    rows = {(p.group, p.partition): p for p in report.partitions}
    assert rows[("g1", 0)].lag == 120
    assert dict(rows[("g1", 0)].unread) == {"c1": 60, "c2": 60}
    assert rows[("g1", 1)].lag == 0
    assert dict(rows[("g1", 1)].unread) == {"c1": 0}
    # p2: c1's first segment is read; 20 unread on c2's sealed one, 20 on c1's active one.
    assert rows[("g1", 2)].lag == 40
    assert dict(rows[("g1", 2)].unread) == {"c1": 20, "c2": 20}
    assert rows[("g2", 0)].lag == 0
    assert report.unread_by_cluster() == {"g1": {"c1": 80, "c2": 80},
                                          "g2": {"c1": 0, "c2": 0}}
    assert report.total_lag("g1") == 160
    # Lag per partition always equals the unread records summed over clusters (no retention).
    for p in report.partitions:
        assert p.lag == sum(p.unread.values())


def test_retention_moves_the_first_unread_record() -> None:
    fmap = fmap_of(CHAINS)
    report = compute_lag(fmap, {"g": {("t", 0): 40}},
                         Offsets(HWS, log_starts={("c1", PT, 0): 70}))
    (p,) = report.partitions
    assert p.lag == 120  # as Kafka computes it: end - committed
    assert dict(p.unread) == {"c1": 30, "c2": 60}  # records 40..69 are gone
    assert logical_log_start(fmap.topics["t"].partitions[0], {("c1", PT, 0): 70}) == 70
    # A sealed segment retention emptied: earliest is the next segment's first kept record.
    assert logical_log_start(fmap.topics["t"].partitions[0],
                             {("c1", PT, 0): 100, ("c2", PT, 0): 5}) == 105
    assert logical_log_start(fmap.topics["t"].partitions[2], {}) == 0


def test_unread_on_a_draining_cluster_is_what_drain_progress_counts() -> None:
    # c1 holds only sealed segments: its unread records per group are a drain's remainder.
    chains = [[Segment("c1", PT, 0, 0, 0, 100), Segment("c2", PT, 0, 100, 0)],
              [Segment("c1", PT, 1, 0, 0, 30), Segment("c2", PT, 1, 30, 0)]]
    fmap = fmap_of(chains, {"c1": ClusterState.DRAINING})
    committed = {"a": {("t", 0): 10, ("t", 1): 0}, "b": {("t", 0): 100}, "c": {("t", 1): 31}}
    starts = {("c1", PT, 1): 5}
    hws = {("c2", PT, 0): 7, ("c2", PT, 1): 2}
    report = compute_lag(fmap, committed, Offsets(hws, starts))
    progress = drain_progress(fmap, "c1", committed, starts)
    unread = report.unread_by_cluster()
    assert {g: unread[g]["c1"] for g in unread if unread[g]["c1"]} == progress.groups
    assert progress.groups == {"a": 90 + 25}
    assert sum(u["c1"] for u in unread.values()) == progress.remaining_records


def test_unknown_high_watermark_leaves_the_end_unknown() -> None:
    fmap = fmap_of(CHAINS)
    hws = {k: v for k, v in HWS.items() if k[0] != "c2"}
    report = compute_lag(fmap, {"g": {("t", 0): 40}},
                         Offsets(hws, unreachable=frozenset({"c2"})))
    (p,) = report.partitions
    assert p.end is None and p.lag is None
    assert dict(p.unread) == {"c1": 60}  # the sealed segment's end is in the map
    assert logical_end(fmap.topics["t"].partitions[1], hws) == 30


def test_offsets_on_unknown_topics_and_partitions_are_ignored() -> None:
    fmap = fmap_of(CHAINS)
    report = compute_lag(fmap, {"g": {("gone", 0): 5, ("t", 9): 1, ("t", 1): 10}},
                         Offsets(HWS))
    assert [(p.topic, p.partition, p.lag) for p in report.partitions] == [("t", 1, 20)]


def test_group_filter_allow_deny_and_cap() -> None:
    f = GroupFilter(allow=("billing-.*", "audit"), deny=("billing-tmp.*",), max_groups=2)
    assert f.accepts("billing-a") and f.accepts("audit")
    assert not f.accepts("billing-tmp1") and not f.accepts("auditx") and not f.accepts("x")
    kept, capped = f.limit(["billing-c", "billing-a", "audit", "billing-tmp", "other"])
    assert kept == ["audit", "billing-a"] and capped == ["billing-c"]
    assert GroupFilter().limit(["b", "a"]) == (["a", "b"], [])
    with pytest.raises(ValueError, match="bad group pattern"):
        GroupFilter(allow=("(",))


def _scrape(snapshot: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    collector = _SnapshotCollector()
    collector.snapshot = snapshot
    registry.register(collector)
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exported_families() -> None:
    fmap = fmap_of(CHAINS, {"c2": ClusterState.DRAINING})
    report = compute_lag(fmap, {"g1": {("t", 0): 40, ("t", 2): 60}}, Offsets(HWS))
    got = _scrape(Snapshot(fmap, report, groups_capped=3))
    lag = {dict(k[1])["partition"]: v for k, v in got.items()
           if k[0] == "fedkafka_consumer_group_lag_records"}
    assert lag == {"0": 120, "2": 40}
    assert got[("fedkafka_consumer_group_committed_offset",
                (("group", "g1"), ("partition", "0"), ("topic", "t")))] == 40
    assert got[("fedkafka_consumer_group_unread_records",
                (("cluster", "c1"), ("group", "g1")))] == 80
    assert got[("fedkafka_consumer_group_unread_records",
                (("cluster", "c2"), ("group", "g1")))] == 80
    assert got[("fedkafka_partition_end_offset", (("partition", "2"), ("topic", "t")))] == 100
    assert got[("fedkafka_map_version", ())] == 7
    assert got[("fedkafka_map_cluster_state", (("cluster", "c2"), ("state", "draining")))] == 1
    assert got[("fedkafka_map_cluster_state", (("cluster", "c2"), ("state", "active")))] == 0
    assert got[("fedkafka_map_segments", (("cluster", "c1"), ("kind", "sealed")))] == 2
    assert got[("fedkafka_map_segments", (("cluster", "c1"), ("kind", "active")))] == 2
    assert got[("fedkafka_map_segments", (("cluster", "c2"), ("kind", "active")))] == 1
    assert got[("fedkafka_map_partitions", ())] == 3
    assert got[("fedkafka_lag_exporter_groups", (("status", "capped"),))] == 3
    assert got[("fedkafka_lag_exporter_groups", (("status", "exported"),))] == 1
    assert got[("fedkafka_lag_exporter_cluster_reachable", (("cluster", "c1"),))] == 1
    # Before the first collection nothing but the map-independent families is served.
    assert _scrape(Snapshot()) == {}


def test_exporter_config_is_validated() -> None:
    cfg = config_from_dict({"store": "file:/tmp/m.json", "listen": "0.0.0.0:9400",
                            "interval": 5, "group_allow": ["a.*"], "max_groups": 3})
    assert cfg.listen == ("0.0.0.0", 9400) and cfg.interval == 5.0
    assert cfg.groups.max_groups == 3 and cfg.groups.allow == ("a.*",)
    for bad, field in (({"listen": "nope"}, "listen"), ({"interval": 0}, "interval"),
                       ({"group_deny": "x"}, "group_deny"), ({"max_groups": -1}, "max_groups"),
                       ({"group_allow": ["("]}, "bad group pattern"), ({"colour": 1}, "colour")):
        with pytest.raises(ConfigError, match=field):
            config_from_dict({"store": "file:/tmp/m.json", **bad})
    with pytest.raises(ConfigError, match="store"):
        config_from_dict({})
    assert json.loads(json.dumps(cfg.groups.deny)) == []
