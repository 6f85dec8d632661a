"""Built-in authorizer: the access control lists kept in the map (``FederationMap.acls``).

Kafka's semantics (KIP-11, KIP-290): a rule names a principal (``User:alice``, or
``User:*`` for everyone), an operation (or ``All``), a resource type and a name, either
LITERAL (that name; ``*`` is every name) or PREFIXED (every name starting with it), and
ALLOW or DENY. For a request:

* a matching DENY rule for the operation (or ``All``) denies, whatever else allows;
* else a matching ALLOW rule allows, for the operation or one that implies it: Describe
  is implied by Read, Write, Delete and Alter, DescribeConfigs by AlterConfigs, and
  everything by ``All``;
* else it is denied (Kafka's default without ``allow.everyone.if.no.acl.found``).

A map without any rule answers None, so the default allow-all plugin decides, as before
ACLs existed. Rules are added with ``fedkafka acl add``
(:func:`federation.clusters.admin.add_acls`).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from federation.core.model import (
    ACL_ALL,
    ACL_EVERYONE,
    ACL_WILDCARD,
    DENY,
    PREFIXED,
    AclRule,
    AuthDecision,
    FederationMap,
    Operation,
    Principal,
)
from federation.plugin import hookimpl

#: The operations whose ALLOW also allows an operation (besides itself and All).
IMPLIED_BY: dict[str, frozenset[str]] = {
    Operation.DESCRIBE: frozenset({Operation.READ, Operation.WRITE, Operation.DELETE,
                                   Operation.ALTER}),
    Operation.DESCRIBE_CONFIGS: frozenset({Operation.ALTER_CONFIGS}),
}


@dataclass(slots=True)
class _Index:
    """One map's rules by resource type, then by literal name (with ``*``) or prefixed."""

    literal: dict[str, dict[str, list[AclRule]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    prefixed: dict[str, list[AclRule]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def of(cls, rules: Sequence[AclRule]) -> _Index:
        index = cls()
        for rule in rules:
            if rule.pattern_type == PREFIXED:
                index.prefixed[rule.resource_type].append(rule)
            else:
                index.literal[rule.resource_type][rule.resource_name].append(rule)
        return index

    def matching(self, resource_type: str, name: str) -> list[AclRule]:
        literal = self.literal.get(resource_type, {})
        found = [*literal.get(name, ()), *literal.get(ACL_WILDCARD, ())]
        found.extend(r for r in self.prefixed.get(resource_type, ()) if name.startswith(
            r.resource_name))
        return found


_cache_lock = threading.Lock()
_cached: tuple[tuple[AclRule, ...], _Index] | None = None


def _index(rules: tuple[AclRule, ...]) -> _Index:
    """The index of one map's rules (built once per map: the tuple is the map's own)."""
    global _cached
    cached = _cached
    if cached is not None and cached[0] is rules:
        return cached[1]
    index = _Index.of(rules)
    with _cache_lock:
        _cached = (rules, index)
    return index


def decide(rules: tuple[AclRule, ...], principal: Principal, operation: str,
           resource_type: str, resource_name: str) -> AuthDecision:
    """ALLOW or DENY for one request under ``rules`` (see the module's docstring)."""
    who = {str(principal), ACL_EVERYONE}
    allowed_by = {operation, ACL_ALL, *IMPLIED_BY.get(operation, ())}
    allow = False
    for rule in _index(rules).matching(resource_type, resource_name):
        if rule.principal not in who:
            continue
        if rule.permission == DENY:
            if rule.operation in (operation, ACL_ALL):
                return AuthDecision.DENY
        elif rule.operation in allowed_by:
            allow = True
    return AuthDecision.ALLOW if allow else AuthDecision.DENY


@hookimpl(trylast=True)
def fedkafka_authorize(principal: Principal, operation: str, resource_type: str,
                       resource_name: str, federation_map: FederationMap | None
                       ) -> AuthDecision | None:
    if federation_map is None or not federation_map.acls:
        return None
    return decide(federation_map.acls, principal, operation, resource_type, resource_name)
