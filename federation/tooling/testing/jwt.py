"""Locally issued JWTs for tests: an RSA key made in pure Python, its JWKS, RS256 tokens.

A test convenience, not an identity provider: it lets tests issue tokens with no crypto
library installed and no identity provider running.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from federation.security.oauthbearer import ALGORITHMS

_SMALL_PRIMES = [p for p in range(3, 2000) if all(p % d for d in range(2, int(p ** .5) + 1))]


def _probably_prime(n: int, rounds: int = 40) -> bool:
    if any(n % p == 0 for p in _SMALL_PRIMES):
        return n in _SMALL_PRIMES
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if _probably_prime(candidate):
            return candidate


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(n: int) -> str:
    return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True)
class RsaKeyPair:
    n: int
    e: int
    d: int
    kid: str

    @classmethod
    def generate(cls, kid: str = "test-key", bits: int = 2048) -> RsaKeyPair:
        e = 65537
        while True:
            p, q = _prime(bits // 2), _prime(bits // 2)
            phi = (p - 1) * (q - 1)
            if p != q and (p * q).bit_length() == bits and phi % e:
                return cls(p * q, e, pow(e, -1, phi), kid)

    def jwk(self) -> dict[str, Any]:
        return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                "n": _uint(self.n), "e": _uint(self.e)}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk()]}

    def sign(self, claims: dict[str, Any], algorithm: str = "RS256",
             header: dict[str, Any] | None = None) -> str:
        """A compact JWS of ``claims`` signed with this key (RSASSA-PKCS1-v1_5)."""
        head = {"alg": algorithm, "typ": "JWT", "kid": self.kid, **(header or {})}
        signing_input = (f"{_b64url(json.dumps(head).encode())}."
                         f"{_b64url(json.dumps(claims).encode())}")
        hash_name, prefix = ALGORITHMS[algorithm]
        size = (self.n.bit_length() + 7) // 8
        digest_info = prefix + hashlib.new(hash_name, signing_input.encode()).digest()
        encoded = b"\x00\x01" + b"\xff" * (size - 3 - len(digest_info)) + b"\x00" + digest_info
        signature = pow(int.from_bytes(encoded, "big"), self.d, self.n).to_bytes(size, "big")
        return f"{signing_input}.{_b64url(signature)}"

    def token(self, subject: str, lifetime: float = 3600, **claims: Any) -> str:
        now = int(time.time())
        return self.sign({"sub": subject, "iat": now, "exp": now + int(lifetime),
                          "scope": "kafka", **claims})
