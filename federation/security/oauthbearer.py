"""SASL/OAUTHBEARER (RFC 7628) with JWTs verified against a JWKS file, as Kafka's broker-side
``OAuthBearerValidatorCallbackHandler`` does.

The client's initial response is ``n,[a=AUTHZID],`` ``\\x01auth=Bearer TOKEN\\x01`` [SASL
extensions ``key=value\\x01``] ``\\x01``. The token is a JWS-signed JWT (RS256, RS384 or
RS512; ``alg: none`` and HMAC are refused) whose ``kid`` names an RSA key of the JWKS
file (re-read when the file changes); its ``exp`` must lie ahead and ``nbf``/``iat`` not
ahead (both with a clock skew), ``iss`` and ``aud`` must match when configured, and the
principal is the ``sub`` claim (or the configured one). An invalid token is answered, as
Kafka answers it, with a JSON error challenge ``{"status":"invalid_token"}``; the client
acknowledges with ``\\x01`` and the authentication fails.

RSA PKCS#1 v1.5 signatures are verified here in pure Python (public data only: no secret
key is involved, so no constant-time arithmetic is needed), comparing the whole encoded
block rather than parsing it. Keys shorter than 2048 bits are refused.

Configuration (per proxy process, environment variables, like Kafka's listener settings):
``FEDKAFKA_OAUTHBEARER_JWKS`` (path of the JWKS file; OAUTHBEARER is offered only when it
is set), ``FEDKAFKA_OAUTHBEARER_ISSUER``, ``FEDKAFKA_OAUTHBEARER_AUDIENCE`` (comma-separated,
any one matches), ``FEDKAFKA_OAUTHBEARER_SUB_CLAIM`` (default ``sub``),
``FEDKAFKA_OAUTHBEARER_CLOCK_SKEW`` (seconds, default 30).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.core.model import Principal
from federation.security.sasl import SaslStep

__all__ = [
    "MECHANISM",
    "InvalidToken",
    "Jwks",
    "OAuthBearerServer",
    "OAuthSettings",
    "RsaPublicKey",
    "parse_client_response",
    "verify_jwt",
]

MECHANISM = "OAUTHBEARER"
MIN_RSA_BITS = 2048
#: JWS algorithm → (hash, DER DigestInfo prefix of EMSA-PKCS1-v1_5, RFC 8017 section 9.2)
ALGORITHMS: Mapping[str, tuple[str, bytes]] = {
    "RS256": ("sha256", bytes.fromhex("3031300d060960864801650304020105000420")),
    "RS384": ("sha384", bytes.fromhex("3041300d060960864801650304020205000430")),
    "RS512": ("sha512", bytes.fromhex("3051300d060960864801650304020305000440")),
}
_KVSEP = "\x01"


class InvalidToken(PermissionError):
    """A token that does not verify (the message says why)."""


def _b64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed base64url") from None


def _uint(text: str) -> int:
    return int.from_bytes(_b64url(text), "big")


@dataclass(frozen=True, slots=True)
class RsaPublicKey:
    n: int
    e: int

    def verify(self, algorithm: str, message: bytes, signature: bytes) -> bool:
        """RSASSA-PKCS1-v1_5 verification (RFC 8017 section 8.2.2)."""
        hash_name, prefix = ALGORITHMS[algorithm]
        size = (self.n.bit_length() + 7) // 8
        if len(signature) != size:
            return False
        s = int.from_bytes(signature, "big")
        if s >= self.n:
            return False
        encoded = pow(s, self.e, self.n).to_bytes(size, "big")
        digest_info = prefix + hashlib.new(hash_name, message).digest()
        padding = size - 3 - len(digest_info)
        if padding < 8:
            return False
        expected = b"\x00\x01" + b"\xff" * padding + b"\x00" + digest_info
        return hmac.compare_digest(encoded, expected)


class Jwks:
    """The RSA signing keys of a JWKS file by ``kid``, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str | None, RsaPublicKey] = {}

    @staticmethod
    def parse(document: Mapping[str, Any]) -> dict[str | None, RsaPublicKey]:
        keys: dict[str | None, RsaPublicKey] = {}
        for jwk in document.get("keys", ()):
            if not isinstance(jwk, Mapping) or jwk.get("kty") != "RSA" \
                    or jwk.get("use", "sig") != "sig":
                continue
            key = RsaPublicKey(_uint(jwk["n"]), _uint(jwk["e"]))
            if key.n.bit_length() < MIN_RSA_BITS or key.e < 3 or key.e % 2 == 0:
                continue
            keys[jwk.get("kid")] = key
        return keys

    def keys(self) -> dict[str | None, RsaPublicKey]:
        """The current keys (an unreadable or invalid file: the last good keys, or none)."""
        with self._lock:
            try:
                st = self.path.stat()
                stamp = (st.st_mtime_ns, st.st_size)
                if stamp != self._stamp:
                    self._keys = self.parse(json.loads(self.path.read_text()))
                    self._stamp = stamp
            except (OSError, ValueError, KeyError, TypeError, InvalidToken):
                pass
            return self._keys


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    """How tokens are validated (Kafka's ``sasl.oauthbearer.*`` broker settings)."""

    jwks: Path
    issuer: str | None = None
    audience: tuple[str, ...] = ()
    sub_claim: str = "sub"
    clock_skew: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OAuthSettings | None:
        env = os.environ if env is None else env
        path = env.get("FEDKAFKA_OAUTHBEARER_JWKS")
        if not path:
            return None
        audience = tuple(a.strip() for a in env.get("FEDKAFKA_OAUTHBEARER_AUDIENCE", "")
                         .split(",") if a.strip())
        return cls(Path(path), env.get("FEDKAFKA_OAUTHBEARER_ISSUER") or None, audience,
                   env.get("FEDKAFKA_OAUTHBEARER_SUB_CLAIM") or "sub",
                   float(env.get("FEDKAFKA_OAUTHBEARER_CLOCK_SKEW", "30")))


def verify_jwt(token: str, keys: Mapping[str | None, RsaPublicKey], settings: OAuthSettings,
               now: float | None = None) -> dict[str, Any]:
    """The claims of a token that verifies. :raises InvalidToken: saying why not."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("not a JWS compact serialization (3 parts)")
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
    except ValueError:
        raise InvalidToken("malformed header or payload") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidToken("malformed header or payload")
    algorithm = str(header.get("alg"))
    if algorithm not in ALGORITHMS:
        raise InvalidToken(f"algorithm {algorithm!r} is not accepted (RS256/384/512)")
    if header.get("crit"):
        raise InvalidToken("critical header parameters are not supported")
    kid = header.get("kid")
    key = keys.get(kid) if kid is not None or len(keys) != 1 else next(iter(keys.values()))
    if key is None:
        raise InvalidToken(f"no key {kid!r} in the JWKS")
    signature = _b64url(parts[2])
    if not key.verify(algorithm, f"{parts[0]}.{parts[1]}".encode("ascii"), signature):
        raise InvalidToken("bad signature")
    now = time.time() if now is None else now
    skew = settings.clock_skew
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise InvalidToken("no numeric exp claim")
    if exp + skew <= now:
        raise InvalidToken("the token expired")
    for claim in ("nbf", "iat"):
        value = claims.get(claim)
        if value is not None and (not isinstance(value, int | float) or value - skew > now):
            raise InvalidToken(f"the token's {claim} lies in the future")
    if settings.issuer is not None and claims.get("iss") != settings.issuer:
        raise InvalidToken("unexpected issuer")
    if settings.audience:
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(a in settings.audience for a in auds):
            raise InvalidToken("unexpected audience")
    subject = claims.get(settings.sub_claim)
    if not isinstance(subject, str) or not subject:
        raise InvalidToken(f"no {settings.sub_claim} claim")
    return claims


def parse_client_response(data: bytes) -> tuple[str | None, str, dict[str, str]]:
    """RFC 7628 initial client response → (authzid, token, SASL extensions).

    :raises PermissionError: if it is malformed.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PermissionError("Invalid OAUTHBEARER client first message: not UTF-8") from None
    gs2, sep, rest = text.partition(_KVSEP)
    if not sep or not rest.endswith(_KVSEP * 2):
        raise PermissionError("Invalid OAUTHBEARER client first message")
    flags = gs2.split(",")
    if len(flags) != 3 or flags[0] != "n" or flags[2] != "" or (
            flags[1] and not flags[1].startswith("a=")):
        raise PermissionError("Invalid OAUTHBEARER client first message: bad gs2 header")
    authzid = flags[1][2:] or None
    pairs: dict[str, str] = {}
    for item in rest[:-2].split(_KVSEP):
        key, eq, value = item.partition("=")
        if not eq or not key or key in pairs:
            raise PermissionError("Invalid OAUTHBEARER client first message: bad key/value")
        pairs[key] = value
    auth = pairs.pop("auth", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise PermissionError("Invalid OAUTHBEARER client first message: no bearer token")
    return authzid, token.strip(), pairs


class OAuthBearerServer:
    """One connection's OAUTHBEARER exchange (one round, or two when the token fails)."""

    def __init__(self, settings: OAuthSettings, jwks: Jwks) -> None:
        self.settings = settings
        self.jwks = jwks
        self._error: str | None = None
        self._done = False

    def step(self, client_bytes: bytes) -> SaslStep:
        if self._done:
            raise PermissionError("the exchange is already finished")
        if self._error is not None:  # the client acknowledged our error challenge
            self._done = True
            raise PermissionError(self._error)
        authzid, token, _extensions = parse_client_response(client_bytes)
        try:
            claims = verify_jwt(token, self.jwks.keys(), self.settings)
        except InvalidToken as e:
            self._error = f"Authentication failed: invalid token ({e})"
            challenge = {"status": "invalid_token"}
            if self.settings.audience:
                challenge["scope"] = " ".join(self.settings.audience)
            return SaslStep(json.dumps(challenge).encode(), False)
        subject = str(claims[self.settings.sub_claim])
        if authzid is not None and authzid != subject:
            raise PermissionError("Authentication failed: Client requested an authorization "
                                  "id that is different from the token's principal name")
        self._done = True
        return SaslStep(b"", True, Principal(subject))
