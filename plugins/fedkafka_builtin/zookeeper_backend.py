"""The metadata backend ``zookeeper`` (kazoo): the fleet default.

Layout under ``root`` (default ``/fedkafka``), the incremental layout of
:mod:`federation.store.maplayout` (ADR 0016)::

    <root>/map                         the map's index: version, document names (small)
    <root>/mapdocs/<document>          immutable documents: the base and one per shard
    <root>/members/<kind>/<member id>  ephemeral, JSON data given to register_member
    <root>/election/n_<sequence>       ephemeral sequential, data = controller member id

- ``publish`` is a compare-and-set twice over: the map version in the stored index
  must equal ``expected_version``, and the new documents and the index are written in
  one ZooKeeper transaction (multi) whose index ``set`` is conditioned on the znode
  version that was read (or a ``create`` for the first map), so two controllers racing
  cannot both win and readers see all of a change or none. A change too large for one
  request (the first publish of a big map) creates its documents in batches first
  (invisible until the index names them) and deletes them again if the index write loses.
- A ``<root>/map`` holding a whole map (format 1, the layout before) is read as it is
  and converted by the next publish (or :meth:`ZooKeeperBackend.migrate`).
- Watches are kazoo ``DataWatch`` es on the index; a thread per watch then reads only
  the documents whose name changed and delivers newer versions in order (versions it
  missed, e.g. while disconnected, are caught up by the same diff). While ZooKeeper is
  unreachable nothing is delivered (the watchers simply keep their last map); kazoo
  re-reads on reconnection. A map that cannot be read or validated is refused (the
  last one is kept) and reported by :meth:`ZooKeeperBackend.health`.
- Members are ephemeral znodes: a crashed process's members vanish with its session.
  After a session loss (``LOST``) this backend re-creates its members on reconnection.
- ``elect(member_id)`` is the classic recipe: the lowest ephemeral sequential node
  leads; a contender is not leader while its connection is suspended or lost.

No znode exceeds 1 MiB (ZooKeeper's default ``jute.maxbuffer``): documents hold ~20
topics each, the index a name per shard.

Znodes of the map are created by :meth:`ZooKeeperBackend._create_op` (with
``map_acl``), members and election nodes by ``kazoo``'s create with ``acl`` None
(the client's default ACL).
"""

from __future__ import annotations

import json
import os
import re
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
    RolledBackError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from federation.core.errors import ConfigError, FedKafkaError
from federation.core.model import FederationMap
from federation.plugin import hookimpl
from federation.store.maplayout import MapState, fetch_and_apply, parse_root, valid_doc_name
from federation.store.mapstore import (
    EMPTY_VERSION,
    BackendInfo,
    MapFormatError,
    VersionConflict,
)
from fedkafka_builtin import zookeeper_acl

__all__ = ["StoreUnavailableError", "ZooKeeperBackend", "ZooKeeperElection"]

log = structlog.get_logger(__name__)

_ELECTION_PREFIX = "n_"
#: Largest multi request this backend sends (ZooKeeper refuses requests > jute.maxbuffer).
_MAX_REQUEST_BYTES = 900_000


@hookimpl
def fedkafka_metadata_backends() -> list[BackendInfo]:
    return [BackendInfo("zookeeper", ZooKeeperBackend,
                        "ZooKeeper (kazoo): watches, ephemeral members, leader election "
                        "(fleet default)",
                        parse_location=parse_location,
                        example="zookeeper:127.0.0.1:2181/fedkafka")]


_FORMAT = ("zookeeper:HOST:PORT[,HOST:PORT][/ROOT][?ssl=true&ca=…] "
           "(e.g. zookeeper:127.0.0.1:2181/fedkafka)")


def parse_location(location: str, name: str = "store") -> dict[str, Any]:
    """``h1:2181,h2:2181/root[?ssl=true&ca=…]`` → this backend's options (the root
    defaults to ``/fedkafka``; the query: ZooKeeper over TLS, :func:`zookeeper_tls`).

    :raises ConfigError: naming ``name`` and the format.
    """
    rest, _, query = location.partition("?")  # TLS options (docs/security.md)
    m = re.fullmatch(r"([^/]+?)(/.*)?", rest)
    hosts = m.group(1) if m else ""
    if not hosts or not all(re.fullmatch(r"[\w.\-\[\]:]+:\d+", h) for h in hosts.split(",")):
        raise ConfigError(f"{name} 'zookeeper:{location}' must look like {_FORMAT}")
    root = (m.group(2) if m else None) or "/fedkafka"
    return {"hosts": hosts, "root": root.rstrip("/") or "/", **zookeeper_tls(query, name)}


# -- ZooKeeper over TLS ------------------------------------------------------------------------


_ZK_KEYS = ("ssl", "ca", "cert", "key", "check_hostname")


def zookeeper_tls(query: str, name: str = "store") -> dict[str, Any]:
    """The ZooKeeper backend's ``tls`` option from a store spec's query string.

    ``zookeeper:zk1:2281/fedkafka?ssl=true&ca=/ca.pem[&cert=/c.pem&key=/c.key]
    [&check_hostname=false]`` → ``{"tls": {...}}``; no query → ``{}``.
    """
    if not query:
        return {}
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ConfigError(f"{name}: the query {query!r} is not KEY=VALUE&...; write e.g. "
                          "?ssl=true&ca=/etc/fedkafka/tls/ca.pem") from None
    options = dict(pairs)
    unknown = sorted(set(options) - set(_ZK_KEYS))
    if unknown or len(options) != len(pairs):
        raise ConfigError(f"{name}: unknown or repeated ZooKeeper option(s) "
                          f"{', '.join(unknown) or query}; known: {', '.join(_ZK_KEYS)}")
    flags = {}
    for flag, default in (("ssl", "false"), ("check_hostname", "true")):
        value = options.get(flag, default).lower()
        if value not in ("true", "false"):
            raise ConfigError(f"{name}: {flag}={value!r} must be true or false")
        flags[flag] = value == "true"
    if not flags["ssl"]:
        raise ConfigError(f"{name}: ZooKeeper TLS options need ssl=true (got {query!r})")
    if bool(options.get("cert")) != bool(options.get("key")):
        raise ConfigError(f"{name}: cert and key go together (a client certificate needs "
                          "its key)")
    return {"tls": {"ca": options.get("ca"), "cert": options.get("cert"),
                    "key": options.get("key"), "check_hostname": flags["check_hostname"]}}


def kazoo_kwargs(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """KazooClient keyword arguments for the ZooKeeper backend's ``tls`` option."""
    if not settings:
        return {}
    return {"use_ssl": True, "ca": settings.get("ca"), "certfile": settings.get("cert"),
            "keyfile": settings.get("key"), "verify_certs": True,
            "check_hostname": bool(settings.get("check_hostname", True))}


class StoreUnavailableError(FedKafkaError):
    """ZooKeeper cannot be reached (or the session is gone) for this operation."""


class _Watch:
    """A DataWatch on the index and a thread delivering each newer map to one callback."""

    def __init__(self, backend: ZooKeeperBackend,
                 callback: Callable[[FederationMap], None],
                 initial: MapState | None = None) -> None:
        self._backend = backend
        self._callback = callback
        self._cancelled = threading.Event()
        self._poked = threading.Condition()
        self._pending: bytes | None = None
        self._dirty = False
        self._initial = initial  #: the backend's last read map, delivered first
        self._state: MapState | None = None
        self.last_map: FederationMap | None = None
        self.error: str | None = None  #: why the last map was refused or not read
        self.gaps = 0  #: times it found versions missed (caught up by the index diff)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"fedkafka-zk-watch:{backend.map_path}")
        self._thread.start()
        self._watch = DataWatch(backend.client, backend.map_path, self._on_data)

    def _on_data(self, data: bytes | None, _stat: Any) -> bool | None:
        """kazoo's callback (its thread: must not block): hand the index to our thread."""
        if self._cancelled.is_set():
            return False  # tells kazoo to stop watching
        if data:
            with self._poked:
                self._pending, self._dirty = data, True
                self._poked.notify()
        return None

    def _run(self) -> None:
        if self._initial is not None:
            self._deliver(None, self._initial)
        retry = False
        while not self._cancelled.is_set():
            with self._poked:
                self._poked.wait_for(lambda: self._dirty or self._cancelled.is_set(),
                                     timeout=1.0 if retry else None)
                if self._cancelled.is_set():
                    return
                data, self._pending = self._pending, None
                if not self._dirty and not retry:
                    continue
                self._dirty = False
            retry = False
            try:
                self._apply(data)
            except (StoreUnavailableError, KazooException) as e:
                self.error = f"cannot read the map: {e!r}"
                retry = True  # read again in a second (or at the next change)
            except Exception as e:  # a watch never dies; health() says why
                self.error = f"{type(e).__name__}: {e}"
                log.exception("map watch failed; keeping the last map")

    def _apply(self, data: bytes | None) -> None:
        backend = self._backend
        first = [data] if data else []

        def read_root() -> bytes | None:
            return first.pop() if first else backend._read_root()[0]

        before = self._state
        try:
            state = fetch_and_apply(before, read_root, backend._read_docs)
        except MapFormatError as e:
            self.error = f"refused the stored map: {e}"
            log.error("refusing an unreadable or invalid map; keeping the last map",
                      path=backend.map_path, error=str(e),
                      version=before.version if before is not None else None)
            return
        self.error = None
        if state is None or state is before or self._cancelled.is_set():
            return
        self._deliver(before, state)

    def _deliver(self, before: MapState | None, state: MapState) -> None:
        if before is not None and state.version > before.version + 1:
            self.gaps += 1
            log.info("map versions missed; caught up", version=state.version,
                     previous=before.version)
        self._state = state
        self.last_map = state.fmap
        self._backend._seen(state.version)
        try:
            self._callback(state.fmap)
        except Exception:
            log.exception("map watch callback failed", version=state.version)

    def cancel(self) -> None:
        self._cancelled.set()
        with self._poked:
            self._poked.notify_all()
        self._backend._forget(self)


class ZooKeeperBackend:
    """The ``zookeeper`` metadata backend (see the module docstring).

    :param hosts: ZooKeeper connect string, ``"host:port,host:port"``.
    :param root: the znode under which everything is kept.
    :param session_timeout: seconds; a crashed member disappears (and a crashed leader
        is replaced) about this long after it died. ZooKeeper clamps it to
        2..20 times its ``tickTime``.
    :param connect_timeout: seconds to wait for the first connection.
    :param tls: ZooKeeper over TLS (``ca``, ``cert``, ``key``, ``check_hostname``), from
        the store spec's query (:func:`federation.security.tls.zookeeper_tls`, docs/security.md).
    """

    name = "zookeeper"
    validates_publish = True  #: publish validates what changed (mapstore.update)

    def __init__(self, hosts: str = "127.0.0.1:2181", root: str = "/fedkafka", *,
                 session_timeout: float = 10.0, connect_timeout: float = 15.0,
                 tls: dict[str, Any] | None = None, auth: str | None = None,
                 auth_file: str | None = None, acl: Any = None) -> None:
        if not root.startswith("/") or (root.endswith("/") and root != "/"):
            raise ConfigError(f"zookeeper root {root!r} must be an absolute znode path "
                                "like '/fedkafka'")
        self.hosts = hosts
        self.root = root.rstrip("/") or ""
        self.map_path = f"{self.root}/map"
        self.docs_path = f"{self.root}/mapdocs"
        #: ACL of the map's znodes (None: the client's default); see _create_op
        self.map_acl: list[Any] | None = None
        # Digest auth and ACLs (plugins/fedkafka_builtin/zookeeper_acl.py, ADR 0019); never logged.
        credentials = zookeeper_acl.resolve_auth(auth, auth_file)
        self.acl_policy = zookeeper_acl.AclPolicy.resolve(acl)
        if self.acl_policy is not None:
            self.map_acl = self.acl_policy.map_acl()
        self._own_acl = (zookeeper_acl.own_acl(self.acl_policy) if credentials else None)
        self._map_state: MapState | None = None  #: the map this backend last read or wrote
        self._state_lock = threading.Lock()
        self.members_path = f"{self.root}/members"
        self.election_path = f"{self.root}/election"
        self._guard = threading.Lock()
        self._write_lock = threading.Lock()
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
            **kazoo_kwargs(tls),  # ZooKeeper over TLS: the store spec's ?ssl=true&ca=…
            auth_data=[("digest", credentials)] if credentials else None,
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
        zookeeper_acl.ensure_paths(self)

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
        if type(e).__name__ == "NoAuthError":  # the store's ACLs (zookeeper_acl)
            return StoreUnavailableError(
                f"ZooKeeper at {self.hosts} refused to {what}: this client's identity is not "
                "allowed to (the store's ACLs: only the controller and the admin write the "
                "map; check the backend's auth_file / $FEDKAFKA_ZK_AUTH_FILE)")
        return StoreUnavailableError(
            f"ZooKeeper at {self.hosts} is unavailable ({type(e).__name__}) while trying to "
            f"{what}; check that it runs and retry"
        )

    # -- maps ------------------------------------------------------------------------------

    def _create_op(self, txn: Any, path: str, data: bytes,
                   acl: list[Any] | None = None) -> None:
        """Add the creation of a map znode to the transaction ``txn``, with ``acl``
        (default ``map_acl``; None there: the client's default ACL)."""
        txn.create(path, data, acl=acl if acl is not None else self.map_acl)

    def _read_root(self) -> tuple[bytes | None, int | None]:
        """The index's bytes and znode version ((None, None) when there is no index)."""
        try:
            data, stat = self._op("read the map", self.client.get_async, self.map_path)
        except NoNodeError:
            return None, None
        except KazooException as e:
            raise self._unavailable("read the map", e) from e
        return (data or None), stat.version

    def _read_docs(self, names: list[str]) -> dict[str, bytes | None]:
        """Documents by name, read in parallel (None for a missing one)."""
        if self._state != KazooState.CONNECTED:
            raise StoreUnavailableError(f"ZooKeeper at {self.hosts} is not connected")
        for name in names:
            if not valid_doc_name(name):
                raise MapFormatError(f"bad map document name {name!r}")
        pending = [(name, self.client.get_async(f"{self.docs_path}/{name}")) for name in names]
        out: dict[str, bytes | None] = {}
        for name, result in pending:
            try:
                out[name] = result.get(timeout=self._op_timeout)[0]
            except NoNodeError:
                out[name] = None
            except KazooTimeoutError as e:
                raise self._unavailable("read the map documents", e) from e
            except KazooException as e:
                raise self._unavailable("read the map documents", e) from e
        return out

    def _sync(self) -> tuple[MapState | None, int | None]:
        """The stored map (reading only what changed since this backend last read it) and
        the znode version of the index it came from."""
        with self._state_lock:
            seen: list[int | None] = [None]

            def read_root() -> bytes | None:
                data, seen[0] = self._read_root()
                return data

            state = fetch_and_apply(self._map_state, read_root, self._read_docs)
            self._map_state = state
        if state is not None:
            self._seen(state.version)
        return state, seen[0]

    def load(self) -> FederationMap | None:
        state, _ = self._sync()
        return state.fmap if state is not None else None

    def _commit(self, what: str, ops: list[tuple[str, str, bytes, int | None]]) -> None:
        """One transaction: ("create", path, data, None) / ("set", path, data, version).

        :raises BadVersionError, NodeExistsError, NoNodeError: the first failing op's error.
        """
        txn = self.client.transaction()
        for kind, path, data, version in ops:
            if kind == "create":
                self._create_op(txn, path, data)
            else:
                txn.set_data(path, data, version=-1 if version is None else version)
        results = self._op(what, txn.commit_async)
        for r in results:
            if isinstance(r, Exception) and not isinstance(r, RolledBackError):
                raise r

    def publish(self, fmap: FederationMap, expected_version: int) -> int:
        with self._write_lock:
            current, znode_version = self._sync()
            actual = current.version if current is not None else EMPTY_VERSION
            if actual != expected_version:
                raise VersionConflict(expected_version, actual)
            base = current or MapState.from_legacy(FederationMap(EMPTY_VERSION))
            plan = base.plan(fmap)
            version = plan.index.version
            what = f"publish map version {version}"
            creates = [("create", f"{self.docs_path}/{name}", data, None)
                       for name, data in plan.docs.items()]
            index_op = (("create", self.map_path, plan.index_bytes, None)
                        if znode_version is None
                        else ("set", self.map_path, plan.index_bytes, znode_version))
            batches: list[list[tuple[str, str, bytes, int | None]]] = [[]]
            size = 0
            for op in creates:
                if batches[-1] and size + len(op[2]) + 200 > _MAX_REQUEST_BYTES:
                    batches.append([])
                    size = 0
                batches[-1].append(op)
                size += len(op[2]) + 200
            if size + len(plan.index_bytes) + 200 > _MAX_REQUEST_BYTES:
                batches.append([])
            early, last = batches[:-1], batches[-1]
            created: list[str] = []
            try:
                for batch in early:  # invisible to readers until the index names them
                    self._commit(what, batch)
                    created += [op[1] for op in batch]
                self._commit(what, [*last, index_op])
            except (BadVersionError, NodeExistsError):
                self._delete_quietly(created)
                stored, _ = self._sync()
                raise VersionConflict(expected_version,
                                      stored.version if stored is not None else EMPTY_VERSION
                                      ) from None
            except KazooException as e:
                self._delete_quietly(created)
                raise self._unavailable(what, e) from e
            except StoreUnavailableError:
                self._delete_quietly(created)
                raise
            with self._state_lock:
                self._map_state = plan.state
            self._delete_quietly([f"{self.docs_path}/{n}" for n in plan.delete])
        self._seen(version)
        log.info("map published", hosts=self.hosts, path=self.map_path, version=version,
                 documents=len(plan.docs), topics_changed=len(plan.topics))
        return version

    def _delete_quietly(self, paths: list[str]) -> None:
        """Best-effort deletion of documents (retired ones, or those of a lost publish)."""
        pending = []
        for path in paths:
            try:
                pending.append(self.client.delete_async(path))
            except KazooException:
                return
        for result in pending:
            try:
                result.get(timeout=self._op_timeout)
            except (KazooException, KazooTimeoutError) as e:
                if not isinstance(e, NoNodeError):
                    log.info("could not delete a map document", error=repr(e))

    def migrate(self) -> int | None:
        """Convert a whole-map (format 1) ``<root>/map`` to this layout, as the next version.

        :returns: the new version, or None if there was nothing to convert.
        """
        raw, _ = self._read_root()
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
            initial = self._map_state
        w = _Watch(self, callback, initial)
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
                self._op(what, self.client.create_async, path, data, acl=self._own_acl,
                         ephemeral=True, makepath=True)
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
            errors = [w.error for w in self._watches if w.error]
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
        elif errors:
            status.update(ok=False, error=f"{errors[0]}; serving the last map "
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
                             acl=self._backend._own_acl, ephemeral=True, sequence=True,
                             makepath=True)
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
