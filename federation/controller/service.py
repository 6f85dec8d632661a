"""The controller: one active per federation, the others standing by.

The active controller, every ``health_interval`` seconds:

1. observes each physical cluster (one Metadata round trip: reachable? which topics,
   with how many partitions?);
2. marks a cluster ``down`` after ``down_after`` failed observations in a row, and
   restores its previous state at the first successful one (observers of
   ``fedkafka_cluster_state_changed`` are told);
3. repairs: creates missing physical and shadow topics, grows short ones;
4. publishes the map when something changed (compare-and-set).

Decisions are pure functions (:func:`decide_states`, :func:`plan_repairs`) tested
without sockets; :class:`Controller` does the I/O around them. Leadership comes from
:func:`federation.store.election.elect_leader` (ZooKeeper: ephemeral sequential nodes;
file backend: an flock).

Run it with ``fedkafka controller --config FILE`` or ``python -m federation.controller.service
--config FILE``; the config is described in :func:`load_config`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from federation.clusters import admin
from federation.clusters.offsets import list_offsets
from federation.clusters.upstream import ClusterClient, UpstreamError
from federation.controller import intents, rolls
from federation.core.errors import ConfigError, FedKafkaError
from federation.core.model import ClusterState, FederationMap, Move, PhysicalCluster
from federation.plugin import PluginError, Plugins, get_plugins
from federation.store import mapstore
from federation.store.election import LeaderElection, elect_leader
from federation.store.mapstore import MetadataBackend

__all__ = [
    "ClusterObservation",
    "Controller",
    "ControllerConfig",
    "Repair",
    "StateChange",
    "apply_state_changes",
    "decide_states",
    "load_config",
    "main",
    "plan_loss_rolls",
    "plan_repairs",
]

log = structlog.get_logger(__name__)

MEMBER_KIND = "controller"


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """``fedkafka controller`` settings (see :func:`load_config`)."""

    backend: str
    backend_options: Mapping[str, Any]
    member_id: str
    metrics_port: int | None = 0  #: None = no metrics endpoint; 0 = any free port
    metrics_host: str = "127.0.0.1"
    health_interval: float = 2.0
    down_after: int = 3
    request_timeout: float = 5.0
    repair: bool = True
    #: Seconds a cluster may be unreachable before its active segments are rolled onto
    #: healthy clusters (failover); well under a producer's default delivery timeout.
    failover_after: float = 10.0
    #: Seconds to wait for every live proxy to report a fence before sealing anyway.
    fence_timeout: float = 5.0
    #: host:port of the intent endpoint (port 0: any free port; published in the member
    #: record); None: no intent endpoint
    intent_listen: str | None = "127.0.0.1:0"
    #: identity → token file of the intent endpoint (federation.controller.intents.load_tokens);
    #: default ``$FEDKAFKA_INTENT_TOKENS_FILE``; without tokens the endpoint is off
    intent_tokens_file: str | None = None


_FIELDS = {"metadata", "metrics_port", "metrics_host", "health_interval", "down_after",
           "request_timeout", "member_id", "repair", "failover_after", "fence_timeout",
           "intent_listen", "intent_tokens_file", "_comment"}  # "_comment" is ignored


def _default_member_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def load_config(path: str | os.PathLike[str]) -> ControllerConfig:
    """Read a controller config file::

        {"metadata": {"backend": "zookeeper", "hosts": "127.0.0.1:2181", "root": "/fedkafka"},
         "metrics_port": 9308, "health_interval": 2.0, "member_id": "ctl-1"}

    ``metadata`` is ``{"backend": NAME, ...options}`` (``file`` takes ``path``); the
    other fields are optional: ``metrics_port`` (0 = any free port, null = none),
    ``metrics_host``, ``health_interval`` (s), ``down_after`` (failed observations before
    a cluster is down), ``request_timeout`` (s), ``member_id`` (default host-pid),
    ``repair`` (create missing physical topics, default true), ``intent_listen``
    (host:port of the intent endpoint, default 127.0.0.1:0; null: none),
    ``intent_tokens_file`` (identity → token JSON; default ``$FEDKAFKA_INTENT_TOKENS_FILE``).

    :raises ConfigError: naming the file, the field and the fix.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"controller config {p} does not exist; pass --config FILE") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"controller config {p} is not readable JSON ({e}); fix the file"
                          ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the config must be a JSON object like "
                          '{"metadata": {"backend": "file", "path": "map.json"}}')
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ConfigError(f"{p}: unknown field(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(_FIELDS))}")

    def bad(name: str, want: str) -> ConfigError:
        return ConfigError(f"{p}: field {name!r} must be {want}, got {data.get(name)!r}")

    metadata = data.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("backend"), str):
        raise ConfigError(f"{p}: field 'metadata' must be an object with a 'backend' name, "
                          'e.g. {"backend": "zookeeper", "hosts": "127.0.0.1:2181"} or '
                          '{"backend": "file", "path": "/var/lib/fedkafka/map.json"}')
    backends = get_plugins().backends
    if metadata["backend"] not in backends:
        raise ConfigError(f"{p}: field 'metadata.backend' is {metadata['backend']!r}; "
                          f"valid: {', '.join(sorted(backends))}")
    options = {k: v for k, v in metadata.items() if k != "backend"}
    if metadata["backend"] == "file" and not isinstance(options.get("path"), str):
        raise ConfigError(f"{p}: field 'metadata.path' (the map file) is required for the "
                          "file backend")

    port = data.get("metrics_port", 0)
    if port is not None and (not isinstance(port, int) or isinstance(port, bool)
                             or not 0 <= port < 65536):
        raise bad("metrics_port", "an integer 0..65535 (0 = any free port) or null (none)")
    interval = data.get("health_interval", 2.0)
    if not isinstance(interval, int | float) or isinstance(interval, bool) or interval <= 0:
        raise bad("health_interval", "a number of seconds > 0")
    down_after = data.get("down_after", 3)
    if not isinstance(down_after, int) or isinstance(down_after, bool) or down_after < 1:
        raise bad("down_after", "an integer >= 1")
    timeout = data.get("request_timeout", 5.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise bad("request_timeout", "a number of seconds > 0")
    member_id = data.get("member_id") or _default_member_id()
    if not isinstance(member_id, str) or "/" in member_id:
        raise bad("member_id", "a string without '/'")
    host = data.get("metrics_host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise bad("metrics_host", "an address to bind, e.g. '127.0.0.1' or '0.0.0.0'")
    repair = data.get("repair", True)
    if not isinstance(repair, bool):
        raise bad("repair", "true or false")
    seconds = {}
    for name, default in (("failover_after", 10.0), ("fence_timeout", 5.0)):
        value = data.get(name, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise bad(name, "a number of seconds > 0")
        seconds[name] = float(value)
    listen = data.get("intent_listen", "127.0.0.1:0")
    if listen is not None and (not isinstance(listen, str)
                               or not re.fullmatch(r"[\w.\-\[\]:]+:\d{1,5}", listen)):
        raise bad("intent_listen", "host:port (port 0: any free port) or null (no endpoint)")
    tokens = data.get("intent_tokens_file", os.environ.get(intents.TOKENS_FILE_ENV))
    if tokens is not None and not isinstance(tokens, str):
        raise bad("intent_tokens_file", "the path of a JSON file of identity → token")
    return ControllerConfig(backend=metadata["backend"], backend_options=options,
                            member_id=member_id, metrics_port=port, metrics_host=host,
                            health_interval=float(interval), down_after=down_after,
                            request_timeout=float(timeout), repair=repair,
                            intent_listen=listen, intent_tokens_file=tokens, **seconds)


# -- pure decisions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterObservation:
    """What one health check saw of one cluster."""

    cluster: str
    reachable: bool
    topics: Mapping[str, int] | None = None  #: topic → partition count, when reachable
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StateChange:
    cluster: str
    old: ClusterState
    new: ClusterState


@dataclass(slots=True)
class HealthMemory:
    """What the controller remembers between rounds (lost on failover: see the ADR)."""

    failures: dict[str, int] = field(default_factory=dict)  #: consecutive failed checks
    before_down: dict[str, ClusterState] = field(default_factory=dict)  #: state to restore
    #: cluster → monotonic time of the first failed check in the current run of failures
    unreachable_since: dict[str, float] = field(default_factory=dict)
    #: physical partition → its high watermark when last seen (the failover seal's floor)
    last_end: dict[rolls.PhysKey, int] = field(default_factory=dict)


def decide_states(fmap: FederationMap, observations: Sequence[ClusterObservation],
                  memory: HealthMemory, down_after: int = 3,
                  now: float | None = None) -> list[StateChange]:
    """Which clusters change state after this round; updates ``memory``.

    - a cluster that failed ``down_after`` checks in a row goes ``down`` (from any state
      but ``down`` and ``retired``), and its state is remembered;
    - a ``down`` cluster that answers goes back to the remembered state, or ``active``
      when none is remembered (a new controller after failover).
    """
    changes = []
    for obs in observations:
        cluster = fmap.clusters.get(obs.cluster)
        if cluster is None:
            continue
        if obs.reachable:
            memory.failures.pop(obs.cluster, None)
            memory.unreachable_since.pop(obs.cluster, None)
            if cluster.state is ClusterState.DOWN:
                remembered = memory.before_down.pop(obs.cluster, ClusterState.ACTIVE)
                back = cluster.previous_state or remembered
                changes.append(StateChange(obs.cluster, cluster.state, back))
            continue
        count = memory.failures.get(obs.cluster, 0) + 1
        memory.failures[obs.cluster] = count
        memory.unreachable_since.setdefault(obs.cluster,
                                            time.monotonic() if now is None else now)
        if count >= down_after and cluster.state not in (ClusterState.DOWN,
                                                         ClusterState.RETIRED):
            memory.before_down[obs.cluster] = cluster.state
            changes.append(StateChange(obs.cluster, cluster.state, ClusterState.DOWN))
    return changes


def apply_state_changes(fmap: FederationMap, changes: Sequence[StateChange]
                        ) -> tuple[FederationMap | None, list[StateChange]]:
    """``fmap`` with those changes whose ``old`` state still holds (for compare-and-set).

    :returns: the new map (None if nothing applies) and the changes applied.
    """
    applied = []
    for change in changes:
        cluster = fmap.clusters.get(change.cluster)
        if cluster is not None and cluster.state is change.old:
            previous = change.old if change.new is ClusterState.DOWN else None
            fmap = fmap.with_cluster(dataclasses.replace(cluster, state=change.new,
                                                         previous_state=previous))
            applied.append(change)
    return (fmap if applied else None), applied


@dataclass(frozen=True, slots=True)
class Repair:
    """A physical topic to create (``existing == 0``) or to grow on one cluster."""

    cluster: str
    topic: str
    partitions: int
    existing: int = 0
    shadow: bool = False


def plan_repairs(fmap: FederationMap, observations: Sequence[ClusterObservation]
                 ) -> list[Repair]:
    """Physical and shadow topics the map needs that the reachable clusters lack."""
    needed: dict[str, dict[str, int]] = {}
    shadows: set[tuple[str, str]] = set()
    for topic in fmap.topics.values():
        for cluster_id, wanted in admin.physical_needs(fmap, topic).items():
            per = needed.setdefault(cluster_id, {})
            for name, count in wanted.items():
                per[name] = max(per.get(name, 0), count)
        if fmap.coordination_cluster is not None:
            shadows.add((fmap.coordination_cluster, topic.name))
    repairs = []
    for obs in observations:
        if not obs.reachable or obs.topics is None:
            continue
        for name, count in sorted(needed.get(obs.cluster, {}).items()):
            have = obs.topics.get(name, 0)
            if have < count:
                repairs.append(Repair(obs.cluster, name, count, have,
                                      (obs.cluster, name) in shadows))
    return repairs


def plan_loss_rolls(fmap: FederationMap, lost: Iterable[rolls.PhysKey]) -> list[Move]:
    """Rolls for active segments whose physical partition lost its records (deleted and
    recreated behind the controller's back): sealed at the end the controller saw, their
    logical offsets are never handed out twice; the next segment goes to the writable
    cluster (other than the lost one) holding the fewest active segments."""
    keys = set(lost)
    load: dict[str, int] = {c.id: 0 for c in fmap.writable_clusters()}
    for topic in fmap.topics.values():
        for lp in topic.partitions:
            if lp.active.cluster in load:
                load[lp.active.cluster] += 1
    queued = {(m.topic, m.partition) for m in fmap.moves}
    moves = []
    for topic in fmap.topics.values():
        for lp in topic.partitions:
            if (rolls.phys_key(lp.active) not in keys or lp.fence is not None
                    or (topic.name, lp.index) in queued):
                continue
            targets = sorted((n, c) for c, n in load.items() if c != lp.active.cluster)
            if not targets:
                continue  # nowhere to roll to: reported only
            target = targets[0][1]
            load[target] += 1
            moves.append(Move(topic.name, lp.index, target, "lost"))
    return moves


# -- the process -----------------------------------------------------------------------------


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.map_version = Gauge("fedkafka_controller_map_version",
                                 "Version of the map this controller last saw or published.",
                                 registry=self.registry)
        self.publish_seconds = Histogram("fedkafka_controller_publish_seconds",
                                         "Time to publish a map (compare-and-set included).",
                                         registry=self.registry)
        self.cluster_up = Gauge("fedkafka_controller_cluster_up",
                                "1 if the physical cluster answered the last health check.",
                                ["cluster"], registry=self.registry)
        self.is_leader = Gauge("fedkafka_controller_is_leader",
                               "1 while this controller is the active one.",
                               registry=self.registry)
        self.rolls = Counter("fedkafka_controller_rolls_total",
                             "Partitions rolled onto another cluster, by reason.", ["reason"],
                             registry=self.registry)
        self.roll_seconds = Histogram("fedkafka_controller_roll_seconds",
                                      "Time from fence to seal of one batch of rolls.",
                                      registry=self.registry)
        self.rounds = Counter("fedkafka_controller_rounds_total",
                              "Health, convergence and roll rounds completed while leading.",
                              registry=self.registry)
        self.repairs = Counter("fedkafka_controller_repairs_total",
                               "Physical or shadow topics created or grown to match the map.",
                               ["kind"], registry=self.registry)
        self.lost = Gauge("fedkafka_controller_partitions_lost",
                          "Physical partitions whose records went missing behind the "
                          "controller's back (end offset went backwards; reported, not "
                          "repairable).", registry=self.registry)


class Controller:
    """The controller loop; :meth:`run` until :meth:`stop`.

    :param backend: the metadata store (the controller does not close it).
    :param connect: opens an admin client on a physical cluster (tests inject fakes).
    """

    def __init__(self, config: ControllerConfig, backend: MetadataBackend, *,
                 plugins: Plugins | None = None, connect: admin.Connect | None = None) -> None:
        self.config = config
        self.backend = backend
        self.plugins = plugins or get_plugins()
        self.connect: admin.Connect = connect or (
            lambda cluster: admin.aiokafka_admin(cluster, timeout=config.request_timeout))
        self.memory = HealthMemory()
        self.metrics = _Metrics()
        self.metrics_address: tuple[str, int] | None = None
        self.election: LeaderElection | None = None
        self._stopping = asyncio.Event()
        self._leading = False
        self._http: Any = None
        self._started_at = time.time()
        self._clients: dict[str, ClusterClient] = {}
        self._reasons: dict[tuple[str, int], str] = {}  #: fenced partition → why
        self.intents: intents.IntentServer | None = None
        #: the last rounds' convergence report (member record "convergence")
        self.convergence: dict[str, Any] | None = None
        self._repaired: list[dict[str, Any]] = []
        self._lost: dict[str, dict[str, Any]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def _start_metrics(self) -> None:
        if self.config.metrics_port is None:
            return
        try:
            server, _thread = start_http_server(self.config.metrics_port,
                                                addr=self.config.metrics_host,
                                                registry=self.metrics.registry)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {self.config.metrics_host}:"
                              f"{self.config.metrics_port} ({e.strerror}); change "
                              "'metrics_port' (0 = any free port)") from None
        self._http = server
        self.metrics_address = (self.config.metrics_host, int(server.server_address[1]))

    def _member_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                                "leader": self._leading, "started_at": self._started_at}
        if self.metrics_address is not None:
            data["metrics"] = f"{self.metrics_address[0]}:{self.metrics_address[1]}"
        if self.intents is not None:
            data["intents"] = self.intents.address
        if self.convergence is not None:
            data["convergence"] = self.convergence
        return data

    async def _start_intents(self) -> None:
        """The intent endpoint (federation.controller.intents), if configured with tokens."""
        if self.config.intent_listen is None:
            return
        if self.config.intent_tokens_file is None:
            log.warning("no intent tokens file (intent_tokens_file or $"
                        f"{intents.TOKENS_FILE_ENV}): the admin CLI and proxies cannot submit "
                        "changes to this controller")
            return
        tokens = intents.load_tokens(self.config.intent_tokens_file)
        host, _, port = self.config.intent_listen.rpartition(":")
        server = intents.IntentServer(
            self.backend, tokens, self._still_leading, plugins=self.plugins,
            host=host.strip("[]"), port=int(port),
            leader_id=lambda: self.election.leader() if self.election else None)
        await server.start()
        self.intents = server

    async def _register(self) -> None:
        try:
            await asyncio.to_thread(self.backend.register_member, MEMBER_KIND,
                                    self.config.member_id, self._member_data())
        except FedKafkaError as e:
            log.warning("could not register as a member", error=str(e))

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Serve until :meth:`stop`: contend for leadership, act while leading."""
        self._start_metrics()
        try:
            await self._start_intents()
            await self._register()
            self.election = await asyncio.to_thread(elect_leader, self.backend,
                                                    self.config.member_id)
            log.info("controller started", member_id=self.config.member_id,
                     metrics=self.metrics_address)
            while not self._stopping.is_set():
                leading = self.election.is_leader
                if leading != self._leading:
                    self._leading = leading
                    self.metrics.is_leader.set(1 if leading else 0)
                    log.info("leadership", member_id=self.config.member_id, is_leader=leading)
                    if leading:
                        self.memory = HealthMemory()  # start afresh as the new leader
                    await self._register()
                if leading:
                    try:
                        await self.round()
                    except FedKafkaError as e:
                        log.warning("controller round failed", error=str(e))
                    except Exception:
                        log.exception("controller round failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.config.health_interval)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        if self.intents is not None:
            await self.intents.close()
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        if self.election is not None:
            await asyncio.to_thread(self.election.cancel)
        self._leading = False
        self.metrics.is_leader.set(0)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        log.info("controller stopped", member_id=self.config.member_id)

    # -- one round -------------------------------------------------------------------------

    async def observe(self, cluster: PhysicalCluster) -> ClusterObservation:
        try:
            async with self.connect(cluster) as client:
                topics = await client.topics()
        except admin.AdminError as e:
            return ClusterObservation(cluster.id, False, error=str(e))
        return ClusterObservation(cluster.id, True, topics)

    async def round(self) -> FederationMap | None:
        """One health/repair/publish round; returns the map published, if any."""
        fmap = await asyncio.to_thread(self.backend.load)
        if fmap is None:
            return None
        self.metrics.map_version.set(fmap.version)
        watched = [c for c in fmap.clusters.values() if c.state is not ClusterState.RETIRED]
        observations = list(await asyncio.gather(*(self.observe(c) for c in watched)))
        for obs in observations:
            self.metrics.cluster_up.labels(cluster=obs.cluster).set(1 if obs.reachable else 0)
            if not obs.reachable:
                log.info("cluster not reachable", cluster=obs.cluster, error=obs.error)
        published = None
        changes = decide_states(fmap, observations, self.memory, self.config.down_after)
        if changes:
            published = await self._publish_states(changes)
        reachable = {o.cluster for o in observations if o.reachable}
        lost = len(self._lost)
        await self._observe_ends(published or fmap, reachable)
        if len(self._lost) != lost:
            await self._register()  # the report in the member record
        published = await self._roll_lost(published or fmap) or published
        rolled = await self.roll(published or fmap)
        published = rolled or published
        if self.config.repair and rolled is None:
            # (after a roll the observations predate the targets it grew: next round)
            await self._repair(published or fmap, observations)
        self.metrics.rounds.inc()
        return published

    # -- rolls -----------------------------------------------------------------------------

    def _client(self, cluster: PhysicalCluster) -> ClusterClient:
        client = self._clients.get(cluster.id)
        if client is None or client.cluster.bootstrap != cluster.bootstrap or (
                client.cluster.security != cluster.security):
            if client is not None:
                client.close()
            client = ClusterClient(cluster, client_id=f"fedkafka-controller-"
                                   f"{self.config.member_id}",
                                   request_timeout=self.config.request_timeout)
            self._clients[cluster.id] = client
        return client

    async def _observe_ends(self, fmap: FederationMap, reachable: set[str]) -> None:
        """Remember the high watermark of every active segment on a reachable cluster.

        A failover seals a dead cluster's segments at no less than this: data the
        controller saw committed is never hidden, even if no live proxy acknowledged it.
        """
        wanted: dict[str, list[tuple[str, int]]] = {}
        for topic in fmap.topics.values():
            for lp in topic.partitions:
                seg = lp.active
                if seg.cluster in reachable:
                    wanted.setdefault(seg.cluster, []).append((seg.topic, seg.partition))

        async def one(cid: str, parts: list[tuple[str, int]]) -> None:
            try:
                ends = await list_offsets(self._client(fmap.clusters[cid]), parts,
                                          timeout=self.config.request_timeout)
            except UpstreamError as e:
                log.debug("high watermarks not read", cluster=cid, error=str(e))
                return
            for (ptopic, ppart), end in ends.items():
                key = (cid, ptopic, ppart)
                before = self.memory.last_end.get(key, -1)
                if 0 <= end < before:
                    self._report_loss(key, before, end)
                self.memory.last_end[key] = max(end, before)

        await asyncio.gather(*(one(c, p) for c, p in wanted.items()))

    def _still_leading(self) -> bool:
        return bool(self.election and self.election.is_leader)

    async def roll(self, fmap: FederationMap) -> FederationMap | None:
        """Fence, then seal and reopen, every partition that must move; None if none did.

        Moves come from clusters that must not take writes (failover after
        ``failover_after`` seconds unreachable; read-only and draining clusters) and from
        requests in the map (``fedkafka rebalance``). Fences left by a controller that
        failed mid-roll are completed too.
        """
        now = time.monotonic()
        unreachable = {c: now - t for c, t in self.memory.unreachable_since.items()}
        planned = rolls.plan_evacuations(fmap, unreachable, self.config.failover_after)
        if not planned and not fmap.moves and not rolls.fenced_partitions(fmap):
            return None
        t0 = time.perf_counter()
        if planned or fmap.moves:
            outcome: list[Any] = []

            def fence(current: FederationMap | None) -> FederationMap | None:
                if current is None or not self._still_leading():
                    return None
                moves = rolls.plan_evacuations(current, unreachable,
                                               self.config.failover_after)
                new, fenced, refused = rolls.apply_fences(current, [*moves, *current.moves])
                outcome[:] = [fenced, refused]
                return new if (fenced or refused) else None

            fenced_map = await asyncio.to_thread(mapstore.update, self.backend, fence)
            if fenced_map is not None:
                fenced, refused = outcome
                for m, why in refused:
                    log.warning("move refused", topic=m.topic, partition=m.partition,
                                target=m.target, reason=why)
                for m in fenced:
                    self._reasons[(m.topic, m.partition)] = m.reason
                log.info("partitions fenced", count=len(fenced), version=fenced_map.version,
                         moves=[f"{m.topic}[{m.partition}]->{m.target} ({m.reason})"
                                for m in fenced[:20]])
                self.plugins.notify_map_published(fmap, fenced_map)
                fmap = fenced_map
        pending = rolls.fenced_partitions(fmap)
        if not pending:
            return None
        ceilings = await self._await_fence_reports(fmap.version)
        seals = await self._plan_seals(fmap, pending, ceilings, unreachable)
        if not seals:
            return None

        def seal(current: FederationMap | None) -> FederationMap | None:
            if current is None or not self._still_leading():
                return None
            new, done = rolls.apply_seals(current, seals)
            outcome[:] = [done]
            return new if done else None

        outcome = []
        sealed = await asyncio.to_thread(mapstore.update, self.backend, seal)
        if sealed is None:
            return None
        elapsed = time.perf_counter() - t0
        self.metrics.roll_seconds.observe(elapsed)
        for s in outcome[0]:
            reason = self._reasons.pop((s.topic, s.partition), "resumed")
            self.metrics.rolls.labels(reason=reason).inc()
            log.info("partition rolled", topic=s.topic, partition=s.partition,
                     reason=reason, old=f"{s.old.cluster}/{s.old.topic}/{s.old.partition}",
                     sealed_at=s.old.to_logical(max(s.seal_physical, s.old.physical_start)),
                     new=f"{s.target}/{s.target_topic}/{s.target_partition}",
                     version=sealed.version)
        self.metrics.map_version.set(sealed.version)
        self.plugins.notify_map_published(fmap, sealed)
        return sealed

    async def _await_fence_reports(self, version: int) -> dict[rolls.PhysKey, int]:
        """Wait until every live proxy reported a map at least ``version``; their ceilings.

        A proxy's report carries, per fenced physical partition, the end offset of the
        last write it acknowledged; it acknowledges nothing beyond that afterwards.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.fence_timeout
        while True:
            members = await asyncio.to_thread(self.backend.members, "proxy")
            reports = {m: d.get("fence_report") or {} for m, d in members.items()}
            missing = sorted(m for m, r in reports.items() if int(r.get("version", -1)) < version)
            if not missing:
                break
            if loop.time() >= deadline:
                log.warning("proxies did not report the fence in time; sealing anyway",
                            proxies=missing, version=version)
                break
            await asyncio.sleep(0.05)
        ceilings: dict[rolls.PhysKey, int] = {}
        for report in reports.values():
            if int(report.get("version", -1)) < version:
                continue
            for text, end in (report.get("acked") or {}).items():
                key = rolls.parse_phys_key(text)
                ceilings[key] = max(int(end), ceilings.get(key, -1))
        return ceilings

    async def _plan_seals(self, fmap: FederationMap,
                          pending: list[tuple[str, Any]], ceilings: dict[rolls.PhysKey, int],
                          unreachable: dict[str, float]) -> list[rolls.Seal]:
        """Seal points (old side) and fresh physical partitions (target side)."""
        seals: list[rolls.Seal] = []
        by_source: dict[str, list[tuple[str, Any]]] = {}
        for name, lp in pending:
            by_source.setdefault(lp.active.cluster, []).append((name, lp))
        ends: dict[rolls.PhysKey, int] = {}
        for cid, items in by_source.items():
            cluster = fmap.clusters[cid]
            if cid in unreachable or cluster.state is ClusterState.DOWN:
                continue
            parts = [(lp.active.topic, lp.active.partition) for _, lp in items]
            try:
                got = await list_offsets(self._client(cluster), parts,
                                         timeout=self.config.request_timeout)
            except UpstreamError as e:
                log.warning("cannot read seal points; retrying next round", cluster=cid,
                            error=str(e))
                for _, lp in items:
                    ends[rolls.phys_key(lp.active)] = -2  # marker: not now
                continue
            for (ptopic, ppart), end in got.items():
                ends[(cid, ptopic, ppart)] = end
        # Fresh physical partitions on each target: never reuse one (a producer id's
        # sequence state on a reused partition would refuse its next writes).
        next_free: dict[tuple[str, str], int] = {}
        wanted: dict[tuple[str, str], int] = {}
        for name, lp in pending:
            old = lp.active
            key = rolls.phys_key(old)
            end = ends.get(key, -1)
            if end == -2:
                continue
            seal_at = max(ceilings.get(key, -1), self.memory.last_end.get(key, -1),
                          old.physical_start, end)
            target = fmap.clusters.get(lp.fence)
            if target is None or not target.writable:
                continue
            ptopic = fmap.physical_topic_name(name)
            slot = (target.id, ptopic)
            if slot not in next_free:
                try:
                    view = await self._client(target).refresh()
                except UpstreamError as e:
                    log.warning("target cluster not reachable", cluster=target.id,
                                error=str(e))
                    next_free[slot] = -1
                    continue
                have = sum(1 for (t, _) in view.partitions if t == ptopic)
                next_free[slot] = max(have, rolls.used_partitions(fmap, target.id, ptopic))
            if next_free[slot] < 0:
                continue
            index = next_free[slot]
            next_free[slot] = index + 1
            wanted[slot] = index + 1
            seals.append(rolls.Seal(name, lp.index, old, seal_at, target.id, ptopic, index, 0))
        ready = await self._grow_targets(fmap, wanted)
        return [s for s in seals if (s.target, s.target_topic) in ready]

    async def _grow_targets(self, fmap: FederationMap, wanted: dict[tuple[str, str], int]
                            ) -> set[tuple[str, str]]:
        """Create or grow the targets' physical topics; the (cluster, topic) now ready."""
        ready = set()
        for (cid, ptopic), count in wanted.items():
            logical = next((t for t in fmap.topics.values()
                            if fmap.physical_topic_name(t.name) == ptopic), None)
            config = None if logical is None else logical.config
            try:
                async with self.connect(fmap.clusters[cid]) as client:
                    existing = await client.topics()
                    if ptopic not in existing:
                        await client.create({ptopic: count}, None, config)
                    elif existing[ptopic] < count:
                        await client.grow(ptopic, count)
                    await admin._await_visible(client, {ptopic: count}, cid)
            except admin.TopicExistsError:
                pass
            except admin.AdminError as e:
                log.warning("cannot prepare roll target", cluster=cid, topic=ptopic,
                            error=str(e))
                continue
            self._client(fmap.clusters[cid]).invalidate()
            ready.add((cid, ptopic))
        return ready

    async def _publish_states(self, changes: list[StateChange]) -> FederationMap | None:
        applied: list[StateChange] = []

        def change(current: FederationMap | None) -> FederationMap | None:
            if current is None or not (self.election and self.election.is_leader):
                return None  # lost leadership meanwhile: leave it to the new leader
            new, done = apply_state_changes(current, changes)
            applied[:] = done
            return new

        t0 = time.perf_counter()
        old = await asyncio.to_thread(self.backend.load)
        new = await asyncio.to_thread(mapstore.update, self.backend, change)
        if new is None:
            return None
        self.metrics.publish_seconds.observe(time.perf_counter() - t0)
        self.metrics.map_version.set(new.version)
        for c in applied:
            log.info("cluster state changed", cluster=c.cluster, old=c.old.value,
                     new=c.new.value, version=new.version)
            self.plugins.notify_cluster_state_changed(c.cluster, c.old, c.new)
        self.plugins.notify_map_published(old, new)
        return new

    def _report_loss(self, key: rolls.PhysKey, before: int, end: int) -> None:
        text = f"{key[0]}/{key[1]}/{key[2]}"
        if text not in self._lost:
            log.error("physical partition lost records behind the controller's back (deleted "
                      "and recreated?): its end offset went backwards; the records are gone "
                      "and logical offsets past the end are not served",
                      partition=text, seen_end=before, now_end=end)
        self._lost[text] = {"partition": text, "seen_end": before, "end": end,
                            "at": time.time()}
        self.metrics.lost.set(len(self._lost))
        self._update_convergence()

    async def _roll_lost(self, fmap: FederationMap) -> FederationMap | None:
        """Ask for rolls of the active segments that lost their records (plan_loss_rolls)."""
        keys = {rolls.parse_phys_key(k) for k in self._lost}
        if not plan_loss_rolls(fmap, keys):
            return None
        asked: list[Move] = []

        def change(current: FederationMap | None) -> FederationMap | None:
            if current is None or not self._still_leading():
                return None
            asked[:] = plan_loss_rolls(current, keys)
            if not asked:
                return None
            return dataclasses.replace(current, moves=(*current.moves, *asked))

        new = await asyncio.to_thread(mapstore.update, self.backend, change)
        if new is not None:
            log.warning("rolling partitions that lost their records, so that their logical "
                        "offsets are not handed out again",
                        moves=[f"{m.topic}[{m.partition}]->{m.target}" for m in asked])
            self.plugins.notify_map_published(fmap, new)
        return new

    def _update_convergence(self) -> None:
        self.convergence = {"repaired": self._repaired[-20:],
                            "lost": sorted(self._lost.values(),
                                           key=lambda x: x["partition"])[:50]}

    async def _repair(self, fmap: FederationMap, observations: list[ClusterObservation]
                      ) -> None:
        """Converge the clusters to the map: create missing physical and shadow topics,
        grow short ones. A physical topic deleted behind the controller's back comes back
        empty: its records are lost (reported by :meth:`_report_loss` once its end offset
        is seen going backwards), but its partitions serve again."""
        repairs = plan_repairs(fmap, observations)
        if not repairs:
            return
        for r in repairs:
            if r.existing == 0 and not r.shadow:  # gone: whatever it held is lost
                for key, end in list(self.memory.last_end.items()):
                    if key[0] == r.cluster and key[1] == r.topic and end > 0:
                        self._report_loss(key, end, 0)  # last_end kept: the seal point
        for r in repairs:
            cluster = fmap.clusters[r.cluster]
            topic = fmap.topics.get(r.topic)
            config = None if r.shadow or topic is None else topic.config
            try:
                async with self.connect(cluster) as client:
                    if r.existing == 0:
                        await client.create({r.topic: r.partitions}, None, config)
                    else:
                        await client.grow(r.topic, r.partitions)
            except admin.TopicExistsError:
                continue  # created meanwhile (e.g. by an admin command)
            except admin.AdminError as e:
                log.warning("repair failed", cluster=r.cluster, topic=r.topic, error=str(e))
                continue
            kind = ("shadow" if r.shadow else "data") + ("_created" if r.existing == 0
                                                          else "_grown")
            self.metrics.repairs.labels(kind=kind).inc()
            self._repaired.append({"cluster": r.cluster, "topic": r.topic, "kind": kind,
                                   "partitions": r.partitions, "was": r.existing,
                                   "at": time.time()})
            del self._repaired[:-20]
            log.warning("repaired physical topic (missing or short)", cluster=r.cluster,
                        topic=r.topic, partitions=r.partitions, was=r.existing,
                        shadow=r.shadow)
        self._update_convergence()
        await self._register()


async def serve(config: ControllerConfig) -> None:
    """Build the backend, run a :class:`Controller` until SIGTERM/SIGINT, clean up."""
    plugins = get_plugins()
    try:
        backend = await asyncio.to_thread(plugins.backend, config.backend,
                                          **dict(config.backend_options))
    except PluginError as e:
        raise ConfigError(str(e)) from None
    except TypeError as e:
        raise ConfigError(f"metadata backend {config.backend!r} rejects its options: {e}"
                          ) from None
    controller = Controller(config, backend, plugins=plugins)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.stop)
    try:
        await controller.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await asyncio.to_thread(backend.close)


def run_from_file(path: str | os.PathLike[str]) -> None:
    """``fedkafka controller --config FILE``."""
    asyncio.run(serve(load_config(path)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m federation.controller.service",
                                     description="Run a fedkafka controller.")
    parser.add_argument("--config", required=True, help="controller config JSON file")
    args = parser.parse_args(argv)
    try:
        run_from_file(args.config)
    except FedKafkaError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
