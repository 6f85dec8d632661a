"""federation.security.tls (pure parts and loopback handshakes) and federation.tooling.certs."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from fedkafka_builtin import zookeeper_backend

from federation.core.credentials import make_user
from federation.core.errors import ConfigError
from federation.proxy.config import ProxyConfig
from federation.security import tls
from federation.security.sasl import ScramServer
from federation.tooling import certs


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> certs.CertAuthority:
    return certs.create_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def server_cert(ca: certs.CertAuthority) -> certs.IssuedCert:
    return ca.issue("server", "fedkafka-proxy", hosts=["127.0.0.1", "localhost"])


# -- secret references ---------------------------------------------------------------------


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FK_TEST_SECRET", "s3cret")
    assert tls.resolve_secret("env:FK_TEST_SECRET", "x") == "s3cret"
    path = tmp_path / "pw"
    path.write_text("from-file\nignored\n")
    assert tls.resolve_secret(f"file:{path}", "x") == "from-file"


@pytest.mark.parametrize("value", ["hunter2", "env:", "env:1BAD", "file:relative/path", "",
                                   None, "vault:x"])
def test_a_password_in_clear_is_refused(value: Any) -> None:
    with pytest.raises(ConfigError, match="must be a secret reference"):
        tls.check_secret_ref(value, "sasl.password")


def test_missing_secrets_name_the_variable_or_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FK_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match="FK_NOT_SET is not set"):
        tls.resolve_secret("env:FK_NOT_SET", "sasl.password")
    with pytest.raises(ConfigError, match="cannot read /nonexistent/pw"):
        tls.resolve_secret("file:/nonexistent/pw", "sasl.password")


# -- principal mapping rules (Kafka's ssl.principal.mapping.rules) ---------------------------


@pytest.mark.parametrize(("rules", "dn", "expected"), [
    ("DEFAULT", "CN=app,OU=payments,O=Example", "CN=app,OU=payments,O=Example"),
    ("RULE:^CN=(.*?),OU=(.*?),O=(.*?)$/$1@$2/L,DEFAULT", "CN=App,OU=Payments,O=Example",
     "app@payments"),
    ("RULE:^CN=(.*?),OU=(.*?)$/$1/U, DEFAULT", "CN=app,OU=x", "APP"),
    ("RULE:^CN=(.*?),OU=ServiceUsers$/$1/,DEFAULT", "CN=other,OU=Humans", "CN=other,OU=Humans"),
    ("RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/L", "CN=Kafka.Client,O=x", "kafka.client"),
    ("RULE:^CN=([^,]+)$/svc\\/$1/", "CN=a", "svc/a"),
])
def test_principal_mapping_rules(rules: str, dn: str, expected: str) -> None:
    assert tls.PrincipalMapper(rules).map(dn) == expected


def test_no_matching_rule_has_no_principal() -> None:
    assert tls.PrincipalMapper("RULE:^CN=(.*)$/$1/").map("OU=x,CN=y") is None


@pytest.mark.parametrize("rules", ["RULE:^CN=(.*$/$1/", "NONSENSE", "RULE:x/y/Q"])
def test_bad_mapping_rules_are_refused(rules: str) -> None:
    with pytest.raises(ConfigError, match="principal_mapping_rules"):
        tls.PrincipalMapper(rules)


# -- listener settings ---------------------------------------------------------------------


def test_listener_settings_validate_with_named_fields() -> None:
    with pytest.raises(ConfigError, match=r"tls\.key is missing"):
        tls.ListenerTls.from_dict({"cert": "/c.pem"})
    with pytest.raises(ConfigError, match=r"tls\.client_auth 'always' must be one of"):
        tls.ListenerTls.from_dict({"cert": "c", "key": "k", "client_auth": "always"})
    with pytest.raises(ConfigError, match=r"tls\.ca is missing"):
        tls.ListenerTls.from_dict({"cert": "c", "key": "k", "client_auth": "required"})
    with pytest.raises(ConfigError, match="unknown key"):
        tls.ListenerTls.from_dict({"cert": "c", "key": "k", "ssl.keystore": "x"})
    with pytest.raises(ConfigError, match="key_password must be a secret reference"):
        tls.ListenerTls.from_dict({"cert": "c", "key": "k", "key_password": "clear"})
    with pytest.raises(ConfigError, match="min_version"):
        tls.ListenerTls.from_dict({"cert": "c", "key": "k", "min_version": "TLSv1"})


def test_proxy_config_takes_tls_keys() -> None:
    config = ProxyConfig.from_dict({
        "node_id": 1, "listen": "127.0.0.1:9092", "store": "file:/tmp/map.json",
        "sasl_required": True,
        "tls": {"cert": "/p.pem", "key": "/p.key", "ca": "/ca.pem", "client_auth": "requested"},
        "http_tls": {"cert": "/p.pem", "key": "/p.key"}})
    assert config.tls is not None and config.tls.client_auth == "requested"
    assert config.http_tls is not None and config.metrics_tls is None
    with pytest.raises(ConfigError, match=r"metrics_tls\.cert is missing"):
        ProxyConfig.from_dict({"node_id": 1, "listen": "127.0.0.1:9092",
                               "store": "file:/tmp/map.json", "metrics_tls": {"key": "k"}})


def test_unloadable_certificate_is_a_config_error(tmp_path: Path) -> None:
    settings = tls.ListenerTls.from_dict({"cert": str(tmp_path / "nope.pem"),
                                          "key": str(tmp_path / "nope.key")})
    with pytest.raises(ConfigError, match="cannot load the certificate"):
        settings.server_context()


# -- cluster security ----------------------------------------------------------------------


def test_empty_security_is_plaintext() -> None:
    sec = tls.cluster_security({}, "c1")
    assert sec.protocol == "PLAINTEXT" and not sec.tls and not sec.sasl
    assert sec.client_context() is None
    assert tls.aiokafka_kwargs({}) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_security(ca: certs.CertAuthority, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("pass\n")
    mapping = {"security.protocol": "SASL_SSL", "ssl.ca.location": str(ca.ca_path),
               "sasl.mechanism": "scram-sha-512", "sasl.username": "fedkafka",
               "sasl.password": f"file:{pw}"}
    sec = tls.cluster_security(mapping, "c1")
    assert (sec.tls, sec.sasl, sec.mechanism, sec.check_hostname) == (
        True, True, "SCRAM-SHA-512", True)
    ctx = sec.client_context()
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    assert sec.client_context() is ctx  # cached while the files do not change
    kwargs = tls.aiokafka_kwargs(mapping, "c1")
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_plain_password"] == "pass" and kwargs["ssl_context"] is ctx


@pytest.mark.parametrize(("mapping", "message"), [
    ({"security.protocol": "TLS"}, "security.protocol 'TLS' must be one of"),
    ({"security.protocol": "PLAINTEXT", "ssl.ca.location": "/ca"}, "need security.protocol SSL"),
    ({"security.protocol": "SSL", "sasl.username": "u"}, "need security.protocol SASL_"),
    ({"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI", "sasl.username": "u",
      "sasl.password": "env:X"}, "sasl.mechanism 'GSSAPI' must be one of"),
    ({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
      "sasl.password": "env:X"}, "sasl.username is missing"),
    ({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": "u",
      "sasl.password": "hunter2"}, "sasl.password must be a secret reference"),
    ({"security.protocol": "SSL", "ssl.certificate.location": "/c"}, "go together"),
    ({"security.protocol": "SSL", "ssl.endpoint.identification.algorithm": "dns"},
     "must be \"https\""),
    ({"bootstrap.servers": "x"}, "unknown key"),
])
def test_bad_cluster_security_names_the_cluster_and_key(mapping: dict[str, str],
                                                        message: str) -> None:
    with pytest.raises(ConfigError, match="cluster 'east' security") as failure:
        tls.cluster_security(mapping, "east")
    assert message in str(failure.value)


# -- SASL client against our own server ------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_client_completes_scram_with_the_server(mechanism: str) -> None:
    creds = make_user("pw", [mechanism], 4096)
    server = ScramServer(mechanism, lambda name: creds.scram.get(mechanism)
                         if name == "alice" else None)
    client = tls.SaslClient(mechanism, "alice", "pw")
    out: bytes | None = client.first()
    principal = None
    while out is not None:
        step = server.step(out)
        if step.done:
            principal = step.principal
        out = client.next(step.server_bytes)
    assert str(principal) == "User:alice"


def test_sasl_client_plain_is_one_round() -> None:
    client = tls.SaslClient("PLAIN", "u", "p")
    assert client.first() == b"\0u\0p"
    assert client.next(b"") is None


# -- TLS handshakes on loopback: principals from certificates --------------------------------


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
               ) -> tuple[bytes | None, Exception | None]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    result: list[Any] = [None, None]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                result[0] = s.getpeercert(binary_form=True)
                s.sendall(b"ok")
        except (ssl.SSLError, OSError) as e:
            result[1] = e
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(socket.create_connection(listener.getsockname(), timeout=10),
                                    server_hostname="127.0.0.1") as c:
            c.recv(2)
    except (ssl.SSLError, OSError):
        pass
    thread.join(10)
    listener.close()
    return result[0], result[1]


def test_client_certificate_subject_is_the_principal(ca: certs.CertAuthority,
                                                     server_cert: certs.IssuedCert) -> None:
    client = ca.issue("alice", "alice", units=["payments"], organization="Example",
                      server=False)
    assert client.subject == "CN=alice,OU=payments,O=Example"
    listener = tls.ListenerTls.from_dict({"cert": str(server_cert.cert),
                                          "key": str(server_cert.key), "ca": str(ca.ca_path),
                                          "client_auth": "required"})
    sec = tls.cluster_security({"security.protocol": "SSL",
                                "ssl.ca.location": str(ca.ca_path),
                                "ssl.certificate.location": str(client.cert),
                                "ssl.key.location": str(client.key)})
    client_ctx = sec.client_context()
    assert client_ctx is not None
    der, error = _handshake(listener.server_context(), client_ctx)
    assert error is None and der
    assert tls.subject_dn(der) == "CN=alice,OU=payments,O=Example"

    class Transport:  # what asyncio's SSL transport offers
        def __init__(self, der: bytes) -> None:
            self.der = der

        def get_extra_info(self, name: str) -> Any:
            assert name == "ssl_object"
            der = self.der

            class SslObject:
                def getpeercert(self, binary_form: bool = False) -> bytes:
                    return der
            return SslObject()
    assert str(tls.peer_principal(Transport(der), listener)) == (
        "User:CN=alice,OU=payments,O=Example")
    mapped = tls.ListenerTls.from_dict({**_listener_dict(listener),
                                        "principal_mapping_rules": "RULE:^CN=([^,]+),.*$/$1/"})
    assert str(tls.peer_principal(Transport(der), mapped)) == "User:alice"
    strict = tls.ListenerTls.from_dict({**_listener_dict(listener),
                                        "principal_mapping_rules": "RULE:^CN=bob,.*$/bob/"})
    with pytest.raises(PermissionError, match="no principal mapping rule"):
        tls.peer_principal(Transport(der), strict)
    none = tls.ListenerTls.from_dict({"cert": "c", "key": "k"})
    assert tls.peer_principal(Transport(der), none) is None  # client_auth none: no principal


def _listener_dict(settings: tls.ListenerTls) -> dict[str, Any]:
    return {"cert": settings.cert, "key": settings.key, "ca": settings.ca,
            "client_auth": settings.client_auth}


def test_required_client_auth_refuses_a_client_without_certificate(
        ca: certs.CertAuthority, server_cert: certs.IssuedCert) -> None:
    listener = tls.ListenerTls.from_dict({"cert": str(server_cert.cert),
                                          "key": str(server_cert.key), "ca": str(ca.ca_path),
                                          "client_auth": "required"})
    client_ctx = tls.cluster_security({"security.protocol": "SSL",
                                       "ssl.ca.location": str(ca.ca_path)}).client_context()
    assert client_ctx is not None
    der, error = _handshake(listener.server_context(), client_ctx)
    assert der is None and isinstance(error, ssl.SSLError)


def test_a_foreign_ca_fails_the_client_handshake(tmp_path: Path,
                                                 server_cert: certs.IssuedCert) -> None:
    other = certs.create_ca(tmp_path / "other")
    listener = tls.ListenerTls.from_dict({"cert": str(server_cert.cert),
                                          "key": str(server_cert.key)})
    client_ctx = tls.cluster_security({"security.protocol": "SSL",
                                       "ssl.ca.location": str(other.ca_path)}).client_context()
    assert client_ctx is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        client_ctx.wrap_socket(socket.socket(), server_hostname="127.0.0.1").connect(
            _listening(listener.server_context()))


def _listening(ctx: ssl.SSLContext) -> tuple[str, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            ctx.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            conn.close()
        listener.close()
    threading.Thread(target=serve, daemon=True).start()
    address: tuple[str, int] = listener.getsockname()
    return address


def test_keystore_file_holds_key_and_chain(ca: certs.CertAuthority,
                                           server_cert: certs.IssuedCert) -> None:
    text = server_cert.keystore.read_text()
    assert text.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, as Kafka's PEM keystore
    assert text.count("-----BEGIN CERTIFICATE-----") == 2
    assert (server_cert.key.stat().st_mode & 0o777) == 0o600
    again = certs.load_ca(ca.folder)
    assert again.cert.subject == ca.cert.subject


# -- ZooKeeper store spec --------------------------------------------------------------------


def test_zookeeper_store_spec_takes_tls_options() -> None:
    from federation.plugin import parse_store

    name, options = parse_store("zookeeper:zk1:2281,zk2:2281/fk?ssl=true&ca=/ca.pem"
                                "&cert=/c.pem&key=/c.key&check_hostname=false")
    assert name == "zookeeper" and options["hosts"] == "zk1:2281,zk2:2281"
    assert options["root"] == "/fk"
    assert options["tls"] == {"ca": "/ca.pem", "cert": "/c.pem", "key": "/c.key",
                              "check_hostname": False}
    assert zookeeper_backend.kazoo_kwargs(options["tls"]) == {
        "use_ssl": True, "ca": "/ca.pem", "certfile": "/c.pem", "keyfile": "/c.key",
        "verify_certs": True, "check_hostname": False}
    assert "tls" not in parse_store("zookeeper:zk1:2181/fk")[1]
    assert zookeeper_backend.kazoo_kwargs(None) == {}


@pytest.mark.parametrize(("query", "message"), [
    ("ca=/ca.pem", "need ssl=true"),
    ("ssl=yes", "must be true or false"),
    ("ssl=true&trust=/x", "unknown or repeated"),
    ("ssl=true&ssl=true", "unknown or repeated"),
    ("ssl=true&cert=/c.pem", "go together"),
    ("ssl", "not KEY=VALUE"),
])
def test_bad_zookeeper_tls_options_are_refused(query: str, message: str) -> None:
    from federation.plugin import parse_store

    with pytest.raises(ConfigError, match=message):
        parse_store(f"zookeeper:zk1:2281/fk?{query}")


def test_cli_store_option_takes_tls_options() -> None:
    from federation.plugin import parse_store

    name, options = parse_store("zookeeper:zk1:2281/fk?ssl=true&ca=/ca.pem")
    assert (name, options["root"], options["tls"]["ca"]) == ("zookeeper", "/fk", "/ca.pem")
    with pytest.raises(ConfigError, match="--store: ZooKeeper TLS options need ssl=true"):
        parse_store("zookeeper:zk1:2281/fk?ca=/ca.pem", "--store")
