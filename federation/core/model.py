"""The federation's data model: physical clusters, logical topics and the versioned map.

Pure data, no I/O. Every class is a frozen dataclass; mapping fields are wrapped in
read-only views, so one map can be shared between threads and tasks without copying.

A logical partition is an ordered list of *segments*. Each segment places a contiguous
range of logical offsets on one physical partition::

    logical = segment.logical_start + (physical - segment.physical_start)

The last segment is the active one (it takes writes); earlier ones are sealed at a
logical end offset (exclusive). With a single segment starting at 0 on both sides,
logical offsets equal physical offsets and nothing is translated.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from federation.core.credentials import UserCredentials

#: Version of the JSON map format written by :meth:`FederationMap.to_dict`.
MAP_FORMAT = 1

#: Namespace for deterministic logical topic ids (:func:`new_topic_id` with a nonce).
TOPIC_ID_NAMESPACE = uuid.UUID("6b1d3f1e-8a53-5d0c-9a57-1f0c2e6a4f10")

#: Pool a client lands in when no routing rule matches it.
DEFAULT_POOL = "default"

#: Proxy roles. A proxy with both roles serves producers and consumers.
ROLE_PRODUCER = "producer"
ROLE_CONSUMER = "consumer"

_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_RESERVED_TOPIC_IDS = frozenset({uuid.UUID(int=0), uuid.UUID(int=1)})  # Kafka's ZERO and METADATA


class ClusterState(StrEnum):
    """Lifecycle state of a physical cluster."""

    ACTIVE = "active"  #: takes new segments and writes, serves reads
    READ_ONLY = "read_only"  #: serves reads of its segments, takes no writes
    DRAINING = "draining"  #: being migrated away: serves reads, its active segments move
    DOWN = "down"  #: unreachable
    RETIRED = "retired"  #: holds no segment any more; kept for the record

    @property
    def writable(self) -> bool:
        """Whether the cluster takes new segments and writes."""
        return self is ClusterState.ACTIVE

    @property
    def readable(self) -> bool:
        """Whether reads of the cluster's segments are served."""
        return self in (ClusterState.ACTIVE, ClusterState.READ_ONLY, ClusterState.DRAINING)


def _copy(value: Mapping[Any, Any]) -> dict[Any, Any]:
    """A dict copy of a mapping; of a dict or its read-only view, without rehashing keys."""
    return value.copy() if isinstance(value, (dict, MappingProxyType)) else dict(value)


def _frozen_mapping(value: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return value if isinstance(value, MappingProxyType) else MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class PhysicalCluster:
    """One independent Kafka cluster of the federation."""

    id: str
    bootstrap: str  #: "host:port,host:port"
    state: ClusterState = ClusterState.ACTIVE
    weight: int = 1  #: relative capacity, used by the ``weighted`` strategy
    security: Mapping[str, str] = field(default_factory=dict, hash=False)  #: empty = PLAINTEXT
    #: while ``down``: the state it had before, restored when it answers again (kept in the
    #: map, so a controller failover does not forget a drain or a read-only state)
    previous_state: ClusterState | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", ClusterState(self.state))
        object.__setattr__(self, "security", _frozen_mapping(self.security))
        if self.previous_state is not None:
            object.__setattr__(self, "previous_state", ClusterState(self.previous_state))

    @property
    def writable(self) -> bool:
        return self.state.writable

    @property
    def bootstrap_servers(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.bootstrap.split(",") if s.strip())

    def with_state(self, state: ClusterState) -> PhysicalCluster:
        return dataclasses.replace(self, state=state)

    def validate(self) -> None:
        if not self.id:
            raise ValueError("cluster id must not be empty")
        if not self.bootstrap_servers:
            raise ValueError(f"cluster {self.id!r}: bootstrap is empty")
        for server in self.bootstrap_servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"cluster {self.id!r}: bad bootstrap server {server!r}")
        if self.weight < 0:
            raise ValueError(f"cluster {self.id!r}: weight must be >= 0, got {self.weight}")


@dataclass(frozen=True, slots=True)
class Segment:
    """A contiguous range of a logical partition's offsets stored on one physical partition."""

    cluster: str
    topic: str  #: physical topic
    partition: int  #: physical partition
    logical_start: int
    physical_start: int
    sealed_end: int | None = None  #: logical end offset, exclusive; None = active

    def __post_init__(self) -> None:
        if self.partition < 0 or self.logical_start < 0 or self.physical_start < 0:
            raise ValueError(f"negative partition or offset in {self}")
        if self.sealed_end is not None and self.sealed_end < self.logical_start:
            raise ValueError(f"sealed_end before logical_start in {self}")

    @property
    def is_active(self) -> bool:
        return self.sealed_end is None

    @property
    def physical_end(self) -> int | None:
        """Physical end offset (exclusive) of a sealed segment; None while active."""
        if self.sealed_end is None:
            return None
        return self.to_physical(self.sealed_end)

    def to_logical(self, physical_offset: int) -> int:
        """Translate a physical offset of this segment's partition to a logical offset.

        Pure arithmetic: boundaries (e.g. a high watermark equal to the end) translate too.
        """
        return self.logical_start + (physical_offset - self.physical_start)

    def to_physical(self, logical_offset: int) -> int:
        """Translate a logical offset to this segment's physical partition (arithmetic only)."""
        return self.physical_start + (logical_offset - self.logical_start)

    def contains_logical(self, offset: int) -> bool:
        end = self.sealed_end
        return offset >= self.logical_start and (end is None or offset < end)

    def contains_physical(self, offset: int) -> bool:
        end = self.physical_end
        return offset >= self.physical_start and (end is None or offset < end)

    def sealed(self, logical_end: int) -> Segment:
        """This segment sealed at ``logical_end`` (exclusive)."""
        return dataclasses.replace(self, sealed_end=logical_end)


@dataclass(frozen=True, slots=True)
class LogicalPartition:
    """A partition as clients see it: an ordered, gap-free list of segments."""

    index: int
    segments: tuple[Segment, ...]
    #: Set by the controller while it rolls the active segment onto cluster ``fence``:
    #: proxies stop forwarding writes to the partition and report what they were
    #: acknowledged (see docs/adr/0011-rolls.md). None = not fenced.
    fence: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.segments))

    @property
    def active(self) -> Segment:
        """The last segment: the one that takes writes."""
        return self.segments[-1]

    @property
    def logical_start(self) -> int:
        return self.segments[0].logical_start

    def segment_for(self, logical_offset: int) -> Segment | None:
        """The segment holding ``logical_offset``; None if it lies before the first segment."""
        i = bisect.bisect_right(self.segments, logical_offset, key=lambda s: s.logical_start)
        if i == 0:
            return None
        segment = self.segments[i - 1]
        return segment if segment.contains_logical(logical_offset) else None

    def rolled(self, at: int, cluster: str, topic: str, partition: int,
               physical_start: int) -> LogicalPartition:
        """Seal the active segment at logical offset ``at`` and open a new one there."""
        active = self.active
        if at < active.logical_start:
            raise ValueError(
                f"partition {self.index}: cannot seal at {at}, before the active segment's "
                f"start {active.logical_start}"
            )
        new = Segment(cluster, topic, partition, logical_start=at, physical_start=physical_start)
        return LogicalPartition(self.index, (*self.segments[:-1], active.sealed(at), new))

    def fenced(self, target: str | None) -> LogicalPartition:
        """This partition with its fence set to ``target`` (None lifts it)."""
        return dataclasses.replace(self, fence=target)

    def without_segments_through(self, last: int) -> LogicalPartition:
        """This partition without its segments ``0..last`` (sealed ones: a retired cluster's)."""
        if last >= len(self.segments) - 1:
            raise ValueError(f"logical partition {self.index}: cannot drop the active segment")
        return dataclasses.replace(self, segments=self.segments[last + 1:])

    def validate(self) -> None:
        where = f"logical partition {self.index}"
        if self.index < 0:
            raise ValueError(f"{where}: negative index")
        if not self.segments:
            raise ValueError(f"{where}: has no segment")
        for i, segment in enumerate(self.segments[:-1]):
            following = self.segments[i + 1]
            if segment.sealed_end is None:
                raise ValueError(f"{where}: segment {i} is not sealed but is not the last one")
            if following.logical_start != segment.sealed_end:
                raise ValueError(
                    f"{where}: segment {i + 1} starts at logical {following.logical_start}, "
                    f"segment {i} ends at {segment.sealed_end} (segments must be contiguous)"
                )
        if not self.active.is_active:
            raise ValueError(f"{where}: the last segment is sealed (no active segment)")


def new_topic_id(name: str, nonce: str | None = None) -> uuid.UUID:
    """A logical topic id: random, or deterministic from ``name`` and a creation ``nonce``.

    The id is published once and must never change; a topic deleted and created again
    under the same name gets a new nonce, hence a new id (as Kafka does).
    """
    # Version bits are set in both kinds, so Kafka's reserved ids 0 and 1 never come out.
    if nonce is None:
        return uuid.uuid4()
    return uuid.uuid5(TOPIC_ID_NAMESPACE, f"{name}\0{nonce}")


@dataclass(frozen=True, slots=True)
class LogicalTopic:
    """A topic as clients see it."""

    name: str
    topic_id: uuid.UUID
    partitions: tuple[LogicalPartition, ...]
    strategy: str = "contiguous"
    config: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "partitions", tuple(self.partitions))
        object.__setattr__(self, "config", _frozen_mapping(self.config))

    @property
    def partition_count(self) -> int:
        return len(self.partitions)

    def validate(self) -> None:
        if not _TOPIC_NAME.fullmatch(self.name) or self.name in (".", ".."):
            raise ValueError(f"illegal topic name {self.name!r}")
        if self.topic_id in _RESERVED_TOPIC_IDS:
            raise ValueError(f"topic {self.name!r}: topic id {self.topic_id} is reserved by Kafka")
        if not self.partitions:
            raise ValueError(f"topic {self.name!r}: has no partition")
        for i, partition in enumerate(self.partitions):
            if partition.index != i:
                raise ValueError(
                    f"topic {self.name!r}: partition at position {i} has index {partition.index}"
                )
            try:
                partition.validate()
            except ValueError as e:
                raise ValueError(f"topic {self.name!r}: {e}") from None


@dataclass(frozen=True, slots=True)
class ProxyEndpoint:
    """A proxy as advertised to clients (a "broker" in their Metadata)."""

    node_id: int
    host: str
    port: int
    roles: frozenset[str] = frozenset({ROLE_PRODUCER, ROLE_CONSUMER})

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", frozenset(self.roles))


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@dataclass(frozen=True, slots=True)
class RoutingRule:
    """Clients whose whole ``client.id`` matches ``pattern`` (a regex) go to ``pool``.

    ``role`` (``producer`` or ``consumer``) says what the matching clients are: they are
    then only ever sent to the pool's proxies with that role. Without a role, a client is
    sent to the pool's proxies that have both roles (or, if none has, to all of them).
    """

    pattern: str
    pool: str
    role: str | None = None

    def matches(self, client_id: str | None) -> bool:
        return client_id is not None and _compiled(self.pattern).fullmatch(client_id) is not None


@dataclass(frozen=True, slots=True)
class Move:
    """A requested roll: the controller moves the partition's active segment to ``target``.

    Requests come from ``fedkafka rebalance`` (and may come from any tool); only the
    controller executes them, and it removes each request when done or refused.
    ``target`` None lets the controller choose a writable cluster by weight.
    """

    topic: str
    partition: int
    target: str | None = None
    reason: str = "rebalance"


@dataclass(frozen=True, slots=True)
class AutoCreatePolicy:
    """Automatic topic creation (Kafka's ``auto.create.topics.enable``), federation-wide.

    A Metadata request naming an unknown, valid topic with ``allow_auto_topic_creation``
    creates it as a logical topic with these settings (ADR 0013).
    """

    enabled: bool = True
    partitions: int = 1  #: as Kafka's ``num.partitions`` default
    strategy: str = "contiguous"
    replication_factor: int = -1  #: -1: each physical cluster's default

    def validate(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"auto_create.partitions must be >= 1, got {self.partitions}")
        if self.replication_factor == 0 or self.replication_factor < -1:
            raise ValueError("auto_create.replication_factor must be >= 1, or -1 for each "
                             f"cluster's default, got {self.replication_factor}")
        if not self.strategy:
            raise ValueError("auto_create.strategy must name a mapping strategy")

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "partitions": self.partitions,
                "strategy": self.strategy, "replication_factor": self.replication_factor}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AutoCreatePolicy:
        _check_keys("auto_create", data, {"enabled", "partitions", "strategy",
                                          "replication_factor"})
        default = cls()
        return cls(enabled=bool(data.get("enabled", default.enabled)),
                   partitions=int(data.get("partitions", default.partitions)),
                   strategy=str(data.get("strategy", default.strategy)),
                   replication_factor=int(data.get("replication_factor",
                                                   default.replication_factor)))


@dataclass(frozen=True, slots=True, weakref_slot=True)
class FederationMap:
    """Everything a proxy or the name service needs, under one monotonically growing version."""

    version: int
    clusters: Mapping[str, PhysicalCluster] = field(default_factory=dict, hash=False)
    topics: Mapping[str, LogicalTopic] = field(default_factory=dict, hash=False)
    coordination_cluster: str | None = None
    physical_topic_template: str = "{topic}.fk"
    pools: Mapping[str, tuple[ProxyEndpoint, ...]] = field(default_factory=dict, hash=False)
    routing: tuple[RoutingRule, ...] = ()
    default_pool: str = DEFAULT_POOL
    moves: tuple[Move, ...] = ()  #: requested rolls, waiting for the controller
    acls: tuple[AclRule, ...] = ()  #: access control lists (fedkafka_builtin.acl)
    auto_create: AutoCreatePolicy = AutoCreatePolicy()  #: automatic topic creation policy
    #: SASL users by name: SCRAM credentials and PLAIN hashes (federation.core.credentials)
    users: Mapping[str, UserCredentials] = field(default_factory=dict, hash=False, repr=False)
    #: ids of the intents the controller applied → the map version that applied each (the
    #: newest ones only, federation.controller.intents.KEEP_APPLIED), so a retried intent is not
    #: applied twice
    intents: Mapping[str, int] = field(default_factory=dict, hash=False, repr=False)
    #: topic id → topic (Fetch/Produce v13+ name topics by id): built on first use, or
    #: derived from the map this one was derived from (with_topic, with_version, ...)
    _by_id: Mapping[uuid.UUID, LogicalTopic] | None = field(
        init=False, default=None, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "clusters", _frozen_mapping(self.clusters))
        object.__setattr__(self, "topics", _frozen_mapping(self.topics))
        object.__setattr__(self, "_by_id", None)
        pools = {name: tuple(endpoints) for name, endpoints in self.pools.items()}
        object.__setattr__(self, "pools", MappingProxyType(pools))
        object.__setattr__(self, "routing", tuple(self.routing))
        object.__setattr__(self, "moves", tuple(self.moves))
        object.__setattr__(self, "acls", tuple(self.acls))
        object.__setattr__(self, "users", _frozen_mapping(self.users))
        object.__setattr__(self, "intents", _frozen_mapping(self.intents))

    # -- queries ---------------------------------------------------------------------------

    def topic_by_id(self, topic_id: uuid.UUID) -> LogicalTopic | None:
        by_id = self._by_id
        if by_id is None:  # (two threads may both build it: the same result)
            by_id = MappingProxyType({t.topic_id: t for t in self.topics.values()})
            object.__setattr__(self, "_by_id", by_id)
        return by_id.get(topic_id)

    def physical_topic_name(self, logical_name: str) -> str:
        """The physical data topic that new segments of ``logical_name`` are placed on."""
        return self.physical_topic_template.format(topic=logical_name)

    def writable_clusters(self) -> tuple[PhysicalCluster, ...]:
        """Clusters that take new segments, in map order."""
        return tuple(c for c in self.clusters.values() if c.writable)

    def physical_topics_on(self, cluster_id: str) -> dict[str, int]:
        """Physical topic → partition count that ``cluster_id`` needs for every segment it holds."""
        needed: dict[str, int] = {}
        for topic in self.topics.values():
            for partition in topic.partitions:
                for segment in partition.segments:
                    if segment.cluster == cluster_id:
                        needed[segment.topic] = max(needed.get(segment.topic, 0),
                                                    segment.partition + 1)
        return needed

    def client_role(self, client_id: str | None) -> str | None:
        """The role of the first routing rule with a role that matches ``client_id``."""
        for rule in self.routing:
            if rule.role is not None and rule.matches(client_id):
                return rule.role
        return None

    def pool_for(self, name: str) -> tuple[ProxyEndpoint, ...]:
        """Endpoints of pool ``name``, falling back to the default pool."""
        return self.pools.get(name) or self.pools.get(self.default_pool, ())

    # -- derived maps ----------------------------------------------------------------------

    def with_version(self, version: int) -> FederationMap:
        new = dataclasses.replace(self, version=version)
        object.__setattr__(new, "_by_id", self._by_id)  # the same topics
        return new

    def with_topic(self, topic: LogicalTopic) -> FederationMap:
        return self.with_topics({topic.name: topic})

    def without_topic(self, name: str) -> FederationMap:
        return self.with_topics({name: None})

    def with_topics(self, changes: Mapping[str, LogicalTopic | None]) -> FederationMap:
        """This map with topics replaced or added (name → topic) and removed (name → None).

        Costs a copy of the topic table, not a rebuild of its id index: unchanged topics
        are shared with this map.
        """
        topics = _copy(self.topics)
        for name, topic in changes.items():
            if topic is None:
                topics.pop(name, None)
            else:
                topics[name] = topic
        new = dataclasses.replace(self, topics=topics)
        if self._by_id is not None:
            by_id: dict[uuid.UUID, LogicalTopic] = _copy(self._by_id)
            for name in changes:
                was = self.topics.get(name)
                if was is not None and by_id.get(was.topic_id) is was:
                    del by_id[was.topic_id]
            for added in changes.values():
                if added is not None:
                    by_id[added.topic_id] = added
            object.__setattr__(new, "_by_id", MappingProxyType(by_id))
        return new

    def with_cluster(self, cluster: PhysicalCluster) -> FederationMap:
        return dataclasses.replace(self, clusters={**self.clusters, cluster.id: cluster})

    # -- validation ------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistency found."""
        if self.version < 0:
            raise ValueError(f"map version must be >= 0, got {self.version}")
        for key, cluster in self.clusters.items():
            if key != cluster.id:
                raise ValueError(f"cluster stored under key {key!r} has id {cluster.id!r}")
            cluster.validate()
        if self.coordination_cluster is not None and self.coordination_cluster not in self.clusters:
            raise ValueError(f"coordination_cluster {self.coordination_cluster!r} is not a cluster")
        self._validate_template()
        self._validate_topics()
        self._validate_pools()
        self.auto_create.validate()
        for rule in self.acls:
            rule.validate()
        for name, user in self.users.items():
            user.validate(name)

    def _validate_template(self) -> None:
        template = self.physical_topic_template
        try:
            sample = template.format(topic="t")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"physical_topic_template {template!r}: {e!r}") from None
        if "{topic}" not in template or sample == "t":
            raise ValueError(
                f"physical_topic_template {template!r} must contain {{topic}} and differ from it "
                "(the logical name is taken by the shadow topic on the coordination cluster)"
            )

    def _validate_topics(self) -> None:
        ids: dict[uuid.UUID, str] = {}
        # (cluster, physical topic, physical partition) -> [(start, end | None, owner)]
        ranges: dict[tuple[str, str, int], list[tuple[int, int | None, str]]] = {}
        for key, topic in self.topics.items():
            if key != topic.name:
                raise ValueError(f"topic stored under key {key!r} is named {topic.name!r}")
            topic.validate()
            if topic.topic_id in ids:
                raise ValueError(
                    f"topics {ids[topic.topic_id]!r} and {topic.name!r} share id {topic.topic_id}"
                )
            ids[topic.topic_id] = topic.name
            physical = self.physical_topic_name(topic.name)
            if not _TOPIC_NAME.fullmatch(physical):
                raise ValueError(f"topic {topic.name!r}: physical name {physical!r} is illegal")
            for partition in topic.partitions:
                if partition.fence is not None and partition.fence not in self.clusters:
                    raise ValueError(f"topic {topic.name!r} partition {partition.index}: fenced "
                                     f"for unknown cluster {partition.fence!r}")
                for segment in partition.segments:
                    if segment.cluster not in self.clusters:
                        raise ValueError(
                            f"topic {topic.name!r} partition {partition.index}: segment on "
                            f"unknown cluster {segment.cluster!r}"
                        )
                    if (segment.cluster == self.coordination_cluster
                            and segment.topic in self.topics):
                        raise ValueError(
                            f"physical topic {segment.topic!r} on coordination cluster "
                            f"{segment.cluster!r} collides with a logical (shadow) topic name"
                        )
                    owner = f"{topic.name}[{partition.index}]"
                    place = (segment.cluster, segment.topic, segment.partition)
                    span = (segment.physical_start, segment.physical_end, owner)
                    ranges.setdefault(place, []).append(span)
        for (cluster, ptopic, ppartition), spans in ranges.items():
            spans.sort(key=lambda s: s[0])
            for (_, end, owner), (start, _, other) in itertools.pairwise(spans):
                if end is None or end > start:
                    raise ValueError(
                        f"{owner} and {other} overlap on physical partition "
                        f"{cluster}/{ptopic}/{ppartition}"
                    )

    def _validate_pools(self) -> None:
        seen: dict[int, tuple[str, int]] = {}
        for name, endpoints in self.pools.items():
            ids_in_pool: set[int] = set()
            for ep in endpoints:
                if ep.node_id in ids_in_pool:
                    raise ValueError(f"pool {name!r}: node id {ep.node_id} appears twice")
                ids_in_pool.add(ep.node_id)
                if not 0 < ep.port < 65536 or not ep.host:
                    raise ValueError(f"pool {name!r}: bad endpoint {ep.host}:{ep.port}")
                address = (ep.host, ep.port)
                if seen.setdefault(ep.node_id, address) != address:
                    raise ValueError(
                        f"node id {ep.node_id} is both {seen[ep.node_id]} and {address}"
                    )
        if self.pools and self.default_pool not in self.pools:
            raise ValueError(f"default pool {self.default_pool!r} is not among the pools")
        for rule in self.routing:
            try:
                _compiled(rule.pattern)
            except re.error as e:
                raise ValueError(f"routing pattern {rule.pattern!r}: {e}") from None
            if self.pools and rule.pool not in self.pools:
                raise ValueError(f"routing rule {rule.pattern!r} names unknown pool {rule.pool!r}")
            if rule.role not in (None, ROLE_PRODUCER, ROLE_CONSUMER):
                raise ValueError(f"routing rule {rule.pattern!r}: role must be "
                                 f"{ROLE_PRODUCER!r} or {ROLE_CONSUMER!r}, got {rule.role!r}")

    # -- plain-data form (serialised as JSON by federation.store.mapstore) -----------------------

    def to_dict(self) -> dict[str, Any]:
        """The stable plain-data form (format :data:`MAP_FORMAT`), JSON-ready."""
        out: dict[str, Any] = {
            "format": MAP_FORMAT,
            "version": self.version,
            "coordination_cluster": self.coordination_cluster,
            "physical_topic_template": self.physical_topic_template,
            "default_pool": self.default_pool,
            "clusters": {
                c.id: {"bootstrap": c.bootstrap, "state": c.state.value, "weight": c.weight,
                       "security": dict(c.security),
                       **({"previous_state": c.previous_state.value}
                          if c.previous_state is not None else {})}
                for c in self.clusters.values()
            },
            "topics": {
                t.name: {
                    "topic_id": str(t.topic_id),
                    "strategy": t.strategy,
                    "config": dict(t.config),
                    "partitions": [[_segment_to_dict(s) for s in p.segments]
                                   for p in t.partitions],
                    **_fences_to_dict(t),
                }
                for t in self.topics.values()
            },
            "pools": {
                name: [{"node_id": e.node_id, "host": e.host, "port": e.port,
                        "roles": sorted(e.roles)} for e in endpoints]
                for name, endpoints in self.pools.items()
            },
            "routing": [{"pattern": r.pattern, "pool": r.pool,
                         **({"role": r.role} if r.role is not None else {})}
                        for r in self.routing],
        }
        if self.moves:
            out["moves"] = [{"topic": m.topic, "partition": m.partition, "target": m.target,
                             "reason": m.reason} for m in self.moves]
        if self.auto_create != AutoCreatePolicy():  # written only when set (older readers)
            out["auto_create"] = self.auto_create.to_dict()
        if self.acls:  # written only when there are rules (older readers)
            out["acls"] = [rule.to_dict() for rule in self.acls]
        if self.users:  # written only when there are users (older readers)
            out["users"] = {name: u.to_dict() for name, u in sorted(self.users.items())}
        if self.intents:  # written only when the controller applied intents (older readers)
            out["intents"] = dict(sorted(self.intents.items()))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FederationMap:
        """Inverse of :meth:`to_dict`; raises ValueError on a bad or unknown-format document."""
        fmt = data.get("format")
        if fmt != MAP_FORMAT:
            raise ValueError(f"unsupported map format {fmt!r} (this build reads {MAP_FORMAT})")
        try:
            _check_keys("map", data, _MAP_KEYS)
            clusters = {}
            for cid, c in data["clusters"].items():
                _check_keys(f"cluster {cid!r}", c, {"bootstrap", "state", "weight", "security",
                                                    "previous_state"})
                previous = c.get("previous_state")
                clusters[cid] = PhysicalCluster(
                    id=cid, bootstrap=c["bootstrap"], state=ClusterState(c["state"]),
                    weight=int(c.get("weight", 1)), security=dict(c.get("security", {})),
                    previous_state=None if previous is None else ClusterState(previous),
                )
            topics = {}
            for name, t in data["topics"].items():
                _check_keys(f"topic {name!r}", t, {"topic_id", "strategy", "config", "partitions",
                                                   "fences"})
                fences = {int(k): str(v) for k, v in t.get("fences", {}).items()}
                topics[name] = LogicalTopic(
                    name=name,
                    topic_id=uuid.UUID(t["topic_id"]),
                    strategy=t["strategy"],
                    config=dict(t.get("config", {})),
                    partitions=tuple(
                        LogicalPartition(i, tuple(_segment_from_dict(s) for s in segments),
                                         fences.get(i))
                        for i, segments in enumerate(t["partitions"])
                    ),
                )
            pools = {
                name: tuple(ProxyEndpoint(int(e["node_id"]), e["host"], int(e["port"]),
                                          frozenset(e.get("roles", ())))
                            for e in endpoints)
                for name, endpoints in data.get("pools", {}).items()
            }
            return cls(
                version=int(data["version"]),
                clusters=clusters,
                topics=topics,
                coordination_cluster=data.get("coordination_cluster"),
                physical_topic_template=data.get("physical_topic_template", "{topic}.fk"),
                pools=pools,
                routing=tuple(RoutingRule(r["pattern"], r["pool"], r.get("role"))
                              for r in data.get("routing", ())),
                default_pool=data.get("default_pool", DEFAULT_POOL),
                moves=tuple(Move(m["topic"], int(m["partition"]), m.get("target"),
                                 m.get("reason", "rebalance"))
                            for m in data.get("moves", ())),
                auto_create=AutoCreatePolicy.from_dict(data.get("auto_create", {})),
                acls=tuple(AclRule.from_dict(r, f"acls[{i}]")
                           for i, r in enumerate(data.get("acls", ()))),
                users={name: UserCredentials.from_dict(u, f"user {name!r}")
                       for name, u in data.get("users", {}).items()},
                intents={str(k): int(v) for k, v in data.get("intents", {}).items()},
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed map document: {type(e).__name__}: {e}") from None


_MAP_KEYS = frozenset({"format", "version", "coordination_cluster", "physical_topic_template",
                       "default_pool", "clusters", "topics", "pools", "routing", "moves", "acls",
                       "auto_create", "users", "intents"})
_SEGMENT_KEYS = frozenset({"cluster", "topic", "partition", "logical_start", "physical_start",
                           "sealed_end"})


def _check_keys(where: str, data: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = set(data) - set(allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")


def _fences_to_dict(t: LogicalTopic) -> dict[str, Any]:
    fences = {str(p.index): p.fence for p in t.partitions if p.fence is not None}
    return {"fences": fences} if fences else {}


def _segment_to_dict(s: Segment) -> dict[str, Any]:
    return {"cluster": s.cluster, "topic": s.topic, "partition": s.partition,
            "logical_start": s.logical_start, "physical_start": s.physical_start,
            "sealed_end": s.sealed_end}


def _segment_from_dict(d: Mapping[str, Any]) -> Segment:
    if not d.keys() <= _SEGMENT_KEYS:
        _check_keys("segment", d, _SEGMENT_KEYS)
    end = d.get("sealed_end")
    return Segment(d["cluster"], d["topic"], int(d["partition"]), int(d["logical_start"]),
                   int(d["physical_start"]), None if end is None else int(end))


# -- security: principals and authorization decisions (pure data) ----------------------------

#: The mechanism passed to ``fedkafka_authenticate`` for a connection that did no SASL.
NO_MECHANISM = ""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated identity, printed Kafka-style as ``User:alice``."""

    name: str
    type: str = "User"

    def __str__(self) -> str:
        return f"{self.type}:{self.name}"


#: Kafka's principal for unauthenticated connections.
ANONYMOUS = Principal("ANONYMOUS")


class AuthDecision(StrEnum):
    """An authorizer's answer; ``None`` from a hook means "not mine to decide"."""

    ALLOW = "allow"
    DENY = "deny"


class Operation(StrEnum):
    """Kafka ACL operations (a ``str``: plugins may compare with plain strings)."""

    READ = "Read"
    WRITE = "Write"
    CREATE = "Create"
    DELETE = "Delete"
    ALTER = "Alter"
    DESCRIBE = "Describe"
    CLUSTER_ACTION = "ClusterAction"
    DESCRIBE_CONFIGS = "DescribeConfigs"
    ALTER_CONFIGS = "AlterConfigs"
    IDEMPOTENT_WRITE = "IdempotentWrite"


class ResourceType(StrEnum):
    """Kafka ACL resource types; topic and group names are logical names."""

    TOPIC = "Topic"
    GROUP = "Group"
    CLUSTER = "Cluster"
    TRANSACTIONAL_ID = "TransactionalId"


# -- access control lists (kept in the map, applied by the built-in fedkafka_builtin.acl) ---

#: The name of the one Cluster resource, as Kafka names it.
CLUSTER_RESOURCE = "kafka-cluster"
#: The ACL operation that matches every operation.
ACL_ALL = "All"
#: A LITERAL resource name that matches every name, and the principal that matches everyone.
ACL_WILDCARD = "*"
ACL_EVERYONE = "User:*"
LITERAL, PREFIXED = "LITERAL", "PREFIXED"
ALLOW, DENY = "ALLOW", "DENY"

#: The operations an ACL may name on each resource type (Kafka's), besides ``All``.
ACL_OPERATIONS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    ResourceType.TOPIC: (Operation.READ, Operation.WRITE, Operation.CREATE, Operation.DELETE,
                         Operation.ALTER, Operation.DESCRIBE, Operation.DESCRIBE_CONFIGS,
                         Operation.ALTER_CONFIGS),
    ResourceType.GROUP: (Operation.READ, Operation.DESCRIBE, Operation.DELETE,
                         Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS),
    ResourceType.CLUSTER: (Operation.CREATE, Operation.CLUSTER_ACTION,
                           Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS,
                           Operation.IDEMPOTENT_WRITE, Operation.ALTER, Operation.DESCRIBE),
    ResourceType.TRANSACTIONAL_ID: (Operation.DESCRIBE, Operation.WRITE),
})


@dataclass(frozen=True, slots=True)
class AclRule:
    """One access control entry, as Kafka's (KIP-11, KIP-290).

    ``permission`` (ALLOW or DENY) for ``principal`` (``User:alice``; ``User:*`` is
    everyone) to do ``operation`` (or ``All``) on the resources of ``resource_type`` whose
    name is ``resource_name`` (``*``: every name) or, with ``pattern_type`` PREFIXED,
    starts with it. Topic and group names are logical names; the cluster is
    ``kafka-cluster``. Hosts are not part of a rule: every rule holds from any host.
    """

    principal: str
    resource_type: str
    resource_name: str
    operation: str
    permission: str = ALLOW
    pattern_type: str = LITERAL

    def validate(self) -> None:
        """Raise ValueError naming the bad field and what it may be."""
        kind, sep, name = self.principal.partition(":")
        if not sep or not kind or not name:
            raise ValueError(f"ACL principal {self.principal!r} must be TYPE:NAME, e.g. "
                             f"User:alice ({ACL_EVERYONE} for everyone)")
        if self.resource_type not in ACL_OPERATIONS:
            raise ValueError(f"ACL resource_type {self.resource_type!r} must be one of "
                             f"{', '.join(ACL_OPERATIONS)}")
        valid = (*ACL_OPERATIONS[self.resource_type], ACL_ALL)
        if self.operation not in valid:
            raise ValueError(f"ACL operation {self.operation!r} is not an operation on "
                             f"{self.resource_type}; valid: {', '.join(valid)}")
        if self.permission not in (ALLOW, DENY):
            raise ValueError(f"ACL permission {self.permission!r} must be {ALLOW} or {DENY}")
        if self.pattern_type not in (LITERAL, PREFIXED):
            raise ValueError(f"ACL pattern_type {self.pattern_type!r} must be {LITERAL} or "
                             f"{PREFIXED}")
        if not self.resource_name:
            raise ValueError("ACL resource_name must not be empty")
        if self.pattern_type == PREFIXED and self.resource_name == ACL_WILDCARD:
            raise ValueError(f"ACL resource_name {ACL_WILDCARD!r} with {PREFIXED}: use "
                             f"{LITERAL} {ACL_WILDCARD!r} for every name")
        if self.resource_type == ResourceType.CLUSTER and (
                self.resource_name != CLUSTER_RESOURCE or self.pattern_type != LITERAL):
            raise ValueError(f"ACL resource_name of the Cluster must be {CLUSTER_RESOURCE!r} "
                             f"({LITERAL})")

    def matches_name(self, resource_name: str) -> bool:
        if self.pattern_type == PREFIXED:
            return resource_name.startswith(self.resource_name)
        return self.resource_name in (resource_name, ACL_WILDCARD)

    def __str__(self) -> str:
        pattern = f" ({PREFIXED.lower()})" if self.pattern_type == PREFIXED else ""
        return (f"{self.permission} {self.principal} {self.operation} on "
                f"{self.resource_type}:{self.resource_name}{pattern}")

    def to_dict(self) -> dict[str, str]:
        return {"principal": self.principal, "resource_type": self.resource_type,
                "resource_name": self.resource_name, "operation": self.operation,
                "permission": self.permission, "pattern_type": self.pattern_type}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "acl") -> AclRule:
        _check_keys(where, data, {"principal", "resource_type", "resource_name", "operation",
                                  "permission", "pattern_type"})
        return cls(principal=str(data["principal"]),
                   resource_type=str(data["resource_type"]),
                   resource_name=str(data["resource_name"]),
                   operation=str(data["operation"]),
                   permission=str(data.get("permission", ALLOW)),
                   pattern_type=str(data.get("pattern_type", LITERAL)))
