"""SASL/SCRAM-SHA-256 and SCRAM-SHA-512 against the users in the map (RFC 5802/7677).

Each mechanism is offered while some user in ``FederationMap.users`` holds a credential
for it (``fedkafka user add NAME``); a federation without users offers nothing. The
exchange (:class:`federation.security.sasl.ScramServer`) is Kafka's: client-first with gs2
header ``n,,``, server-first with the salt and iteration count stored for the user,
client-final with the proof (checked against the stored key in constant time),
server-final with the server signature.
"""

from __future__ import annotations

from federation.core.credentials import SCRAM_HASHES, ScramCredential
from federation.core.model import FederationMap
from federation.plugin import hookimpl
from federation.security.sasl import SaslAuthenticator, ScramServer


@hookimpl(trylast=True)
def fedkafka_sasl_mechanisms(federation_map: FederationMap | None) -> list[str]:
    if federation_map is None:
        return []
    held = {m for u in federation_map.users.values() for m in u.scram}
    return [m for m in SCRAM_HASHES if m in held]


@hookimpl(trylast=True)
def fedkafka_sasl_authenticator(mechanism: str,
                                federation_map: FederationMap) -> SaslAuthenticator | None:
    if mechanism not in SCRAM_HASHES:
        return None
    users = federation_map.users

    def lookup(name: str) -> ScramCredential | None:
        user = users.get(name)
        return user.scram.get(mechanism) if user is not None else None

    return ScramServer(mechanism, lookup)
