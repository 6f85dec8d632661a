"""SASL/OAUTHBEARER: JWT verification against a JWKS (RS256/384/512 in pure Python, checked
against OpenSSL), the RFC 7628 client response, the exchange, and the built-in plugin."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from federation.core.model import FederationMap, Principal
from federation.plugin import Plugins, make_plugin_manager
from federation.security.oauthbearer import (
    InvalidToken,
    Jwks,
    OAuthBearerServer,
    OAuthSettings,
    RsaPublicKey,
    parse_client_response,
    verify_jwt,
)
from federation.security.sasl import SaslStep
from federation.tooling.testing.jwt import RsaKeyPair


@pytest.fixture(scope="module")
def key() -> RsaKeyPair:
    return RsaKeyPair.generate("k1")


@pytest.fixture(scope="module")
def other_key() -> RsaKeyPair:
    return RsaKeyPair.generate("k1")  # same kid, different key: an impostor


SETTINGS = OAuthSettings(Path("unused"), issuer="https://idp.example", audience=("kafka",))


def _keys(*pairs: RsaKeyPair) -> dict[str | None, RsaPublicKey]:
    return Jwks.parse({"keys": [p.jwk() for p in pairs]})


def test_a_valid_token_gives_its_claims(key: RsaKeyPair) -> None:
    for algorithm in ("RS256", "RS384", "RS512"):
        now = int(time.time())
        token = key.sign({"sub": "alice", "exp": now + 60, "iat": now,
                          "iss": "https://idp.example", "aud": ["x", "kafka"]}, algorithm)
        assert verify_jwt(token, _keys(key), SETTINGS)["sub"] == "alice"


def test_signatures_agree_with_openssl(tmp_path: Path) -> None:
    """An RS256 signature made by OpenSSL verifies; a flipped bit does not."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    pem = tmp_path / "k.pem"
    subprocess.run([openssl, "genrsa", "-out", str(pem), "2048"], check=True,
                   capture_output=True)
    modulus = subprocess.run([openssl, "rsa", "-in", str(pem), "-noout", "-modulus"],
                             check=True, capture_output=True, text=True).stdout
    public = RsaPublicKey(int(modulus.strip().split("=", 1)[1], 16), 65537)
    message = b"header.payload"
    signature = subprocess.run([openssl, "dgst", "-sha256", "-sign", str(pem)], input=message,
                               check=True, capture_output=True).stdout
    assert public.verify("RS256", message, signature)
    assert not public.verify("RS256", message + b"!", signature)
    assert not public.verify("RS384", message, signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not public.verify("RS256", message, flipped)


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(("change", "why"), [
    ("impostor", "bad signature"),
    ("tampered", "bad signature"),
    ("alg-none", "algorithm 'none'"),
    ("alg-hs256", "algorithm 'HS256'"),
    ("unknown-kid", "no key 'k9'"),
    ("expired", "expired"),
    ("no-exp", "no numeric exp"),
    ("future-nbf", "nbf lies in the future"),
    ("issuer", "unexpected issuer"),
    ("audience", "unexpected audience"),
    ("no-sub", "no sub claim"),
    ("two-parts", "3 parts"),
    ("crit", "critical"),
])
def test_invalid_tokens_are_refused(key: RsaKeyPair, other_key: RsaKeyPair, change: str,
                                    why: str) -> None:
    now = int(time.time())
    claims: dict[str, object] = {"sub": "alice", "exp": now + 60, "iss": "https://idp.example",
                                 "aud": "kafka"}
    signer, header = key, {}
    if change == "impostor":
        signer = other_key
    elif change == "unknown-kid":
        header = {"kid": "k9"}
    elif change == "expired":
        claims["exp"] = now - 31  # beyond the 30 s clock skew
    elif change == "no-exp":
        del claims["exp"]
    elif change == "future-nbf":
        claims["nbf"] = now + 120
    elif change == "issuer":
        claims["iss"] = "https://evil.example"
    elif change == "audience":
        claims["aud"] = ["other"]
    elif change == "no-sub":
        del claims["sub"]
    elif change == "crit":
        header = {"crit": ["exp"]}
    token = signer.sign(claims, header=header)
    if change == "tampered":
        head, _, sig = token.split(".")
        token = f"{head}.{_b64({**claims, 'sub': 'root'})}.{sig}"
    elif change == "alg-none":
        token = f"{_b64({'alg': 'none'})}.{_b64(claims)}."
    elif change == "alg-hs256":
        token = f"{_b64({'alg': 'HS256', 'kid': 'k1'})}.{_b64(claims)}.c2ln"
    elif change == "two-parts":
        token = token.rsplit(".", 1)[0]
    with pytest.raises(InvalidToken, match=why):
        verify_jwt(token, _keys(key), SETTINGS)


def test_clock_skew_and_subject_claim(key: RsaKeyPair) -> None:
    now = int(time.time())
    token = key.sign({"sub": "alice", "client_id": "svc-1", "exp": now - 10})
    settings = OAuthSettings(Path("x"), sub_claim="client_id")
    assert verify_jwt(token, _keys(key), settings)["client_id"] == "svc-1"  # within skew
    with pytest.raises(InvalidToken, match="expired"):
        verify_jwt(token, _keys(key), OAuthSettings(Path("x"), clock_skew=0))


def test_jwks_keeps_rsa_signing_keys_of_2048_bits_or_more(key: RsaKeyPair) -> None:
    small = RsaKeyPair.generate("small", bits=1024)
    document = {"keys": [key.jwk(), small.jwk(), {**key.jwk(), "kid": "enc", "use": "enc"},
                         {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"}]}
    assert list(Jwks.parse(document)) == ["k1"]


def test_jwks_file_is_reread_when_it_changes(tmp_path: Path, key: RsaKeyPair,
                                             other_key: RsaKeyPair) -> None:
    path = tmp_path / "jwks.json"
    jwks = Jwks(path)
    assert jwks.keys() == {}  # no file yet: no key
    path.write_text(json.dumps(key.jwks()))
    assert jwks.keys()["k1"].n == key.n
    path.write_text(json.dumps(other_key.jwks()) + "\n")  # rotated (size changes too)
    assert jwks.keys()["k1"].n == other_key.n
    path.write_text("{broken")
    assert jwks.keys()["k1"].n == other_key.n  # a bad file keeps the last good keys


@pytest.mark.parametrize(("message", "expected"), [
    (b"n,,\x01auth=Bearer abc.def.ghi\x01\x01", (None, "abc.def.ghi", {})),
    (b"n,a=alice,\x01auth=Bearer t\x01traceId=42\x01\x01", ("alice", "t", {"traceId": "42"})),
    (b"n,,\x01auth=bearer  t \x01\x01", (None, "t", {})),
    (b"n,,\x01auth=Basic dXNlcg==\x01\x01", "no bearer token"),
    (b"n,,\x01host=x\x01\x01", "no bearer token"),
    (b"y,,\x01auth=Bearer t\x01\x01", "gs2 header"),
    (b"n,,\x01auth=Bearer t\x01", "client first message"),
    (b"n,,\x01auth=Bearer t\x01noequals\x01\x01", "key/value"),
    (b"\xff", "not UTF-8"),
])
def test_parse_client_response(message: bytes, expected: object) -> None:
    if isinstance(expected, tuple):
        assert parse_client_response(message) == expected
    else:
        with pytest.raises(PermissionError, match=str(expected)):
            parse_client_response(message)


def _server(tmp_path: Path, key: RsaKeyPair, **settings: object) -> OAuthBearerServer:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(key.jwks()))
    return OAuthBearerServer(OAuthSettings(path, **settings), Jwks(path))  # type: ignore[arg-type]


def test_exchange_success_and_kafkas_error_challenge(tmp_path: Path, key: RsaKeyPair,
                                                     other_key: RsaKeyPair) -> None:
    good = key.token("alice")
    server = _server(tmp_path, key)
    assert server.step(f"n,,\x01auth=Bearer {good}\x01\x01".encode()) == \
        SaslStep(b"", True, Principal("alice"))
    with pytest.raises(PermissionError, match="already finished"):
        server.step(b"\x01")
    # An invalid token: a JSON error challenge, the client's \x01, then the failure.
    server = _server(tmp_path, key, audience=("kafka",))
    step = server.step(f"n,,\x01auth=Bearer {other_key.token('alice')}\x01\x01".encode())
    assert not step.done and step.principal is None
    assert json.loads(step.server_bytes) == {"status": "invalid_token", "scope": "kafka"}
    with pytest.raises(PermissionError, match=r"invalid token \(bad signature\)"):
        server.step(b"\x01")
    # The authorization id must be the token's subject.
    with pytest.raises(PermissionError, match="different from the token's principal"):
        _server(tmp_path, key).step(f"n,a=bob,\x01auth=Bearer {good}\x01\x01".encode())


def test_the_plugin_offers_oauthbearer_only_when_configured(
        tmp_path: Path, key: RsaKeyPair, monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = Plugins(make_plugin_manager(entry_points=False))
    fmap = FederationMap(version=1)
    monkeypatch.delenv("FEDKAFKA_OAUTHBEARER_JWKS", raising=False)
    assert plugins.sasl_mechanisms(fmap) == []
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(key.jwks()))
    monkeypatch.setenv("FEDKAFKA_OAUTHBEARER_JWKS", str(path))
    monkeypatch.setenv("FEDKAFKA_OAUTHBEARER_ISSUER", "me")
    assert plugins.sasl_mechanisms(fmap) == ["OAUTHBEARER"]
    server = plugins.sasl_authenticator("OAUTHBEARER", fmap)
    token = key.token("svc", iss="me")
    assert server.step(f"n,,\x01auth=Bearer {token}\x01\x01".encode()).principal == \
        Principal("svc")
    server = plugins.sasl_authenticator("OAUTHBEARER", fmap)
    assert not server.step(f"n,,\x01auth=Bearer {key.token('svc')}\x01\x01".encode()).done
