"""Resource limits of one proxy: what a client connection may hold, and for how long.

Pure data and decisions (no I/O); :mod:`federation.proxy.server` and the admin handlers
apply them. Every limit has a safe default and, when hit, counts
``fedkafka_proxy_limit_hits_total{limit}`` (the limit's field name) and does the least
that keeps the proxy whole: a connection over a connection, size or time limit is closed
(logged with its reason, ``fedkafka_proxy_connections_closed_total{reason}``), reading
pauses while a connection has too much in flight, a request over a partition limit is
answered ``POLICY_VIOLATION``, and client timeouts beyond their bounds are clamped. Other
clients are unaffected.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from federation.core.errors import ConfigError
from federation.protocol.versions import API_NAMES, ApiKey

__all__ = ["CLAMPED_TIMEOUTS", "Limits", "PartitionBudget", "clamp_timeouts", "idle_reason"]

#: Kafka's POLICY_VIOLATION (what a broker's create-topic policy answers)
POLICY_VIOLATION = 44


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-proxy limits (the ``limits`` object of a proxy config)."""

    #: client connections the proxy holds at once; more are closed on arrival
    max_connections: int = 20_000
    #: connections from one source address at once
    max_connections_per_address: int = 2_000
    #: a connection with no request for this long is closed (Kafka:
    #: ``connections.max.idle.ms``, 10 minutes)
    idle_timeout: float = 600.0
    #: a frame must arrive whole within this many seconds of its first byte (slowloris)
    frame_timeout: float = 30.0
    #: largest frame before SASL authentication on a listener that requires it (Kafka's
    #: ``sasl.server.max.receive.size``, 512 KiB)
    max_frame_size_unauthenticated: int = 512 << 10
    #: bytes of received, not yet answered requests per connection before the proxy
    #: stops reading from it (backpressure, not a close)
    max_queued_bytes: int = 64 << 20
    #: requests received and not yet answered per connection before the proxy stops
    #: reading from it (backpressure)
    max_requests_in_flight: int = 64
    #: elements of any one array of a request (topics, partitions, group ids, coordinator
    #: keys...); a request with more is refused before it is decoded: the connection closes
    max_array_elements: int = 10_000
    #: per API name (e.g. ``{"FindCoordinator": 1000}``): overrides ``max_array_elements``
    max_array_elements_by_api: Mapping[str, int] = field(default_factory=dict)
    #: new partitions one CreateTopics or CreatePartitions request may ask for in all (as
    #: Kafka's controller, 10,000); topics beyond it are answered POLICY_VIOLATION
    max_partitions_per_request: int = 10_000
    #: client-given timeouts (Produce, CreateTopics, DeleteTopics, CreatePartitions,
    #: DeleteRecords, JoinGroup's rebalance timeout) are clamped to [0, this] seconds
    max_client_timeout: float = 300.0
    #: a Fetch's ``max_wait`` is clamped to [0, this] seconds
    max_fetch_wait: float = 30.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Limits:
        """:raises ConfigError: naming the field and what it must be."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError("limits must be an object, e.g. {\"max_connections\": 20000}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"limits has unknown field(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name == "max_array_elements_by_api":
                values[name] = _by_api(value)
                continue
            want = float if isinstance(getattr(cls(), name), float) else int
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or (
                    want is int and not isinstance(value, int)):
                raise ConfigError(f"limits.{name} must be a positive "
                                  f"{'number of seconds' if want is float else 'integer'}, "
                                  f"got {value!r}")
            values[name] = want(value)
        return cls(**values)


    def array_limit(self, api_key: int) -> int:
        """Most elements any array of a request of ``api_key`` may hold."""
        if self.max_array_elements_by_api:
            name = API_NAMES.get(api_key)
            if name is not None and name in self.max_array_elements_by_api:
                return self.max_array_elements_by_api[name]
        return self.max_array_elements


def _by_api(value: Any) -> dict[str, int]:
    names = set(API_NAMES.values())
    if not isinstance(value, Mapping):
        raise ConfigError("limits.max_array_elements_by_api must be an object of API name "
                          "to count, e.g. {\"FindCoordinator\": 1000}")
    out: dict[str, int] = {}
    for api, count in value.items():
        if api not in names:
            raise ConfigError(f"limits.max_array_elements_by_api names {api!r}, which is no "
                              f"Kafka API; known: {', '.join(sorted(names))}")
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise ConfigError(f"limits.max_array_elements_by_api.{api} must be a positive "
                              f"integer, got {count!r}")
        out[str(api)] = count
    return out


def idle_reason(limits: Limits, now: float, last_activity: float,
                frame_started: float | None, busy: bool) -> str | None:
    """Why a connection must be closed now (``slow_frame``, ``idle``), or None."""
    if frame_started is not None and now - frame_started > limits.frame_timeout:
        return "slow_frame"
    if not busy and now - last_activity > limits.idle_timeout:
        return "idle"
    return None


# -- partitions per request ------------------------------------------------------------------


class PartitionBudget:
    """New partitions one CreateTopics/CreatePartitions request may still ask for."""

    __slots__ = ("hit", "left", "limit")

    def __init__(self, limits: Limits) -> None:
        self.limit = limits.max_partitions_per_request
        self.left = self.limit
        self.hit = False  #: whether a topic was refused for it

    def take(self, partitions: int) -> tuple[int, str] | None:
        """Spend ``partitions`` new partitions; the refusal (code, message) when over."""
        if partitions > self.left:
            self.hit = True
            return (POLICY_VIOLATION,
                    f"Excessively large number of partitions per request: {partitions} "
                    f"asked, at most {self.limit} new partitions per request in all "
                    "(the proxy's limits.max_partitions_per_request).")
        self.left -= max(partitions, 0)
        return None


# -- client timeouts -------------------------------------------------------------------------

#: request field → the limit bounding it (seconds), per API key
CLAMPED_TIMEOUTS: dict[int, tuple[tuple[str, str], ...]] = {
    ApiKey.PRODUCE: (("timeout", "max_client_timeout"),),
    ApiKey.FETCH: (("max_wait", "max_fetch_wait"),),
    ApiKey.JOIN_GROUP: (("rebalance_timeout", "max_client_timeout"),),
    ApiKey.CREATE_TOPICS: (("timeout", "max_client_timeout"),),
    ApiKey.DELETE_TOPICS: (("timeout", "max_client_timeout"),),
    ApiKey.CREATE_PARTITIONS: (("timeout", "max_client_timeout"),),
    ApiKey.DELETE_RECORDS: (("timeout", "max_client_timeout"),),
}

_ZERO = datetime.timedelta(0)


def clamp_timeouts(limits: Limits, api_key: int, entity: Any) -> tuple[Any, list[str]]:
    """``entity`` with its client-given timeouts within bounds (negative → 0, huge → the
    limit), and the names of the fields that were changed."""
    rules = CLAMPED_TIMEOUTS.get(api_key)
    if not rules:
        return entity, []
    changes: dict[str, datetime.timedelta] = {}
    for name, limit in rules:
        value = getattr(entity, name, None)
        if not isinstance(value, datetime.timedelta):
            continue  # not in this version
        bound = datetime.timedelta(seconds=getattr(limits, limit))
        if value < _ZERO:
            changes[name] = _ZERO
        elif value > bound:
            changes[name] = bound
    if not changes:
        return entity, []
    return dataclasses.replace(entity, **changes), sorted(changes)
