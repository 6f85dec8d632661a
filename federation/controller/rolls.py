"""Rolls: moving a logical partition's active segment onto another cluster (pure decisions).

A *roll* seals a partition's active segment and opens a new one on another physical
cluster. It is the one primitive behind failover, drain and key-stable expansion
(docs/adr/0011-rolls.md). The controller executes rolls in two publishes:

1. **fence** (map N+1): the partition's ``fence`` names the target cluster; proxies stop
   forwarding writes to it, wait for their in-flight writes, and report the highest
   offset each physical partition acknowledged ("ceilings");
2. **seal** (map N+2): the old segment is sealed at the seal point (the old partition's
   end offset when its cluster answers, else the highest acknowledged offset any proxy
   reported or the controller last saw) and a new active segment starts there, on a
   physical partition of the target that no producer ever wrote to.

Everything here is pure (map in, map or plan out); :mod:`federation.controller.service` does the
I/O. Drain progress and retirement are planned here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from federation.core.model import (
    ClusterState,
    FederationMap,
    LogicalPartition,
    Move,
    PhysicalCluster,
    Segment,
)

__all__ = [
    "DrainProgress",
    "PhysKey",
    "Seal",
    "active_load",
    "apply_fences",
    "apply_seals",
    "choose_target",
    "drain_progress",
    "fenced_partitions",
    "next_after_seal",
    "phys_key",
    "plan_evacuations",
    "plan_rebalance",
    "plan_retire",
    "segment_unread",
    "written_before_seal",
]

#: A physical partition: (cluster, physical topic, physical partition).
PhysKey = tuple[str, str, int]


def phys_key(seg: Segment) -> PhysKey:
    return (seg.cluster, seg.topic, seg.partition)


def phys_key_text(key: PhysKey) -> str:
    """``cluster/topic/partition``: how a key travels in JSON (proxy reports)."""
    return f"{key[0]}/{key[1]}/{key[2]}"


def parse_phys_key(text: str) -> PhysKey:
    cluster, topic, partition = text.rsplit("/", 2)
    return (cluster, topic, int(partition))


def active_load(fmap: FederationMap, topics: Iterable[str] | None = None) -> dict[str, int]:
    """Active segments per cluster (of ``topics``, default all), fenced ones at their target."""
    load: dict[str, int] = {}
    names = fmap.topics if topics is None else topics
    for name in names:
        for lp in fmap.topics[name].partitions:
            where = lp.fence or lp.active.cluster
            load[where] = load.get(where, 0) + 1
    return load


def choose_target(candidates: Sequence[PhysicalCluster], load: Mapping[str, int]
                  ) -> PhysicalCluster | None:
    """The candidate with the least load per unit of weight (ties: the first one)."""
    best: PhysicalCluster | None = None
    best_ratio = 0.0
    for c in candidates:
        if c.weight <= 0:
            continue
        ratio = (load.get(c.id, 0) + 1) / c.weight
        if best is None or ratio < best_ratio:
            best, best_ratio = c, ratio
    return best


def _targets(fmap: FederationMap, avoid: Iterable[str]) -> list[PhysicalCluster]:
    skip = set(avoid)
    return [c for c in fmap.writable_clusters() if c.id not in skip]


def plan_evacuations(fmap: FederationMap, unreachable_for: Mapping[str, float],
                     failover_after: float, avoid: Iterable[str] = ()) -> list[Move]:
    """Rolls that move active segments off clusters that must not take writes.

    - a ``down`` cluster unreachable for at least ``failover_after`` seconds: failover;
    - a ``read_only`` or ``draining`` cluster: drain (its segments move at once).

    Already fenced partitions are not planned again. Targets are writable clusters not
    in ``avoid`` (e.g. unreachable ones), chosen by weight.
    """
    targets = _targets(fmap, list(avoid) + list(unreachable_for))
    load = active_load(fmap)
    moves = []
    for topic in fmap.topics.values():
        for lp in topic.partitions:
            if lp.fence is not None:
                continue
            cluster = fmap.clusters.get(lp.active.cluster)
            if cluster is None or cluster.writable:
                continue
            if cluster.state is ClusterState.DOWN:
                if unreachable_for.get(cluster.id, 0.0) < failover_after:
                    continue
                reason = "failover"
            elif cluster.state in (ClusterState.READ_ONLY, ClusterState.DRAINING):
                reason = "drain"
            else:
                continue
            target = choose_target(targets, load)
            if target is None:
                continue  # nowhere to go: the partition stays unavailable for writes
            load[target.id] = load.get(target.id, 0) + 1
            load[cluster.id] = load.get(cluster.id, 0) - 1
            moves.append(Move(topic.name, lp.index, target.id, reason))
    return moves


def plan_rebalance(fmap: FederationMap, topics: Iterable[str] | None = None,
                   avoid: Iterable[str] = ()) -> list[Move]:
    """Rolls that spread each topic's active segments over the writable clusters by weight.

    Each topic is balanced on its own (largest remainder over the clusters' weights); the
    partitions that move are taken from the most over-loaded clusters, highest index first.
    Keys keep their logical partition: only where new writes land changes.
    """
    targets = _targets(fmap, avoid)
    total_weight = sum(c.weight for c in targets)
    if not targets or total_weight <= 0:
        return []
    moves: list[Move] = []
    for name in sorted(fmap.topics if topics is None else topics):
        topic = fmap.topics[name]
        n = topic.partition_count
        share = {c.id: n * c.weight // total_weight for c in targets}
        rest = sorted(targets, key=lambda c: -(n * c.weight % total_weight))
        for c in rest[: n - sum(share.values())]:
            share[c.id] += 1
        placed: dict[str, list[LogicalPartition]] = {}
        for lp in topic.partitions:
            placed.setdefault(lp.fence or lp.active.cluster, []).append(lp)
        # Partitions on clusters that are not targets (or above their share) must go.
        leaving: list[LogicalPartition] = []
        for cid, lps in placed.items():
            keep = share.get(cid, 0)
            movable = [lp for lp in lps if lp.fence is None]
            excess = len(lps) - keep
            if excess > 0:
                leaving.extend(sorted(movable, key=lambda lp: -lp.index)[:excess])
        deficit = {c.id: share[c.id] - len(placed.get(c.id, ())) for c in targets}
        for lp in sorted(leaving, key=lambda lp: lp.index):
            target = max((cid for cid in deficit if deficit[cid] > 0),
                         key=lambda cid: deficit[cid], default=None)
            if target is None:
                break
            deficit[target] -= 1
            moves.append(Move(name, lp.index, target, "rebalance"))
    return moves


def fenced_partitions(fmap: FederationMap) -> list[tuple[str, LogicalPartition]]:
    """(topic, partition) of every fenced partition."""
    return [(t.name, lp) for t in fmap.topics.values() for lp in t.partitions
            if lp.fence is not None]


def apply_fences(fmap: FederationMap, moves: Sequence[Move]
                 ) -> tuple[FederationMap, list[Move], list[tuple[Move, str]]]:
    """``fmap`` with a fence on each valid move's partition and the requests consumed.

    :returns: the new map, the moves fenced, and the moves refused with a reason.
    """
    fenced: list[Move] = []
    refused: list[tuple[Move, str]] = []
    topics = dict(fmap.topics)
    for m in moves:
        topic = topics.get(m.topic)
        why = None
        if topic is None or not 0 <= m.partition < topic.partition_count:
            why = "no such topic or partition"
        elif m.target is None or m.target not in fmap.clusters:
            why = f"unknown target cluster {m.target!r}"
        elif not fmap.clusters[m.target].writable:
            why = f"target cluster {m.target!r} is {fmap.clusters[m.target].state}"
        else:
            lp = topic.partitions[m.partition]
            if lp.fence is not None:
                why = f"already moving to {lp.fence}"
            elif lp.active.cluster == m.target:
                why = f"already on {m.target}"
        if why is not None:
            refused.append((m, why))
            continue
        assert topic is not None and m.target is not None
        parts = list(topic.partitions)
        parts[m.partition] = parts[m.partition].fenced(m.target)
        topics[m.topic] = dataclasses.replace(topic, partitions=tuple(parts))
        fenced.append(m)
    return dataclasses.replace(fmap, topics=topics, moves=()), fenced, refused


@dataclass(frozen=True, slots=True)
class Seal:
    """How one fenced partition is sealed and where its new segment starts."""

    topic: str
    partition: int
    old: Segment  #: the active segment being sealed (must still be the active one)
    seal_physical: int  #: physical end offset (exclusive) of the old segment
    target: str
    target_topic: str  #: physical topic on the target
    target_partition: int  #: a physical partition no segment ever used
    target_start: int  #: physical start offset of the new segment


def apply_seals(fmap: FederationMap, seals: Sequence[Seal]) -> tuple[FederationMap, list[Seal]]:
    """``fmap`` with each seal applied whose partition is still fenced as planned."""
    topics = dict(fmap.topics)
    done = []
    for s in seals:
        topic = topics.get(s.topic)
        if topic is None or s.partition >= topic.partition_count:
            continue
        lp = topic.partitions[s.partition]
        if lp.fence != s.target or lp.active != s.old:
            continue
        at = s.old.to_logical(max(s.seal_physical, s.old.physical_start))
        rolled = lp.rolled(at, s.target, s.target_topic, s.target_partition, s.target_start)
        parts = list(topic.partitions)
        parts[s.partition] = rolled.fenced(None)
        topics[s.topic] = dataclasses.replace(topic, partitions=tuple(parts))
        done.append(s)
    return dataclasses.replace(fmap, topics=topics), done


def written_before_seal(producer_id: int, producer_epoch: int, base_sequence: int,
                        count: int, sealed: Mapping[int, tuple[int, int]]) -> bool:
    """Whether an idempotent batch was already written to the segment a roll sealed.

    A producer's sequence numbers run on across a roll (the new physical partition
    accepts them: KIP-360). A batch whose first attempt landed in the old segment but
    whose acknowledgement was lost is retried into the new one; it is a duplicate exactly
    when the sealed partition's last sequence for that producer id and epoch already
    covers it. ``sealed``: producer id → (epoch, last sequence) of the sealed partition,
    read when nothing lies beyond its seal (so everything it covers is visible).
    """
    if producer_id < 0 or base_sequence < 0 or count < 1:
        return False
    state = sealed.get(producer_id)
    if state is None or state[0] != producer_epoch:
        return False
    return base_sequence + count - 1 <= state[1]


def next_after_seal(producer_id: int, producer_epoch: int, base_sequence: int,
                    sealed: Mapping[int, tuple[int, int]]) -> bool:
    """Whether an idempotent batch may be a producer's first write into a new segment: it
    is the sequence right after the producer's last one in the sealed segment (or the
    producer is unknown there, or has a new epoch, whose sequences start again)."""
    state = sealed.get(producer_id)
    if producer_id < 0 or state is None or state[0] != producer_epoch:
        return True
    return base_sequence == (state[1] + 1) % (1 << 31)


def used_partitions(fmap: FederationMap, cluster: str, physical_topic: str) -> int:
    """One more than the highest physical partition of ``physical_topic`` the map uses there."""
    top = 0
    for t in fmap.topics.values():
        for lp in t.partitions:
            for s in lp.segments:
                if s.cluster == cluster and s.topic == physical_topic:
                    top = max(top, s.partition + 1)
    return top


# -- drain and retire ------------------------------------------------------------------------


@dataclass(slots=True)
class DrainProgress:
    """What still keeps a cluster from being retired."""

    cluster: str
    state: str
    active: list[str] = field(default_factory=list)  #: "topic[p]" still written there
    remaining_records: int = 0  #: unread records in its sealed segments, over all groups
    groups: dict[str, int] = field(default_factory=dict)  #: group → unread records there

    @property
    def done(self) -> bool:
        return not self.active and self.remaining_records == 0

    def to_dict(self) -> dict[str, object]:
        return {"cluster": self.cluster, "state": self.state, "active": self.active,
                "remaining_records": self.remaining_records, "groups": self.groups,
                "done": self.done}


def segment_unread(seg: Segment, committed: int, end: int,
                   physical_log_start: int | None = None) -> int:
    """Records of ``seg`` a group whose committed logical offset is ``committed`` has not
    read yet: from the later of the committed offset and the segment's first record still
    kept (``physical_log_start``: retention) up to logical ``end`` (the seal, or for the
    active segment the partition's logical high watermark)."""
    first = seg.logical_start
    if physical_log_start is not None:
        first = max(first, seg.to_logical(physical_log_start))
    return max(0, end - max(first, committed))


def drain_progress(fmap: FederationMap, cluster_id: str,
                   committed: Mapping[str, Mapping[tuple[str, int], int]],
                   log_start: Mapping[PhysKey, int] | None = None) -> DrainProgress:
    """How far a drain of ``cluster_id`` is.

    :param committed: group → {(logical topic, partition) → committed logical offset}.
    :param log_start: physical log start offsets (retention); a sealed segment whose data
        retention already removed counts as read.
    """
    cluster = fmap.clusters[cluster_id]
    progress = DrainProgress(cluster_id, cluster.state.value)
    starts = log_start or {}
    for topic in fmap.topics.values():
        for lp in topic.partitions:
            for seg in lp.segments:
                if seg.cluster != cluster_id:
                    continue
                if seg.is_active:
                    progress.active.append(f"{topic.name}[{lp.index}]")
                    continue
                assert seg.sealed_end is not None
                phys_start = starts.get(phys_key(seg))
                for group, offsets in committed.items():
                    off = offsets.get((topic.name, lp.index))
                    if off is None:
                        continue
                    unread = segment_unread(seg, off, seg.sealed_end, phys_start)
                    if unread > 0:
                        progress.remaining_records += unread
                        progress.groups[group] = progress.groups.get(group, 0) + unread
    progress.active.sort()
    return progress


def plan_retire(fmap: FederationMap, cluster_id: str) -> FederationMap:
    """``fmap`` with ``cluster_id`` retired: its (sealed) segments, and any before them in
    their chains, dropped; its state ``retired``.

    The caller checks :func:`drain_progress` first; this refuses only what would break
    the map (an active segment there, or the coordination cluster).
    """
    cluster = fmap.clusters.get(cluster_id)
    if cluster is None:
        raise ValueError(f"cluster {cluster_id!r} does not exist")
    if fmap.coordination_cluster == cluster_id:
        raise ValueError(f"cluster {cluster_id!r} coordinates consumer groups (and holds the "
                         "shadow topics); it cannot be retired")
    topics = dict(fmap.topics)
    for topic in fmap.topics.values():
        parts = list(topic.partitions)
        changed = False
        for i, lp in enumerate(topic.partitions):
            if lp.active.cluster == cluster_id or lp.fence == cluster_id:
                raise ValueError(f"{topic.name}[{lp.index}] is still written on cluster "
                                 f"{cluster_id!r}; drain it first")
            last = max((j for j, s in enumerate(lp.segments) if s.cluster == cluster_id),
                       default=-1)
            if last >= 0:
                parts[i] = lp.without_segments_through(last)
                changed = True
        if changed:
            topics[topic.name] = dataclasses.replace(topic, partitions=tuple(parts))
    retired = dataclasses.replace(fmap, topics=topics)
    return retired.with_cluster(cluster.with_state(ClusterState.RETIRED))
