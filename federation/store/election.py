"""Leader election for controllers: exactly one active, the others standing by.

A metadata backend that can elect a leader offers ``elect(member_id)`` returning a
:class:`LeaderElection`; how it elects is the backend plugin's business (the built-in
ZooKeeper backend uses ephemeral sequential znodes, the file backend an exclusive
``flock`` next to the map). :func:`elect_leader` asks the backend and refuses one that
cannot elect.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import structlog

from federation.core.errors import ConfigError

__all__ = [
    "ElectingBackend",
    "LeaderElection",
    "elect_leader",
]

log = structlog.get_logger(__name__)

@runtime_checkable
class LeaderElection(Protocol):
    """One contender's view of an election (thread-safe)."""

    @property
    def member_id(self) -> str:
        """The id this contender runs under."""
        ...

    @property
    def is_leader(self) -> bool:
        """Whether this contender leads *now* (False while the store is unreachable)."""
        ...

    def wait(self, timeout: float | None = None) -> bool:
        """Block until this contender leads or ``timeout`` seconds pass; returns is_leader."""
        ...

    def leader(self) -> str | None:
        """The member id of the current leader, if known."""
        ...

    def cancel(self) -> None:
        """Leave the election (resign if leading); idempotent."""
        ...


@runtime_checkable
class ElectingBackend(Protocol):
    """A metadata backend with its own leader election."""

    def elect(self, member_id: str) -> LeaderElection:
        """Join the controller election as ``member_id``."""
        ...


def elect_leader(backend: object, member_id: str) -> LeaderElection:
    """Join the controller election of ``backend``.

    :raises ConfigError: if the backend offers no election (running two controllers on
        it would let both act).
    """
    if isinstance(backend, ElectingBackend):
        return backend.elect(member_id)
    raise ConfigError(
        f"metadata backend {getattr(backend, 'name', type(backend).__name__)!r} offers no "
        "leader election (no elect() method); use a backend that does for the controller"
    )
