"""Test set-up of logical topics directly in the store (physical + shadow topics, map).

Used until/unless a test exercises the admin path itself; kept deliberately small.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kafka.errors import TopicAlreadyExistsError

from federation.core.model import FederationMap, LogicalTopic, Segment, new_topic_id
from federation.plugin import get_plugins, parse_store
from federation.store.mapstore import update

from .kafka_admin import create_topic


def backend_of(state: dict[str, Any]) -> Any:
    name, opts = parse_store(state["store"])
    return get_plugins().backend(name, **opts)


def stored_map(state: dict[str, Any]) -> FederationMap:
    """The map in the federation's store now."""
    backend = backend_of(state)
    try:
        fmap = backend.load()
        assert fmap is not None
        return fmap
    finally:
        backend.close()


def create_logical_topic(state: dict[str, Any], name: str, partitions: int,
                         strategy: str = "contiguous",
                         layout: Sequence[Sequence[Segment]] | None = None) -> LogicalTopic:
    """Create a logical topic: physical topics per the strategy (or an explicit layout)."""
    backend = backend_of(state)
    try:
        fmap = backend.load()
        assert fmap is not None
        phys = fmap.physical_topic_name(name)
        if layout is None:
            clusters = [c for c in fmap.clusters.values() if c.state.writable]
            parts = get_plugins().strategy(strategy).layout(name, partitions, clusters, phys)
        else:
            from federation.core.model import LogicalPartition

            parts = tuple(LogicalPartition(index=i, segments=tuple(segs))
                          for i, segs in enumerate(layout))
        topic = LogicalTopic(name=name, topic_id=new_topic_id(name), partitions=parts,
                             strategy=strategy)
        needed: dict[tuple[str, str], int] = {}
        for lp in parts:
            for seg in lp.segments:
                key = (seg.cluster, seg.topic)
                needed[key] = max(needed.get(key, 0), seg.partition + 1)
        for (cluster, ptopic), count in needed.items():
            try:
                create_topic(fmap.clusters[cluster].bootstrap, ptopic, count)
            except TopicAlreadyExistsError:
                pass  # pre-created by the test (segments over existing data)
        if fmap.coordination_cluster:
            try:
                create_topic(fmap.clusters[fmap.coordination_cluster].bootstrap, name,
                             len(parts))
            except TopicAlreadyExistsError:
                pass

        def change(current: FederationMap | None) -> FederationMap:
            assert current is not None
            return current.with_topic(topic)

        update(backend, change)
        return topic
    finally:
        backend.close()


def route_to_proxy(state: dict[str, Any], pool: str, node_id: int, port: int,
                   client_pattern: str) -> None:
    """Publish a pool holding one proxy at 127.0.0.1:``port`` and route matching client ids
    to it (for tests that run their own in-process proxy)."""
    import dataclasses

    from federation.core.model import ProxyEndpoint, RoutingRule

    backend = backend_of(state)
    try:
        def change(fmap: FederationMap | None) -> FederationMap:
            assert fmap is not None
            return dataclasses.replace(
                fmap, pools={**fmap.pools, pool: (ProxyEndpoint(
                    node_id=node_id, host="127.0.0.1", port=port),)},
                routing=(*fmap.routing, RoutingRule(pattern=client_pattern, pool=pool)))
        update(backend, change)
    finally:
        backend.close()
