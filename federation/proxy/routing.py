"""Sans-IO routing: logical (topic, partition, offset) ↔ physical, and response rewriting.

Pure functions over the current :class:`FederationMap`; no sockets, no awaits. The
async handlers use them to split a client's request into per-broker sub-requests and to
merge and translate the answers.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from dataclasses import dataclass
from typing import Any

from kio.index import load_payload_module
from kio.static.constants import EntityType

from federation.core.model import (
    FederationMap,
    LogicalPartition,
    LogicalTopic,
    ProxyEndpoint,
    Segment,
)
from federation.protocol import records
from federation.protocol.errors import ErrorCode


@dataclass(frozen=True, slots=True)
class Target:
    """Where one logical partition's request goes."""

    topic: LogicalTopic
    partition: int
    segment: Segment


class RouteError(Exception):
    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code


def logical_topic(fmap: FederationMap, name: str | None) -> LogicalTopic:
    topic = fmap.topics.get(name or "")
    if topic is None:
        raise RouteError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"unknown topic {name!r}")
    return topic


def produce_target(fmap: FederationMap, name: str, partition: int) -> Target:
    """The active segment that takes writes for a logical partition."""
    topic = logical_topic(fmap, name)
    if not 0 <= partition < len(topic.partitions):
        raise RouteError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                         f"{name} has no partition {partition}")
    lp = topic.partitions[partition]
    seg = lp.active
    if not writable(fmap, lp):
        # Retriable: the client refreshes metadata and retries; the controller rolls the
        # active segment onto a writable cluster (or is rolling it: a fence).
        raise RouteError(ErrorCode.NOT_LEADER_OR_FOLLOWER,
                         f"{name}-{partition}: cluster {seg.cluster} does not take writes"
                         + (f" (moving to {lp.fence})" if lp.fence else ""))
    return Target(topic, partition, seg)


def writable(fmap: FederationMap, lp: LogicalPartition) -> bool:
    """Whether a logical partition takes writes now (not fenced, active cluster writable)."""
    if lp.fence is not None:
        return False
    cluster = fmap.clusters.get(lp.active.cluster)
    return cluster is not None and cluster.state.writable


def current_segment(fmap: FederationMap, name: str, partition: int, seg: Segment
                    ) -> Segment | None:
    """``seg`` as the current map has it (sealed since, perhaps); None if it is gone."""
    topic = fmap.topics.get(name)
    if topic is None or partition >= len(topic.partitions):
        return None
    for s in reversed(topic.partitions[partition].segments):
        if (s.cluster, s.topic, s.partition, s.physical_start) == (
                seg.cluster, seg.topic, seg.partition, seg.physical_start):
            return s
    return None


def fetch_target(fmap: FederationMap, name: str, partition: int, offset: int) -> Target:
    """The segment holding logical ``offset`` (the active one for offsets at/after its start)."""
    topic = logical_topic(fmap, name)
    if not 0 <= partition < len(topic.partitions):
        raise RouteError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                         f"{name} has no partition {partition}")
    lp = topic.partitions[partition]
    seg = lp.segment_for(offset)
    if seg is None:
        raise RouteError(ErrorCode.OFFSET_OUT_OF_RANGE,
                         f"{name}-{partition}: offset {offset} is before the log start")
    return Target(topic, partition, seg)


def translate_records(data: records.Buffer | None, seg: Segment) -> records.Buffer | None:
    """Rewrite fetched batches' base offsets from physical to logical; drop past a seal."""
    if not data:
        return data
    delta = seg.logical_start - seg.physical_start
    out: records.Buffer = data
    if seg.sealed_end is not None:
        keep_end = 0
        for start, end in records.iter_batches(data):
            base = records.batch_info(data, start).base_offset
            if base + delta >= seg.sealed_end:
                break
            keep_end = end
        out = data[:keep_end]
    if delta:
        out = records.shift_base_offsets(out, delta)
    return out


def logical_offset(seg: Segment, physical: int) -> int:
    """Physical → logical for offsets a broker reports (-1 stays -1; seals cap it)."""
    if physical < 0:
        return physical
    value = seg.to_logical(physical)
    if seg.sealed_end is not None:
        value = min(value, seg.sealed_end)
    return value


def leader_for(pool: tuple[ProxyEndpoint, ...], topic: str, partition: int) -> ProxyEndpoint:
    """The proxy presented as leader of a logical partition: spread over the pool."""
    if not pool:
        raise RouteError(ErrorCode.LEADER_NOT_AVAILABLE, "no proxy in this pool")
    h = zlib.crc32(topic.encode())
    return pool[(h + partition) % len(pool)]


def coordinator_for(pool: tuple[ProxyEndpoint, ...], key: str) -> ProxyEndpoint:
    if not pool:
        raise RouteError(ErrorCode.COORDINATOR_NOT_AVAILABLE, "no proxy in this pool")
    return pool[zlib.crc32(key.encode()) % len(pool)]


@functools.cache
def resp_module(api_key: int, version: int) -> Any:
    """kio's generated response module for (api_key, version), looked up once."""
    return load_payload_module(api_key, version, EntityType.response)


_FIELD_NAMES: dict[type[Any], frozenset[str]] = {}


def field_names(cls: type[Any]) -> frozenset[str]:
    """The fields of a kio entity class at its version (computed once per class: this is
    on every request's path)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    return names


def build(cls: type[Any], **fields: Any) -> Any:
    """Instantiate a kio entity class with the fields it has at its version (others dropped)."""
    names = field_names(cls)
    return cls(**{k: v for k, v in fields.items() if k in names})


def replace(entity: Any, **fields: Any) -> Any:
    """``dataclasses.replace`` restricted to the fields the entity has at its version."""
    names = field_names(type(entity))
    return dataclasses.replace(entity, **{k: v for k, v in fields.items() if k in names})


def has_field(entity_or_class: Any, name: str) -> bool:
    """Whether a kio entity (or entity class) has field ``name`` at its version."""
    cls = entity_or_class if isinstance(entity_or_class, type) else type(entity_or_class)
    return name in field_names(cls)
