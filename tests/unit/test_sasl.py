"""SASL: SCRAM against the RFC 7677 test vector and other implementations, PLAIN hashes,
stored credentials in the map, and the built-in authentication plugins."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator

import pytest
from kafka.net.sasl.scram import ScramClient as KafkaPythonScramClient

from federation.core import credentials
from federation.core.credentials import (
    PLAIN,
    PlainCredential,
    ScramCredential,
    UserCredentials,
    make_user,
    plain_credential,
    scram_credential,
)
from federation.core.model import FederationMap, Principal
from federation.plugin import Plugins, hookimpl, make_plugin_manager
from federation.security.sasl import (
    SaslStep,
    ScramClient,
    ScramServer,
    SingleRound,
    decode_sasl_name,
    encode_sasl_name,
    parse_plain,
)
from federation.store import mapstore

# RFC 7677 section 3: SCRAM-SHA-256, user "user", password "pencil".
RFC7677 = {
    "client_first": b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
    "server_first": b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    "client_final": b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    "server_final": b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
}
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SHA256 = "SCRAM-SHA-256"
SHA512 = "SCRAM-SHA-512"


def rfc_server(password: str = "pencil") -> ScramServer:
    stored = scram_credential(SHA256, password, 4096, RFC_SALT)
    return ScramServer(SHA256, {"user": stored}.get, server_nonce=RFC_SERVER_NONCE)


# -- SCRAM ------------------------------------------------------------------------------------


def test_scram_sha256_server_reproduces_the_rfc7677_exchange() -> None:
    server = rfc_server()
    first = server.step(RFC7677["client_first"])
    assert first == SaslStep(RFC7677["server_first"], False, None)
    final = server.step(RFC7677["client_final"])
    assert final == SaslStep(RFC7677["server_final"], True, Principal("user"))
    with pytest.raises(PermissionError, match="already finished"):
        server.step(RFC7677["client_final"])


def test_scram_sha256_client_reproduces_the_rfc7677_exchange() -> None:
    client = ScramClient(SHA256, "user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    assert client.first() == RFC7677["client_first"]
    assert client.final(RFC7677["server_first"]) == RFC7677["client_final"]
    client.verify(RFC7677["server_final"])
    with pytest.raises(PermissionError, match="signature"):
        client.verify(b"v=" + base64.b64encode(b"\0" * 32))


def test_stored_credential_is_what_kafka_stores() -> None:
    """Kafka stores salt, iterations, StoredKey = H(ClientKey), ServerKey (RFC 5802)."""
    import hashlib
    import hmac

    cred = scram_credential(SHA512, "pencil", 8192, b"salty")
    salted = hashlib.pbkdf2_hmac("sha512", b"pencil", b"salty", 8192)
    client_key = hmac.new(salted, b"Client Key", "sha512").digest()
    assert cred == ScramCredential(b"salty", 8192, hashlib.sha512(client_key).digest(),
                                   hmac.new(salted, b"Server Key", "sha512").digest())


@pytest.mark.parametrize("mechanism", [SHA256, SHA512])
def test_scram_server_against_kafka_pythons_client(mechanism: str) -> None:
    """An independent client implementation authenticates, and checks our signature."""
    users = {"alice": scram_credential(mechanism, "wonder land", 4096)}
    server = ScramServer(mechanism, users.get)
    client = KafkaPythonScramClient("alice", "wonder land", mechanism)
    first = server.step(client.first_message())
    client.process_server_first_message(first.server_bytes)
    final = server.step(client.final_message())
    client.process_server_final_message(final.server_bytes)  # raises on a bad signature
    assert final.done and final.principal == Principal("alice")


@pytest.mark.parametrize("mechanism", [SHA256, SHA512])
def test_scram_round_trip_with_our_client_and_an_escaped_name(mechanism: str) -> None:
    name = "a=b,c"
    assert encode_sasl_name(name) == "a=3Db=2Cc" and decode_sasl_name("a=3Db=2Cc") == name
    users = {name: scram_credential(mechanism, "pw", 4096)}
    server = ScramServer(mechanism, users.get)
    client = ScramClient(mechanism, name, "pw")
    final = server.step(client.final(server.step(client.first()).server_bytes))
    client.verify(final.server_bytes)
    assert final.principal == Principal(name)


def test_scram_wrong_password_fails_at_the_proof_with_kafkas_message() -> None:
    server = rfc_server(password="not pencil")
    server.step(RFC7677["client_first"])
    with pytest.raises(PermissionError, match="invalid credentials with SASL mechanism "
                                              "SCRAM-SHA-256"):
        server.step(RFC7677["client_final"])
    with pytest.raises(PermissionError):  # and the exchange is over
        server.step(RFC7677["client_final"])


def test_scram_unknown_user_looks_like_a_known_one_until_the_proof() -> None:
    server = ScramServer(SHA256, {}.get, server_nonce="xyz", unknown_user_key=b"k")
    first = server.step(b"n,,n=nobody,r=abc").server_bytes
    again = ScramServer(SHA256, {}.get, server_nonce="xyz", unknown_user_key=b"k")
    assert again.step(b"n,,n=nobody,r=abc").server_bytes == first  # a stable fake salt
    nonce, salt, iterations = (part.split(b"=", 1)[1] for part in first.split(b","))
    assert nonce == b"abcxyz" and iterations == b"4096" and base64.b64decode(salt)
    client = ScramClient(SHA256, "nobody", "guess", nonce="abc")
    with pytest.raises(PermissionError, match="invalid credentials"):
        server.step(client.final(first))


@pytest.mark.parametrize(("client_first", "why"), [
    (b"y,,n=user,r=abc", "channel binding"),
    (b"p=tls-unique,,n=user,r=abc", "channel binding"),
    (b"n,a=other,n=user,r=abc", "not the same as user name"),
    (b"n,,m=ext,n=user,r=abc", "expected n=, r="),
    (b"n,,n=user,r=abc,m=must", "mandatory extension"),
    (b"n,,n=user,r=abc,tokenauth=true", "bad attribute"),
    (b"n,,n=user,r=abc,t=1", "Delegation token"),
    (b"n,,n=us=er,r=abc", "username encoding"),
    (b"n,,n=user,r=", "bad user or nonce"),
    (b"n,,n=user", "Invalid SCRAM client first message"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_scram_refuses_malformed_client_first(client_first: bytes, why: str) -> None:
    with pytest.raises(PermissionError, match=why):
        rfc_server().step(client_first)


def test_scram_authzid_equal_to_the_user_is_accepted() -> None:
    server = rfc_server()
    first = server.step(b"n,a=user,n=user,r=rOprNGfwEbeRWgbNEkqO").server_bytes
    assert first == RFC7677["server_first"]
    # The channel binding must now be base64("n,a=user,"), not "biws".
    with pytest.raises(PermissionError, match="channel binding"):
        server.step(RFC7677["client_final"])


@pytest.mark.parametrize(("client_final", "why"), [
    (RFC7677["client_final"].replace(b"c=biws", b"c=eSws"), "channel binding"),
    (RFC7677["client_final"].replace(b"$k0,", b"$k1,"), "Invalid client nonce"),
    (RFC7677["client_final"].replace(b"p=dHzb", b"p=dHzc"), "invalid credentials"),
    (RFC7677["client_final"].replace(b",p=", b",q="), "no proof"),
    (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!", "base64"),
    (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
     "invalid credentials"),
])
def test_scram_refuses_bad_client_final(client_final: bytes, why: str) -> None:
    server = rfc_server()
    server.step(RFC7677["client_first"])
    with pytest.raises(PermissionError, match=why):
        server.step(client_final)


def test_scram_client_refuses_a_weak_or_foreign_server() -> None:
    client = ScramClient(SHA256, "user", "pencil", nonce="abc")
    with pytest.raises(PermissionError, match="below 4096"):
        client.final(b"r=abcdef,s=c2FsdA==,i=1024")
    with pytest.raises(PermissionError, match="nonce"):
        client.final(b"r=zzzdef,s=c2FsdA==,i=4096")


# -- PLAIN ------------------------------------------------------------------------------------


def test_plain_hash_is_salted_pbkdf2_sha256() -> None:
    # The published PBKDF2-HMAC-SHA256 vector: P="password", S="salt", c=4096, dkLen=32.
    cred = plain_credential("password", 4096, b"salt")
    assert cred.hash.hex() == ("c5e478d59288c841aa530db6845c4c8d"
                               "962893a001ce4e11a4963873aa98134a")
    assert cred.verify(b"password") and not cred.verify(b"passwort")
    assert not cred.verify(b"")
    a, b = plain_credential("same"), plain_credential("same")
    assert a.salt != b.salt and a.hash != b.hash  # a fresh salt each time
    with pytest.raises(ValueError, match="iterations"):
        plain_credential("x", 1000)


@pytest.mark.parametrize(("auth_bytes", "expected"), [
    (b"\0alice\0secret", ("alice", b"secret")),
    (b"alice\0alice\0secret", ("alice", b"secret")),
    (b"\0al\xc3\xafce\0s\0", None),  # four fields
    (b"\0\0secret", "username not specified"),
    (b"\0alice\0", "password not specified"),
    (b"bob\0alice\0secret", "authorization id"),
    (b"alice:secret", "expected 3 tokens"),
])
def test_parse_plain(auth_bytes: bytes, expected: object) -> None:
    if isinstance(expected, tuple):
        assert parse_plain(auth_bytes) == expected
    else:
        with pytest.raises(PermissionError, match=expected if isinstance(expected, str)
                           else "3 tokens"):
            parse_plain(auth_bytes)


# -- stored users -----------------------------------------------------------------------------


def test_users_are_stored_in_the_map_without_passwords() -> None:
    password = "correct horse battery staple"
    alice = make_user(password)
    assert alice.mechanisms == (SHA256, SHA512, PLAIN)
    assert alice.scram[SHA256].salt != alice.scram[SHA512].salt != alice.plain.salt  # type: ignore[union-attr]
    fmap = FederationMap(version=3, users={"alice": alice,
                                           "bob": make_user("x", [SHA512], 8192)})
    fmap.validate()
    text = mapstore.dumps(fmap)
    assert password not in text and "correct" not in text
    doc = json.loads(text)
    assert sorted(doc["users"]) == ["alice", "bob"]
    assert sorted(doc["users"]["alice"]) == sorted([SHA256, SHA512, PLAIN])
    assert sorted(doc["users"]["alice"][SHA256]) == ["iterations", "salt", "server_key",
                                                     "stored_key"]
    assert doc["users"]["bob"] == {SHA512: {**doc["users"]["bob"][SHA512], "iterations": 8192}}
    back = mapstore.loads(text)
    assert back.users == fmap.users
    assert "users" not in FederationMap(version=1).to_dict()  # only when there are users
    assert "salt" not in repr(fmap)


def test_stored_users_are_validated() -> None:
    weak = dataclasses.replace(scram_credential(SHA256, "pw"), iterations=1000)
    with pytest.raises(ValueError, match="iterations"):
        FederationMap(version=1, users={"u": UserCredentials({SHA256: weak})}).validate()
    with pytest.raises(ValueError, match="no credential"):
        FederationMap(version=1, users={"u": UserCredentials()}).validate()
    with pytest.raises(ValueError, match="control characters"):
        FederationMap(version=1, users={"a\nb": make_user("pw", [PLAIN])}).validate()
    doc = FederationMap(version=1, users={"u": make_user("pw", [PLAIN])}).to_dict()
    doc["users"]["u"]["SCRAM-SHA-1"] = {}
    with pytest.raises(ValueError, match="unknown keys"):
        FederationMap.from_dict(doc)
    with pytest.raises(ValueError, match="mechanisms must be among"):
        make_user("pw", ["SCRAM-SHA-1"])
    with pytest.raises(ValueError, match="empty"):
        make_user("", [PLAIN])
    bad = PlainCredential(b"s", 4096, b"short")
    with pytest.raises(ValueError, match="bad salt or hash"):
        bad.validate()
    assert credentials.MIN_ITERATIONS == 4096


# -- the built-in plugins and the hook ---------------------------------------------------------


@pytest.fixture
def plugins() -> Iterator[Plugins]:
    yield Plugins(make_plugin_manager(entry_points=False))


USERS_MAP = FederationMap(version=1, users={
    "alice": make_user("wonderland"),
    "scrammy": make_user("s3cret", [SHA512]),
})


def test_mechanisms_are_offered_only_while_users_hold_them(plugins: Plugins) -> None:
    assert plugins.sasl_mechanisms() == []
    assert plugins.sasl_mechanisms(FederationMap(version=1)) == []  # as before: anonymous
    assert sorted(plugins.sasl_mechanisms(USERS_MAP)) == [PLAIN, SHA256, SHA512]
    only512 = FederationMap(version=1, users={"s": make_user("x", [SHA512])})
    assert plugins.sasl_mechanisms(only512) == [SHA512]


def test_builtin_plain_checks_the_stored_hash(plugins: Plugins) -> None:
    def plain(user: str, password: str) -> Principal | None:
        return plugins.authenticate(PLAIN, f"\0{user}\0{password}".encode(), USERS_MAP)

    assert plain("alice", "wonderland") == Principal("alice")
    with pytest.raises(PermissionError, match="Invalid username or password"):
        plain("alice", "wonderlant")
    assert plain("nobody", "x") is None  # not ours: no plugin answers, so it fails
    assert plain("scrammy", "s3cret") is None  # no PLAIN credential stored
    assert plugins.authenticate(PLAIN, b"\0alice\0wonderland") is None  # no map, no users
    with pytest.raises(PermissionError, match="authentication failed"):
        plugins.sasl_authenticator(PLAIN, USERS_MAP).step(b"\0nobody\0x")


def test_fedkafka_sasl_authenticator(plugins: Plugins) -> None:
    # Built in: SCRAM against the map's users, over several rounds.
    for mechanism, user, password in ((SHA256, "alice", "wonderland"),
                                      (SHA512, "scrammy", "s3cret")):
        server = plugins.sasl_authenticator(mechanism, USERS_MAP)
        assert isinstance(server, ScramServer)
        client = ScramClient(mechanism, user, password)
        first = server.step(client.first())
        assert not first.done and first.principal is None
        final = server.step(client.final(first.server_bytes))
        client.verify(final.server_bytes)
        assert final.done and final.principal == Principal(user)
    server = plugins.sasl_authenticator(SHA256, USERS_MAP)
    client = ScramClient(SHA256, "scrammy", "s3cret")  # holds no SHA-256 credential
    with pytest.raises(PermissionError):
        server.step(client.final(server.step(client.first()).server_bytes))

    # A mechanism no plugin steps through: one round over fedkafka_authenticate.
    assert isinstance(plugins.sasl_authenticator(PLAIN, USERS_MAP), SingleRound)
    plain = plugins.sasl_authenticator(PLAIN, USERS_MAP)
    assert plain.step(b"\0alice\0wonderland") == SaslStep(b"", True, Principal("alice"))
    with pytest.raises(PermissionError, match="already finished"):
        plain.step(b"\0alice\0wonderland")

    # A third-party multi-round mechanism is asked first.
    class Knock:
        """A toy mechanism: the client names itself, then answers the server's riddle."""

        @hookimpl
        def fedkafka_sasl_mechanisms(self) -> list[str]:
            return ["X-KNOCK"]

        @hookimpl
        def fedkafka_sasl_authenticator(self, mechanism: str) -> object:
            if mechanism != "X-KNOCK":
                return None

            class Exchange:
                name = ""

                def step(self, client_bytes: bytes) -> SaslStep:
                    if not self.name:
                        self.name = client_bytes.decode()
                        return SaslStep(b"who's there?", False)
                    if client_bytes != self.name[::-1].encode():
                        raise PermissionError("wrong answer")
                    return SaslStep(b"come in", True, Principal(self.name))
            return Exchange()

    plugins.register(Knock())
    assert "X-KNOCK" in plugins.sasl_mechanisms(USERS_MAP)
    knock = plugins.sasl_authenticator("X-KNOCK", USERS_MAP)
    assert knock.step(b"olleh") == SaslStep(b"who's there?", False, None)
    assert knock.step(b"hello") == SaslStep(b"come in", True, Principal("olleh"))
    knock = plugins.sasl_authenticator("X-KNOCK", USERS_MAP)
    knock.step(b"olleh")
    with pytest.raises(PermissionError, match="wrong answer"):
        knock.step(b"olleh")
    assert isinstance(plugins.sasl_authenticator(SHA512, USERS_MAP), ScramServer)
