"""DeleteRecords, DeleteGroups, OffsetDelete and DescribeProducers on logical entities.

* **DeleteRecords**: a logical offset is translated across the partition's segments
  (:func:`plan_delete_records`): the segment holding it has its physical partition
  truncated before the translated offset, every earlier (sealed) segment is deleted
  entirely, and the answer's low watermark is logical. The segment holding the offset goes
  first, so an offset beyond the high watermark is refused (OFFSET_OUT_OF_RANGE, by its
  broker) before anything is deleted. Records of *another* logical partition that share a
  physical partition (a layout no built-in strategy makes) are never deleted: the
  deletion stops before them.
* **DeleteGroups**, **OffsetDelete**: groups live on the coordination cluster (their
  offsets are logical, under logical topic names): forwarded to each group's coordinator
  there, like the other group APIs.
* **DescribeProducers**: answered from the physical partition of each logical partition's
  active segment, where idempotent producers write now (their state on sealed segments
  is not merged).
* **DescribeTopicPartitions** (``kafka-topics --describe`` in Kafka 4): the logical
  partitions as Metadata presents them, paged as Kafka pages them.
"""

from __future__ import annotations

import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from federation.clusters.offsets import EARLIEST
from federation.clusters.upstream import UpstreamError
from federation.core.model import FederationMap, LogicalPartition, Operation, Segment
from federation.protocol import codec
from federation.protocol.errors import ErrorCode, error_response, to_kio
from federation.protocol.versions import ApiKey
from federation.proxy.core import Ends, Gather, Send, Step, leader, wait
from federation.proxy.routing import build, replace, resp_module

if TYPE_CHECKING:
    from federation.proxy.handlers import Session

HIGH_WATERMARK = -1
_ZERO_UUID = uuid.UUID(int=0)
_LEADER_ERRORS = {ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.LEADER_NOT_AVAILABLE,
                  ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}


def _ms(value: int) -> Any:
    import datetime

    return datetime.timedelta(milliseconds=value)


def _request_class(entity: Any, name: str) -> Any:
    return getattr(sys.modules[type(entity).__module__], name)


# -- DeleteRecords -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deletion:
    """Delete the records of ``segment``'s physical partition before ``physical_offset``
    (-1: its high watermark)."""

    segment: Segment
    physical_offset: int


@dataclass(frozen=True, slots=True)
class DeletePlan:
    final: Deletion  #: in the segment holding the offset: its answer is the low watermark
    earlier: tuple[Deletion, ...]  #: whole sealed segments before it


def plan_delete_records(fmap: FederationMap, partition: LogicalPartition, offset: int
                        ) -> DeletePlan:
    """What DeleteRecords(``offset``) deletes on each physical partition (pure).

    :param offset: a logical offset, or -1 for the partition's high watermark.
    """
    segments = partition.segments
    if offset == HIGH_WATERMARK:
        holding, physical = segments[-1], HIGH_WATERMARK
    elif offset < segments[0].logical_start:  # already gone: nothing of ours to delete
        holding, physical = segments[0], segments[0].physical_start
    else:
        found = partition.segment_for(offset)
        holding = found if found is not None else segments[-1]
        physical = holding.to_physical(offset)
    index = segments.index(holding)
    own = set(segments[:index + 1])
    earlier = []
    for seg in segments[:index]:
        # A whole sealed segment: up to its end, or to the high watermark (the records a
        # seal left behind belong to nobody) when nothing else lives after it there.
        end = seg.physical_end
        assert end is not None
        after = _starts_on(fmap, seg, exclude=set())
        target = end if any(start >= end for start in after) else HIGH_WATERMARK
        earlier.append(Deletion(seg, _capped(fmap, seg, target, own)))
    return DeletePlan(Deletion(holding, _capped(fmap, holding, physical, own)), tuple(earlier))


def _starts_on(fmap: FederationMap, seg: Segment, exclude: set[Segment]) -> list[int]:
    """Physical starts of the other segments (any topic) on ``seg``'s physical partition."""
    out = []
    for topic in fmap.topics.values():
        for lp in topic.partitions:
            for other in lp.segments:
                if (other is not seg and other not in exclude and other.cluster == seg.cluster
                        and other.topic == seg.topic and other.partition == seg.partition):
                    out.append(other.physical_start)
    return out


def _capped(fmap: FederationMap, seg: Segment, target: int, own: set[Segment]) -> int:
    """``target``, lowered so that no record of a segment we do not delete goes with it
    (one of another logical partition on the same physical partition, before ``target``)."""
    foreign = [s for s in _starts_on(fmap, seg, own) if target == HIGH_WATERMARK or s < target]
    return min(foreign) if foreign else target


def delete_records(session: Session, req: codec.Request) -> Step:
    body: Any = req.entity
    mod = resp_module(ApiKey.DELETE_RECORDS, req.header.api_version)
    fmap = session.fmap

    def one(name: str, p: Any) -> Step:
        index = int(p.partition_index)
        offset = int(p.offset)
        code, low = 0, -1
        try:
            topic = fmap.topics.get(name)
            if topic is None or not 0 <= index < topic.partition_count:
                code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            elif not session.allowed(Operation.DELETE, name):
                code = ErrorCode.TOPIC_AUTHORIZATION_FAILED
            elif offset < HIGH_WATERMARK:
                code = ErrorCode.OFFSET_OUT_OF_RANGE
            else:
                plan = plan_delete_records(fmap, topic.partitions[index], offset)
                code, physical_low = yield from _delete(session, body, plan.final, req)
                if not code:
                    answers = yield Gather([_delete(session, body, d, req)
                                            for d in plan.earlier])
                    code = next((c for c, _ in answers if c), 0)
                    if not code:
                        low = yield from _logical_low(session, topic.partitions[index],
                                                      plan.final.segment, physical_low)
        except UpstreamError as e:
            code = e.error_code
        return build(mod.DeleteRecordsPartitionResult, partition_index=index,
                     low_watermark=low, error_code=to_kio(code))

    topics = []
    for t in body.topics:
        parts = yield Gather([one(t.name, p) for p in t.partitions])
        topics.append(build(mod.DeleteRecordsTopicResult, name=t.name, partitions=tuple(parts)))
    return build(mod.DeleteRecordsResponse, throttle_time=_ms(0), topics=tuple(topics))


def _logical_low(session: Session, partition: LogicalPartition, holding: Segment,
                 physical_low: int) -> Step:
    """The partition's logical low watermark, given ``holding``'s physical one: past a
    sealed segment that has nothing left, in the next segment that has."""
    segments = partition.segments
    for seg in segments[segments.index(holding):]:
        if seg is not holding:
            try:
                found = yield Ends(session.state.cluster(seg.cluster),
                                   [(seg.topic, seg.partition)],
                                   session.state.request_timeout, EARLIEST)
            except UpstreamError:
                break  # that cluster is away: the best known answer
            physical_low = found[(seg.topic, seg.partition)]
        end = seg.physical_end
        if end is None or physical_low < end:
            return max(seg.logical_start, seg.to_logical(physical_low))
        holding = seg
    return max(holding.logical_start, holding.to_logical(physical_low))


def _delete(session: Session, body: Any, d: Deletion, req: codec.Request) -> Step:
    """(error code, physical low watermark) of one physical DeleteRecords."""
    seg = d.segment
    cluster = session.state.cluster(seg.cluster)
    sub = replace(body, topics=(build(_request_class(body, "DeleteRecordsTopic"), name=seg.topic,
                                      partitions=(build(_request_class(body,
                                                                       "DeleteRecordsPartition"),
                                                        partition_index=seg.partition,
                                                        offset=d.physical_offset),)),))
    timeout = session.state.request_timeout + body.timeout.total_seconds()
    code = 0
    for _ in range(2):
        info = yield from leader(cluster, seg.topic, seg.partition)
        pending = yield Send(cluster, info.leader, sub, req.header.client_id, timeout)
        resp = yield from wait(pending)
        [pr] = resp.topics[0].partitions
        code = int(pr.error_code)
        if code in _LEADER_ERRORS:
            cluster.invalidate()
            continue
        return code, int(pr.low_watermark)
    return code, -1


# -- groups --------------------------------------------------------------------------------


def delete_groups(session: Session, req: codec.Request) -> Step:
    """Each group to its own coordinator on the coordination cluster; answers merged."""
    body: Any = req.entity
    mod = resp_module(ApiKey.DELETE_GROUPS, req.header.api_version)

    def one(group_id: str) -> Step:
        sub = codec.Request(req.header, replace(body, groups_names=(group_id,)))
        try:
            resp = yield from session._to_coordinator(sub, group_id)
        except UpstreamError:
            session._coordination_cluster(group_id).forget_coordinator(group_id)
            return build(mod.DeletableGroupResult, group_id=group_id,
                         error_code=to_kio(ErrorCode.COORDINATOR_NOT_AVAILABLE))
        [result] = resp.results
        return result

    results = yield Gather([one(g) for g in body.groups_names])
    return build(mod.DeleteGroupsResponse, throttle_time=_ms(0), results=tuple(results))


def offset_delete(session: Session, req: codec.Request) -> Step:
    body: Any = req.entity
    try:
        return (yield from session._to_coordinator(req, body.group_id))
    except UpstreamError:
        session._coordination_cluster(body.group_id).forget_coordinator(body.group_id)
        return error_response(req, ErrorCode.COORDINATOR_NOT_AVAILABLE)


# -- DescribeProducers ---------------------------------------------------------------------


def describe_producers(session: Session, req: codec.Request) -> Step:
    body: Any = req.entity
    mod = resp_module(ApiKey.DESCRIBE_PRODUCERS, req.header.api_version)
    fmap = session.fmap

    def failed(index: int, code: int, message: str | None = None) -> Any:
        return build(mod.PartitionResponse, partition_index=index, error_code=to_kio(code),
                     error_message=message, active_producers=())

    def one(name: str, index: int) -> Step:
        topic = fmap.topics.get(name)
        if topic is None or not 0 <= index < topic.partition_count:
            return failed(index, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
        if not session.allowed(Operation.READ, name):
            return failed(index, ErrorCode.TOPIC_AUTHORIZATION_FAILED)
        seg = topic.partitions[index].active
        cluster = session.state.cluster(seg.cluster)
        topic_cls = _request_class(body, "TopicRequest")
        sub = replace(body, topics=(build(topic_cls, name=seg.topic,
                                          partition_indexes=(seg.partition,)),))
        try:
            info = yield from leader(cluster, seg.topic, seg.partition)
            pending = yield Send(cluster, info.leader, sub, req.header.client_id,
                                 session.state.request_timeout)
            resp = yield from wait(pending)
        except UpstreamError as e:
            return failed(index, e.error_code, str(e))
        [pr] = resp.topics[0].partitions
        if int(pr.error_code) in _LEADER_ERRORS:
            cluster.invalidate()
        producers = tuple(replace(s, current_txn_start_offset=-1 if int(
            s.current_txn_start_offset) < 0 else seg.to_logical(int(s.current_txn_start_offset)))
            for s in pr.active_producers)
        return replace(pr, partition_index=index, active_producers=producers)

    topics = []
    by_topic: dict[str, list[Any]] = defaultdict(list)
    for t in body.topics:
        by_topic[t.name].extend((yield Gather([one(t.name, int(i))
                                               for i in t.partition_indexes])))
    for name, parts in by_topic.items():
        topics.append(build(mod.TopicResponse, name=name, partitions=tuple(parts)))
    return build(mod.DescribeProducersResponse, throttle_time=_ms(0), topics=tuple(topics))


# -- DescribeTopicPartitions -----------------------------------------------------------------


def describe_topic_partitions(session: Session, req: codec.Request) -> Any:
    """The logical partitions, as Metadata presents them (leaders are proxies, no
    eligible leader replicas), paged by ``response_partition_limit`` and the cursor as
    Kafka pages them: topics in name order, all of them when none is named."""
    from federation.proxy import routing

    body: Any = req.entity
    mod = resp_module(ApiKey.DESCRIBE_TOPIC_PARTITIONS, req.header.api_version)
    fmap = session.fmap
    pool = session.pool()
    listing = not body.topics
    names = sorted(fmap.topics) if listing else sorted({t.name for t in body.topics})
    start_topic, start_partition = "", 0
    if body.cursor is not None:
        start_topic, start_partition = body.cursor.topic_name, int(body.cursor.partition_index)
    budget = max(1, int(body.response_partition_limit))
    topics: list[Any] = []
    next_cursor = None
    for name in names:
        if name < start_topic:
            continue
        first = start_partition if name == start_topic else 0
        topic = fmap.topics.get(name)
        allowed = topic is not None and session.allowed(Operation.DESCRIBE, name)
        if topic is None or not allowed:
            if listing and topic is not None:
                continue  # not listed to whom may not describe it
            code = (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION if topic is None
                    else ErrorCode.TOPIC_AUTHORIZATION_FAILED)
            topics.append(build(mod.DescribeTopicPartitionsResponseTopic,
                                error_code=to_kio(code), name=name, topic_id=_ZERO_UUID,
                                is_internal=False, partitions=(),
                                topic_authorized_operations=-2147483648))
            continue
        parts = []
        for i in range(first, topic.partition_count):
            if budget == 0:
                next_cursor = build(mod.Cursor, topic_name=name, partition_index=i)
                break
            budget -= 1
            leader = routing.leader_for(pool, name, i).node_id
            if routing.writable(fmap, topic.partitions[i]):
                parts.append(build(mod.DescribeTopicPartitionsResponsePartition,
                                   error_code=to_kio(0), partition_index=i, leader_id=leader,
                                   leader_epoch=-1, replica_nodes=(leader,),
                                   isr_nodes=(leader,), eligible_leader_replicas=(),
                                   last_known_elr=(), offline_replicas=()))
            else:  # being rolled, or its cluster is down/read-only (as Metadata says)
                parts.append(build(mod.DescribeTopicPartitionsResponsePartition,
                                   error_code=to_kio(ErrorCode.LEADER_NOT_AVAILABLE),
                                   partition_index=i, leader_id=-1, leader_epoch=-1,
                                   replica_nodes=(leader,), isr_nodes=(),
                                   eligible_leader_replicas=(), last_known_elr=(),
                                   offline_replicas=(leader,)))
        topics.append(build(mod.DescribeTopicPartitionsResponseTopic, error_code=to_kio(0),
                            name=name, topic_id=topic.topic_id, is_internal=False,
                            partitions=tuple(parts), topic_authorized_operations=-2147483648))
        if next_cursor is not None:
            break
    return build(mod.DescribeTopicPartitionsResponse, throttle_time=_ms(0),
                 topics=tuple(topics), next_cursor=next_cursor)
