"""Which Kafka API versions the proxy serves, derived from kio's schema index.

A version is *codec-capable* when kio generated both its request and its
response entity (so we can decode and encode either direction).  For each API
kio knows, :data:`SUPPORTED` holds the contiguous codec-capable range ending at
kio's newest version.  The APIs the proxy serves are listed once, in
:mod:`federation.proxy.apis`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Final

from kio.index import load_request_schema, load_response_schema
from kio.schema.index import api_key_map, schema_name_map
from kio.static.constants import EntityType

__all__ = (
    "API_NAMES",
    "SUPPORTED",
    "ApiKey",
    "clamp",
    "codec_versions",
    "request_header_version",
    "response_header_version",
)


class ApiKey:
    """API keys referred to by name in the proxy (plain ints, not an enum, for speed)."""

    PRODUCE: Final = 0
    SASL_HANDSHAKE: Final = 17
    SASL_AUTHENTICATE: Final = 36
    FETCH: Final = 1
    LIST_OFFSETS: Final = 2
    METADATA: Final = 3
    OFFSET_COMMIT: Final = 8
    OFFSET_FETCH: Final = 9
    FIND_COORDINATOR: Final = 10
    JOIN_GROUP: Final = 11
    HEARTBEAT: Final = 12
    LEAVE_GROUP: Final = 13
    SYNC_GROUP: Final = 14
    DESCRIBE_GROUPS: Final = 15
    LIST_GROUPS: Final = 16
    API_VERSIONS: Final = 18
    CREATE_TOPICS: Final = 19
    DELETE_TOPICS: Final = 20
    INIT_PRODUCER_ID: Final = 22
    OFFSET_FOR_LEADER_EPOCH: Final = 23
    DELETE_RECORDS: Final = 21
    DESCRIBE_CONFIGS: Final = 32
    DESCRIBE_LOG_DIRS: Final = 35
    ALTER_CONFIGS: Final = 33
    CREATE_PARTITIONS: Final = 37
    DELETE_GROUPS: Final = 42
    INCREMENTAL_ALTER_CONFIGS: Final = 44
    OFFSET_DELETE: Final = 47
    DESCRIBE_CLUSTER: Final = 60
    DESCRIBE_PRODUCERS: Final = 61
    DESCRIBE_TOPIC_PARTITIONS: Final = 75





def _camel(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


API_NAMES: Final[Mapping[int, str]] = {key: _camel(name) for key, name in api_key_map.items()}
"""Kafka's name of every API key kio knows, e.g. ``{18: "ApiVersions"}``."""


def codec_versions(api_key: int) -> tuple[int, ...]:
    """Versions of ``api_key`` for which kio has both a request and a response entity."""
    name = api_key_map.get(api_key)
    if name is None:
        return ()
    by_version = schema_name_map.get(name, {})
    return tuple(
        sorted(
            version
            for version, types in by_version.items()
            if EntityType.request in types and EntityType.response in types
        )
    )


def _newest_contiguous_range(versions: tuple[int, ...]) -> tuple[int, int] | None:
    if not versions:
        return None
    high = low = versions[-1]
    present = set(versions)
    while low - 1 in present:
        low -= 1
    return low, high


def _compute_supported() -> dict[int, tuple[int, int]]:
    supported: dict[int, tuple[int, int]] = {}
    for api_key in sorted(api_key_map):
        found = _newest_contiguous_range(codec_versions(api_key))
        if found is not None:
            supported[api_key] = found
    return supported


SUPPORTED: Final[dict[int, tuple[int, int]]] = _compute_supported()
"""``api_key -> (min_version, max_version)`` the codec can decode and encode, for every API
kio knows. Which of them the proxy serves, and which versions, is the registry's business
(:mod:`federation.proxy.apis`)."""


def clamp(api_key: int, broker_min: int, broker_max: int) -> tuple[int, int] | None:
    """Intersect our range for ``api_key`` with an upstream broker's advertised range.

    Returns ``None`` when the proxy does not serve the API or the ranges do not
    overlap (the API must then not be advertised).
    """
    ours = SUPPORTED.get(api_key)
    if ours is None:
        return None
    low = max(ours[0], broker_min)
    high = min(ours[1], broker_max)
    if low > high:
        return None
    return low, high


@functools.cache
def _first_flexible_version(api_key: int) -> tuple[int, int] | None:
    """``(first flexible version, lowest version kio knows)`` or None if never flexible."""
    versions = codec_versions(api_key)
    for version in versions:
        if load_request_schema(api_key, version).__flexible__:
            return version, versions[0]
    return None


@functools.cache
def request_header_version(api_key: int, api_version: int) -> int:
    """Request header version (1 or 2) a client uses for ``api_key``/``api_version``.

    Exact for versions kio knows.  Outside them: flexible versions are always an
    open-ended ``N+`` range in Kafka's message definitions, so a version above
    kio's newest is flexible when kio's newest is; a version below kio's oldest,
    or an API kio does not know, is assumed to use header v1.  Header v1 and v2
    only differ by the tagged fields after ``client_id``, so a wrong guess there
    only affects the body offset of a request we cannot decode anyway.
    """
    first = _first_flexible_version(api_key)
    if first is None:
        return 1
    first_flexible, oldest_known = first
    if api_version < oldest_known:
        return 1
    return 2 if api_version >= first_flexible else 1


@functools.cache
def response_header_version(api_key: int, api_version: int) -> int:
    """Response header version (0 or 1) for a version kio knows.

    ApiVersions responses always use header v0 (so a client can parse them
    before it knows what the broker supports); kio encodes that special case.

    :raises kio.index.KioIndexError: for an API or version kio does not know.
    """
    version: int = load_response_schema(api_key, api_version).__header_schema__.__version__
    return version
