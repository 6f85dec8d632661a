"""SASL users of the federation, kept in the map (``FederationMap.users``).

Each change is published through :func:`federation.clusters.admin._publish` like every other
admin change, so proxies pick it up as they pick up any new map version. Credentials
are derived here, once, before the publish: the store only ever sees salted keys and
hashes (:mod:`federation.core.credentials`), never a password.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from federation.clusters import admin
from federation.core.credentials import (
    DEFAULT_ITERATIONS,
    MECHANISMS,
    UserCredentials,
    make_user,
    validate_user_name,
)
from federation.core.model import FederationMap
from federation.plugin import Plugins
from federation.store.mapstore import MetadataBackend

__all__ = ["UnknownUserError", "add_user", "describe_user", "describe_users",
           "make_checked_user", "put_user", "remove_user"]


class UnknownUserError(admin.AdminError):
    """No such user in the map."""


async def add_user(backend: MetadataBackend, name: str, password: str,
                   mechanisms: Iterable[str] = MECHANISMS,
                   iterations: int = DEFAULT_ITERATIONS, *,
                   plugins: Plugins | None = None) -> tuple[FederationMap, bool]:
    """Create ``name``, or replace all its credentials (a new password), for ``mechanisms``.

    :returns: the published map and whether the user is new.
    :raises admin.InvalidRequestError: a bad name, mechanism, iteration count or password.
    """
    return await put_user(backend, name, make_checked_user(name, password, mechanisms,
                                                           iterations), plugins=plugins)


def make_checked_user(name: str, password: str, mechanisms: Iterable[str] = MECHANISMS,
                      iterations: int = DEFAULT_ITERATIONS) -> UserCredentials:
    """``name``'s credentials derived from ``password`` (the password goes no further).

    :raises admin.InvalidRequestError: a bad name, mechanism, iteration count or password.
    """
    try:
        validate_user_name(name)
        user = make_user(password, mechanisms, iterations)
        user.validate(name)
    except ValueError as e:
        raise admin.InvalidRequestError(str(e)) from None
    return user


async def put_user(backend: MetadataBackend, name: str, user: UserCredentials, *,
                   plugins: Plugins | None = None) -> tuple[FederationMap, bool]:
    """Store derived credentials (:func:`make_checked_user`) as ``name``'s: (map, is new)."""
    created: list[bool] = []

    def change(current: FederationMap | None) -> FederationMap:
        if current is None:
            raise admin._no_map()
        created[:] = [name not in current.users]
        return dataclasses.replace(current, users={**current.users, name: user})

    fmap = await admin._publish(backend, change, plugins)
    return fmap, created[0]


async def remove_user(backend: MetadataBackend, name: str, *,
                      plugins: Plugins | None = None) -> FederationMap:
    """Remove ``name``: its next authentication fails (open connections stay).

    :raises UnknownUserError: if there is no such user.
    """
    def change(current: FederationMap | None) -> FederationMap:
        if current is None:
            raise admin._no_map()
        if name not in current.users:
            raise UnknownUserError(f"no user {name!r}; `fedkafka user list` shows them")
        return dataclasses.replace(
            current, users={k: v for k, v in current.users.items() if k != name})

    return await admin._publish(backend, change, plugins)


def describe_user(name: str, user: UserCredentials) -> dict[str, Any]:
    """What may be shown of a user: its mechanisms and iteration counts, no secret."""
    iterations = {m: c.iterations for m, c in user.scram.items()}
    if user.plain is not None:
        iterations["PLAIN"] = user.plain.iterations
    return {"name": name, "mechanisms": list(user.mechanisms), "iterations": iterations}


def describe_users(fmap: FederationMap) -> list[dict[str, Any]]:
    return [describe_user(name, user) for name, user in sorted(fmap.users.items())]
