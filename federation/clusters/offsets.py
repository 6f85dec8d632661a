"""Physical offsets and committed group offsets, read over the Kafka protocol.

Used by the controller (seal points, new segments' start offsets, what a failover must
not hide) and by drain progress. One ListOffsets request per partition leader.
"""

from __future__ import annotations

import asyncio
import sys
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from kio.index import load_request_schema

from federation.clusters.upstream import ClusterClient, UpstreamError
from federation.protocol.errors import ErrorCode

__all__ = ["EARLIEST", "LATEST", "list_offsets", "producer_states"]

LATEST = -1
EARLIEST = -2
LIST_OFFSETS_VERSION = 7


async def list_offsets(client: ClusterClient, parts: Iterable[tuple[str, int]],
                       timestamp: int = LATEST, timeout: float = 5.0
                       ) -> dict[tuple[str, int], int]:
    """(topic, partition) → offset at ``timestamp`` (LATEST: the high watermark).

    :raises UpstreamError: when a leader cannot be found or does not answer, or a
        partition answers an error (after one metadata refresh for leader errors).
    """
    wanted = sorted(set(parts))
    out: dict[tuple[str, int], int] = {}
    for attempt in range(2):
        by_leader: dict[int, list[tuple[str, int]]] = defaultdict(list)
        for tp in wanted:
            if tp in out:
                continue
            info = await client.leader(*tp)
            by_leader[info.leader].append(tp)
        if not by_leader:
            break
        results = await asyncio.gather(*(_ask(client, node, tps, timestamp, timeout)
                                         for node, tps in by_leader.items()))
        retry = False
        for answers in results:
            for tp, (code, offset) in answers.items():
                if code == 0:
                    out[tp] = offset
                elif code in (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.LEADER_NOT_AVAILABLE,
                              ErrorCode.UNKNOWN_TOPIC_OR_PARTITION) and attempt == 0:
                    retry = True
                else:
                    raise UpstreamError(f"{client.id}: ListOffsets {tp[0]}-{tp[1]}: error "
                                        f"{code}", code)
        if not retry:
            break
        client.invalidate()
        await client.refresh()
    missing = [tp for tp in wanted if tp not in out]
    if missing:
        raise UpstreamError(f"{client.id}: no offsets for {missing[:3]}",
                            ErrorCode.LEADER_NOT_AVAILABLE)
    return out


async def _ask(client: ClusterClient, node: int, tps: list[tuple[str, int]], timestamp: int,
               timeout: float) -> dict[tuple[str, int], tuple[int, int]]:
    conn = await client.connection(node, "admin")
    theirs = client.api_versions.get(2, (1, LIST_OFFSETS_VERSION))
    version = max(1, min(LIST_OFFSETS_VERSION, theirs[1]))
    schema: Any = load_request_schema(2, version)
    module = sys.modules[schema.__module__]
    topics: dict[str, list[Any]] = defaultdict(list)
    for topic, partition in tps:
        topics[topic].append(module.ListOffsetsPartition(partition_index=partition,
                                                         timestamp=timestamp))
    fields = {"replica_id": -1, "isolation_level": 0,
              "topics": tuple(module.ListOffsetsTopic(name=t, partitions=tuple(ps))
                              for t, ps in topics.items())}
    names = {f for f in schema.__dataclass_fields__}
    req = schema(**{k: v for k, v in fields.items() if k in names})
    resp = await conn.request(req, timeout)
    out = {}
    for t in resp.topics:
        for p in t.partitions:
            out[(t.name, int(p.partition_index))] = (int(p.error_code), int(p.offset))
    return out


async def producer_states(client: ClusterClient, topic: str, partition: int,
                          timeout: float = 5.0) -> dict[int, tuple[int, int]]:
    """producer id → (epoch, last sequence written) on one physical partition (KIP-664).

    :raises UpstreamError: when the leader cannot be reached or answers an error.
    """
    info = await client.leader(topic, partition)
    conn = await client.connection(info.leader, "admin")
    schema: Any = load_request_schema(61, 0)
    module = sys.modules[schema.__module__]
    req = schema(topics=(module.TopicRequest(name=topic, partition_indexes=(partition,)),))
    resp = await conn.request(req, timeout)
    for t in resp.topics:
        for p in t.partitions:
            if int(p.error_code):
                raise UpstreamError(f"{client.id}: DescribeProducers {topic}-{partition}: "
                                    f"error {int(p.error_code)}", int(p.error_code))
            return {int(s.producer_id): (int(s.producer_epoch), int(s.last_sequence))
                    for s in p.active_producers}
    raise UpstreamError(f"{client.id}: DescribeProducers {topic}-{partition}: no answer")
