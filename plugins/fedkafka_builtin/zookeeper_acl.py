"""ZooKeeper authentication and ACLs of the ``zookeeper`` backend (ADR 0019).

Identities are ZooKeeper *digest* users (``user:password``). A backend authenticates with
its own (``auth``/``auth_file`` options, else ``$FEDKAFKA_ZK_AUTH_FILE``, a file holding
``user:password``); credentials are never logged. The writers of the map (the controller
and the admin CLI) also know the ACL policy (``acl`` option or ``$FEDKAFKA_ZK_ACL_FILE``)::

    {"writers": ["controller:<digest>", "admin:<digest>"],
     "members": ["proxy:<digest>", "nameservice:<digest>"],
     "readers": ["proxy:<digest>", ...]}          # optional: default anyone may read

(``<digest>`` = base64(sha1("user:password")), :func:`digest_id`; a policy names no
password.) Znodes the writers create get:

- the map (``map``, ``mapdocs`` and its documents), ``election``, ``members/controller``
  and the root: ALL for the writers, READ for the readers — so neither an
  unauthenticated client nor a member identity can change the map, elect itself, or
  pose as the controller (whose member record tells submitters where to send intents);
- ``members/<kind>`` of the other kinds (proxy, exporter…): ALL for the writers, READ,
  CREATE and DELETE for the members (their own writable subtree; DELETE lets a restarted
  member take over its stale record);
- a member's record itself: ALL for its creator, READ for the readers.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kazoo.security import ACL, Id, Permissions, make_acl, make_digest_acl_credential

from federation.core.errors import ConfigError

__all__ = ["ACL_FILE_ENV", "AUTH_FILE_ENV", "AclPolicy", "digest_id", "resolve_auth"]

AUTH_FILE_ENV = "FEDKAFKA_ZK_AUTH_FILE"
ACL_FILE_ENV = "FEDKAFKA_ZK_ACL_FILE"
#: member kinds whose ``members/<kind>`` znode only writers may create in
WRITER_KINDS = ("controller",)
#: member kinds created up front with the members' ACL
MEMBER_KINDS = ("proxy", "exporter")


def digest_id(user: str, password: str) -> str:
    """``user:base64(sha1(user:password))``, the id a policy names an identity by."""
    return str(make_digest_acl_credential(user, password))


def _read_auth(path: str | os.PathLike[str], what: str) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"zookeeper {what} {path} is not readable ({e.strerror}); "
                          "fix the path") from None
    if ":" not in text or text.startswith(":"):
        raise ConfigError(f"zookeeper {what} {path} must hold 'user:password'")
    return text


def resolve_auth(auth: str | None, auth_file: str | None) -> str | None:
    """This client's ``user:password``: the option, the file, ``$FEDKAFKA_ZK_AUTH_FILE``."""
    if auth:
        if ":" not in auth or auth.startswith(":"):
            raise ConfigError("zookeeper option 'auth' must be 'user:password'")
        return auth
    if auth_file:
        return _read_auth(auth_file, "auth_file")
    if os.environ.get(AUTH_FILE_ENV):
        return _read_auth(os.environ[AUTH_FILE_ENV], f"${AUTH_FILE_ENV}")
    return None


def _ids(spec: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = spec.get(name, [])
    if not isinstance(value, list) or not all(
            isinstance(v, str) and ":" in v and not v.startswith(":") for v in value):
        raise ConfigError(f"zookeeper acl field {name!r} must be a list of digest ids "
                          "'user:<base64 sha1 of user:password>'")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class AclPolicy:
    """Who may do what to the backend's znodes (see the module docstring)."""

    writers: tuple[str, ...]
    members: tuple[str, ...] = ()
    readers: tuple[str, ...] | None = None  #: None: anyone may read

    @classmethod
    def resolve(cls, acl: Mapping[str, Any] | str | None) -> AclPolicy | None:
        """From the ``acl`` option (an object, or a file path), else ``$FEDKAFKA_ZK_ACL_FILE``."""
        if acl is None and os.environ.get(ACL_FILE_ENV):
            acl = os.environ[ACL_FILE_ENV]
        if acl is None:
            return None
        if isinstance(acl, str):
            try:
                acl = json.loads(Path(acl).read_text())
            except (OSError, ValueError) as e:
                raise ConfigError(f"zookeeper acl file {acl} is not readable JSON "
                                  f"({type(e).__name__}); fix the file") from None
        if not isinstance(acl, Mapping):
            raise ConfigError("zookeeper option 'acl' must be an object "
                              '{"writers": [...], "members": [...], "readers": [...]}')
        unknown = sorted(set(acl) - {"writers", "members", "readers", "_comment"})
        if unknown:
            raise ConfigError(f"zookeeper acl: unknown field {unknown[0]!r}; known: "
                              "writers, members, readers")
        writers = _ids(acl, "writers")
        if not writers:
            raise ConfigError("zookeeper acl: 'writers' must name at least one identity "
                              "(the controller's)")
        readers = _ids(acl, "readers") if "readers" in acl else None
        return cls(writers, _ids(acl, "members"), readers)

    def _digest(self, ids: Sequence[str], **perms: bool) -> list[ACL]:
        return [make_acl("digest", i, **perms) for i in ids]

    def _read(self) -> list[ACL]:
        if self.readers is None:
            return [make_acl("world", "anyone", read=True)]
        return self._digest(sorted(set(self.readers) | set(self.members)), read=True)

    def map_acl(self) -> list[ACL]:
        """The map's znodes, the root, the election and ``members/controller``."""
        return [*self._digest(self.writers, all=True), *self._read()]

    def members_dir_acl(self) -> list[ACL]:
        """``members/<kind>`` of a member kind: the members' own writable subtree."""
        extra = [i for i in self.members if i not in self.writers]
        return [*self._digest(self.writers, all=True),
                *self._digest(extra, read=True, create=True, delete=True),
                *[a for a in self._read() if a.id.id not in extra]]

    def members_root_acl(self) -> list[ACL]:
        """``members``: the members read it (and their kinds' znodes exist up front)."""
        return self.map_acl()

    def own_acl(self) -> list[ACL]:
        """A record or election node this client creates: ALL for itself, READ for readers."""
        return [ACL(Permissions.ALL, Id("auth", "")), *self._read()]


def own_acl(readers: AclPolicy | None) -> list[ACL]:
    """The ACL of a znode an authenticated client creates for itself (no policy known:
    ALL for itself, READ for anyone)."""
    if readers is not None:
        return readers.own_acl()
    return [ACL(Permissions.ALL, Id("auth", "")), make_acl("world", "anyone", read=True)]


def ensure_paths(backend: Any) -> None:
    """Create the backend's fixed znodes; a writer (one that knows the policy) creates
    them with their ACLs and locks existing ones (a store created before the policy).

    A member identity cannot create them (NoAuth): they are the writers' to create, and
    its reads and its own records work once they exist.
    """
    from kazoo.exceptions import NoAuthError, NoNodeError

    client = backend.client
    policy: AclPolicy | None = backend.acl_policy
    fixed = (backend.members_path, backend.election_path, backend.docs_path)
    if policy is None:
        for path in fixed:
            with contextlib.suppress(NoAuthError):  # a read-only identity: writers create
                client.ensure_path(path)
        return
    members = backend.members_path
    plan: list[tuple[str, list[ACL]]] = []
    if backend.root:
        plan.append((backend.root, policy.map_acl()))
    plan += [(members, policy.members_root_acl()),
             *((f"{members}/{kind}", policy.map_acl()) for kind in WRITER_KINDS),
             *((f"{members}/{kind}", policy.members_dir_acl()) for kind in MEMBER_KINDS),
             (backend.election_path, policy.map_acl()), (backend.docs_path, policy.map_acl())]
    for path, acl in plan:
        client.ensure_path(path, acl=acl)
        client.set_acls(path, acl)
    locked = [backend.map_path, *(f"{backend.docs_path}/{name}"
                                  for name in client.get_children(backend.docs_path))]
    for path in locked:
        try:
            client.set_acls(path, policy.map_acl())
        except NoNodeError:
            continue
