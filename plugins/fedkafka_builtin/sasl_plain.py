"""SASL/PLAIN against the users in the map (their salted PBKDF2 hashes).

Offered while some user in ``FederationMap.users`` has a PLAIN credential (``fedkafka
user add NAME --mechanism PLAIN``); a federation without users offers nothing. A user
the map does not know gets no answer from this plugin (another plugin may know it;
with none, the authentication fails). PLAIN sends the password in clear: use it over
TLS, or prefer SCRAM.
"""

from __future__ import annotations

from federation.core.credentials import PLAIN
from federation.core.model import FederationMap, Principal
from federation.plugin import hookimpl
from federation.security.sasl import parse_plain


@hookimpl(trylast=True)
def fedkafka_sasl_mechanisms(federation_map: FederationMap | None) -> list[str]:
    if federation_map is not None and any(u.plain is not None
                                          for u in federation_map.users.values()):
        return [PLAIN]
    return []


@hookimpl(trylast=True)
def fedkafka_authenticate(mechanism: str, auth_bytes: bytes,
                          federation_map: FederationMap | None) -> Principal | None:
    if mechanism != PLAIN or federation_map is None:
        return None
    user, password = parse_plain(auth_bytes)
    stored = federation_map.users.get(user)
    if stored is None or stored.plain is None:
        return None  # not ours to judge
    if not stored.plain.verify(password):
        raise PermissionError("Authentication failed: Invalid username or password")
    return Principal(user)
