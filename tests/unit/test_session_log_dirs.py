"""DescribeLogDirs through the sans-IO core: logical partition sizes summed over their
segments' physical partitions, asked of the leaders (federation/proxy/log_dirs.py,
docs/adr/0027-describe-log-dirs.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from federation.core.model import (
    DENY,
    AclRule,
    LogicalPartition,
    LogicalTopic,
    ProxyEndpoint,
    Segment,
    new_topic_id,
)
from federation.protocol.errors import ErrorCode, to_kio
from federation.protocol.versions import ApiKey
from federation.proxy import core, log_dirs, routing
from federation.proxy.routing import build, resp_module
from tests.kafka_requests import make
from tests.unit.session_harness import Fail, Harness, Refuse, Sent
from tests.unit.test_session_core import MS, PHYS, fmap

LOG_DIRS = ApiKey.DESCRIBE_LOG_DIRS

#: physical (cluster, topic, partition) → size in bytes, as the leader reports it
SIZES = {("A", PHYS, 0): 1_000, ("B", PHYS, 0): 20_000, ("B", PHYS, 1): 300,
         ("A", PHYS, 2): 4_000, ("B", PHYS, 3): 50_000, ("A", "other.fk", 0): 7}


def answering(sizes: dict[tuple[str, str, int], int], *, total: int = 10_000,
              usable: int = 4_000, code: int = 0, dir_code: int = 0,
              leader_only: bool = True) -> Any:
    """A physical broker's DescribeLogDirs answer: the partitions asked that it holds."""
    def answer(sent: Sent) -> Any:
        req = sent.request
        mod = resp_module(LOG_DIRS, int(req.__version__))
        topics = []
        for t in req.topics:
            parts = tuple(build(mod.DescribeLogDirsPartition, partition_index=p,
                                partition_size=sizes[(sent.cluster, t.topic, int(p))],
                                offset_lag=0, is_future_key=False)
                          for p in t.partitions if (sent.cluster, t.topic, int(p)) in sizes)
            if parts:
                topics.append(build(mod.DescribeLogDirsTopic, name=t.topic, partitions=parts))
        result = build(mod.DescribeLogDirsResult, error_code=to_kio(dir_code),
                       log_dir=f"/var/kafka/{sent.cluster}-{sent.node}",
                       topics=() if dir_code else tuple(topics), total_bytes=total,
                       usable_bytes=usable)
        return build(mod.DescribeLogDirsResponse, throttle_time=0 * MS,
                     error_code=to_kio(code), results=() if code else (result,))
    return answer


def request(topics: dict[str, list[int]] | None, version: int = 4) -> Any:
    if topics is None:
        return make(LOG_DIRS, version, topics=None)
    return make(LOG_DIRS, version, topics=tuple(
        make(LOG_DIRS, version, "DescribableLogDirTopic", topic=t, partitions=tuple(ps))
        for t, ps in topics.items()))


def listed(reply: Any) -> dict[tuple[str, int], int]:
    assert isinstance(reply, core.Reply), reply
    [result] = reply.body.results
    assert int(result.error_code) == 0
    out = {}
    for t in result.topics:
        for p in t.partitions:
            assert int(p.offset_lag) == 0 and p.is_future_key is False
            out[(t.name, int(p.partition_index))] = int(p.partition_size)
    return out


def harness(**kwargs: Any) -> Harness:
    return Harness(fmap(**kwargs))


def test_sizes_are_summed_over_the_segments_on_two_clusters() -> None:
    h = harness(sealed_on_a=True)  # partition 0: sealed on A, then active on B
    h.leaders[("B", PHYS, 3)] = 2  # B's partitions are led by two brokers
    h.on(LOG_DIRS, answering(SIZES))
    reply = h.call(request({"orders": [0, 1, 2, 3]}))
    assert listed(reply) == {("orders", 0): 1_000 + 20_000, ("orders", 1): 300,
                             ("orders", 2): 4_000, ("orders", 3): 50_000}
    [result] = reply.body.results
    assert result.log_dir == "fedkafka:" + h.state.cluster_id == log_dirs.log_dir_name(
        h.state.cluster_id)
    # one request per leading broker, asking only the partitions it leads (physical names)
    asked = sorted((s.cluster, s.node, tuple((t.topic, tuple(t.partitions))
                                             for t in s.request.topics)) for s in h.sent)
    assert asked == [("A", 1, ((PHYS, (0, 2)),)), ("B", 1, ((PHYS, (0, 1)),)),
                     ("B", 2, ((PHYS, (3,)),))]
    # three (cluster, broker, dir) volumes answered
    assert (int(result.total_bytes), int(result.usable_bytes)) == (30_000, 12_000)


def test_a_physical_partition_twice_in_a_chain_counts_once() -> None:
    """A → B → A again (a later range of the same physical partition): its size is the
    physical partition's, once."""
    segs = (Segment("A", PHYS, 0, 0, 0, sealed_end=10), Segment("B", PHYS, 0, 10, 0,
                                                                 sealed_end=20),
            Segment("A", PHYS, 0, 20, 10))
    fm = fmap()
    topic = LogicalTopic("orders", fm.topics["orders"].topic_id, (LogicalPartition(0, segs),))
    h = Harness(fm.with_topic(topic))
    h.on(LOG_DIRS, answering(SIZES))
    assert listed(h.call(request({"orders": [0]}))) == {("orders", 0): 1_000 + 20_000}


def test_null_topics_lists_every_logical_topic_and_no_physical_name() -> None:
    fm = fmap()
    other = LogicalTopic("other", new_topic_id("other", "t"),
                         (LogicalPartition(0, (Segment("A", "other.fk", 0, 0, 0),)),))
    h = Harness(fm.with_topic(other))
    h.on(LOG_DIRS, answering(SIZES))
    got = listed(h.call(request(None)))
    assert got == {("orders", 0): 1_000, ("orders", 1): 300, ("orders", 2): 4_000,
                   ("orders", 3): 50_000, ("other", 0): 7}
    assert {t for t, _ in got} == {"orders", "other"}


def test_unknown_topics_partitions_and_physical_names_are_left_out() -> None:
    h = harness()
    h.on(LOG_DIRS, answering(SIZES))
    reply = h.call(request({"nope": [0], PHYS: [0], "orders": [1, 9]}))
    assert listed(reply) == {("orders", 1): 300}
    assert [s.cluster for s in h.sent] == ["B"]
    # nothing known at all: still one (empty) log dir, as a broker holding nothing answers
    # (Kafka's admin client reads "no log dir" as an authorization failure)
    h.sent.clear()
    reply = h.call(request({"nope": [0]}))
    assert listed(reply) == {} and not h.sent
    [result] = reply.body.results
    assert (int(result.total_bytes), int(result.usable_bytes)) == (-1, -1)


#: failure → (the error code it is counted under, how many times)
FAILURES = {
    "request": (ErrorCode.NETWORK_EXCEPTION, 2),  # the answer lost, and again on the retry
    "refused": (ErrorCode.NETWORK_EXCEPTION, 2),  # not even sent, and again on the retry
    "leader": (ErrorCode.NETWORK_EXCEPTION, 1),  # the cluster's metadata unreachable
    "no_leader": (ErrorCode.LEADER_NOT_AVAILABLE, 3),  # each of B's three partitions
    "dir_offline": (ErrorCode.KAFKA_STORAGE_ERROR, 1),
    "cluster_error": (ErrorCode.CLUSTER_AUTHORIZATION_FAILED, 1),
    "not_listed": (ErrorCode.NOT_LEADER_OR_FOLLOWER, 1),  # nor after the retry
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_failing_cluster_leaves_out_the_partitions_it_holds(failure: str) -> None:
    h = harness(sealed_on_a=True)
    ok = answering(SIZES)
    broken = {"request": lambda sent: Fail(ErrorCode.NETWORK_EXCEPTION),
              "refused": lambda sent: Refuse(),
              "leader": ok,
              "no_leader": ok,
              "dir_offline": answering(SIZES, dir_code=ErrorCode.KAFKA_STORAGE_ERROR),
              "cluster_error": answering(SIZES, code=ErrorCode.CLUSTER_AUTHORIZATION_FAILED),
              "not_listed": answering({}),
              }[failure]
    if failure == "leader":
        h.failing_clusters.add("B")
    if failure == "no_leader":
        h.leader_errors.update({("B", PHYS, i): ErrorCode.LEADER_NOT_AVAILABLE
                                for i in (0, 1, 3)})
    h.on(LOG_DIRS, lambda sent: broken(sent) if sent.cluster == "B" else ok(sent))
    reply = h.call(request(None))
    # partition 0 (sealed on A, active on B) is left out too: no partial sums
    assert listed(reply) == {("orders", 2): 4_000}
    # every partition left out is counted, under its cause's error code
    code, times = FAILURES[failure]
    assert errors(h) == {code: times}


def errors(h: Harness) -> dict[int, float]:
    """fedkafka_proxy_errors_total{api="DescribeLogDirs"} by error code (non-zero only)."""
    out = {}
    for metric in h.state.metrics.registry.collect():
        for sample in metric.samples:
            if (sample.name == "fedkafka_proxy_errors_total"
                    and sample.labels.get("api") == "DescribeLogDirs" and sample.value):
                out[int(sample.labels["error_code"])] = sample.value
    return out


@pytest.mark.parametrize("failure", ["request", "refused"])
def test_a_dead_broker_whose_leaderships_moved_is_looked_up_again(failure: str) -> None:
    """Broker 2 of B died and Kafka moved its leaderships to broker 1, but the proxy's view
    still names broker 2 (only sealed segments live there: no Produce or Fetch corrects
    it): the view is forgotten and the partitions asked of their new leader."""
    h = harness()
    view = h.state.cluster("B").view
    view.partitions[(PHYS, 1)] = routing_info(2)
    dead = {"request": Fail(ErrorCode.NETWORK_EXCEPTION), "refused": Refuse()}[failure]
    ok = answering(SIZES)
    h.on(LOG_DIRS, lambda sent: dead if sent.node == 2 else ok(sent))
    assert listed(h.call(request({"orders": [1]}))) == {("orders", 1): 300}
    assert [(s.cluster, s.node) for s in h.sent] == [("B", 2), ("B", 1)]
    assert view.partitions[(PHYS, 1)].leader == 1  # the next request asks broker 1 at once
    assert errors(h) == {ErrorCode.NETWORK_EXCEPTION: 1}  # the failure is counted


def test_a_broker_failing_on_the_retry_too_leaves_the_view_forgotten() -> None:
    h = harness()
    h.leaders[("B", PHYS, 1)] = 2  # still named the leader: still unreachable
    h.on(LOG_DIRS, lambda sent: Fail(ErrorCode.NETWORK_EXCEPTION))
    assert listed(h.call(request({"orders": [1]}))) == {}
    assert [(s.cluster, s.node) for s in h.sent] == [("B", 2), ("B", 2)]
    # the next request looks the leader up again (not stuck on a dead broker's name)
    assert h.state.cluster("B").view.partitions[(PHYS, 1)].leader == -1
    assert errors(h) == {ErrorCode.NETWORK_EXCEPTION: 2}


def test_a_stale_leader_is_looked_up_again_once() -> None:
    h = harness()
    h.state.cluster("B").view.partitions[(PHYS, 1)] = routing_info(7)  # stale: broker 7
    h.on(LOG_DIRS, lambda sent: answering({} if sent.node == 7 else SIZES)(sent))
    assert listed(h.call(request({"orders": [1]}))) == {("orders", 1): 300}
    assert [(s.cluster, s.node) for s in h.sent] == [("B", 7), ("B", 1)]


def routing_info(node: int) -> Any:
    from federation.clusters.upstream import PartitionInfo

    return PartitionInfo(node, 0)


def test_denied_without_describe_on_the_cluster_as_kafka() -> None:
    h = harness(acls=(AclRule("User:*", "Topic", "orders", "All"),
                      AclRule("User:*", "Cluster", "kafka-cluster", "Describe", DENY)))
    h.on(LOG_DIRS, answering(SIZES))
    for version in (1, 2, 3, 4):
        reply = h.call(request(None, version))
        assert isinstance(reply, core.Reply)
        assert reply.body.results == ()
        if version >= 3:
            assert int(reply.body.error_code) == ErrorCode.CLUSTER_AUTHORIZATION_FAILED
    assert not h.sent
    # allowed by a rule: served
    h = harness(acls=(AclRule("User:*", "Cluster", "kafka-cluster", "Describe"),))
    h.on(LOG_DIRS, answering(SIZES))
    assert len(listed(h.call(request(None)))) == 4


def test_a_proxy_lists_exactly_the_partitions_it_is_the_metadata_replica_of() -> None:
    pool = (ProxyEndpoint(1, "proxy1", 9092), ProxyEndpoint(2, "proxy2", 9092))
    h = harness(pools={"default": pool})
    h.on(LOG_DIRS, answering(SIZES))
    mine = set(listed(h.call(request(None))))
    md = h.call(make(ApiKey.METADATA, 12, topics=None, allow_auto_topic_creation=False))
    replica_of = {(t.name, int(p.partition_index)) for t in md.body.topics
                  for p in t.partitions if 1 in p.replica_nodes}
    assert mine == replica_of
    assert 0 < len(mine) < 4  # the two proxies share the partitions
    other = {(n, i) for n, i in log_dirs.partitions_of(h.state.fmap, None, pool, 2)}
    assert mine | other == {("orders", i) for i in range(4)} and not mine & other
    assert {routing.leader_for(pool, n, i).node_id for n, i in mine} == {1}


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
def test_every_version_answers(version: int) -> None:
    h = harness()
    h.on(LOG_DIRS, answering(SIZES))
    reply = h.call(request({"orders": [0]}, version))
    assert listed(reply) == {("orders", 0): 1_000}
    assert {int(s.request.__version__) for s in h.sent} == {version}
    assert type(reply.body).__version__ == version


def test_unknown_volume_sizes_are_minus_one() -> None:
    h = harness()
    h.on(LOG_DIRS, answering(SIZES, total=-1, usable=-1))
    [result] = h.call(request(None)).body.results
    assert (int(result.total_bytes), int(result.usable_bytes)) == (-1, -1)


def test_advertised_within_the_clusters_ranges() -> None:
    h = Harness(fmap(), api_versions={LOG_DIRS: (1, 4)})
    assert h.state.advertised()[LOG_DIRS] == (1, 4)
    h = Harness(dataclasses.replace(fmap()), api_versions={ApiKey.METADATA: (0, 12)})
    assert LOG_DIRS not in h.state.advertised()  # a cluster without it: not advertised
