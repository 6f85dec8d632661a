"""Resource limits of one proxy: what a client connection may hold, and for how long.

Pure data and decisions (no I/O); :mod:`federation.proxy.server` applies them. Every limit
has a safe default and, when hit, closes the one connection concerned with a logged reason
and a ``fedkafka_proxy_closed_connections_total{reason}`` count; other clients are
unaffected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from federation.errors import ConfigError

__all__ = ["Limits", "idle_reason"]


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
            want = float if isinstance(getattr(cls(), name), float) else int
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or (
                    want is int and not isinstance(value, int)):
                raise ConfigError(f"limits.{name} must be a positive "
                                  f"{'number of seconds' if want is float else 'integer'}, "
                                  f"got {value!r}")
            values[name] = want(value)
        return cls(**values)


def idle_reason(limits: Limits, now: float, last_activity: float,
                frame_started: float | None, busy: bool) -> str | None:
    """Why a connection must be closed now (``slow_frame``, ``idle``), or None."""
    if frame_started is not None and now - frame_started > limits.frame_timeout:
        return "slow_frame"
    if not busy and now - last_activity > limits.idle_timeout:
        return "idle"
    return None
