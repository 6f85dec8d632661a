"""DescribeConfigs, AlterConfigs and IncrementalAlterConfigs through the proxy.

Resources, by type (docs/compatibility.md has the table):

* **TOPIC** (a logical topic): described from the physical data topic holding partition
  0's active segment (every config with its source, synonyms and documentation, as Kafka
  answers), plus the read-only ``fedkafka.strategy`` (a default unless chosen). An alter
  is validated by every cluster holding a segment of the topic (``validate_only``), then
  applied to every physical data topic of the topic on every one of them, with the
  client's own request and version, so Kafka's checks, semantics (AlterConfigs replaces
  the dynamic set; IncrementalAlterConfigs SET/DELETE/APPEND/SUBTRACT) and messages hold.
  The resulting dynamic configs are recorded in the map (``LogicalTopic.config``):
  physical topics created later for the topic (new segments, repairs) get them too.
  Guarantee: the alter is answered only once (a) the broker of each holding cluster that
  the proxy reads shows the change on every physical topic of the topic (Kafka in KRaft
  mode answers an alter when its controller committed it, and a broker applies it a
  moment later: read at once, it may still show a config just deleted), at most
  :data:`VISIBLE_WAIT` s, then logged, and (b) the map recording the configs read then
  is stored and served by this proxy (the controller's intent). A later DescribeConfigs
  through any proxy reads partition 0's physical topic on its cluster, so it shows the
  change, as long as that cluster answers from the broker read (a cluster of several
  brokers may answer from one that lags: Kafka's own behaviour). ADR 0025.
* **BROKER** / **BROKER_LOGGER**: the brokers a client sees are proxies. Described from one
  broker of the coordination cluster (``""``: the cluster-wide dynamic defaults), answered
  under the proxy's id, with the federation's own values for ``node.id``/``broker.id``,
  ``advertised.listeners``, ``auto.create.topics.enable`` and ``num.partitions`` (the
  auto-creation policy). Altering them is refused with INVALID_REQUEST: broker settings
  belong to each physical cluster.
* **GROUP**: consumer groups live on the coordination cluster: forwarded there.
* anything else: INVALID_REQUEST, as Kafka answers a resource type it does not support.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kio.schema.describe_configs.v1 import request as describe_configs_v1
from kio.static.primitive import i8

from federation.clusters import admin
from federation.clusters.upstream import UpstreamError
from federation.core.model import FederationMap, LogicalTopic
from federation.protocol import codec
from federation.protocol.errors import ErrorCode, to_kio
from federation.protocol.versions import ApiKey
from federation.proxy.admin_handlers import failure_answer, intent_timeout, load
from federation.proxy.core import (
    Gather,
    Offload,
    Refresh,
    Send,
    Step,
    SubmitIntent,
    WaitAny,
    wait,
)
from federation.proxy.routing import build, replace, resp_module

if TYPE_CHECKING:
    from federation.proxy.server import ProxyState

log = logging.getLogger("fedkafka.proxy.configs")

STRATEGY_CONFIG = "fedkafka.strategy"
UNKNOWN_RESOURCE, TOPIC, BROKER, BROKER_LOGGER, GROUP = 0, 2, 4, 8, 32
DYNAMIC_TOPIC_CONFIG = 1
#: ``source`` of the read-only ``fedkafka.strategy`` entry: DEFAULT_CONFIG for the default
#: strategy (so ``kafka-topics --describe`` and ``kafka-configs --describe`` list it only
#: with ``--all``, as for any default), DYNAMIC_TOPIC_CONFIG for one chosen at creation.
DEFAULT_CONFIG = 5
DEFAULT_STRATEGY = "contiguous"
#: Broker configs answered with the federation's values (see :func:`_federation_values`).
_PER_PROXY = ("node.id", "broker.id")
#: How long an alter waits for the brokers to show its change (seconds, at most; and never
#: beyond the proxy's request timeout), and how often it looks meanwhile.
VISIBLE_WAIT, VISIBLE_POLL = 10.0, 0.01


def _ms(value: int) -> Any:
    import datetime

    return datetime.timedelta(milliseconds=value)


class _Refused(Exception):
    def __init__(self, code: int, message: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _unknown_topic(name: str) -> _Refused:
    return _Refused(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "")  # Kafka's words: none


def _logical_topic(fmap: FederationMap, name: str) -> LogicalTopic:
    topic = fmap.topics.get(name)
    if topic is None:
        reason = admin.topic_name_error(name)
        if reason is not None:
            raise _Refused(ErrorCode.INVALID_TOPIC_EXCEPTION, reason)
        raise _unknown_topic(name)
    return topic


def physical_topics(topic: LogicalTopic) -> dict[str, list[str]]:
    """cluster → the physical data topics holding a segment of ``topic`` (sealed ones too)."""
    out: dict[str, list[str]] = defaultdict(list)
    for partition in topic.partitions:
        for s in partition.segments:
            if s.topic not in out[s.cluster]:
                out[s.cluster].append(s.topic)
    return dict(out)


def _broker_id(state: ProxyState, name: str) -> int | None:
    """The proxy id a BROKER resource names (None: ``""``, the cluster-wide defaults)."""
    if name == "":
        return None
    try:
        wanted = int(name)
    except ValueError:
        raise _Refused(ErrorCode.INVALID_REQUEST,
                       f"Broker id must be an integer, but it is: {name}") from None
    known = {p.node_id for members in state.fmap.pools.values() for p in members}
    known.add(state.config.node_id)
    if wanted not in known:
        raise _Refused(ErrorCode.INVALID_REQUEST,
                       f"Unexpected broker id, expected {state.config.node_id} or empty "
                       f"string, but received {name}")
    return wanted


def _broker_node(state: ProxyState, cluster_id: str) -> Step:
    """The node id of one broker (the lowest id) of a physical cluster."""
    cluster = state.cluster(cluster_id)
    view = cluster.view if cluster.view.brokers else (yield Refresh(cluster))
    return min(view.brokers)


# -- DescribeConfigs -----------------------------------------------------------------------


def describe_configs(state: ProxyState, req: codec.Request) -> Step:
    body: Any = req.entity
    mod = resp_module(ApiKey.DESCRIBE_CONFIGS, req.header.api_version)
    client_id = req.header.client_id

    def one(r: Any) -> Step:
        kind, name = int(r.resource_type), r.resource_name
        try:
            if kind == TOPIC:
                return (yield from _describe_topic(state, body, r, mod, client_id))
            if kind in (BROKER, BROKER_LOGGER):
                return (yield from _describe_broker(state, body, r, client_id))
            if kind == GROUP:
                return (yield from _forward_one(state, body, "resources", r,
                                                state.coordination_cluster(name), client_id,
                                                "results"))
            raise _Refused(ErrorCode.INVALID_REQUEST, f"Unsupported resource type {kind}: "
                           "this federation describes TOPIC, BROKER, BROKER_LOGGER and GROUP "
                           "configs")
        except _Refused as e:
            code, message = e.code, e.message
        except UpstreamError as e:
            code, message = e.error_code, str(e)
        return build(mod.DescribeConfigsResult, error_code=to_kio(code), error_message=message,
                     resource_type=r.resource_type, resource_name=name, configs=())

    results = yield Gather([one(r) for r in body.resources])
    return build(mod.DescribeConfigsResponse, throttle_time=_ms(0), results=tuple(results))


def _forward_one(state: ProxyState, body: Any, field: str, resource: Any,
                 cluster_id: str, client_id: str | None, answers: str,
                 node: int | None = None) -> Step:
    """Send ``body`` with only ``resource`` (its ``field`` array) to a cluster (to broker
    ``node``, else any) on the proxy's shared connections; its answer."""
    pending = yield Send(state.cluster(cluster_id), node, replace(body, **{field: (resource,)}),
                         client_id, state.request_timeout, shared=True)
    resp = yield from wait(pending)
    [result] = getattr(resp, answers)
    return result


def _describe_topic(state: ProxyState, body: Any, r: Any, mod: Any,
                    client_id: str | None) -> Step:
    topic = _logical_topic(state.fmap, r.resource_name)
    keys = r.configuration_keys
    wanted_strategy = keys is None or STRATEGY_CONFIG in keys
    sub = r
    if keys is not None:
        sub = replace(r, configuration_keys=tuple(k for k in keys if k != STRATEGY_CONFIG))
    configs: tuple[Any, ...] = ()
    result = None
    if keys is None or sub.configuration_keys:
        segment = topic.partitions[0].active
        result = yield from _forward_one(state, body, "resources",
                                         replace(sub, resource_name=segment.topic),
                                         segment.cluster, client_id, "results")
        if int(result.error_code):
            return replace(result, resource_name=r.resource_name)
        configs = tuple(result.configs)
    if wanted_strategy:
        configs += (build(mod.DescribeConfigsResourceResult, name=STRATEGY_CONFIG,
                          value=topic.strategy, read_only=True,
                          config_source=DEFAULT_CONFIG if topic.strategy == DEFAULT_STRATEGY
                          else DYNAMIC_TOPIC_CONFIG,
                          is_sensitive=False, synonyms=(), config_type=2,
                          documentation="fedkafka: the mapping strategy that lays the "
                          "topic's partitions out over physical clusters (set at creation)"
                          if getattr(body, "include_documentation", False) else None),)
    return build(mod.DescribeConfigsResult, error_code=to_kio(0), error_message=None,
                 resource_type=r.resource_type, resource_name=r.resource_name,
                 configs=configs)


def _federation_values(state: ProxyState, proxy_id: int | None) -> dict[str, str]:
    policy = state.fmap.auto_create
    values = {"auto.create.topics.enable": "true" if policy.enabled else "false",
              "num.partitions": str(policy.partitions)}
    if proxy_id is not None:
        endpoint = next((p for members in state.fmap.pools.values() for p in members
                         if p.node_id == proxy_id), None)
        host, port = ((endpoint.host, endpoint.port) if endpoint is not None
                      else state.config.advertised)
        values.update({k: str(proxy_id) for k in _PER_PROXY})
        values["advertised.listeners"] = f"PLAINTEXT://{host}:{port}"
    return values


def _describe_broker(state: ProxyState, body: Any, r: Any, client_id: str | None
                     ) -> Step:
    proxy_id = _broker_id(state, r.resource_name)
    if proxy_id is None and int(r.resource_type) == BROKER_LOGGER:
        raise _Refused(ErrorCode.INVALID_REQUEST, "Broker id must be an integer, but it is: ")
    cluster_id = state.pid_cluster()
    node = yield from _broker_node(state, cluster_id)
    name = "" if proxy_id is None else str(node)
    result = yield from _forward_one(state, body, "resources", replace(r, resource_name=name),
                                     cluster_id, client_id, "results", node)
    values = _federation_values(state, proxy_id) if int(r.resource_type) == BROKER else {}

    def fix(entry: Any) -> Any:
        if entry.name not in values:
            return entry
        synonyms = tuple(replace(s, value=values[entry.name]) if s.name == entry.name else s
                         for s in getattr(entry, "synonyms", ()) or ())
        return replace(entry, value=values[entry.name], synonyms=synonyms)

    return replace(result, resource_name=r.resource_name,
                   configs=tuple(fix(c) for c in result.configs))


# -- AlterConfigs / IncrementalAlterConfigs -------------------------------------------------


def alter_configs(state: ProxyState, req: codec.Request,
                  clock: Callable[[], float] = time.monotonic) -> Step:
    """AlterConfigs (the whole dynamic set replaced) and IncrementalAlterConfigs.

    A topic's alter is answered once partition 0's active physical topic (the one
    DescribeConfigs reads) shows the change and the map records it: see
    :func:`_alter_topic`. ``clock``: the driver's (the deadline of that wait)."""
    body: Any = req.entity
    key = req.header.api_key
    mod = resp_module(key, req.header.api_version)
    client_id = req.header.client_id
    incremental = key == ApiKey.INCREMENTAL_ALTER_CONFIGS

    def one(r: Any) -> Step:
        kind, name = int(r.resource_type), r.resource_name
        code, message = 0, None
        try:
            if kind == TOPIC:
                yield from _alter_topic(state, body, r, incremental, client_id, clock)
            elif kind in (BROKER, BROKER_LOGGER):
                _broker_id(state, name)
                raise _Refused(ErrorCode.INVALID_REQUEST,
                               "fedkafka: broker configs cannot be altered through the "
                               "federation (the brokers a client sees are proxies); alter "
                               "each physical cluster's brokers directly")
            elif kind == GROUP:
                result = yield from _forward_one(state, body, "resources", r,
                                                 state.coordination_cluster(name), client_id,
                                                 "responses")
                code, message = int(result.error_code), result.error_message
            else:
                raise _Refused(ErrorCode.INVALID_REQUEST, f"Unsupported resource type {kind}: "
                               "this federation alters TOPIC and GROUP configs")
        except _Refused as e:
            code, message = e.code, e.message
        except UpstreamError as e:
            code, message = e.error_code, str(e)
        except Exception as e:  # noqa: BLE001 - one resource's failure (logged if unexpected)
            # (an AdminError's own code; no intent token, the store away...: an answer with
            # UNKNOWN_SERVER_ERROR, as CreateTopics answers, never a closed connection)
            code, message = failure_answer(e, str(name), "IncrementalAlterConfigs" if incremental
                                            else "AlterConfigs")
        return build(mod.AlterConfigsResourceResponse, error_code=to_kio(code),
                     error_message=message, resource_type=r.resource_type, resource_name=name)

    # One resource at a time: two alters of one topic in a request apply in order.
    results = []
    for r in body.resources:
        results.append((yield from one(r)))
    return build(mod.AlterConfigsResponse if not incremental
                 else mod.IncrementalAlterConfigsResponse,
                 throttle_time=_ms(0), responses=tuple(results))


def _strip_strategy(r: Any, topic: LogicalTopic, incremental: bool) -> Any:
    """``r`` without ``fedkafka.strategy``, which is read-only (set at creation): an alter
    that would change it is refused with INVALID_CONFIG, one that keeps it is accepted."""
    kept = []
    for c in r.configs:
        if c.name != STRATEGY_CONFIG:
            kept.append(c)
            continue
        unchanged = c.value == topic.strategy and (not incremental or
                                                   int(c.config_operation) == 0)
        if not unchanged:
            raise _Refused(ErrorCode.INVALID_CONFIG, f"{STRATEGY_CONFIG} is read-only: the "
                           "mapping strategy is chosen when the topic is created")
    return replace(r, configs=tuple(kept))


def _shows(r: Any, incremental: bool) -> Callable[[dict[str, str]], bool]:
    """Whether dynamic configs read from a broker show the alter ``r`` (already accepted).

    Kafka (KRaft) answers an alter once its controller committed it; each broker applies
    the committed record to the configs it describes a moment later. Read at once, the
    broker may still show the configs from before (a deleted config still there)."""
    if not incremental:
        wanted = {c.name: c.value for c in r.configs if c.value is not None}
        return lambda seen: seen == wanted

    def items(value: str | None) -> set[str]:
        return {v.strip() for v in (value or "").split(",") if v.strip()}

    def shows(seen: dict[str, str]) -> bool:
        for c in r.configs:
            op = int(c.config_operation)
            if op == 0 and seen.get(c.name) != c.value:  # SET
                return False
            if op == 1 and c.name in seen:  # DELETE
                return False
            if op == 2 and not items(c.value) <= items(seen.get(c.name)):  # APPEND
                return False
            if op == 3 and items(c.value) & items(seen.get(c.name)):  # SUBTRACT
                return False
        return True
    return shows


def _alter_topic(state: ProxyState, body: Any, r: Any, incremental: bool,
                 client_id: str | None, clock: Callable[[], float] = time.monotonic) -> Step:
    topic = _logical_topic(state.fmap, r.resource_name)
    r = _strip_strategy(r, topic, incremental)
    where = physical_topics(topic)

    def on(cluster_id: str, names: list[str], validate_only: bool) -> Step:
        sub = replace(body, validate_only=validate_only,
                      resources=tuple(replace(r, resource_name=n) for n in names))
        try:
            pending = yield Send(state.cluster(cluster_id), None, sub, client_id,
                                 state.request_timeout, shared=True)
            resp = yield from wait(pending)
        except UpstreamError as e:
            return e
        for answer in resp.responses:
            if int(answer.error_code):
                return int(answer.error_code), answer.error_message
        return 0, None

    def everywhere(validate_only: bool) -> Step:
        outcomes = yield Gather([on(c, n, validate_only) for c, n in where.items()])
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome[0]:
                raise _Refused(*outcome)

    # Every cluster validates first, so a refusal (INVALID_CONFIG...) changes nothing.
    yield from everywhere(True)
    if body.validate_only:
        return
    applied = False
    try:
        yield from everywhere(False)
        applied = True
    finally:
        # What the physical topics now hold is the logical topic's config (recorded even
        # if one cluster failed: a retry converges, and new segments get it). Once applied
        # everywhere, read only when the brokers show the change (read a moment too early,
        # a config just deleted was recorded and the map kept it: ADR 0025).
        if applied:
            yield from _until_shown(state, where, _shows(r, incremental), client_id, clock)
        config = yield from _dynamic_configs(state, topic, client_id)
        if config is not None:
            # (intents.set_topic_config's steps: no intent when the stored map holds it
            # already; then the map that applied it)
            current = admin._topic((yield from load(state)), topic.name)
            if dict(current.config) != dict(config):
                yield SubmitIntent("set_topic_config", {"name": topic.name,
                                                        "config": dict(config)},
                                   intent_timeout(state))
                admin._topic((yield from load(state)), topic.name)
            fmap = yield Offload(state.backend.load, ())
            if fmap is not None:
                state.set_map(fmap)


def _until_shown(state: ProxyState, where: dict[str, list[str]],
                 shows: Callable[[dict[str, str]], bool], client_id: str | None,
                 clock: Callable[[], float]) -> Step:
    """Wait until every cluster's physical topics show the alter (read from the broker
    DescribeConfigs reads), at most :data:`VISIBLE_WAIT` seconds (then logged)."""
    wait = min(VISIBLE_WAIT, state.request_timeout)
    deadline = clock() + wait

    def on(cluster_id: str, names: list[str]) -> Step:
        while True:
            seen = yield from _dynamic(state, cluster_id, names, client_id)
            if seen is None or all(shows(c) for c in seen.values()):
                return
            if clock() >= deadline:
                log.warning("the configs of %s on %s still do not show the alter after "
                            "%.0fs: %s", names, cluster_id, wait, seen)
                return
            yield WaitAny((), min(deadline, clock() + VISIBLE_POLL))

    yield Gather([on(c, n) for c, n in where.items()])


def _dynamic(state: ProxyState, cluster_id: str, names: list[str], client_id: str | None
             ) -> Step:
    """The dynamic (per-topic) configs of physical topics ``names`` of a cluster (None:
    could not be read)."""
    request = describe_configs_v1.DescribeConfigsRequest(
        resources=tuple(describe_configs_v1.DescribeConfigsResource(
            resource_type=i8(TOPIC), resource_name=n, configuration_keys=None)
            for n in names),
        include_synonyms=False)
    try:
        pending = yield Send(state.cluster(cluster_id), None, request, client_id,
                             state.request_timeout, shared=True)
        resp = yield from wait(pending)
    except UpstreamError as e:
        log.warning("could not read back the configs of %s on %s: %s", names, cluster_id, e)
        return None
    out: dict[str, dict[str, str]] = {}
    for result in resp.results:
        if int(result.error_code):
            return None
        out[result.resource_name] = {c.name: c.value for c in result.configs
                                     if int(c.config_source) == DYNAMIC_TOPIC_CONFIG
                                     and c.value is not None}
    return out


def _dynamic_configs(state: ProxyState, topic: LogicalTopic, client_id: str | None) -> Step:
    """The dynamic (per-topic) configs of ``topic``'s first physical data topic."""
    segment = topic.partitions[0].active
    seen = yield from _dynamic(state, segment.cluster, [segment.topic], client_id)
    return None if seen is None else seen.get(segment.topic)
