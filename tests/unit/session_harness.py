"""A scripted driver for the sans-IO proxy core: no socket, no event loop, a fake clock.

It runs :meth:`federation.proxy.handlers.Session.receive` the way the asyncio driver does
(federation/proxy/server.py), but every upstream request is answered by a *responder* the
test registers per API key, at the fake time the test says:

    h = Harness(fmap)
    h.on(ApiKey.PRODUCE, lambda sent: produce_ok(sent))          # answered at once
    h.on(ApiKey.FETCH, lambda sent: Later(0.3, answer))           # 300 ms later
    h.on(ApiKey.FETCH, lambda sent: NEVER)                        # a long poll never back
    h.on(ApiKey.FETCH, lambda sent: Fail(ErrorCode.NETWORK_EXCEPTION))
    outcome = h.call(request_entity)                              # Reply | Close | None

Time only moves when every step waits: to the next scripted answer, timer or deadline.
The controller's intent endpoint (``h.controller``), the physical clusters' admin requests
(``h.validate``, ``h.describe``) and the store (``h.state.backend``, e.g. a :class:`Store`)
are scripted the same way.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

from federation.clusters.upstream import PartitionInfo, UpstreamError
from federation.core.model import FederationMap
from federation.plugin import Plugins, get_plugins
from federation.protocol import codec, fetch_wire
from federation.protocol.errors import ErrorCode
from federation.proxy import core
from federation.proxy.config import ProxyConfig
from federation.proxy.handlers import Session
from federation.proxy.server import ProxyState


class _NoBackend:
    """A metadata store holding nothing (the map is the harness's)."""

    def load(self) -> None:
        return None

    def members(self, kind: str) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class Store(_NoBackend):
    """A metadata store holding ``fmap`` and the proxies' member records (``members``:
    member id → its record, e.g. ``{"map_version": 3}``)."""

    def __init__(self, fmap: FederationMap | None) -> None:
        self.fmap = fmap
        self.proxies: dict[str, dict[str, Any]] = {}
        self.loads = 0

    def load(self) -> FederationMap | None:  # type: ignore[override]
        self.loads += 1
        return self.fmap

    def members(self, kind: str) -> dict[str, Any]:
        return dict(self.proxies) if kind == "proxy" else {}


@dataclasses.dataclass
class Later:
    delay: float
    answer: Any


@dataclasses.dataclass
class Fail:
    """The upstream request fails (its connection broke) after ``delay``."""

    code: int = ErrorCode.NETWORK_EXCEPTION
    delay: float = 0.0


@dataclasses.dataclass
class Refuse:
    """The upstream request cannot even be written (no connection)."""

    code: int = ErrorCode.NETWORK_EXCEPTION


NEVER = object()


@dataclasses.dataclass
class Sent:
    """One upstream request the core wrote."""

    cluster: str
    node: int | None
    request: Any
    raw: bool
    at: float
    client_id: str | None
    shared: bool = False
    pending: core.Pending | None = None

    @property
    def api_key(self) -> int:
        return int(self.request.__api_key__)


class _Task:
    __slots__ = ("detached", "done", "error", "gather", "gen", "on_done", "result", "value",
                 "wait")

    def __init__(self, gen: Any) -> None:
        self.gen = gen
        self.value: Any = None
        self.error: BaseException | None = None
        self.wait: core.WaitAny | None = None
        self.gather: list[_Task] | None = None
        self.done = False
        self.detached = False
        self.result: Any = None
        self.on_done: list[Callable[[_Task], None]] = []


def make_state(fmap: FederationMap, plugins: Plugins | None = None, **config: Any
               ) -> ProxyState:
    cfg = ProxyConfig.from_dict({"node_id": 1, "listen": "127.0.0.1:1",
                                 "advertised": "proxy1:9092",
                                 "store": "file:/nonexistent/map.json", **config})
    return ProxyState(cfg, fmap, plugins or get_plugins(), backend=_NoBackend())  # type: ignore[arg-type]


class Harness:
    def __init__(self, fmap: FederationMap, *, plugins: Plugins | None = None,
                 api_versions: dict[int, tuple[int, int]] | None = None, **config: Any
                 ) -> None:
        self.state = make_state(fmap, plugins, **config)
        self.now = 1000.0
        self.session = Session(self.state, "client:1", clock=lambda: self.now)
        self.sent: list[Sent] = []
        self.responders: dict[int, Callable[[Sent], Any]] = {}
        #: (cluster, physical topic, partition) → leader node (default 1)
        self.leaders: dict[tuple[str, str, int], int] = {}
        self.coordinators: dict[str, int] = {}
        self.ends: dict[tuple[str, str, int], int] = {}  #: high watermarks
        self.starts: dict[tuple[str, str, int], int] = {}  #: log start offsets
        self.failing_clusters: set[str] = set()  #: Leader/Ends lookups fail there
        #: (cluster, physical topic, partition) → the error its leader lookup fails with
        self.leader_errors: dict[tuple[str, str, int], int] = {}
        self.sealed: dict[Any, dict[int, tuple[int, int]]] = {}
        self.created: list[str] = []
        self.detached_at: float | None = None
        self.commands: list[Any] = []
        #: the intents submitted to the controller: (kind, args)
        self.intents: list[tuple[str, dict[str, Any]]] = []
        #: the controller: (kind, args) → its answer (raise: its refusal)
        self.controller: Callable[[str, dict[str, Any]], Any] = lambda kind, args: {
            "status": "applied", "version": self.state.fmap.version, "result": {}}
        self.validated: list[core.ValidatePhysical] = []
        #: the physical clusters' validation of a CreateTopics validate_only (raise: refused)
        self.validate: Callable[[core.ValidatePhysical], None] | None = None
        #: the physical topics as their clusters describe them
        self.describe: Callable[[core.DescribePhysical], dict[str, Any]] = lambda cmd: {}
        self._events: list[tuple[float, int, core.Pending, Any, BaseException | None]] = []
        self._seq = itertools.count()
        self._cid = itertools.count(1)
        self._tasks: list[_Task] = []
        for cid in fmap.clusters:  # as if each cluster had answered ApiVersions
            self.state.cluster(cid).api_versions = dict(api_versions or {})

    # -- scripting -------------------------------------------------------------------------

    def on(self, api_key: int, responder: Callable[[Sent], Any]) -> None:
        self.responders[api_key] = responder

    def frame(self, entity: Any, client_id: str | None = "app") -> bytes:
        parts = codec.encode_request(entity, next(self._cid), client_id)
        return b"".join(bytes(p) for p in parts)[4:]

    def call(self, entity: Any, client_id: str | None = "app", strict: bool = True) -> Any:
        """One request, run to its end: the core's Reply, Close or None.

        :param strict: raise what the core raised (else: its Close, as the driver does).
        """
        return self.run(self.session.receive(self.frame(entity, client_id)), strict)

    def call_frame(self, frame: bytes) -> Any:
        return self.run(self.session.receive(frame))

    def start(self, entity: Any, client_id: str | None = "app") -> Any:
        """Dispatch one request as the driver does (phase 1: up to its Detach, or to its
        end); :meth:`complete` collects its outcome. Requests started meanwhile run
        concurrently with its phase 2."""
        root = self._spawn(self.session.receive(self.frame(entity, client_id)))
        while not root.done and not root.detached:
            if not self._step_ready():
                self._advance_clock()
        return root

    def complete(self, root: Any) -> Any:
        while not root.done:
            if not self._step_ready():
                self._advance_clock()
        if root.error is not None:
            raise root.error
        return root.result

    def run(self, gen: Any, strict: bool = True) -> Any:
        root = self._spawn(gen)
        self.detached_at = None
        while not root.done:
            if not self._step_ready():
                self._advance_clock()
        if root.error is not None:
            if strict:
                raise root.error
            return self.session.failure(root.error)
        return root.result

    # -- the scheduler ---------------------------------------------------------------------

    def _spawn(self, gen: Any) -> _Task:
        task = _Task(gen)
        self._tasks.append(task)
        return task

    def _ready(self, task: _Task) -> bool:
        if task.done:
            return False
        if task.gather is not None:
            return all(t.done for t in task.gather)
        if task.wait is not None:
            w = task.wait
            return any(p.done for p in w.pending) or (
                w.deadline is not None and self.now >= w.deadline)
        return True

    def _step_ready(self) -> bool:
        progressed = False
        for task in list(self._tasks):
            while self._ready(task):
                progressed = True
                self._step(task)
        self._tasks = [t for t in self._tasks if not t.done]
        return progressed

    def _step(self, task: _Task) -> None:
        if task.gather is not None:
            children, task.gather = task.gather, None
            failed = [c.error for c in children if c.error is not None]
            if failed:
                task.error = failed[0]
            else:
                task.value = [c.result for c in children]
        elif task.wait is not None:
            task.value = [p for p in task.wait.pending if p.done]
            task.wait = None
        try:
            if task.error is not None:
                error, task.error = task.error, None
                cmd = task.gen.throw(error)
            else:
                value, task.value = task.value, None
                cmd = task.gen.send(value)
        except StopIteration as e:
            self._finish(task, e.value, None)
            return
        except Exception as e:
            self._finish(task, None, e)
            return
        self.commands.append(cmd)
        try:
            self._execute(task, cmd)
        except Exception as e:
            task.error = e

    def _finish(self, task: _Task, result: Any, error: BaseException | None) -> None:
        task.done = True
        task.result = result
        task.error = error
        for cb in task.on_done:
            cb(task)

    def _execute(self, task: _Task, cmd: Any) -> None:
        if cmd is core.DETACH:
            task.detached = True
            if self.detached_at is None:
                self.detached_at = self.now
            return
        if isinstance(cmd, core.Send):
            task.value = self._send(cmd)
        elif isinstance(cmd, core.WaitAny):
            if any(p.done for p in cmd.pending):
                task.value = [p for p in cmd.pending if p.done]
            else:
                task.wait = cmd
        elif isinstance(cmd, core.Leader):
            if cmd.cluster.id in self.failing_clusters:
                raise UpstreamError("no metadata", ErrorCode.NETWORK_EXCEPTION)
            code = self.leader_errors.get((cmd.cluster.id, cmd.topic, cmd.partition))
            if code is not None:
                raise UpstreamError("no leader", code)
            node = self.leaders.get((cmd.cluster.id, cmd.topic, cmd.partition), 1)
            info = PartitionInfo(node, 0)
            cmd.cluster.view.partitions[(cmd.topic, cmd.partition)] = info
            task.value = info
        elif isinstance(cmd, core.Coordinator):
            task.value = self.coordinators.get(cmd.group_id, 1)
        elif isinstance(cmd, core.Refresh):
            task.value = cmd.cluster.view
        elif isinstance(cmd, core.Ends):
            if cmd.cluster.id in self.failing_clusters:
                raise UpstreamError("no offsets", ErrorCode.NETWORK_EXCEPTION)
            known = self.starts if cmd.timestamp == -2 else self.ends
            task.value = {tp: known[(cmd.cluster.id, *tp)] for tp in cmd.partitions
                          if (cmd.cluster.id, *tp) in known}
        elif isinstance(cmd, core.SealedProducers):
            task.value = self.sealed.get(cmd.key, {})
        elif isinstance(cmd, core.Spawn):
            pending = core.Pending()
            child = self._spawn(cmd.step)

            def fill(t: _Task, p: core.Pending = pending) -> None:
                if t.error is not None:
                    p.fail(t.error)
                else:
                    p.set(t.result)
            child.on_done.append(fill)
            task.value = pending
        elif isinstance(cmd, core.Gather):
            task.gather = [self._spawn(s) for s in cmd.steps]
        elif isinstance(cmd, core.Offload):
            task.value = cmd.fn(*cmd.args)
        elif isinstance(cmd, core.CreateTopic):
            self.created.append(cmd.name)
        elif isinstance(cmd, core.SubmitIntent):
            self.intents.append((cmd.kind, dict(cmd.args)))
            task.value = self.controller(cmd.kind, dict(cmd.args))
        elif isinstance(cmd, core.ValidatePhysical):
            self.validated.append(cmd)
            if self.validate is not None:
                self.validate(cmd)
        elif isinstance(cmd, core.DescribePhysical):
            task.value = self.describe(cmd)
        else:
            raise AssertionError(f"unknown command {cmd!r}")

    def _send(self, cmd: core.Send) -> core.Pending | None:
        sent = Sent(cmd.cluster.id, cmd.node, cmd.request, cmd.raw, self.now, cmd.client_id,
                    cmd.shared)
        self.sent.append(sent)
        responder = self.responders.get(sent.api_key)
        if responder is None:
            raise AssertionError(f"no responder for api key {sent.api_key}")
        outcome = responder(sent)
        if isinstance(outcome, Refuse):
            raise UpstreamError("not connected", outcome.code)
        if not cmd.expect_response:
            return None
        pending = core.Pending(self.now + cmd.timeout)
        sent.pending = pending
        if outcome is NEVER:
            return pending
        delay = 0.0
        error: BaseException | None = None
        if isinstance(outcome, Later):
            delay, outcome = outcome.delay, outcome.answer
        if isinstance(outcome, Fail):
            delay, error = outcome.delay, UpstreamError("connection lost", outcome.code)
            outcome = None
        elif cmd.raw:
            outcome = self._raw(sent, outcome)
        self._events.append((self.now + delay, next(self._seq), pending, outcome, error))
        return pending

    @staticmethod
    def _raw(sent: Sent, answer: Any) -> bytes:
        if isinstance(answer, fetch_wire.FetchAnswer):
            parts = fetch_wire.encode_fetch_response(int(sent.request.__version__), 7, answer)
        else:
            header = codec.RequestHeader(sent.api_key, int(sent.request.__version__), 7, None)
            parts = codec.encode_response(header, answer)
        return b"".join(bytes(p) for p in parts)[4:]

    def _advance_clock(self) -> None:
        times = [t for t, *_ in self._events]
        for task in self._tasks:
            if task.wait is not None:
                if task.wait.deadline is not None:
                    times.append(task.wait.deadline)
                times.extend(p.deadline for p in task.wait.pending
                             if not p.done and p.deadline is not None)
        if not times:
            raise AssertionError("stuck: every step waits and nothing is scheduled")
        self.now = max(self.now, min(times))
        due = [e for e in self._events if e[0] <= self.now]
        self._events = [e for e in self._events if e[0] > self.now]
        for _, _, pending, value, error in sorted(due, key=lambda e: (e[0], e[1])):
            if error is not None:
                pending.fail(error)
            else:
                pending.set(value)
        for task in self._tasks:  # the driver's per-request deadline
            if task.wait is not None:
                for p in task.wait.pending:
                    if not p.done and p.deadline is not None and self.now >= p.deadline:
                        p.fail(UpstreamError("no answer in time",
                                             ErrorCode.REQUEST_TIMED_OUT))

    def advance(self, seconds: float) -> None:
        """Let time pass with nothing running (answers due meanwhile arrive)."""
        self.now += seconds
        due = [e for e in self._events if e[0] <= self.now]
        self._events = [e for e in self._events if e[0] > self.now]
        for _, _, pending, value, error in sorted(due, key=lambda e: (e[0], e[1])):
            if error is not None:
                pending.fail(error)
            else:
                pending.set(value)


def fetch_answer(outcome: Any) -> fetch_wire.FetchAnswer:
    """A Fetch Reply's answer, as the client reads it."""
    assert isinstance(outcome, core.Reply), outcome
    data = b"".join(bytes(p) for p in outcome.body.parts)[4:]
    _, answer = fetch_wire.parse_fetch_response(outcome.header.api_version, data)
    return answer
