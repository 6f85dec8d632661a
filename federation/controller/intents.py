"""Intents: every change of the map goes through the active controller (ADR 0015).

The active controller is the map's only writer. The admin CLI and the proxies do not
publish maps; they *submit an intent* — a kind (``create_topics``, ``delete_topic``,
``set_cluster_state``…), its arguments as JSON and a unique id — to the active
controller, which validates it, applies it with :mod:`federation.clusters.admin` (physical topics
and the map's compare-and-set) and answers. Submitters therefore need only read access
to the store: they find the controller's intent endpoint in its member record
(``members("controller")``: ``{"leader": true, "intents": "http://host:port"}``).

Transport: one HTTP/1.1 POST per intent (``/v1/intents``, JSON both ways), authenticated
by a bearer token. The controller reads ``identity → token`` from its tokens file; the
identity decides what may be asked: ``admin`` anything, ``proxy`` only what a Kafka
client may ask a proxy for (:data:`PROXY_KINDS`).

Exactly once: the map publish that applies an intent records its id
(``FederationMap.intents``) in the same compare-and-set (:data:`admin.APPLYING_INTENT`),
and refuses an id it recorded already. A submitter that lost its answer (the controller
died, the connection broke) resubmits *the same id* until a controller answers; the new
leader answers ``duplicate`` for an applied id, or applies an id it has never seen.
Every publish of an intent also checks, inside the compare-and-set, that this controller
still leads (:data:`admin.WRITE_GUARD`), so a deposed controller publishes nothing.

Bootstrap: while no controller is registered in the store at all (a fresh store, a
federation run without a controller, the unit tests), the admin CLI applies the change
itself (``allow_direct``); proxies never do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from federation.clusters import admin
from federation.core.errors import ConfigError
from federation.core.model import (
    AclRule,
    AutoCreatePolicy,
    FederationMap,
    LogicalTopic,
    ProxyEndpoint,
)
from federation.plugin import Plugins, get_plugins
from federation.store.mapstore import MetadataBackend

__all__ = [
    "ADMIN",
    "CONFIG_DIR_ENV",
    "KINDS",
    "PROXY",
    "PROXY_KINDS",
    "TOKENS_FILE_ENV",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "IntentRefusedError",
    "IntentServer",
    "NoControllerError",
    "Submitter",
    "add_acls",
    "add_cluster",
    "add_partitions",
    "add_user",
    "controller_endpoint",
    "create_topic",
    "create_topics",
    "delete_topic",
    "forget_store_credentials",
    "has_controller",
    "load_tokens",
    "new_tokens",
    "remove_acls",
    "remove_cluster",
    "remove_route",
    "remove_user",
    "request_rebalance",
    "resolve_token",
    "retire_cluster",
    "save_store_credentials",
    "set_auto_create",
    "set_cluster_state",
    "set_pool",
    "set_route",
    "set_topic_config",
    "start_drain",
    "store_token",
    "submit",
]

log = structlog.get_logger(__name__)

#: A submitter's token, or a file holding it (the CLI also reads the local federation's).
TOKEN_ENV = "FEDKAFKA_INTENT_TOKEN"  # noqa: S105 - a variable name
TOKEN_FILE_ENV = "FEDKAFKA_INTENT_TOKEN_FILE"  # noqa: S105 - a variable name
#: The controller's tokens file (``{"admin": TOKEN, "proxy": TOKEN}``) when its config names none.
TOKENS_FILE_ENV = "FEDKAFKA_INTENT_TOKENS_FILE"

ADMIN = "admin"
PROXY = "proxy"
#: What a proxy may ask for: what Kafka clients may ask it (authorized by the proxy).
PROXY_KINDS = frozenset({"create_topics", "delete_topic", "add_partitions", "set_topic_config"})
PATH = "/v1/intents"
MAX_BODY = 4 << 20  #: bytes of one intent request
READ_TIMEOUT = 10.0  #: seconds a client may take to send its request


class NoControllerError(admin.AdminError):
    """No active controller answered in time (none running, or a failover too long)."""

    error_code = 41  # NOT_CONTROLLER: retriable for Kafka clients


class IntentRefusedError(admin.AdminError):
    """The controller refused the submitter (authentication, permission, bad request)."""


# -- tokens ----------------------------------------------------------------------------------


def load_tokens(path: str | os.PathLike[str]) -> dict[str, str]:
    """The controller's tokens file: ``{"admin": TOKEN, "proxy": TOKEN, ...}``.

    :raises ConfigError: naming the file and what is wrong (never a token).
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"intent tokens file {p} does not exist; create it "
                          '(JSON {"admin": TOKEN, "proxy": TOKEN}, mode 0600)') from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"intent tokens file {p} is not readable JSON ({type(e).__name__})"
                          "; fix the file") from None
    if (not isinstance(data, dict) or not data
            or not all(isinstance(k, str) and isinstance(v, str) and len(v) >= 16
                       for k, v in data.items())):
        raise ConfigError(f"intent tokens file {p} must be a JSON object of identity → "
                          "token strings of at least 16 characters, e.g. "
                          '{"admin": "...", "proxy": "..."}')
    unknown = sorted(set(data) - {ADMIN, PROXY})
    if unknown:
        raise ConfigError(f"intent tokens file {p}: unknown identity {unknown[0]!r}; "
                          f"valid: {ADMIN}, {PROXY}")
    return dict(data)


def resolve_token(token: str | None = None, token_file: str | os.PathLike[str] | None = None
                  ) -> str | None:
    """A submitter's token: the argument, the file, ``$FEDKAFKA_INTENT_TOKEN``, the file
    named by ``$FEDKAFKA_INTENT_TOKEN_FILE``; None when there is none."""
    if token:
        return token
    if token_file is None and os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    path = token_file or os.environ.get(TOKEN_FILE_ENV)
    if not path:
        return None
    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"intent token file {path} is not readable ({e.strerror}); "
                          f"fix ${TOKEN_FILE_ENV} or the file") from None
    return text or None


# Per-store credentials of this user (as ~/.pgpass): ``local up`` writes the tokens of the
# federation it starts there, so the CLI and proxies of that store find them by its spec.

CONFIG_DIR_ENV = "FEDKAFKA_CONFIG_DIR"


def _credentials_path(store: str) -> Path:
    base = os.environ.get(CONFIG_DIR_ENV) or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "fedkafka")
    digest = hashlib.sha256(store.encode()).hexdigest()[:24]
    return Path(base) / "stores" / f"{digest}.json"


def save_store_credentials(store: str, tokens: Mapping[str, str]) -> Path:
    """Remember ``tokens`` (identity → token) for ``store``, readable by this user only."""
    path = _credentials_path(store)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"store": store, "tokens": dict(tokens)}, f)
    os.replace(tmp, path)
    return path


def forget_store_credentials(store: str) -> None:
    with contextlib.suppress(OSError):
        _credentials_path(store).unlink()


def store_token(store: str | None, identity: str) -> str | None:
    """``identity``'s token remembered for ``store`` (:func:`save_store_credentials`)."""
    if not store:
        return None
    try:
        data = json.loads(_credentials_path(store).read_text())
    except (OSError, ValueError):
        return None
    token = (data.get("tokens") or {}).get(identity) if data.get("store") == store else None
    return token if isinstance(token, str) else None


def new_tokens() -> dict[str, str]:
    """Fresh random tokens for every identity."""
    return {ADMIN: secrets.token_urlsafe(32), PROXY: secrets.token_urlsafe(32)}


# -- the controller's side -------------------------------------------------------------------


Apply = Callable[[MetadataBackend, Mapping[str, Any], Plugins], Awaitable[dict[str, Any]]]


def _str(args: Mapping[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise admin.InvalidRequestError(f"intent field {name!r} must be a non-empty string")
    return value


def _int(args: Mapping[str, Any], name: str) -> int:
    value = args.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise admin.InvalidRequestError(f"intent field {name!r} must be an integer")
    return value


def _strmap(args: Mapping[str, Any], name: str) -> dict[str, str] | None:
    value = args.get(name)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise admin.InvalidRequestError(f"intent field {name!r} must map strings to strings")
    return dict(value)


def _error_json(e: admin.AdminError) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(e).__name__, "code": e.error_code, "message": str(e)}
    if isinstance(e, admin.BrokerRefusedError):
        out["broker_message"] = e.broker_message
    return out


def _error_from_json(data: Mapping[str, Any]) -> admin.AdminError:
    kind = str(data.get("type", "AdminError"))
    message = str(data.get("message", "refused by the controller"))
    code = int(data.get("code", -1))
    if kind == "BrokerRefusedError":
        return admin.BrokerRefusedError(message, code, data.get("broker_message"))
    from federation.controller import users

    cls = getattr(admin, kind, None) or getattr(users, kind, None) or globals().get(kind)
    if not (isinstance(cls, type) and issubclass(cls, admin.AdminError)) or kind in (
            "IntentAppliedError",):
        error = admin.AdminError(message)
        error.error_code = code
        return error
    try:
        return cls(message)
    except TypeError:
        error = admin.AdminError(message)
        error.error_code = code
        return error


async def _apply_create_topics(backend: MetadataBackend, args: Mapping[str, Any],
                               plugins: Plugins) -> dict[str, Any]:
    topics = args.get("topics")
    if not isinstance(topics, list) or not topics:
        raise admin.InvalidRequestError("intent field 'topics' must be a non-empty list")
    specs = []
    for t in topics:
        if not isinstance(t, dict):
            raise admin.InvalidRequestError("intent field 'topics' must list objects")
        replication = t.get("replication")
        layout = t.get("layout")
        if layout is not None and not (isinstance(layout, list) and all(
                isinstance(x, list) and len(x) == 2 and isinstance(x[0], str)
                and isinstance(x[1], int) for x in layout)):
            raise admin.InvalidRequestError("intent field 'layout' must list "
                                            "[cluster, physical partition] pairs")
        specs.append(admin.TopicSpec(_str(t, "name"), _int(t, "partitions"),
                                     str(t.get("strategy") or "contiguous"),
                                     _strmap(t, "config"),
                                     None if replication is None else int(replication),
                                     None if layout is None else [tuple(x) for x in layout]))
    outcomes = await admin.create_topics(backend, specs, plugins=plugins)
    return {"topics": [{"name": s.name} if not isinstance(o, admin.AdminError)
                       else {"name": s.name, "error": _error_json(o)}
                       for s, o in zip(specs, outcomes, strict=True)]}


async def _apply_delete_topic(backend: MetadataBackend, args: Mapping[str, Any],
                              plugins: Plugins) -> dict[str, Any]:
    deleted = await admin.delete_topic(backend, _str(args, "name"), plugins=plugins)
    return {"leftovers": [list(x) for x in deleted.leftovers]}


async def _apply_add_partitions(backend: MetadataBackend, args: Mapping[str, Any],
                                plugins: Plugins) -> dict[str, Any]:
    await admin.add_partitions(backend, _str(args, "name"), _int(args, "count"),
                               plugins=plugins)
    return {}


async def _apply_set_topic_config(backend: MetadataBackend, args: Mapping[str, Any],
                                  plugins: Plugins) -> dict[str, Any]:
    await admin.set_topic_config(backend, _str(args, "name"), _strmap(args, "config") or {},
                                 plugins=plugins)
    return {}


async def _apply_set_auto_create(backend: MetadataBackend, args: Mapping[str, Any],
                                 plugins: Plugins) -> dict[str, Any]:
    policy = args.get("policy")
    if not isinstance(policy, dict):
        raise admin.InvalidRequestError("intent field 'policy' must be an object")
    try:
        parsed = AutoCreatePolicy.from_dict(policy)
    except ValueError as e:
        raise admin.InvalidRequestError(str(e)) from None
    await admin.set_auto_create(backend, parsed, plugins=plugins)
    return {}


def _rules(args: Mapping[str, Any]) -> list[AclRule]:
    rules = args.get("rules")
    if not isinstance(rules, list):
        raise admin.InvalidRequestError("intent field 'rules' must be a list")
    try:
        return [AclRule.from_dict(r, f"rules[{i}]") for i, r in enumerate(rules)]
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise admin.InvalidRequestError(str(e)) from None


async def _apply_add_acls(backend: MetadataBackend, args: Mapping[str, Any],
                          plugins: Plugins) -> dict[str, Any]:
    _, added = await admin.add_acls(backend, _rules(args), plugins=plugins)
    return {"rules": [r.to_dict() for r in added]}


async def _apply_remove_acls(backend: MetadataBackend, args: Mapping[str, Any],
                             plugins: Plugins) -> dict[str, Any]:
    _, removed = await admin.remove_acls(backend, _rules(args), plugins=plugins)
    return {"rules": [r.to_dict() for r in removed]}


async def _apply_add_cluster(backend: MetadataBackend, args: Mapping[str, Any],
                             plugins: Plugins) -> dict[str, Any]:
    await admin.add_cluster(backend, _str(args, "id"), _str(args, "bootstrap"),
                            _int(args, "weight"), state=_str(args, "state"),
                            security=_strmap(args, "security"),
                            coordination=bool(args.get("coordination")),
                            probe_first=bool(args.get("probe", True)), plugins=plugins)
    return {}


async def _apply_set_cluster_state(backend: MetadataBackend, args: Mapping[str, Any],
                                   plugins: Plugins) -> dict[str, Any]:
    await admin.set_cluster_state(backend, _str(args, "cluster"), _str(args, "state"),
                                  plugins=plugins)
    return {}


async def _apply_remove_cluster(backend: MetadataBackend, args: Mapping[str, Any],
                                plugins: Plugins) -> dict[str, Any]:
    await admin.remove_cluster(backend, _str(args, "cluster"), plugins=plugins)
    return {}


async def _apply_set_pool(backend: MetadataBackend, args: Mapping[str, Any],
                          plugins: Plugins) -> dict[str, Any]:
    raw = args.get("endpoints")
    if not isinstance(raw, list):
        raise admin.InvalidRequestError("intent field 'endpoints' must be a list")
    try:
        endpoints = [ProxyEndpoint(int(e["node_id"]), str(e["host"]), int(e["port"]),
                                   frozenset(e.get("roles", ()))) for e in raw]
    except (KeyError, TypeError, ValueError) as e:
        raise admin.InvalidRequestError(f"intent field 'endpoints': {e}") from None
    await admin.set_pool(backend, _str(args, "name"), endpoints, plugins=plugins)
    return {}


async def _apply_set_route(backend: MetadataBackend, args: Mapping[str, Any],
                           plugins: Plugins) -> dict[str, Any]:
    role = args.get("role")
    await admin.set_route(backend, _str(args, "pattern"), _str(args, "pool"),
                          None if role is None else str(role), plugins=plugins)
    return {}


async def _apply_remove_route(backend: MetadataBackend, args: Mapping[str, Any],
                              plugins: Plugins) -> dict[str, Any]:
    await admin.remove_route(backend, _str(args, "pattern"), plugins=plugins)
    return {}


async def _apply_put_user(backend: MetadataBackend, args: Mapping[str, Any],
                          plugins: Plugins) -> dict[str, Any]:
    from federation.controller import users
    from federation.core.credentials import UserCredentials

    name = _str(args, "name")
    raw = args.get("credentials")
    if not isinstance(raw, dict):
        raise admin.InvalidRequestError("intent field 'credentials' must be an object")
    try:
        creds = UserCredentials.from_dict(raw, f"user {name!r}")
        creds.validate(name)
    except ValueError as e:
        raise admin.InvalidRequestError(str(e)) from None
    _, created = await users.put_user(backend, name, creds, plugins=plugins)
    return {"created": created}


async def _apply_remove_user(backend: MetadataBackend, args: Mapping[str, Any],
                             plugins: Plugins) -> dict[str, Any]:
    from federation.controller import users

    await users.remove_user(backend, _str(args, "name"), plugins=plugins)
    return {}


async def _apply_start_drain(backend: MetadataBackend, args: Mapping[str, Any],
                             plugins: Plugins) -> dict[str, Any]:
    from federation.controller import elastic

    await elastic.start_drain(backend, _str(args, "cluster"))
    return {}


async def _apply_retire_cluster(backend: MetadataBackend, args: Mapping[str, Any],
                                plugins: Plugins) -> dict[str, Any]:
    from federation.controller import elastic

    await elastic.retire_cluster(backend, _str(args, "cluster"), force=bool(args.get("force")))
    return {}


async def _apply_rebalance(backend: MetadataBackend, args: Mapping[str, Any],
                           plugins: Plugins) -> dict[str, Any]:
    from federation.controller import elastic

    topics = args.get("topics")
    if topics is not None and not (isinstance(topics, list)
                                   and all(isinstance(t, str) for t in topics)):
        raise admin.InvalidRequestError("intent field 'topics' must be a list of names")
    moves = await elastic.request_rebalance(backend, topics)
    return {"moves": [{"topic": m.topic, "partition": m.partition, "target": m.target,
                       "reason": m.reason} for m in moves]}


#: intent kind → how the controller applies it.
KINDS: dict[str, Apply] = {
    "create_topics": _apply_create_topics,
    "delete_topic": _apply_delete_topic,
    "add_partitions": _apply_add_partitions,
    "set_topic_config": _apply_set_topic_config,
    "set_auto_create": _apply_set_auto_create,
    "add_acls": _apply_add_acls,
    "remove_acls": _apply_remove_acls,
    "add_cluster": _apply_add_cluster,
    "set_cluster_state": _apply_set_cluster_state,
    "remove_cluster": _apply_remove_cluster,
    "set_pool": _apply_set_pool,
    "set_route": _apply_set_route,
    "remove_route": _apply_remove_route,
    "put_user": _apply_put_user,
    "remove_user": _apply_remove_user,
    "start_drain": _apply_start_drain,
    "retire_cluster": _apply_retire_cluster,
    "rebalance": _apply_rebalance,
}


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: dict[str, Any]


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


class IntentServer:
    """The controller's intent endpoint: a small HTTP/1.1 server on its event loop.

    :param backend: the store the controller writes.
    :param tokens: identity → token (:func:`load_tokens`).
    :param is_leader: whether this controller leads now (checked again inside every
        compare-and-set through :data:`admin.WRITE_GUARD`).
    """

    def __init__(self, backend: MetadataBackend, tokens: Mapping[str, str],
                 is_leader: Callable[[], bool], *, plugins: Plugins | None = None,
                 host: str = "127.0.0.1", port: int = 0,
                 leader_id: Callable[[], str | None] = lambda: None) -> None:
        self.backend = backend
        self._tokens = {identity: token.encode() for identity, token in tokens.items()}
        self.is_leader = is_leader
        self.leader_id = leader_id
        self.plugins = plugins or get_plugins()
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._lock = asyncio.Lock()  # one intent at a time: each sees the last one's map
        self.applied = 0
        self.duplicates = 0

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as e:
            raise ConfigError(f"cannot serve intents on {self.host}:{self.port} "
                              f"({e.strerror}); change 'intent_listen'") from None
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def _identity(self, header: str | None) -> str | None:
        if not header or not header.startswith("Bearer "):
            return None
        given = header[len("Bearer "):].strip().encode()
        found = None
        for identity, token in self._tokens.items():
            if hmac.compare_digest(given, token):
                found = identity
        return found

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await asyncio.wait_for(self._read(reader), READ_TIMEOUT)
            if isinstance(reply, tuple):
                identity, body = reply
                reply = await self.handle(identity, body)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            reply = _Reply(400, {"error": {"type": "IntentRefusedError", "code": 42,
                                           "message": "malformed or incomplete request"}})
        try:
            data = json.dumps(reply.body).encode()
            writer.write(f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Error')}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                         "Connection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _read(self, reader: asyncio.StreamReader
                    ) -> _Reply | tuple[str, dict[str, Any]]:
        line = (await reader.readuntil(b"\r\n")).decode("latin-1").split()
        headers: dict[str, str] = {}
        while True:
            raw = await reader.readuntil(b"\r\n")
            if raw == b"\r\n":
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
            if len(headers) > 64:
                raise ValueError("too many headers")
        if len(line) != 3 or line[1] != PATH:
            return _Reply(404, {"error": {"type": "IntentRefusedError", "code": 42,
                                          "message": f"POST {PATH} only"}})
        if line[0] != "POST":
            return _Reply(405, {"error": {"type": "IntentRefusedError", "code": 42,
                                          "message": f"POST {PATH} only"}})
        identity = self._identity(headers.get("authorization"))
        if identity is None:  # checked before the body is read
            return _Reply(401, {"error": {"type": "IntentRefusedError", "code": 58,
                                          "message": "missing or wrong intent token"}})
        length = int(headers.get("content-length", "-1"))
        if not 0 <= length <= MAX_BODY:
            return _Reply(413, {"error": {"type": "IntentRefusedError", "code": 42,
                                          "message": f"an intent is 0..{MAX_BODY} bytes"}})
        body = json.loads(await reader.readexactly(length))
        if not isinstance(body, dict):
            raise ValueError("not an object")
        return identity, body

    async def handle(self, identity: str, body: Mapping[str, Any]) -> _Reply:
        """Apply one intent as ``identity``: the reply's status and JSON body."""
        intent_id, kind, args = body.get("id"), body.get("kind"), body.get("args", {})
        if not isinstance(intent_id, str) or not 8 <= len(intent_id) <= 64 or not isinstance(
                args, dict):
            return _Reply(400, {"error": {"type": "InvalidRequestError", "code": 42,
                                          "message": "an intent needs an 'id' (8-64 chars), "
                                          "a 'kind' and 'args' (an object)"}})
        apply = KINDS.get(kind) if isinstance(kind, str) else None
        if apply is None:
            return _Reply(400, {"error": {"type": "InvalidRequestError", "code": 42,
                                          "message": f"unknown intent kind {kind!r}; valid: "
                                          f"{', '.join(sorted(KINDS))}"}})
        if identity != ADMIN and kind not in PROXY_KINDS:
            return _Reply(403, {"error": {"type": "IntentRefusedError", "code": 31,
                                          "message": f"identity {identity!r} may not submit "
                                          f"{kind!r} intents"}})
        async with self._lock:
            if not self.is_leader():
                return _Reply(503, {"error": {"type": "NoControllerError", "code": 41,
                                              "message": "this controller is not the active "
                                              "one", "leader": self.leader_id()}})
            fmap = await asyncio.to_thread(self.backend.load)
            if fmap is not None and intent_id in fmap.intents:
                self.duplicates += 1
                return _Reply(200, {"status": "duplicate", "version": fmap.intents[intent_id],
                                    "result": {}})
            token = admin.APPLYING_INTENT.set(intent_id)
            guard = admin.WRITE_GUARD.set(self.is_leader)
            try:
                result = await apply(self.backend, args, self.plugins)
            except admin.IntentAppliedError as e:
                self.duplicates += 1
                return _Reply(200, {"status": "duplicate", "version": e.version, "result": {}})
            except admin.NotLeaderError as e:
                return _Reply(503, {"error": _error_json(e)})
            except admin.AdminError as e:
                return _Reply(409, {"error": _error_json(e)})
            except Exception as e:
                log.exception("intent failed", intent=intent_id, kind=kind)
                return _Reply(500, {"error": {"type": "AdminError", "code": -1,
                                              "message": f"{type(e).__name__}: {e}"}})
            finally:
                admin.WRITE_GUARD.reset(guard)
                admin.APPLYING_INTENT.reset(token)
            after = await asyncio.to_thread(self.backend.load)
            version = after.intents.get(intent_id, after.version) if after else 0
            self.applied += 1
            log.info("intent applied", intent=intent_id, kind=kind, identity=identity,
                     version=version)
            return _Reply(200, {"status": "applied", "version": version, "result": result})


# -- the submitter's side --------------------------------------------------------------------


def controller_endpoint(backend: MetadataBackend) -> tuple[bool, str | None]:
    """(whether any controller is registered, the leading one's intent endpoint or None)."""
    members = backend.members("controller")
    for data in members.values():
        if data.get("leader") and isinstance(data.get("intents"), str):
            return True, str(data["intents"])
    return bool(members), None


def has_controller(backend: MetadataBackend) -> bool:
    """Whether any controller is registered in the store (leading or standing by)."""
    return bool(backend.members("controller"))


async def _post(endpoint: str, token: str, body: bytes, timeout: float
                ) -> tuple[int, dict[str, Any]]:
    rest = endpoint.removeprefix("http://")
    host, _, port = rest.rpartition(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    try:
        writer.write(f"POST {PATH} HTTP/1.1\r\nHost: {rest}\r\n"
                     f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, sep, payload = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ConnectionError("incomplete answer")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(payload)


async def submit(backend: MetadataBackend, kind: str, args: Mapping[str, Any], *,
                 token: str | None = None, timeout: float = 120.0,
                 intent_id: str | None = None) -> dict[str, Any]:
    """Submit an intent to the active controller and wait for its answer and for the map
    that applied it (this process's ``backend.load()`` returns it or a newer one).

    Resubmits the same id through failovers and broken connections until ``timeout``.

    :returns: ``{"status": "applied"|"duplicate", "version": V, "result": {...}}``.
    :raises admin.AdminError: the controller's refusal (the same class as
        :mod:`federation.clusters.admin` raises), or :class:`NoControllerError` after ``timeout``.
    """
    token = resolve_token(token)
    if token is None:
        raise ConfigError(f"no intent token: set ${TOKEN_FILE_ENV} (a file holding the token "
                          f"of the controller's tokens file) or ${TOKEN_ENV}")
    intent_id = intent_id or uuid.uuid4().hex
    body = json.dumps({"id": intent_id, "kind": kind, "args": dict(args)}).encode()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay, last = 0.05, "no controller registered in the store"
    while True:
        _, endpoint = await asyncio.to_thread(controller_endpoint, backend)
        if endpoint is not None:
            try:
                status, answer = await _post(endpoint, token, body,
                                             max(1.0, deadline - loop.time()))
            except (OSError, TimeoutError, ValueError, IndexError) as e:
                last = f"{endpoint}: {type(e).__name__}: {e}"
            else:
                if status == 200:
                    await _await_version(backend, int(answer.get("version", 0)), deadline)
                    return answer
                error = answer.get("error") or {}
                if status != 503:
                    raise _error_from_json(error)
                last = str(error.get("message", "not the active controller"))
        else:
            last = "no controller leads (an election is under way, or none runs)"
        if loop.time() >= deadline:
            raise NoControllerError(f"intent {kind} ({intent_id}) not acknowledged within "
                                    f"{timeout:.0f}s: {last}; is a controller running? "
                                    "(`fedkafka status`)")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def _await_version(backend: MetadataBackend, version: int, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        fmap = await asyncio.to_thread(backend.load)
        if (fmap is not None and fmap.version >= version) or loop.time() >= deadline:
            return
        await asyncio.sleep(0.02)


# -- typed operations (what admin's callers call instead of writing the map) -----------------


@dataclass(frozen=True, slots=True)
class Submitter:
    """How a caller changes the map: by intents (``token``), or — ``allow_direct`` and no
    controller registered at all — directly (the bootstrap path of the admin CLI)."""

    token: str | None = None
    allow_direct: bool = False
    timeout: float = 120.0


_DEFAULT = Submitter()


async def _direct(backend: MetadataBackend, via: Submitter) -> bool:
    return via.allow_direct and not await asyncio.to_thread(has_controller, backend)


async def _map(backend: MetadataBackend) -> FederationMap:
    return await admin._load(backend)


def create_topics_args(before: FederationMap, specs: Sequence[admin.TopicSpec], *,
                       plugins: Plugins | None = None) -> dict[str, Any]:
    """The ``create_topics`` intent's arguments, with this process's layout of each topic
    as planned on ``before`` (used if the controller lacks the strategy plugin). No I/O."""

    def layout(spec: admin.TopicSpec) -> list[list[Any]] | None:
        try:
            topic = admin.plan_create_topic(before, spec.name, spec.partitions, spec.strategy,
                                            spec.config, plugins=plugins)
        except admin.AdminError:
            return None  # the controller gives the reason
        return [[p.active.cluster, p.active.partition] for p in topic.partitions]

    return {"topics": [
        {"name": s.name, "partitions": s.partitions, "strategy": s.strategy,
         "config": None if s.config is None else dict(s.config),
         "replication": s.replication, "layout": layout(s)} for s in specs]}


def create_topics_outcome(fmap: FederationMap, specs: Sequence[admin.TopicSpec],
                          answer: Mapping[str, Any]) -> list[LogicalTopic | admin.AdminError]:
    """Each topic's outcome of a ``create_topics`` intent, from the controller's ``answer``
    and the map that applied it (``fmap``). No I/O."""
    results = (answer.get("result") or {}).get("topics")
    out: list[LogicalTopic | admin.AdminError] = []
    for i, spec in enumerate(specs):
        entry = results[i] if isinstance(results, list) and i < len(results) else {}
        if entry.get("error"):
            out.append(_error_from_json(entry["error"]))
        elif spec.name in fmap.topics:
            out.append(fmap.topics[spec.name])
        else:  # a duplicate whose topic is gone again
            out.append(admin.UnknownTopicError(f"topic {spec.name!r} was created and is "
                                               "gone again"))
    return out


async def create_topics(backend: MetadataBackend, specs: Sequence[admin.TopicSpec], *,
                        via: Submitter = _DEFAULT, plugins: Plugins | None = None
                        ) -> list[LogicalTopic | admin.AdminError]:
    """:func:`federation.clusters.admin.create_topics` through the controller."""
    if await _direct(backend, via):
        return await admin.create_topics(backend, specs, plugins=plugins)
    before = await _map(backend)
    answer = await submit(backend, "create_topics",
                          create_topics_args(before, specs, plugins=plugins),
                          token=via.token, timeout=via.timeout)
    return create_topics_outcome(await _map(backend), specs, answer)


async def create_topic(backend: MetadataBackend, name: str, partitions: int,
                       strategy: str = "contiguous", config: Mapping[str, str] | None = None,
                       replication: int | None = None, *, via: Submitter = _DEFAULT,
                       plugins: Plugins | None = None) -> LogicalTopic:
    """:func:`federation.clusters.admin.create_topic` through the controller."""
    [result] = await create_topics(backend, [admin.TopicSpec(name, partitions, strategy,
                                                             config, replication)],
                                   via=via, plugins=plugins)
    if isinstance(result, admin.AdminError):
        raise result
    return result


async def delete_topic(backend: MetadataBackend, name: str, *, via: Submitter = _DEFAULT,
                       plugins: Plugins | None = None) -> admin.Deleted:
    """:func:`federation.clusters.admin.delete_topic` through the controller."""
    if await _direct(backend, via):
        return await admin.delete_topic(backend, name, plugins=plugins)
    topic = admin._topic(await _map(backend), name)
    answer = await submit(backend, "delete_topic", {"name": name}, token=via.token,
                          timeout=via.timeout)
    leftovers = (answer.get("result") or {}).get("leftovers") or []
    return admin.Deleted(topic, tuple((str(c), str(t)) for c, t in leftovers))


async def add_partitions(backend: MetadataBackend, name: str, new_count: int, *,
                         via: Submitter = _DEFAULT, plugins: Plugins | None = None
                         ) -> LogicalTopic:
    if await _direct(backend, via):
        return await admin.add_partitions(backend, name, new_count, plugins=plugins)
    await submit(backend, "add_partitions", {"name": name, "count": new_count},
                 token=via.token, timeout=via.timeout)
    return admin._topic(await _map(backend), name)


async def set_topic_config(backend: MetadataBackend, name: str, config: Mapping[str, str], *,
                           via: Submitter = _DEFAULT, plugins: Plugins | None = None
                           ) -> LogicalTopic:
    if await _direct(backend, via):
        return await admin.set_topic_config(backend, name, config, plugins=plugins)
    current = admin._topic(await _map(backend), name)
    if dict(current.config) == dict(config):
        return current  # nothing to change: no intent
    await submit(backend, "set_topic_config", {"name": name, "config": dict(config)},
                 token=via.token, timeout=via.timeout)
    return admin._topic(await _map(backend), name)


async def set_auto_create(backend: MetadataBackend, policy: AutoCreatePolicy, *,
                          via: Submitter = _DEFAULT, plugins: Plugins | None = None
                          ) -> FederationMap:
    if await _direct(backend, via):
        return await admin.set_auto_create(backend, policy, plugins=plugins)
    admin._strategy(plugins or get_plugins(), policy.strategy)
    await submit(backend, "set_auto_create", {"policy": policy.to_dict()}, token=via.token,
                 timeout=via.timeout)
    return await _map(backend)


async def add_acls(backend: MetadataBackend, rules: Sequence[AclRule], *,
                   via: Submitter = _DEFAULT, plugins: Plugins | None = None
                   ) -> tuple[FederationMap, list[AclRule]]:
    if await _direct(backend, via):
        return await admin.add_acls(backend, rules, plugins=plugins)
    wanted = admin._valid_rules(rules)
    answer = await submit(backend, "add_acls", {"rules": [r.to_dict() for r in wanted]},
                          token=via.token, timeout=via.timeout)
    added = [AclRule.from_dict(r) for r in (answer.get("result") or {}).get("rules", [])]
    return await _map(backend), added


async def remove_acls(backend: MetadataBackend, rules: Sequence[AclRule], *,
                      via: Submitter = _DEFAULT, plugins: Plugins | None = None
                      ) -> tuple[FederationMap, list[AclRule]]:
    if await _direct(backend, via):
        return await admin.remove_acls(backend, rules, plugins=plugins)
    wanted = admin._valid_rules(rules)
    answer = await submit(backend, "remove_acls", {"rules": [r.to_dict() for r in wanted]},
                          token=via.token, timeout=via.timeout)
    removed = [AclRule.from_dict(r) for r in (answer.get("result") or {}).get("rules", [])]
    return await _map(backend), removed


async def add_cluster(backend: MetadataBackend, cluster_id: str, bootstrap: str, weight: int = 1,
                      *, state: str = "active", security: Mapping[str, str] | None = None,
                      coordination: bool = False, probe_first: bool = True,
                      via: Submitter = _DEFAULT, plugins: Plugins | None = None
                      ) -> Any:
    """:func:`federation.clusters.admin.add_cluster`; the first cluster of an empty store is the
    bootstrap (no controller can run without a map) and is added directly."""
    fmap = await asyncio.to_thread(backend.load)
    if fmap is None or await _direct(backend, via):
        return await admin.add_cluster(backend, cluster_id, bootstrap, weight, state=state,
                                       security=security, coordination=coordination,
                                       probe_first=probe_first, plugins=plugins)
    await submit(backend, "add_cluster", {
        "id": cluster_id, "bootstrap": bootstrap, "weight": weight, "state": str(state),
        "security": dict(security or {}), "coordination": coordination,
        "probe": probe_first}, token=via.token, timeout=via.timeout)
    return (await _map(backend)).clusters[cluster_id]


async def set_cluster_state(backend: MetadataBackend, cluster_id: str, state: str, *,
                            via: Submitter = _DEFAULT, plugins: Plugins | None = None) -> Any:
    if await _direct(backend, via):
        return await admin.set_cluster_state(backend, cluster_id, state, plugins=plugins)
    await submit(backend, "set_cluster_state", {"cluster": cluster_id, "state": str(state)},
                 token=via.token, timeout=via.timeout)
    return admin._cluster(await _map(backend), cluster_id)


async def remove_cluster(backend: MetadataBackend, cluster_id: str, *,
                         via: Submitter = _DEFAULT, plugins: Plugins | None = None) -> None:
    if await _direct(backend, via):
        return await admin.remove_cluster(backend, cluster_id, plugins=plugins)
    await submit(backend, "remove_cluster", {"cluster": cluster_id}, token=via.token,
                 timeout=via.timeout)
    return None


async def set_pool(backend: MetadataBackend, name: str, endpoints: Sequence[ProxyEndpoint], *,
                   via: Submitter = _DEFAULT, plugins: Plugins | None = None
                   ) -> FederationMap:
    if await _direct(backend, via):
        return await admin.set_pool(backend, name, endpoints, plugins=plugins)
    await submit(backend, "set_pool", {"name": name, "endpoints": [
        {"node_id": e.node_id, "host": e.host, "port": e.port, "roles": sorted(e.roles)}
        for e in endpoints]}, token=via.token, timeout=via.timeout)
    return await _map(backend)


async def set_route(backend: MetadataBackend, pattern: str, pool: str, role: str | None = None,
                    *, via: Submitter = _DEFAULT, plugins: Plugins | None = None
                    ) -> FederationMap:
    if await _direct(backend, via):
        return await admin.set_route(backend, pattern, pool, role, plugins=plugins)
    await submit(backend, "set_route", {"pattern": pattern, "pool": pool, "role": role},
                 token=via.token, timeout=via.timeout)
    return await _map(backend)


async def remove_route(backend: MetadataBackend, pattern: str, *, via: Submitter = _DEFAULT,
                       plugins: Plugins | None = None) -> FederationMap:
    if await _direct(backend, via):
        return await admin.remove_route(backend, pattern, plugins=plugins)
    await submit(backend, "remove_route", {"pattern": pattern}, token=via.token,
                 timeout=via.timeout)
    return await _map(backend)


async def add_user(backend: MetadataBackend, name: str, password: str,
                   mechanisms: Iterable[str], iterations: int, *,
                   via: Submitter = _DEFAULT, plugins: Plugins | None = None
                   ) -> tuple[FederationMap, bool]:
    """:func:`federation.controller.users.add_user`: credentials are derived here, so neither the
    intent nor the store ever carries the password."""
    from federation.controller import users

    if await _direct(backend, via):
        return await users.add_user(backend, name, password, mechanisms, iterations,
                                    plugins=plugins)
    user = users.make_checked_user(name, password, mechanisms, iterations)
    answer = await submit(backend, "put_user", {"name": name, "credentials": user.to_dict()},
                          token=via.token, timeout=via.timeout)
    return await _map(backend), bool((answer.get("result") or {}).get("created", False))


async def remove_user(backend: MetadataBackend, name: str, *, via: Submitter = _DEFAULT,
                      plugins: Plugins | None = None) -> FederationMap:
    from federation.controller import users

    if await _direct(backend, via):
        return await users.remove_user(backend, name, plugins=plugins)
    await submit(backend, "remove_user", {"name": name}, token=via.token, timeout=via.timeout)
    return await _map(backend)


async def start_drain(backend: MetadataBackend, cluster_id: str, *,
                      via: Submitter = _DEFAULT) -> None:
    from federation.controller import elastic

    if await _direct(backend, via):
        return await elastic.start_drain(backend, cluster_id)
    await submit(backend, "start_drain", {"cluster": cluster_id}, token=via.token,
                 timeout=via.timeout)
    return None


async def retire_cluster(backend: MetadataBackend, cluster_id: str, *, force: bool = False,
                         via: Submitter = _DEFAULT) -> FederationMap:
    from federation.controller import elastic

    if await _direct(backend, via):
        return await elastic.retire_cluster(backend, cluster_id, force=force)
    await submit(backend, "retire_cluster", {"cluster": cluster_id, "force": force},
                 token=via.token, timeout=via.timeout)
    return await _map(backend)


async def request_rebalance(backend: MetadataBackend, topics: Iterable[str] | None = None, *,
                            via: Submitter = _DEFAULT) -> list[Any]:
    from federation.controller import elastic
    from federation.core.model import Move

    if await _direct(backend, via):
        return await elastic.request_rebalance(backend, topics)
    answer = await submit(backend, "rebalance",
                          {"topics": None if topics is None else list(topics)},
                          token=via.token, timeout=via.timeout)
    return [Move(m["topic"], int(m["partition"]), m.get("target"), m.get("reason", "rebalance"))
            for m in (answer.get("result") or {}).get("moves", [])]
