"""The one registry of the APIs the proxy serves: version range, handler, role, checks.

ApiVersions answers from it (:func:`advertised`, intersected with the codec's and every
physical cluster's ranges), the core dispatches with it and refuses what it does not
list, and authorization wraps what it says (docs/adr/0024-sans-io-proxy-core.md).
Versions are those implemented end to end. Fetch 13+ names topics by id: logical ids are
translated to each cluster's physical ids. Produce stays below 13 and OffsetCommit /
OffsetFetch below 10 (their topic-id versions): see ADR 0008.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from federation.core.model import ROLE_CONSUMER, ROLE_PRODUCER
from federation.protocol.versions import SUPPORTED, ApiKey, clamp

__all__ = ["BY_KEY", "CAPS", "REGISTRY", "SASL_KEYS", "ApiSpec", "advertised"]

#: How a request is authorized: by its rule in :data:`federation.proxy.authz.RULES`
#: (before the handler runs), by its handler (per topic), or not at all (as Kafka).
AUTHZ_RULE = "rule"
AUTHZ_HANDLER = "handler"
AUTHZ_NONE = "none"


@dataclass(frozen=True, slots=True)
class ApiSpec:
    key: int
    min_version: int
    max_version: int
    handler: str  #: the :class:`~federation.proxy.handlers.Session` method serving it
    authz: str = AUTHZ_RULE
    #: what a client sending it is (routes its Metadata/FindCoordinator answers)
    reveals: str | None = None
    before_sasl: bool = False  #: served before authentication on a SASL-only listener
    sasl: bool = False  #: advertised only while a SASL mechanism is offered


REGISTRY: Final[tuple[ApiSpec, ...]] = (
    ApiSpec(ApiKey.API_VERSIONS, 0, 4, "api_versions", AUTHZ_NONE, before_sasl=True),
    # v0 (raw SASL tokens after the handshake) is not served
    ApiSpec(ApiKey.SASL_HANDSHAKE, 1, 1, "sasl_handshake", AUTHZ_NONE, before_sasl=True,
            sasl=True),
    ApiSpec(ApiKey.SASL_AUTHENTICATE, 0, 2, "sasl_authenticate", AUTHZ_NONE,
            before_sasl=True, sasl=True),
    ApiSpec(ApiKey.METADATA, 0, 12, "metadata", AUTHZ_HANDLER),
    ApiSpec(ApiKey.PRODUCE, 3, 12, "produce", AUTHZ_HANDLER, reveals=ROLE_PRODUCER),
    ApiSpec(ApiKey.INIT_PRODUCER_ID, 0, 5, "init_producer_id", reveals=ROLE_PRODUCER),
    ApiSpec(ApiKey.DESCRIBE_CLUSTER, 0, 1, "describe_cluster", AUTHZ_NONE),
    ApiSpec(ApiKey.FETCH, 4, 17, "fetch", AUTHZ_HANDLER, reveals=ROLE_CONSUMER),
    ApiSpec(ApiKey.LIST_OFFSETS, 1, 8, "list_offsets", reveals=ROLE_CONSUMER),
    ApiSpec(ApiKey.FIND_COORDINATOR, 0, 6, "find_coordinator", reveals=ROLE_CONSUMER),
    ApiSpec(ApiKey.JOIN_GROUP, 0, 9, "group_forward"),
    ApiSpec(ApiKey.SYNC_GROUP, 0, 5, "group_forward"),
    ApiSpec(ApiKey.HEARTBEAT, 0, 4, "group_forward"),
    ApiSpec(ApiKey.LEAVE_GROUP, 0, 5, "group_forward"),
    ApiSpec(ApiKey.OFFSET_COMMIT, 2, 9, "group_forward"),
    ApiSpec(ApiKey.OFFSET_FETCH, 1, 9, "offset_fetch"),
    ApiSpec(ApiKey.DESCRIBE_GROUPS, 0, 5, "describe_groups"),
    ApiSpec(ApiKey.LIST_GROUPS, 0, 5, "list_groups"),
    ApiSpec(ApiKey.CREATE_TOPICS, 2, 7, "create_topics"),
    ApiSpec(ApiKey.DELETE_TOPICS, 1, 6, "delete_topics"),
    ApiSpec(ApiKey.CREATE_PARTITIONS, 0, 3, "create_partitions"),
    ApiSpec(ApiKey.DESCRIBE_CONFIGS, 1, 4, "describe_configs"),
    # the sizes of logical partitions (docs/adr/0027-describe-log-dirs.md); kio has no v0
    ApiSpec(ApiKey.DESCRIBE_LOG_DIRS, 1, 5, "describe_log_dirs"),
    ApiSpec(ApiKey.ALTER_CONFIGS, 0, 2, "alter_configs"),
    ApiSpec(ApiKey.INCREMENTAL_ALTER_CONFIGS, 0, 1, "alter_configs"),
    ApiSpec(ApiKey.DELETE_RECORDS, 0, 2, "delete_records"),
    ApiSpec(ApiKey.DELETE_GROUPS, 0, 2, "delete_groups"),
    ApiSpec(ApiKey.OFFSET_DELETE, 0, 0, "offset_delete"),
    ApiSpec(ApiKey.DESCRIBE_PRODUCERS, 0, 0, "describe_producers"),
    ApiSpec(ApiKey.DESCRIBE_TOPIC_PARTITIONS, 0, 0, "describe_topic_partitions",
            AUTHZ_HANDLER),
)

BY_KEY: Final[Mapping[int, ApiSpec]] = {s.key: s for s in REGISTRY}
#: api key → (min, max) version implemented (before the codec's and the clusters' caps)
CAPS: Final[Mapping[int, tuple[int, int]]] = {s.key: (s.min_version, s.max_version)
                                              for s in REGISTRY}
SASL_KEYS: Final = frozenset(s.key for s in REGISTRY if s.sasl)
BEFORE_SASL: Final = frozenset(s.key for s in REGISTRY if s.before_sasl)


def advertised(sasl_offered: bool, cluster_versions: Iterable[Mapping[int, tuple[int, int]]]
               ) -> dict[int, tuple[int, int]]:
    """What ApiVersions answers: the registry's ranges within the codec's and within every
    physical cluster's (``cluster_versions``: each cluster's ApiVersions, empty if not yet
    known).

    Roles decide where clients are *sent* (Metadata, FindCoordinator, the name service),
    not what a proxy can parse: every proxy advertises every API, because clients infer
    features from ApiVersions as a whole (librdkafka takes message format v2 only from a
    broker advertising Produce v3+ *and* Fetch v4+, and falls back to magic 1, which
    Kafka 4 refuses, on a producer-only proxy).
    """
    theirs_all = [v for v in cluster_versions if v]
    out: dict[int, tuple[int, int]] = {}
    for spec in sorted(REGISTRY, key=lambda s: s.key):
        if spec.sasl and not sasl_offered:
            continue
        if spec.key not in SUPPORTED:
            continue
        rng = clamp(spec.key, spec.min_version, spec.max_version)
        if rng is None:
            continue
        lo, hi = rng
        if spec.key != ApiKey.API_VERSIONS:
            for theirs in theirs_all:
                their = theirs.get(spec.key)
                if their is None:
                    lo, hi = 1, 0
                    break
                lo, hi = max(lo, their[0]), min(hi, their[1])
        if lo <= hi:
            out[spec.key] = (lo, hi)
    return out


def served(api_key: int, api_version: int, ranges: Mapping[int, tuple[int, int]]) -> bool:
    rng = ranges.get(api_key)
    return rng is not None and rng[0] <= api_version <= rng[1]
