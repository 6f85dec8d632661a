"""The sans-IO vocabulary of the proxy core: commands out, events in.

A request handler (:class:`federation.proxy.handlers.Session`) is a generator. It
``yield``\\ s a *command* (send this upstream, wait for these answers until that time,
look up a leader, ...) and the driver that runs it sends back the *event* that answers
the command (the value) or throws it in (an :class:`UpstreamError`). It ``return``\\ s
what to do with the client: :class:`Reply`, :class:`Close`, or ``None`` (no answer).
Sub-steps compose with ``yield from``. Nothing here touches a socket, a clock or an
event loop: the asyncio driver (:mod:`federation.proxy.server`) executes commands with
real connections and timers, and ``tests/unit/session_harness.py`` with scripted upstream
answers and a fake clock (docs/adr/0024-sans-io-proxy-core.md).

Events and their commands:

===========================  ==============================================================
command                      event sent back
===========================  ==============================================================
:class:`Send`                a :class:`Pending` (filled in when the broker answers), or
                             ``None`` when no answer is expected; :class:`UpstreamError`
                             thrown when the request cannot be written
:class:`WaitAny`             the pendings that are done (empty: the deadline passed, the
                             timer fired); a pending past its own deadline is done with
                             REQUEST_TIMED_OUT (and its connection closed)
:class:`Leader`,             the partition's leader, the group's coordinator, the cluster's
:class:`Coordinator`,        refreshed view, the partitions' end offsets, the sealed
:class:`Refresh`,            segment's producer states (or :class:`UpstreamError`)
:class:`Ends`,
:class:`SealedProducers`
:class:`Spawn`               a :class:`Pending` done when the sub-step returns
:class:`Gather`              the sub-steps' results, in order (run concurrently)
:class:`Offload`             the function's result (run off the event loop)
:class:`CreateTopic`         ``None`` (the creation runs on its own)
:class:`Detach`              ``None``: the request's upstream writes are out, the next
                             request of the connection may be dispatched
:class:`SubmitIntent`        the active controller's answer to the intent (``{"status",
                             "version", "result"}``), once this proxy's store shows the
                             map that applied it, within the command's ``timeout``; its
                             refusal (an ``AdminError``) or the submission's failure (no
                             token: ``ConfigError``; the store away) thrown
:class:`ValidatePhysical`    ``None`` once every physical cluster validated creating the
                             planned physical topics; the first refusal thrown
:class:`DescribePhysical`    logical name → its physical data topic as its cluster
                             describes it (``PhysicalTopic``), or why not (``AdminError``)
===========================  ==============================================================

A map change needs no event of its own: the shared :class:`~federation.proxy.server.
ProxyState` applies it (``set_map``) and every handler reads the map it holds when it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from federation.protocol import codec

__all__ = [
    "Close", "Command", "Coordinator", "CreateTopic", "DescribePhysical", "Detach", "Ends",
    "Gather", "Handler", "Leader", "Offload", "Pending", "Raw", "Refresh", "Reply",
    "SealedProducers", "Send", "Spawn", "Step", "SubmitIntent", "ValidatePhysical", "WaitAny",
    "leader", "wait",
]


class Pending:
    """One answer on its way (an upstream request, a spawned sub-step): the driver fills it
    in. ``link`` and ``deadline`` belong to the driver (its future; when to give up)."""

    __slots__ = ("deadline", "done", "error", "link", "value")

    def __init__(self, deadline: float | None = None, link: Any = None) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.deadline = deadline
        self.link = link

    def set(self, value: Any) -> None:
        self.done = True
        self.value = value

    def fail(self, error: BaseException) -> None:
        self.done = True
        self.error = error

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    @property
    def failed(self) -> bool:
        return self.done and self.error is not None


# -- commands ---------------------------------------------------------------------------


@dataclass(slots=True)
class Send:
    """Write ``request`` to broker ``node`` of ``cluster`` on this client connection's own
    upstream connection to it; with ``shared``, on the proxy's connection to it shared by
    every client (``node`` None: any shared connection to the cluster)."""

    cluster: Any  # ClusterClient
    node: int | None
    request: Any
    client_id: str | None
    timeout: float  # seconds from now; then the answer is REQUEST_TIMED_OUT
    expect_response: bool = True
    raw: bool = False  # the answer stays a frame (Fetch: records are never decoded)
    shared: bool = False


@dataclass(slots=True)
class WaitAny:
    pending: Sequence[Pending]
    deadline: float | None  # the core's clock; None: no deadline but the pendings' own


@dataclass(slots=True)
class Leader:
    cluster: Any
    topic: str
    partition: int


@dataclass(slots=True)
class Coordinator:
    cluster: Any
    group_id: str


@dataclass(slots=True)
class Refresh:
    cluster: Any


@dataclass(slots=True)
class Ends:
    """The offsets of physical partitions of one cluster at ``timestamp`` (the high
    watermarks by default): {(topic, p): offset}."""

    cluster: Any
    partitions: list[tuple[str, int]]
    timeout: float
    timestamp: int = -1  # -1: the high watermark; -2: the log start


@dataclass(slots=True)
class SealedProducers:
    key: Any  # PhysKey of the new active segment


@dataclass(slots=True)
class Spawn:
    step: Step


@dataclass(slots=True)
class Gather:
    steps: Sequence[Step]


@dataclass(slots=True)
class Offload:
    fn: Callable[..., Any]
    args: tuple[Any, ...]


@dataclass(slots=True)
class CreateTopic:
    """Start creating a logical topic (automatic creation, ADR 0013); nothing is awaited."""

    name: str


@dataclass(slots=True)
class Detach:
    pass


DETACH = Detach()


@dataclass(slots=True)
class SubmitIntent:
    """Submit an intent to the active controller as this proxy (its token, which the driver
    holds; the controller's endpoint from the store; resubmitted through failovers for at
    most ``timeout`` seconds: :func:`federation.controller.intents.submit`), and wait until
    this proxy's store returns the map that applied it. ``kind``: one of
    :data:`federation.controller.intents.PROXY_KINDS`; ``timeout``: the proxy's intent
    timeout (:func:`federation.proxy.admin_handlers.intent_timeout`), decided here."""

    kind: str
    args: Mapping[str, Any]
    timeout: float


@dataclass(slots=True)
class ValidatePhysical:
    """Have each physical cluster of ``needs`` ({cluster: {physical topic: partitions}},
    :func:`federation.clusters.admin.physical_needs`) validate creating them for the
    logical topic ``name`` (CreateTopics ``validate_only``): nothing is created."""

    fmap: Any  # FederationMap: where the clusters are
    name: str
    needs: dict[str, dict[str, int]]
    replication: int | None
    config: Mapping[str, str] | None


@dataclass(slots=True)
class DescribePhysical:
    """Describe the physical data topic of each logical topic (replication factor and
    configs), one admin connection and request per cluster."""

    fmap: Any  # FederationMap
    topics: Sequence[Any]  # LogicalTopic


Command = (Send | WaitAny | Leader | Coordinator | Refresh | Ends | SealedProducers | Spawn
           | Gather | Offload | CreateTopic | Detach | SubmitIntent | ValidatePhysical
           | DescribePhysical)

# -- outcomes ---------------------------------------------------------------------------


class Raw:
    """An answer already encoded (a whole frame, length prefix first)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass(slots=True)
class Reply:
    """Answer the client: ``body`` is a kio entity, a :class:`fetch_wire.Encoded` or a
    :class:`Raw` frame."""

    header: codec.RequestHeader
    body: Any


@dataclass(slots=True)
class Close:
    """Close the client connection at once (nothing more it sent is read or answered)."""

    reason: str  # the metric's label
    detail: str  # logged
    limit: str | None = None  # the limit hit, for its metric


Step = Generator[Any, Any, Any]
"""A handler or sub-step: yields commands, returns its result."""
Handler = Generator[Any, Any, "Reply | Close | None"]


def leader(cluster: Any, topic: str, partition: int) -> Step:
    """A partition's leader: from the cluster's view, else looked up (a command)."""
    info = cluster.view.partitions.get((topic, partition))
    if info is not None and info.leader >= 0:
        return info
    return (yield Leader(cluster, topic, partition))


def wait(pending: Pending) -> Step:
    """The answer of one pending (raises its error)."""
    while not pending.done:
        yield WaitAny((pending,), None)
    return pending.result()
