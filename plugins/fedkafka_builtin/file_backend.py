"""Metadata backend ``file``: the map in a directory, for a single machine.

Layout (the incremental layout of :mod:`federation.store.maplayout`, ADR 0016)::

    <path>                  the index: version, shard document names (small, mutable)
    <path>.d/<document>     immutable documents: the base (clusters, pools, ...) and one
                            per non-empty shard of topics
    <path>.lock             publishers' lock
    members.json            live members

- A publish writes the changed documents under new names, then replaces the index
  atomically (temporary file, fsync, ``os.replace``, fsync of the directory), so a reader
  sees the old or the new map, never half of one. Documents replaced by a change are
  deleted by a later publish, :data:`federation.store.maplayout.RETIRE_GRACE_S` later.
- ``publish`` is a compare-and-set on the version, under an ``fcntl`` lock on
  ``<path>.lock``: concurrent controllers (processes or threads) cannot both win.
- A ``<path>`` holding a whole map (format 1, the layout before) is read as it is and
  converted by the next publish (or :meth:`FileBackend.migrate`).
- Watches poll the index (inode, size, mtime) every ``poll_interval`` seconds in a
  daemon thread and read only the documents whose name changed. An index changed within
  the last second is re-read even if its signature looks the same, since mtime
  granularity can be coarse and inodes are reused (Git's "racily clean" rule). An index
  or document that cannot be read or validated is refused: the watch keeps its last map
  and :meth:`FileBackend.health` reports why until a good map arrives.
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
from typing import IO, Any

import structlog

from federation.core.model import FederationMap
from federation.plugin import hookimpl
from federation.store.maplayout import (
    MAX_NODE_BYTES,
    MapState,
    fetch_and_apply,
    parse_root,
    valid_doc_name,
)
from federation.store.mapstore import (
    EMPTY_VERSION,
    BackendInfo,
    MapFormatError,
    VersionConflict,
)

log = structlog.get_logger(__name__)

MEMBERS_FILE = "members.json"
#: The lock file of :class:`FileLockElection`, next to the map.
FILE_LOCK_NAME = "controller.leader.lock"

_Members = dict[str, dict[str, dict[str, Any]]]  # kind -> member id -> entry
RACY_SECONDS = 1.0


@hookimpl
def fedkafka_metadata_backends() -> list[BackendInfo]:
    return [BackendInfo("file", FileBackend,
                        "JSON files in a directory (an index and documents), watched by "
                        "polling (single machine, development)",
                        parse_location=lambda location, _name: {"path": location},
                        example="file:/path/to/map.json")]


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync it, rename it to ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fdatasync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _atomic_write(path: Path, text: str | bytes) -> None:
    _write_file(path, text.encode() if isinstance(text, str) else text)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


class _Watch:
    """One polling thread delivering each new map version to one callback, in order."""

    def __init__(self, backend: FileBackend, callback: Callable[[FederationMap], None],
                 interval: float, initial: MapState | None = None) -> None:
        self._backend = backend
        self._callback = callback
        self._interval = interval
        self._stop = threading.Event()
        self._initial = initial  #: the backend's last read map, delivered first
        self._state: MapState | None = None
        self._signature: tuple[int, int, int] | None = None
        self._raw: bytes | None = None
        self.error: str | None = None  #: why the last index or document was refused
        self.gaps = 0  #: times it found versions missed (caught up by the index diff)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"fedkafka-file-watch:{backend.path}")
        self._thread.start()

    @property
    def version(self) -> int | None:
        return self._state.version if self._state is not None else None

    def cancel(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=max(1.0, 5 * self._interval))

    def _run(self) -> None:
        if self._initial is not None:
            self._deliver(None, self._initial)
        while True:
            try:
                self._poll()
            except Exception as e:  # a watch never dies; health() says why
                self.error = f"{type(e).__name__}: {e}"
                log.exception("map watch failed; keeping the last map", path=str(
                    self._backend.path))
            if self._stop.wait(self._interval):
                return

    def _poll(self) -> None:
        path = self._backend.path
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        except OSError as e:
            self.error = f"cannot stat the map index {path}: {e}"
            log.warning("cannot stat map index", path=str(path), error=str(e))
            return
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        racy = time.time() - st.st_mtime < RACY_SECONDS
        if signature == self._signature and not racy:
            return
        try:
            raw = path.read_bytes()
        except OSError as e:
            self.error = f"cannot read the map index {path}: {e}"
            log.warning("cannot read map index", path=str(path), error=str(e))
            return
        self._signature = signature
        if raw == self._raw:
            return
        before = self._state
        first = [raw]

        def read_root() -> bytes | None:
            return first.pop() if first else self._backend._read_root()

        try:
            state = fetch_and_apply(before, read_root, self._backend._read_docs)
        except (MapFormatError, OSError) as e:
            self.error = f"refused the stored map: {e}"
            log.error("refusing an unreadable or invalid map; keeping the last map",
                      path=str(path), error=str(e),
                      version=before.version if before is not None else None)
            return
        self._raw = raw
        self.error = None
        if state is None or state is before or self._stop.is_set():
            return
        self._deliver(before, state)

    def _deliver(self, before: MapState | None, state: MapState) -> None:
        if before is not None and state.version > before.version + 1:
            self.gaps += 1
            log.info("map versions missed; caught up", version=state.version,
                     previous=before.version)
        self._state = state
        try:
            self._callback(state.fmap)
        except Exception:
            log.exception("map watch callback failed", version=state.version)


class FileBackend:
    """The ``file`` metadata backend (see the module docstring).

    :param path: the map file; its directory is created if missing.
    :param poll_interval: seconds between checks of the file by each watch.
    :param member_ttl: seconds after which a member without heartbeat is not live.
    """

    name = "file"
    validates_publish = True  #: publish validates what changed (mapstore.update)

    def __init__(self, path: str | os.PathLike[str], *, poll_interval: float = 0.02,
                 member_ttl: float = 10.0) -> None:
        if poll_interval <= 0 or member_ttl <= 0:
            raise ValueError("poll_interval and member_ttl must be > 0")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.docs_path = self.path.with_name(self.path.name + ".d")
        self._state: MapState | None = None
        self._state_lock = threading.Lock()
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

    def _read_root(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def _read_docs(self, names: list[str]) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for name in names:
            if not valid_doc_name(name):
                raise MapFormatError(f"bad map document name {name!r}")
            try:
                out[name] = (self.docs_path / name).read_bytes()
            except FileNotFoundError:
                out[name] = None
        return out

    def _sync(self) -> MapState | None:
        """The stored map, reading only what changed since this backend last read it."""
        with self._state_lock:
            state = fetch_and_apply(self._state, self._read_root, self._read_docs)
            self._state = state
            return state

    def load(self) -> FederationMap | None:
        state = self._sync()
        return state.fmap if state is not None else None

    def publish(self, fmap: FederationMap, expected_version: int) -> int:
        with self._guard, _locked(self._lock_path):
            current = self._sync()
            actual = current.version if current is not None else EMPTY_VERSION
            if actual != expected_version:
                raise VersionConflict(expected_version, actual)
            base = current or MapState.from_legacy(FederationMap(EMPTY_VERSION))
            plan = base.plan(fmap)
            self.docs_path.mkdir(parents=True, exist_ok=True)
            for name, data in plan.docs.items():
                _write_file(self.docs_path / name, data)
            if plan.docs:
                _fsync_dir(self.docs_path)
            _atomic_write(self.path, plan.index_bytes)  # the publish: one rename
            with self._state_lock:
                self._state = plan.state
            for name in plan.delete:
                with contextlib.suppress(FileNotFoundError):
                    (self.docs_path / name).unlink()
        log.info("map published", path=str(self.path), version=plan.index.version,
                 documents=len(plan.docs), topics_changed=len(plan.topics))
        return plan.index.version

    def migrate(self) -> int | None:
        """Convert a whole-map (format 1) file to this layout, as the next version.

        :returns: the new version, or None if there was nothing to convert.
        """
        with self._guard, _locked(self._lock_path):
            raw = self._read_root()
            if raw is None or not isinstance(parse_root(raw), FederationMap):
                return None
        fmap = self.load()
        assert fmap is not None
        try:
            return self.publish(fmap, fmap.version)
        except VersionConflict:
            return None  # another writer published (and so converted) meanwhile

    def watch(self, callback: Callable[[FederationMap], None]) -> _Watch:
        with self._state_lock:
            initial = self._state
        w = _Watch(self, callback, self.poll_interval, initial)
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
        """Cheap: reads the index only (the documents are checked by the watches)."""
        status: dict[str, Any] = {"backend": self.name, "path": str(self.path), "ok": True,
                                  "version": None, "watches": len(self._watches)}
        try:
            raw = self._read_root()
            if raw is not None and len(raw) > MAX_NODE_BYTES:  # a whole format-1 map
                status["version"] = self._state.version if self._state is not None else None
            else:
                root = parse_root(raw) if raw is not None else None
                status["version"] = root.version if root is not None else None
        except (OSError, MapFormatError) as e:
            status.update(ok=False, error=str(e))
        for w in list(self._watches):
            if w.error is not None:
                status.update(ok=False, error=f"{w.error}; serving the last map "
                                              f"(version {w.version})")
        if not os.access(self.path.parent, os.W_OK):
            status.update(ok=False, error=f"directory {self.path.parent} is not writable")
        return status

    def elect(self, member_id: str) -> FileLockElection:
        """The controller election: an exclusive ``flock`` next to the map, which the
        kernel releases when the holding process dies (a real election on one machine)."""
        return FileLockElection(self.path.with_name(FILE_LOCK_NAME), member_id)

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
