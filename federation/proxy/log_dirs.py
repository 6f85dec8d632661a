"""DescribeLogDirs (API key 35) on logical topics: the sizes of logical partitions.

``kafka-log-dirs.sh --describe``, AKHQ, kafka-ui and Cruise Control ask every broker of
the cluster for its log directories and the partitions in them. A proxy answers as the
broker it is in Metadata (docs/adr/0027-describe-log-dirs.md):

* **One log dir**, named ``fedkafka:<federation name>`` (:func:`log_dir_name`), holding
  the logical partitions this proxy is the replica of in Metadata for this client (the
  leader :func:`~federation.proxy.routing.leader_for` picks in the client's pool), so
  the answers of all the proxies of a pool list every logical partition exactly once.
  Only logical topics are listed, never physical or shadow names; topics null means all
  of them; a topic or partition the federation does not have is left out (as Kafka
  leaves out what a broker does not hold).
* **partition_size** of a logical partition is the sum of the sizes of the distinct
  physical partitions of its segments (sealed and active), each as reported by the broker
  the proxy believes leads it, in a DescribeLogDirs the proxy sends to that broker (one
  request per broker, per cluster, concurrently). Usually the leader's, the copy the
  proxy reads and writes; during a leader change, that of a former leader that still
  follows (it still lists the partition, and may be a little behind). Asking only leaders
  keeps it to one request per broker that leads something. A broker that does not list a
  partition, or cannot be asked (gone, its leadership moving elsewhere), has the
  cluster's leaders looked up again and is retried once. ``offset_lag`` is 0 and
  ``is_future_key`` false.
* **A physical partition whose size is unknown** (its cluster unreachable, no leader, the
  broker gone or refusing the proxy, its log dir offline, still not listed after the
  retry): the logical partitions that have a segment on it are left out of the answer. A
  warning is logged and ``fedkafka_proxy_errors_total{api="DescribeLogDirs"}`` counts the
  failure by its error code (every failure on the way is counted, including one the retry
  recovered from, so no partition is left out uncounted). A partial sum would understate
  the partition, and a tool would see data vanish; a missing partition is what Kafka
  shows of a replica it cannot describe.
* **total_bytes / usable_bytes** (v4+): the sums over the physical log dirs that answered
  this request (each (cluster, broker, dir) once), -1 when none did or one did not know.
* **Authorization as Kafka**: Describe on the Cluster (:mod:`federation.proxy.authz`);
  denied, the answer has no log dir and CLUSTER_AUTHORIZATION_FAILED (v3+ carries it).
"""

from __future__ import annotations

import datetime
import logging
import sys
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from federation.clusters.upstream import UpstreamError
from federation.core.model import FederationMap, LogicalPartition
from federation.protocol import codec
from federation.protocol.errors import ErrorCode, to_kio
from federation.protocol.versions import ApiKey
from federation.proxy import routing
from federation.proxy.core import Gather, Send, Step, leader, wait
from federation.proxy.routing import build, resp_module

if TYPE_CHECKING:
    from federation.proxy.handlers import Session

log = logging.getLogger("fedkafka.proxy")

__all__ = ["describe_log_dirs", "log_dir_name", "partitions_of"]

#: (physical topic, physical partition) on one cluster
PhysPart = tuple[str, int]
#: Errors looking a leader up that concern one partition, not the whole cluster.
_PARTITION_ERRORS = {ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, ErrorCode.LEADER_NOT_AVAILABLE}


def log_dir_name(federation: str) -> str:
    """The one log dir a proxy reports."""
    return f"fedkafka:{federation}"


def partitions_of(fmap: FederationMap, topics: Iterable[Any] | None, pool: tuple[Any, ...],
                  node_id: int) -> dict[tuple[str, int], LogicalPartition]:
    """The logical partitions a proxy (``node_id``) describes: those asked (``topics``: the
    request's, None for all) that exist and whose Metadata replica in ``pool`` it is."""
    wanted: list[tuple[str, int]] = []
    if topics is None:
        for name in sorted(fmap.topics):
            wanted.extend((name, i) for i in range(fmap.topics[name].partition_count))
    else:
        for t in topics:
            wanted.extend((t.topic, int(i)) for i in t.partitions)
    out: dict[tuple[str, int], LogicalPartition] = {}
    if not pool:
        return out
    for name, index in sorted(set(wanted)):
        topic = fmap.topics.get(name)
        if topic is None or not 0 <= index < topic.partition_count:
            continue
        if routing.leader_for(pool, name, index).node_id == node_id:
            out[(name, index)] = topic.partitions[index]
    return out


def describe_log_dirs(session: Session, req: codec.Request) -> Step:
    body: Any = req.entity
    version = req.header.api_version
    mod = resp_module(ApiKey.DESCRIBE_LOG_DIRS, version)
    state = session.state
    mine = partitions_of(session.fmap, body.topics, session.pool(), state.config.node_id)
    needed: dict[str, set[PhysPart]] = defaultdict(set)
    for lp in mine.values():
        for seg in lp.segments:
            needed[seg.cluster].add((seg.topic, seg.partition))
    clusters = sorted(needed)
    answers = yield Gather([_cluster_sizes(session, req, cid, sorted(needed[cid]))
                            for cid in clusters])
    sizes: dict[tuple[str, str, int], int] = {}
    volumes: dict[tuple[str, int, str], tuple[int, int]] = {}
    for cid, (found, dirs) in zip(clusters, answers, strict=True):
        sizes.update({(cid, t, p): size for (t, p), size in found.items()})
        volumes.update({(cid, node, d): v for (node, d), v in dirs.items()})
    by_topic: dict[str, list[Any]] = defaultdict(list)
    left_out = []
    for (name, index), lp in mine.items():
        parts = {(s.cluster, s.topic, s.partition) for s in lp.segments}
        if not all(p in sizes for p in parts):
            left_out.append(f"{name}-{index}")
            continue
        by_topic[name].append(build(mod.DescribeLogDirsPartition, partition_index=index,
                                    partition_size=sum(sizes[p] for p in parts),
                                    offset_lag=0, is_future_key=False))
    if left_out:
        log.warning("DescribeLogDirs: size unknown, left out: %s", ", ".join(left_out))
    total = usable = -1
    if volumes and all(t >= 0 and u >= 0 for t, u in volumes.values()):
        total = sum(t for t, _ in volumes.values())
        usable = sum(u for _, u in volumes.values())
    result = build(mod.DescribeLogDirsResult, error_code=to_kio(0),
                   log_dir=log_dir_name(state.cluster_id),
                   topics=tuple(build(mod.DescribeLogDirsTopic, name=name, partitions=tuple(ps))
                                for name, ps in sorted(by_topic.items())),
                   total_bytes=total, usable_bytes=usable, is_cordoned=False)
    return build(mod.DescribeLogDirsResponse, throttle_time=datetime.timedelta(0),
                 error_code=to_kio(0), results=(result,))


def _cluster_sizes(session: Session, req: codec.Request, cluster_id: str,
                   parts: list[PhysPart]) -> Step:
    """({physical partition: its size}, {(broker, log dir): (total, usable)}) of one
    cluster, each size as the broker the proxy believes leads it reports it; what is
    unknown is absent, and every failure that leaves something out is logged and counted.
    The partitions of a broker that did not list them (a stale leader) or could not be
    asked (gone: its leadership moved) are looked up again once, after the cluster's
    leaders are forgotten."""
    sizes: dict[PhysPart, int] = {}
    dirs: dict[tuple[int, str], tuple[int, int]] = {}
    try:
        cluster = session.state.cluster(cluster_id)
    except UpstreamError as e:
        _unknown(session, cluster_id, e)
        return sizes, dirs
    todo = parts
    for attempt in range(2):
        last = attempt == 1
        by_node: dict[int, list[PhysPart]] = defaultdict(list)
        for t, p in todo:
            try:
                info = yield from leader(cluster, t, p)
            except UpstreamError as e:
                if e.error_code in _PARTITION_ERRORS:  # no leader: left out
                    _unknown(session, cluster_id, e, partitions=[(t, p)])
                    continue
                _unknown(session, cluster_id, e)  # the cluster is away: stop asking it
                return sizes, dirs
            by_node[info.leader].append((t, p))
        nodes = sorted(by_node)
        asked = {node: set(ps) for node, ps in by_node.items()}
        pendings = []
        missing: list[PhysPart] = []  # to look up again (on the first attempt)
        gone: dict[int, UpstreamError] = {}  # brokers that could not be asked
        for node in nodes:
            sub = _request(req.entity, by_node[node])
            try:
                pendings.append((yield Send(cluster, node, sub, req.header.client_id,
                                            session.state.request_timeout, shared=True)))
            except UpstreamError as e:
                gone[node] = e
                pendings.append(None)
        for node, pending in zip(nodes, pendings, strict=True):
            if pending is None:
                continue
            try:
                resp = yield from wait(pending)
            except UpstreamError as e:
                gone[node] = e
                continue
            code = int(getattr(resp, "error_code", 0) or 0)
            if code:
                _unknown(session, cluster_id, UpstreamError("refused", code), node,
                         by_node[node])
                continue
            offline = False  # a log dir failed: what it does not list may be there
            for result in resp.results:
                if int(result.error_code):  # an offline log dir: what it holds is unknown
                    _unknown(session, cluster_id, UpstreamError(
                        f"log dir {result.log_dir} failed", int(result.error_code)), node)
                    offline = True
                    continue
                total = int(getattr(result, "total_bytes", -1))
                usable = int(getattr(result, "usable_bytes", -1))
                dirs[(node, result.log_dir)] = (total, usable)
                for t in result.topics:
                    for p in t.partitions:
                        key = (t.name, int(p.partition_index))
                        if not p.is_future_key and key in asked[node]:
                            sizes[key] = max(sizes.get(key, 0), int(p.partition_size))
            unlisted = [k for k in by_node[node] if k not in sizes]
            if unlisted and not offline:
                if last:  # still not where its leader is said to be
                    _unknown(session, cluster_id, UpstreamError(
                        "not listed by its leader", ErrorCode.NOT_LEADER_OR_FOLLOWER), node,
                        unlisted)
                missing.extend(unlisted)
        for node, lost in gone.items():
            # The broker is away (its leadership may have moved): forget where the cluster's
            # leaders are, so this request's retry and the next requests look them up.
            cluster.invalidate()
            _unknown(session, cluster_id, lost, node, by_node[node], retried=not last)
            missing.extend(by_node[node])
        if not missing or last:
            break
        cluster.invalidate()  # the broker does not hold it (anymore): where is it now?
        todo = missing
    return sizes, dirs


def _request(template: Any, parts: list[PhysPart]) -> Any:
    """A DescribeLogDirs of these physical partitions, at the client's version."""
    cls = sys.modules[type(template).__module__].DescribableLogDirTopic
    by_topic: dict[str, list[int]] = defaultdict(list)
    for t, p in parts:
        by_topic[t].append(p)
    return routing.replace(template, topics=tuple(
        cls(topic=t, partitions=tuple(ps)) for t, ps in sorted(by_topic.items())))


def _unknown(session: Session, cluster_id: str, e: UpstreamError, node: int | None = None,
             partitions: list[PhysPart] | None = None, retried: bool = False) -> None:
    """A failure that leaves sizes unknown: counted (by its error code) and logged."""
    session.state.metrics.error("DescribeLogDirs", e.error_code)
    log.warning("DescribeLogDirs: cluster %s%s did not describe %s: %s%s", cluster_id,
                "" if node is None else f" broker {node}",
                "its log dirs" if partitions is None else
                ", ".join(f"{t}-{p}" for t, p in partitions), e,
                " (its leaders are looked up again)" if retried else "")
