"""Kafka admin requests through the proxy act on *logical* topics (via federation.clusters.admin).

CreateTopics lays the topic out with its mapping strategy (config key
``fedkafka.strategy``, default ``contiguous``), creates the physical and shadow topics,
publishes the map, and answers once this proxy serves the new map, so the client can use
the topic at once. It answers as Kafka does: the same checks, codes and messages for
names, partition counts, replication factors and replica assignments; the replication
factor (-1: the brokers' default) and configs passed to the physical topics, whose
refusals (INVALID_CONFIG, POLICY_VIOLATION...) come back with their own code and message;
v5+ results carry the partition count, replication factor and the topic's configs.
``validate_only`` has every physical cluster validate and creates nothing.
DeleteTopics and CreatePartitions likewise.

Each is a generator step of the sans-IO core (:mod:`federation.proxy.core`): every
check, error code and wait is decided here; the store is read through ``Offload``, the
controller's intent endpoint through ``SubmitIntent``, the physical clusters' admin
requests through ``ValidatePhysical``/``DescribePhysical``, and the read-your-writes
polling waits on the core's clock (``WaitAny`` timers).

Configs: :mod:`federation.proxy.configs`; DeleteRecords, DeleteGroups, OffsetDelete,
DescribeProducers: :mod:`federation.proxy.admin_apis`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from federation.clusters import admin
from federation.clusters.admin import topic_name_error as topic_name_error  # for Metadata too
from federation.controller import intents
from federation.protocol import codec
from federation.protocol.errors import ErrorCode, to_kio
from federation.protocol.versions import ApiKey
from federation.proxy.core import (
    DescribePhysical,
    Offload,
    Step,
    SubmitIntent,
    ValidatePhysical,
    WaitAny,
)
from federation.proxy.limits import PartitionBudget
from federation.proxy.routing import build, resp_module

if TYPE_CHECKING:
    from federation.proxy.server import ProxyState

log = logging.getLogger("fedkafka.proxy.admin")
STRATEGY_CONFIG = "fedkafka.strategy"


def _ms(value: int) -> Any:
    import datetime

    return datetime.timedelta(milliseconds=value)


def intent_timeout(state: ProxyState) -> float:
    """How long this proxy waits for an intent to be applied (seconds): a create of many
    topics may take the controller a while; a Kafka client that gives up earlier retries,
    and its retry then waits for this one (intents run one by one)."""
    return max(120.0, state.request_timeout)


def submitter(state: ProxyState) -> intents.Submitter:
    """How this proxy changes the map: intents to the active controller as the ``proxy``
    identity (``$FEDKAFKA_INTENT_TOKEN[_FILE]``, else the token remembered for its store);
    a proxy never writes the map itself, so it needs only read access to the store."""
    token = intents.resolve_token() or intents.store_token(state.config.store, intents.PROXY)
    return intents.Submitter(token=token, allow_direct=False, timeout=intent_timeout(state))


def load(state: ProxyState) -> Step:
    """The map in the store (read off the event loop); raises as admin does when none."""
    fmap = yield Offload(state.backend.load, ())
    if fmap is None:
        raise admin._no_map()
    return fmap


def _refresh(state: ProxyState) -> Step:
    """Serve the store's map now (best effort: the store away, the map follower brings it
    later, and the answer goes out all the same)."""
    try:
        fmap = yield Offload(state.backend.load, ())
    except Exception as e:  # noqa: BLE001 - answered anyway; the failure is logged
        log.warning("cannot read the map from the store: %s", e)
        return
    if fmap is not None:
        state.set_map(fmap)


#: How often the store's member records are read while waiting for them (seconds).
SERVED_POLL = 0.02


def _served_everywhere(state: ProxyState, timeout: Any, clock: Callable[[], float]) -> Step:
    """Read-your-writes: wait until every proxy and name service registered in the store
    serves (at least) the map this proxy now serves, at most the request's ``timeout`` (a
    timedelta; 0: no wait) and never beyond the proxy's request timeout. Members that do
    not report a map version (older builds) are not waited for; a member still behind at
    the deadline is logged and the answer goes out (the change itself succeeded)."""
    wait = min(timeout.total_seconds(), state.request_timeout)
    if wait <= 0:
        return
    yield from _refresh(state)
    version = state.fmap.version
    deadline = clock() + wait
    while True:
        try:
            members = yield Offload(state.backend.members, ("proxy",))
        except Exception as e:  # noqa: BLE001 - the store is away: nothing to wait for
            log.warning("cannot read the proxies' map versions: %s", e)
            return
        behind = {m: d["map_version"] for m, d in members.items()
                  if isinstance(d.get("map_version"), int) and d["map_version"] < version}
        if not behind:
            return
        if clock() >= deadline:
            log.warning("map version %d not yet served by %s after %.1fs; answering anyway",
                        version, behind, wait)
            return
        yield WaitAny((), clock() + SERVED_POLL)


INVALID_REPLICA_ASSIGNMENT = 39


class _Refusal(Exception):
    """One topic of a CreateTopics request refused before any physical cluster is asked."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _known_brokers(state: ProxyState) -> set[int]:
    """Node ids a client may know as brokers: every proxy of every pool (and this one)."""
    ids = {p.node_id for members in state.fmap.pools.values() for p in members}
    ids.add(state.config.node_id)
    return ids


def _assignment_layout(state: ProxyState, t: Any) -> tuple[int, int]:
    """(partitions, replication factor) of an explicit replica assignment, checked the way
    Kafka's controller checks it (same codes and messages). Replicas name the brokers the
    client sees (proxies); physical placement is left to each physical cluster, with the
    same number of replicas."""
    if int(t.replication_factor) != -1:
        raise _Refusal(ErrorCode.INVALID_REQUEST, "A manual partition assignment was "
                       "specified, but replication factor was not set to -1.")
    if int(t.num_partitions) != -1:
        raise _Refusal(ErrorCode.INVALID_REQUEST, "A manual partition assignment was "
                       "specified, but numPartitions was not set to -1.")
    known = _known_brokers(state)
    seen: set[int] = set()
    replicas: int | None = None
    for a in t.assignments:
        index = int(a.partition_index)
        if index in seen:
            raise _Refusal(INVALID_REPLICA_ASSIGNMENT, "Found multiple manual "
                           f"partition assignments for partition {index}")
        seen.add(index)
        brokers = sorted(int(b) for b in a.broker_ids)
        if not brokers:
            raise _Refusal(INVALID_REPLICA_ASSIGNMENT, "The manual partition "
                           "assignment includes an empty replica list.")
        previous = None
        for b in brokers:
            if b not in known:
                raise _Refusal(INVALID_REPLICA_ASSIGNMENT, "The manual partition "
                               f"assignment includes broker {b}, but no such broker is "
                               "registered.")
            if b == previous:
                raise _Refusal(INVALID_REPLICA_ASSIGNMENT, "The manual partition "
                               f"assignment includes the broker {b} more than once.")
            previous = b
        if replicas is not None and len(brokers) != replicas:
            raise _Refusal(INVALID_REPLICA_ASSIGNMENT, "The manual partition "
                           f"assignment includes a partition with {len(brokers)} replica(s), "
                           "but this is not consistent with previous partitions, which have "
                           f"{replicas} replica(s).")
        replicas = len(brokers)
    if seen != set(range(len(seen))):
        raise _Refusal(INVALID_REPLICA_ASSIGNMENT,
                       "partitions should be a consecutive 0-based integer sequence")
    assert replicas is not None
    return len(seen), replicas


def _layout(state: ProxyState, t: Any, configs: dict[str, str]) -> tuple[int, int]:
    """(partitions, replication factor; -1: the physical brokers' default) asked for."""
    if t.assignments:
        return _assignment_layout(state, t)
    partitions = int(t.num_partitions)
    if partitions == -1:
        partitions = int(configs.pop("num.partitions", "1"))
    if partitions <= 0:
        raise _Refusal(ErrorCode.INVALID_PARTITIONS,
                       "Number of partitions was set to an invalid non-positive value.")
    replication = int(t.replication_factor)
    if replication == 0 or replication < -1:
        raise _Refusal(ErrorCode.INVALID_REPLICATION_FACTOR, "Replication factor must be "
                       "larger than 0, or -1 to use the default value.")
    return partitions, replication


def _topic_configs(mod: Any, configs: list[admin.TopicConfig]) -> tuple[Any, ...]:
    if not hasattr(mod, "CreatableTopicConfigs"):
        return ()
    return tuple(build(mod.CreatableTopicConfigs, name=c.name,
                       value=None if c.sensitive else c.value, read_only=c.read_only,
                       config_source=c.source, is_sensitive=c.sensitive)
                 for c in configs)


@dataclass
class _Answer:
    """One topic's CreateTopics answer, filled in as the request goes on."""

    name: str
    code: int = 0
    message: str | None = None
    topic_id: Any = None
    partitions: int = -1
    replication: int = -1
    configs: dict[str, str] = field(default_factory=dict)
    strategy: str = "contiguous"
    strategy_asked: bool = False
    described: list[admin.TopicConfig] = field(default_factory=list)

    def refuse(self, code: int, message: str | None) -> None:
        self.code, self.message = code, message


def _check_creatable(state: ProxyState, t: Any, duplicated: bool, answer: _Answer) -> None:
    """Kafka's checks of one CreateTopics entry, before any physical cluster is asked."""
    if duplicated:
        raise _Refusal(ErrorCode.INVALID_REQUEST, "Duplicate topic name.")
    reason = topic_name_error(t.name)
    if reason is not None:
        raise _Refusal(ErrorCode.INVALID_TOPIC_EXCEPTION, reason)
    if t.name in state.fmap.topics:
        raise _Refusal(ErrorCode.TOPIC_ALREADY_EXISTS, f"Topic '{t.name}' already exists.")
    for c in t.configs:
        if c.value is None:
            raise _Refusal(ErrorCode.INVALID_CONFIG,
                           f"Null value not supported for topic configs: {c.name}")
    answer.configs = {c.name: c.value for c in t.configs}
    answer.strategy_asked = STRATEGY_CONFIG in answer.configs
    answer.strategy = answer.configs.pop(STRATEGY_CONFIG, "contiguous")
    answer.partitions, answer.replication = _layout(state, t, answer.configs)


def failure_answer(e: BaseException, what: str, api: str = "CreateTopics") -> tuple[int, str]:
    """The (error code, message) a topic's failure is answered with: a refusal's own, else
    UNKNOWN_SERVER_ERROR naming the failure (no intent token, the store away...: logged).
    The client gets an answer for every topic, never a closed connection."""
    if isinstance(e, _Refusal):
        return e.code, e.message
    if isinstance(e, admin.AdminError):
        return e.error_code, e.error_message
    if isinstance(e, ValueError):
        return ErrorCode.INVALID_REQUEST, str(e)
    log.error("%s %s failed", api, what, exc_info=e)
    return ErrorCode.UNKNOWN_SERVER_ERROR, f"{type(e).__name__}: {e}"


def create_topics(state: ProxyState, req: codec.Request, clock: Callable[[], float]) -> Step:
    """CreateTopics answered the way a Kafka cluster answers it: v5+ results carry the
    partition count, replication factor and configs (empty, never null, on errors);
    physical refusals keep their Kafka error code and message. All the topics of one
    request are created together (:func:`federation.clusters.admin.create_topics`: one request per
    cluster and step, one map publish), each succeeding or failing on its own."""
    body: Any = req.entity
    mod = resp_module(ApiKey.CREATE_TOPICS, req.header.api_version)
    names = Counter(t.name for t in body.topics)
    answers: list[_Answer] = []
    budget = PartitionBudget(state.config.limits)  # Kafka's controller: 10,000 per request
    for t in body.topics:
        if any(a.name == t.name for a in answers):
            continue  # a duplicated name gets one answer, as from Kafka
        answer = _Answer(t.name)
        answers.append(answer)
        try:
            _check_creatable(state, t, names[t.name] > 1, answer)
            over = budget.take(answer.partitions)
            if over is not None:
                raise _Refusal(*over)
            if body.validate_only:
                # (admin.validate_create_topic's steps: plan on the stored map, then every
                # physical cluster involved validates)
                fmap = yield from load(state)
                topic = admin.plan_create_topic(fmap, t.name, answer.partitions,
                                                answer.strategy, answer.configs,
                                                plugins=state.plugins)
                yield ValidatePhysical(fmap, t.name, admin.physical_needs(fmap, topic),
                                       answer.replication, answer.configs)
                answer.described = [admin.TopicConfig(k, v) for k, v in answer.configs.items()]
        except Exception as e:  # noqa: BLE001 - one topic's failure (logged if unexpected)
            answer.refuse(*failure_answer(e, t.name))
    if budget.hit:
        state.metrics.limit_hit("max_partitions_per_request")
    pending = [a for a in answers if not a.code and not body.validate_only]
    if pending:
        yield from _create_pending(state, pending)
    for a in answers:
        if not a.code and a.strategy_asked:
            a.described.append(admin.TopicConfig(STRATEGY_CONFIG, a.strategy, read_only=True))
    results = [build(mod.CreatableTopicResult, name=a.name, topic_id=a.topic_id,
                     error_code=to_kio(a.code), error_message=a.message,
                     topic_config_error_code=0,
                     num_partitions=-1 if a.code else a.partitions,
                     replication_factor=-1 if a.code else a.replication,
                     configs=_topic_configs(mod, [] if a.code else a.described))
               for a in answers]
    if pending and any(not a.code for a in pending):
        yield from _served_everywhere(state, body.timeout, clock)
    else:
        yield from _refresh(state)
    return build(mod.CreateTopicsResponse, throttle_time=_ms(0), topics=tuple(results))


def _create_pending(state: ProxyState, pending: list[_Answer]) -> Step:
    specs = [admin.TopicSpec(a.name, a.partitions, a.strategy, a.configs, a.replication)
             for a in pending]
    try:
        # (intents.create_topics' steps: the layout planned on the stored map, the intent,
        # each topic's outcome read from the map that applied it)
        before = yield from load(state)
        answer = yield SubmitIntent("create_topics", intents.create_topics_args(
            before, specs, plugins=state.plugins), intent_timeout(state))
        outcomes = intents.create_topics_outcome((yield from load(state)), specs, answer)
    except Exception as e:  # noqa: BLE001 - the whole request failed (a cluster away...)
        failure = failure_answer(e, ", ".join(a.name for a in pending))
        for a in pending:
            a.refuse(*failure)
        return
    created = []
    for a, outcome in zip(pending, outcomes, strict=True):
        if isinstance(outcome, admin.AdminError):
            a.refuse(outcome.error_code, outcome.error_message)
            continue
        a.topic_id = outcome.topic_id
        a.described = [admin.TopicConfig(k, v) for k, v in a.configs.items()]
        created.append(outcome)
        log.info("created logical topic %s (%d partitions, %s)", a.name, a.partitions,
                 a.strategy)
    if not created:
        return
    # The configs and replication factor of each new topic as Kafka reports them.
    described = yield DescribePhysical(state.fmap, created)
    for a in pending:
        found = described.get(a.name)
        if isinstance(found, admin.PhysicalTopic):
            a.described = list(found.configs)
            a.replication = found.replication_factor
        elif found is not None:  # created all the same; answer what we know
            log.warning("created %s but could not describe it: %s", a.name, found)


def delete_topics(state: ProxyState, req: codec.Request, clock: Callable[[], float]) -> Step:
    body: Any = req.entity
    mod = resp_module(ApiKey.DELETE_TOPICS, req.header.api_version)
    if hasattr(body, "topic_names"):
        items = [(n, None) for n in body.topic_names]
    else:
        items = []
        for t in body.topics:
            name = t.name
            if name is None and t.topic_id is not None:
                found = state.fmap.topic_by_id(t.topic_id)
                name = found.name if found else None
            items.append((name, t.topic_id))
    results = []
    for name, topic_id in items:
        code, message = 0, None
        try:
            if name is None:
                raise admin.UnknownTopicError("unknown topic id")
            # (intents.delete_topic's steps: known in the stored map, then the intent)
            admin._topic((yield from load(state)), name)
            yield SubmitIntent("delete_topic", {"name": name}, intent_timeout(state))
        except Exception as e:  # noqa: BLE001 - one topic's failure (logged if unexpected)
            code, message = failure_answer(e, str(name), "DeleteTopics")
        results.append(build(mod.DeletableTopicResult, name=name, topic_id=topic_id,
                             error_code=to_kio(code), error_message=message))
    if any(int(r.error_code) == 0 for r in results):
        yield from _served_everywhere(state, body.timeout, clock)
    else:
        yield from _refresh(state)
    return build(mod.DeleteTopicsResponse, throttle_time=_ms(0), responses=tuple(results))


def create_partitions(state: ProxyState, req: codec.Request, clock: Callable[[], float]
                      ) -> Step:
    body: Any = req.entity
    mod = resp_module(ApiKey.CREATE_PARTITIONS, req.header.api_version)
    results = []
    budget = PartitionBudget(state.config.limits)
    for t in body.topics:
        code, message = 0, None
        try:
            current = state.fmap.topics.get(t.name)
            # (an unknown topic is answered as such by admin, spending nothing)
            over = budget.take(int(t.count) - len(current.partitions) if current else 0)
            if over is not None:
                code, message = over
            elif body.validate_only:
                admin.plan_add_partitions(state.fmap, t.name, int(t.count),
                                          plugins=state.plugins)
            else:
                # (intents.add_partitions' steps: the intent, then the topic in the map
                # that applied it)
                yield SubmitIntent("add_partitions", {"name": t.name, "count": int(t.count)},
                                   intent_timeout(state))
                admin._topic((yield from load(state)), t.name)
        except ValueError as e:
            code, message = ErrorCode.INVALID_PARTITIONS, str(e)
        except Exception as e:  # noqa: BLE001 - one topic's failure (logged if unexpected)
            code, message = failure_answer(e, t.name, "CreatePartitions")
        results.append(build(mod.CreatePartitionsTopicResult, name=t.name,
                             error_code=to_kio(code), error_message=message))
    if budget.hit:
        state.metrics.limit_hit("max_partitions_per_request")
    if any(int(r.error_code) == 0 for r in results) and not body.validate_only:
        yield from _served_everywhere(state, body.timeout, clock)
    else:
        yield from _refresh(state)
    return build(mod.CreatePartitionsResponse, throttle_time=_ms(0), results=tuple(results))

