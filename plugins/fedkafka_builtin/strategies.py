"""Built-in mapping strategies: ``contiguous``, ``round_robin``, ``weighted`` and ``stable``."""

from __future__ import annotations

from collections.abc import Sequence

from federation.core.model import LogicalPartition, LogicalTopic, PhysicalCluster
from federation.core.strategy import DistributingStrategy, MappingStrategy
from federation.plugin import hookimpl


def _contiguous(counts: Sequence[int], clusters: Sequence[PhysicalCluster]) -> list[str]:
    return [c.id for c, n in zip(clusters, counts, strict=True) for _ in range(n)]


class Contiguous(DistributingStrategy):
    """The seed's figure: equal contiguous runs, remainders to the first clusters.

    8 partitions over A, B: logical 0-3 → A p0-3, logical 4-7 → B p0-3.
    """

    name = "contiguous"

    def assign(self, count: int, clusters: Sequence[PhysicalCluster]) -> list[str]:
        share, extra = divmod(count, len(clusters))
        return _contiguous([share + (i < extra) for i in range(len(clusters))], clusters)


class RoundRobin(DistributingStrategy):
    """Logical partition i → cluster i mod n, physical partition i div n."""

    name = "round_robin"

    def assign(self, count: int, clusters: Sequence[PhysicalCluster]) -> list[str]:
        return [clusters[i % len(clusters)].id for i in range(count)]


class Weighted(DistributingStrategy):
    """Partition counts proportional to cluster weight (largest remainder), laid out contiguously.

    Ties in the remainder go to the earlier cluster; a cluster of weight 0 gets nothing.
    """

    name = "weighted"

    def assign(self, count: int, clusters: Sequence[PhysicalCluster]) -> list[str]:
        total = sum(c.weight for c in clusters)
        if total <= 0:
            raise ValueError("weighted: every cluster has weight 0")
        counts = [count * c.weight // total for c in clusters]
        remainders = [count * c.weight % total for c in clusters]
        by_remainder = sorted(range(len(clusters)), key=lambda i: -remainders[i])
        for i in by_remainder[: count - sum(counts)]:
            counts[i] += 1
        return _contiguous(counts, clusters)


class Stable(Weighted):
    """A fixed partition count: capacity is added by rolls, never by new partitions.

    Laid out like ``weighted``. Growing the partition count would move keys to other
    partitions, so it is refused: add a cluster and run ``fedkafka rebalance``, which rolls
    a weighted share of active segments onto it (each key keeps its partition).
    """

    name = "stable"

    def grow(self, topic: LogicalTopic, new_count: int, clusters: Sequence[PhysicalCluster],
             physical_topic: str) -> tuple[LogicalPartition, ...]:
        raise ValueError(f"topic {topic.name!r} uses the stable strategy: its partition count "
                         "is fixed so that keys keep their partition; add capacity with "
                         "`fedkafka rebalance` after adding a cluster")


@hookimpl
def fedkafka_mapping_strategies() -> list[MappingStrategy]:
    return [Contiguous(), RoundRobin(), Weighted(), Stable()]
