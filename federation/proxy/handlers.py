"""The proxy core: one client connection's requests, split over physical brokers and merged.

Sans-IO (docs/adr/0024-sans-io-proxy-core.md): :meth:`Session.receive` takes one request
frame and returns a generator that yields commands (:mod:`federation.proxy.core`: send
this upstream, wait for these answers until then, look up a leader, ...) and returns what
to do with the client (a :class:`~federation.proxy.core.Reply`, a
:class:`~federation.proxy.core.Close`, or None). The driver (the asyncio server, or the
unit tests' scripted one) executes the commands and sends their events back.

Each request runs in two phases so that a client's pipelined requests reach the physical
brokers in the order the client sent them:

1. up to a :class:`~federation.proxy.core.Detach` (run serially per client connection):
   resolve logical partitions to segments, find leaders, and *write* every sub-request
   upstream;
2. after it (run concurrently with the next requests): collect the answers and build the
   client's response in logical terms.

A handler without a ``Detach`` runs entirely in phase 1.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from types import GeneratorType
from typing import TYPE_CHECKING, Any

from federation.clusters.upstream import ClusterClient, UpstreamError
from federation.controller import rolls
from federation.controller.rolls import PhysKey, phys_key
from federation.core.model import (
    NO_MECHANISM,
    ROLE_CONSUMER,
    Operation,
    Principal,
    ResourceType,
)
from federation.protocol import codec, fetch_wire, records
from federation.protocol.errors import ErrorCode, error_response, to_kio
from federation.protocol.versions import API_NAMES, ApiKey
from federation.proxy import (
    admin_apis,
    admin_handlers,
    apis,
    authz,
    configs,
    log_dirs,
    routing,
)
from federation.proxy.core import (
    DETACH,
    Close,
    Coordinator,
    CreateTopic,
    Ends,
    Gather,
    Handler,
    Offload,
    Pending,
    Raw,
    Refresh,
    Reply,
    SealedProducers,
    Send,
    Spawn,
    Step,
    WaitAny,
    leader,
    wait,
)
from federation.proxy.limits import clamp_timeouts
from federation.proxy.routing import RouteError, build, replace, resp_module
from federation.security.sasl import SaslAuthenticator

if TYPE_CHECKING:
    from federation.proxy.server import ProxyState

log = logging.getLogger("fedkafka.proxy")

RETRIABLE_LEADER_ERRORS = {
    ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.LEADER_NOT_AVAILABLE,
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, ErrorCode.NETWORK_EXCEPTION,
    ErrorCode.REQUEST_TIMED_OUT,
}
GROUP_KEY_FIELD = {
    ApiKey.JOIN_GROUP: "group_id", ApiKey.SYNC_GROUP: "group_id",
    ApiKey.HEARTBEAT: "group_id", ApiKey.LEAVE_GROUP: "group_id",
    ApiKey.OFFSET_COMMIT: "group_id",
}

#: Authorization verdicts a connection remembers (per map version; keyed by client input).
MAX_VERDICTS = 10_000


@dataclass(slots=True)
class _Part:
    """One logical partition of a request, routed."""

    topic: str  # logical name
    partition: int  # logical index
    seg: Any  # Segment
    item: Any  # the request's partition entity
    records: int = 0  # records in a Produce partition's batches
    producer_id: int = -1  # an idempotent batch's producer, when checked after a roll


@dataclass(slots=True)
class _Group:
    cluster: ClusterClient
    node: int
    parts: list[_Part] = field(default_factory=list)


def _steps(out: Any) -> Step:
    """A handler's result as a step: handlers that never wait return their answer."""
    if type(out) is GeneratorType:
        return (yield from out)
    return out


class Session:
    """The protocol state of one client connection (sans-IO: see the module's doc).

    :param clock: the driver's clock (seconds; the deadlines of :class:`WaitAny` and of
        :class:`Send` are on it).
    """

    def __init__(self, state: ProxyState, peer: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.peer = peer
        self.clock = clock
        self.client_id: str | None = None
        #: the driver's side of this connection (its upstream lanes): closed with it
        self.io: Any = None
        # Until SASL succeeds: whom fedkafka_authenticate("", b"") says a connection without
        # SASL is (the built-in plugin: User:ANONYMOUS; None = nobody, everything denied).
        self.principal: Principal | None = None
        self._anonymous_resolved = False
        self._authz: dict[tuple[str, str, str], bool] = {}
        self._authz_version = -1
        self._memo: dict[Any, bool] = {}  # whole-request verdicts (authz.Rule.remember)
        self._memo_key: tuple[int, Principal | None] | None = None
        #: (cluster, node) → (what it asks, its answer on the way): a long poll still out
        self._inflight_fetch: dict[tuple[str, int], tuple[Any, Pending]] = {}
        self._watermarks: dict[tuple[str, int], tuple[int, int, int]] = {}
        self.mechanism: str | None = None
        self.closed = False  #: the client connection is gone
        self._authenticator: SaslAuthenticator | None = None
        #: set when this connection must close once its last answer is written (a failed
        #: SASL exchange, as Kafka does): the reason, for the metric
        self.close_reason: str | None = None
        self.authenticated = False
        self._seen_role: str | None = None  # producer/consumer, from the APIs it sent
        self.handlers: dict[int, Callable[[codec.Request], Any]] = {}
        for spec in apis.REGISTRY:
            handler = getattr(self, spec.handler)
            if spec.authz == apis.AUTHZ_RULE:
                handler = self._authorized(handler)
            self.handlers[spec.key] = handler

    # -- events in ------------------------------------------------------------------------

    def receive(self, frame: bytes) -> Handler:
        """One request frame of the client: its handling, as a generator of commands that
        returns what to answer (see the module's doc)."""
        try:
            header, _ = codec.parse_request_header(frame)
            spec = apis.BY_KEY.get(header.api_key)
            if self.client_id != header.client_id:
                self.client_id = header.client_id
                self.state.saw_client(header.client_id)
            advertised = self.state.advertised()
            rng = advertised.get(header.api_key)
            if header.api_key == ApiKey.API_VERSIONS and (rng is None
                                                          or header.api_version > rng[1]):
                # A broker answers an ApiVersions it can't parse with a v0 error listing ranges.
                return Reply(header, Raw(codec.api_versions_fallback_response(header,
                                                                              advertised)))
            limits = self.state.config.limits
            if spec is None or rng is None or not rng[0] <= header.api_version <= rng[1]:
                name = API_NAMES.get(header.api_key, f"key {header.api_key}")
                try:
                    req = codec.decode_request(frame, limits.array_limit(header.api_key))
                except codec.LimitExceeded:
                    raise
                except codec.CodecError:
                    raise codec.DecodeError(f"{name} v{header.api_version} is not served by "
                                            f"this proxy (client {header.client_id!r})",
                                            header) from None
                log.info("%s sent %s v%d which is not advertised; answering UNSUPPORTED_VERSION",
                         self.peer, name, header.api_version)
                self.state.metrics.error(name, ErrorCode.UNSUPPORTED_VERSION)
                return Reply(header, error_response(req, ErrorCode.UNSUPPORTED_VERSION))
            req = codec.decode_request(frame, limits.array_limit(header.api_key))
            entity, clamped = clamp_timeouts(limits, header.api_key, req.entity)
            if clamped:
                self.state.metrics.limit_hit("max_fetch_wait" if header.api_key == ApiKey.FETCH
                                             else "max_client_timeout")
                req = codec.Request(header, entity)
            if not self.may_send(header.api_key):
                raise codec.DecodeError(f"{API_NAMES.get(header.api_key)} before SASL "
                                        "authentication on a listener that requires it", header)
        except Exception as e:  # noqa: BLE001 - an undecodable request closes its connection
            return self.failure(e)
        if spec.reveals is not None and self._seen_role is None:
            self._seen_role = spec.reveals
        out = self.handlers[header.api_key](req)
        body = (yield from out) if type(out) is GeneratorType else out
        if body is None:  # nothing to answer (acks=0)
            self.state.metrics.request(header.api_key, 0.0, header.api_version)
            return None
        return Reply(header, body)

    def failure(self, e: BaseException) -> Close:
        """How a request that raised ``e`` ends its connection."""
        if isinstance(e, codec.LimitExceeded):
            return Close("array_limit", f"request refused: {e.reason} (limits."
                         "max_array_elements / max_array_elements_by_api)",
                         limit="max_array_elements")
        if isinstance(e, codec.CodecError):
            return Close("undecodable", f"undecodable request: {e.reason}")
        log.error("internal error handling a request from %s", self.peer, exc_info=e)
        return Close("internal_error", "internal error (see the traceback above)")

    def max_frame_size(self, current: int) -> int:
        """The largest request frame accepted now (larger once SASL succeeded)."""
        if self.authenticated and current < self.state.config.max_frame_size:
            return self.state.config.max_frame_size
        return current

    # -- authorization --------------------------------------------------------------------

    def _authorized(self, handler: Callable[[codec.Request], Any]
                    ) -> Callable[[codec.Request], Any]:
        """``handler`` behind its API's authorization (:mod:`federation.proxy.authz`)."""
        def guarded(req: codec.Request) -> Step:
            gate = authz.gate(req, self._may, self.fmap, self._remembered())
            if gate is None:
                return (yield from _steps(handler(req)))
            if gate.serve is None:  # denied, or every item is: nothing is done upstream
                return gate.answer(None)
            reply = yield from _steps(handler(gate.serve))
            return None if reply is None else gate.answer(reply)
        return guarded

    def _remembered(self) -> dict[Any, bool]:
        """Whole-request verdicts, for this principal and map version."""
        key = (self.fmap.version, self.principal)
        if self._memo_key != key or len(self._memo) >= MAX_VERDICTS:
            self._memo.clear()  # (keyed by client input: transactional ids)
            self._memo_key = key
        return self._memo

    def _may(self, action: authz.Action) -> bool:
        return self.authorized(action.resource_type, action.name, action.operation)

    def close(self) -> None:
        """The client connection is gone: its upstream connections close."""
        self.closed = True
        if self.io is not None:
            self.io.close()

    @property
    def fmap(self) -> Any:
        return self.state.fmap

    def set_certificate_principal(self, principal: Principal) -> None:
        """mTLS: the client certificate names the principal (until SASL names another)."""
        self.principal = principal
        self._anonymous_resolved = True
        self._authz.clear()

    def allowed(self, operation: Operation, topic: str) -> bool:
        """The authorization chain's answer for a logical topic (cached per map version)."""
        return self.authorized(ResourceType.TOPIC, topic, operation)

    def authorized(self, resource_type: ResourceType, name: str, operation: Operation) -> bool:
        """The authorization chain's answer for one resource (cached per map version)."""
        if self._authz_version != self.fmap.version:
            self._authz.clear()
            self._authz_version = self.fmap.version
        if not self.authenticated and not self._anonymous_resolved:
            self._anonymous_resolved = True
            try:
                self.principal = self.state.plugins.authenticate(NO_MECHANISM, b"")
            except PermissionError:
                self.principal = None
        if self.principal is None:
            return False
        key = (resource_type, operation, name)
        verdict = self._authz.get(key)
        if verdict is None:
            if len(self._authz) >= MAX_VERDICTS:
                self._authz.clear()
            verdict = self.state.plugins.authorize(self.principal, operation.value,
                                                   resource_type.value, name, self.fmap)
            self._authz[key] = verdict
            if not verdict:
                log.info("denied %s on %s:%s to %s (%s)", operation.value,
                         resource_type.value, name, self.principal, self.peer)
        return verdict

    @property
    def role(self) -> str | None:
        """What this client is: from a routing rule, else from what it has sent so far."""
        return self.fmap.client_role(self.client_id) or self._seen_role

    def pool(self, role: str | None = None) -> tuple[Any, ...]:
        """The proxies this client may be sent to (its pool's, with its role)."""
        return self.state.pool(self.client_id, role or self.role)

    # -- SASL -----------------------------------------------------------------------------

    def may_send(self, api_key: int) -> bool:
        """Before authentication, a listener that requires SASL serves only the handshake."""
        return (self.authenticated or not self.state.config.sasl_required
                or api_key in apis.BEFORE_SASL)

    def sasl_handshake(self, req: codec.Request) -> Any:
        mod = resp_module(ApiKey.SASL_HANDSHAKE, req.header.api_version)
        offered = self.state.plugins.sasl_mechanisms(self.fmap)
        body: Any = req.entity
        code = 0
        if body.mechanism in offered and self.mechanism is None and not self.authenticated:
            self.mechanism = body.mechanism
            self._authenticator = self.state.plugins.sasl_authenticator(body.mechanism,
                                                                        self.fmap)
        else:  # Kafka closes the connection after either error
            code = (ErrorCode.ILLEGAL_SASL_STATE if self.authenticated or self.mechanism
                    else ErrorCode.UNSUPPORTED_SASL_MECHANISM)
            self.close_reason = "authentication_failed"
            self.state.metrics.authentication(body.mechanism, "unsupported_mechanism"
                                              if code == ErrorCode.UNSUPPORTED_SASL_MECHANISM
                                              else "illegal_state")
            log.warning("SaslHandshake from %s for %r refused (offered: %s)", self.peer,
                        body.mechanism, ", ".join(offered) or "none")
        return build(mod.SaslHandshakeResponse, error_code=to_kio(code),
                     mechanisms=tuple(offered))

    def sasl_authenticate(self, req: codec.Request) -> Step:
        """One round of the exchange; a failure is answered, then the connection closes."""
        import datetime

        mod = resp_module(ApiKey.SASL_AUTHENTICATE, req.header.api_version)
        body: Any = req.entity
        message = None
        code = 0
        server_bytes = b""
        authenticator = self._authenticator
        if authenticator is None or self.authenticated:
            code, message = ErrorCode.ILLEGAL_SASL_STATE, "SaslHandshake first, and only once"
            result = "illegal_state"
        else:
            try:  # off the event loop: PLAIN's hash and plugins' lookups may take a while
                step = yield Offload(authenticator.step, (bytes(body.auth_bytes),))
            except PermissionError as e:
                code, message, result = (ErrorCode.SASL_AUTHENTICATION_FAILED,
                                         str(e) or "invalid credentials", "failed")
            except Exception:  # a broken plugin fails this client only
                log.exception("SASL %s authenticator failed", self.mechanism)
                code, message, result = (ErrorCode.SASL_AUTHENTICATION_FAILED,
                                         "authentication failed", "failed")
            else:
                server_bytes = step.server_bytes
                result = "continue"
                if step.done and step.principal is None:
                    code, message, result = (ErrorCode.SASL_AUTHENTICATION_FAILED,
                                             "authentication failed", "failed")
                elif step.done:
                    self.principal = step.principal
                    self.authenticated = True
                    self._authenticator = None
                    self._authz.clear()
                    result = "ok"
                    log.info("%s authenticated as %s (%s)", self.peer, step.principal,
                             self.mechanism)
        if code:
            server_bytes = b""
            self._authenticator = None
            self.close_reason = "authentication_failed"
            log.warning("SASL %s authentication failed for %s: %s", self.mechanism,
                        self.peer, message)
        if result != "continue":
            self.state.metrics.authentication(self.mechanism or "", result)
        return build(mod.SaslAuthenticateResponse, error_code=to_kio(code),
                     error_message=message, auth_bytes=server_bytes,
                     session_lifetime=datetime.timedelta(0))

    # -- ApiVersions / Metadata / DescribeCluster ---------------------------------

    def api_versions(self, req: codec.Request) -> Any:
        mod = resp_module(ApiKey.API_VERSIONS, req.header.api_version)
        keys = tuple(
            build(mod.ApiVersion, api_key=k, min_version=lo, max_version=hi)
            for k, (lo, hi) in sorted(self.state.advertised().items())
        )
        return build(mod.ApiVersionsResponse, error_code=to_kio(0), api_keys=keys,
                     throttle_time=_ms(0))

    def metadata(self, req: codec.Request) -> Any:
        body: Any = req.entity
        v = req.header.api_version
        mod = resp_module(ApiKey.METADATA, v)
        fmap = self.fmap
        pool = self.pool()
        brokers = tuple(build(mod.MetadataResponseBroker, node_id=p.node_id, host=p.host,
                              port=p.port, rack=None) for p in pool)
        if body.topics is None:
            names: list[str | None] = sorted(fmap.topics)
        else:
            names = []
            for t in body.topics:
                name = t.name
                if name is None and routing.has_field(t, "topic_id"):
                    found = fmap.topic_by_id(t.topic_id)
                    name = found.name if found else None
                names.append(name)
        topics = []
        creations: list[str] = []
        for name in names:
            topic = fmap.topics.get(name or "")
            described = topic.name if topic is not None else name  # unknown ones too
            if described and not self.allowed(Operation.DESCRIBE, described):
                if body.topics is None:
                    continue  # not listed to whom may not describe it
                topics.append(build(mod.MetadataResponseTopic,
                                    error_code=to_kio(ErrorCode.TOPIC_AUTHORIZATION_FAILED),
                                    name=name, topic_id=_zero_uuid(), is_internal=False,
                                    partitions=()))
                continue
            if topic is None:
                # As Kafka: a name it could never hold is INVALID_TOPIC_EXCEPTION; an id it
                # does not know UNKNOWN_TOPIC_ID (the name is nullable from v12 only).
                invalid = name is not None and admin_handlers.topic_name_error(name)
                code = (ErrorCode.INVALID_TOPIC_EXCEPTION if invalid
                        else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION if name is not None
                        else ErrorCode.UNKNOWN_TOPIC_ID)
                if name is None and v < 12:
                    name = ""
                if name and not invalid and self.state.auto_creator.should_create(
                        self, body, name):
                    creations.append(name)
                    code = ErrorCode.LEADER_NOT_AVAILABLE  # being created: Kafka's answer
                topics.append(build(mod.MetadataResponseTopic, error_code=to_kio(code),
                                    name=name, topic_id=_zero_uuid(), is_internal=False,
                                    partitions=()))
                continue
            parts = []
            for i, lp in enumerate(topic.partitions):
                leader = routing.leader_for(pool, topic.name, i).node_id
                if not routing.writable(fmap, lp):
                    # Being rolled, or its cluster is down or read-only: unavailable until
                    # the controller opens a new segment (partitioners skip it meanwhile).
                    parts.append(build(mod.MetadataResponsePartition,
                                       error_code=to_kio(ErrorCode.LEADER_NOT_AVAILABLE),
                                       partition_index=i, leader_id=-1, leader_epoch=-1,
                                       replica_nodes=(leader,), isr_nodes=(),
                                       offline_replicas=(leader,)))
                    continue
                parts.append(build(mod.MetadataResponsePartition, error_code=to_kio(0),
                                   partition_index=i, leader_id=leader, leader_epoch=-1,
                                   replica_nodes=(leader,), isr_nodes=(leader,),
                                   offline_replicas=()))
            topics.append(build(mod.MetadataResponseTopic, error_code=to_kio(0),
                                name=topic.name, topic_id=topic.topic_id, is_internal=False,
                                partitions=tuple(parts)))
        response = build(mod.MetadataResponse, throttle_time=_ms(0), brokers=brokers,
                         cluster_id=self.state.cluster_id,
                         controller_id=pool[0].node_id if pool else -1,
                         topics=tuple(topics))
        if creations:
            return self._creating(creations, response)
        return response

    def _creating(self, names: list[str], response: Any) -> Step:
        for name in names:
            yield CreateTopic(name)
        return response

    def describe_cluster(self, req: codec.Request) -> Any:
        mod = resp_module(ApiKey.DESCRIBE_CLUSTER, req.header.api_version)
        pool = self.pool()
        brokers = tuple(build(mod.DescribeClusterBroker, broker_id=p.node_id, host=p.host,
                              port=p.port, rack=None) for p in pool)
        return build(mod.DescribeClusterResponse, throttle_time=_ms(0),
                     error_code=to_kio(0), error_message=None, endpoint_type=1,
                     cluster_id=self.state.cluster_id,
                     controller_id=pool[0].node_id if pool else -1, brokers=brokers)

    # -- admin APIs (in phase 2) -------------------------------------------------------------

    def create_topics(self, req: codec.Request) -> Step:
        yield DETACH
        return (yield from admin_handlers.create_topics(self.state, req, self.clock))

    def delete_topics(self, req: codec.Request) -> Step:
        yield DETACH
        return (yield from admin_handlers.delete_topics(self.state, req, self.clock))

    def create_partitions(self, req: codec.Request) -> Step:
        yield DETACH
        return (yield from admin_handlers.create_partitions(self.state, req, self.clock))

    def describe_configs(self, req: codec.Request) -> Step:
        yield DETACH
        return (yield from configs.describe_configs(self.state, req))

    def alter_configs(self, req: codec.Request) -> Step:
        yield DETACH
        return (yield from configs.alter_configs(self.state, req, self.clock))

    def delete_records(self, req: codec.Request) -> Step:
        yield DETACH
        return (yield from admin_apis.delete_records(self, req))

    def delete_groups(self, req: codec.Request) -> Step:
        yield DETACH
        return (yield from admin_apis.delete_groups(self, req))

    def offset_delete(self, req: codec.Request) -> Step:
        yield DETACH
        return (yield from admin_apis.offset_delete(self, req))

    def describe_producers(self, req: codec.Request) -> Step:
        yield DETACH
        return (yield from admin_apis.describe_producers(self, req))

    def describe_log_dirs(self, req: codec.Request) -> Step:
        yield DETACH
        return (yield from log_dirs.describe_log_dirs(self, req))

    def describe_topic_partitions(self, req: codec.Request) -> Any:
        return admin_apis.describe_topic_partitions(self, req)

    # -- Produce ------------------------------------------------------------------------

    def produce(self, req: codec.Request) -> Step:
        body: Any = req.entity
        if body.transactional_id is not None:
            return error_response(req, ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        failed: list[tuple[str, int, int]] = []
        groups: dict[tuple[str, int], _Group] = {}
        inflight = self.state.inflight
        for t in body.topic_data:
            write_ok = self.allowed(Operation.WRITE, t.name)
            for pd in t.partition_data:
                phys = None
                try:
                    if not write_ok:
                        raise RouteError(ErrorCode.TOPIC_AUTHORIZATION_FAILED, "denied")
                    # The current map for every partition (a fence may arrive meanwhile),
                    # and counted in flight before the first wait: a fence report waits
                    # for it.
                    tgt = routing.produce_target(self.fmap, t.name, int(pd.index))
                    phys = phys_key(tgt.segment)
                    inflight[phys] = inflight.get(phys, 0) + 1
                    producer_id = -1
                    if phys in self.state.recent_rolls:
                        producer_id, verdict = yield from self._after_roll(
                            phys, t.name, int(pd.index), pd.records)
                        if verdict is not None:
                            self._landed(phys)
                            failed.append((t.name, int(pd.index), verdict))
                            continue
                    cluster = self.state.cluster(tgt.segment.cluster)
                    info = yield from leader(cluster, tgt.segment.topic, tgt.segment.partition)
                except (RouteError, UpstreamError) as e:
                    if phys is not None:
                        self._landed(phys)
                    failed.append((t.name, int(pd.index), _not_sent(e.error_code)))
                    continue
                key = (cluster.id, info.leader)
                grp = groups.get(key)
                if grp is None:
                    grp = groups[key] = _Group(cluster, info.leader)
                grp.parts.append(_Part(t.name, int(pd.index), tgt.segment, pd,
                                       records.count_records(pd.records), producer_id))
                self.state.metrics.bytes_in(t.name, len(pd.records or b""))

        sends: list[tuple[_Group, Pending]] = []
        acks = body.acks != 0
        timeout = self.state.request_timeout + int(body.timeout.total_seconds())
        for grp in groups.values():
            sub = replace(body, topic_data=_regroup_produce(grp.parts))
            try:
                pending = yield Send(grp.cluster, grp.node, sub, req.header.client_id,
                                     timeout, expect_response=acks)
            except UpstreamError as e:
                grp.cluster.invalidate()
                for p in grp.parts:
                    self._landed(phys_key(p.seg))
                failed.extend((p.topic, p.partition, _not_sent(e.error_code))
                              for p in grp.parts)
                continue
            if not acks:
                for p in grp.parts:
                    self._landed(phys_key(p.seg))
            else:
                sends.append((grp, pending))
        if not acks:
            return None
        yield DETACH
        return (yield from self._produce_reply(req, sends, failed))

    def _produce_reply(self, req: codec.Request, sends: list[tuple[_Group, Pending]],
                       failed: list[tuple[str, int, int]]) -> Step:
        mod = resp_module(ApiKey.PRODUCE, req.header.api_version)
        results: dict[tuple[str, int], Any] = {}
        throttle = 0
        waiting = dict((pending, grp) for grp, pending in sends)
        while waiting:
            done = [p for p in waiting if p.done]
            if not done:
                done = yield WaitAny(tuple(waiting), None)
            for pending in done:
                grp = waiting.pop(pending)
                for p in grp.parts:
                    self._landed(phys_key(p.seg))
                if pending.error is not None:
                    if not isinstance(pending.error, UpstreamError):
                        raise pending.error
                    # Sent, outcome unknown: a retriable "timed out" (idempotent producers'
                    # retries are de-duplicated by the broker's sequence numbers).
                    grp.cluster.invalidate()
                    for p in grp.parts:
                        failed.append((p.topic, p.partition, ErrorCode.REQUEST_TIMED_OUT))
                    continue
                resp = pending.value
                throttle = max(throttle, int(resp.throttle_time.total_seconds() * 1000))
                by_phys = {(p.seg.topic, p.seg.partition): p for p in grp.parts}
                for tr in resp.responses:
                    for pr in tr.partition_responses:
                        part = by_phys.get((tr.name, int(pr.index)))
                        if part is None:
                            continue
                        code = int(pr.error_code)
                        if code in RETRIABLE_LEADER_ERRORS:
                            grp.cluster.invalidate()
                        base = int(pr.base_offset)
                        if code == 0 and base >= 0 and not self._acknowledge(part, base):
                            failed.append((part.topic, part.partition,
                                           ErrorCode.NOT_LEADER_OR_FOLLOWER))
                            continue
                        results[(part.topic, part.partition)] = replace(
                            pr, index=part.partition,
                            base_offset=part.seg.to_logical(base) if base >= 0 else base,
                            # (Produce v3-4 answers have none: found by fuzzing)
                            log_start_offset=_log_start(
                                part.seg, int(getattr(pr, "log_start_offset", -1))),
                            current_leader=_default_of(pr, "current_leader"),
                        )
        for topic, partition, code in failed:
            self.state.metrics.error("Produce", code)
            results[(topic, partition)] = build(
                mod.PartitionProduceResponse, index=partition, error_code=to_kio(code),
                base_offset=-1, log_append_time=None, log_start_offset=-1, record_errors=(),
                error_message=None)
        ordered: dict[str, list[Any]] = defaultdict(list)
        entity: Any = req.entity
        for t in entity.topic_data:
            for pd in t.partition_data:
                r = results.get((t.name, int(pd.index)))
                if r is not None:
                    ordered[t.name].append(r)
        topics = tuple(build(mod.TopicProduceResponse, name=name, partition_responses=tuple(ps))
                       for name, ps in ordered.items())
        return build(mod.ProduceResponse, responses=topics, throttle_time=_ms(throttle))

    def _after_roll(self, key: PhysKey, topic: str, partition: int,
                    data: bytes | None) -> Step:
        """Checks of an idempotent batch written to a segment a recent roll opened.

        - a retried batch the sealed segment already holds is answered
          DUPLICATE_SEQUENCE_NUMBER (clients count it as written) and not written again;
        - the producer's first write into the new segment must be the sequence right after
          its last one in the sealed segment: the new physical partition knows nothing of
          the producer and would accept any sequence, so a later batch landing first (its
          predecessor answered a retriable error meanwhile) would leave the predecessor
          out of order for ever. Until then later batches get NOT_LEADER_OR_FOLLOWER and
          the client sends them again, in order.

        :returns: the batch's producer id (-1: not idempotent) and the error to answer, or
            None to write it (docs/adr/0011-rolls-fence-seal-reopen.md).
        """
        if not data:
            return -1, None
        try:
            batches = list(records.iter_batches(data))
            if len(batches) != 1:
                return -1, None
            info = records.batch_info(data, 0)
        except records.RecordBatchError:
            return -1, None
        pid = info.producer_id
        if pid < 0 or (key, pid) in self.state.roll_established:
            return pid, None
        sealed = yield SealedProducers(key)
        if rolls.written_before_seal(pid, info.producer_epoch, info.base_sequence,
                                     info.record_count, sealed):
            log.info("%s-%d: producer %d's batch at sequence %d is already in the segment "
                     "sealed by the last roll; answering DUPLICATE_SEQUENCE_NUMBER", topic,
                     partition, pid, info.base_sequence)
            return pid, ErrorCode.DUPLICATE_SEQUENCE_NUMBER
        if not rolls.next_after_seal(pid, info.producer_epoch, info.base_sequence, sealed):
            log.info("%s-%d: producer %d's batch at sequence %d is not the one after its last "
                     "in the sealed segment; answering a retriable error", topic, partition,
                     pid, info.base_sequence)
            return pid, ErrorCode.NOT_LEADER_OR_FOLLOWER
        return pid, None

    def _landed(self, key: PhysKey) -> None:
        """One produce to ``key`` is no longer in flight."""
        inflight = self.state.inflight
        left = inflight.get(key, 0) - 1
        if left > 0:
            inflight[key] = left
        else:
            inflight.pop(key, None)

    def _acknowledge(self, part: _Part, base: int) -> bool:
        """Whether a write the broker accepted at ``base`` may be acknowledged to the client.

        Not if it lies beyond what this proxy reported for a fence, or beyond its segment's
        seal: the controller sealed the segment without it, so consumers would never see it.
        The client gets a retriable error instead and writes it again into the new segment.
        """
        key = phys_key(part.seg)
        end = base + part.records
        ceiling = self.state.ceilings.get(key)
        visible = ceiling is None or end <= ceiling
        if visible:
            seg = routing.current_segment(self.fmap, part.topic, part.partition, part.seg)
            visible = seg is None or seg.physical_end is None or end <= seg.physical_end
        if not visible:
            log.info("write to %s-%d at physical %d..%d landed after its segment was fenced or "
                     "sealed; answering a retriable error", part.topic, part.partition, base,
                     end, extra={"ceiling": ceiling})
            return False
        acked = self.state.acked
        if end > acked.get(key, -1):
            acked[key] = end
        if part.producer_id >= 0 and key in self.state.recent_rolls:
            self.state.roll_established.add((key, part.producer_id))
        return True

    def init_producer_id(self, req: codec.Request) -> Any:
        body: Any = req.entity
        if body.transactional_id is not None:
            log.info("refusing transactional producer %r from %s: transactions are not "
                     "supported by this federation", body.transactional_id, self.peer)
            return error_response(req, ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        return self._init_producer_id(req)

    def _init_producer_id(self, req: codec.Request) -> Step:
        # Producer ids are allocated by ONE physical cluster for the whole federation, so no
        # two producers ever share an id on any physical cluster (see ADR 0007).
        try:
            cluster = self.state.cluster(self.state.pid_cluster())
            pending = yield Send(cluster, None, req.entity, req.header.client_id,
                                 self.state.request_timeout)
            return (yield from wait(pending))
        except UpstreamError as e:
            return error_response(req, ErrorCode.COORDINATOR_NOT_AVAILABLE
                                  if e.error_code == ErrorCode.NETWORK_EXCEPTION
                                  else e.error_code)

    # -- Fetch --------------------------------------------------------------------------

    def fetch(self, req: codec.Request) -> Step:
        body: Any = req.entity
        fmap = self.fmap
        failed: list[tuple[str, int, int]] = []
        groups: dict[tuple[str, int], _Group] = {}
        by_ids = routing.has_field(body.topics[0], "topic_id") if body.topics else False
        for t in body.topics:
            name = _fetch_topic_key(fmap, t)
            read_ok = self.allowed(Operation.READ, name)
            for p in t.partitions:
                try:
                    if not read_ok:
                        raise RouteError(ErrorCode.TOPIC_AUTHORIZATION_FAILED, "denied")
                    if by_ids and fmap.topic_by_id(t.topic_id) is None:
                        raise RouteError(ErrorCode.UNKNOWN_TOPIC_ID, "unknown topic id")
                    tgt = routing.fetch_target(fmap, name, int(p.partition),
                                               int(p.fetch_offset))
                    cluster = self.state.cluster(tgt.segment.cluster)
                    info = yield from leader(cluster, tgt.segment.topic, tgt.segment.partition)
                    if by_ids and tgt.segment.topic not in cluster.view.topic_ids:
                        yield Refresh(cluster)
                        if tgt.segment.topic not in cluster.view.topic_ids:
                            raise RouteError(ErrorCode.UNKNOWN_TOPIC_ID,
                                             f"{cluster.id} has no id for {tgt.segment.topic}")
                except (RouteError, UpstreamError) as e:
                    failed.append((name, int(p.partition), _not_sent(e.error_code)))
                    continue
                key = (cluster.id, info.leader)
                grp = groups.get(key)
                if grp is None:
                    grp = groups[key] = _Group(cluster, info.leader)
                grp.parts.append(_Part(name, int(p.partition), tgt.segment, p))
        sends: list[tuple[_Group, Pending]] = []
        # The client's max_bytes bounds the whole answer: split it over the sub-fetches
        # (a broker still returns at least one batch, as the protocol requires).
        share = max(1, int(body.max_bytes) // max(1, len(groups)))
        timeout = self.state.request_timeout + body.max_wait.total_seconds()
        for grp in groups.values():
            key = (grp.cluster.id, grp.node)
            signature = tuple((p.seg.topic, p.seg.partition, p.seg.to_physical(
                int(p.item.fetch_offset))) for p in grp.parts)
            previous = self._inflight_fetch.get(key)
            if previous is not None and previous[0] == signature and not previous[1].failed:
                # The same fetch is still long-polling upstream (or its answer arrived after
                # the last response went out): use it rather than queue another behind it.
                if previous[1].done:
                    del self._inflight_fetch[key]
                sends.append((grp, previous[1]))
                continue
            sub = replace(body, topics=_regroup_fetch(grp.parts, grp.cluster), session_id=0,
                          session_epoch=-1, forgotten_topics_data=(), replica_id=-1,
                          max_bytes=share)
            try:
                # The answer stays a frame: its records are passed on, never decoded.
                pending = yield Send(grp.cluster, grp.node, sub, req.header.client_id,
                                     timeout, raw=True)
            except UpstreamError as e:
                grp.cluster.invalidate()
                failed.extend((p.topic, p.partition, _not_sent(e.error_code))
                              for p in grp.parts)
                continue
            self._inflight_fetch[key] = (signature, pending)
            sends.append((grp, pending))
        # A sealed segment's own high watermark is its seal: the partition's is that of its
        # active segment, asked for alongside (a Fetch answer's watermarks are always true).
        sealed = [p for g in groups.values() for p in g.parts if p.seg.sealed_end is not None]
        ends = (yield Spawn(self._logical_ends(sealed))) if sealed else None
        yield DETACH
        return (yield from self._fetch_reply(req, sends, failed, ends))

    def _logical_ends(self, parts: list[_Part]) -> Step:
        """(topic, partition) → logical high watermark (its active segment's, translated)."""
        fmap = self.fmap
        by_cluster: dict[str, list[tuple[tuple[str, int], Any]]] = defaultdict(list)
        for p in parts:
            topic = fmap.topics.get(p.topic)
            if topic is None or p.partition >= topic.partition_count:
                continue
            active = topic.partitions[p.partition].active
            by_cluster[active.cluster].append(((p.topic, p.partition), active))
        out: dict[tuple[str, int], int] = {}

        def one(cluster_id: str, items: list[tuple[tuple[str, int], Any]]) -> Step:
            try:
                ends = yield Ends(self.state.cluster(cluster_id),
                                  [(seg.topic, seg.partition) for _, seg in items],
                                  self.state.request_timeout)
            except UpstreamError:
                return  # the active cluster is away: the seal is the best known end
            for key, seg in items:
                end = ends.get((seg.topic, seg.partition))
                if end is not None:
                    out[key] = seg.to_logical(max(end, seg.physical_start))

        yield Gather([one(c, i) for c, i in by_cluster.items()])
        return out

    def _caught_up(self, part: _Part) -> bool:
        """Whether the partition's broker last answered that it has nothing at this offset
        (so an empty answer with those watermarks is true while its long poll is out)."""
        known = self._watermarks.get((part.topic, part.partition))
        return known is not None and known[0] <= int(part.item.fetch_offset)

    def _fetch_merge(self, version: int, grp: _Group, pending: Pending
                     ) -> tuple[int, int, list[tuple[tuple[str, int],
                                                     fetch_wire.FetchPartition]],
                                list[tuple[str, int, int]]]:
        """One sub-fetch's answer in logical terms: (throttle, record bytes, partitions,
        failed partitions)."""
        out: list[tuple[tuple[str, int], fetch_wire.FetchPartition]] = []
        errs: list[tuple[str, int, int]] = []
        try:
            frame = pending.result()
            _, resp = fetch_wire.parse_fetch_response(version, frame)
        except UpstreamError as e:
            grp.cluster.invalidate()
            errs.extend((p.topic, p.partition, _not_sent(e.error_code)) for p in grp.parts)
            return 0, 0, out, errs
        except fetch_wire.WireError as e:
            log.error("%s/%d: undecodable Fetch answer: %s", grp.cluster.id, grp.node, e)
            grp.cluster.invalidate()
            errs.extend((p.topic, p.partition, ErrorCode.NOT_LEADER_OR_FOLLOWER)
                        for p in grp.parts)
            return 0, 0, out, errs
        if resp.error_code:
            errs.extend((p.topic, p.partition, resp.error_code) for p in grp.parts)
            return 0, 0, out, errs
        size = 0
        by_phys = {(p.seg.topic, p.seg.partition): p for p in grp.parts}
        names = grp.cluster.view.topic_names
        for tr in resp.topics:
            phys_name = tr.name if tr.topic_id is None else names.get(tr.topic_id)
            for pr in tr.partitions:
                part = by_phys.get((phys_name, pr.partition_index))  # type: ignore[arg-type]
                if part is None:
                    continue
                code = pr.error_code
                if code in RETRIABLE_LEADER_ERRORS:
                    grp.cluster.invalidate()
                seg = part.seg
                data = routing.translate_records(pr.records, seg)
                size += len(data) if data else 0
                hwm = routing.logical_offset(seg, pr.high_watermark)
                lso = routing.logical_offset(seg, pr.last_stable_offset)
                log_start = _log_start(seg, pr.log_start_offset)
                if code == 0:
                    self._watermarks[(part.topic, part.partition)] = (hwm, lso, log_start)
                aborted = pr.aborted
                if aborted:
                    aborted = [(pid, routing.logical_offset(seg, first))
                               for pid, first in aborted]
                out.append(((part.topic, part.partition), fetch_wire.FetchPartition(
                    part.partition, code, hwm, lso, log_start, aborted, -1, data)))
        return resp.throttle_time_ms, size, out, errs

    def _fetch_reply(self, req: codec.Request, sends: list[tuple[_Group, Pending]],
                     failed: list[tuple[str, int, int]], ends: Pending | None = None
                     ) -> Step:
        """Merge sub-fetches; answer as soon as the data in hand meets ``min_bytes``.

        A physical cluster with nothing new long-polls up to ``max_wait``: waiting for it
        would hold back the data another cluster already returned. A partition whose
        sub-fetch is still out is answered early (empty) only when its broker's last answer
        said it has nothing at this offset: its watermarks are then known and true. Any
        other pending partition is waited for. A pending sub-fetch is reused by the client's
        next Fetch if it asks for the same offsets.
        """
        body: Any = req.entity
        version = req.header.api_version
        results: dict[tuple[str, int], fetch_wire.FetchPartition] = {}
        throttle = 0
        min_bytes = max(1, int(body.min_bytes))
        max_wait = body.max_wait.total_seconds()
        waiting = dict((pending, grp) for grp, pending in sends)
        got = 0
        deadline: float | None = self.clock() + max_wait + 1.0
        while waiting:
            done = [p for p in waiting if p.done]
            if not done:
                done = yield WaitAny(tuple(waiting), deadline)
            for pending in done:
                grp = waiting.pop(pending)
                key = (grp.cluster.id, grp.node)
                previous = self._inflight_fetch.get(key)
                if previous is not None and previous[1] is pending:
                    del self._inflight_fetch[key]  # answered: never served twice
                t_ms, size, out, errs = self._fetch_merge(version, grp, pending)
                throttle = max(throttle, t_ms)
                got += size
                results.update(out)
                failed.extend(errs)
            if not waiting:
                break
            expired = deadline is not None and self.clock() >= deadline
            if (got >= min_bytes or expired) and all(
                    self._caught_up(p) for grp in waiting.values() for p in grp.parts):
                break
            if expired:
                deadline = None  # only unknown partitions left: their own timeout bounds it
        for grp in waiting.values():  # (their upstream requests stay in flight)
            for p in grp.parts:
                hwm, lso, log_start = self._watermarks[(p.topic, p.partition)]
                results[(p.topic, p.partition)] = fetch_wire.FetchPartition(
                    p.partition, 0, hwm, lso, log_start, None, -1, b"")
        for topic, partition, code in failed:
            self.state.metrics.error("Fetch", code)
            results[(topic, partition)] = fetch_wire.FetchPartition(
                partition, code, -1, -1, -1, None, -1, b"")
        if ends is not None:
            for key, end in (yield from wait(ends)).items():
                r = results.get(key)
                if r is not None and r.error_code == 0 and end > r.high_watermark:
                    r.high_watermark = r.last_stable_offset = end
        ordered: dict[str, list[fetch_wire.FetchPartition]] = defaultdict(list)
        ids: dict[str, Any] = {}
        for t in body.topics:
            name = _fetch_topic_key(self.fmap, t)
            if routing.has_field(t, "topic_id"):
                ids[name] = t.topic_id
            for p in t.partitions:
                r = results.get((name, int(p.partition)))
                if r is not None:
                    ordered[name].append(r)
                    self.state.metrics.bytes_out(name, len(r.records) if r.records else 0)
        answer = fetch_wire.FetchAnswer(throttle, 0, 0, [
            fetch_wire.FetchTopic(None if version >= 13 else name, ids.get(name), ps)
            for name, ps in ordered.items()])
        return fetch_wire.Encoded(fetch_wire.encode_fetch_response(
            version, req.header.correlation_id, answer))

    # -- ListOffsets --------------------------------------------------------------------

    def list_offsets(self, req: codec.Request) -> Step:
        body: Any = req.entity
        fmap = self.fmap
        mod = resp_module(ApiKey.LIST_OFFSETS, req.header.api_version)
        jobs = []
        for t in body.topics:
            for p in t.partitions:
                jobs.append(self._one_offset(fmap, mod, body, t.name, p))
        answers = yield Gather(jobs)
        ordered: dict[str, list[Any]] = defaultdict(list)
        for name, resp in answers:
            ordered[name].append(resp)
        topics = tuple(build(mod.ListOffsetsTopicResponse, name=n, partitions=tuple(ps))
                       for n, ps in ordered.items())
        return build(mod.ListOffsetsResponse, throttle_time=_ms(0), topics=topics)

    def _one_offset(self, fmap: Any, mod: Any, body: Any, name: str, p: Any) -> Step:
        index = int(p.partition_index)
        ts = int(p.timestamp)

        def answer(code: int, offset: int = -1, timestamp: int = -1) -> tuple[str, Any]:
            return name, build(mod.ListOffsetsPartitionResponse, partition_index=index,
                               error_code=to_kio(code), timestamp=timestamp, offset=offset,
                               leader_epoch=-1, old_style_offsets=())
        try:
            topic = routing.logical_topic(fmap, name)
            if not 0 <= index < len(topic.partitions):
                raise RouteError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "no such partition")
        except RouteError as e:
            return answer(e.error_code)
        segs = topic.partitions[index].segments
        if ts == -2:  # earliest
            candidates = list(segs)
        elif ts in (-1, -3):  # latest, max timestamp
            candidates = [segs[-1]]
        else:
            candidates = list(segs)
        for seg in candidates:
            try:
                off, found_ts, code = yield from self._physical_offset(body, seg, ts, p)
            except UpstreamError as e:
                return answer(e.error_code)
            if code:
                return answer(code)
            if off < 0:
                continue  # nothing at/after that timestamp in this segment
            logical = routing.logical_offset(seg, off)
            if seg.sealed_end is not None and logical >= seg.sealed_end and seg is not segs[-1]:
                continue
            return answer(0, logical, found_ts)
        return answer(0, -1, -1)

    def _physical_offset(self, body: Any, seg: Any, ts: int, p: Any) -> Step:
        """(offset, timestamp, error code) of one segment's physical partition."""
        cluster = self.state.cluster(seg.cluster)
        info = yield from leader(cluster, seg.topic, seg.partition)
        t = body.topics[0]  # a template (its partitions may be empty: p is the one asked)
        sub = replace(body, replica_id=-1, topics=(replace(t, name=seg.topic, partitions=(
            replace(p, partition_index=seg.partition, timestamp=ts, current_leader_epoch=-1),
        )),))
        pending = yield Send(cluster, info.leader, sub, self.client_id,
                             self.state.request_timeout)
        resp = yield from wait(pending)
        pr = resp.topics[0].partitions[0]
        code = int(pr.error_code)
        if code in RETRIABLE_LEADER_ERRORS:
            cluster.invalidate()
        return int(pr.offset), int(pr.timestamp), code

    # -- Groups ---------------------------------------------------------------------------

    def find_coordinator(self, req: codec.Request) -> Any:
        body: Any = req.entity
        mod = resp_module(ApiKey.FIND_COORDINATOR, req.header.api_version)
        pool = self.pool(ROLE_CONSUMER)  # group coordination is a consumer's business
        key_type = int(getattr(body, "key_type", 0))
        keys = list(body.coordinator_keys) if routing.has_field(body, "coordinator_keys") \
            else [body.key]

        def one(key: str) -> dict[str, Any]:
            if key_type != 0:
                return {"error_code": to_kio(ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
                        "error_message": "transactions are not supported by this federation",
                        "node_id": -1, "host": "", "port": -1}
            node = routing.coordinator_for(pool, key)
            return {"error_code": to_kio(0), "error_message": None, "node_id": node.node_id,
                    "host": node.host, "port": node.port}

        if routing.has_field(mod.FindCoordinatorResponse, "coordinators"):
            coords = tuple(build(mod.Coordinator, key=k, **one(k)) for k in keys)
            return build(mod.FindCoordinatorResponse, throttle_time=_ms(0),
                         coordinators=coords)
        return build(mod.FindCoordinatorResponse, throttle_time=_ms(0), **one(keys[0]))

    def _coordination_cluster(self, group_id: str) -> ClusterClient:
        return self.state.cluster(self.state.coordination_cluster(group_id))

    def _to_coordinator(self, req: codec.Request, group_id: str) -> Step:
        """Forward a group request to the real coordinator (retrying NOT_COORDINATOR once)."""
        cluster = self._coordination_cluster(group_id)
        for attempt in range(2):
            node = yield Coordinator(cluster, group_id)
            pending = yield Send(cluster, node, req.entity, req.header.client_id,
                                 self.state.request_timeout + 300)
            resp = yield from wait(pending)
            code = int(getattr(resp, "error_code", 0) or 0)
            if code in (ErrorCode.NOT_COORDINATOR, ErrorCode.COORDINATOR_NOT_AVAILABLE) \
                    and attempt == 0:
                cluster.forget_coordinator(group_id)
                continue
            return resp
        return resp

    def group_forward(self, req: codec.Request) -> Step:
        group_id = getattr(req.entity, GROUP_KEY_FIELD[req.header.api_key])
        yield DETACH
        try:
            return (yield from self._to_coordinator(req, group_id))
        except UpstreamError as e:
            self._coordination_cluster(group_id).forget_coordinator(group_id)
            return error_response(req, ErrorCode.COORDINATOR_NOT_AVAILABLE
                                  if e.error_code != ErrorCode.REQUEST_TIMED_OUT
                                  else e.error_code)

    def offset_fetch(self, req: codec.Request) -> Step:
        body: Any = req.entity
        if routing.has_field(body, "groups"):  # v8+: a batch (an empty one too)
            if len(body.groups) != 1:
                return error_response(req, ErrorCode.INVALID_REQUEST)
            group_id = body.groups[0].group_id
        else:
            group_id = body.group_id
        yield DETACH
        try:
            return (yield from self._to_coordinator(req, group_id))
        except UpstreamError:
            self._coordination_cluster(group_id).forget_coordinator(group_id)
            return error_response(req, ErrorCode.COORDINATOR_NOT_AVAILABLE)

    def describe_groups(self, req: codec.Request) -> Step:
        body: Any = req.entity
        yield DETACH
        if len(body.groups) != 1:
            # One coordinator per group: ask each and merge.
            parts = []
            for g in body.groups:
                sub = codec.Request(req.header, replace(body, groups=(g,)))
                resp = yield from self._describe_one(sub, g)
                parts.extend(resp.groups)
            mod = resp_module(ApiKey.DESCRIBE_GROUPS, req.header.api_version)
            return build(mod.DescribeGroupsResponse, throttle_time=_ms(0),
                         groups=tuple(parts))
        return (yield from self._describe_one(req, body.groups[0]))

    def _describe_one(self, req: codec.Request, group_id: str) -> Step:
        try:
            return (yield from self._to_coordinator(req, group_id))
        except UpstreamError:
            return error_response(req, ErrorCode.COORDINATOR_NOT_AVAILABLE)

    def list_groups(self, req: codec.Request) -> Step:
        cluster_id = self.state.coordination_cluster("")
        cluster = self.state.cluster(cluster_id)
        yield DETACH
        try:
            view = yield Refresh(cluster)
            mod = resp_module(ApiKey.LIST_GROUPS, req.header.api_version)
            groups: list[Any] = []
            for node in view.brokers:
                pending = yield Send(cluster, node, req.entity, req.header.client_id,
                                     self.state.request_timeout)
                resp = yield from wait(pending)
                groups.extend(resp.groups)
            return build(mod.ListGroupsResponse, throttle_time=_ms(0), error_code=to_kio(0),
                         groups=tuple(groups))
        except UpstreamError:
            return error_response(req, ErrorCode.COORDINATOR_NOT_AVAILABLE)


# -- helpers ----------------------------------------------------------------------------


def _ms(value: int) -> Any:
    import datetime

    return datetime.timedelta(milliseconds=value)


def _zero_uuid() -> Any:
    import uuid

    return uuid.UUID(int=0)


_DEFAULTS: dict[tuple[type[Any], str], Any] = {}


def _default_of(entity: Any, name: str) -> Any:
    """The default value of a (tagged) field, to strip physical leader/endpoint hints.

    kio entities are frozen, so one default instance per (class, field) is shared; looked
    up once per class (this runs for every partition of every Produce/Fetch answer).
    """
    import dataclasses

    key = (type(entity), name)
    if key not in _DEFAULTS:
        value = None
        for f in dataclasses.fields(entity):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    value = f.default
                elif f.default_factory is not dataclasses.MISSING:
                    value = f.default_factory()
        _DEFAULTS[key] = value
    return _DEFAULTS[key]


def _not_sent(code: int) -> int:
    """Map an upstream failure before/without an answer to a retriable leader error."""
    if code in (ErrorCode.NETWORK_EXCEPTION, ErrorCode.REQUEST_TIMED_OUT):
        return ErrorCode.NOT_LEADER_OR_FOLLOWER
    return code


def _log_start(seg: Any, physical: int) -> int:
    if physical < 0:
        return physical
    # The earliest logical offset of this segment that is still on disk.
    return max(int(seg.logical_start), int(seg.to_logical(physical)))


def _regroup_produce(parts: list[_Part]) -> tuple[Any, ...]:
    by_topic: dict[str, list[Any]] = defaultdict(list)
    template: dict[str, Any] = {}
    for p in parts:
        by_topic[p.seg.topic].append(replace(p.item, index=p.seg.partition))
        template.setdefault(p.seg.topic, p)
    out = []
    for phys, items in by_topic.items():
        cls = _topic_class(template[phys], "TopicProduceData")
        out.append(build(cls, name=phys, partition_data=tuple(items)))
    return tuple(out)


def _fetch_topic_key(fmap: Any, t: Any) -> str:
    """A request topic's logical name (Fetch v13+ names topics by id)."""
    if routing.has_field(t, "topic"):
        return str(t.topic)
    found = fmap.topic_by_id(t.topic_id)
    return str(found.name) if found is not None else f"<id {t.topic_id}>"


def _regroup_fetch(parts: list[_Part], cluster: ClusterClient) -> tuple[Any, ...]:
    by_topic: dict[str, list[Any]] = defaultdict(list)
    template: dict[str, Any] = {}
    for p in parts:
        by_topic[p.seg.topic].append(replace(
            p.item, partition=p.seg.partition, fetch_offset=p.seg.to_physical(
                int(p.item.fetch_offset)), log_start_offset=-1, current_leader_epoch=-1,
            last_fetched_epoch=-1))
        template.setdefault(p.seg.topic, p)
    out = []
    for phys, items in by_topic.items():
        cls = _topic_class(template[phys], "FetchTopic")
        out.append(build(cls, topic=phys, topic_id=cluster.view.topic_ids.get(phys),
                         partitions=tuple(items)))
    return tuple(out)


def _topic_class(part: _Part, name: str) -> type[Any]:
    import sys

    module = sys.modules[type(part.item).__module__]
    cls: type[Any] = getattr(module, name)
    return cls
