"""Stored user credentials: SCRAM salted keys and salted PLAIN hashes, never passwords.

Pure data plus the one-way derivations that make it (no I/O). A user of the federation
(``FederationMap.users``, managed with ``fedkafka user add|remove|list``) holds, per
mechanism:

* ``SCRAM-SHA-256`` / ``SCRAM-SHA-512``: what Kafka stores for SCRAM (RFC 5802):
  ``salt``, ``iterations``, ``stored_key = H(HMAC(SaltedPassword, "Client Key"))`` and
  ``server_key = HMAC(SaltedPassword, "Server Key")`` with
  ``SaltedPassword = PBKDF2-HMAC-H(password, salt, iterations)``. A server holding these
  can verify a SCRAM client proof but cannot compute one.
* ``PLAIN``: ``PBKDF2-HMAC-SHA256(password, salt, iterations)``, compared in constant
  time with the password a SASL/PLAIN client sends.

Passwords are used as their UTF-8 bytes, as Kafka does (no SASLprep).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_ITERATIONS",
    "MAX_ITERATIONS",
    "MECHANISMS",
    "MIN_ITERATIONS",
    "PLAIN",
    "SCRAM_HASHES",
    "PlainCredential",
    "ScramCredential",
    "UserCredentials",
    "make_user",
    "plain_credential",
    "scram_credential",
    "validate_user_name",
]

PLAIN = "PLAIN"
#: SCRAM mechanisms Kafka implements → the hashlib name of their hash function.
SCRAM_HASHES: Mapping[str, str] = MappingProxyType({"SCRAM-SHA-256": "sha256",
                                                    "SCRAM-SHA-512": "sha512"})
#: Every mechanism a stored user can have a credential for.
MECHANISMS: tuple[str, ...] = (*SCRAM_HASHES, PLAIN)
#: Kafka's bounds for SCRAM iterations (``ScramMechanism.minIterations``/``maxIterations``).
MIN_ITERATIONS = 4096
MAX_ITERATIONS = 16384
DEFAULT_ITERATIONS = 4096
SALT_BYTES = 32  # what Kafka's ScramFormatter.secureRandomBytes makes for a salt


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError(f"{what}: not base64") from None


def _check_iterations(iterations: int, what: str) -> None:
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"{what}: iterations must be between {MIN_ITERATIONS} and "
                         f"{MAX_ITERATIONS}, got {iterations}")


@dataclass(frozen=True, slots=True)
class ScramCredential:
    """One user's SCRAM credential for one mechanism, as Kafka stores it."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"salt": _b64(self.salt), "iterations": self.iterations,
                "stored_key": _b64(self.stored_key), "server_key": _b64(self.server_key)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], what: str = "scram") -> ScramCredential:
        _only(what, data, {"salt", "iterations", "stored_key", "server_key"})
        return cls(_unb64(data["salt"], f"{what} salt"), int(data["iterations"]),
                   _unb64(data["stored_key"], f"{what} stored_key"),
                   _unb64(data["server_key"], f"{what} server_key"))

    def validate(self, mechanism: str) -> None:
        size = hashlib.new(SCRAM_HASHES[mechanism]).digest_size
        _check_iterations(self.iterations, mechanism)
        if not self.salt:
            raise ValueError(f"{mechanism}: empty salt")
        if len(self.stored_key) != size or len(self.server_key) != size:
            raise ValueError(f"{mechanism}: keys must be {size} bytes")


@dataclass(frozen=True, slots=True)
class PlainCredential:
    """A salted PBKDF2-HMAC-SHA256 hash of a user's password, for SASL/PLAIN."""

    salt: bytes
    iterations: int
    hash: bytes
    algorithm: str = "pbkdf2-sha256"

    def verify(self, password: bytes) -> bool:
        """Whether ``password`` (UTF-8 bytes) is the one hashed (constant-time compare)."""
        candidate = hashlib.pbkdf2_hmac("sha256", password, self.salt, self.iterations)
        return hmac.compare_digest(candidate, self.hash)

    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "salt": _b64(self.salt),
                "iterations": self.iterations, "hash": _b64(self.hash)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], what: str = "plain") -> PlainCredential:
        _only(what, data, {"algorithm", "salt", "iterations", "hash"})
        return cls(_unb64(data["salt"], f"{what} salt"), int(data["iterations"]),
                   _unb64(data["hash"], f"{what} hash"), str(data.get("algorithm",
                                                                        "pbkdf2-sha256")))

    def validate(self) -> None:
        if self.algorithm != "pbkdf2-sha256":
            raise ValueError(f"PLAIN: unknown hash algorithm {self.algorithm!r}")
        _check_iterations(self.iterations, PLAIN)
        if not self.salt or len(self.hash) != 32:
            raise ValueError("PLAIN: bad salt or hash")


@dataclass(frozen=True, slots=True)
class UserCredentials:
    """Everything stored for one user: SCRAM credentials by mechanism, a PLAIN hash."""

    scram: Mapping[str, ScramCredential] = field(default_factory=dict, hash=False)
    plain: PlainCredential | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.scram, MappingProxyType):
            object.__setattr__(self, "scram", MappingProxyType(dict(self.scram)))

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """The mechanisms this user can authenticate with, in :data:`MECHANISMS` order."""
        return tuple(m for m in MECHANISMS
                     if m in self.scram or (m == PLAIN and self.plain is not None))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {m: c.to_dict() for m, c in self.scram.items()}
        if self.plain is not None:
            out[PLAIN] = self.plain.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], what: str = "user") -> UserCredentials:
        _only(what, data, MECHANISMS)
        scram = {m: ScramCredential.from_dict(data[m], f"{what} {m}")
                 for m in SCRAM_HASHES if m in data}
        plain = PlainCredential.from_dict(data[PLAIN], f"{what} {PLAIN}") if PLAIN in data \
            else None
        return cls(scram, plain)

    def validate(self, name: str) -> None:
        validate_user_name(name)
        if not self.mechanisms:
            raise ValueError(f"user {name!r} has no credential")
        try:
            for mechanism, credential in self.scram.items():
                if mechanism not in SCRAM_HASHES:
                    raise ValueError(f"unknown SCRAM mechanism {mechanism!r}")
                credential.validate(mechanism)
            if self.plain is not None:
                self.plain.validate()
        except ValueError as e:
            raise ValueError(f"user {name!r}: {e}") from None


def validate_user_name(name: str) -> None:
    """Refuse names a SASL client cannot send (empty, control characters, NUL)."""
    if not name or len(name) > 256:
        raise ValueError("a user name has 1 to 256 characters")
    if any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise ValueError(f"user name {name!r} holds control characters")


def _only(what: str, data: Mapping[str, Any], allowed: Iterable[str]) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what}: expected an object")
    unknown = set(data) - set(allowed)
    if unknown:
        raise ValueError(f"{what}: unknown keys {sorted(unknown)}")


# -- derivations -------------------------------------------------------------------------------


def salted_password(mechanism: str, password: bytes, salt: bytes, iterations: int) -> bytes:
    """RFC 5802 ``Hi(password, salt, i)``: PBKDF2 with the mechanism's HMAC."""
    return hashlib.pbkdf2_hmac(SCRAM_HASHES[mechanism], password, salt, iterations)


def scram_hmac(mechanism: str, key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, SCRAM_HASHES[mechanism]).digest()


def scram_hash(mechanism: str, data: bytes) -> bytes:
    return hashlib.new(SCRAM_HASHES[mechanism], data).digest()


def scram_credential(mechanism: str, password: str, iterations: int = DEFAULT_ITERATIONS,
                     salt: bytes | None = None) -> ScramCredential:
    """The SCRAM credential Kafka would store for ``password`` (a fresh salt by default)."""
    if mechanism not in SCRAM_HASHES:
        raise ValueError(f"unknown SCRAM mechanism {mechanism!r}")
    _check_iterations(iterations, mechanism)
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    salted = salted_password(mechanism, password.encode("utf-8"), salt, iterations)
    client_key = scram_hmac(mechanism, salted, b"Client Key")
    return ScramCredential(salt, iterations, scram_hash(mechanism, client_key),
                           scram_hmac(mechanism, salted, b"Server Key"))


def plain_credential(password: str, iterations: int = DEFAULT_ITERATIONS,
                     salt: bytes | None = None) -> PlainCredential:
    """A salted hash of ``password`` for SASL/PLAIN (a fresh salt by default)."""
    _check_iterations(iterations, PLAIN)
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    return PlainCredential(salt, iterations,
                           hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt,
                                               iterations))


def make_user(password: str, mechanisms: Iterable[str] = MECHANISMS,
              iterations: int = DEFAULT_ITERATIONS) -> UserCredentials:
    """Credentials for ``password`` for each of ``mechanisms`` (each with its own salt)."""
    wanted = list(dict.fromkeys(mechanisms))
    unknown = [m for m in wanted if m not in MECHANISMS]
    if unknown or not wanted:
        raise ValueError(f"mechanisms must be among {', '.join(MECHANISMS)}, got "
                         f"{', '.join(wanted) or 'none'}")
    if not password:
        raise ValueError("the password is empty")
    return UserCredentials(
        scram={m: scram_credential(m, password, iterations) for m in wanted
               if m in SCRAM_HASHES},
        plain=plain_credential(password, iterations) if PLAIN in wanted else None)
