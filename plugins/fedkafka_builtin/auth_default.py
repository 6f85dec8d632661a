"""Default security: unauthenticated connections are ``User:ANONYMOUS``; everything is allowed.

This plugin provides no SASL mechanism: ``fedkafka_builtin.sasl_scram`` and
``fedkafka_builtin.sasl_plain``
offer SCRAM-SHA-256/512 and PLAIN while users are stored in the map (``fedkafka user
add``), and other plugins may add mechanisms (``fedkafka_sasl_authenticator``).
Authorization is a chain in which one DENY wins, so a restricting plugin only needs to
answer DENY where it must; these defaults run last.
"""

from __future__ import annotations

from federation.core.model import ANONYMOUS, NO_MECHANISM, AuthDecision, Principal
from federation.plugin import hookimpl


@hookimpl(trylast=True)
def fedkafka_authenticate(mechanism: str, auth_bytes: bytes) -> Principal | None:
    return ANONYMOUS if mechanism == NO_MECHANISM else None


@hookimpl(trylast=True)
def fedkafka_authorize(principal: Principal, operation: str, resource_type: str,
                       resource_name: str) -> AuthDecision | None:
    return AuthDecision.ALLOW
