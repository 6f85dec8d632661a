"""Operator side of rolls: rebalance requests, drain progress, retirement (I/O).

The controller alone decides and executes rolls (:mod:`federation.controller.rolls`,
:meth:`federation.controller.service.Controller.roll`). Operators *ask*: ``fedkafka rebalance``
adds move requests to the map, ``fedkafka cluster drain`` sets a cluster ``draining``
(the controller then rolls its active segments away), and ``fedkafka cluster retire``
drops a drained cluster's sealed segments once no consumer group still needs them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from federation.clusters import admin
from federation.clusters.offsets import EARLIEST, list_offsets
from federation.clusters.upstream import ClusterClient, UpstreamError
from federation.controller.rolls import (
    DrainProgress,
    PhysKey,
    drain_progress,
    plan_rebalance,
    plan_retire,
)
from federation.core.model import ClusterState, FederationMap, Move
from federation.store.mapstore import MetadataBackend

__all__ = ["committed_offsets", "drain_status", "request_rebalance", "retire_cluster",
           "start_drain", "wait_moves"]

log = structlog.get_logger(__name__)


async def request_rebalance(backend: MetadataBackend, topics: Iterable[str] | None = None
                            ) -> list[Move]:
    """Ask the controller to spread the topics' active segments by weight; the moves asked."""
    wanted = None if topics is None else list(topics)
    asked: list[Move] = []

    def change(current: FederationMap | None) -> FederationMap | None:
        if current is None:
            raise admin.NoMapError("the metadata store holds no map yet")
        for name in wanted or ():
            if name not in current.topics:
                raise admin.UnknownTopicError(f"topic {name!r} does not exist")
        moves = plan_rebalance(current, wanted)
        queued = {(m.topic, m.partition) for m in current.moves}
        moves = [m for m in moves if (m.topic, m.partition) not in queued]
        asked[:] = moves
        return dataclasses.replace(current, moves=(*current.moves, *moves))

    fmap = await admin._load(backend)
    if not plan_rebalance(fmap, wanted) and not any(n not in fmap.topics for n in wanted or ()):
        return []
    await admin._publish(backend, change)
    return asked


async def wait_moves(backend: MetadataBackend, moves: Iterable[Move], timeout: float = 120.0,
                     poll: float = 0.2) -> dict[tuple[str, int], str]:
    """Wait until the controller carried out (or refused) ``moves``.

    :returns: (topic, partition) → the cluster now holding its active segment.
    :raises admin.AdminError: on timeout (is a controller running?).
    """
    keys = {(m.topic, m.partition) for m in moves}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        fmap = await asyncio.to_thread(backend.load)
        assert fmap is not None
        queued = {(m.topic, m.partition) for m in fmap.moves}
        busy = [k for k in keys if k in queued or (
            k[0] in fmap.topics and fmap.topics[k[0]].partitions[k[1]].fence is not None)]
        if not busy:
            return {k: fmap.topics[k[0]].partitions[k[1]].active.cluster for k in keys
                    if k[0] in fmap.topics}
        if loop.time() > deadline:
            raise admin.AdminError(f"{len(busy)} move(s) not done after {timeout:.0f}s (e.g. "
                                   f"{busy[0][0]}[{busy[0][1]}]); is a controller running? "
                                   "(`fedkafka status`)")
        await asyncio.sleep(poll)


async def start_drain(backend: MetadataBackend, cluster_id: str) -> None:
    """Set ``cluster_id`` draining (unless it already is, or is down)."""
    fmap = await admin._load(backend)
    cluster = admin._cluster(fmap, cluster_id)
    if cluster.state in (ClusterState.DRAINING, ClusterState.DOWN):
        return
    if cluster.state is ClusterState.RETIRED:
        raise admin.InvalidRequestError(f"cluster {cluster_id!r} is already retired")
    if fmap.coordination_cluster == cluster_id:
        raise admin.InvalidRequestError(
            f"cluster {cluster_id!r} coordinates consumer groups (and holds the shadow topics); "
            "it cannot be drained")
    await admin.set_cluster_state(backend, cluster_id, ClusterState.DRAINING)


async def committed_offsets(fmap: FederationMap, timeout: float = 10.0,
                            include: Callable[[str], bool] | None = None
                            ) -> dict[str, dict[tuple[str, int], int]]:
    """group → {(logical topic, partition) → committed logical offset}, for logical topics.

    Read from the coordination cluster, where groups commit logical offsets.

    :param include: read only the groups it accepts (by group id); default: all.
    """
    if fmap.coordination_cluster is None:
        return {}
    from federation.clusters import groupwire

    cluster = fmap.clusters[fmap.coordination_cluster]
    client = ClusterClient(cluster, client_id="fedkafka-admin", request_timeout=timeout)
    try:
        out: dict[str, dict[tuple[str, int], int]] = {}
        for group, _protocol, _state in await groupwire.list_groups(client, timeout):
            if include is not None and not include(group):
                continue
            offsets = await groupwire.committed(client, group, timeout)
            mine = {tp: off for tp, off in offsets.items() if tp[0] in fmap.topics}
            if mine:
                out[group] = mine
        return out
    except UpstreamError as e:
        raise admin.ClusterUnreachableError(
            f"cannot read consumer groups' offsets from coordination cluster {cluster.id!r}: "
            f"{e}") from e
    finally:
        client.close()


async def _log_starts(fmap: FederationMap, cluster_id: str) -> dict[PhysKey, int]:
    """Physical log start offsets of the cluster's sealed segments (empty if unreachable)."""
    parts = sorted({(s.topic, s.partition) for t in fmap.topics.values() for lp in t.partitions
                    for s in lp.segments if s.cluster == cluster_id and not s.is_active})
    if not parts:
        return {}
    client = ClusterClient(fmap.clusters[cluster_id], client_id="fedkafka-admin",
                           request_timeout=5.0)
    try:
        got = await list_offsets(client, parts, EARLIEST)
    except UpstreamError:
        return {}
    finally:
        client.close()
    return {(cluster_id, t, p): off for (t, p), off in got.items()}


async def drain_status(backend: MetadataBackend, cluster_id: str) -> DrainProgress:
    """How far ``cluster_id``'s drain is (active segments left, unread records per group)."""
    fmap = await admin._load(backend)
    admin._cluster(fmap, cluster_id)
    committed = await committed_offsets(fmap)
    starts = await _log_starts(fmap, cluster_id)
    return drain_progress(fmap, cluster_id, committed, starts)


async def retire_cluster(backend: MetadataBackend, cluster_id: str, *, force: bool = False
                         ) -> FederationMap:
    """Retire a drained cluster: drop its sealed segments from the map, state ``retired``.

    :param force: retire even though consumer groups have not read all of its data (that
        data is then gone for them).
    :raises admin.AdminError: while it is not drained (and not ``force``).
    """
    current = await admin._load(backend)
    if admin._cluster(current, cluster_id).state is ClusterState.RETIRED:
        return current  # already retired: nothing to publish (playbooks re-run this)
    if not force:
        progress = await drain_status(backend, cluster_id)
        if not progress.done:
            raise admin.InvalidRequestError(
                f"cluster {cluster_id!r} is not drained: {len(progress.active)} partition(s) "
                f"still written there, {progress.remaining_records} record(s) unread by "
                f"{len(progress.groups)} group(s) ({', '.join(sorted(progress.groups)[:5])}); "
                f"wait (`fedkafka cluster drain {cluster_id} --wait`) or pass --force")

    def change(current: FederationMap | None) -> FederationMap:
        if current is None:
            raise admin.NoMapError("the metadata store holds no map yet")
        try:
            return plan_retire(current, cluster_id)
        except ValueError as e:
            raise admin.InvalidRequestError(str(e)) from None

    old = (await admin._load(backend)).clusters.get(cluster_id)
    new = await admin._publish(backend, change)
    from federation.plugin import get_plugins

    if old is not None:
        get_plugins().notify_cluster_state_changed(cluster_id, old.state, ClusterState.RETIRED)
    log.info("cluster retired", cluster=cluster_id, version=new.version)
    return new


def summary(progress: DrainProgress) -> str:
    """One line of drain progress."""
    if progress.done:
        return f"cluster {progress.cluster} is drained ({progress.state}); retire it now"
    parts = []
    if progress.active:
        parts.append(f"{len(progress.active)} partition(s) still written there")
    if progress.remaining_records:
        parts.append(f"{progress.remaining_records} record(s) unread by "
                     f"{len(progress.groups)} group(s)")
    return f"cluster {progress.cluster} ({progress.state}): " + ", ".join(parts)


def as_dict(progress: DrainProgress) -> dict[str, Any]:
    return progress.to_dict()
