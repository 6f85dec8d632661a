"""Operations on the federation: topics, clusters, pools. Used by the controller, the
admin CLI and the proxy (CreateTopics, DeleteTopics, CreatePartitions).

Two layers:

- ``plan_*`` functions are pure: map in, new topic or map out, :class:`AdminError` for
  anything the caller must fix. They are what the unit tests exercise.
- the ``async`` operations do the I/O: physical topics through :class:`ClusterAdmin`
  (aiokafka's admin client by default, injectable for tests) and the map through
  :func:`federation.store.mapstore.update` (compare-and-set, retried on conflicts).

Topic creation creates the physical data topics, then the metadata-only *shadow* topic
(logical name, logical partition count) on the coordination cluster, then publishes the
map. If any step fails, the topics it created are deleted again: nothing is left
half-created. Partitions Kafka added to an existing topic cannot be removed; they stay
unused until a later ``add_partitions`` places segments on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from federation.clusters import probe
from federation.core.errors import FedKafkaError
from federation.core.model import (
    DEFAULT_POOL,
    AclRule,
    AutoCreatePolicy,
    ClusterState,
    FederationMap,
    LogicalTopic,
    PhysicalCluster,
    ProxyEndpoint,
    RoutingRule,
    new_topic_id,
)
from federation.plugin import PluginError, Plugins, get_plugins
from federation.store import mapstore
from federation.store.mapstore import MetadataBackend

__all__ = [
    "APPLYING_INTENT",
    "AdminError",
    "BrokerRefusedError",
    "ClusterAdmin",
    "ClusterUnreachableError",
    "Connect",
    "IntentAppliedError",
    "InvalidRequestError",
    "MapExistsError",
    "NewPhysicalTopic",
    "NoMapError",
    "NotLeaderError",
    "PhysicalTopic",
    "TopicConfig",
    "TopicExistsError",
    "TopicSpec",
    "UnknownClusterError",
    "UnknownTopicError",
    "add_acls",
    "add_cluster",
    "add_partitions",
    "aiokafka_admin",
    "create_topic",
    "create_topics",
    "delete_topic",
    "describe_physical",
    "describe_physical_many",
    "describe_topic",
    "init_map",
    "list_topics",
    "physical_needs",
    "plan_add_cluster",
    "plan_add_partitions",
    "plan_create_topic",
    "plan_remove_cluster",
    "plan_set_cluster_state",
    "remove_acls",
    "remove_cluster",
    "set_auto_create",
    "set_cluster_state",
    "set_pool",
    "set_topic_config",
    "topic_name_error",
    "validate_create_topic",
]

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: Seconds one physical admin request (connect, create, delete, describe) may take.
REQUEST_TIMEOUT = 15.0


# -- errors ----------------------------------------------------------------------------------


class AdminError(FedKafkaError):
    """A refused admin operation. ``error_code`` is the Kafka protocol error to answer with."""

    error_code: int = -1  # UNKNOWN_SERVER_ERROR

    @property
    def error_message(self) -> str:
        """The message to answer a Kafka client with (the proxy's admin requests)."""
        return str(self)


class BrokerRefusedError(AdminError):
    """A physical cluster refused an operation with a Kafka error (INVALID_CONFIG,
    INVALID_REPLICATION_FACTOR, POLICY_VIOLATION, ...): ``error_code`` is the broker's
    code and :attr:`error_message` the broker's own message, so a client of the
    federation sees what a client of the physical cluster would."""

    def __init__(self, message: str, error_code: int, broker_message: str | None = None
                 ) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.broker_message = broker_message

    @property
    def error_message(self) -> str:
        return self.broker_message or str(self)


class InvalidRequestError(AdminError):
    error_code = 42  # INVALID_REQUEST


class InvalidTopicError(InvalidRequestError):
    error_code = 17  # INVALID_TOPIC_EXCEPTION


class InvalidPartitionsError(InvalidRequestError):
    error_code = 37  # INVALID_PARTITIONS


class TopicExistsError(AdminError):
    error_code = 36  # TOPIC_ALREADY_EXISTS


class UnknownTopicError(AdminError):
    error_code = 3  # UNKNOWN_TOPIC_OR_PARTITION


class UnknownClusterError(AdminError):
    error_code = 42


class ClusterUnreachableError(AdminError):
    error_code = 8  # BROKER_NOT_AVAILABLE


class NoMapError(AdminError):
    """The store holds no map yet."""


class MapExistsError(AdminError):
    """``init_map`` on a store that already holds a map."""


class _Refused(Exception):
    """Carries an AdminError out of a mapstore.update change function."""


class IntentAppliedError(AdminError):
    """The intent being applied is recorded in the map already (applied by an earlier
    attempt, e.g. before a controller failover): it is not applied twice."""

    def __init__(self, intent_id: str, version: int) -> None:
        super().__init__(f"intent {intent_id} was applied already (map version {version})")
        self.intent_id = intent_id
        self.version = version


#: The id of the intent the controller is applying in this task (federation.controller.intents):
#: every map it publishes records the id in the same compare-and-set, and a map that
#: records it already refuses the change (:class:`IntentAppliedError`).
APPLYING_INTENT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fedkafka_applying_intent", default=None)

class NotLeaderError(AdminError):
    """The controller applying an intent no longer leads: it publishes nothing."""

    error_code = 41  # NOT_CONTROLLER


#: Set by the controller while it applies an intent: called inside every compare-and-set,
#: a False answer (leadership lost) publishes nothing (:class:`NotLeaderError`).
WRITE_GUARD: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar(
    "fedkafka_write_guard", default=None)

#: Applied intent ids a map keeps (the newest by version): enough for any retry in flight.
KEEP_APPLIED_INTENTS = 512


def _stamp(current: FederationMap | None, new: FederationMap | None) -> FederationMap | None:
    """``new`` recording the intent being applied (if any); refuses a second application."""
    guard = WRITE_GUARD.get()
    if guard is not None and not guard():
        raise NotLeaderError("this controller lost its leadership; the new one applies it")
    intent = APPLYING_INTENT.get()
    if intent is None:
        return new
    if current is not None and intent in current.intents:
        raise IntentAppliedError(intent, current.intents[intent])
    if new is None:
        return None
    applied = dict(new.intents)
    applied[intent] = (current.version if current is not None else 0) + 1
    if len(applied) > KEEP_APPLIED_INTENTS:
        applied = dict(sorted(applied.items(), key=lambda kv: kv[1])[-KEEP_APPLIED_INTENTS:])
    return dataclasses.replace(new, intents=applied)


TOPIC_NAME_MAX = 249
_TOPIC_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def topic_name_error(name: str) -> str | None:
    """Why Kafka refuses ``name`` as a topic name (its own words), or None if it is valid."""
    if not name:
        return "Topic name is invalid: the empty string is not allowed"
    if name in (".", ".."):
        return f"Topic name is invalid: '{name}' is not allowed"
    if len(name) > TOPIC_NAME_MAX:
        return (f"Topic name is invalid: the length of '{name}' is longer than the max "
                f"allowed length {TOPIC_NAME_MAX}")
    if not _TOPIC_NAME_CHARS.issuperset(name):
        return (f"Topic name is invalid: '{name}' contains one or more characters other "
                "than ASCII alphanumerics, '.', '_' and '-'")
    return None


def _no_map() -> NoMapError:
    return NoMapError("the metadata store holds no map yet; add a first cluster with "
                      "`fedkafka cluster add ID BOOTSTRAP` (it becomes the coordination cluster)")


# -- pure planning ---------------------------------------------------------------------------


def _strategy(plugins: Plugins, name: str) -> Any:
    try:
        return plugins.strategy(name)
    except PluginError as e:
        raise InvalidRequestError(str(e)) from None


def plan_create_topic(fmap: FederationMap, name: str, partitions: int, strategy: str = "contiguous",
                      config: Mapping[str, str] | None = None, *,
                      plugins: Plugins | None = None,
                      layout: Sequence[tuple[str, int]] | None = None) -> LogicalTopic:
    """The new topic laid out over ``fmap``'s writable clusters (no I/O).

    :param layout: (cluster, physical partition) per logical partition, as the
        submitter's strategy laid it out; used only when ``strategy`` is not installed
        here (a plugin on the admin's machine, not the controller's), and checked: one
        fresh segment per partition, on writable clusters, physical partitions 0..n-1
        of each cluster.
    """
    plugins = plugins or get_plugins()
    try:
        impl = _strategy(plugins, strategy)
    except InvalidRequestError:
        if layout is None:
            raise
        impl = _SubmittedLayout(layout)
    if name in fmap.topics:
        raise TopicExistsError(f"topic {name!r} already exists")
    if partitions < 1:
        raise InvalidPartitionsError(f"topic {name!r}: partitions must be >= 1, got {partitions}")
    probe_topic = LogicalTopic(name, new_topic_id(name), ())
    try:
        probe_topic.validate()
    except ValueError as e:
        if "has no partition" not in str(e):
            raise InvalidTopicError(f"{e}; use 1-249 of a-z A-Z 0-9 . _ -") from None
    physical = fmap.physical_topic_name(name)
    if physical in fmap.topics or any(physical == s.topic for t in fmap.topics.values()
                                      for p in t.partitions for s in p.segments):
        raise InvalidTopicError(f"topic {name!r}: its physical name {physical!r} is taken")
    clusters = fmap.writable_clusters()
    if not clusters:
        raise InvalidRequestError("no cluster is active (writable); add one with "
                                  "`fedkafka cluster add` or set one active")
    try:
        laid_out = impl.layout(name, partitions, clusters, physical)
        topic = LogicalTopic(name, new_topic_id(name), laid_out, strategy, dict(config or {}))
        fmap.with_topic(topic).validate()
    except ValueError as e:
        raise InvalidRequestError(f"topic {name!r}: {e}") from None
    return topic


class _SubmittedLayout:
    """A strategy-shaped wrapper around a layout the submitter planned (plan_create_topic)."""

    def __init__(self, layout: Sequence[tuple[str, int]]) -> None:
        self.wanted = [(str(c), int(p)) for c, p in layout]

    def layout(self, name: str, partitions: int, clusters: Sequence[PhysicalCluster],
               physical: str) -> tuple[Any, ...]:
        from federation.core.model import LogicalPartition, Segment

        if len(self.wanted) != partitions:
            raise ValueError(f"the submitted layout has {len(self.wanted)} partition(s), "
                             f"not {partitions}")
        writable = {c.id for c in clusters}
        per: dict[str, list[int]] = {}
        for cluster, ppart in self.wanted:
            if cluster not in writable:
                raise ValueError(f"the submitted layout uses cluster {cluster!r}, which is "
                                 "not writable")
            per.setdefault(cluster, []).append(ppart)
        for cluster, used in per.items():
            if sorted(used) != list(range(len(used))):
                raise ValueError(f"the submitted layout's physical partitions on {cluster!r} "
                                 f"must be 0..{len(used) - 1}, got {sorted(used)}")
        return tuple(LogicalPartition(i, (Segment(c, physical, p, 0, 0),))
                     for i, (c, p) in enumerate(self.wanted))


def plan_add_partitions(fmap: FederationMap, name: str, new_count: int, *,
                        plugins: Plugins | None = None) -> LogicalTopic:
    """The topic grown to ``new_count`` partitions by its own strategy (no I/O)."""
    topic = _topic(fmap, name)
    if new_count <= topic.partition_count:
        raise InvalidPartitionsError(
            f"topic {name!r} has {topic.partition_count} partitions; the new count must be "
            f"larger, got {new_count}")
    impl = _strategy(plugins or get_plugins(), topic.strategy)
    clusters = fmap.writable_clusters()
    if not clusters:
        raise InvalidRequestError("no cluster is active (writable) to place new partitions on")
    try:
        grown = impl.grow(topic, new_count, clusters, fmap.physical_topic_name(name))
        new = dataclasses.replace(topic, partitions=grown)
        fmap.with_topic(new).validate()
    except ValueError as e:
        raise InvalidRequestError(f"topic {name!r}: {e}") from None
    return new


def physical_needs(fmap: FederationMap, topic: LogicalTopic) -> dict[str, dict[str, int]]:
    """cluster → {physical topic → partition count} that ``topic`` needs, shadow included."""
    needs: dict[str, dict[str, int]] = {}
    for partition in topic.partitions:
        for s in partition.segments:
            per = needs.setdefault(s.cluster, {})
            per[s.topic] = max(per.get(s.topic, 0), s.partition + 1)
    if fmap.coordination_cluster is not None:
        needs.setdefault(fmap.coordination_cluster, {})[topic.name] = topic.partition_count
    return needs


def _topic(fmap: FederationMap, name: str) -> LogicalTopic:
    try:
        return fmap.topics[name]
    except KeyError:
        raise UnknownTopicError(f"topic {name!r} does not exist") from None


def _cluster(fmap: FederationMap, cluster_id: str) -> PhysicalCluster:
    try:
        return fmap.clusters[cluster_id]
    except KeyError:
        known = ", ".join(sorted(fmap.clusters)) or "none"
        raise UnknownClusterError(f"cluster {cluster_id!r} does not exist; known: {known}"
                                  ) from None


def _segments_on(fmap: FederationMap, cluster_id: str) -> list[str]:
    return sorted({f"{t.name}[{p.index}]" for t in fmap.topics.values() for p in t.partitions
                   for s in p.segments if s.cluster == cluster_id})


def plan_add_cluster(fmap: FederationMap | None, cluster: PhysicalCluster, *,
                     coordination: bool = False) -> FederationMap:
    """``fmap`` with ``cluster`` added (a first cluster starts a map and coordinates groups)."""
    try:
        cluster.validate()
    except ValueError as e:
        raise InvalidRequestError(str(e)) from None
    if fmap is None:
        fmap = FederationMap(version=0)
        coordination = True
    if cluster.id in fmap.clusters:
        raise InvalidRequestError(f"cluster {cluster.id!r} already exists")
    for other in fmap.clusters.values():
        shared = set(other.bootstrap_servers) & set(cluster.bootstrap_servers)
        if shared:
            raise InvalidRequestError(
                f"cluster {cluster.id!r}: {', '.join(sorted(shared))} already belongs to "
                f"cluster {other.id!r}")
    new = fmap.with_cluster(cluster)
    if coordination:
        new = dataclasses.replace(new, coordination_cluster=cluster.id)
    return new


def plan_set_cluster_state(fmap: FederationMap, cluster_id: str,
                           state: ClusterState | str) -> FederationMap:
    try:
        new_state = ClusterState(state)
    except ValueError:
        valid = ", ".join(s.value for s in ClusterState)
        raise InvalidRequestError(f"unknown cluster state {state!r}; valid: {valid}") from None
    cluster = _cluster(fmap, cluster_id)
    if new_state is ClusterState.RETIRED:
        live = _segments_on(fmap, cluster_id)
        if live:
            raise InvalidRequestError(
                f"cluster {cluster_id!r} still holds segments of {', '.join(live[:5])}"
                f"{' …' if len(live) > 5 else ''}; drain it before retiring it")
        if fmap.coordination_cluster == cluster_id:
            raise InvalidRequestError(f"cluster {cluster_id!r} coordinates consumer groups; "
                                      "it cannot be retired")
    return fmap.with_cluster(cluster.with_state(new_state))


def plan_remove_cluster(fmap: FederationMap, cluster_id: str) -> FederationMap:
    _cluster(fmap, cluster_id)
    live = _segments_on(fmap, cluster_id)
    if live:
        raise InvalidRequestError(
            f"cluster {cluster_id!r} still holds segments of {', '.join(live[:5])}"
            f"{' …' if len(live) > 5 else ''}; drain it first (set it draining and move "
            "its segments), then remove it")
    if fmap.coordination_cluster == cluster_id:
        raise InvalidRequestError(f"cluster {cluster_id!r} coordinates consumer groups "
                                  "(and holds the shadow topics); it cannot be removed")
    return dataclasses.replace(fmap, clusters={k: v for k, v in fmap.clusters.items()
                                               if k != cluster_id})


# -- physical cluster I/O -------------------------------------------------------------------


class ClusterAdmin(Protocol):
    """Admin operations on one physical cluster, as the federation needs them."""

    async def topics(self) -> dict[str, int]:
        """Every topic of the cluster → its partition count."""
        ...

    async def create(self, topics: Mapping[str, int], replication: int | None = None,
                     config: Mapping[str, str] | None = None, *,
                     validate_only: bool = False) -> None:
        """Create topics (name → partitions), or only check that the cluster would.

        :param replication: replication factor; None: min(3, brokers); -1: the
            brokers' default (``default.replication.factor``).
        :raises AdminError: naming the topic; :class:`BrokerRefusedError` carries the
            broker's error code and message.
        """
        ...

    async def describe(self, topic: str) -> PhysicalTopic:
        """Partition count, replication factor and every config of an existing topic."""
        ...

    async def grow(self, topic: str, partitions: int) -> None:
        """Raise ``topic``'s partition count to ``partitions``."""
        ...

    async def delete(self, topics: Iterable[str]) -> None:
        """Delete topics; unknown ones are ignored."""
        ...


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """One topic config as Kafka describes it (DescribeConfigs, CreateTopics v5+)."""

    name: str
    value: str | None
    read_only: bool = False
    source: int = 1  # DYNAMIC_TOPIC_CONFIG; 5 = DEFAULT_CONFIG, 4 = STATIC_BROKER_CONFIG…
    sensitive: bool = False


@dataclass(frozen=True, slots=True)
class PhysicalTopic:
    """A physical topic as its cluster describes it."""

    name: str
    partitions: int
    replication_factor: int
    configs: tuple[TopicConfig, ...]


@dataclass(frozen=True, slots=True)
class NewPhysicalTopic:
    """A physical topic to create (:meth:`_AIOKafkaClusterAdmin.create_many`)."""

    name: str
    partitions: int
    replication: int | None = None
    config: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A logical topic to create (:func:`create_topics`)."""

    name: str
    partitions: int
    strategy: str = "contiguous"
    config: Mapping[str, str] | None = None
    replication: int | None = None
    #: the submitter's layout, for a strategy not installed here (plan_create_topic)
    layout: Sequence[tuple[str, int]] | None = None


#: Opens a :class:`ClusterAdmin` on a cluster (an async context manager factory).
Connect = Callable[[PhysicalCluster], contextlib.AbstractAsyncContextManager[ClusterAdmin]]


class _AIOKafkaClusterAdmin:
    def __init__(self, cluster: PhysicalCluster, client: Any, timeout: float) -> None:
        self.cluster = cluster
        self._client = client
        self._timeout = timeout

    async def _call(self, what: str, awaitable: Any) -> Any:
        try:
            return await asyncio.wait_for(awaitable, self._timeout)
        except AdminError:
            raise
        except Exception as e:  # every client failure becomes one clear error
            raise ClusterUnreachableError(
                f"cluster {self.cluster.id!r} ({self.cluster.bootstrap}) failed to {what}: "
                f"{type(e).__name__}: {e}") from e

    async def topics(self) -> dict[str, int]:
        described = await self._call("describe its topics", self._client.describe_topics())
        return {t["topic"]: len(t["partitions"]) for t in described
                if t.get("error_code", 0) == 0}

    async def _replication(self, wanted: int | None) -> int:
        if wanted is not None:
            return wanted
        info = await self._call("describe the cluster", self._client.describe_cluster())
        return max(1, min(3, len(info.get("brokers", ())) or 1))

    async def create(self, topics: Mapping[str, int], replication: int | None = None,
                     config: Mapping[str, str] | None = None, *,
                     validate_only: bool = False) -> None:
        from aiokafka.admin import NewTopic

        rf = await self._replication(replication)
        # aiokafka takes rf -1 (broker default, KIP-464) only next to an assignment
        # argument; an empty one sends none.
        new = [NewTopic(name, count, rf, replica_assignments={} if rf == -1 else None,
                        topic_configs=dict(config or {}))
               for name, count in topics.items()]
        what = f"{'validate' if validate_only else 'create'} {', '.join(topics)}"
        response = await self._call(what, self._client.create_topics(
            new, timeout_ms=10_000, validate_only=validate_only))
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            message = entry[2] if len(entry) > 2 else None
            if code == 36:
                raise TopicExistsError(f"topic {name!r} already exists on cluster "
                                       f"{self.cluster.id!r}")
            if code:
                # The first refusal, with the broker's own code and words.
                raise BrokerRefusedError(
                    f"cluster {self.cluster.id!r} refused to {what}: error {code}"
                    + (f": {message}" if message else ""), code, message)

    async def create_many(self, topics: Sequence[NewPhysicalTopic]
                          ) -> dict[str, AdminError | None]:
        """Create many topics in one request; each topic's own outcome (None: created)."""
        from aiokafka.admin import NewTopic

        new = []
        for t in topics:
            rf = await self._replication(t.replication)
            new.append(NewTopic(t.name, t.partitions, rf,
                                replica_assignments={} if rf == -1 else None,
                                topic_configs=dict(t.config or {})))
        what = f"create {len(new)} topic(s)"
        response = await self._call(what, self._client.create_topics(new, timeout_ms=30_000))
        out: dict[str, AdminError | None] = {t.name: None for t in topics}
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            message = entry[2] if len(entry) > 2 else None
            if code == 36:
                out[name] = TopicExistsError(f"topic {name!r} already exists on cluster "
                                             f"{self.cluster.id!r}")
            elif code:
                out[name] = BrokerRefusedError(
                    f"cluster {self.cluster.id!r} refused to create {name}: error {code}"
                    + (f": {message}" if message else ""), code, message)
        return out

    async def describe_many(self, names: Sequence[str]) -> dict[str, PhysicalTopic | AdminError]:
        """:meth:`describe` for many topics, in one Metadata and one DescribeConfigs."""
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        described = await self._call(f"describe {len(names)} topic(s)",
                                     self._client.describe_topics(list(names)))
        layout: dict[str, tuple[int, int]] = {}
        for t in described:
            if t.get("error_code", 0) == 0:
                parts = t["partitions"]
                layout[t["topic"]] = (len(parts), max((len(p["replicas"]) for p in parts),
                                                      default=-1))
        responses = await self._call(f"describe the configs of {len(names)} topic(s)",
                                     self._client.describe_configs(
                                         [ConfigResource(ConfigResourceType.TOPIC, n)
                                          for n in names if n in layout]))
        configs: dict[str, list[TopicConfig]] = {}
        out: dict[str, PhysicalTopic | AdminError] = {}
        for response in responses:
            for resource in response.resources:
                code, message, name, entries = resource[0], resource[1], resource[3], resource[4]
                if code:
                    out[name] = BrokerRefusedError(
                        f"cluster {self.cluster.id!r} refused to describe the configs of "
                        f"{name}: error {code} {message or ''}".strip(), code, message)
                    continue
                for e in entries:
                    # v1+: (name, value, read_only, config_source, is_sensitive, synonyms)
                    source = e[3] if isinstance(e[3], int) and not isinstance(e[3], bool) else (
                        5 if e[3] else 1)
                    configs.setdefault(name, []).append(
                        TopicConfig(e[0], e[1], bool(e[2]), source, bool(e[4])))
        for name in names:
            if name in out:
                continue
            if name not in layout:
                out[name] = UnknownTopicError(f"topic {name!r} does not exist on cluster "
                                              f"{self.cluster.id!r}")
                continue
            count, rf = layout[name]
            out[name] = PhysicalTopic(name, count, rf, tuple(configs.get(name, ())))
        return out

    async def describe(self, topic: str) -> PhysicalTopic:
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        described = await self._call(f"describe {topic}",
                                     self._client.describe_topics([topic]))
        found = [t for t in described if t.get("topic") == topic]
        if not found or found[0].get("error_code", 0):
            raise UnknownTopicError(f"topic {topic!r} does not exist on cluster "
                                    f"{self.cluster.id!r}")
        partitions = found[0]["partitions"]
        rf = max((len(p["replicas"]) for p in partitions), default=-1)
        responses = await self._call(f"describe the configs of {topic}",
                                     self._client.describe_configs(
                                         [ConfigResource(ConfigResourceType.TOPIC, topic)]))
        configs: list[TopicConfig] = []
        for response in responses:
            for resource in response.resources:
                code, message, entries = resource[0], resource[1], resource[4]
                if code:
                    raise BrokerRefusedError(
                        f"cluster {self.cluster.id!r} refused to describe the configs of "
                        f"{topic}: error {code} {message or ''}".strip(), code, message)
                for e in entries:
                    # v1+: (name, value, read_only, config_source, is_sensitive, synonyms)
                    source = e[3] if isinstance(e[3], int) and not isinstance(e[3], bool) else (
                        5 if e[3] else 1)
                    configs.append(TopicConfig(e[0], e[1], bool(e[2]), source, bool(e[4])))
        return PhysicalTopic(topic, len(partitions), rf, tuple(configs))

    async def grow(self, topic: str, partitions: int) -> None:
        from aiokafka.admin import NewPartitions

        await self._call(f"grow {topic} to {partitions} partitions",
                         self._client.create_partitions({topic: NewPartitions(partitions)}))

    async def delete(self, topics: Iterable[str]) -> None:
        names = list(topics)
        if not names:
            return
        response = await self._call(f"delete {', '.join(names)}",
                                    self._client.delete_topics(names, timeout_ms=10_000))
        for name, code in (tuple(e)[:2] for e in response.topic_error_codes):
            if code not in (0, 3):  # 3 = already gone
                raise AdminError(f"cluster {self.cluster.id!r} refused to delete {name!r}: "
                                 f"error {code}")


@contextlib.asynccontextmanager
async def aiokafka_admin(cluster: PhysicalCluster, *, timeout: float = REQUEST_TIMEOUT
                         ) -> AsyncIterator[ClusterAdmin]:
    """The default :data:`Connect`: aiokafka's admin client on ``cluster``'s bootstrap."""
    from aiokafka.admin import AIOKafkaAdminClient

    from federation.security.tls import aiokafka_kwargs

    client = AIOKafkaAdminClient(bootstrap_servers=list(cluster.bootstrap_servers),
                                 client_id="fedkafka-admin",
                                 request_timeout_ms=int(timeout * 1000),
                                 **aiokafka_kwargs(cluster.security, cluster.id))
    try:
        try:
            await asyncio.wait_for(client.start(), timeout)
        except Exception as e:
            raise ClusterUnreachableError(
                f"cluster {cluster.id!r} cannot be reached at {cluster.bootstrap} "
                f"({type(e).__name__}: {e}); check that it runs, or set it down with "
                f"`fedkafka cluster set-state {cluster.id} down`") from e
        yield _AIOKafkaClusterAdmin(cluster, client, timeout)
    finally:
        with contextlib.suppress(Exception):
            await client.close()


# -- map I/O ---------------------------------------------------------------------------------


async def _load(backend: MetadataBackend) -> FederationMap:
    fmap = await asyncio.to_thread(backend.load)
    if fmap is None:
        raise _no_map()
    return fmap


async def _publish(backend: MetadataBackend,
                   change: Callable[[FederationMap | None], FederationMap | None],
                   plugins: Plugins | None = None) -> FederationMap:
    """mapstore.update with AdminErrors from ``change`` passed through, observers notified."""
    before: list[FederationMap | None] = []

    def wrapped(current: FederationMap | None) -> FederationMap | None:
        before[:] = [current]
        try:
            return _stamp(current, change(current))
        except AdminError as e:
            raise _Refused() from e

    try:
        new = await asyncio.to_thread(mapstore.update, backend, wrapped)
    except _Refused as e:
        assert isinstance(e.__cause__, AdminError)
        raise e.__cause__ from None
    if new is None:
        raise AssertionError("admin changes always publish")
    (plugins or get_plugins()).notify_map_published(before[0] if before else None, new)
    return new


# -- operations ------------------------------------------------------------------------------


async def _await_visible(client: ClusterAdmin, wanted: Mapping[str, int], cluster_id: str,
                         timeout: float = 10.0) -> None:
    """Wait until ``wanted`` topics show in the cluster's metadata with their counts.

    Brokers learn about new topics asynchronously; publishing the map before they do
    would route clients to partitions the brokers do not know yet.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        existing = await client.topics()
        missing = {t: n for t, n in wanted.items() if existing.get(t, 0) < n}
        if not missing:
            return
        if loop.time() > deadline:
            log.warning("topics not visible in metadata yet; publishing anyway",
                        cluster=cluster_id, topics=sorted(missing))
            return
        await asyncio.sleep(0.1)


async def _await_gone(client: ClusterAdmin, names: Sequence[str], cluster_id: str,
                      timeout: float = 10.0) -> None:
    """Wait until deleted ``names`` no longer show in the cluster's metadata.

    A refused CreateTopics must leave nothing behind that a client could see: brokers
    drop deleted topics from their metadata asynchronously, after the delete is answered.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        existing = await client.topics()
        left = sorted(n for n in names if n in existing)
        if not left:
            return
        if loop.time() > deadline:
            log.warning("deleted topics still in metadata; answering anyway",
                        cluster=cluster_id, topics=left)
            return
        await asyncio.sleep(0.1)


async def _rollback(connect: Connect, fmap: FederationMap,
                    created: Mapping[str, Sequence[str]]) -> None:
    """Delete what a refused change created, on every cluster at once, and wait (one
    deadline for all) until the brokers no longer show it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0

    async def on(cluster_id: str, names: list[str]) -> None:
        try:
            async with connect(fmap.clusters[cluster_id]) as admin:
                await admin.delete(names)
                await _await_gone(admin, names, cluster_id,
                                  timeout=max(0.0, deadline - loop.time()))
            log.info("rolled back physical topics", cluster=cluster_id, topics=names)
        except Exception:  # report, keep rolling back the others
            log.exception("rollback failed; delete these topics by hand", cluster=cluster_id,
                          topics=names)

    await asyncio.gather(*(on(c, list(names)) for c, names in created.items() if names))


async def create_topic(backend: MetadataBackend, name: str, partitions: int,
                       strategy: str = "contiguous", config: Mapping[str, str] | None = None,
                       replication: int | None = None, *, connect: Connect = aiokafka_admin,
                       plugins: Plugins | None = None) -> LogicalTopic:
    """Create a logical topic: physical topics, shadow topic, then the published map.

    :param replication: replication factor of the physical topics (default:
        min(3, brokers of each cluster); -1: each cluster's default).
    :raises AdminError: (TopicExistsError, InvalidRequestError, ClusterUnreachableError,
        BrokerRefusedError…) after deleting whatever this call created.
    """
    [result] = await create_topics(backend, [TopicSpec(name, partitions, strategy, config,
                                                       replication)],
                                   connect=connect, plugins=plugins)
    if isinstance(result, AdminError):
        raise result
    return result


async def create_topics(backend: MetadataBackend, specs: Sequence[TopicSpec], *,
                        connect: Connect = aiokafka_admin, plugins: Plugins | None = None
                        ) -> list[LogicalTopic | AdminError]:
    """Create logical topics, each one created or refused on its own (as in Kafka's
    CreateTopics), in as few round trips as one topic: one admin connection per cluster,
    every cluster checked first, the shadow topics (claims, below) then the data topics in
    one request per cluster, one map publish for all of them.

    The shadow topics go first, as claims: Kafka creates a name once, so of two creators
    of one logical topic (say two proxies auto-creating it) exactly one goes on, and the
    other stops before creating anything. A refused topic leaves nothing behind; a failure
    of the whole operation (a cluster unreachable...) deletes whatever it created and
    raises.

    :returns: per spec, in order, the created topic or why it was refused.
    """
    fmap = await _load(backend)
    out: list[LogicalTopic | AdminError | None] = [None] * len(specs)
    planned: dict[int, LogicalTopic] = {}
    layout = fmap
    for i, spec in enumerate(specs):
        try:
            topic = plan_create_topic(layout, spec.name, spec.partitions, spec.strategy,
                                      spec.config, plugins=plugins, layout=spec.layout)
        except AdminError as e:
            out[i] = e
            continue
        planned[i] = topic
        layout = layout.with_topic(topic)
    needs = {i: physical_needs(fmap, t) for i, t in planned.items()}
    clusters = sorted({c for n in needs.values() for c in n})
    coordination = fmap.coordination_cluster or ""
    created: dict[int, dict[str, list[str]]] = {i: {} for i in planned}
    failed: dict[int, AdminError] = {}

    def outcome(i: int, cluster_id: str, physical: str, error: AdminError | None) -> None:
        if error is not None:
            failed.setdefault(i, error)
        else:
            created[i].setdefault(cluster_id, []).append(physical)

    def wanted_on(cluster_id: str, shadows: bool) -> list[tuple[int, str, int]]:
        return [(i, physical, count) for i, n in needs.items() if i not in failed
                for physical, count in n.get(cluster_id, {}).items()
                if (cluster_id == coordination and physical == planned[i].name) == shadows]

    async def create_on(admin: ClusterAdmin, cluster_id: str,
                        batch: list[tuple[int, str, int]]) -> None:
        if not batch:
            return
        news = [NewPhysicalTopic(p, count, specs[i].replication,
                                 None if p == planned[i].name and cluster_id == coordination
                                 else specs[i].config) for i, p, count in batch]
        many = getattr(admin, "create_many", None)
        if many is not None:
            results = await many(news)
            for (i, physical, _), new in zip(batch, news, strict=True):
                outcome(i, cluster_id, physical, results.get(new.name))
            return
        for (i, physical, _), new in zip(batch, news, strict=True):  # one by one
            try:
                await admin.create({new.name: new.partitions}, new.replication, new.config)
            except AdminError as e:
                outcome(i, cluster_id, physical, e)
            else:
                outcome(i, cluster_id, physical, None)

    try:
        async with contextlib.AsyncExitStack() as stack:
            opened = await _all_of(stack.enter_async_context(connect(fmap.clusters[c]))
                                   for c in clusters)
            admins = dict(zip(clusters, opened, strict=True))
            existing = dict(zip(clusters, await _all_of(admins[c].topics() for c in clusters),
                                strict=True))
            for i, n in needs.items():  # every cluster checked before anything is created
                for cluster_id, wanted in n.items():
                    taken = sorted(set(wanted) & set(existing[cluster_id]))
                    if taken and i not in failed:
                        failed[i] = TopicExistsError(
                            f"topic {planned[i].name!r}: {', '.join(taken)} already "
                            f"exist(s) on cluster {cluster_id!r} (left over from an earlier "
                            "topic?); delete it there or choose another name")
            if coordination in admins:
                await create_on(admins[coordination], coordination,
                                wanted_on(coordination, shadows=True))
            await _all_of(create_on(admins[c], c, wanted_on(c, shadows=False))
                          for c in clusters)

            async def visible(cluster_id: str) -> None:
                wanted = {p: count for i, n in needs.items() if i not in failed
                          for p, count in n.get(cluster_id, {}).items()}
                if wanted:
                    await _await_visible(admins[cluster_id], wanted, cluster_id)

            await _all_of(visible(c) for c in clusters)

        ready = {i: t for i, t in planned.items() if i not in failed}
        if ready:
            conflicts: dict[int, AdminError] = {}

            def change(current: FederationMap | None) -> FederationMap:
                conflicts.clear()
                if current is None:
                    raise _no_map()
                topics = dict(current.topics)
                for i, topic in ready.items():
                    if topic.name in topics:
                        conflicts[i] = TopicExistsError(f"topic {topic.name!r} already exists")
                        continue
                    missing = sorted(set(needs[i]) - set(current.clusters))
                    if missing:
                        conflicts[i] = InvalidRequestError(
                            f"cluster(s) {', '.join(missing)} were removed while topic "
                            f"{topic.name!r} was being created")
                        continue
                    topics[topic.name] = topic
                if len(conflicts) == len(ready):
                    raise next(iter(conflicts.values()))
                return dataclasses.replace(current, topics=topics)

            try:
                await _publish(backend, change, plugins)
            except AdminError as e:
                conflicts.update({i: e for i in ready if i not in conflicts})
            failed.update(conflicts)
    except BaseException:
        everything: dict[str, list[str]] = {}
        for per in created.values():
            for cluster_id, names in per.items():
                everything.setdefault(cluster_id, []).extend(names)
        await _rollback(connect, fmap, everything)
        raise
    if failed:
        leftovers: dict[str, list[str]] = {}
        for i in failed:
            for cluster_id, names in created[i].items():
                leftovers.setdefault(cluster_id, []).extend(names)
        await _rollback(connect, fmap, leftovers)
    for i, topic in planned.items():
        if i in failed:
            out[i] = failed[i]
        else:
            out[i] = topic
            log.info("topic created", topic=topic.name, partitions=topic.partition_count,
                     strategy=topic.strategy, clusters=sorted(needs[i]))
    return [r for r in out if r is not None]


async def _all_of(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently, let every one finish, then raise the first failure (if any)."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    for failure in failures:
        if not isinstance(failure, Exception):
            raise failure
    if failures:
        raise failures[0]
    return results  # type: ignore[return-value]  # no exception among them


async def _refuse_taken(admin: ClusterAdmin, name: str, wanted: Mapping[str, int],
                        cluster_id: str) -> None:
    existing = await admin.topics()
    taken = sorted(set(wanted) & set(existing))
    if taken:
        raise TopicExistsError(
            f"topic {name!r}: {', '.join(taken)} already exist(s) on cluster "
            f"{cluster_id!r} (left over from an earlier topic?); delete it there "
            "or choose another name")


async def validate_create_topic(backend: MetadataBackend, name: str, partitions: int,
                                strategy: str = "contiguous",
                                config: Mapping[str, str] | None = None,
                                replication: int | None = None, *,
                                connect: Connect = aiokafka_admin,
                                plugins: Plugins | None = None) -> LogicalTopic:
    """What :func:`create_topic` would create, checked by every physical cluster involved
    (CreateTopics with ``validate_only``): nothing is created, nothing published.

    :raises AdminError: as :func:`create_topic` would (a broker's refusal of a config or
        replication factor as :class:`BrokerRefusedError`).
    """
    fmap = await _load(backend)
    topic = plan_create_topic(fmap, name, partitions, strategy, config, plugins=plugins)
    await validate_physical(fmap, name, physical_needs(fmap, topic), replication, config,
                            connect=connect)
    return topic


async def validate_physical(fmap: FederationMap, name: str, needs: dict[str, dict[str, int]],
                            replication: int | None = None,
                            config: Mapping[str, str] | None = None, *,
                            connect: Connect = aiokafka_admin) -> None:
    """Have every physical cluster of ``needs`` (:func:`physical_needs` of the planned
    topic ``name``) validate creating its physical topics (the shadow topic without
    ``config``); nothing is created.

    :raises AdminError: the first cluster's refusal, as :func:`validate_create_topic`.
    """

    async def validate_on(cluster_id: str, wanted: dict[str, int]) -> None:
        async with connect(fmap.clusters[cluster_id]) as admin:
            await _refuse_taken(admin, name, wanted, cluster_id)
            for physical, count in wanted.items():
                is_shadow = physical == name and cluster_id == fmap.coordination_cluster
                await admin.create({physical: count}, replication,
                                   None if is_shadow else config, validate_only=True)

    results = await asyncio.gather(*(validate_on(c, w) for c, w in needs.items()),
                                   return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def describe_physical(fmap: FederationMap, topic: LogicalTopic, *,
                            connect: Connect = aiokafka_admin) -> PhysicalTopic:
    """The physical data topic holding ``topic``'s first partition, as its cluster
    describes it (replication factor, every config with its source)."""
    segment = topic.partitions[0].active
    try:
        cluster = fmap.clusters[segment.cluster]
    except KeyError:
        raise UnknownClusterError(f"cluster {segment.cluster!r} does not exist") from None
    async with connect(cluster) as admin:
        return await admin.describe(segment.topic)


async def describe_physical_many(fmap: FederationMap, topics: Sequence[LogicalTopic], *,
                                 connect: Connect = aiokafka_admin
                                 ) -> dict[str, PhysicalTopic | AdminError]:
    """:func:`describe_physical` for many topics: one connection and request per cluster.

    :returns: logical name → its physical data topic as described, or why it could not be.
    """
    by_cluster: dict[str, list[LogicalTopic]] = {}
    for topic in topics:
        by_cluster.setdefault(topic.partitions[0].active.cluster, []).append(topic)
    out: dict[str, PhysicalTopic | AdminError] = {}

    async def on(cluster_id: str, group: list[LogicalTopic]) -> None:
        physical = {t.partitions[0].active.topic: t.name for t in group}
        try:
            cluster = fmap.clusters[cluster_id]
        except KeyError:
            error = UnknownClusterError(f"cluster {cluster_id!r} does not exist")
            out.update(dict.fromkeys(physical.values(), error))
            return
        try:
            async with connect(cluster) as admin:
                many = getattr(admin, "describe_many", None)
                if many is not None:
                    found = await many(list(physical))
                else:
                    found = {}
                    for name in physical:
                        try:
                            found[name] = await admin.describe(name)
                        except AdminError as e:
                            found[name] = e
        except AdminError as e:
            out.update(dict.fromkeys(physical.values(), e))
            return
        for name, logical in physical.items():
            out[logical] = found.get(name) or UnknownTopicError(f"{name} not described")

    await asyncio.gather(*(on(c, g) for c, g in by_cluster.items()))
    return out


async def add_partitions(backend: MetadataBackend, name: str, new_count: int, *,
                         replication: int | None = None, connect: Connect = aiokafka_admin,
                         plugins: Plugins | None = None) -> LogicalTopic:
    """Grow ``name`` to ``new_count`` logical partitions (and the shadow topic with it)."""
    fmap = await _load(backend)
    old = _topic(fmap, name)
    topic = plan_add_partitions(fmap, name, new_count, plugins=plugins)
    needs = physical_needs(fmap, topic)
    created: dict[str, list[str]] = {}
    try:
        for cluster_id, wanted in needs.items():
            async with connect(fmap.clusters[cluster_id]) as admin:
                existing = await admin.topics()
                for physical, count in wanted.items():
                    if physical not in existing:
                        await admin.create({physical: count}, replication, old.config)
                        created.setdefault(cluster_id, []).append(physical)
                    elif existing[physical] < count:
                        await admin.grow(physical, count)
                await _await_visible(admin, wanted, cluster_id)

        def change(current: FederationMap | None) -> FederationMap:
            if current is None:
                raise _no_map()
            if current.topics.get(name) != old:
                raise InvalidRequestError(f"topic {name!r} changed while growing it; retry")
            return current.with_topic(topic)

        await _publish(backend, change, plugins)
    except BaseException:
        await _rollback(connect, fmap, created)
        raise
    log.info("partitions added", topic=name, old=old.partition_count, new=new_count)
    return topic


async def set_topic_config(backend: MetadataBackend, name: str, config: Mapping[str, str], *,
                           plugins: Plugins | None = None) -> LogicalTopic:
    """Record ``name``'s topic config (its physical topics' dynamic configs) in the map, so
    that physical topics created later for it (new segments, repairs) get it too. The
    physical topics themselves are altered by the caller (the proxy's AlterConfigs)."""
    wanted = dict(config)
    updated: list[LogicalTopic] = []

    def change(current: FederationMap | None) -> FederationMap | None:
        if current is None:
            raise _no_map()
        topic = _topic(current, name)
        updated[:] = [dataclasses.replace(topic, config=wanted)]
        if dict(topic.config) == wanted:
            return None
        return current.with_topic(updated[0])

    def publish(current: FederationMap | None) -> FederationMap | None:
        try:
            return _stamp(current, change(current))
        except AdminError as e:
            raise _Refused() from e

    before = await asyncio.to_thread(backend.load)
    try:
        new = await asyncio.to_thread(mapstore.update, backend, publish)
    except _Refused as e:
        assert isinstance(e.__cause__, AdminError)
        raise e.__cause__ from None
    if new is not None:
        (plugins or get_plugins()).notify_map_published(before, new)
        log.info("topic config recorded", topic=name, config=wanted)
    return updated[0]


async def set_auto_create(backend: MetadataBackend, policy: AutoCreatePolicy, *,
                          plugins: Plugins | None = None) -> FederationMap:
    """Set the federation's automatic topic creation policy (ADR 0013)."""
    plugins = plugins or get_plugins()
    _strategy(plugins, policy.strategy)  # an unknown strategy is refused now, not later

    def change(current: FederationMap | None) -> FederationMap:
        if current is None:
            raise _no_map()
        try:
            policy.validate()
        except ValueError as e:
            raise InvalidRequestError(str(e)) from None
        return dataclasses.replace(current, auto_create=policy)

    return await _publish(backend, change, plugins)


# -- access control lists (the rules of the built-in ACL plugin, fedkafka_builtin.acl) ------


def _valid_rules(rules: Sequence[AclRule]) -> list[AclRule]:
    for rule in rules:
        try:
            rule.validate()
        except ValueError as e:
            raise InvalidRequestError(str(e)) from None
    return list(dict.fromkeys(rules))


async def add_acls(backend: MetadataBackend, rules: Sequence[AclRule], *,
                   plugins: Plugins | None = None) -> tuple[FederationMap, list[AclRule]]:
    """Add ACL rules to the map: (the map, the rules that were not in it yet). Nothing is
    published when every rule is there already.

    :raises InvalidRequestError: naming a bad rule's field and what it may be.
    """
    wanted = _valid_rules(rules)
    fmap = await asyncio.to_thread(backend.load)
    if fmap is None:
        raise _no_map()
    if all(r in fmap.acls for r in wanted):
        return fmap, []
    added: list[AclRule] = []

    def change(current: FederationMap | None) -> FederationMap:
        if current is None:
            raise _no_map()
        added[:] = [r for r in wanted if r not in current.acls]
        return dataclasses.replace(current, acls=(*current.acls, *added))

    return await _publish(backend, change, plugins), added


async def remove_acls(backend: MetadataBackend, rules: Sequence[AclRule], *,
                      plugins: Plugins | None = None) -> tuple[FederationMap, list[AclRule]]:
    """Remove ACL rules from the map: (the map, the rules removed).

    :raises InvalidRequestError: when none of ``rules`` is in the map.
    """
    unwanted = set(_valid_rules(rules))
    removed: list[AclRule] = []

    def change(current: FederationMap | None) -> FederationMap:
        if current is None:
            raise _no_map()
        removed[:] = [r for r in current.acls if r in unwanted]
        if not removed:
            raise InvalidRequestError(
                "no such ACL rule: " + "; ".join(str(r) for r in rules)
                + " (`fedkafka acl list` shows the rules)")
        return dataclasses.replace(current, acls=tuple(r for r in current.acls
                                                       if r not in unwanted))

    return await _publish(backend, change, plugins), removed


@dataclass(frozen=True, slots=True)
class Deleted:
    """A deleted topic and the physical topics that could not be deleted (cluster, topic)."""

    topic: LogicalTopic
    leftovers: tuple[tuple[str, str], ...] = ()


async def delete_topic(backend: MetadataBackend, name: str, *, connect: Connect = aiokafka_admin,
                       plugins: Plugins | None = None) -> Deleted:
    """Unpublish ``name``, then delete its physical and shadow topics.

    The map goes first, so no client is routed to a topic being deleted. Clusters that
    cannot be reached keep their physical topics; they are listed in ``leftovers``.
    """
    removed: list[LogicalTopic] = []

    def change(current: FederationMap | None) -> FederationMap:
        if current is None:
            raise _no_map()
        removed[:] = [_topic(current, name)]
        return current.without_topic(name)

    new = await _publish(backend, change, plugins)
    topic = removed[0]
    still_used = {(s.cluster, s.topic) for t in new.topics.values() for p in t.partitions
                  for s in p.segments}
    leftovers: list[tuple[str, str]] = []
    for cluster_id, wanted in physical_needs(new, topic).items():
        names = [t for t in wanted if (cluster_id, t) not in still_used]
        cluster = new.clusters.get(cluster_id)
        if cluster is None or not names:
            continue
        try:
            async with connect(cluster) as admin:
                await admin.delete(names)
        except AdminError as e:
            log.warning("physical topics left behind", cluster=cluster_id, topics=names,
                        error=str(e))
            leftovers.extend((cluster_id, t) for t in names)
    log.info("topic deleted", topic=name, leftovers=leftovers)
    return Deleted(topic, tuple(leftovers))


async def describe_topic(backend: MetadataBackend, name: str) -> LogicalTopic:
    return _topic(await _load(backend), name)


async def list_topics(backend: MetadataBackend) -> list[LogicalTopic]:
    fmap = await asyncio.to_thread(backend.load)
    return [] if fmap is None else [fmap.topics[n] for n in sorted(fmap.topics)]


async def probe_cluster(cluster: PhysicalCluster, timeout: float = 3.0) -> str | None:
    """The Kafka cluster id answering at ``cluster``'s bootstrap.

    :raises ClusterUnreachableError: if no bootstrap server answers Metadata.
    """
    errors = []
    for server in cluster.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            answer = await asyncio.to_thread(probe.metadata, host, int(port), timeout,
                                             security=cluster.security)
        except (OSError, probe.ProbeError) as e:
            errors.append(f"{server}: {e}")
            continue
        return answer.cluster_id
    raise ClusterUnreachableError(
        f"cluster {cluster.id!r}: no bootstrap server answers Kafka Metadata "
        f"({'; '.join(errors)}); check the address and that the cluster runs")


async def add_cluster(backend: MetadataBackend, cluster_id: str, bootstrap: str, weight: int = 1,
                      *, state: ClusterState | str = ClusterState.ACTIVE,
                      security: Mapping[str, str] | None = None, coordination: bool = False,
                      probe_first: bool = True, plugins: Plugins | None = None
                      ) -> PhysicalCluster:
    """Add a physical cluster (probed first: an unreachable cluster is refused).

    The first cluster of an empty store starts the map and coordinates consumer groups.
    """
    try:
        cluster = PhysicalCluster(cluster_id, bootstrap, ClusterState(state), weight,
                                  dict(security or {}))
    except ValueError:
        valid = ", ".join(s.value for s in ClusterState)
        raise InvalidRequestError(f"unknown cluster state {state!r}; valid: {valid}") from None
    plan_add_cluster(None, cluster)  # validates before any network call
    from federation.core.errors import ConfigError
    from federation.security.tls import cluster_security

    try:
        cluster_security(cluster.security, cluster.id)
    except ConfigError as e:
        raise InvalidRequestError(str(e)) from None
    if probe_first:
        await probe_cluster(cluster)
    await _publish(backend, lambda current: plan_add_cluster(current, cluster,
                                                              coordination=coordination),
                   plugins)
    (plugins or get_plugins()).notify_cluster_state_changed(cluster_id, None, cluster.state)
    return cluster


async def set_cluster_state(backend: MetadataBackend, cluster_id: str,
                            state: ClusterState | str, *, plugins: Plugins | None = None
                            ) -> PhysicalCluster:
    old: list[ClusterState] = []

    def change(current: FederationMap | None) -> FederationMap:
        if current is None:
            raise _no_map()
        old[:] = [_cluster(current, cluster_id).state]
        return plan_set_cluster_state(current, cluster_id, state)

    new = await _publish(backend, change, plugins)
    cluster = new.clusters[cluster_id]
    if old and old[0] != cluster.state:
        (plugins or get_plugins()).notify_cluster_state_changed(cluster_id, old[0],
                                                                cluster.state)
    return cluster


async def remove_cluster(backend: MetadataBackend, cluster_id: str, *,
                         plugins: Plugins | None = None) -> None:
    def change(current: FederationMap | None) -> FederationMap:
        if current is None:
            raise _no_map()
        return plan_remove_cluster(current, cluster_id)

    await _publish(backend, change, plugins)


async def set_pool(backend: MetadataBackend, name: str, endpoints: Sequence[ProxyEndpoint], *,
                   plugins: Plugins | None = None) -> FederationMap:
    """Replace pool ``name``'s endpoints (an empty list removes the pool)."""
    def change(current: FederationMap | None) -> FederationMap:
        if current is None:
            raise _no_map()
        pools = {k: v for k, v in current.pools.items() if k != name}
        if endpoints:
            pools[name] = tuple(endpoints)
        try:
            new = dataclasses.replace(current, pools=pools)
            new.validate()
        except ValueError as e:
            raise InvalidRequestError(f"pool {name!r}: {e}") from None
        return new

    return await _publish(backend, change, plugins)


async def set_route(backend: MetadataBackend, pattern: str, pool: str,
                    role: str | None = None, *, plugins: Plugins | None = None
                    ) -> FederationMap:
    """Route clients whose client.id matches ``pattern`` to ``pool`` (as ``role``).

    A rule with the same pattern is replaced in place; a new rule goes last (rules are
    tried in order, the first match wins).
    """
    rule = RoutingRule(pattern, pool, role)

    def change(current: FederationMap | None) -> FederationMap:
        if current is None:
            raise _no_map()
        rules = list(current.routing)
        at = next((i for i, r in enumerate(rules) if r.pattern == pattern), None)
        if at is None:
            rules.append(rule)
        else:
            rules[at] = rule
        try:
            new = dataclasses.replace(current, routing=tuple(rules))
            new.validate()
        except ValueError as e:
            raise InvalidRequestError(f"route {pattern!r}: {e}") from None
        return new

    return await _publish(backend, change, plugins)


async def remove_route(backend: MetadataBackend, pattern: str, *,
                       plugins: Plugins | None = None) -> FederationMap:
    def change(current: FederationMap | None) -> FederationMap:
        if current is None:
            raise _no_map()
        if not any(r.pattern == pattern for r in current.routing):
            known = ", ".join(repr(r.pattern) for r in current.routing) or "none"
            raise InvalidRequestError(f"no route with pattern {pattern!r}; routes: {known}")
        return dataclasses.replace(current, routing=tuple(r for r in current.routing
                                                          if r.pattern != pattern))

    return await _publish(backend, change, plugins)


async def init_map(backend: MetadataBackend, clusters: Sequence[PhysicalCluster],
                   coordination_cluster: str, *,
                   pools: Mapping[str, Sequence[ProxyEndpoint]] | None = None,
                   default_pool: str = DEFAULT_POOL,
                   physical_topic_template: str = "{topic}.fk", exist_ok: bool = False,
                   probe_first: bool = True, plugins: Plugins | None = None) -> FederationMap:
    """Publish the first map (version 1).

    :param exist_ok: return the stored map instead of failing when there is one.
    :raises MapExistsError: if the store already holds a map (and not ``exist_ok``).
    """
    if probe_first:
        await asyncio.gather(*(probe_cluster(c) for c in clusters))
    try:
        fmap = FederationMap(
            version=0, clusters={c.id: c for c in clusters},
            coordination_cluster=coordination_cluster,
            physical_topic_template=physical_topic_template,
            pools={k: tuple(v) for k, v in (pools or {}).items()}, default_pool=default_pool)
        fmap.validate()
    except ValueError as e:
        raise InvalidRequestError(f"initial map: {e}") from None
    if len({c.id for c in clusters}) != len(clusters):
        raise InvalidRequestError("initial map: duplicate cluster ids")
    existing: list[FederationMap] = []

    def change(current: FederationMap | None) -> FederationMap | None:
        if current is not None:
            if exist_ok:
                existing[:] = [current]
                return None
            raise MapExistsError(f"the store already holds map version {current.version}; "
                                 "change it with `fedkafka cluster`/`topic`/`pool` commands")
        return fmap

    def publish_first(current: FederationMap | None) -> FederationMap | None:
        try:
            return change(current)
        except AdminError as e:
            raise _Refused() from e

    try:
        new = await asyncio.to_thread(mapstore.update, backend, publish_first)
    except _Refused as e:
        assert isinstance(e.__cause__, AdminError)
        raise e.__cause__ from None
    if new is None:
        return existing[0]
    (plugins or get_plugins()).notify_map_published(None, new)
    return new
