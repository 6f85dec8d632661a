"""The per-API authorization table (federation/proxy/authz.py), without sockets: what each
request needs, and what the proxy serves and answers when some or all of it is denied."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import pytest

from federation.core.model import (
    FederationMap,
    LogicalPartition,
    LogicalTopic,
    PhysicalCluster,
    Segment,
)
from federation.protocol.errors import to_kio
from federation.protocol.versions import ApiKey
from federation.proxy import authz
from federation.proxy.routing import build, resp_module
from federation.proxy.server import CAPS
from tests.kafka_requests import make, request

TOPIC_DENIED, GROUP_DENIED, CLUSTER_DENIED = 29, 30, 31
T_ID = uuid.UUID(int=7)


def _topic(name: str, topic_id: uuid.UUID | None = None) -> LogicalTopic:
    return LogicalTopic(name, topic_id or uuid.uuid5(T_ID, name),
                        (LogicalPartition(0, (Segment("A", f"{name}.fk", 0, 0, 0),)),))


FMAP = FederationMap(version=3, clusters={"A": PhysicalCluster("A", "a:9092")},
                     coordination_cluster="A",
                     topics={"a": _topic("a", T_ID), "b": _topic("b"), "c": _topic("c")})


class Authorizer:
    """Allows exactly the actions given as "Operation on Type:name" strings."""

    def __init__(self, *allowed: str) -> None:
        self.allowed = set(allowed)
        self.asked: list[str] = []

    def __call__(self, action: authz.Action) -> bool:
        self.asked.append(str(action))
        return str(action) in self.allowed


def codes(entries: Iterable[Any]) -> list[tuple[Any, int]]:
    return [(getattr(e, "name", None) or getattr(e, "group_id", None) or getattr(e, "key", None)
             or getattr(e, "resource_name", None), int(e.error_code)) for e in entries]


# -- the table -----------------------------------------------------------------------------


def test_every_api_the_proxy_serves_is_authorized_somewhere() -> None:
    kinds = [set(authz.RULES), set(authz.HANDLER_CHECKED), set(authz.NOT_CHECKED)]
    for key in CAPS:  # each in exactly one place
        assert sum(key in kind for kind in kinds) == 1, key


def _offset_commit(*names: str) -> Any:
    part = make(8, 8, "OffsetCommitRequestPartition", partition_index=0, committed_offset=5)
    return make(8, 8, group_id="g", topics=tuple(
        make(8, 8, "OffsetCommitRequestTopic", name=n, partitions=(part,)) for n in names))


TABLE: list[tuple[str, Any, list[tuple[Any, list[list[str]]]]]] = [
    ("ListOffsets", make(2, 8, topics=(make(2, 8, "ListOffsetsTopic", name="a"),)),
     [("a", [["Describe on Topic:a"]])]),
    ("FindCoordinator v3", make(10, 3, key="g", key_type=0),
     [("request", [["Describe on Group:g"]])]),
    ("FindCoordinator v4", make(10, 4, key_type=0, coordinator_keys=("g", "h")),
     [("request", []), ("g", [["Describe on Group:g"]]), ("h", [["Describe on Group:h"]])]),
    ("FindCoordinator of a transaction", make(10, 4, key_type=1, coordinator_keys=("tx",)),
     [("request", [])]),  # refused by the handler: transactions are not supported
    ("JoinGroup", make(11, 9, group_id="g"), [("request", [["Read on Group:g"]])]),
    ("SyncGroup", make(14, 5, group_id="g"), [("request", [["Read on Group:g"]])]),
    ("Heartbeat", make(12, 4, group_id="g"), [("request", [["Read on Group:g"]])]),
    ("LeaveGroup", make(13, 5, group_id="g"), [("request", [["Read on Group:g"]])]),
    ("OffsetCommit", _offset_commit("a"),
     [("request", [["Read on Group:g"]]), ("a", [["Read on Topic:a"]])]),
    ("OffsetFetch v7", make(9, 7, group_id="g", topics=(
        make(9, 7, "OffsetFetchRequestTopic", name="a", partition_indexes=(0,)),)),
     [("request", [["Describe on Group:g"]]), ("a", [["Describe on Topic:a"]])]),
    ("OffsetFetch v8", make(9, 8, groups=(make(9, 8, "OffsetFetchRequestGroup", group_id="g",
                                                topics=None),)),
     [("request", [["Describe on Group:g"]])]),
    ("DescribeGroups", make(15, 5, groups=("g",)), [("g", [["Describe on Group:g"]])]),
    ("ListGroups", make(16, 5), []),  # answered, then filtered
    ("DeleteGroups", make(42, 2, groups_names=("g",)), [("g", [["Delete on Group:g"]])]),
    ("OffsetDelete", make(47, 0, group_id="g", topics=(
        make(47, 0, "OffsetDeleteRequestTopic", name="a"),)),
     [("request", [["Delete on Group:g"]]), ("a", [["Read on Topic:a"]])]),
    ("CreateTopics", make(19, 7, topics=(make(19, 7, "CreatableTopic", name="n"),)),
     [("n", [["Create on Cluster:kafka-cluster", "Create on Topic:n"]])]),
    ("DeleteTopics v5", make(20, 5, topic_names=("a",)),
     [("a", [["Delete on Cluster:kafka-cluster", "Describe on Topic:a"],
             ["Delete on Cluster:kafka-cluster", "Delete on Topic:a"]])]),
    ("CreatePartitions", make(37, 3, topics=(make(37, 3, "CreatePartitionsTopic", name="a",
                                                  count=4),)),
     [("a", [["Alter on Topic:a"]])]),
    ("DescribeConfigs", make(32, 4, resources=(
        make(32, 4, "DescribeConfigsResource", resource_type=2, resource_name="a"),
        make(32, 4, "DescribeConfigsResource", resource_type=4, resource_name="1"),
        make(32, 4, "DescribeConfigsResource", resource_type=32, resource_name="g"),
        make(32, 4, "DescribeConfigsResource", resource_type=16, resource_name="x"))),
     [("a", [["DescribeConfigs on Topic:a"]]),
      ("1", [["DescribeConfigs on Cluster:kafka-cluster"]]),
      ("g", [["DescribeConfigs on Group:g"]]), ("x", [])]),
    ("AlterConfigs", make(33, 2, resources=(
        make(33, 2, "AlterConfigsResource", resource_type=2, resource_name="a"),)),
     [("a", [["AlterConfigs on Topic:a"]])]),
    ("IncrementalAlterConfigs", make(44, 1, resources=(
        make(44, 1, "AlterConfigsResource", resource_type=8, resource_name="1"),)),
     [("1", [["AlterConfigs on Cluster:kafka-cluster"]])]),
    ("DeleteRecords", make(21, 2, topics=(make(21, 2, "DeleteRecordsTopic", name="a"),)),
     [("a", [["Delete on Topic:a"]])]),
    ("DescribeProducers", make(61, 0, topics=(make(61, 0, "TopicRequest", name="a"),)),
     [("a", [["Read on Topic:a"]])]),
    ("InitProducerId", make(22, 5, transactional_id=None),
     [("request", [["IdempotentWrite on Cluster:kafka-cluster", "Write on Topic:a",
                    "Write on Topic:b", "Write on Topic:c"]])]),
    ("InitProducerId of a transaction", make(22, 5, transactional_id="tx"),
     [("request", [])]),  # refused by the handler
]


def _item_key(item: Any) -> Any:
    if isinstance(item, str):
        return item
    return getattr(item, "name", None) or getattr(item, "resource_name", None)


@pytest.mark.parametrize(("api", "entity", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_what_each_request_needs(api: str, entity: Any, expected: list[Any]) -> None:
    got = [(_item_key(item) if item != "request" else item,
            [[str(a) for a in need] for need in item_needs])
           for item, item_needs in authz.needs_of(request(entity), FMAP)]
    assert got == expected


# -- the gate ------------------------------------------------------------------------------


def test_nothing_denied_serves_the_request_untouched() -> None:
    allow = Authorizer("Read on Group:g", "Read on Topic:a", "Read on Topic:b")
    assert authz.gate(request(_offset_commit("a", "b")), allow, FMAP) is None


def test_a_denied_group_refuses_the_whole_request() -> None:
    gate = authz.gate(request(make(11, 9, group_id="g")), Authorizer(), FMAP)
    assert gate is not None and gate.serve is None
    assert int(gate.answer(None).error_code) == GROUP_DENIED
    gate = authz.gate(request(_offset_commit("a")), Authorizer("Read on Topic:a"), FMAP)
    assert gate is not None and gate.serve is None
    answer = gate.answer(None)
    assert [(t.name, [int(p.error_code) for p in t.partitions]) for t in answer.topics] == [
        ("a", [GROUP_DENIED])]


def test_denied_topics_are_answered_and_the_others_served_in_order() -> None:
    allow = Authorizer("Read on Group:g", "Read on Topic:b")
    req = request(_offset_commit("a", "b", "c"))
    gate = authz.gate(req, allow, FMAP)
    assert gate is not None and gate.serve is not None
    assert [t.name for t in gate.serve.entity.topics] == ["b"]
    mod = resp_module(8, 8)
    served = build(mod.OffsetCommitResponse, throttle_time=_ms(0), topics=(
        build(mod.OffsetCommitResponseTopic, name="b", partitions=(
            build(mod.OffsetCommitResponsePartition, partition_index=0,
                  error_code=to_kio(0)),)),))
    answer = gate.answer(served)
    assert [(t.name, [int(p.error_code) for p in t.partitions]) for t in answer.topics] == [
        ("a", [TOPIC_DENIED]), ("b", [0]), ("c", [TOPIC_DENIED])]


def _ms(value: int) -> Any:
    import datetime

    return datetime.timedelta(milliseconds=value)


def test_every_item_denied_serves_nothing_and_answers_like_kafka() -> None:
    entity = make(9, 7, group_id="g", topics=(
        make(9, 7, "OffsetFetchRequestTopic", name="a", partition_indexes=(0, 1)),))
    gate = authz.gate(request(entity), Authorizer("Describe on Group:g"), FMAP)
    assert gate is not None and gate.serve is None
    answer = gate.answer(None)
    assert int(answer.error_code) == 0  # the request is fine: its topic is not
    assert [(t.name, [int(p.error_code) for p in t.partitions]) for t in answer.topics] == [
        ("a", [TOPIC_DENIED, TOPIC_DENIED])]


def test_offset_fetch_v8_denied_topics_inside_the_group() -> None:
    group = make(9, 8, "OffsetFetchRequestGroup", group_id="g", topics=(
        make(9, 8, "OffsetFetchRequestTopics", name="a", partition_indexes=(0,)),
        make(9, 8, "OffsetFetchRequestTopics", name="b", partition_indexes=(0,))))
    gate = authz.gate(request(make(9, 8, groups=(group,))),
                      Authorizer("Describe on Group:g", "Read on Topic:b", "Describe on Topic:b"),
                      FMAP)
    assert gate is not None and gate.serve is not None
    assert [t.name for t in gate.serve.entity.groups[0].topics] == ["b"]


def test_offset_fetch_of_all_topics_lists_only_describable_ones() -> None:
    entity = make(9, 7, group_id="g", topics=None)
    gate = authz.gate(request(entity), Authorizer("Describe on Group:g", "Describe on Topic:b"),
                      FMAP)
    assert gate is not None and gate.serve is not None and gate.serve.entity is entity
    mod = resp_module(9, 7)
    served = build(mod.OffsetFetchResponse, throttle_time=_ms(0), error_code=to_kio(0),
                   topics=tuple(build(mod.OffsetFetchResponseTopic, name=n, partitions=())
                                for n in ("a", "b", "c")))
    assert [t.name for t in gate.answer(served).topics] == ["b"]


def test_list_groups_lists_only_describable_groups_unless_the_cluster_is() -> None:
    mod = resp_module(16, 5)
    served = build(mod.ListGroupsResponse, throttle_time=_ms(0), error_code=to_kio(0),
                   groups=tuple(build(mod.ListedGroup, group_id=g, protocol_type="consumer",
                                      group_state="Stable", group_type="classic")
                                for g in ("g1", "g2")))
    gate = authz.gate(request(make(16, 5)), Authorizer("Describe on Group:g2"), FMAP)
    assert gate is not None and gate.serve is not None
    assert [g.group_id for g in gate.answer(served).groups] == ["g2"]
    gate = authz.gate(request(make(16, 5)), Authorizer("Describe on Cluster:kafka-cluster"),
                      FMAP)
    assert gate is not None
    assert [g.group_id for g in gate.answer(served).groups] == ["g1", "g2"]


def test_describe_configs_answers_each_resource_type_with_its_code() -> None:
    entity = make(32, 4, resources=tuple(
        make(32, 4, "DescribeConfigsResource", resource_type=t, resource_name=n)
        for t, n in ((2, "a"), (4, "1"), (32, "g"), (2, "b"))))
    gate = authz.gate(request(entity), Authorizer("DescribeConfigs on Topic:b"), FMAP)
    assert gate is not None and gate.serve is not None
    assert [r.resource_name for r in gate.serve.entity.resources] == ["b"]
    mod = resp_module(32, 4)
    served = build(mod.DescribeConfigsResponse, throttle_time=_ms(0), results=(
        build(mod.DescribeConfigsResult, error_code=to_kio(0), error_message=None,
              resource_type=2, resource_name="b", configs=()),))
    answer = gate.answer(served)
    assert codes(answer.results) == [("a", TOPIC_DENIED), ("1", CLUSTER_DENIED),
                                     ("g", GROUP_DENIED), ("b", 0)]
    assert [r.error_message for r in answer.results] == [
        "Topic authorization failed.", "Cluster authorization failed.",
        "Group authorization failed.", None]


def test_create_topics_cluster_or_topic_create_and_hidden_configs() -> None:
    entity = make(19, 7, topics=tuple(make(19, 7, "CreatableTopic", name=n, num_partitions=1,
                                           replication_factor=-1) for n in ("x", "y", "x")))
    allow = Authorizer("Create on Topic:y")
    gate = authz.gate(request(entity), allow, FMAP)
    assert gate is not None and gate.serve is not None
    assert [t.name for t in gate.serve.entity.topics] == ["y"]
    mod = resp_module(19, 7)
    served = build(mod.CreateTopicsResponse, throttle_time=_ms(0), topics=(
        build(mod.CreatableTopicResult, name="y", topic_id=uuid.UUID(int=5), error_code=to_kio(0),
              error_message=None, topic_config_error_code=to_kio(0), num_partitions=1,
              replication_factor=1, configs=()),))
    answer = gate.answer(served)
    assert codes(answer.topics) == [("x", TOPIC_DENIED), ("y", 0)]  # x answered once
    assert answer.topics[0].error_message == "Authorization failed."
    y = answer.topics[1]  # created, but its configs are not the principal's to see
    assert (int(y.topic_config_error_code), y.num_partitions, y.replication_factor) == (
        TOPIC_DENIED, -1, -1)
    # Create on the cluster allows every topic.
    assert authz.gate(request(entity), Authorizer("Create on Cluster:kafka-cluster",
                                                  "DescribeConfigs on Topic:x"), FMAP) \
        is not None  # (configs of y are still filtered)


def test_delete_topics_by_id_hides_the_name_from_whom_may_not_describe_it() -> None:
    entity = make(20, 6, topics=(make(20, 6, "DeleteTopicState", name=None, topic_id=T_ID),))
    gate = authz.gate(request(entity), Authorizer(), FMAP)
    assert gate is not None and gate.serve is None
    [r] = gate.answer(None).responses
    assert (r.name, r.topic_id, int(r.error_code)) == (None, T_ID, TOPIC_DENIED)
    gate = authz.gate(request(entity), Authorizer("Describe on Topic:a"), FMAP)
    assert gate is not None and gate.serve is None
    [r] = gate.answer(None).responses
    assert (r.name, int(r.error_code)) == ("a", TOPIC_DENIED)
    gate = authz.gate(request(entity), Authorizer("Delete on Cluster:kafka-cluster"), FMAP)
    assert gate is not None and gate.serve is not None and gate.serve.entity is entity


def test_find_coordinator_denies_keys_one_by_one() -> None:
    entity = make(10, 4, key_type=0, coordinator_keys=("g", "h"))
    gate = authz.gate(request(entity), Authorizer("Describe on Group:h"), FMAP)
    assert gate is not None and gate.serve is not None
    assert gate.serve.entity.coordinator_keys == ("h",)
    mod = resp_module(10, 4)
    served = build(mod.FindCoordinatorResponse, throttle_time=_ms(0), coordinators=(
        build(mod.Coordinator, key="h", node_id=1, host="p", port=9092, error_code=to_kio(0),
              error_message=None),))
    assert codes(gate.answer(served).coordinators) == [("g", GROUP_DENIED), ("h", 0)]
    gate = authz.gate(request(make(10, 3, key="g", key_type=0)), Authorizer(), FMAP)
    assert gate is not None and gate.serve is None
    answer = gate.answer(None)
    assert (int(answer.error_code), answer.node_id, answer.error_message) == (
        GROUP_DENIED, -1, "Group authorization failed.")


def test_init_producer_id_idempotent_write_or_write_on_any_topic() -> None:
    entity = make(22, 5, transactional_id=None)
    assert authz.gate(request(entity), Authorizer(
        "IdempotentWrite on Cluster:kafka-cluster"), FMAP) is None
    writer = Authorizer("Write on Topic:c")
    assert authz.gate(request(entity), writer, FMAP) is None
    gate = authz.gate(request(entity), Authorizer("Read on Topic:a"), FMAP)
    assert gate is not None and gate.serve is None
    assert int(gate.answer(None).error_code) == CLUSTER_DENIED
    # The topics are asked about only until one is writable.
    lazy = Authorizer("Write on Topic:a")
    assert authz.gate(request(entity), lazy, FMAP) is None
    assert lazy.asked == ["IdempotentWrite on Cluster:kafka-cluster", "Write on Topic:a"]


def test_init_producer_id_verdicts_are_remembered_not_asked_per_topic_again() -> None:
    memo: dict[Any, bool] = {}
    denied = Authorizer()
    for _ in range(3):
        gate = authz.gate(request(make(22, 5, transactional_id=None)), denied, FMAP, memo)
        assert gate is not None and gate.serve is None
    assert len(denied.asked) == 1 + len(FMAP.topics)  # once, not per request
    # A transactional request is not answered from that memory (the handler refuses it).
    assert authz.gate(request(make(22, 5, transactional_id="tx")), denied, FMAP, memo) is None


def test_delete_groups_and_describe_groups_per_group() -> None:
    gate = authz.gate(request(make(42, 2, groups_names=("g", "h"))),
                      Authorizer("Delete on Group:h"), FMAP)
    assert gate is not None and gate.serve is not None
    assert gate.serve.entity.groups_names == ("h",)
    gate = authz.gate(request(make(15, 5, groups=("g",))), Authorizer(), FMAP)
    assert gate is not None and gate.serve is None
    [g] = gate.answer(None).groups
    assert (g.group_id, int(g.error_code)) == ("g", GROUP_DENIED)


def test_handler_checked_and_unchecked_apis_pass_through() -> None:
    for key in (*authz.HANDLER_CHECKED, *authz.NOT_CHECKED):
        assert key not in authz.RULES
    assert ApiKey.DESCRIBE_CLUSTER in authz.NOT_CHECKED  # as a Kafka broker: no ACL needed
