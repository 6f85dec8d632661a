"""CreateTopics, DeleteTopics, CreatePartitions and AlterConfigs' intent step through the
sans-IO core, without sockets: the controller's intent endpoint, the physical clusters'
admin requests and the store are scripted (tests/unit/session_harness.py), the clock is
fake (docs/adr/0024-sans-io-proxy-core.md)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from federation.clusters import admin
from federation.clusters.admin import PhysicalTopic, TopicConfig
from federation.controller import intents
from federation.protocol.errors import ErrorCode
from federation.protocol.versions import ApiKey
from federation.proxy import admin_handlers, core
from tests.kafka_requests import make
from tests.unit.session_harness import Harness, Store
from tests.unit.test_session_core import describe_configs_answer, fmap

MS = datetime.timedelta(milliseconds=1)


class Controller:
    """Applies the proxy's intents to the store's map as the controller would (its
    refusals raised as AdminErrors, as ``intents.submit`` raises them)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __call__(self, kind: str, args: dict[str, Any]) -> Any:
        before = self.store.fmap
        assert before is not None
        result: dict[str, Any] = {}
        if kind == "create_topics":
            topics: list[dict[str, Any]] = []
            after = before
            for t in args["topics"]:
                try:
                    topic = admin.plan_create_topic(after, t["name"], t["partitions"],
                                                    t["strategy"], t["config"])
                except admin.AdminError as e:
                    topics.append({"error": intents._error_json(e)})
                    continue
                after = after.with_topic(topic)
                topics.append({})
            result = {"topics": topics}
        elif kind == "delete_topic":
            admin._topic(before, args["name"])
            after = before.without_topic(args["name"])
        elif kind == "add_partitions":
            after = before.with_topic(admin.plan_add_partitions(before, args["name"],
                                                                args["count"]))
        else:
            raise AssertionError(kind)
        self.store.fmap = after.with_version(before.version + 1)
        return {"status": "applied", "version": self.store.fmap.version, "result": result}


def admin_harness() -> tuple[Harness, Store]:
    h = Harness(fmap())
    store = Store(h.state.fmap)
    h.state.backend = store  # type: ignore[assignment]
    h.controller = Controller(store)
    return h, store


def steps(h: Harness) -> list[str]:
    """The commands the core issued, by name (an Offload by its function's)."""
    out = []
    for c in h.commands:
        if isinstance(c, core.Offload):
            out.append(f"Offload:{c.fn.__name__}")
        elif isinstance(c, core.SubmitIntent):
            out.append(f"SubmitIntent:{c.kind}")
        else:
            out.append(type(c).__name__)
    return out


def creatable(name: str, partitions: int = 2, replication: int = 1,
              configs: dict[str, str] | None = None) -> Any:
    return make(ApiKey.CREATE_TOPICS, 7, "CreatableTopic", name=name,
                num_partitions=partitions, replication_factor=replication, assignments=(),
                configs=tuple(make(ApiKey.CREATE_TOPICS, 7, "CreatableTopicConfig", name=k,
                                   value=v) for k, v in (configs or {}).items()))


def create_topics(*topics: Any, timeout_ms: int = 1000, validate_only: bool = False) -> Any:
    return make(ApiKey.CREATE_TOPICS, 7, topics=topics, timeout=timeout_ms * MS,
                validate_only=validate_only)


def described(cmd: core.DescribePhysical) -> dict[str, Any]:
    return {t.name: PhysicalTopic(t.partitions[0].active.topic, t.partition_count, 3,
                                  (TopicConfig("retention.ms", "5"),)) for t in cmd.topics}


# -- CreateTopics ---------------------------------------------------------------------------


def test_create_topics_creates_through_the_controller_and_answers_as_kafka() -> None:
    h, store = admin_harness()
    h.describe = described
    reply = h.call(create_topics(creatable("new", 2, configs={"retention.ms": "5"})))
    [t] = reply.body.topics
    assert (t.name, int(t.error_code), t.num_partitions) == ("new", 0, 2)
    assert t.replication_factor == 3  # as the physical cluster describes it
    assert [(c.name, c.value) for c in t.configs] == [("retention.ms", "5")]
    assert t.topic_id == store.fmap.topics["new"].topic_id  # type: ignore[union-attr]
    [(kind, args)] = h.intents
    assert kind == "create_topics"
    assert [(a["name"], a["partitions"], a["config"]) for a in args["topics"]] == [
        ("new", 2, {"retention.ms": "5"})]
    assert args["topics"][0]["layout"]  # this proxy's layout, for the controller
    assert h.state.fmap.version == 2  # the new map is served before the answer
    assert steps(h) == ["Detach", "Offload:load", "SubmitIntent:create_topics", "Offload:load",
                        "DescribePhysical", "Offload:load", "Offload:members"]


def test_create_topics_refused_before_any_intent() -> None:
    h, _ = admin_harness()
    reply = h.call(create_topics(creatable("orders"), creatable("zero", 0),
                                 creatable("norep", 1, 0), creatable("bad name!"),
                                 creatable("dup"), creatable("dup")))
    codes = {t.name: int(t.error_code) for t in reply.body.topics}
    assert codes == {"orders": ErrorCode.TOPIC_ALREADY_EXISTS,
                     "zero": ErrorCode.INVALID_PARTITIONS,
                     "norep": ErrorCode.INVALID_REPLICATION_FACTOR,
                     "bad name!": ErrorCode.INVALID_TOPIC_EXCEPTION,
                     "dup": ErrorCode.INVALID_REQUEST}
    assert all(t.num_partitions == -1 and t.configs == () for t in reply.body.topics)
    assert not h.intents
    assert steps(h) == ["Detach", "Offload:load"]  # the map refreshed, nothing waited for


def test_create_topics_one_refused_by_the_controller_the_other_created() -> None:
    h, store = admin_harness()
    controller = Controller(store)

    def refuse_one(kind: str, args: dict[str, Any]) -> Any:
        # the topic appeared meanwhile (another proxy created it)
        store.fmap = store.fmap.with_topic(  # type: ignore[union-attr]
            admin.plan_create_topic(store.fmap, "raced", 1))  # type: ignore[arg-type]
        return controller(kind, args)

    h.controller = refuse_one
    reply = h.call(create_topics(creatable("raced"), creatable("fresh")))
    codes = {t.name: int(t.error_code) for t in reply.body.topics}
    assert codes == {"raced": ErrorCode.TOPIC_ALREADY_EXISTS, "fresh": 0}


def test_create_topics_validate_only_has_the_physical_clusters_validate() -> None:
    h, _ = admin_harness()
    reply = h.call(create_topics(creatable("new", 2, configs={"retention.ms": "5"}),
                                 validate_only=True))
    [t] = reply.body.topics
    assert (int(t.error_code), t.num_partitions) == (0, 2)
    assert [(c.name, c.value) for c in t.configs] == [("retention.ms", "5")]
    [v] = h.validated
    assert (v.name, v.replication, dict(v.config or {})) == ("new", 1, {"retention.ms": "5"})
    assert sorted(v.needs) == ["A", "B"]  # data on both, the shadow on A (coordination)
    assert not h.intents
    assert steps(h) == ["Detach", "Offload:load", "ValidatePhysical", "Offload:load"]


def test_create_topics_validate_only_refused_by_a_physical_cluster() -> None:
    h, _ = admin_harness()

    def refuse(cmd: core.ValidatePhysical) -> None:
        raise admin.BrokerRefusedError("refused", ErrorCode.INVALID_CONFIG,
                                       "Invalid value x for configuration retention.ms")

    h.validate = refuse
    reply = h.call(create_topics(creatable("new"), validate_only=True))
    [t] = reply.body.topics
    assert int(t.error_code) == ErrorCode.INVALID_CONFIG
    assert t.error_message == "Invalid value x for configuration retention.ms"
    assert not h.intents


def test_create_topics_no_controller_answers_not_controller() -> None:
    h, _ = admin_harness()

    def away(kind: str, args: dict[str, Any]) -> Any:
        raise intents.NoControllerError("intent create_topics not acknowledged within 120s")

    h.controller = away
    reply = h.call(create_topics(creatable("a"), creatable("b")))
    codes = [int(t.error_code) for t in reply.body.topics]
    assert codes == [intents.NoControllerError.error_code] * 2  # NOT_CONTROLLER: retriable
    assert "Offload:members" not in steps(h)  # nothing changed: nothing to wait for


def test_create_topics_waits_until_every_proxy_serves_the_new_map() -> None:
    h, store = admin_harness()
    start = h.now
    store.proxies = {"p1": {"map_version": 1}, "old": {}}  # "old" reports no version
    caught_up_at = start + 0.3

    def members(kind: str) -> dict[str, Any]:
        version = 2 if h.now >= caught_up_at else 1
        return {"p1": {"map_version": version}, "old": {}}

    store.members = members  # type: ignore[method-assign]
    reply = h.call(create_topics(creatable("new")))
    assert int(reply.body.topics[0].error_code) == 0
    assert caught_up_at <= h.now < caught_up_at + 2 * admin_handlers.SERVED_POLL
    timers = [c for c in h.commands if isinstance(c, core.WaitAny)]
    assert timers and all(not c.pending for c in timers)  # polled on the core's clock


def test_create_topics_answers_at_the_request_timeout_a_proxy_still_behind() -> None:
    # As before the conversion: the topic was created, so the answer is a success once the
    # request's timeout passed (logged), not REQUEST_TIMED_OUT.
    h, store = admin_harness()
    store.proxies = {"p2": {"map_version": 1}}  # never catches up
    start = h.now
    reply = h.call(create_topics(creatable("new"), timeout_ms=1500))
    assert int(reply.body.topics[0].error_code) == 0
    assert start + 1.5 <= h.now < start + 1.5 + 2 * admin_handlers.SERVED_POLL


def test_create_topics_no_wait_with_a_zero_timeout_nor_when_the_store_fails() -> None:
    h, store = admin_harness()
    store.proxies = {"p2": {"map_version": 1}}
    start = h.now
    reply = h.call(create_topics(creatable("new"), timeout_ms=0))
    assert int(reply.body.topics[0].error_code) == 0 and h.now == start
    assert "Offload:members" not in steps(h)

    def broken(kind: str) -> dict[str, Any]:
        raise OSError("store away")

    store.members = broken  # type: ignore[method-assign]
    reply = h.call(create_topics(creatable("other")))
    assert int(reply.body.topics[0].error_code) == 0 and h.now == start


def test_create_topics_the_wait_is_bounded_by_the_proxy_request_timeout() -> None:
    h, store = admin_harness()
    h.state.request_timeout = 0.5
    store.proxies = {"p2": {"map_version": 1}}
    start = h.now
    h.call(create_topics(creatable("new"), timeout_ms=60_000))
    assert start + 0.5 <= h.now < start + 0.5 + 2 * admin_handlers.SERVED_POLL


# -- DeleteTopics ---------------------------------------------------------------------------


def delete_topics(*names: str, timeout_ms: int = 1000) -> Any:
    return make(ApiKey.DELETE_TOPICS, 6, topics=tuple(
        make(ApiKey.DELETE_TOPICS, 6, "DeleteTopicState", name=n, topic_id=None)
        for n in names), timeout=timeout_ms * MS)


def test_delete_topics() -> None:
    h, _ = admin_harness()
    reply = h.call(delete_topics("orders"))
    [r] = reply.body.responses
    assert (r.name, int(r.error_code)) == ("orders", 0)
    assert h.intents == [("delete_topic", {"name": "orders"})]
    assert "orders" not in h.state.fmap.topics  # served before the answer
    assert steps(h) == ["Detach", "Offload:load", "SubmitIntent:delete_topic", "Offload:load",
                        "Offload:members"]


def test_delete_topics_unknown_topic_never_reaches_the_controller() -> None:
    h, _ = admin_harness()
    reply = h.call(delete_topics("nope"))
    [r] = reply.body.responses
    assert int(r.error_code) == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert not h.intents
    assert steps(h) == ["Detach", "Offload:load", "Offload:load"]


def test_delete_topics_by_unknown_id() -> None:
    h, _ = admin_harness()
    import uuid

    reply = h.call(make(ApiKey.DELETE_TOPICS, 6, topics=(make(
        ApiKey.DELETE_TOPICS, 6, "DeleteTopicState", name=None, topic_id=uuid.uuid4()),),
        timeout=1000 * MS))
    assert int(reply.body.responses[0].error_code) == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert not h.intents


# -- CreatePartitions -----------------------------------------------------------------------


def create_partitions(count: int, name: str = "orders", validate_only: bool = False) -> Any:
    return make(ApiKey.CREATE_PARTITIONS, 3, topics=(make(
        ApiKey.CREATE_PARTITIONS, 3, "CreatePartitionsTopic", name=name, count=count,
        assignments=None),), timeout=1000 * MS, validate_only=validate_only)


def test_create_partitions() -> None:
    h, _ = admin_harness()
    reply = h.call(create_partitions(6))
    [r] = reply.body.results
    assert int(r.error_code) == 0
    assert h.intents == [("add_partitions", {"name": "orders", "count": 6})]
    assert len(h.state.fmap.topics["orders"].partitions) == 6
    assert steps(h) == ["Detach", "SubmitIntent:add_partitions", "Offload:load",
                        "Offload:load", "Offload:members"]


def test_create_partitions_invalid_count_refused_by_the_controller() -> None:
    h, _ = admin_harness()
    reply = h.call(create_partitions(3))
    [r] = reply.body.results
    assert int(r.error_code) == ErrorCode.INVALID_PARTITIONS
    assert "must be larger" in r.error_message
    assert steps(h) == ["Detach", "SubmitIntent:add_partitions", "Offload:load"]


def test_create_partitions_validate_only_is_checked_here() -> None:
    h, _ = admin_harness()
    bad = h.call(create_partitions(3, validate_only=True)).body.results[0]
    good = h.call(create_partitions(8, validate_only=True)).body.results[0]
    unknown = h.call(create_partitions(8, "nope", validate_only=True)).body.results[0]
    assert int(bad.error_code) == ErrorCode.INVALID_PARTITIONS
    assert int(good.error_code) == 0
    assert int(unknown.error_code) == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert not h.intents
    assert len(h.state.fmap.topics["orders"].partitions) == 4


# -- AlterConfigs: the intent that records the topic's config --------------------------------


@pytest.mark.parametrize("stored", [{}, {"cleanup.policy": "compact"}])
def test_alter_configs_records_the_topic_config_once(stored: dict[str, str]) -> None:
    import dataclasses

    h, store = admin_harness()
    topic = dataclasses.replace(h.state.fmap.topics["orders"], config=stored)
    store.fmap = h.state.fmap.with_topic(topic)
    recorded: list[dict[str, Any]] = []

    def controller(kind: str, args: dict[str, Any]) -> Any:
        recorded.append(args)
        return {"status": "applied", "version": 1, "result": {}}

    h.controller = controller
    h.on(ApiKey.ALTER_CONFIGS, lambda sent: _altered(sent))
    h.on(ApiKey.DESCRIBE_CONFIGS, lambda sent: describe_configs_answer(
        sent, {"cleanup.policy": "compact"}))
    r = make(ApiKey.ALTER_CONFIGS, 2, "AlterConfigsResource", resource_type=2,
             resource_name="orders", configs=(make(ApiKey.ALTER_CONFIGS, 2, "AlterableConfig",
                                                   name="cleanup.policy", value="compact"),))
    reply = h.call(make(ApiKey.ALTER_CONFIGS, 2, resources=(r,), validate_only=False))
    assert int(reply.body.responses[0].error_code) == 0
    tail = steps(h)[-4:]
    if stored:  # the store holds it already: no intent
        assert recorded == []
        assert "SubmitIntent:set_topic_config" not in steps(h)
        assert tail[-2:] == ["Offload:load", "Offload:load"]
    else:
        assert recorded == [{"name": "orders", "config": {"cleanup.policy": "compact"}}]
        assert tail == ["Offload:load", "SubmitIntent:set_topic_config", "Offload:load",
                        "Offload:load"]


def _altered(sent: Any) -> Any:
    from federation.protocol.errors import to_kio
    from federation.proxy.routing import build, resp_module

    mod = resp_module(sent.api_key, int(sent.request.__version__))
    cls = (mod.IncrementalAlterConfigsResponse if sent.api_key == ApiKey.INCREMENTAL_ALTER_CONFIGS
           else mod.AlterConfigsResponse)
    return build(cls, throttle_time=0 * MS, responses=tuple(
        build(mod.AlterConfigsResourceResponse, error_code=to_kio(0), error_message=None,
              resource_type=r.resource_type, resource_name=r.resource_name)
        for r in sent.request.resources))


def test_await_adapter_is_gone() -> None:
    assert not hasattr(core, "Await")
    from pathlib import Path

    import federation.proxy.server as server

    assert "core.Await" not in Path(server.__file__).read_text()


# -- a failure that is not a refusal: answered per topic, never a closed connection ----------


class _Broken:
    """What fails: the intent's submission (no intent token) or the store."""

    def __init__(self, h: Harness, store: Store, what: str) -> None:
        from federation.core.errors import ConfigError

        self.error: Exception = (ConfigError("no intent token: set $FEDKAFKA_INTENT_TOKEN")
                                 if what == "token" else OSError("the store is away"))
        if what == "token":
            def controller(kind: str, args: dict[str, Any]) -> Any:
                raise self.error
            h.controller = controller
        else:
            def load() -> Any:
                raise self.error
            store.load = load  # type: ignore[method-assign]

    def check(self, code: int, message: str | None) -> None:
        assert code == ErrorCode.UNKNOWN_SERVER_ERROR
        assert message == f"{type(self.error).__name__}: {self.error}"


@pytest.mark.parametrize("what", ["token", "store"])
def test_delete_topics_answers_a_failure_that_is_not_a_refusal(what: str) -> None:
    h, store = admin_harness()
    broken = _Broken(h, store, what)
    reply = h.call(delete_topics("orders"))
    [r] = reply.body.responses
    assert r.name == "orders"
    broken.check(int(r.error_code), r.error_message)
    assert "orders" in h.state.fmap.topics


@pytest.mark.parametrize("what", ["token", "store"])
def test_create_partitions_answers_a_failure_that_is_not_a_refusal(what: str) -> None:
    h, store = admin_harness()
    broken = _Broken(h, store, what)
    reply = h.call(create_partitions(6))
    [r] = reply.body.results
    assert r.name == "orders"
    broken.check(int(r.error_code), r.error_message)


@pytest.mark.parametrize("what", ["token", "store"])
def test_create_topics_answers_a_failure_that_is_not_a_refusal(what: str) -> None:
    h, store = admin_harness()
    broken = _Broken(h, store, what)
    reply = h.call(create_topics(creatable("new")))
    [t] = reply.body.topics
    broken.check(int(t.error_code), t.error_message)


@pytest.mark.parametrize("what", ["token", "store"])
@pytest.mark.parametrize("incremental", [False, True])
def test_alter_configs_answers_a_failure_that_is_not_a_refusal(what: str, incremental: bool
                                                               ) -> None:
    h, store = admin_harness()
    broken = _Broken(h, store, what)
    key = ApiKey.INCREMENTAL_ALTER_CONFIGS if incremental else ApiKey.ALTER_CONFIGS
    h.on(key, lambda sent: _altered(sent))
    h.on(ApiKey.DESCRIBE_CONFIGS, lambda sent: describe_configs_answer(
        sent, {"cleanup.policy": "compact"}))
    if incremental:
        r = make(key, 1, "AlterConfigsResource", resource_type=2, resource_name="orders",
                 configs=(make(key, 1, "AlterableConfig", name="cleanup.policy",
                               config_operation=0, value="compact"),))
        req = make(key, 1, resources=(r,), validate_only=False)
    else:
        r = make(key, 2, "AlterConfigsResource", resource_type=2, resource_name="orders",
                 configs=(make(key, 2, "AlterableConfig", name="cleanup.policy",
                               value="compact"),))
        req = make(key, 2, resources=(r,), validate_only=False)
    reply = h.call(req)
    [resp] = reply.body.responses
    assert resp.resource_name == "orders"
    broken.check(int(resp.error_code), resp.error_message)


# -- the intent timeout: the core's decision ------------------------------------------------


@pytest.mark.parametrize("request_timeout", [30.0, 300.0])
def test_every_intent_carries_the_proxys_intent_timeout(request_timeout: float) -> None:
    h, _ = admin_harness()
    h.state.request_timeout = request_timeout
    h.describe = described
    h.call(create_topics(creatable("new")))
    h.call(create_partitions(6))
    h.call(delete_topics("new"))
    timeouts = [(c.kind, c.timeout) for c in h.commands if isinstance(c, core.SubmitIntent)]
    expected = max(120.0, request_timeout)
    assert timeouts == [("create_topics", expected), ("add_partitions", expected),
                        ("delete_topic", expected)]
    assert admin_handlers.intent_timeout(h.state) == expected
    assert admin_handlers.submitter(h.state).timeout == expected  # auto-creation's too
