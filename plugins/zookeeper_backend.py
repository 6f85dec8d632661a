"""The metadata backend ``zookeeper`` (kazoo): the fleet default.

Layout under ``root`` (default ``/fedkafka``)::

    <root>/map                         the map document (mapstore.dumps), one znode
    <root>/members/<kind>/<member id>  ephemeral, JSON data given to register_member
    <root>/election/n_<sequence>       ephemeral sequential, data = controller member id

- ``publish`` is a compare-and-set twice over: the map version inside the stored
  document must equal ``expected_version``, and the write is a ``set`` conditioned on
  the znode version that was read (or a ``create`` for the first map), so two
  controllers racing cannot both win.
- Watches are kazoo ``DataWatch`` es; each handle delivers only newer map versions and
  keeps the last map it delivered. While ZooKeeper is unreachable nothing is delivered
  (the watchers simply keep their last map); kazoo re-reads on reconnection.
- Members are ephemeral znodes: a crashed process's members vanish with its session.
  After a session loss (``LOST``) this backend re-creates its members on reconnection.
- ``elect(member_id)`` is the classic recipe: the lowest ephemeral sequential node
  leads; a contender is not leader while its connection is suspended or lost.

A map document must fit in one znode (1 MiB by default, ZooKeeper's ``jute.maxbuffer``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    KazooException,
    NodeExistsError,
    NoNodeError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from federation.errors import ConfigError, FedKafkaError
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

__all__ = ["StoreUnavailableError", "ZooKeeperBackend", "ZooKeeperElection"]

log = structlog.get_logger(__name__)

_ELECTION_PREFIX = "n_"


@hookimpl
def fedkafka_metadata_backends() -> list[BackendInfo]:
    return [BackendInfo("zookeeper", ZooKeeperBackend,
                        "ZooKeeper (kazoo): watches, ephemeral members, leader election "
                        "(fleet default)")]


class StoreUnavailableError(FedKafkaError):
    """ZooKeeper cannot be reached (or the session is gone) for this operation."""


class _Watch:
    """One DataWatch delivering each newer map version to one callback."""

    def __init__(self, backend: ZooKeeperBackend,
                 callback: Callable[[FederationMap], None]) -> None:
        self._backend = backend
        self._callback = callback
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self.last_map: FederationMap | None = None
        self._watch = DataWatch(backend.client, backend.map_path, self._on_data)

    def _on_data(self, data: bytes | None, _stat: Any) -> bool | None:
        if self._cancelled.is_set():
            return False  # tells kazoo to stop watching
        if not data:
            return None
        try:
            fmap = loads(data)
        except MapFormatError as e:
            log.error("ignoring unreadable map znode; keeping the last map",
                      path=self._backend.map_path, error=str(e))
            return None
        with self._lock:
            if self.last_map is not None and fmap.version <= self.last_map.version:
                return None
            self.last_map = fmap
        self._backend._seen(fmap.version)
        try:
            self._callback(fmap)
        except Exception:
            log.exception("map watch callback failed", version=fmap.version)
        return None

    def cancel(self) -> None:
        self._cancelled.set()
        self._backend._forget(self)


class ZooKeeperBackend:
    """The ``zookeeper`` metadata backend (see the module docstring).

    :param hosts: ZooKeeper connect string, ``"host:port,host:port"``.
    :param root: the znode under which everything is kept.
    :param session_timeout: seconds; a crashed member disappears (and a crashed leader
        is replaced) about this long after it died. ZooKeeper clamps it to
        2..20 times its ``tickTime``.
    :param connect_timeout: seconds to wait for the first connection.
    """

    name = "zookeeper"

    def __init__(self, hosts: str = "127.0.0.1:2181", root: str = "/fedkafka", *,
                 session_timeout: float = 10.0, connect_timeout: float = 15.0) -> None:
        if not root.startswith("/") or (root.endswith("/") and root != "/"):
            raise ConfigError(f"zookeeper root {root!r} must be an absolute znode path "
                                "like '/fedkafka'")
        self.hosts = hosts
        self.root = root.rstrip("/") or ""
        self.map_path = f"{self.root}/map"
        self.members_path = f"{self.root}/members"
        self.election_path = f"{self.root}/election"
        self._guard = threading.Lock()
        self._watches: list[_Watch] = []
        self._own: dict[tuple[str, str], bytes] = {}
        self._elections: list[ZooKeeperElection] = []
        self._state = KazooState.LOST
        self._lost_since_connect = False
        self._version: int | None = None
        self._closed = False
        self._op_timeout = max(1.0, session_timeout)
        self.client = KazooClient(
            hosts=hosts, timeout=session_timeout,
            connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 1.0},
        )
        self.client.add_listener(self._on_state)
        try:
            self.client.start(timeout=connect_timeout)
        except KazooTimeoutError:
            self.client.stop()
            self.client.close()
            raise StoreUnavailableError(
                f"cannot reach ZooKeeper at {hosts} within {connect_timeout:g}s; start it "
                "or fix the hosts (e.g. --store zookeeper:127.0.0.1:2181/fedkafka)"
            ) from None
        self._state = KazooState.CONNECTED
        for path in (self.members_path, self.election_path):
            self.client.ensure_path(path)

    # -- connection state ------------------------------------------------------------------

    def _on_state(self, state: str) -> None:
        """kazoo connection listener (must not block: work is spawned)."""
        previous, self._state = self._state, state
        if state != previous:
            log.info("zookeeper connection state", state=str(state).lower(), hosts=self.hosts)
        if state == KazooState.LOST:
            self._lost_since_connect = True
        elif state == KazooState.CONNECTED and self._lost_since_connect:
            self._lost_since_connect = False
            self.client.handler.spawn(self._restore_members)
        for election in list(self._elections):
            election._on_state(state)

    def _restore_members(self) -> None:
        with self._guard:
            own = dict(self._own)
        for (kind, member_id), data in own.items():
            try:
                self._put_member(kind, member_id, data)
            except KazooException as e:
                log.warning("could not re-register member", kind=kind, member_id=member_id,
                            error=repr(e))

    def _seen(self, version: int) -> None:
        with self._guard:
            if self._version is None or version > self._version:
                self._version = version

    def _forget(self, watch: _Watch) -> None:
        with self._guard:
            if watch in self._watches:
                self._watches.remove(watch)

    def _op(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a kazoo ``*_async`` call, failing fast instead of queueing while disconnected.

        (kazoo's blocking calls wait for a reconnection without bound.)
        """
        if self._state != KazooState.CONNECTED:
            raise StoreUnavailableError(
                f"ZooKeeper at {self.hosts} is not connected ({str(self._state).lower()}) "
                f"while trying to {what}; check that it runs and retry")
        try:
            return call(*args, **kwargs).get(timeout=self._op_timeout)
        except KazooTimeoutError as e:
            raise self._unavailable(what, e) from e

    def _unavailable(self, what: str, e: Exception) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"ZooKeeper at {self.hosts} is unavailable ({type(e).__name__}) while trying to "
            f"{what}; check that it runs and retry"
        )

    # -- maps ------------------------------------------------------------------------------

    def _read(self) -> tuple[FederationMap | None, int | None]:
        """The stored map and its znode version (None, None when there is no znode)."""
        try:
            data, stat = self._op("read the map", self.client.get_async, self.map_path)
        except NoNodeError:
            return None, None
        except KazooException as e:
            raise self._unavailable("read the map", e) from e
        if not data:
            return None, stat.version
        fmap = loads(data)
        self._seen(fmap.version)
        return fmap, stat.version

    def load(self) -> FederationMap | None:
        return self._read()[0]

    def publish(self, fmap: FederationMap, expected_version: int) -> int:
        current, znode_version = self._read()
        actual = current.version if current is not None else EMPTY_VERSION
        if actual != expected_version:
            raise VersionConflict(expected_version, actual)
        new = fmap.with_version(expected_version + 1)
        new.validate()
        data = dumps(new).encode()
        try:
            what = f"publish map version {new.version}"
            if znode_version is None:
                self._op(what, self.client.create_async, self.map_path, data, makepath=True)
            else:
                self._op(what, self.client.set_async, self.map_path, data,
                         version=znode_version)
        except (BadVersionError, NodeExistsError):
            stored = self.load()
            raise VersionConflict(expected_version,
                                  stored.version if stored is not None else EMPTY_VERSION
                                  ) from None
        except KazooException as e:
            raise self._unavailable(f"publish map version {new.version}", e) from e
        self._seen(new.version)
        log.info("map published", hosts=self.hosts, path=self.map_path, version=new.version)
        return new.version

    def watch(self, callback: Callable[[FederationMap], None]) -> _Watch:
        w = _Watch(self, callback)
        with self._guard:
            self._watches.append(w)
        return w

    # -- members ---------------------------------------------------------------------------

    def _member_path(self, kind: str, member_id: str) -> str:
        for part, what in ((kind, "kind"), (member_id, "member id")):
            if not part or "/" in part or part in (".", ".."):
                raise ValueError(f"member {what} {part!r} must be non-empty and without '/'")
        return f"{self.members_path}/{kind}/{member_id}"

    def _put_member(self, kind: str, member_id: str, data: bytes) -> None:
        path = self._member_path(kind, member_id)
        what = f"register member {kind}/{member_id}"
        session = self.client.client_id[0] if self.client.client_id else None
        for _ in range(3):
            try:
                self._op(what, self.client.create_async, path, data, ephemeral=True,
                         makepath=True)
                return
            except NodeExistsError:
                pass
            try:
                _, stat = self._op(what, self.client.get_async, path)
                if stat.ephemeralOwner == session:
                    self._op(what, self.client.set_async, path, data, version=stat.version)
                    return
                # Left by an earlier session of the same member (e.g. a restart before
                # the old session expired): take it over.
                self._op(what, self.client.delete_async, path, version=stat.version)
            except (NoNodeError, BadVersionError):
                continue
        raise StoreUnavailableError(f"could not register member {kind}/{member_id}: "
                                    "its znode keeps changing under us")

    def register_member(self, kind: str, member_id: str, data: Mapping[str, Any]) -> None:
        if self._closed:
            raise RuntimeError("backend is closed")
        raw = json.dumps(dict(data), sort_keys=True).encode()
        with self._guard:
            self._own[(kind, member_id)] = raw
        try:
            self._put_member(kind, member_id, raw)
        except KazooException as e:
            raise self._unavailable(f"register member {kind}/{member_id}", e) from e

    def members(self, kind: str) -> dict[str, dict[str, Any]]:
        base = f"{self.members_path}/{kind}"
        try:
            names = self._op(f"list {kind} members", self.client.get_children_async, base)
        except NoNodeError:
            return {}
        except KazooException as e:
            raise self._unavailable(f"list {kind} members", e) from e
        result: dict[str, dict[str, Any]] = {}
        for name in sorted(names):
            try:
                raw, _ = self._op(f"read member {kind}/{name}", self.client.get_async,
                                  f"{base}/{name}")
                value = json.loads(raw) if raw else {}
            except NoNodeError:
                continue  # went away meanwhile
            except ValueError:
                value = {}
            except KazooException as e:
                raise self._unavailable(f"read member {kind}/{name}", e) from e
            result[name] = value if isinstance(value, dict) else {}
        return result

    # -- leader election -------------------------------------------------------------------

    def elect(self, member_id: str) -> ZooKeeperElection:
        """Join the controller election as ``member_id`` (returns at once)."""
        election = ZooKeeperElection(self, member_id)
        with self._guard:
            self._elections.append(election)
        election._join()
        return election

    # -- lifecycle -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        state = str(self._state).lower()
        with self._guard:
            version = self._version
            watch_versions = [w.last_map.version for w in self._watches if w.last_map]
        if watch_versions:
            version = max(watch_versions + ([version] if version is not None else []))
        status: dict[str, Any] = {
            "backend": self.name, "hosts": self.hosts, "root": self.root or "/",
            "ok": self._state == KazooState.CONNECTED and not self._closed,
            "state": "closed" if self._closed else state, "version": version,
            "watches": len(watch_versions),
        }
        if self._state != KazooState.CONNECTED:
            status["error"] = (f"ZooKeeper connection {state}; serving the last map "
                               f"(version {version})")
        return status

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._guard:
            watches, self._watches = list(self._watches), []
            elections, self._elections = list(self._elections), []
            own, self._own = list(self._own), {}
        for w in watches:
            w.cancel()
        for election in elections:
            election.cancel()
        if self._state == KazooState.CONNECTED:
            for kind, member_id in own:
                try:
                    self._op("withdraw a member", self.client.delete_async,
                             self._member_path(kind, member_id))
                except NoNodeError:
                    pass
                except (KazooException, StoreUnavailableError) as e:
                    log.warning("could not withdraw member", kind=kind, member_id=member_id,
                                error=repr(e))
        self.client.stop()
        self.client.close()


class ZooKeeperElection:
    """Controller election on ZooKeeper: the lowest ephemeral sequential node leads."""

    def __init__(self, backend: ZooKeeperBackend, member_id: str) -> None:
        self._backend = backend
        self._member_id = member_id
        self._node: str | None = None
        self._children: list[str] = []
        self._connected = True
        self._cancelled = False
        self._cond = threading.Condition()
        self._watch: ChildrenWatch | None = None

    @property
    def member_id(self) -> str:
        return self._member_id

    def _join(self) -> None:
        client = self._backend.client
        data = json.dumps({"member_id": self._member_id, "host": socket.gethostname(),
                           "pid": os.getpid()}).encode()
        path = client.create(f"{self._backend.election_path}/{_ELECTION_PREFIX}", data,
                             ephemeral=True, sequence=True, makepath=True)
        with self._cond:
            self._node = path.rsplit("/", 1)[1]
        if self._watch is None:
            self._watch = ChildrenWatch(client, self._backend.election_path, self._on_children)
        else:
            self._refresh()

    def _refresh(self) -> None:
        try:
            children = self._backend.client.get_children(self._backend.election_path)
        except KazooException as e:
            log.warning("could not list election contenders", error=repr(e))
            return
        self._on_children(children)

    def _on_children(self, children: list[str]) -> bool | None:
        with self._cond:
            if self._cancelled:
                return False
            was = self._leading_locked()
            self._children = sorted(c for c in children if c.startswith(_ELECTION_PREFIX))
            now = self._leading_locked()
            self._cond.notify_all()
        if now != was:
            log.info("leadership changed", member_id=self._member_id, is_leader=now)
        return None

    def _on_state(self, state: str) -> None:
        with self._cond:
            was = self._leading_locked()
            self._connected = state == KazooState.CONNECTED
            lost = state == KazooState.LOST
            if lost:
                self._node = None  # the session, and so our node, is gone
            now = self._leading_locked()
            self._cond.notify_all()
        if now != was:
            log.info("leadership changed", member_id=self._member_id, is_leader=now,
                     zookeeper=str(state).lower())
        if state == KazooState.CONNECTED and not self._cancelled:
            if self._node is None:
                self._backend.client.handler.spawn(self._rejoin)
            else:
                self._backend.client.handler.spawn(self._refresh)

    def _rejoin(self) -> None:
        try:
            self._join()
        except KazooException as e:
            log.warning("could not rejoin the election", member_id=self._member_id,
                        error=repr(e))

    def _leading_locked(self) -> bool:
        return (not self._cancelled and self._connected and self._node is not None
                and bool(self._children) and self._children[0] == self._node)

    @property
    def is_leader(self) -> bool:
        with self._cond:
            return self._leading_locked()

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(self._leading_locked, timeout)

    def leader(self) -> str | None:
        with self._cond:
            children = list(self._children)
        if not children:
            return None
        try:
            raw, _ = self._backend._op("read the leader", self._backend.client.get_async,
                                       f"{self._backend.election_path}/{children[0]}")
            value = json.loads(raw)
        except (KazooException, StoreUnavailableError, ValueError):
            return None
        member = value.get("member_id") if isinstance(value, dict) else None
        return str(member) if member is not None else None

    def cancel(self) -> None:
        with self._cond:
            if self._cancelled:
                return
            self._cancelled = True
            node, self._node = self._node, None
            self._cond.notify_all()
        if node is not None:
            try:
                self._backend._op("leave the election", self._backend.client.delete_async,
                                  f"{self._backend.election_path}/{node}")
            except NoNodeError:
                pass
            except (KazooException, StoreUnavailableError) as e:
                log.warning("could not leave the election", error=repr(e))
        log.info("left the election", member_id=self._member_id)
