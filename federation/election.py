"""Leader election for controllers: exactly one active, the others standing by.

A metadata backend that can elect a leader offers ``elect(member_id)`` returning a
:class:`LeaderElection` (the ``zookeeper`` backend does, with ephemeral sequential
znodes). :func:`elect_leader` picks that, or for the ``file`` backend a
:class:`FileLockElection`: an exclusive ``flock`` on a file next to the map, which the
kernel releases when the holding process dies, so it is a real election on one machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

import structlog

from federation.errors import ConfigError

__all__ = [
    "ElectingBackend",
    "FileLockElection",
    "LeaderElection",
    "elect_leader",
]

log = structlog.get_logger(__name__)

#: The lock file of :class:`FileLockElection`, next to the file backend's map.
FILE_LOCK_NAME = "controller.leader.lock"


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


class FileLockElection:
    """Leadership = holding an exclusive ``flock`` on ``lock_path``.

    A background thread tries a non-blocking lock every ``retry_interval`` seconds; the
    kernel drops the lock when the leader's process exits, however it exits.

    :param lock_path: the lock file (created if missing).
    :param member_id: this contender's id, written into the file while leading.
    :param retry_interval: seconds between attempts of a standby.
    """

    def __init__(self, lock_path: str | os.PathLike[str], member_id: str, *,
                 retry_interval: float = 0.5) -> None:
        self.path = Path(lock_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._member_id = member_id
        self._interval = retry_interval
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._file: IO[str] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"fedkafka-file-election:{member_id}")
        self._thread.start()

    @property
    def member_id(self) -> str:
        return self._member_id

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._leading.wait(timeout)

    def leader(self) -> str | None:
        if self.is_leader:
            return self._member_id
        try:
            return self.path.read_text().strip() or None
        except OSError:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            f = open(self.path, "a+")  # noqa: SIM115 - held open while leading
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                self._stop.wait(self._interval)
                continue
            f.seek(0)
            f.truncate()
            f.write(self._member_id + "\n")
            f.flush()
            self._file = f
            self._leading.set()
            log.info("elected leader", member_id=self._member_id, lock=str(self.path))
            return

    def cancel(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        f, self._file = self._file, None
        self._leading.clear()
        if f is not None:
            with contextlib.suppress(OSError):
                f.seek(0)
                f.truncate()
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()
            log.info("resigned leadership", member_id=self._member_id)


def elect_leader(backend: object, member_id: str) -> LeaderElection:
    """Join the controller election of ``backend``.

    :raises ConfigError: if the backend offers no election (running two controllers on
        it would let both act).
    """
    if isinstance(backend, ElectingBackend):
        return backend.elect(member_id)
    path = getattr(backend, "path", None)
    if getattr(backend, "name", None) == "file" and isinstance(path, Path):
        return FileLockElection(path.with_name(FILE_LOCK_NAME), member_id)
    raise ConfigError(
        f"metadata backend {getattr(backend, 'name', type(backend).__name__)!r} offers no "
        "leader election (no elect() method); use the 'zookeeper' or 'file' backend "
        "for the controller"
    )
