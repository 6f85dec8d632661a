"""SASL/OAUTHBEARER: JWTs verified against a JWKS file (:mod:`federation.security.oauthbearer`).

Offered only by a proxy whose environment names the JWKS file
(``FEDKAFKA_OAUTHBEARER_JWKS``; issuer, audience, subject claim and clock skew through the
other ``FEDKAFKA_OAUTHBEARER_*`` variables). The principal is ``User:<sub>``.
"""

from __future__ import annotations

import threading

from federation.core.model import FederationMap
from federation.plugin import hookimpl
from federation.security.oauthbearer import MECHANISM, Jwks, OAuthBearerServer, OAuthSettings
from federation.security.sasl import SaslAuthenticator

_jwks: dict[str, Jwks] = {}  # one cache per file, shared by the connections
_lock = threading.Lock()


def _cached(settings: OAuthSettings) -> Jwks:
    with _lock:
        return _jwks.setdefault(str(settings.jwks), Jwks(settings.jwks))


@hookimpl(trylast=True)
def fedkafka_sasl_mechanisms() -> list[str]:
    return [MECHANISM] if OAuthSettings.from_env() is not None else []


@hookimpl(trylast=True)
def fedkafka_sasl_authenticator(mechanism: str,
                                federation_map: FederationMap) -> SaslAuthenticator | None:
    settings = OAuthSettings.from_env() if mechanism == MECHANISM else None
    if settings is None:
        return None
    return OAuthBearerServer(settings, _cached(settings))
