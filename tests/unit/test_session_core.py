"""The proxy core without sockets: every API it serves, driven by scripted upstream answers
and a fake clock (tests/unit/session_harness.py; docs/adr/0024-sans-io-proxy-core.md)."""

from __future__ import annotations

import datetime
import hashlib
import uuid
from typing import Any

import pytest

from federation.controller.rolls import phys_key
from federation.core.credentials import PlainCredential, UserCredentials
from federation.core.model import (
    DENY,
    ROLE_CONSUMER,
    ROLE_PRODUCER,
    AclRule,
    AutoCreatePolicy,
    FederationMap,
    LogicalPartition,
    LogicalTopic,
    PhysicalCluster,
    ProxyEndpoint,
    Segment,
    new_topic_id,
)
from federation.protocol import codec, fetch_wire
from federation.protocol.errors import ErrorCode, to_kio
from federation.protocol.versions import ApiKey
from federation.proxy import apis, core
from federation.proxy.handlers import Session
from federation.proxy.routing import build, replace, resp_module
from federation.proxy.server import CAPS
from tests.kafka_requests import make
from tests.unit.session_harness import (
    NEVER,
    Fail,
    Harness,
    Later,
    Refuse,
    Sent,
    Store,
    fetch_answer,
)
from tests.unit.test_records import build_batch

MS = datetime.timedelta(milliseconds=1)
PHYS = "orders.fk"


def orders(partitions: int = 4, sealed_on_a: bool = False) -> LogicalTopic:
    """Even partitions on cluster A, odd ones on B; logical offsets start at 100 (physical
    0). With ``sealed_on_a``, partition 0 is a sealed segment on A (logical 100..110) then
    the active one on B (logical 110.., physical 50..)."""
    parts = []
    for i in range(partitions):
        if i == 0 and sealed_on_a:
            segs = (Segment("A", PHYS, 0, 100, 0, sealed_end=110), Segment("B", PHYS, 0, 110, 50))
        else:
            segs = (Segment("A" if i % 2 == 0 else "B", PHYS, i, 100, 0),)
        parts.append(LogicalPartition(i, segs))
    return LogicalTopic("orders", new_topic_id("orders", "t"), tuple(parts))


def fmap(**kwargs: Any) -> FederationMap:
    clusters = {c: PhysicalCluster(c, f"{c.lower()}:9092") for c in ("A", "B")}
    topics = {"orders": orders(sealed_on_a=kwargs.pop("sealed_on_a", False))}
    return FederationMap(1, clusters, topics, coordination_cluster="A",
                         auto_create=AutoCreatePolicy(enabled=False), **kwargs)


def harness(**kwargs: Any) -> Harness:
    config = {k: kwargs.pop(k) for k in list(kwargs) if k in ("sasl_required",)}
    h = Harness(fmap(**kwargs), **config)
    return h


# -- upstream answers ---------------------------------------------------------------------


def produce_ok(sent: Sent, base: int = 40, code: int = 0) -> Any:
    req = sent.request
    mod = resp_module(ApiKey.PRODUCE, int(req.__version__))
    topics = tuple(build(mod.TopicProduceResponse, name=t.name, partition_responses=tuple(
        build(mod.PartitionProduceResponse, index=p.index, error_code=to_kio(code),
              base_offset=base if not code else -1, log_append_time=None, log_start_offset=0,
              record_errors=(), error_message=None)
        for p in t.partition_data)) for t in req.topic_data)
    return build(mod.ProduceResponse, responses=topics, throttle_time=0 * MS)


def fetched(sent: Sent, per_partition: dict[int, tuple[int, bytes | None]], code: int = 0
            ) -> fetch_wire.FetchAnswer:
    """A physical Fetch answer: partition → (high watermark, records)."""
    topics = []
    for t in sent.request.topics:
        ps = []
        for p in t.partitions:
            hwm, data = per_partition[int(p.partition)]
            ps.append(fetch_wire.FetchPartition(int(p.partition), code, hwm, hwm, 0, None, -1,
                                                data))
        topics.append(fetch_wire.FetchTopic(t.topic if int(sent.request.__version__) < 13
                                            else None, getattr(t, "topic_id", None), ps))
    return fetch_wire.FetchAnswer(0, 0, 0, topics)


def fetch_request(offsets: dict[int, int], version: int = 12, min_bytes: int = 1,
                  max_wait_ms: int = 500, topic: str = "orders") -> Any:
    parts = tuple(make(ApiKey.FETCH, version, "FetchPartition", partition=p, fetch_offset=o,
                       partition_max_bytes=1 << 20) for p, o in offsets.items())
    t = make(ApiKey.FETCH, version, "FetchTopic", topic=topic, partitions=parts)
    return make(ApiKey.FETCH, version, replica_id=-1, max_wait=max_wait_ms * MS,
                min_bytes=min_bytes, max_bytes=50 << 20, isolation_level=0, topics=(t,))


def produce_request(partitions: list[int], acks: int = -1, version: int = 9,
                    topic: str = "orders") -> Any:
    data = tuple(make(ApiKey.PRODUCE, version, "PartitionProduceData", index=p,
                      records=build_batch(count=2)) for p in partitions)
    t = make(ApiKey.PRODUCE, version, "TopicProduceData", name=topic, partition_data=data)
    return make(ApiKey.PRODUCE, version, transactional_id=None, acks=acks, timeout=3000 * MS,
                topic_data=(t,))


def by_partition(answer: fetch_wire.FetchAnswer) -> dict[int, fetch_wire.FetchPartition]:
    return {p.partition_index: p for t in answer.topics for p in t.partitions}


# -- the registry ---------------------------------------------------------------------------


def test_one_registry_serves_dispatch_versions_and_api_versions() -> None:
    assert CAPS == apis.CAPS == {s.key: (s.min_version, s.max_version) for s in apis.REGISTRY}
    h = harness()
    for spec in apis.REGISTRY:
        assert callable(getattr(h.session, spec.handler)), spec
        assert spec.key in h.session.handlers
    reply = h.call(make(ApiKey.API_VERSIONS, 3, client_software_name="t",
                        client_software_version="1"))
    assert isinstance(reply, core.Reply)
    listed = {int(k.api_key): (int(k.min_version), int(k.max_version))
              for k in reply.body.api_keys}
    assert listed == h.state.advertised()
    # no SASL mechanism offered: the SASL APIs are not advertised
    assert set(listed) == set(CAPS) - apis.SASL_KEYS
    assert not h.sent


def test_an_api_or_version_outside_the_registry_is_answered_unsupported() -> None:
    h = harness()
    # OffsetForLeaderEpoch: the codec knows it, the registry does not list it
    reply = h.call(make(ApiKey.OFFSET_FOR_LEADER_EPOCH, 4))
    assert isinstance(reply, core.Reply)
    assert type(reply.body).__name__ == "OffsetForLeaderEpochResponse"
    errors = h.state.metrics.registry.get_sample_value(
        "fedkafka_proxy_errors_total", {"api": "OffsetForLeaderEpoch", "code": "35"})
    assert errors in (None, 1.0)
    # a version the codec knows but the registry does not serve: UNSUPPORTED_VERSION
    h.state._advertised = {**h.state.advertised(), ApiKey.LIST_OFFSETS: (2, 7)}
    reply = h.call(make(ApiKey.LIST_OFFSETS, 1, replica_id=-1, topics=()))
    assert isinstance(reply, core.Reply)
    assert type(reply.body).__name__ == "ListOffsetsResponse"
    assert not h.sent
    # a version nobody knows: the connection closes (as a broker would)
    frame = bytearray(h.frame(fetch_request({0: 100})))
    frame[2:4] = (3).to_bytes(2, "big")
    out = h.call_frame(bytes(frame))
    assert isinstance(out, core.Close) and out.reason == "undecodable"
    # ApiVersions above what it serves: the v0 fallback, a raw frame
    req = make(ApiKey.API_VERSIONS, 3, client_software_name="t", client_software_version="1")
    frame = bytearray(h.frame(req))
    frame[2:4] = (99).to_bytes(2, "big")
    reply = h.call_frame(bytes(frame))
    assert isinstance(reply, core.Reply) and isinstance(reply.body, core.Raw)


def test_an_undecodable_request_closes_the_connection() -> None:
    h = harness()
    frame = h.frame(fetch_request({0: 100}))
    out = h.call_frame(frame[:-7])
    assert isinstance(out, core.Close) and out.reason == "undecodable"


def test_a_request_over_the_array_limit_closes_the_connection() -> None:
    h = harness(sasl_required=False)
    import dataclasses

    h.state.config = dataclasses.replace(h.state.config, limits=dataclasses.replace(
        h.state.config.limits, max_array_elements=2))
    out = h.call(fetch_request({0: 100, 1: 100, 2: 100, 3: 100}))
    assert isinstance(out, core.Close) and out.reason == "array_limit"
    assert out.limit == "max_array_elements"


# -- Produce --------------------------------------------------------------------------------


def test_produce_splits_over_clusters_and_answers_in_logical_terms() -> None:
    h = harness()
    h.on(ApiKey.PRODUCE, lambda sent: Later(0.01, produce_ok(sent, base=40)))
    reply = h.call(produce_request([0, 1, 2, 3]))
    assert sorted((s.cluster, s.node) for s in h.sent) == [("A", 1), ("B", 1)]
    # both sub-requests written before any answer came back (phase 1), answered after
    assert all(s.at == 1000.0 for s in h.sent) and h.detached_at == 1000.0
    assert isinstance(reply, core.Reply)
    [t] = reply.body.responses
    assert [int(p.index) for p in t.partition_responses] == [0, 1, 2, 3]
    assert all(int(p.base_offset) == 140 for p in t.partition_responses)  # 100 + 40
    assert not h.state.inflight  # every write answered


def test_pipelined_requests_reach_upstream_in_order_without_waiting() -> None:
    """Phase 1 (the writes) runs request by request; phase 2 (the answers) concurrently:
    a second Produce is written before the first one's answer is back."""
    h = harness()
    h.on(ApiKey.PRODUCE, lambda sent: Later(0.2, produce_ok(sent, base=len(h.sent) - 1)))
    first = h.start(produce_request([0]))
    second = h.start(produce_request([2]))
    assert [s.at for s in h.sent] == [1000.0, 1000.0] and h.now == 1000.0
    one, two = h.complete(first), h.complete(second)
    assert int(one.body.responses[0].partition_responses[0].base_offset) == 100
    assert int(two.body.responses[0].partition_responses[0].base_offset) == 101
    assert h.now == pytest.approx(1000.2)


def test_the_asyncio_layer_takes_no_protocol_decision() -> None:
    from pathlib import Path

    import federation.proxy.server as server

    text = Path(server.__file__).read_text()
    assert "ApiKey" not in text and "decode_request" not in text


def test_produce_acks_0_sends_and_answers_nothing() -> None:
    h = harness()
    h.on(ApiKey.PRODUCE, lambda sent: NEVER)
    assert h.call(produce_request([0, 1], acks=0)) is None
    assert len(h.sent) == 2 and all(s.pending is None for s in h.sent)
    assert not h.state.inflight


def test_produce_errors_are_per_partition() -> None:
    h = harness()

    def answer(sent: Sent) -> Any:
        if sent.cluster == "B":
            return Refuse(ErrorCode.NETWORK_EXCEPTION)  # B's broker cannot be reached
        return produce_ok(sent, code=ErrorCode.NOT_LEADER_OR_FOLLOWER
                          if sent.request.topic_data[0].partition_data[0].index == 2 else 0)
    h.on(ApiKey.PRODUCE, answer)
    h.leaders[("A", PHYS, 2)] = 2  # partitions 0 and 2 on different brokers of A
    reply = h.call(produce_request([0, 1, 2, 3]))
    codes = {int(p.index): int(p.error_code) for p in reply.body.responses[0].partition_responses}
    assert codes == {0: 0, 1: ErrorCode.NOT_LEADER_OR_FOLLOWER,
                     2: ErrorCode.NOT_LEADER_OR_FOLLOWER, 3: ErrorCode.NOT_LEADER_OR_FOLLOWER}
    assert not h.state.inflight


def test_produce_without_an_answer_times_out_retriably() -> None:
    h = harness()
    h.on(ApiKey.PRODUCE, lambda sent: NEVER if sent.cluster == "B" else produce_ok(sent))
    reply = h.call(produce_request([0, 1]))
    codes = {int(p.index): int(p.error_code) for p in reply.body.responses[0].partition_responses}
    assert codes == {0: 0, 1: ErrorCode.REQUEST_TIMED_OUT}
    assert h.now == 1000.0 + h.state.request_timeout + 3  # its request's own deadline


def test_produce_to_a_denied_topic_is_refused_without_a_write() -> None:
    h = harness(acls=(AclRule("User:*", "Topic", "orders", "All", DENY),))
    reply = h.call(produce_request([0]))
    assert int(reply.body.responses[0].partition_responses[0].error_code) == \
        ErrorCode.TOPIC_AUTHORIZATION_FAILED
    assert not h.sent


def test_transactional_produce_is_refused() -> None:
    h = harness()
    req = produce_request([0])
    import dataclasses

    reply = h.call(dataclasses.replace(req, transactional_id="tx"))
    assert int(reply.body.responses[0].partition_responses[0].error_code) == \
        ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    assert not h.sent


# -- Fetch ----------------------------------------------------------------------------------


def test_fetch_merges_clusters_with_translated_offsets_and_watermarks() -> None:
    h = harness()
    batch = build_batch(count=3)
    h.on(ApiKey.FETCH, lambda sent: fetched(sent, {p: (10, batch) for p in range(4)}))
    answer = fetch_answer(h.call(fetch_request({0: 100, 1: 100, 2: 100, 3: 100})))
    parts = by_partition(answer)
    assert sorted(parts) == [0, 1, 2, 3]
    assert all(p.high_watermark == 110 and p.error_code == 0 for p in parts.values())
    assert all(int.from_bytes(bytes(p.records[:8]), "big") == 100 for p in parts.values())
    assert sorted(s.cluster for s in h.sent) == ["A", "B"]


def test_fetch_answers_at_min_bytes_only_with_true_watermarks() -> None:
    """A has data at once; B's long poll is out. B's partitions have no known watermarks
    yet: the answer waits for B (a guessed high watermark would be a lie)."""
    h = harness()
    batch = build_batch(count=3)

    def answer(sent: Sent) -> Any:
        if sent.cluster == "A":
            return fetched(sent, {0: (10, batch), 2: (10, batch)})
        return Later(0.3, fetched(sent, {1: (7, None), 3: (7, None)}))
    h.on(ApiKey.FETCH, answer)
    parts = by_partition(fetch_answer(h.call(fetch_request({0: 100, 1: 100, 2: 100, 3: 100}))))
    assert h.now == pytest.approx(1000.3)
    assert parts[1].high_watermark == 107 and parts[3].high_watermark == 107

    # Now B's partitions are known to be caught up (high watermark 107 = the offset asked):
    # the next Fetch answers as soon as A's data is in, B's partitions empty with their
    # (true) known watermarks, while B's long poll stays out.
    h.on(ApiKey.FETCH, lambda sent: fetched(sent, {0: (20, batch), 2: (20, batch)})
         if sent.cluster == "A" else NEVER)
    start = h.now
    parts = by_partition(fetch_answer(h.call(fetch_request({0: 110, 1: 107, 2: 110, 3: 107}))))
    assert h.now == start  # not a moment of waiting
    assert parts[0].high_watermark == 120 and parts[0].records
    assert parts[1].high_watermark == 107 and not parts[1].records


def test_fetch_without_data_answers_at_max_wait() -> None:
    h = harness()
    h.on(ApiKey.FETCH, lambda sent: fetched(sent, {p: (0, None) for p in range(4)}))
    h.call(fetch_request({0: 100, 1: 100, 2: 100, 3: 100}))  # learn: all caught up
    h.on(ApiKey.FETCH, lambda sent: NEVER)
    start = h.now
    parts = by_partition(fetch_answer(h.call(fetch_request({0: 100, 1: 100, 2: 100, 3: 100},
                                                           max_wait_ms=500))))
    assert h.now == pytest.approx(start + 0.5 + 1.0)  # max_wait (+ the proxy's 1 s grace)
    assert all(p.high_watermark == 100 and p.error_code == 0 for p in parts.values())


def test_a_late_sub_fetch_is_reused_by_the_next_fetch() -> None:
    h = harness()
    batch = build_batch(count=3)
    h.on(ApiKey.FETCH, lambda sent: fetched(sent, {p: (0, None) for p in range(4)}))
    h.call(fetch_request({0: 100, 1: 100, 2: 100, 3: 100}))  # all caught up
    # A answers with data at once; B's answer comes 5 s later (after this Fetch is answered)
    h.on(ApiKey.FETCH, lambda sent: fetched(sent, {0: (3, batch), 2: (3, batch)})
         if sent.cluster == "A" else Later(5.0, fetched(sent, {1: (3, batch), 3: (3, batch)})))
    sent_before = len(h.sent)
    parts = by_partition(fetch_answer(h.call(fetch_request({0: 100, 1: 100, 2: 100, 3: 100}))))
    assert parts[0].records and not parts[1].records and parts[1].high_watermark == 100
    assert len(h.sent) == sent_before + 2
    h.advance(6.0)  # B's answer arrives while nobody waits for it
    h.on(ApiKey.FETCH, lambda sent: NEVER)
    parts = by_partition(fetch_answer(h.call(fetch_request({0: 103, 1: 100, 2: 103, 3: 100}))))
    # B's pending answer served this Fetch: no new request to B, its data and watermarks
    assert [s.cluster for s in h.sent[sent_before + 2:]] == ["A"]
    assert parts[1].records and parts[1].high_watermark == 103


def test_one_cluster_failing_fails_only_its_partitions() -> None:
    h = harness()
    batch = build_batch(count=3)
    h.on(ApiKey.FETCH, lambda sent: fetched(sent, {0: (10, batch), 2: (10, batch)})
         if sent.cluster == "A" else Fail(ErrorCode.NETWORK_EXCEPTION, delay=0.05))
    parts = by_partition(fetch_answer(h.call(fetch_request({0: 100, 1: 100, 2: 100, 3: 100}))))
    assert parts[0].error_code == 0 and parts[0].records
    assert parts[1].error_code == ErrorCode.NOT_LEADER_OR_FOLLOWER
    assert parts[3].error_code == ErrorCode.NOT_LEADER_OR_FOLLOWER


def test_a_cluster_without_metadata_fails_only_its_partitions() -> None:
    h = harness()
    h.failing_clusters.add("B")
    h.on(ApiKey.FETCH, lambda sent: fetched(sent, {0: (10, None), 2: (10, None)}))
    parts = by_partition(fetch_answer(h.call(fetch_request({0: 100, 1: 100, 2: 100, 3: 100}))))
    assert parts[0].error_code == 0 and parts[0].high_watermark == 110
    assert parts[1].error_code == ErrorCode.NOT_LEADER_OR_FOLLOWER


def test_fetch_from_a_sealed_segment_reports_the_partitions_true_end() -> None:
    h = harness(sealed_on_a=True)
    h.ends[("B", PHYS, 0)] = 80  # the active segment: physical 80 = logical 140
    batch = build_batch(count=3)
    h.on(ApiKey.FETCH, lambda sent: fetched(sent, {0: (10, batch)}))
    parts = by_partition(fetch_answer(h.call(fetch_request({0: 100}))))
    assert parts[0].high_watermark == 140  # not the seal (110)
    # the active cluster away: the seal is the best known end
    h.failing_clusters.add("B")
    parts = by_partition(fetch_answer(h.call(fetch_request({0: 100}))))
    assert parts[0].high_watermark == 110


def test_fetch_of_a_denied_topic_is_refused_without_a_read() -> None:
    h = harness(acls=(AclRule("User:*", "Topic", "orders", "Read", DENY),))
    parts = by_partition(fetch_answer(h.call(fetch_request({0: 100}))))
    assert parts[0].error_code == ErrorCode.TOPIC_AUTHORIZATION_FAILED
    assert not h.sent


# -- Metadata, roles ------------------------------------------------------------------------


def test_metadata_lists_topics_and_unknown_ones() -> None:
    h = harness()
    req = make(ApiKey.METADATA, 12, topics=(make(ApiKey.METADATA, 12, "MetadataRequestTopic",
                                                 name="orders", topic_id=uuid.UUID(int=0)),
                                            make(ApiKey.METADATA, 12, "MetadataRequestTopic",
                                                 name="nope", topic_id=uuid.UUID(int=0))),
               allow_auto_topic_creation=True)
    reply = h.call(req)
    topics = {t.name: t for t in reply.body.topics}
    assert len(topics["orders"].partitions) == 4
    assert int(topics["nope"].error_code) == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert [b.node_id for b in reply.body.brokers] == [1]
    assert not h.created and not h.sent


def test_metadata_of_an_unknown_topic_starts_its_creation() -> None:
    h = Harness(FederationMap(1, {"A": PhysicalCluster("A", "a:9092")}, {},
                              auto_create=AutoCreatePolicy(enabled=True)))
    req = make(ApiKey.METADATA, 12, topics=(make(ApiKey.METADATA, 12, "MetadataRequestTopic",
                                                 name="fresh", topic_id=uuid.UUID(int=0)),),
               allow_auto_topic_creation=True)
    reply = h.call(req)
    assert int(reply.body.topics[0].error_code) == ErrorCode.LEADER_NOT_AVAILABLE
    assert h.created == ["fresh"]


ROLES_POOL = {"default": (
    ProxyEndpoint(11, "p11", 9092, frozenset({ROLE_PRODUCER})),
    ProxyEndpoint(12, "p12", 9092, frozenset({ROLE_CONSUMER})),
    ProxyEndpoint(13, "p13", 9092, frozenset({ROLE_PRODUCER, ROLE_CONSUMER})),
)}


def metadata_brokers(h: Harness) -> list[int]:
    reply = h.call(make(ApiKey.METADATA, 12, topics=None, allow_auto_topic_creation=False))
    return sorted(b.node_id for b in reply.body.brokers)


def test_roles_a_producer_is_sent_to_producer_proxies_only() -> None:
    h = harness(pools=ROLES_POOL)
    assert metadata_brokers(h) == [13]  # unknown role: proxies with both
    h.on(ApiKey.PRODUCE, produce_ok)
    h.call(produce_request([0]))
    assert metadata_brokers(h) == [11, 13]


def test_roles_a_consumer_is_sent_to_consumer_proxies_only() -> None:
    h = harness(pools=ROLES_POOL)
    h.on(ApiKey.FETCH, lambda sent: fetched(sent, {0: (0, None)}))
    h.call(fetch_request({0: 100}))
    assert metadata_brokers(h) == [12, 13]
    reply = h.call(make(ApiKey.FIND_COORDINATOR, 4, key_type=0, coordinator_keys=("g",)))
    assert reply.body.coordinators[0].node_id in (12, 13)


def test_describe_cluster_lists_the_pool() -> None:
    h = harness(pools=ROLES_POOL)
    reply = h.call(make(ApiKey.DESCRIBE_CLUSTER, 1))
    assert sorted(b.broker_id for b in reply.body.brokers) == [13]


# -- ListOffsets ------------------------------------------------------------------------------


def list_offsets_ok(sent: Sent, offset: int) -> Any:
    req = sent.request
    mod = resp_module(ApiKey.LIST_OFFSETS, int(req.__version__))
    t = req.topics[0]
    return build(mod.ListOffsetsResponse, throttle_time=0 * MS, topics=(build(
        mod.ListOffsetsTopicResponse, name=t.name, partitions=(build(
            mod.ListOffsetsPartitionResponse, partition_index=t.partitions[0].partition_index,
            error_code=to_kio(0), timestamp=-1, offset=offset, leader_epoch=0,
            old_style_offsets=()),)),))


def list_offsets_request(partitions: list[int], timestamp: int = -1) -> Any:
    t = make(ApiKey.LIST_OFFSETS, 7, "ListOffsetsTopic", name="orders", partitions=tuple(
        make(ApiKey.LIST_OFFSETS, 7, "ListOffsetsPartition", partition_index=p,
             timestamp=timestamp, current_leader_epoch=-1) for p in partitions))
    return make(ApiKey.LIST_OFFSETS, 7, replica_id=-1, isolation_level=0, topics=(t,))


def test_list_offsets_translates_each_partition() -> None:
    h = harness()
    h.on(ApiKey.LIST_OFFSETS, lambda sent: list_offsets_ok(sent, 25))
    reply = h.call(list_offsets_request([0, 1]))
    offsets = {int(p.partition_index): int(p.offset) for p in reply.body.topics[0].partitions}
    assert offsets == {0: 125, 1: 125}
    assert sorted(s.cluster for s in h.sent) == ["A", "B"]


def test_list_offsets_of_an_unknown_partition() -> None:
    h = harness()
    reply = h.call(list_offsets_request([9]))
    assert int(reply.body.topics[0].partitions[0].error_code) == \
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


# -- groups ---------------------------------------------------------------------------------


def join_group_answer(sent: Sent, code: int = 0) -> Any:
    mod = resp_module(ApiKey.JOIN_GROUP, int(sent.request.__version__))
    return build(mod.JoinGroupResponse, throttle_time=0 * MS, error_code=to_kio(code),
                 generation_id=1, protocol_type="consumer", protocol_name="range",
                 leader="m", skip_assignment=False, member_id="m", members=())


def join_group() -> Any:
    return make(ApiKey.JOIN_GROUP, 7, group_id="g", session_timeout=10000 * MS,
                rebalance_timeout=10000 * MS, member_id="", protocol_type="consumer",
                protocols=())


def test_group_requests_go_to_the_coordinator_on_the_coordination_cluster() -> None:
    h = harness()
    h.coordinators["g"] = 3
    h.on(ApiKey.JOIN_GROUP, join_group_answer)
    reply = h.call(join_group())
    assert int(reply.body.error_code) == 0
    assert [(s.cluster, s.node) for s in h.sent] == [("A", 3)]
    assert h.detached_at is not None  # answered in phase 2: the next request is not held


def test_not_coordinator_is_retried_once() -> None:
    h = harness()
    answers = iter([ErrorCode.NOT_COORDINATOR, 0])
    h.on(ApiKey.JOIN_GROUP, lambda sent: join_group_answer(sent, next(answers)))
    reply = h.call(join_group())
    assert int(reply.body.error_code) == 0 and len(h.sent) == 2


def test_a_coordinator_away_is_answered_coordinator_not_available() -> None:
    h = harness()
    h.on(ApiKey.JOIN_GROUP, lambda sent: Fail(ErrorCode.NETWORK_EXCEPTION))
    reply = h.call(join_group())
    assert int(reply.body.error_code) == ErrorCode.COORDINATOR_NOT_AVAILABLE


def test_delete_groups_asks_each_groups_coordinator() -> None:
    h = harness()

    def answer(sent: Sent) -> Any:
        mod = resp_module(ApiKey.DELETE_GROUPS, int(sent.request.__version__))
        return build(mod.DeleteGroupsResponse, throttle_time=0 * MS, results=tuple(
            build(mod.DeletableGroupResult, group_id=g, error_code=to_kio(0))
            for g in sent.request.groups_names))
    h.on(ApiKey.DELETE_GROUPS, answer)
    h.coordinators.update({"g1": 1, "g2": 2})
    reply = h.call(make(ApiKey.DELETE_GROUPS, 2, groups_names=("g1", "g2")))
    assert sorted(r.group_id for r in reply.body.results) == ["g1", "g2"]
    assert sorted(s.node for s in h.sent) == [1, 2]


def test_a_denied_group_is_refused_before_anything_is_sent() -> None:
    h = harness(acls=(AclRule("User:*", "Group", "g", "All", DENY),))
    reply = h.call(join_group())
    assert int(reply.body.error_code) == ErrorCode.GROUP_AUTHORIZATION_FAILED
    assert not h.sent


# -- InitProducerId -------------------------------------------------------------------------


def test_init_producer_id_goes_to_the_producer_id_cluster() -> None:
    h = harness()

    def answer(sent: Sent) -> Any:
        mod = resp_module(ApiKey.INIT_PRODUCER_ID, int(sent.request.__version__))
        return build(mod.InitProducerIdResponse, throttle_time=0 * MS, error_code=to_kio(0),
                     producer_id=77, producer_epoch=0)
    h.on(ApiKey.INIT_PRODUCER_ID, answer)
    reply = h.call(make(ApiKey.INIT_PRODUCER_ID, 4, transactional_id=None,
                        transaction_timeout=60000 * MS, producer_id=-1, producer_epoch=-1))
    assert int(reply.body.producer_id) == 77
    assert [(s.cluster, s.node) for s in h.sent] == [("A", None)]  # any connection to A


def test_init_producer_id_upstream_away() -> None:
    h = harness()
    h.on(ApiKey.INIT_PRODUCER_ID, lambda sent: Refuse(ErrorCode.NETWORK_EXCEPTION))
    reply = h.call(make(ApiKey.INIT_PRODUCER_ID, 4, transactional_id=None,
                        transaction_timeout=60000 * MS, producer_id=-1, producer_epoch=-1))
    assert int(reply.body.error_code) == ErrorCode.COORDINATOR_NOT_AVAILABLE


# -- SASL -----------------------------------------------------------------------------------


def plain_users() -> dict[str, UserCredentials]:
    salt = b"s" * 16
    cred = PlainCredential(salt, 4096, hashlib.pbkdf2_hmac("sha256", b"secret", salt, 4096))
    return {"alice": UserCredentials(plain=cred)}


def test_sasl_plain_authenticates_and_unlocks_the_listener() -> None:
    h = harness(users=plain_users(), sasl_required=True)
    metadata = make(ApiKey.METADATA, 12, topics=None, allow_auto_topic_creation=False)
    out = h.call(metadata)
    assert isinstance(out, core.Close) and out.reason == "undecodable"  # before SASL
    reply = h.call(make(ApiKey.SASL_HANDSHAKE, 1, mechanism="PLAIN"))
    assert int(reply.body.error_code) == 0 and "PLAIN" in reply.body.mechanisms
    reply = h.call(make(ApiKey.SASL_AUTHENTICATE, 2, auth_bytes=b"\0alice\0secret"))
    assert int(reply.body.error_code) == 0
    assert h.session.authenticated and str(h.session.principal) == "User:alice"
    assert h.session.close_reason is None
    assert isinstance(h.call(metadata), core.Reply)


def test_sasl_failure_is_answered_then_the_connection_closes() -> None:
    h = harness(users=plain_users(), sasl_required=True)
    h.call(make(ApiKey.SASL_HANDSHAKE, 1, mechanism="PLAIN"))
    reply = h.call(make(ApiKey.SASL_AUTHENTICATE, 2, auth_bytes=b"\0alice\0wrong"))
    assert int(reply.body.error_code) == ErrorCode.SASL_AUTHENTICATION_FAILED
    assert h.session.close_reason == "authentication_failed"


def test_sasl_unknown_mechanism() -> None:
    h = harness(users=plain_users())
    reply = h.call(make(ApiKey.SASL_HANDSHAKE, 1, mechanism="GSSAPI"))
    assert int(reply.body.error_code) == ErrorCode.UNSUPPORTED_SASL_MECHANISM
    assert h.session.close_reason == "authentication_failed"


# -- admin APIs -----------------------------------------------------------------------------


def test_create_topics_denied_never_reaches_the_controller() -> None:
    h = harness(acls=(AclRule("User:*", "Cluster", "kafka-cluster", "All", DENY),
                      AclRule("User:*", "Topic", "*", "Create", DENY)))
    t = make(ApiKey.CREATE_TOPICS, 7, "CreatableTopic", name="new", num_partitions=1,
             replication_factor=1, assignments=(), configs=())
    reply = h.call(make(ApiKey.CREATE_TOPICS, 7, topics=(t,), timeout=1000 * MS,
                        validate_only=False))
    assert int(reply.body.topics[0].error_code) == ErrorCode.TOPIC_AUTHORIZATION_FAILED
    assert not any(isinstance(c, core.SubmitIntent) for c in h.commands)


def test_describe_topic_partitions() -> None:
    h = harness()
    reply = h.call(make(ApiKey.DESCRIBE_TOPIC_PARTITIONS, 0, topics=(make(
        ApiKey.DESCRIBE_TOPIC_PARTITIONS, 0, "TopicRequest", name="orders"),),
        response_partition_limit=3, cursor=None))
    assert [t.name for t in reply.body.topics] == ["orders"]
    assert len(reply.body.topics[0].partitions) == 3
    assert reply.body.next_cursor.partition_index == 3
    assert not h.commands  # answered from the map alone


def test_delete_records_translates_offsets_and_low_watermarks() -> None:
    h = harness(sealed_on_a=True)

    def answer(sent: Sent) -> Any:
        mod = resp_module(ApiKey.DELETE_RECORDS, int(sent.request.__version__))
        t = sent.request.topics[0]
        p = t.partitions[0]
        return build(mod.DeleteRecordsResponse, throttle_time=0 * MS, topics=(build(
            mod.DeleteRecordsTopicResult, name=t.name, partitions=(build(
                mod.DeleteRecordsPartitionResult, partition_index=p.partition_index,
                low_watermark=p.offset, error_code=to_kio(0)),)),))
    h.on(ApiKey.DELETE_RECORDS, answer)
    t = make(ApiKey.DELETE_RECORDS, 2, "DeleteRecordsTopic", name="orders", partitions=(
        make(ApiKey.DELETE_RECORDS, 2, "DeleteRecordsPartition", partition_index=0,
             offset=115),))
    reply = h.call(make(ApiKey.DELETE_RECORDS, 2, topics=(t,), timeout=1000 * MS))
    [p] = reply.body.topics[0].partitions
    assert int(p.error_code) == 0 and int(p.low_watermark) == 115
    # the active segment (B, logical 110 = physical 50) truncated at physical 55, and the
    # sealed one on A deleted entirely (-1: up to its high watermark)
    assert sorted((s.cluster, int(s.request.topics[0].partitions[0].offset))
                  for s in h.sent) == [("A", -1), ("B", 55)]


def test_describe_producers_asks_the_active_segment() -> None:
    h = harness()

    def answer(sent: Sent) -> Any:
        mod = resp_module(ApiKey.DESCRIBE_PRODUCERS, int(sent.request.__version__))
        t = sent.request.topics[0]
        return build(mod.DescribeProducersResponse, throttle_time=0 * MS, topics=(build(
            mod.TopicResponse, name=t.name, partitions=(build(
                mod.PartitionResponse, partition_index=t.partition_indexes[0],
                error_code=to_kio(0), error_message=None, active_producers=(build(
                    mod.ProducerState, producer_id=5, producer_epoch=0, last_sequence=3,
                    last_timestamp=0, coordinator_epoch=-1,
                    current_txn_start_offset=-1),)),)),))
    h.on(ApiKey.DESCRIBE_PRODUCERS, answer)
    t = make(ApiKey.DESCRIBE_PRODUCERS, 0, "TopicRequest", name="orders",
             partition_indexes=(1,))
    reply = h.call(make(ApiKey.DESCRIBE_PRODUCERS, 0, topics=(t,)))
    [p] = reply.body.topics[0].partitions
    assert int(p.partition_index) == 1 and int(p.active_producers[0].producer_id) == 5
    assert [(s.cluster, s.node) for s in h.sent] == [("B", 1)]


def test_every_served_api_reaches_its_handler() -> None:
    """Each API of the registry dispatches (a request of its lowest version, defaulted):
    what it answers does not matter here, only that the core runs it without sockets."""
    for spec in apis.REGISTRY:
        h = harness()
        h.on(spec.key, lambda sent: Fail(ErrorCode.NETWORK_EXCEPTION))
        for key in CAPS:
            h.responders.setdefault(key, lambda sent: Fail(ErrorCode.NETWORK_EXCEPTION))
        seen: list[codec.Request] = []
        real = h.session.handlers[spec.key]

        def spy(req: codec.Request, real: Any = real, seen: list[codec.Request] = seen) -> Any:
            seen.append(req)
            return real(req)
        h.session.handlers[spec.key] = spy
        _, hi = h.state.advertised().get(spec.key, CAPS[spec.key])
        if spec.key in apis.SASL_KEYS:
            continue  # (not advertised without a mechanism: see the SASL tests)
        out = h.call(make(spec.key, hi), strict=False)
        assert seen, spec
        assert isinstance(out, core.Reply | core.Close) or out is None, (spec, out)


def test_session_is_built_without_a_loop() -> None:
    h = harness()
    s = Session(h.state, "x:1", clock=lambda: 0.0)
    assert s.io is None and s.handlers.keys() == h.session.handlers.keys()


# -- more APIs and edge cases ------------------------------------------------------------------


def test_a_retried_write_after_a_roll_is_answered_duplicate_not_written_again() -> None:
    """A roll sealed partition 0 on A (logical 100..110) and opened B (logical 110..):
    a retried idempotent batch the sealed segment already holds is DUPLICATE_SEQUENCE_NUMBER;
    one out of sequence a retriable error; the next in sequence is written."""
    h = harness(sealed_on_a=True)
    topic = h.state.fmap.topics["orders"]
    sealed, active = topic.partitions[0].segments
    key = phys_key(active)
    h.state.recent_rolls[key] = (sealed, h.now)
    h.sealed[key] = {7: (0, 9)}  # producer 7, epoch 0, last sequence 9 in the sealed one
    h.on(ApiKey.PRODUCE, lambda sent: produce_ok(sent, base=60))

    def write(seq: int) -> int:
        req = produce_request([0])
        data = build_batch(count=5, producer_id=7, producer_epoch=0, base_sequence=seq)
        t = req.topic_data[0]
        req = replace(req, topic_data=(replace(t, partition_data=(
            replace(t.partition_data[0], records=data),)),))
        reply = h.call(req)
        return int(reply.body.responses[0].partition_responses[0].error_code)

    assert write(5) == ErrorCode.DUPLICATE_SEQUENCE_NUMBER  # 5..9: in the sealed segment
    assert write(15) == ErrorCode.NOT_LEADER_OR_FOLLOWER  # 10..14 must come first
    assert not h.sent
    assert write(10) == 0  # the one after the seal: written, to B (the active segment)
    assert [s.cluster for s in h.sent] == ["B"]
    assert (key, 7) in h.state.roll_established
    assert write(15) == 0  # established: no more checks
    assert not h.state.inflight


def test_fetch_by_topic_id() -> None:
    h = harness()
    topic = h.state.fmap.topics["orders"]
    phys_id = uuid.uuid4()
    for c in ("A", "B"):
        view = h.state.cluster(c).view
        view.topic_ids[PHYS] = phys_id
        view.topic_names[phys_id] = PHYS
    batch = build_batch(count=2)
    h.on(ApiKey.FETCH, lambda sent: fetched(sent, {0: (5, batch), 1: (5, batch)}))
    parts = tuple(make(ApiKey.FETCH, 15, "FetchPartition", partition=p, fetch_offset=100,
                       partition_max_bytes=1 << 20) for p in (0, 1))
    req = make(ApiKey.FETCH, 15, max_wait=500 * MS, min_bytes=1, max_bytes=1 << 20,
               isolation_level=0, topics=(make(ApiKey.FETCH, 15, "FetchTopic",
                                               topic_id=topic.topic_id, partitions=parts),))
    answer = fetch_answer(h.call(req))
    assert answer.topics[0].topic_id == topic.topic_id  # the logical id, not the physical
    assert {p.partition_index: p.high_watermark for p in answer.topics[0].partitions} == \
        {0: 105, 1: 105}
    assert all(s.request.topics[0].topic_id == phys_id for s in h.sent)
    # an id this federation does not know
    unknown = replace(req, topics=(replace(req.topics[0], topic_id=uuid.uuid4()),))
    parts_out = by_partition(fetch_answer(h.call(unknown)))
    assert parts_out[0].error_code == ErrorCode.UNKNOWN_TOPIC_ID


def test_offset_fetch_of_several_groups_at_once_is_refused() -> None:
    h = harness()
    groups = tuple(make(ApiKey.OFFSET_FETCH, 8, "OffsetFetchRequestGroup", group_id=g,
                        topics=None) for g in ("g1", "g2"))
    reply = h.call(make(ApiKey.OFFSET_FETCH, 8, groups=groups, require_stable=False))
    assert {int(g.error_code) for g in reply.body.groups} == {ErrorCode.INVALID_REQUEST}
    assert not h.sent


def test_describe_groups_merges_each_groups_coordinator() -> None:
    h = harness()
    h.coordinators.update({"g1": 1, "g2": 2})

    def answer(sent: Sent) -> Any:
        mod = resp_module(ApiKey.DESCRIBE_GROUPS, int(sent.request.__version__))
        return build(mod.DescribeGroupsResponse, throttle_time=0 * MS, groups=tuple(
            build(mod.DescribedGroup, error_code=to_kio(0), group_id=g, group_state="Stable",
                  protocol_type="consumer", protocol_data="range", members=(),
                  authorized_operations=-2147483648) for g in sent.request.groups))
    h.on(ApiKey.DESCRIBE_GROUPS, answer)
    reply = h.call(make(ApiKey.DESCRIBE_GROUPS, 5, groups=("g1", "g2"),
                        include_authorized_operations=False))
    assert [g.group_id for g in reply.body.groups] == ["g1", "g2"]
    assert sorted(s.node for s in h.sent) == [1, 2]


def test_list_groups_asks_every_broker_of_the_coordination_cluster() -> None:
    h = harness()
    h.state.cluster("A").view.brokers.update({1: ("a1", 9092), 2: ("a2", 9092)})

    def answer(sent: Sent) -> Any:
        mod = resp_module(ApiKey.LIST_GROUPS, int(sent.request.__version__))
        return build(mod.ListGroupsResponse, throttle_time=0 * MS, error_code=to_kio(0),
                     groups=(build(mod.ListedGroup, group_id=f"g{sent.node}",
                                   protocol_type="consumer", group_state="Stable",
                                   group_type="classic"),))
    h.on(ApiKey.LIST_GROUPS, answer)
    reply = h.call(make(ApiKey.LIST_GROUPS, 4, states_filter=()))
    assert sorted(g.group_id for g in reply.body.groups) == ["g1", "g2"]


def test_a_transactional_init_producer_id_is_refused() -> None:
    h = harness()
    reply = h.call(make(ApiKey.INIT_PRODUCER_ID, 4, transactional_id="tx",
                        transaction_timeout=60000 * MS, producer_id=-1, producer_epoch=-1))
    assert int(reply.body.error_code) in (ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,)
    assert not h.sent


def test_fetch_splits_max_bytes_over_its_sub_fetches() -> None:
    h = harness()
    h.on(ApiKey.FETCH, lambda sent: fetched(sent, {p: (0, None) for p in range(4)}))
    req = replace(fetch_request({0: 100, 1: 100, 2: 100, 3: 100}), max_bytes=1000)
    h.call(req)
    assert [int(s.request.max_bytes) for s in h.sent] == [500, 500]
    assert all(int(s.request.session_id) == 0 for s in h.sent)


def describe_configs_answer(sent: Sent, configs: dict[str, str]) -> Any:
    mod = resp_module(ApiKey.DESCRIBE_CONFIGS, int(sent.request.__version__))
    r = sent.request.resources[0]
    return build(mod.DescribeConfigsResponse, throttle_time=0 * MS, results=(build(
        mod.DescribeConfigsResult, error_code=to_kio(0), error_message=None,
        resource_type=r.resource_type, resource_name=r.resource_name, configs=tuple(
            build(mod.DescribeConfigsResourceResult, name=k, value=v, read_only=False,
                  config_source=1, is_sensitive=False, synonyms=(), config_type=2,
                  documentation=None) for k, v in configs.items())),))


def test_describe_configs_of_a_topic_and_of_a_broker() -> None:
    h = harness()
    h.state.cluster("A").view.brokers.update({4: ("a4", 9092), 2: ("a2", 9092)})
    h.on(ApiKey.DESCRIBE_CONFIGS, lambda sent: describe_configs_answer(
        sent, {"retention.ms": "1000", "broker.id": "2"}))
    resources = (make(ApiKey.DESCRIBE_CONFIGS, 4, "DescribeConfigsResource", resource_type=2,
                      resource_name="orders", configuration_keys=None),
                 make(ApiKey.DESCRIBE_CONFIGS, 4, "DescribeConfigsResource", resource_type=4,
                      resource_name="1", configuration_keys=None))
    reply = h.call(make(ApiKey.DESCRIBE_CONFIGS, 4, resources=resources,
                        include_synonyms=False, include_documentation=False))
    topic, broker = reply.body.results
    assert {c.name: c.value for c in topic.configs}["retention.ms"] == "1000"
    assert "fedkafka.strategy" in {c.name for c in topic.configs}
    assert {c.name: c.value for c in broker.configs}["broker.id"] == "1"  # the proxy's id
    # the topic asked on its active segment's physical topic; the broker config of the
    # producer-id cluster's lowest broker, on the proxy's shared connections
    assert sorted(((s.cluster, s.node, s.request.resources[0].resource_name, s.shared)
                   for s in h.sent), key=str) == [("A", 2, "2", True), ("A", None, PHYS, True)]


def test_alter_configs_validates_everywhere_before_changing_anything() -> None:
    h = harness()

    def answer(sent: Sent) -> Any:
        mod = resp_module(sent.api_key, int(sent.request.__version__))
        refused = sent.cluster == "B" and sent.request.validate_only
        return build(mod.IncrementalAlterConfigsResponse, throttle_time=0 * MS, responses=tuple(
            build(mod.AlterConfigsResourceResponse,
                  error_code=to_kio(ErrorCode.INVALID_CONFIG if refused else 0),
                  error_message="no" if refused else None, resource_type=r.resource_type,
                  resource_name=r.resource_name) for r in sent.request.resources))
    h.on(ApiKey.INCREMENTAL_ALTER_CONFIGS, answer)
    r = make(ApiKey.INCREMENTAL_ALTER_CONFIGS, 1, "AlterConfigsResource", resource_type=2,
             resource_name="orders", configs=(make(
                 ApiKey.INCREMENTAL_ALTER_CONFIGS, 1, "AlterableConfig", name="retention.ms",
                 config_operation=0, value="5"),))
    reply = h.call(make(ApiKey.INCREMENTAL_ALTER_CONFIGS, 1, resources=(r,),
                        validate_only=False))
    [result] = reply.body.responses
    assert int(result.error_code) == ErrorCode.INVALID_CONFIG
    assert all(s.request.validate_only for s in h.sent)  # nothing was changed
    assert sorted(s.cluster for s in h.sent) == ["A", "B"]


def test_alter_configs_records_the_config_only_once_the_brokers_show_the_change() -> None:
    # Kafka (KRaft) answers an alter once its controller committed it; its brokers apply
    # the change a moment later. A DescribeConfigs read at once could still show a config
    # just deleted, and the map recorded it (a flaky integration test found it).
    h = harness()
    h.state.backend = Store(h.state.fmap)
    recorded: list[dict[str, str]] = []

    def controller(kind: str, args: dict[str, Any]) -> Any:
        assert kind == "set_topic_config" and args["name"] == "orders"
        recorded.append(args["config"])
        return {"status": "applied", "version": 1, "result": {}}

    h.controller = controller
    altered: list[float] = []
    stale_reads = {"A": 3, "B": 1}  # describes still answering the old configs

    def alter(sent: Sent) -> Any:
        if not sent.request.validate_only:
            altered.append(h.now)
        mod = resp_module(sent.api_key, int(sent.request.__version__))
        return build(mod.IncrementalAlterConfigsResponse, throttle_time=0 * MS, responses=tuple(
            build(mod.AlterConfigsResourceResponse, error_code=to_kio(0), error_message=None,
                  resource_type=r.resource_type, resource_name=r.resource_name)
            for r in sent.request.resources))

    def describe(sent: Sent) -> Any:
        if altered and stale_reads[sent.cluster]:
            stale_reads[sent.cluster] -= 1
            return describe_configs_answer(sent, {"retention.ms": "1", "cleanup.policy": "compact"})
        return describe_configs_answer(sent, {"cleanup.policy": "compact"})

    h.on(ApiKey.INCREMENTAL_ALTER_CONFIGS, alter)
    h.on(ApiKey.DESCRIBE_CONFIGS, describe)
    r = make(ApiKey.INCREMENTAL_ALTER_CONFIGS, 1, "AlterConfigsResource", resource_type=2,
             resource_name="orders", configs=(make(
                 ApiKey.INCREMENTAL_ALTER_CONFIGS, 1, "AlterableConfig", name="retention.ms",
                 config_operation=1, value=None),))
    reply = h.call(make(ApiKey.INCREMENTAL_ALTER_CONFIGS, 1, resources=(r,),
                        validate_only=False))
    [result] = reply.body.responses
    assert int(result.error_code) == 0
    assert stale_reads == {"A": 0, "B": 0}  # read again until both clusters show it
    assert recorded == [{"cleanup.policy": "compact"}]
    assert h.now - altered[0] < 1.0  # polled, not waited out


def test_alter_configs_shown_by_the_brokers() -> None:
    from federation.proxy.configs import _shows

    def op(name: str, operation: int, value: str | None) -> Any:
        return make(ApiKey.INCREMENTAL_ALTER_CONFIGS, 1, "AlterableConfig", name=name,
                    config_operation=operation, value=value)

    r = make(ApiKey.INCREMENTAL_ALTER_CONFIGS, 1, "AlterConfigsResource", resource_type=2,
             resource_name="t", configs=(op("retention.ms", 0, "5"), op("segment.ms", 1, None),
                                         op("cleanup.policy", 2, "compact"),
                                         op("follower.replication.throttled.replicas", 3,
                                            "1:1")))
    shows = _shows(r, incremental=True)
    assert shows({"retention.ms": "5", "cleanup.policy": "delete,compact"})
    assert not shows({"retention.ms": "4", "cleanup.policy": "compact"})
    assert not shows({"retention.ms": "5", "cleanup.policy": "compact", "segment.ms": "1"})
    assert not shows({"retention.ms": "5", "cleanup.policy": "delete"})
    assert not shows({"retention.ms": "5", "cleanup.policy": "compact",
                      "follower.replication.throttled.replicas": "1:1,2:2"})
    whole = make(ApiKey.ALTER_CONFIGS, 2, "AlterConfigsResource", resource_type=2,
                 resource_name="t", configs=(make(ApiKey.ALTER_CONFIGS, 2, "AlterableConfig",
                                                  name="retention.ms", value="5"),))
    assert _shows(whole, incremental=False)({"retention.ms": "5"})
    assert not _shows(whole, incremental=False)({"retention.ms": "5", "segment.ms": "1"})
