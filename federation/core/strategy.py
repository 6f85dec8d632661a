"""Mapping strategies: how a logical topic's partitions are laid out over physical clusters.

A strategy is provided by a plugin (hook ``fedkafka_mapping_strategies``) and chosen by
name. It only decides placement; the controller creates the physical topics
(:meth:`federation.core.model.FederationMap.physical_topics_on` says how many partitions each
cluster needs) and publishes the map.

Most strategies only need to say which cluster each new logical partition goes to:
subclass :class:`DistributingStrategy` and implement :meth:`~DistributingStrategy.assign`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from federation.core.model import LogicalPartition, LogicalTopic, PhysicalCluster, Segment


@runtime_checkable
class MappingStrategy(Protocol):
    """What a mapping strategy provides."""

    @property
    def name(self) -> str:
        """The name topics refer to (``LogicalTopic.strategy``); unique across plugins."""
        ...

    def layout(self, topic: str, partitions: int, clusters: Sequence[PhysicalCluster],
               physical_topic: str) -> tuple[LogicalPartition, ...]:
        """Lay out a new logical topic.

        :param topic: the logical topic name.
        :param partitions: the logical partition count (>= 1).
        :param clusters: the writable clusters to place partitions on, in order.
        :param physical_topic: the physical data topic name (same on every cluster).
        :returns: ``partitions`` logical partitions, each with one active segment starting
            at logical 0 and physical 0.
        """
        ...

    def grow(self, topic: LogicalTopic, new_count: int, clusters: Sequence[PhysicalCluster],
             physical_topic: str) -> tuple[LogicalPartition, ...]:
        """Add partitions to an existing topic ("add_partitions").

        Existing logical partitions are returned unchanged; the new ones are placed on
        ``clusters`` (e.g. only a newly added cluster, as the seed's expansion does) on
        physical partitions after those the topic already uses there.

        :param topic: the topic as currently published.
        :param new_count: the new total logical partition count (> current count).
        :param clusters: the writable clusters to place the new partitions on, in order.
        :param physical_topic: the physical data topic name for the new partitions.
        :returns: all ``new_count`` logical partitions.
        """
        ...


class DistributingStrategy(abc.ABC):
    """Base for strategies that place every new partition on one cluster, in order.

    Physical partition numbers on each cluster are handed out in ascending order, so a
    cluster's partitions for one physical topic are always ``0..k-1`` with no gap.
    """

    name: str

    @abc.abstractmethod
    def assign(self, count: int, clusters: Sequence[PhysicalCluster]) -> list[str]:
        """The cluster id for each of ``count`` new logical partitions, in logical order."""

    def layout(self, topic: str, partitions: int, clusters: Sequence[PhysicalCluster],
               physical_topic: str) -> tuple[LogicalPartition, ...]:
        if partitions < 1:
            raise ValueError(f"topic {topic!r}: partition count must be >= 1, got {partitions}")
        return self._place(0, partitions, clusters, physical_topic, {})

    def grow(self, topic: LogicalTopic, new_count: int, clusters: Sequence[PhysicalCluster],
             physical_topic: str) -> tuple[LogicalPartition, ...]:
        current = topic.partition_count
        if new_count <= current:
            raise ValueError(
                f"topic {topic.name!r}: new partition count {new_count} must exceed {current}"
            )
        used: dict[str, int] = {}
        for partition in topic.partitions:
            for segment in partition.segments:
                if segment.topic == physical_topic:
                    used[segment.cluster] = max(used.get(segment.cluster, 0),
                                                segment.partition + 1)
        added = self._place(current, new_count - current, clusters, physical_topic, used)
        return (*topic.partitions, *added)

    def _place(self, first_index: int, count: int, clusters: Sequence[PhysicalCluster],
               physical_topic: str, next_physical: dict[str, int]) -> tuple[LogicalPartition, ...]:
        if not clusters:
            raise ValueError("no writable cluster to place partitions on")
        for cluster in clusters:
            if not cluster.writable:
                raise ValueError(f"cluster {cluster.id!r} is {cluster.state}, not writable")
        known = {c.id for c in clusters}
        result = []
        for offset, cluster_id in enumerate(self.assign(count, clusters)):
            if cluster_id not in known:
                raise ValueError(f"strategy {self.name!r} chose unknown cluster {cluster_id!r}")
            physical = next_physical.get(cluster_id, 0)
            next_physical[cluster_id] = physical + 1
            segment = Segment(cluster_id, physical_topic, physical,
                              logical_start=0, physical_start=0)
            result.append(LogicalPartition(first_index + offset, (segment,)))
        if len(result) != count:
            raise ValueError(f"strategy {self.name!r} placed {len(result)} of {count} partitions")
        return tuple(result)
