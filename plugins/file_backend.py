"""Metadata backend ``file``: the map in one JSON file, for a single machine.

- The map is written atomically (temporary file, fsync, ``os.replace``, fsync of the
  directory), so a reader sees the old or the new document, never half of one.
- ``publish`` is a compare-and-set on the version, under an ``fcntl`` lock on
  ``<map file>.lock``: concurrent controllers (processes or threads) cannot both win.
- Watches poll the file (inode, size, mtime) every ``poll_interval`` seconds in a daemon
  thread. A file changed within the last second is re-read even if its signature looks
  the same, since mtime granularity can be coarse and inodes are reused (Git's "racily
  clean" rule).
- Members live in ``members.json`` next to the map, each with a heartbeat timestamp
  refreshed by a daemon thread; a member whose heartbeat is older than ``member_ttl``
  is not live (so a crashed process's members expire, as ZooKeeper's ephemeral ones do).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog

from federation.mapstore import (
    EMPTY_VERSION,
    BackendInfo,
    MapFormatError,
    VersionConflict,
    dumps,
    loads,
)
from federation.model import FederationMap
from federation.plugin import hookimpl

log = structlog.get_logger(__name__)

MEMBERS_FILE = "members.json"

_Members = dict[str, dict[str, dict[str, Any]]]  # kind -> member id -> entry
RACY_SECONDS = 1.0


@hookimpl
def fedkafka_metadata_backends() -> list[BackendInfo]:
    return [BackendInfo("file", FileBackend,
                        "one JSON file, watched by polling (single machine, development)")]


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


class _Watch:
    """One polling thread delivering each new map version to one callback."""

    def __init__(self, backend: FileBackend, callback: Callable[[FederationMap], None],
                 interval: float) -> None:
        self._backend = backend
        self._callback = callback
        self._interval = interval
        self._stop = threading.Event()
        self._version = EMPTY_VERSION
        self._signature: tuple[int, int, int] | None = None
        self._raw: bytes | None = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"fedkafka-file-watch:{backend.path}")
        self._thread.start()

    def cancel(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=max(1.0, 5 * self._interval))

    def _run(self) -> None:
        while True:
            self._poll()
            if self._stop.wait(self._interval):
                return

    def _poll(self) -> None:
        path = self._backend.path
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("cannot stat map file", path=str(path), error=str(e))
            return
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        racy = time.time() - st.st_mtime < RACY_SECONDS
        if signature == self._signature and not racy:
            return
        try:
            raw = path.read_bytes()
        except OSError as e:
            log.warning("cannot read map file", path=str(path), error=str(e))
            return
        self._signature = signature
        if raw == self._raw:
            return
        self._raw = raw
        try:
            fmap = loads(raw)
        except MapFormatError as e:
            log.error("ignoring unreadable map file; keeping the last map",
                      path=str(path), error=str(e))
            return
        if fmap.version <= self._version or self._stop.is_set():
            return
        self._version = fmap.version
        try:
            self._callback(fmap)
        except Exception:
            log.exception("map watch callback failed", version=fmap.version)


class FileBackend:
    """The ``file`` metadata backend (see the module docstring).

    :param path: the map file; its directory is created if missing.
    :param poll_interval: seconds between checks of the file by each watch.
    :param member_ttl: seconds after which a member without heartbeat is not live.
    """

    name = "file"

    def __init__(self, path: str | os.PathLike[str], *, poll_interval: float = 0.1,
                 member_ttl: float = 10.0) -> None:
        if poll_interval <= 0 or member_ttl <= 0:
            raise ValueError("poll_interval and member_ttl must be > 0")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.members_path = self.path.with_name(MEMBERS_FILE)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._members_lock_path = self.members_path.with_name(MEMBERS_FILE + ".lock")
        self.poll_interval = poll_interval
        self.member_ttl = member_ttl
        self._guard = threading.Lock()  # flock does not exclude threads sharing a process
        self._watches: list[_Watch] = []
        self._own: dict[tuple[str, str], dict[str, Any]] = {}
        self._heartbeat: threading.Thread | None = None
        self._closed = threading.Event()

    # -- maps ------------------------------------------------------------------------------

    def load(self) -> FederationMap | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return loads(raw)

    def publish(self, fmap: FederationMap, expected_version: int) -> int:
        with self._guard, _locked(self._lock_path):
            current = self.load()
            actual = current.version if current is not None else EMPTY_VERSION
            if actual != expected_version:
                raise VersionConflict(expected_version, actual)
            new = fmap.with_version(expected_version + 1)
            new.validate()
            _atomic_write(self.path, dumps(new))
        log.info("map published", path=str(self.path), version=new.version)
        return new.version

    def watch(self, callback: Callable[[FederationMap], None]) -> _Watch:
        w = _Watch(self, callback, self.poll_interval)
        self._watches.append(w)
        return w

    # -- members ---------------------------------------------------------------------------

    def _read_members(self) -> _Members:
        try:
            data = json.loads(self.members_path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("members file unreadable; starting it afresh", path=str(self.members_path))
            return {}
        return data if isinstance(data, dict) else {}

    def _write_members(self, change: Callable[[_Members], None]) -> None:
        with self._guard, _locked(self._members_lock_path):
            members = self._read_members()
            change(members)
            _atomic_write(self.members_path, json.dumps(members, indent=2, sort_keys=True) + "\n")

    def register_member(self, kind: str, member_id: str, data: Mapping[str, Any]) -> None:
        if self._closed.is_set():
            raise RuntimeError("backend is closed")
        record = dict(data)

        def change(members: _Members) -> None:
            # Under the guard, as the heartbeat and close() read and clear self._own.
            if self._closed.is_set():  # close() ran since the check above
                raise RuntimeError("backend is closed")
            self._own[(kind, member_id)] = record
            self._refresh_own(members)
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(target=self._beat, daemon=True,
                                                   name=f"fedkafka-file-heartbeat:{self.path}")
                self._heartbeat.start()

        self._write_members(change)

    def _refresh_own(self, members: _Members) -> None:
        now = time.time()
        for (kind, member_id), record in self._own.items():
            members.setdefault(kind, {})[member_id] = {"data": record, "heartbeat": now,
                                                       "pid": os.getpid()}

    def _beat(self) -> None:
        while not self._closed.wait(self.member_ttl / 3):
            try:
                self._write_members(self._refresh_own)
            except OSError as e:
                log.warning("member heartbeat failed", path=str(self.members_path), error=str(e))

    def members(self, kind: str) -> dict[str, dict[str, Any]]:
        deadline = time.time() - self.member_ttl
        entries = self._read_members().get(kind, {})
        return {member_id: dict(entry.get("data", {}))
                for member_id, entry in entries.items()
                if float(entry.get("heartbeat", 0)) >= deadline}

    # -- lifecycle -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        status: dict[str, Any] = {"backend": self.name, "path": str(self.path), "ok": True,
                                  "version": None, "watches": len(self._watches)}
        try:
            fmap = self.load()
        except (OSError, MapFormatError) as e:
            status.update(ok=False, error=str(e))
        else:
            status["version"] = fmap.version if fmap is not None else None
        if not os.access(self.path.parent, os.W_OK):
            status.update(ok=False, error=f"directory {self.path.parent} is not writable")
        return status

    def close(self) -> None:
        with self._guard:  # no register_member() adds a member after this
            if self._closed.is_set():
                return
            self._closed.set()
            withdraw = bool(self._own)
        for w in self._watches:
            w.cancel()
        self._watches.clear()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        if withdraw:

            def change(members: _Members) -> None:
                # Forgotten under the guard, in the same write that removes them: a
                # heartbeat still running (a join that timed out on a slow disk) then has
                # nothing left to refresh, and cannot bring the members back.
                for kind, member_id in self._own:
                    members.get(kind, {}).pop(member_id, None)
                self._own.clear()

            try:
                self._write_members(change)
            except OSError as e:
                log.warning("could not withdraw members", path=str(self.members_path),
                            error=str(e))
