"""The metadata store: the backend interface, the JSON map format and helpers on top.

Backends (``file``, ``zookeeper``, third-party ones) are plugins announced through the
``fedkafka_metadata_backends`` hook as :class:`BackendInfo` and chosen by name.

The map's plain form is the stable, versioned JSON document of :func:`dumps`::

    {"format": 1, "version": 7, "clusters": {...}, "topics": {...}, ...}

The built-in backends store it incrementally (format 2, :mod:`federation.store.maplayout`,
ADR 0016): a small index and immutable per-shard documents in the format-1 key names, so
a change writes, and a reader reads, only what changed. They still read a format-1
document (the earlier layout) and convert it on the next publish. A reader refuses a
document whose ``format`` it does not know; within one format, key names and meanings
never change.

A backend whose ``publish`` validates the map itself (cheaply, only what changed) says
so with a true class attribute ``validates_publish``; :func:`update` then does not
validate the whole map again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from federation.core.model import MAP_FORMAT, FederationMap

__all__ = [
    "EMPTY_VERSION",
    "MAP_FORMAT",
    "BackendInfo",
    "MapFormatError",
    "MetadataBackend",
    "VersionConflict",
    "WatchHandle",
    "dumps",
    "loads",
    "update",
]

#: The version a store holds before anything was published (``load()`` returns None).
EMPTY_VERSION = 0


class MapFormatError(ValueError):
    """A stored map document cannot be read (bad JSON, unknown format, invalid map)."""


class VersionConflict(Exception):
    """``publish`` lost a compare-and-set: the store holds another version than expected."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"expected stored map version {expected}, found {actual}")
        self.expected = expected
        self.actual = actual


class WatchHandle(Protocol):
    """Returned by :meth:`MetadataBackend.watch`."""

    def cancel(self) -> None:
        """Stop calling the callback (idempotent)."""
        ...


@runtime_checkable
class MetadataBackend(Protocol):
    """Where versioned maps and live members are kept.

    Thread-safe. A backend that loses its store keeps its watchers' last map (it simply
    stops calling them) and reports the problem in :meth:`health`.
    """

    def load(self) -> FederationMap | None:
        """The stored map, or None if nothing was published yet."""
        ...

    def publish(self, fmap: FederationMap, expected_version: int) -> int:
        """Store ``fmap`` as the next version if the store still holds ``expected_version``.

        :param fmap: the new map; its own ``version`` is replaced by the new version.
        :param expected_version: the version the caller based ``fmap`` on
            (:data:`EMPTY_VERSION` for the first map).
        :returns: the new version.
        :raises VersionConflict: if the store holds another version.
        """
        ...

    def watch(self, callback: Callable[[FederationMap], None]) -> WatchHandle:
        """Call ``callback`` with the current map (if any) and then with every newer one.

        Calls come from a backend thread, in version order; an exception in the callback
        is logged and does not stop the watch.
        """
        ...

    def register_member(self, kind: str, member_id: str, data: Mapping[str, Any]) -> None:
        """Announce a live member (``kind`` e.g. "proxy", "controller") until :meth:`close`.

        Registering again replaces ``data``. Liveness is ephemeral: a crashed process's
        members disappear (ZooKeeper session end, or the file backend's heartbeat TTL).
        """
        ...

    def members(self, kind: str) -> dict[str, dict[str, Any]]:
        """Live members of ``kind``: member id → the data it registered."""
        ...

    def health(self) -> dict[str, Any]:
        """A JSON-ready status, at least ``{"backend": name, "ok": bool}``."""
        ...

    def close(self) -> None:
        """Stop watches, withdraw this backend's members, release resources (idempotent)."""
        ...


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """A metadata backend announced by a plugin (as devpi's storage backends are)."""

    name: str
    factory: Callable[..., MetadataBackend]  #: called with the backend's options as keywords
    description: str
    #: The LOCATION of a store spec ``NAME:LOCATION`` (``--store``, a proxy's ``store``)
    #: → the factory's options, called with (location, what to name in an error); raises
    #: ConfigError. None: ``{"location": LOCATION}``. The core never parses a location.
    parse_location: Callable[[str, str], dict[str, Any]] | None = None
    #: An example spec for help and error texts.
    example: str = ""


def dumps(fmap: FederationMap) -> str:
    """The map's JSON document (stable: sorted keys, two-space indent, final newline)."""
    return json.dumps(fmap.to_dict(), indent=2, sort_keys=True) + "\n"


def loads(text: str | bytes) -> FederationMap:
    """Parse and validate a map document.

    :raises MapFormatError: naming what is wrong.
    """
    try:
        data = json.loads(text)
    except ValueError as e:
        raise MapFormatError(f"map document is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise MapFormatError("map document is not a JSON object")
    try:
        fmap = FederationMap.from_dict(data)
        fmap.validate()
    except ValueError as e:
        raise MapFormatError(str(e)) from None
    return fmap


def update(backend: MetadataBackend,
           change: Callable[[FederationMap | None], FederationMap | None],
           *, attempts: int = 10) -> FederationMap | None:
    """Read-modify-publish with retries on :class:`VersionConflict`.

    :param change: gets the stored map (None if empty) and returns the new one, or None
        to publish nothing. It may be called more than once, so it must not have side
        effects.
    :returns: the published map (with its new version), or None if nothing was published.
    """
    for attempt in range(attempts):
        current = backend.load()
        new = change(current)
        if new is None:
            return None
        if not getattr(backend, "validates_publish", False):
            new.validate()
        base = current.version if current is not None else EMPTY_VERSION
        try:
            version = backend.publish(new, base)
        except VersionConflict:
            if attempt == attempts - 1:
                raise
            continue
        return new.with_version(version)
    raise AssertionError("unreachable")  # pragma: no cover
