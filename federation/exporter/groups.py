"""Consumer groups of a federation: list, describe (with lag), reset offsets (I/O).

Groups live on the coordination cluster (Kafka's own group coordinator, shadow topics with
logical names), so their members, assignments and committed offsets are read there;
their lag comes from :mod:`federation.exporter.lag` (offsets over the segment chains).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.clusters import admin, groupwire
from federation.clusters.upstream import ClusterClient, UpstreamError
from federation.core.model import FederationMap
from federation.exporter.lag import LagReport, OffsetReader, collect, compute_lag, logical_log_start
from federation.protocol.errors import ErrorCode

__all__ = ["GroupDescription", "GroupInfo", "Member", "ResetSpec", "apply_reset",
           "describe_group", "describe_groups", "list_groups", "plan_reset"]

#: Group states in which Kafka accepts offsets committed from outside the group.
INACTIVE_STATES = frozenset({"Empty", "Dead"})


@dataclass(frozen=True, slots=True)
class Member:
    member_id: str
    client_id: str
    host: str
    partitions: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class GroupInfo:
    group: str
    state: str  #: Kafka's group state: Stable, PreparingRebalance, Empty, Dead, …
    protocol_type: str = ""
    protocol: str = ""
    members: tuple[Member, ...] = ()

    def owner(self, topic: str, partition: int) -> Member | None:
        for m in self.members:
            if (topic, partition) in m.partitions:
                return m
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "state": self.state, "protocol_type": self.protocol_type,
                "protocol": self.protocol,
                "members": [{"member_id": m.member_id, "client_id": m.client_id,
                             "host": m.host, "partitions": [list(p) for p in m.partitions]}
                            for m in self.members]}


@contextlib.asynccontextmanager
async def _coordination_client(fmap: FederationMap, timeout: float
                               ) -> AsyncIterator[ClusterClient]:
    """A protocol client on the coordination cluster (groupwire: our own codec)."""
    if fmap.coordination_cluster is None:
        raise admin.InvalidRequestError("the map names no coordination cluster: no groups")
    cluster = fmap.clusters[fmap.coordination_cluster]
    client = ClusterClient(cluster, client_id="fedkafka-admin", request_timeout=timeout)
    try:
        yield client
    finally:
        client.close()


def _unreachable(cluster: str, e: BaseException) -> admin.ClusterUnreachableError:
    return admin.ClusterUnreachableError(
        f"cannot read consumer groups from coordination cluster {cluster!r}: "
        f"{type(e).__name__}: {e}")


async def list_groups(fmap: FederationMap, timeout: float = 10.0) -> list[tuple[str, str]]:
    """(group id, protocol type) of every group the coordination cluster knows, by id."""
    async with _coordination_client(fmap, timeout) as client:
        try:
            groups = await groupwire.list_groups(client, timeout)
        except UpstreamError as e:
            raise _unreachable(str(fmap.coordination_cluster), e) from e
    return [(g, protocol) for g, protocol, _state in groups]


def _assignment(raw: bytes) -> tuple[tuple[str, int], ...]:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    if not raw:
        return ()
    try:
        decoded = ConsumerProtocolMemberAssignment.decode(raw)
    except (ValueError, UnicodeDecodeError):  # not the consumer protocol (e.g. Connect)
        return ()
    return tuple(sorted((str(t), int(p)) for t, parts in decoded.assignment for p in parts))


async def describe_groups(fmap: FederationMap, groups: Iterable[str], timeout: float = 10.0
                          ) -> dict[str, GroupInfo]:
    """State, members and their assignments of ``groups`` (DescribeGroups)."""
    wanted = sorted(set(groups))
    if not wanted:
        return {}
    out: dict[str, GroupInfo] = {}
    async with _coordination_client(fmap, timeout) as client:
        for group in wanted:
            try:
                g = await groupwire.describe(client, group, timeout)
            except UpstreamError as e:
                if e.error_code in (ErrorCode.NETWORK_EXCEPTION, ErrorCode.REQUEST_TIMED_OUT):
                    raise _unreachable(str(fmap.coordination_cluster), e) from e
                raise admin.BrokerRefusedError(
                    f"DescribeGroups {group!r} answered error {e.error_code}",
                    e.error_code) from e
            out[group] = GroupInfo(
                str(g.group_id), str(g.group_state), str(g.protocol_type),
                str(g.protocol_data),
                tuple(Member(str(m.member_id), str(m.client_id), str(m.client_host),
                             _assignment(bytes(m.member_assignment))) for m in g.members))
    return out


@dataclass(slots=True)
class GroupDescription:
    """One group: its state and members, and one row per logical partition it committed
    on or is assigned."""

    info: GroupInfo
    report: LagReport
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def unread_by_cluster(self) -> dict[str, int]:
        return self.report.unread_by_cluster().get(self.info.group, {})

    def to_dict(self) -> dict[str, Any]:
        return {**self.info.to_dict(), "map_version": self.report.map_version,
                "partitions": self.rows,
                "lag": sum(r["lag"] or 0 for r in self.rows),
                "unread_by_cluster": self.unread_by_cluster,
                "unreachable_clusters": sorted(self.report.unreachable)}


async def describe_group(fmap: FederationMap, group: str, timeout: float = 10.0
                         ) -> GroupDescription:
    """A group's members and, per logical partition, committed offset, end offset, lag and
    the physical clusters holding what it has not read."""
    info = (await describe_groups(fmap, [group], timeout)).get(group) or GroupInfo(group, "Dead")
    report, _ = await collect(fmap, groups=[group], timeout=timeout)
    committed = {(p.topic, p.partition): p for p in report.for_group(group)}
    assigned = {tp for m in info.members for tp in m.partitions if tp[0] in fmap.topics}
    rows = []
    for topic, partition in sorted(set(committed) | assigned):
        lag = committed.get((topic, partition))
        owner = info.owner(topic, partition)
        rows.append({
            "topic": topic, "partition": partition,
            "committed": lag.committed if lag else None,
            "end": report.ends.get((topic, partition)),
            "lag": lag.lag if lag else None,
            "unread": {c: n for c, n in sorted(lag.unread.items()) if n} if lag else {},
            "member_id": owner.member_id if owner else None,
            "host": owner.host if owner else None,
            "client_id": owner.client_id if owner else None,
        })
    return GroupDescription(info, report, rows)


# -- resetting offsets -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResetSpec:
    """Where to move a group's committed offsets (exactly one of these)."""

    to_earliest: bool = False
    to_latest: bool = False
    to_offset: int | None = None
    shift_by: int | None = None

    def __post_init__(self) -> None:
        chosen = [self.to_earliest, self.to_latest, self.to_offset is not None,
                  self.shift_by is not None]
        if sum(chosen) != 1:
            raise admin.InvalidRequestError(
                "choose exactly one of --to-earliest, --to-latest, --to-offset, --shift-by")


async def plan_reset(fmap: FederationMap, group: str,
                     partitions: Mapping[str, Iterable[int] | None], spec: ResetSpec,
                     timeout: float = 10.0) -> dict[tuple[str, int], tuple[int | None, int]]:
    """(topic, partition) → (committed now, new offset), new offsets clamped to what each
    logical partition holds (its first kept record .. its end), as Kafka's tool does.

    :param partitions: logical topic → partitions (None: all of them).
    """
    wanted: list[tuple[str, int]] = []
    for name, parts in partitions.items():
        topic = fmap.topics.get(name)
        if topic is None:
            raise admin.UnknownTopicError(f"topic {name!r} does not exist")
        chosen = range(topic.partition_count) if parts is None else sorted(set(parts))
        for p in chosen:
            if not 0 <= p < topic.partition_count:
                raise admin.InvalidRequestError(
                    f"topic {name!r} has partitions 0..{topic.partition_count - 1}, not {p}")
            wanted.append((name, p))
    from federation.controller.elastic import committed_offsets

    committed = await committed_offsets(fmap, timeout, include=group.__eq__)
    reader = OffsetReader(timeout=timeout / 2)
    try:
        offsets = await reader.read(fmap)
    finally:
        reader.close()
    report = compute_lag(fmap, committed, offsets)
    now = {(p.topic, p.partition): p.committed for p in report.for_group(group)}
    plan: dict[tuple[str, int], tuple[int | None, int]] = {}
    for name, p in wanted:
        lp = fmap.topics[name].partitions[p]
        end = report.ends.get((name, p))
        if end is None:
            raise admin.ClusterUnreachableError(
                f"{name}[{p}]: its active cluster {lp.active.cluster!r} did not answer; "
                "its end offset is unknown")
        first = min(logical_log_start(lp, offsets.log_starts), end)
        current = now.get((name, p))
        if spec.to_earliest:
            target = first
        elif spec.to_latest:
            target = end
        elif spec.to_offset is not None:
            target = spec.to_offset
        else:
            assert spec.shift_by is not None
            target = (current if current is not None else end) + spec.shift_by
        plan[(name, p)] = (current, max(first, min(end, target)))
    return plan


async def apply_reset(fmap: FederationMap, group: str, offsets: Mapping[tuple[str, int], int],
                      timeout: float = 10.0) -> None:
    """Commit ``offsets`` (logical) for ``group`` on the coordination cluster.

    :raises admin.InvalidRequestError: while the group has members (as Kafka's tool, only
        an inactive group's offsets are reset).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from federation.security.tls import aiokafka_kwargs

    info = (await describe_groups(fmap, [group], timeout)).get(group)
    if info is not None and info.state not in INACTIVE_STATES:
        raise admin.InvalidRequestError(
            f"group {group!r} is {info.state} with {len(info.members)} member(s); offsets "
            "can only be reset while it is inactive (stop its consumers first)")
    assert fmap.coordination_cluster is not None
    cluster = fmap.clusters[fmap.coordination_cluster]
    consumer = AIOKafkaConsumer(bootstrap_servers=list(cluster.bootstrap_servers),
                                group_id=group, client_id="fedkafka-admin",
                                enable_auto_commit=False,
                                request_timeout_ms=int(timeout * 1000),
                                **aiokafka_kwargs(cluster.security, cluster.id))
    try:
        await asyncio.wait_for(consumer.start(), timeout)
        tps = {TopicPartition(t, p): OffsetAndMetadata(off, "") for (t, p), off in
               offsets.items()}
        consumer.assign(list(tps))
        await asyncio.wait_for(consumer.commit(tps), timeout)
    except admin.AdminError:
        raise
    except Exception as e:
        raise admin.BrokerRefusedError(
            f"committing offsets of group {group!r} on {cluster.id!r} failed: "
            f"{type(e).__name__}: {e}", -1) from e
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
