"""Consumer lag over segment chains: per group and logical partition, and per physical cluster.

A group commits *logical* offsets on the coordination cluster
(:func:`federation.controller.elastic.committed_offsets`). A logical partition's end offset is its
active segment's high watermark translated to logical terms, so

* **lag** of a group on a logical partition = logical end offset - committed offset
  (what Kafka's ``kafka-consumer-groups.sh`` shows as LAG through the proxy), and
* **unread records per physical cluster** = for every segment of the chain on that
  cluster, the records between the committed offset (or the segment's first record still
  kept) and the segment's end (its seal, or the logical end for the active segment):
  :func:`federation.controller.rolls.segment_unread`, the number a drain of that cluster waits for
  (:func:`federation.controller.rolls.drain_progress`) plus what the active segments hold.

:func:`compute_lag` is pure; :class:`OffsetReader` and :func:`collect` read the offsets
over the wire (one ListOffsets round per cluster and kind, :mod:`federation.clusters.offsets`).
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from federation.clusters.offsets import EARLIEST, LATEST, list_offsets
from federation.clusters.upstream import ClusterClient, UpstreamError
from federation.controller.rolls import PhysKey, phys_key, segment_unread
from federation.core.model import ClusterState, FederationMap, LogicalPartition, PhysicalCluster

__all__ = ["GroupFilter", "LagReport", "OffsetReader", "Offsets", "PartitionLag", "collect",
           "compute_lag", "logical_end", "logical_log_start", "top_lags"]

#: group → {(logical topic, partition) → committed logical offset}
Committed = Mapping[str, Mapping[tuple[str, int], int]]


# -- which groups ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupFilter:
    """Which consumer groups to report on: bounded label cardinality for the exporter.

    A group is kept when it fully matches one ``allow`` pattern (any group when ``allow``
    is empty) and no ``deny`` pattern; of those, the first ``max_groups`` by name.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    max_groups: int = 500

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", tuple(self.allow))
        object.__setattr__(self, "deny", tuple(self.deny))
        for pattern in (*self.allow, *self.deny):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"bad group pattern {pattern!r}: {e}") from None
        if self.max_groups < 0:
            raise ValueError(f"max_groups must be >= 0, got {self.max_groups}")

    def accepts(self, group: str) -> bool:
        if self.allow and not any(re.fullmatch(p, group) for p in self.allow):
            return False
        return not any(re.fullmatch(p, group) for p in self.deny)

    def limit(self, groups: Iterable[str]) -> tuple[list[str], list[str]]:
        """(kept, over the cap): accepted groups, sorted, split at ``max_groups``."""
        accepted = sorted(g for g in set(groups) if self.accepts(g))
        return accepted[:self.max_groups], accepted[self.max_groups:]


# -- pure computation --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Offsets:
    """Physical offsets read from the clusters.

    ``high_watermarks`` holds at least the active segments' partitions, ``log_starts`` any
    segment's (retention); clusters in ``unreachable`` did not answer.
    """

    high_watermarks: Mapping[PhysKey, int] = field(default_factory=dict)
    log_starts: Mapping[PhysKey, int] = field(default_factory=dict)
    unreachable: frozenset[str] = frozenset()


def logical_end(lp: LogicalPartition, high_watermarks: Mapping[PhysKey, int]) -> int | None:
    """The partition's logical end offset (its active segment's high watermark, translated);
    None when that high watermark is unknown."""
    hw = high_watermarks.get(phys_key(lp.active))
    return None if hw is None else lp.active.to_logical(hw)


def logical_log_start(lp: LogicalPartition, log_starts: Mapping[PhysKey, int]) -> int:
    """The first logical offset of ``lp`` whose record is still kept (what "earliest" means):
    the chain's start, moved past segments and records that retention removed."""
    offset = lp.logical_start
    for seg in lp.segments:
        offset = max(offset, seg.logical_start)
        start = log_starts.get(phys_key(seg))
        if start is not None:
            offset = max(offset, seg.to_logical(start))
        if seg.sealed_end is None or offset < seg.sealed_end:
            break
    return offset


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One group on one logical partition."""

    group: str
    topic: str
    partition: int
    committed: int
    end: int | None  #: logical end offset; None when its active cluster did not answer
    #: physical cluster → records of this partition there the group has not read yet
    unread: Mapping[str, int] = field(default_factory=dict)

    @property
    def lag(self) -> int | None:
        return None if self.end is None else self.end - self.committed

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "topic": self.topic, "partition": self.partition,
                "committed": self.committed, "end": self.end, "lag": self.lag,
                "unread": dict(sorted(self.unread.items()))}


@dataclass(slots=True)
class LagReport:
    """Lag of every reported group, per logical partition and per physical cluster."""

    map_version: int
    partitions: list[PartitionLag] = field(default_factory=list)
    #: (logical topic, partition) → logical end offset, for every partition whose end is known
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    unreachable: frozenset[str] = frozenset()

    def groups(self) -> list[str]:
        return sorted({p.group for p in self.partitions})

    def for_group(self, group: str) -> list[PartitionLag]:
        return [p for p in self.partitions if p.group == group]

    def unread_by_cluster(self) -> dict[str, dict[str, int]]:
        """group → physical cluster → unread records (every cluster holding a segment of a
        partition the group committed on, 0 included)."""
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for p in self.partitions:
            mine = out[p.group]
            for cluster, n in p.unread.items():
                mine[cluster] = mine.get(cluster, 0) + n
        return {g: dict(sorted(c.items())) for g, c in sorted(out.items())}

    def total_lag(self, group: str) -> int:
        return sum(p.lag or 0 for p in self.partitions if p.group == group)

    def to_dict(self) -> dict[str, Any]:
        return {"map_version": self.map_version,
                "partitions": [p.to_dict() for p in self.partitions],
                "unread_by_cluster": self.unread_by_cluster(),
                "unreachable": sorted(self.unreachable)}


def compute_lag(fmap: FederationMap, committed: Committed, offsets: Offsets) -> LagReport:
    """Lag of every group in ``committed`` on every logical partition it committed on.

    Pure. Offsets a group committed on topics the map does not hold (any more) are
    ignored; a partition whose active cluster did not answer has an unknown end (its
    sealed segments' unread records are still counted, their ends are in the map).
    """
    report = LagReport(fmap.version, unreachable=offsets.unreachable)
    for topic in fmap.topics.values():
        for lp in topic.partitions:
            end = logical_end(lp, offsets.high_watermarks)
            if end is not None:
                report.ends[(topic.name, lp.index)] = end
    for group in sorted(committed):
        for (name, index), off in sorted(committed[group].items()):
            found = fmap.topics.get(name)
            if found is None or not 0 <= index < found.partition_count:
                continue
            lp = found.partitions[index]
            end = report.ends.get((name, index))
            unread: dict[str, int] = {}
            for seg in lp.segments:
                seg_end = seg.sealed_end if seg.sealed_end is not None else end
                if seg_end is None:
                    continue
                n = segment_unread(seg, off, seg_end, offsets.log_starts.get(phys_key(seg)))
                unread[seg.cluster] = unread.get(seg.cluster, 0) + n
            report.partitions.append(PartitionLag(group, name, index, off, end, unread))
    return report


# -- reading offsets over the wire -------------------------------------------------------------


class OffsetReader:
    """Reads high watermarks and log start offsets from every cluster of a map.

    Keeps one :class:`ClusterClient` per cluster between reads (the exporter reads every
    few seconds); :meth:`close` them at the end.
    """

    def __init__(self, timeout: float = 5.0, client_id: str = "fedkafka-lag") -> None:
        self.timeout = timeout
        self.client_id = client_id
        self._clients: dict[str, ClusterClient] = {}

    def _client(self, cluster: PhysicalCluster) -> ClusterClient:
        client = self._clients.get(cluster.id)
        if client is not None and client.cluster != cluster:
            client.close()
            client = None
        if client is None:
            client = self._clients[cluster.id] = ClusterClient(
                cluster, client_id=self.client_id, request_timeout=self.timeout)
        return client

    async def read(self, fmap: FederationMap, clusters: Collection[str] | None = None
                   ) -> Offsets:
        """High watermarks of the active segments and log starts of all segments (of
        ``clusters``, default all), read from each cluster concurrently."""
        latest: dict[str, set[tuple[str, int]]] = defaultdict(set)
        earliest: dict[str, set[tuple[str, int]]] = defaultdict(set)
        for topic in fmap.topics.values():
            for lp in topic.partitions:
                for seg in lp.segments:
                    if clusters is not None and seg.cluster not in clusters:
                        continue
                    earliest[seg.cluster].add((seg.topic, seg.partition))
                    if seg.is_active:
                        latest[seg.cluster].add((seg.topic, seg.partition))
        wanted = sorted(set(latest) | set(earliest))
        for gone in set(self._clients) - set(fmap.clusters):
            self._clients.pop(gone).close()
        results = await asyncio.gather(*(self._read_cluster(fmap, c, latest[c], earliest[c])
                                         for c in wanted))
        hws: dict[PhysKey, int] = {}
        starts: dict[PhysKey, int] = {}
        unreachable = set()
        for cluster, got in zip(wanted, results, strict=True):
            if got is None:
                unreachable.add(cluster)
                continue
            for (t, p), off in got[0].items():
                hws[(cluster, t, p)] = off
            for (t, p), off in got[1].items():
                starts[(cluster, t, p)] = off
        return Offsets(hws, starts, frozenset(unreachable))

    async def _read_cluster(self, fmap: FederationMap, cluster_id: str,
                            latest: set[tuple[str, int]], earliest: set[tuple[str, int]]
                            ) -> tuple[dict[tuple[str, int], int],
                                       dict[tuple[str, int], int]] | None:
        cluster = fmap.clusters.get(cluster_id)
        if cluster is None or cluster.state in (ClusterState.RETIRED, ClusterState.DOWN):
            return None
        client = self._client(cluster)
        try:
            async with asyncio.timeout(self.timeout * 2):
                hws = await list_offsets(client, latest, LATEST, self.timeout) if latest else {}
                starts = (await list_offsets(client, earliest, EARLIEST, self.timeout)
                          if earliest else {})
        except (UpstreamError, OSError, TimeoutError):
            client.invalidate()
            return None
        return hws, starts

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


async def collect(fmap: FederationMap, *, groups: GroupFilter | Sequence[str] | None = None,
                  reader: OffsetReader | None = None, timeout: float = 10.0
                  ) -> tuple[LagReport, list[str]]:
    """Read committed offsets and physical offsets, and compute the lag.

    :param groups: a :class:`GroupFilter`, or the group ids to report (default: all).
    :returns: the report and the groups left out because of the filter's cap.
    :raises federation.clusters.admin.ClusterUnreachableError: when the coordination cluster does
        not answer (committed offsets live there).
    """
    from federation.controller.elastic import committed_offsets

    include: Callable[[str], bool] | None = None
    if isinstance(groups, GroupFilter):
        include = groups.accepts
    elif groups is not None:
        include = set(groups).__contains__
    own = reader is None
    reader = reader or OffsetReader(timeout=timeout / 2)
    try:
        # Committed offsets first, then the high watermarks: a group's commit never passes
        # the high watermark it read, so the lag computed is never negative.
        committed = await committed_offsets(fmap, timeout=timeout, include=include)
        offsets = await reader.read(fmap)
    finally:
        if own:
            reader.close()
    capped: list[str] = []
    if isinstance(groups, GroupFilter):
        kept, capped = groups.limit(committed)
        committed = {g: committed[g] for g in kept}
    return compute_lag(fmap, committed, offsets), capped


async def top_lags(fmap: FederationMap, n: int = 5, timeout: float = 5.0
                   ) -> list[dict[str, Any]]:
    """The ``n`` biggest lags (group, logical partition) of the federation, biggest first."""
    report, _ = await collect(fmap, timeout=timeout)
    rows = [p for p in report.partitions if p.lag]
    rows.sort(key=lambda p: (-(p.lag or 0), p.group, p.topic, p.partition))
    return [p.to_dict() for p in rows[:n]]
