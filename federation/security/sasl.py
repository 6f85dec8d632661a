"""Server-side SASL exchanges: the per-connection authenticator protocol, SCRAM, PLAIN.

A proxy asks the plugins for one :class:`SaslAuthenticator` per connection when the
client's SaslHandshake names a mechanism (hook ``fedkafka_sasl_authenticator``), then
feeds it the bytes of each SaslAuthenticate request. Each :meth:`~SaslAuthenticator.step`
answers the bytes to send back, whether the exchange is finished, and (when it is) the
principal. A step that raises :class:`PermissionError` fails the authentication: the
proxy answers SASL_AUTHENTICATION_FAILED with the message and closes the connection.

:class:`ScramServer` is SCRAM-SHA-256/512 (RFC 5802, RFC 7677) as Kafka implements it:
no channel binding (gs2 header ``n,,`` or ``n,a=USER,``), the authorization id, if any,
equal to the user name, the server's nonce appended to the client's, a client proof
checked against the stored key in constant time, ``v=`` the server signature. An unknown
user is answered like a known one (a salt derived from the name) and fails only at the
proof, so the exchange does not tell which users exist. :class:`ScramClient` is the
client side (tests and tools).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Callable
from typing import NamedTuple, Protocol, runtime_checkable

from federation.core.credentials import (
    DEFAULT_ITERATIONS,
    MIN_ITERATIONS,
    SCRAM_HASHES,
    ScramCredential,
    salted_password,
    scram_hash,
    scram_hmac,
)
from federation.core.model import Principal

__all__ = [
    "SaslAuthenticator",
    "SaslStep",
    "ScramClient",
    "ScramServer",
    "SingleRound",
    "parse_plain",
]

#: The message of every failed SCRAM authentication (Kafka's own words).
SCRAM_FAILED = ("Authentication failed during authentication due to invalid credentials "
                "with SASL mechanism {mechanism}")


class SaslStep(NamedTuple):
    """One step's answer: bytes for the client, finished or not, and who it is when done."""

    server_bytes: bytes
    done: bool
    principal: Principal | None = None


@runtime_checkable
class SaslAuthenticator(Protocol):
    """The server side of one connection's SASL exchange (one object per connection)."""

    def step(self, client_bytes: bytes) -> SaslStep:
        """Take the client's next SaslAuthenticate bytes.

        :returns: ``SaslStep(server_bytes, done, principal)``; ``principal`` is required
            when ``done``.
        :raises PermissionError: to fail the authentication (its message goes to the
            client, and the proxy closes the connection).
        """
        ...


class SingleRound:
    """An authenticator over a one-round check (``fedkafka_authenticate``-style)."""

    def __init__(self, authenticate: Callable[[bytes], Principal | None]) -> None:
        self._authenticate = authenticate
        self._used = False

    def step(self, client_bytes: bytes) -> SaslStep:
        if self._used:
            raise PermissionError("the exchange is already finished")
        self._used = True
        principal = self._authenticate(client_bytes)
        if principal is None:
            raise PermissionError("authentication failed")
        return SaslStep(b"", True, principal)


def parse_plain(auth_bytes: bytes) -> tuple[str, bytes]:
    """SASL/PLAIN's ``[authzid] NUL authcid NUL passwd`` → (user name, password bytes).

    :raises PermissionError: as Kafka's PlainSaslServer refuses: not three fields, an
        empty user or password, an authorization id other than the user.
    """
    parts = auth_bytes.split(b"\0")
    if len(parts) != 3:
        raise PermissionError("Invalid SASL/PLAIN response: expected 3 tokens, got "
                              f"{len(parts)}")
    authzid, user, password = parts
    if not user:
        raise PermissionError("Authentication failed: username not specified")
    if not password:
        raise PermissionError("Authentication failed: password not specified")
    if authzid and authzid != user:
        raise PermissionError("Authentication failed: Client requested an authorization id "
                              "that is different from username")
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        raise PermissionError("Authentication failed: the username is not UTF-8") from None


# -- SCRAM ---------------------------------------------------------------------------------


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise PermissionError("Invalid SCRAM message: bad base64") from None


def encode_sasl_name(name: str) -> str:
    """RFC 5802 saslname: ``,`` → ``=2C`` and ``=`` → ``=3D``."""
    return name.replace("=", "=3D").replace(",", "=2C")


def decode_sasl_name(text: str) -> str:
    """Inverse of :func:`encode_sasl_name`; any other ``=`` is an error."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "=":
            escape = text[i:i + 3]
            if escape not in ("=2C", "=3D"):
                raise PermissionError("Invalid SCRAM message: bad username encoding")
            out.append("," if escape == "=2C" else "=")
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _valid_nonce(nonce: str) -> bool:
    return bool(nonce) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce)


def _attributes(parts: list[str], where: str) -> list[tuple[str, str]]:
    attrs = []
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1 or not key.isalpha():
            raise PermissionError(f"Invalid SCRAM {where}: bad attribute {part[:20]!r}")
        attrs.append((key, value))
    return attrs


class ScramServer:
    """The server side of one SCRAM-SHA-256/512 exchange.

    :param mechanism: ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``.
    :param lookup: the stored credential of a user for this mechanism, or None.
    :param server_nonce: the server's part of the nonce (random by default; tests).
    :param unknown_user_key: key deriving fake salts for unknown users (random by default).
    """

    def __init__(self, mechanism: str, lookup: Callable[[str], ScramCredential | None], *,
                 server_nonce: str | None = None,
                 unknown_user_key: bytes | None = None) -> None:
        if mechanism not in SCRAM_HASHES:
            raise ValueError(f"unknown SCRAM mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._lookup = lookup
        self._server_nonce = server_nonce or secrets.token_urlsafe(24)
        self._unknown_key = unknown_user_key or _UNKNOWN_USER_KEY
        self._state = "client-first"
        self._user = ""
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._credential: ScramCredential | None = None

    @property
    def failed(self) -> PermissionError:
        return PermissionError(SCRAM_FAILED.format(mechanism=self.mechanism))

    def step(self, client_bytes: bytes) -> SaslStep:
        state, self._state = self._state, "done"  # any error ends the exchange
        if state == "client-first":
            answer = self._client_first(client_bytes)
            self._state = "client-final"
            return answer
        if state == "client-final":
            return self._client_final(client_bytes)
        raise PermissionError("Invalid SCRAM state: the exchange is already finished")

    def _client_first(self, data: bytes) -> SaslStep:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PermissionError("Invalid SCRAM client first message: not UTF-8") from None
        parts = text.split(",")
        if len(parts) < 4:
            raise PermissionError("Invalid SCRAM client first message")
        cbind, authzid = parts[0], parts[1]
        if cbind != "n":
            raise PermissionError("Invalid SCRAM client first message: channel binding is "
                                  "not supported (gs2 header must be 'n,,')")
        if authzid and not authzid.startswith("a="):
            raise PermissionError("Invalid SCRAM client first message: bad authzid")
        attrs = _attributes(parts[2:], "client first message")
        if attrs[0][0] != "n" or attrs[1][0] != "r":
            raise PermissionError("Invalid SCRAM client first message: expected n=, r=")
        user = decode_sasl_name(attrs[0][1])
        client_nonce = attrs[1][1]
        if not user or not _valid_nonce(client_nonce):
            raise PermissionError("Invalid SCRAM client first message: bad user or nonce")
        if authzid and decode_sasl_name(authzid[2:]) != user:
            raise PermissionError(f"Authzid {authzid[2:]!r} is not the same as user name")
        for key, value in attrs[2:]:
            if key == "m":
                raise PermissionError("Invalid SCRAM client first message: unsupported "
                                      "mandatory extension")
            if key == "t" or (key == "k" and value.startswith("tokenauth")):
                raise PermissionError("Delegation token authentication is not supported")
        self._user = user
        self._gs2_header = f"{cbind},{authzid},"
        self._client_first_bare = ",".join(parts[2:])
        self._nonce = client_nonce + self._server_nonce
        self._credential = self._lookup(user)
        if self._credential is not None:
            salt, iterations = self._credential.salt, self._credential.iterations
        else:
            salt = scram_hmac(self.mechanism, self._unknown_key, user.encode("utf-8"))
            iterations = DEFAULT_ITERATIONS
        self._server_first = f"r={self._nonce},s={_b64(salt)},i={iterations}"
        return SaslStep(self._server_first.encode("ascii"), False)

    def _client_final(self, data: bytes) -> SaslStep:
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise PermissionError("Invalid SCRAM client final message: not ASCII") from None
        head, sep, proof_text = text.rpartition(",p=")
        if not sep:
            raise PermissionError("Invalid SCRAM client final message: no proof")
        attrs = _attributes(head.split(","), "client final message")
        if len(attrs) < 2 or attrs[0][0] != "c" or attrs[1][0] != "r":
            raise PermissionError("Invalid SCRAM client final message: expected c=, r=")
        if not hmac.compare_digest(_unb64(attrs[0][1]), self._gs2_header.encode("utf-8")):
            raise PermissionError("Invalid SCRAM client final message: channel binding "
                                  "does not match the client first message")
        if not hmac.compare_digest(attrs[1][1].encode("ascii"), self._nonce.encode("ascii")):
            raise PermissionError("Invalid client nonce in the final client message.")
        proof = _unb64(proof_text)
        credential = self._credential
        if credential is None or len(proof) != len(credential.stored_key):
            raise self.failed
        auth_message = ",".join((self._client_first_bare, self._server_first, head))
        signature = scram_hmac(self.mechanism, credential.stored_key,
                               auth_message.encode("utf-8"))
        client_key = _xor(proof, signature)
        if not hmac.compare_digest(scram_hash(self.mechanism, client_key),
                                   credential.stored_key):
            raise self.failed
        verifier = scram_hmac(self.mechanism, credential.server_key,
                              auth_message.encode("utf-8"))
        return SaslStep(f"v={_b64(verifier)}".encode("ascii"), True, Principal(self._user))


#: Per-process key for the salts shown to unknown users.
_UNKNOWN_USER_KEY = secrets.token_bytes(32)


class ScramClient:
    """The client side of SCRAM-SHA-256/512 (for tests and tools)."""

    def __init__(self, mechanism: str, user: str, password: str, *,
                 nonce: str | None = None) -> None:
        if mechanism not in SCRAM_HASHES:
            raise ValueError(f"unknown SCRAM mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._password = password.encode("utf-8")
        self._nonce = nonce or secrets.token_urlsafe(24)
        self._bare = f"n={encode_sasl_name(user)},r={self._nonce}"
        self._server_signature = b""

    def first(self) -> bytes:
        return f"n,,{self._bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode("utf-8")
        attrs = dict(_attributes(text.split(","), "server first message"))
        nonce, salt, iterations = attrs["r"], _unb64(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self._nonce) or nonce == self._nonce:
            raise PermissionError("the server's nonce does not extend the client's")
        if iterations < MIN_ITERATIONS:
            raise PermissionError(f"{iterations} iterations is below {MIN_ITERATIONS}")
        salted = salted_password(self.mechanism, self._password, salt, iterations)
        client_key = scram_hmac(self.mechanism, salted, b"Client Key")
        without_proof = f"c={_b64(b'n,,')},r={nonce}"
        auth_message = f"{self._bare},{text},{without_proof}".encode()
        signature = scram_hmac(self.mechanism, scram_hash(self.mechanism, client_key),
                               auth_message)
        server_key = scram_hmac(self.mechanism, salted, b"Server Key")
        self._server_signature = scram_hmac(self.mechanism, server_key, auth_message)
        return f"{without_proof},p={_b64(_xor(client_key, signature))}".encode()

    def verify(self, server_final: bytes) -> None:
        """:raises PermissionError: if the server did not prove it knows the credential."""
        text = server_final.decode("utf-8")
        if not text.startswith("v=") or not hmac.compare_digest(
                _unb64(text[2:]), self._server_signature):
            raise PermissionError(f"the server's signature is wrong: {text[:40]!r}")
