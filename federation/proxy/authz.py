"""Authorization of every API a proxy serves, in Kafka's resource model (KIP-11); sans-IO.

:data:`RULES` says, per API, which (resource type, name, operation) a request needs,
read from the decoded request itself, as a Kafka broker checks it:

* checks on the whole request (a group API's group): one denied, the request is answered
  with the error everywhere (:func:`~federation.protocol.errors.error_response`);
* checks on each item of one request array (a topic, a group, a coordinator key, a config
  resource): a denied item gets Kafka's error in its own answer entry, the others are
  served. The handler gets a copy of the request without the denied items, so when every
  item is denied nothing is served (nothing happens upstream) at all;
* filters of answers: ListGroups lists only the groups the principal may describe,
  OffsetFetch of all topics only the topics it may describe, CreateTopics hides the
  configs of a topic it may not describe.

A need is a tuple of alternatives (any one allowed suffices: CreateTopics needs Create on
the cluster *or* on the topic). :func:`gate` applies the rules with an ``authorize``
callback, the session's cached verdicts of the ``fedkafka_authorize`` chain.

Produce, Fetch and Metadata check per topic in their handlers (the hot path: one cached
verdict per topic); ApiVersions and the SASL handshake precede authentication; a Kafka
broker answers DescribeCluster to every authenticated client, and so does the proxy.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from federation.core.model import CLUSTER_RESOURCE, FederationMap, Operation, ResourceType
from federation.protocol import codec
from federation.protocol.errors import ErrorCode, error_response, to_kio
from federation.protocol.versions import ApiKey
from federation.proxy.routing import has_field, replace

__all__ = ["HANDLER_CHECKED", "NOT_CHECKED", "RULES", "Action", "Gate", "Items", "Rule", "gate",
           "needs_of"]

TOPIC_DENIED = ErrorCode.TOPIC_AUTHORIZATION_FAILED
GROUP_DENIED = ErrorCode.GROUP_AUTHORIZATION_FAILED
CLUSTER_DENIED = ErrorCode.CLUSTER_AUTHORIZATION_FAILED
#: Kafka's own messages for these errors (``Errors.message()``).
MESSAGES: dict[int, str] = {TOPIC_DENIED: "Topic authorization failed.",
            GROUP_DENIED: "Group authorization failed.",
            CLUSTER_DENIED: "Cluster authorization failed."}
#: Config resource types (DescribeConfigs, AlterConfigs, IncrementalAlterConfigs).
CONFIG_TOPIC, CONFIG_BROKER, CONFIG_BROKER_LOGGER, CONFIG_GROUP = 2, 4, 8, 32


@dataclass(frozen=True, slots=True)
class Action:
    """One question for the authorizer: may the principal do ``operation`` on a resource."""

    resource_type: ResourceType
    name: str
    operation: Operation

    def __str__(self) -> str:
        return f"{self.operation.value} on {self.resource_type.value}:{self.name}"


#: Alternatives: the need is met when any one of them is allowed.
Need = Iterable[Action]
Authorize = Callable[[Action], bool]


def topic(name: str, operation: Operation) -> Action:
    return Action(ResourceType.TOPIC, name, operation)


def group(name: str, operation: Operation) -> Action:
    return Action(ResourceType.GROUP, name, operation)


def cluster(operation: Operation) -> Action:
    return Action(ResourceType.CLUSTER, CLUSTER_RESOURCE, operation)


def _met(needs: Iterable[Need], authorize: Authorize) -> bool:
    return all(any(authorize(a) for a in need) for need in needs)


@dataclass(frozen=True, slots=True)
class Items:
    """Per-item checks on one request array, answered entry by entry in one response array."""

    get: Callable[[Any], Sequence[Any] | None]  #: the request's items (None: none checked)
    put: Callable[[Any, tuple[Any, ...]], Any]  #: the request with only these items
    answers: Callable[[Any], Sequence[Any]]  #: the response's entries
    put_answers: Callable[[Any, tuple[Any, ...]], Any]
    needs: Callable[[Any, FederationMap], Sequence[Need]]  #: what one item needs
    code: Callable[[Any], int]  #: the error a denied item is answered with
    key: Callable[[Any], Hashable]  #: an item's key, to answer in the request's order
    answer_key: Callable[[Any], Hashable]  #: an answer entry's key
    message: str | None = None  #: error message of a denied entry (else Kafka's default)
    once: bool = False  #: a name given twice is answered once (CreateTopics)


@dataclass(frozen=True, slots=True)
class Rule:
    """What one API needs. ``whole``: needs of the request (denied: ``whole_code`` everywhere);
    ``items``: needs per item; ``after``: a filter of the served answer."""

    whole: Callable[[Any, FederationMap], Sequence[Need]] | None = None
    whole_code: int = 0
    items: Items | None = None
    after: Callable[[Any, Any, Authorize, FederationMap], Any] | None = None
    #: requests with the same key have the same ``whole`` verdict: it is remembered (per
    #: principal and map version, by the caller) instead of asked again
    remember: Callable[[Any], Hashable] | None = None


@dataclass(slots=True)
class Gate:
    """A request some of whose items (or all) are denied, or whose answer is filtered.

    ``serve`` is what the handler gets (None: nothing is served, the answer is built here);
    :meth:`answer` turns the handler's answer (None if nothing was served) into the
    client's."""

    serve: codec.Request | None
    _finish: Callable[[Any], Any]

    def answer(self, response: Any) -> Any:
        return self._finish(response)


# -- the checks -------------------------------------------------------------------------


def _field(name: str) -> tuple[Callable[[Any], Any], Callable[[Any, tuple[Any, ...]], Any]]:
    return (lambda e: getattr(e, name, None)), (lambda e, items: replace(e, **{name: items}))


def _name(e: Any) -> Hashable:
    return e.name  # type: ignore[no-any-return]


def _itself(e: Any) -> Hashable:
    return e  # type: ignore[no-any-return]


def _group_id(e: Any) -> Hashable:
    return e.group_id  # type: ignore[no-any-return]


def _topics_rule(request_field: str, response_field: str, operation: Operation) -> Items:
    """Topics (by ``name``) that each need ``operation``, answered TOPIC_AUTHORIZATION_FAILED."""
    get, put = _field(request_field)
    answers, put_answers = _field(response_field)
    return Items(get, put, answers, put_answers,
                 needs=lambda t, fmap: ((topic(t.name, operation),),),
                 code=lambda t: TOPIC_DENIED, key=_name, answer_key=_name)


def _group_of(body: Any) -> str | None:
    """The group of a group request (OffsetFetch v8+: its one group; None if several)."""
    if has_field(body, "groups") and not has_field(body, "group_id"):
        groups: Any = body.groups or ()
        return groups[0].group_id if len(groups) == 1 else None  # type: ignore[no-any-return]
    return body.group_id  # type: ignore[no-any-return]


def _whole_group(operation: Operation) -> Callable[[Any, FederationMap], Sequence[Need]]:
    def needs(body: Any, fmap: FederationMap) -> Sequence[Need]:
        group_id = _group_of(body)
        return () if group_id is None else ((group(group_id, operation),),)
    return needs


# FindCoordinator: Describe on the group (key type 0); transactional ids (1) are refused by
# the handler (transactions are not supported) with TRANSACTIONAL_ID_AUTHORIZATION_FAILED.

def _coordinator_whole(body: Any, fmap: FederationMap) -> Sequence[Need]:
    if has_field(body, "coordinator_keys") or int(getattr(body, "key_type", 0)) != 0:
        return ()
    return ((group(body.key, Operation.DESCRIBE),),)


def _coordinator_keys() -> Items:
    get, put = _field("coordinator_keys")
    answers, put_answers = _field("coordinators")

    def needs(key: str, fmap: FederationMap) -> Sequence[Need]:
        return ((group(key, Operation.DESCRIBE),),)

    def get_group_keys(body: Any) -> Sequence[Any] | None:
        return get(body) if int(getattr(body, "key_type", 0)) == 0 else None  # type: ignore[no-any-return]

    return Items(get_group_keys, put, answers, put_answers, needs=needs,
                 code=lambda k: GROUP_DENIED, key=_itself, answer_key=lambda c: c.key)


# OffsetFetch: Describe on the group, Describe on each topic (Kafka's KafkaApis); v8+ holds
# its one group's topics one level down.

def _offset_fetch_topics() -> Items:
    def get(body: Any) -> Sequence[Any] | None:
        if has_field(body, "group_id"):
            return body.topics  # type: ignore[no-any-return]
        groups: Any = body.groups or ()
        return groups[0].topics if len(groups) == 1 else None  # type: ignore[no-any-return]

    def put(body: Any, items: tuple[Any, ...]) -> Any:
        if has_field(body, "group_id"):
            return replace(body, topics=items)
        return replace(body, groups=(replace(body.groups[0], topics=items),))

    def answers(resp: Any) -> Sequence[Any]:
        if has_field(resp, "groups"):
            return resp.groups[0].topics if resp.groups else ()
        return resp.topics  # type: ignore[no-any-return]

    def put_answers(resp: Any, entries: tuple[Any, ...]) -> Any:
        if has_field(resp, "groups"):
            return replace(resp, groups=(replace(resp.groups[0], topics=entries),
                                         *resp.groups[1:]))
        return replace(resp, topics=entries)

    return Items(get, put, answers, put_answers,
                 needs=lambda t, fmap: ((topic(t.name, Operation.DESCRIBE),),),
                 code=lambda t: TOPIC_DENIED, key=_name, answer_key=_name)


def _offset_fetch_all(body: Any, resp: Any, authorize: Authorize, fmap: FederationMap) -> Any:
    """OffsetFetch of every topic (topics null): only the topics the principal may describe."""
    rule = _OFFSET_FETCH_TOPICS
    if has_field(body, "group_id"):
        asked_all = body.topics is None
    else:
        asked_all = len(body.groups or ()) == 1 and body.groups[0].topics is None
    if not asked_all or (has_field(resp, "groups") and not resp.groups):
        return resp
    entries = rule.answers(resp)
    kept = tuple(e for e in entries if authorize(topic(e.name, Operation.DESCRIBE)))
    return resp if len(kept) == len(entries) else rule.put_answers(resp, kept)


_OFFSET_FETCH_TOPICS = _offset_fetch_topics()


def _list_groups(body: Any, resp: Any, authorize: Authorize, fmap: FederationMap) -> Any:
    """ListGroups: every group with Describe on the cluster, else those it may describe."""
    if authorize(cluster(Operation.DESCRIBE)):
        return resp
    kept = tuple(g for g in resp.groups if authorize(group(g.group_id, Operation.DESCRIBE)))
    return resp if len(kept) == len(resp.groups) else replace(resp, groups=kept)


# CreateTopics: Create on the cluster or on the topic; a created topic's configs, partition
# count and replication factor only to whom may describe its configs (Kafka's controller).

def _create_topics_needs(t: Any, fmap: FederationMap) -> Sequence[Need]:
    return ((cluster(Operation.CREATE), topic(t.name, Operation.CREATE)),)


def _create_topics_after(body: Any, resp: Any, authorize: Authorize, fmap: FederationMap
                         ) -> Any:
    if not resp.topics or not has_field(resp.topics[0], "topic_config_error_code"):
        return resp
    out = []
    for r in resp.topics:
        if int(r.error_code) == 0 and not authorize(topic(r.name, Operation.DESCRIBE_CONFIGS)):
            r = replace(r, num_partitions=-1, replication_factor=-1, configs=(),
                        topic_config_error_code=to_kio(TOPIC_DENIED))
        out.append(r)
    return replace(resp, topics=tuple(out))


# DeleteTopics: Delete on the cluster, or Describe and Delete on the topic (Kafka's
# controller); v6 names topics by name or by id (ids resolved through the map; a denied
# topic named by id keeps its name hidden unless the principal may describe it).

def _delete_topic_name(t: Any, fmap: FederationMap) -> str | None:
    if isinstance(t, str):
        return t
    if t.name is not None:
        return t.name  # type: ignore[no-any-return]
    found = fmap.topic_by_id(t.topic_id) if t.topic_id is not None else None
    return found.name if found is not None else None


def _delete_topics() -> Items:
    def get(body: Any) -> Sequence[Any] | None:
        return body.topic_names if has_field(body, "topic_names") else body.topics  # type: ignore[no-any-return]

    def put(body: Any, items: tuple[Any, ...]) -> Any:
        if has_field(body, "topic_names"):
            return replace(body, topic_names=items)
        return replace(body, topics=items)

    def needs(t: Any, fmap: FederationMap) -> Sequence[Need]:
        name = _delete_topic_name(t, fmap)
        if name is None:
            return ()  # an unknown id: the handler answers it
        everything = cluster(Operation.DELETE)
        return ((everything, topic(name, Operation.DESCRIBE)),
                (everything, topic(name, Operation.DELETE)))

    def key(t: Any) -> Hashable:
        return t if isinstance(t, str) else (t.name or t.topic_id)

    def answer_key(r: Any) -> Hashable:
        found: Hashable = r.name if getattr(r, "topic_id", None) is None or r.name \
            else r.topic_id
        return found

    answers, put_answers = _field("responses")
    return Items(get, put, answers, put_answers, needs=needs, code=lambda t: TOPIC_DENIED,
                 key=key, answer_key=answer_key)


def _delete_topics_after(body: Any, resp: Any, authorize: Authorize, fmap: FederationMap
                         ) -> Any:
    """A topic named by id and denied: its name only to whom may describe it."""
    if not has_field(body, "topics"):
        return resp
    out = []
    for r in resp.responses:
        if int(r.error_code) == TOPIC_DENIED and r.name is None and r.topic_id is not None:
            found = fmap.topic_by_id(r.topic_id)
            if found is not None and authorize(topic(found.name, Operation.DESCRIBE)):
                r = replace(r, name=found.name)
        out.append(r)
    return replace(resp, responses=tuple(out))


# DescribeConfigs / AlterConfigs / IncrementalAlterConfigs: DescribeConfigs or AlterConfigs
# on the topic, on the cluster (broker and broker-logger resources) or on the group.

_CONFIG_RESOURCE = {CONFIG_TOPIC: (ResourceType.TOPIC, TOPIC_DENIED),
                    CONFIG_BROKER: (ResourceType.CLUSTER, CLUSTER_DENIED),
                    CONFIG_BROKER_LOGGER: (ResourceType.CLUSTER, CLUSTER_DENIED),
                    CONFIG_GROUP: (ResourceType.GROUP, GROUP_DENIED)}


def _configs(response_field: str, operation: Operation) -> Items:
    get, put = _field("resources")
    answers, put_answers = _field(response_field)

    def needs(r: Any, fmap: FederationMap) -> Sequence[Need]:
        found = _CONFIG_RESOURCE.get(int(r.resource_type))
        if found is None:
            return ()  # a type the proxy does not serve: the handler refuses it
        kind = found[0]
        name = CLUSTER_RESOURCE if kind is ResourceType.CLUSTER else r.resource_name
        return ((Action(kind, name, operation),),)

    def code(r: Any) -> int:
        return _CONFIG_RESOURCE[int(r.resource_type)][1]

    def key(r: Any) -> Hashable:
        return (int(r.resource_type), r.resource_name)

    return Items(get, put, answers, put_answers, needs=needs, code=code, key=key, answer_key=key)


# InitProducerId (idempotent producers): IdempotentWrite on the cluster, or (Kafka 3.0+)
# Write on any topic. Transactional ids are refused by the handler.

def _init_producer_id(body: Any, fmap: FederationMap) -> Sequence[Need]:
    if body.transactional_id is not None:
        return ()
    # Lazily: the topics are only asked about when IdempotentWrite is denied.
    return (itertools.chain((cluster(Operation.IDEMPOTENT_WRITE),),
                            (topic(name, Operation.WRITE) for name in fmap.topics)),)


def _strings(request_field: str, response_field: str, answer_key: Callable[[Any], Hashable],
             needs: Callable[[Any, FederationMap], Sequence[Need]], code: int) -> Items:
    get, put = _field(request_field)
    answers, put_answers = _field(response_field)
    return Items(get, put, answers, put_answers, needs=needs, code=lambda _: code, key=_itself,
                 answer_key=answer_key)


_GROUP_READ = _whole_group(Operation.READ)

#: Per API the proxy serves (except those in :data:`HANDLER_CHECKED` and
#: :data:`NOT_CHECKED`): what a request needs.
RULES: dict[int, Rule] = {
    ApiKey.LIST_OFFSETS: Rule(items=_topics_rule("topics", "topics", Operation.DESCRIBE)),
    ApiKey.INIT_PRODUCER_ID: Rule(whole=_init_producer_id, whole_code=CLUSTER_DENIED,
                                  remember=lambda body: body.transactional_id is None),
    ApiKey.FIND_COORDINATOR: Rule(whole=_coordinator_whole, whole_code=GROUP_DENIED,
                                  items=_coordinator_keys()),
    ApiKey.JOIN_GROUP: Rule(whole=_GROUP_READ, whole_code=GROUP_DENIED),
    ApiKey.SYNC_GROUP: Rule(whole=_GROUP_READ, whole_code=GROUP_DENIED),
    ApiKey.HEARTBEAT: Rule(whole=_GROUP_READ, whole_code=GROUP_DENIED),
    ApiKey.LEAVE_GROUP: Rule(whole=_GROUP_READ, whole_code=GROUP_DENIED),
    ApiKey.OFFSET_COMMIT: Rule(whole=_GROUP_READ, whole_code=GROUP_DENIED,
                               items=_topics_rule("topics", "topics", Operation.READ)),
    ApiKey.OFFSET_FETCH: Rule(whole=_whole_group(Operation.DESCRIBE), whole_code=GROUP_DENIED,
                              items=_OFFSET_FETCH_TOPICS, after=_offset_fetch_all),
    ApiKey.DESCRIBE_GROUPS: Rule(items=_strings(
        "groups", "groups", _group_id,
        lambda g, fmap: ((group(g, Operation.DESCRIBE),),), GROUP_DENIED)),
    ApiKey.LIST_GROUPS: Rule(after=_list_groups),
    ApiKey.CREATE_TOPICS: Rule(
        items=Items(*_field("topics"), *_field("topics"), needs=_create_topics_needs,
                    code=lambda t: TOPIC_DENIED, key=_name, answer_key=_name,
                    message="Authorization failed.", once=True),
        after=_create_topics_after),
    ApiKey.DELETE_TOPICS: Rule(items=_delete_topics(), after=_delete_topics_after),
    ApiKey.CREATE_PARTITIONS: Rule(items=_topics_rule("topics", "results", Operation.ALTER)),
    ApiKey.DESCRIBE_CONFIGS: Rule(items=_configs("results", Operation.DESCRIBE_CONFIGS)),
    ApiKey.ALTER_CONFIGS: Rule(items=_configs("responses", Operation.ALTER_CONFIGS)),
    ApiKey.INCREMENTAL_ALTER_CONFIGS: Rule(items=_configs("responses",
                                                          Operation.ALTER_CONFIGS)),
    # DescribeLogDirs: Describe on the cluster (Kafka's KafkaApis); denied, no log dir and
    # CLUSTER_AUTHORIZATION_FAILED (v3+).
    ApiKey.DESCRIBE_LOG_DIRS: Rule(whole=lambda body, fmap: ((cluster(Operation.DESCRIBE),),),
                                   whole_code=CLUSTER_DENIED, remember=lambda body: True),
    ApiKey.DELETE_RECORDS: Rule(items=_topics_rule("topics", "topics", Operation.DELETE)),
    ApiKey.DELETE_GROUPS: Rule(items=_strings(
        "groups_names", "results", _group_id,
        lambda g, fmap: ((group(g, Operation.DELETE),),), GROUP_DENIED)),
    ApiKey.OFFSET_DELETE: Rule(whole=_whole_group(Operation.DELETE), whole_code=GROUP_DENIED,
                               items=_topics_rule("topics", "topics", Operation.READ)),
    ApiKey.DESCRIBE_PRODUCERS: Rule(items=_topics_rule("topics", "topics", Operation.READ)),
}

#: APIs whose handlers check per topic themselves (Describe / Write / Read on Topic), 75
#: being DescribeTopicPartitions (Describe on each topic, as Metadata).
HANDLER_CHECKED = frozenset({ApiKey.METADATA, ApiKey.PRODUCE, ApiKey.FETCH, 75})
#: APIs a Kafka broker serves without authorization.
NOT_CHECKED = frozenset({ApiKey.API_VERSIONS, ApiKey.SASL_HANDSHAKE, ApiKey.SASL_AUTHENTICATE,
                         ApiKey.DESCRIBE_CLUSTER})


def needs_of(req: codec.Request, fmap: FederationMap) -> list[tuple[Any, Sequence[Need]]]:
    """Every check a request calls for: ``("request", needs)`` then ``(item, needs)`` per
    item (for tests and for reading; :func:`gate` is what the proxy runs)."""
    rule = RULES.get(req.header.api_key)
    if rule is None:
        return []
    out: list[tuple[Any, Sequence[Need]]] = []
    if rule.whole is not None:
        out.append(("request", [tuple(n) for n in rule.whole(req.entity, fmap)]))
    if rule.items is not None:
        for item in rule.items.get(req.entity) or ():
            out.append((item, [tuple(n) for n in rule.items.needs(item, fmap)]))
    return out


# -- applying them -------------------------------------------------------------------------


def gate(req: codec.Request, authorize: Authorize, fmap: FederationMap,
         memo: dict[Hashable, bool] | None = None) -> Gate | None:
    """What the proxy serves of ``req`` and how it answers; None: serve it as it is.

    :param memo: whole-request verdicts of rules that ``remember`` them (InitProducerId:
        Write on *any* topic may take a question per topic), kept by the caller for one
        principal and map version.
    """
    rule = RULES.get(req.header.api_key)
    if rule is None:
        return None
    body: Any = req.entity
    if rule.whole is not None and not _whole_met(req, rule, authorize, fmap, memo):
        denied = _with_message(error_response(req, rule.whole_code), rule.whole_code, None)
        return Gate(None, lambda _: denied)
    items = rule.items
    denied_items: list[tuple[int, Any]] = []
    serve: codec.Request | None = req
    if items is not None:
        given = items.get(body)
        if given:
            allowed = []
            for item in given:
                if _met(items.needs(item, fmap), authorize):
                    allowed.append(item)
                else:
                    denied_items.append((items.code(item), item))
            if denied_items:
                serve = (codec.Request(req.header, items.put(body, tuple(allowed)))
                         if allowed else None)
    if not denied_items and rule.after is None:
        return None
    after = rule.after

    def finish(response: Any) -> Any:
        if response is None:  # nothing served: an answer of the denied items alone
            assert items is not None
            response = error_response(codec.Request(req.header, items.put(body, ())), 0)
        if denied_items:
            assert items is not None
            response = _merge(req, items, response, denied_items)
        if after is not None:
            response = after(body, response, authorize, fmap)
        return response

    return Gate(serve, finish)


def _whole_met(req: codec.Request, rule: Rule, authorize: Authorize, fmap: FederationMap,
               memo: dict[Hashable, bool] | None) -> bool:
    assert rule.whole is not None
    if rule.remember is None or memo is None:
        return _met(rule.whole(req.entity, fmap), authorize)
    key = (req.header.api_key, rule.remember(req.entity))
    met = memo.get(key)
    if met is None:
        met = memo[key] = _met(rule.whole(req.entity, fmap), authorize)
    return met


def _merge(req: codec.Request, items: Items, response: Any,
           denied: list[tuple[int, Any]]) -> Any:
    """The served answer with an entry per denied item, in the request's order."""
    body: Any = req.entity
    by_code: dict[int, list[Any]] = collections.defaultdict(list)
    seen: set[Hashable] = set()
    for code, item in denied:
        if items.once:
            key = items.key(item)
            if key in seen:
                continue
            seen.add(key)
        by_code[code].append(item)
    extra: list[Any] = []
    for code, denied_items in by_code.items():
        part = error_response(codec.Request(req.header, items.put(body, tuple(denied_items))),
                              code)
        extra.extend(_with_message(e, code, items.message) for e in items.answers(part))
    order: dict[Hashable, int] = {}
    for i, item in enumerate(items.get(body) or ()):
        order.setdefault(items.key(item), i)
    entries = [*items.answers(response), *extra]
    entries.sort(key=lambda e: order.get(items.answer_key(e), len(order)))
    return items.put_answers(response, tuple(entries))


def _with_message(entity: Any, code: int, message: str | None) -> Any:
    if has_field(entity, "error_message") and entity.error_message is None \
            and int(getattr(entity, "error_code", 0)) == code:
        return replace(entity, error_message=message or MESSAGES.get(code))
    return entity
