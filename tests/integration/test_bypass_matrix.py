"""The bypass matrix (issue 11): every API a proxy serves x {no credentials, wrong
credentials, a principal without the ACL, a principal with it}.

One in-process proxy with ``sasl_required``, SASL/PLAIN from a test plugin, and the rules
of the built-in ACL plugin in the map: alice may do everything on ``bm-*`` topics and
groups (and describe the broker's configs); mallory authenticates but has no rule. Raw
requests, so every answer is checked as Kafka gives it:

* no credentials / wrong credentials: ApiVersions (and the SASL handshake) are answered,
  the wrong password gets SASL_AUTHENTICATION_FAILED, and every other API closes the
  connection without an answer;
* mallory: Kafka's error code for each API (TOPIC_/GROUP_/CLUSTER_AUTHORIZATION_FAILED),
  lists without what she may not describe, DescribeCluster and ApiVersions answered;
* alice: success everywhere.

Between the rows, the physical clusters and the map show that nothing the denied rows
asked for happened: the topic mallory deleted is still on every cluster, the one she
created is nowhere, records, partitions, configs and committed offsets are unchanged.
Then alice does it all.
"""

from __future__ import annotations

import datetime
import socket
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka.record.default_records import DefaultRecordBatchBuilder

from federation.clusters import admin
from federation.core.model import AclRule, FederationMap, Principal
from federation.plugin import get_plugins, hookimpl
from federation.protocol import decode_response, encode_request
from tests.kafka_requests import make

from .fedtopics import backend_of, create_logical_topic, route_to_proxy
from .inprocess import InProcessProxy

pytestmark = pytest.mark.integration

TOPIC, LOCKED, DOOMED, GROW = "bm-topic", "bm-locked", "bm-doomed", "bm-grow"
GROUP = "bm-group"
NEW = f"bm-new-{uuid.uuid4().hex[:8]}"
NODE_ID = 1904
USERS = {"alice": "wonderland", "mallory": "mallory-pw", "carol": "carol-pw",
         "dave": "dave-pw"}
OK, TOPIC_DENIED, GROUP_DENIED, CLUSTER_DENIED, SASL_FAILED = 0, 29, 30, 31, 58
MEMBER_ID_REQUIRED = 79
CLOSED = "closed without an answer"
SECONDS_30 = datetime.timedelta(seconds=30)
SESSION_TIMEOUT = datetime.timedelta(seconds=120)  # outlives a stalled coordinator

ALICE_RULES = [
    AclRule("User:alice", "Topic", "bm-", "All", pattern_type="PREFIXED"),
    AclRule("User:alice", "Group", "bm-", "All", pattern_type="PREFIXED"),
    AclRule("User:alice", "Cluster", "kafka-cluster", "DescribeConfigs"),
    AclRule("User:alice", "Cluster", "kafka-cluster", "Describe"),  # DescribeLogDirs
    AclRule("User:alice", "Topic", LOCKED, "Write", permission="DENY"),  # deny wins
]


class PlainUsers:
    """SASL/PLAIN against a fixed table (a test authenticator)."""

    @hookimpl
    def fedkafka_sasl_mechanisms(self) -> list[str]:
        return ["PLAIN"]

    @hookimpl
    def fedkafka_authenticate(self, mechanism: str, auth_bytes: bytes) -> Principal | None:
        if mechanism != "PLAIN":
            return None
        _authzid, user, password = auth_bytes.decode().split("\0")
        if user not in USERS:
            return None
        if USERS[user] != password:
            raise PermissionError(f"bad password for {user}")
        return Principal(user)


class Closed(Exception):
    """The proxy closed the connection without answering."""


class Conn:
    """One raw Kafka connection to the proxy."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.correlation = 0

    def send(self, entity: Any) -> Any:
        self.correlation += 1
        try:
            self.sock.sendall(b"".join(encode_request(entity, self.correlation, "fk-bm")))
            (size,) = struct.unpack(">i", self._exact(4))
            frame = self._exact(size)
        except (ConnectionResetError, BrokenPipeError) as e:
            raise Closed(str(e)) from None
        cid, response = decode_response(int(entity.__api_key__), int(entity.__version__),
                                        frame)
        assert cid == self.correlation
        return response

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise Closed(f"after {len(data)} of {n} bytes")
            data += chunk
        return data

    def sasl(self, user: str, password: str) -> int:
        handshake = self.send(make(17, 1, mechanism="PLAIN"))
        assert int(handshake.error_code) == OK and "PLAIN" in handshake.mechanisms
        answer = self.send(make(36, 2, auth_bytes=f"\0{user}\0{password}".encode()))
        return int(answer.error_code)

    def close(self) -> None:
        self.sock.close()


# -- request builders ----------------------------------------------------------------------


def _batch(values: list[bytes]) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 20)
    now = int(time.time() * 1000)
    for i, value in enumerate(values):
        builder.append(i, timestamp=now, key=None, value=value, headers=[])
    return bytes(builder.build())


def produce(topic: str, values: list[bytes]) -> Any:
    return make(0, 9, transactional_id=None, acks=-1, timeout=SECONDS_30, topic_data=(
        make(0, 9, "TopicProduceData", name=topic, partition_data=(
            make(0, 9, "PartitionProduceData", index=0, records=_batch(values)),)),))


def _subscription(topic: str) -> bytes:
    name = topic.encode()
    return struct.pack(">hih", 0, 1, len(name)) + name + struct.pack(">i", -1)


def _assignment(topic: str, partitions: list[int]) -> bytes:
    name = topic.encode()
    return (struct.pack(">hih", 0, 1, len(name)) + name + struct.pack(">i", len(partitions))
            + b"".join(struct.pack(">i", p) for p in partitions) + struct.pack(">i", -1))


def join(member_id: str) -> Any:
    return make(11, 9, group_id=GROUP, session_timeout=SESSION_TIMEOUT,
                rebalance_timeout=SECONDS_30,
                member_id=member_id, group_instance_id=None, protocol_type="consumer",
                protocols=(make(11, 9, "JoinGroupRequestProtocol", name="range",
                                metadata=_subscription(TOPIC)),), reason=None)


def offset_commit(generation: int, member_id: str, offsets: dict[int, int]) -> Any:
    return make(8, 8, group_id=GROUP, generation_id_or_member_epoch=generation,
                member_id=member_id, group_instance_id=None, topics=(
                    make(8, 8, "OffsetCommitRequestTopic", name=TOPIC, partitions=tuple(
                        make(8, 8, "OffsetCommitRequestPartition", partition_index=p,
                             committed_offset=o, committed_leader_epoch=-1,
                             committed_metadata=None) for p, o in offsets.items())),))


def offset_fetch() -> Any:
    return make(9, 8, require_stable=False, groups=(make(
        9, 8, "OffsetFetchRequestGroup", group_id=GROUP, topics=(make(
            9, 8, "OffsetFetchRequestTopics", name=TOPIC, partition_indexes=(0, 1)),)),))


#: Answers a client retries (after finding the coordinator again), as Kafka clients do.
COORDINATOR_RETRIABLE = {14, 15, 16}  # load in progress, not available, not coordinator


def coordinated(call: Callable[[], Any], codes: Callable[[Any], tuple[int, ...]]) -> Any:
    """``call()`` again while its answer is a coordinator error (for up to 90 s: a broker
    of a loaded test machine may stall for a while)."""
    deadline = time.monotonic() + 90
    while True:
        answer = call()
        if not COORDINATOR_RETRIABLE & set(codes(answer)) or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def _partition_codes(resp: Any) -> tuple[int, ...]:
    return tuple(int(p.error_code) for t in resp.topics for p in t.partitions)


def _codes(entries: Any, field: str = "error_code") -> tuple[int, ...]:
    return tuple(int(getattr(e, field)) for e in entries)


# -- the steps: one per API, each returning what the answer says -------------------------

Step = Callable[[Conn, dict[str, Any]], Any]


def s_api_versions(c: Conn, ctx: dict[str, Any]) -> Any:
    return (int(c.send(make(18, 3, client_software_name="fk-bm",
                            client_software_version="1")).error_code),)


def s_metadata(c: Conn, ctx: dict[str, Any]) -> Any:
    named = c.send(make(3, 12, topics=(make(3, 12, "MetadataRequestTopic", topic_id=None,
                                           name=TOPIC),),
                        allow_auto_topic_creation=False,
                        include_topic_authorized_operations=False))
    everything = c.send(make(3, 12, topics=None, allow_auto_topic_creation=False,
                             include_topic_authorized_operations=False))
    return _codes(named.topics), TOPIC in {t.name for t in everything.topics}


def s_describe_cluster(c: Conn, ctx: dict[str, Any]) -> Any:
    return (int(c.send(make(60, 1, include_cluster_authorized_operations=False,
                            endpoint_type=1)).error_code),)


def s_list_offsets(c: Conn, ctx: dict[str, Any]) -> Any:
    resp = c.send(make(2, 7, replica_id=-1, isolation_level=0, topics=(
        make(2, 7, "ListOffsetsTopic", name=TOPIC, partitions=tuple(
            make(2, 7, "ListOffsetsPartition", partition_index=p, current_leader_epoch=-1,
                 timestamp=-1) for p in (0, 1))),)))
    return tuple(int(p.error_code) for t in resp.topics for p in t.partitions)


def s_produce(c: Conn, ctx: dict[str, Any]) -> Any:
    resp = c.send(produce(TOPIC, [b"from-" + ctx["who"].encode()]))
    return tuple(int(p.error_code) for t in resp.responses for p in t.partition_responses)


def s_fetch(c: Conn, ctx: dict[str, Any]) -> Any:
    resp = c.send(make(1, 12, replica_id=-1, max_wait=datetime.timedelta(milliseconds=100),
                       min_bytes=1, max_bytes=1 << 20, isolation_level=0, session_id=0,
                       session_epoch=-1, forgotten_topics_data=(), rack_id="", topics=(
                           make(1, 12, "FetchTopic", topic=TOPIC, partitions=(
                               make(1, 12, "FetchPartition", partition=0,
                                    current_leader_epoch=-1, fetch_offset=0,
                                    last_fetched_epoch=-1, log_start_offset=-1,
                                    partition_max_bytes=1 << 20),)),)))
    return tuple(int(p.error_code) for t in resp.responses for p in t.partitions)


def s_init_producer_id(c: Conn, ctx: dict[str, Any]) -> Any:
    resp = coordinated(lambda: c.send(make(22, 4, transactional_id=None,
                                           transaction_timeout=SECONDS_30, producer_id=-1,
                                           producer_epoch=-1)),
                       lambda r: (int(r.error_code),))
    return (int(resp.error_code),)


def s_describe_producers(c: Conn, ctx: dict[str, Any]) -> Any:
    resp = c.send(make(61, 0, topics=(make(61, 0, "TopicRequest", name=TOPIC,
                                           partition_indexes=(0,)),)))
    return tuple(int(p.error_code) for t in resp.topics for p in t.partitions)


def _top(resp: Any) -> tuple[int, ...]:
    return (int(resp.error_code),)


def s_find_coordinator(c: Conn, ctx: dict[str, Any]) -> Any:
    return _codes(c.send(make(10, 4, key_type=0, coordinator_keys=(GROUP,))).coordinators)


def s_join_group(c: Conn, ctx: dict[str, Any]) -> Any:
    def top(r: Any) -> tuple[int, ...]:
        return (int(r.error_code),)
    resp = coordinated(lambda: c.send(join("")), top)
    if int(resp.error_code) == MEMBER_ID_REQUIRED:  # Kafka's first round: our member id
        member = resp.member_id
        resp = coordinated(lambda: c.send(join(member)), top)
    ctx["member_id"], ctx["generation"] = resp.member_id or "m", int(resp.generation_id)
    return (int(resp.error_code),)


def s_sync_group(c: Conn, ctx: dict[str, Any]) -> Any:
    member = ctx.get("member_id", "m")
    return _top(coordinated(lambda: c.send(make(
        14, 5, group_id=GROUP, generation_id=ctx.get("generation", 1), member_id=member,
        group_instance_id=None, protocol_type="consumer", protocol_name="range",
        assignments=(make(14, 5, "SyncGroupRequestAssignment", member_id=member,
                          assignment=_assignment(TOPIC, [0, 1])),))), _top))


def s_heartbeat(c: Conn, ctx: dict[str, Any]) -> Any:
    return _top(coordinated(lambda: c.send(make(
        12, 4, group_id=GROUP, generation_id=ctx.get("generation", 1),
        member_id=ctx.get("member_id", "m"), group_instance_id=None)), _top))


def s_offset_commit(c: Conn, ctx: dict[str, Any]) -> Any:
    resp = coordinated(lambda: c.send(offset_commit(
        ctx.get("generation", 1), ctx.get("member_id", "m"), {0: 2, 1: 0})), _partition_codes)
    return _partition_codes(resp)


def s_offset_fetch(c: Conn, ctx: dict[str, Any]) -> Any:
    [group] = coordinated(lambda: c.send(offset_fetch()),
                          lambda r: tuple(int(g.error_code) for g in r.groups)).groups
    return (int(group.error_code), *(int(p.error_code) for t in group.topics
                                     for p in t.partitions))


def s_describe_groups(c: Conn, ctx: dict[str, Any]) -> Any:
    return _codes(coordinated(lambda: c.send(make(15, 5, groups=(GROUP,),
                                                  include_authorized_operations=False)),
                              lambda r: _codes(r.groups)).groups)


def s_list_groups(c: Conn, ctx: dict[str, Any]) -> Any:
    resp = coordinated(lambda: c.send(make(16, 4, states_filter=())), _top)
    return int(resp.error_code), GROUP in {g.group_id for g in resp.groups}


def s_leave_group(c: Conn, ctx: dict[str, Any]) -> Any:
    return _top(coordinated(lambda: c.send(make(13, 5, group_id=GROUP, members=(
        make(13, 5, "MemberIdentity", member_id=ctx.get("member_id", "m"),
             group_instance_id=None, reason=None),))), _top))


def s_offset_delete(c: Conn, ctx: dict[str, Any]) -> Any:
    def codes(r: Any) -> tuple[int, ...]:
        return (int(r.error_code), *_partition_codes(r))
    return codes(coordinated(lambda: c.send(make(47, 0, group_id=GROUP, topics=(
        make(47, 0, "OffsetDeleteRequestTopic", name=TOPIC, partitions=(
            make(47, 0, "OffsetDeleteRequestPartition", partition_index=1),)),))), codes))


def s_delete_groups(c: Conn, ctx: dict[str, Any]) -> Any:
    return _codes(coordinated(lambda: c.send(make(42, 2, groups_names=(GROUP,))),
                              lambda r: _codes(r.results)).results)


def s_describe_configs(c: Conn, ctx: dict[str, Any]) -> Any:
    return _codes(c.send(make(32, 4, include_synonyms=False, include_documentation=False,
                              resources=(
        make(32, 4, "DescribeConfigsResource", resource_type=2, resource_name=TOPIC,
             configuration_keys=None),
        make(32, 4, "DescribeConfigsResource", resource_type=4, resource_name=str(NODE_ID),
             configuration_keys=("log.retention.hours",))))).results)


def s_describe_log_dirs(c: Conn, ctx: dict[str, Any]) -> Any:
    resp = c.send(make(35, 4, topics=None))
    return int(resp.error_code), TOPIC in {t.name for r in resp.results for t in r.topics}


def s_alter_configs(c: Conn, ctx: dict[str, Any]) -> Any:
    return _codes(c.send(make(33, 2, validate_only=False, resources=(
        make(33, 2, "AlterConfigsResource", resource_type=2, resource_name=TOPIC, configs=(
            make(33, 2, "AlterableConfig", name="retention.ms", value=ctx["retention"]),)),
    ))).responses)


def s_incremental_alter_configs(c: Conn, ctx: dict[str, Any]) -> Any:
    return _codes(c.send(make(44, 1, validate_only=False, resources=(
        make(44, 1, "AlterConfigsResource", resource_type=2, resource_name=TOPIC, configs=(
            make(44, 1, "AlterableConfig", name="segment.ms", config_operation=0,
                 value=ctx["retention"]),)),
    ))).responses)


def s_create_topics(c: Conn, ctx: dict[str, Any]) -> Any:
    return _codes(c.send(make(19, 7, timeout=SECONDS_30, validate_only=False, topics=(
        make(19, 7, "CreatableTopic", name=NEW, num_partitions=1, replication_factor=-1,
             assignments=(), configs=()),))).topics)


def s_create_partitions(c: Conn, ctx: dict[str, Any]) -> Any:
    return _codes(c.send(make(37, 3, timeout=SECONDS_30, validate_only=False, topics=(
        make(37, 3, "CreatePartitionsTopic", name=GROW, count=3, assignments=None),))).results)


def s_delete_records(c: Conn, ctx: dict[str, Any]) -> Any:
    resp = c.send(make(21, 2, timeout=SECONDS_30, topics=(
        make(21, 2, "DeleteRecordsTopic", name=TOPIC, partitions=(
            make(21, 2, "DeleteRecordsPartition", partition_index=0, offset=1),)),)))
    return tuple(int(p.error_code) for t in resp.topics for p in t.partitions)


def s_delete_topics(c: Conn, ctx: dict[str, Any]) -> Any:
    return _codes(c.send(make(20, 6, timeout=SECONDS_30, topics=(
        make(20, 6, "DeleteTopicState", name=DOOMED, topic_id=uuid.UUID(int=0)),))).responses)


def s_describe_topic_partitions(c: Conn, ctx: dict[str, Any]) -> Any:
    resp = c.send(make(75, 0, response_partition_limit=100, cursor=None,
                       topics=(make(75, 0, "TopicRequest", name=TOPIC),)))
    return _codes(resp.topics)


def s_produce_locked(c: Conn, ctx: dict[str, Any]) -> Any:
    resp = c.send(produce(LOCKED, [b"never"]))
    return tuple(int(p.error_code) for t in resp.responses for p in t.partition_responses)


# (API, step, mallory's answer, alice's answer), in an order alice's group can follow.
STEPS: list[tuple[str, Step, Any, Any]] = [
    ("ApiVersions", s_api_versions, (OK,), (OK,)),
    ("Metadata", s_metadata, ((TOPIC_DENIED,), False), ((OK,), True)),
    ("DescribeTopicPartitions", s_describe_topic_partitions, (TOPIC_DENIED,), (OK,)),
    ("DescribeCluster", s_describe_cluster, (OK,), (OK,)),  # as a Kafka broker: no ACL
    ("ListOffsets", s_list_offsets, (TOPIC_DENIED,) * 2, (OK,) * 2),
    ("Produce", s_produce, (TOPIC_DENIED,), (OK,)),
    ("Produce (DENY rule)", s_produce_locked, (TOPIC_DENIED,), (TOPIC_DENIED,)),
    ("Fetch", s_fetch, (TOPIC_DENIED,), (OK,)),
    ("InitProducerId", s_init_producer_id, (CLUSTER_DENIED,), (OK,)),
    ("DescribeProducers", s_describe_producers, (TOPIC_DENIED,), (OK,)),
    ("FindCoordinator", s_find_coordinator, (GROUP_DENIED,), (OK,)),
    ("JoinGroup", s_join_group, (GROUP_DENIED,), (OK,)),
    ("SyncGroup", s_sync_group, (GROUP_DENIED,), (OK,)),
    ("Heartbeat", s_heartbeat, (GROUP_DENIED,), (OK,)),
    ("OffsetCommit", s_offset_commit, (GROUP_DENIED,) * 2, (OK,) * 2),
    ("OffsetFetch", s_offset_fetch, (GROUP_DENIED,) * 3, (OK,) * 3),
    ("DescribeGroups", s_describe_groups, (GROUP_DENIED,), (OK,)),
    ("ListGroups", s_list_groups, (OK, False), (OK, True)),
    ("LeaveGroup", s_leave_group, (GROUP_DENIED,), (OK,)),
    ("OffsetDelete", s_offset_delete, (GROUP_DENIED,) * 2, (OK,) * 2),
    ("DeleteGroups", s_delete_groups, (GROUP_DENIED,), (OK,)),
    ("DescribeConfigs", s_describe_configs, (TOPIC_DENIED, CLUSTER_DENIED), (OK, OK)),
    ("DescribeLogDirs", s_describe_log_dirs, (CLUSTER_DENIED, False), (OK, True)),
    ("AlterConfigs", s_alter_configs, (TOPIC_DENIED,), (OK,)),
    ("IncrementalAlterConfigs", s_incremental_alter_configs, (TOPIC_DENIED,), (OK,)),
    ("CreateTopics", s_create_topics, (TOPIC_DENIED,), (OK,)),
    ("CreatePartitions", s_create_partitions, (TOPIC_DENIED,), (OK,)),
    ("DeleteRecords", s_delete_records, (TOPIC_DENIED,), (OK,)),
    ("DeleteTopics", s_delete_topics, (TOPIC_DENIED,), (OK,)),
]


def _served(api: str) -> bool:
    from federation.protocol.versions import API_NAMES
    from federation.proxy.server import CAPS

    return api.split(" ")[0] in {API_NAMES[k] for k in CAPS}


#: The steps of the APIs this build serves.
MATRIX = [s for s in STEPS if _served(s[0])]


def test_the_matrix_covers_every_api_the_proxy_serves() -> None:
    from federation.protocol.versions import API_NAMES
    from federation.proxy.server import CAPS

    covered = {name.split(" ")[0] for name, *_ in MATRIX} | {"SaslHandshake",
                                                             "SaslAuthenticate"}
    assert {API_NAMES[k] for k in CAPS} == covered


# -- the physical truth --------------------------------------------------------------------


def _physical_topics(fmap: FederationMap) -> dict[str, set[str]]:
    out = {}
    for cid, cluster in fmap.clusters.items():
        md = AdminClient({"bootstrap.servers": cluster.bootstrap}).list_topics(timeout=20)
        out[cid] = set(md.topics)
    return out


def _watermarks(fmap: FederationMap, topic: str, partition: int) -> tuple[int, int]:
    seg = fmap.topics[topic].partitions[partition].active
    consumer = Consumer({"bootstrap.servers": fmap.clusters[seg.cluster].bootstrap,
                         "group.id": "fk-bm-watermarks"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(seg.topic, seg.partition),
                                                   timeout=20)
        return int(low), int(high)
    finally:
        consumer.close()


def _where(fmap: FederationMap, topic: str) -> set[tuple[str, str]]:
    """(cluster, physical topic) of a logical topic's segments and its shadow topic."""
    found = {(s.cluster, s.topic) for p in fmap.topics[topic].partitions for s in p.segments}
    assert fmap.coordination_cluster is not None
    return found | {(fmap.coordination_cluster, topic)}


def _committed(address: str) -> dict[int, int]:
    c = Conn(address)
    try:
        assert c.sasl("alice", USERS["alice"]) == OK
        [group] = c.send(offset_fetch()).groups
        return {int(p.partition_index): int(p.committed_offset) for t in group.topics
                for p in t.partitions}
    finally:
        c.close()


# -- the test ------------------------------------------------------------------------------


def test_bypass_matrix(local_federation: dict[str, Any]) -> None:
    for name, partitions in ((TOPIC, 2), (LOCKED, 1), (DOOMED, 2), (GROW, 2)):
        create_logical_topic(local_federation, name, partitions)
    port = int(local_federation["bootstrap"].rsplit(":", 1)[1]) + 15
    route_to_proxy(local_federation, "bm", NODE_ID, port, "fk-bm")
    address = f"127.0.0.1:{port}"
    backend = backend_of(local_federation)
    plugin = PlainUsers()
    plugins = get_plugins()
    plugins.register(plugin, name="bm-plain-users")
    results: dict[tuple[str, str], Any] = {}
    try:
        asyncio_run(admin.add_acls(backend, ALICE_RULES))
        with InProcessProxy(local_federation["store"], port, pool="bm", node_id=NODE_ID,
                            sasl_required=True) as proxy:
            _wait(lambda: proxy.state is not None
                  and len(proxy.state.fmap.acls) >= len(ALICE_RULES),
                  "the proxy serving the map with the ACLs")
            # What alice has before anything: records, and a committed offset.
            setup = Conn(address)
            assert setup.sasl("alice", USERS["alice"]) == OK
            assert s_produce(setup, {"who": "setup"}) == (OK,)
            assert s_produce(setup, {"who": "setup"}) == (OK,)
            committed = coordinated(lambda: setup.send(offset_commit(-1, "", {0: 1, 1: 1})),
                                    _partition_codes)
            assert _partition_codes(committed) == (OK, OK)
            setup.close()
            before = backend.load()
            assert before is not None
            water = _watermarks(before, TOPIC, 0)
            physical = _physical_topics(before)
            for cluster, phys in _where(before, DOOMED):
                assert phys in physical[cluster]

            # Rows 1 and 2: no credentials, wrong credentials: a fresh connection per API.
            handshake = Conn(address)
            assert "PLAIN" in handshake.send(make(17, 1, mechanism="PLAIN")).mechanisms
            handshake.close()
            for who in ("none", "wrong"):
                for api, step, _, _ in MATRIX:
                    c = Conn(address)
                    try:
                        if who == "wrong":
                            assert c.sasl("alice", "not-her-password") == SASL_FAILED
                        results[(who, api)] = step(c, {"who": who, "retention": "60001"})
                    except Closed:
                        results[(who, api)] = CLOSED
                    finally:
                        c.close()

            # Row 3: mallory, one connection for every API.
            c = Conn(address)
            assert c.sasl("mallory", USERS["mallory"]) == OK
            for api, step, _, _ in MATRIX:
                results[("mallory", api)] = step(c, {"who": "mallory", "retention": "60002"})
            c.close()

            # Nothing the denied rows asked for happened.
            after = backend.load()
            assert after is not None
            assert DOOMED in after.topics and NEW not in after.topics
            assert after.topics[GROW].partition_count == 2
            assert after.topics[TOPIC].config.get("retention.ms") is None
            assert _watermarks(after, TOPIC, 0) == water
            physical = _physical_topics(after)
            for cluster, phys in _where(after, DOOMED):
                assert phys in physical[cluster], f"{phys} was deleted from {cluster}"
            assert not any(NEW in names or f"{NEW}.fk" in names for names in physical.values())
            assert _committed(address) == {0: 1, 1: 1}

            # Row 4: alice.
            c = Conn(address)
            assert c.sasl("alice", USERS["alice"]) == OK
            ctx: dict[str, Any] = {"who": "alice", "retention": "60003"}
            for api, step, _, _ in MATRIX:
                results[("alice", api)] = step(c, ctx)
            c.close()

        expected = {}
        for api, _, mallory, alice in MATRIX:
            expected[("none", api)] = (OK,) if api == "ApiVersions" else CLOSED
            expected[("wrong", api)] = (OK,) if api == "ApiVersions" else CLOSED
            expected[("mallory", api)] = mallory
            expected[("alice", api)] = alice
        # ApiVersions before authentication is answered; after a failed one, Kafka closes
        # the connection: either is right for the wrong-credentials row.
        if results[("wrong", "ApiVersions")] == CLOSED:
            expected[("wrong", "ApiVersions")] = CLOSED
        mismatches = {k: (results.get(k), v) for k, v in expected.items() if results.get(k) != v}
        assert not mismatches, "\n".join(f"{who:8} {api:24} got {got!r}, want {want!r}"
                                         for (who, api), (got, want) in mismatches.items())

        # And alice's requests did what they say.
        done = backend.load()
        assert done is not None
        assert DOOMED not in done.topics and NEW in done.topics
        assert done.topics[GROW].partition_count == 3
        assert done.topics[TOPIC].config.get("retention.ms") == "60003"
        assert _watermarks(done, TOPIC, 0)[0] >= 1  # records before offset 1 deleted
        physical = _physical_topics(done)
        gone = [(c, t) for c, t in _where(before, DOOMED) if t in physical[c]]
        assert not gone, f"still there after alice's DeleteTopics: {gone}"
    finally:
        plugins.unregister(plugin)
        try:
            asyncio_run(admin.remove_acls(backend, ALICE_RULES))
        finally:
            backend.close()


AUTO = "bm-auto-"
AUTO_RULES = [
    AclRule("User:carol", "Topic", AUTO, "Describe", pattern_type="PREFIXED"),
    AclRule("User:carol", "Cluster", "kafka-cluster", "Create"),
    AclRule("User:dave", "Topic", AUTO, "Describe", pattern_type="PREFIXED"),
]
LEADER_NOT_AVAILABLE, UNKNOWN_TOPIC_OR_PARTITION = 5, 3


def test_automatic_creation_needs_create_on_the_cluster_or_the_topic(
        local_federation: dict[str, Any]) -> None:
    """A Metadata request naming an unknown topic creates it (the map's auto-create policy)
    only for a principal with Create on the cluster or on the topic, as Kafka's broker; one
    that may not describe it is told TOPIC_AUTHORIZATION_FAILED."""
    port = int(local_federation["bootstrap"].rsplit(":", 1)[1]) + 16
    route_to_proxy(local_federation, "bm-auto", NODE_ID + 1, port, "fk-bm-auto")
    backend = backend_of(local_federation)
    plugin = PlainUsers()
    plugins = get_plugins()
    plugins.register(plugin, name="bm-auto-plain-users")
    suffix = uuid.uuid4().hex[:8]
    try:
        asyncio_run(admin.add_acls(backend, AUTO_RULES))
        fmap = backend.load()
        assert fmap is not None and fmap.auto_create.enabled
        with InProcessProxy(local_federation["store"], port, pool="bm-auto",
                            node_id=NODE_ID + 1, sasl_required=True) as proxy:
            _wait(lambda: proxy.state is not None and len(proxy.state.fmap.acls) >= 3,
                  "the proxy serving the map with the ACLs")

            def ask(user: str) -> tuple[str, int]:
                name = f"{AUTO}{user}-{suffix}"
                c = Conn(f"127.0.0.1:{port}")
                try:
                    assert c.sasl(user, USERS[user]) == OK
                    [t] = c.send(make(3, 12, topics=(make(
                        3, 12, "MetadataRequestTopic", topic_id=None, name=name),),
                        allow_auto_topic_creation=True,
                        include_topic_authorized_operations=False)).topics
                    return name, int(t.error_code)
                finally:
                    c.close()

            created, code = ask("carol")  # Create on the cluster
            assert code == LEADER_NOT_AVAILABLE  # being created: Kafka's answer
            _wait(lambda: created in (backend.load() or fmap).topics, f"{created} created")
            not_created, code = ask("dave")  # may describe, may not create
            assert code == UNKNOWN_TOPIC_OR_PARTITION
            hidden, code = ask("mallory")  # may not even describe
            assert code == TOPIC_DENIED
            later = backend.load()
            assert later is not None
            assert not_created not in later.topics and hidden not in later.topics
            physical = _physical_topics(later)
            for name in (not_created, hidden):
                assert not any(name in names or f"{name}.fk" in names
                               for names in physical.values())
    finally:
        plugins.unregister(plugin)
        try:
            asyncio_run(admin.remove_acls(backend, AUTO_RULES))
        finally:
            backend.close()


def asyncio_run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
