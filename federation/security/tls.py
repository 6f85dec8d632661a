"""TLS and SASL for every connection the federation opens or accepts.

* **Listeners** (a proxy's client listener, the name service's HTTP API, the metrics
  endpoint): :class:`ListenerTls` — the ``tls``/``http_tls``/``metrics_tls`` objects of a
  proxy config — validated with errors naming the field, turned into a server
  :class:`ssl.SSLContext`; :func:`peer_principal` takes a client certificate's subject
  through Kafka's ``ssl.principal.mapping.rules`` (:class:`PrincipalMapper`).
* **Upstreams** (every connection to a physical broker, from a proxy, the controller, the
  admin CLI, the lag exporter): :class:`ClusterSecurity` is a cluster's ``security``
  object of the map; :func:`cluster_security` parses it (errors name the cluster and the
  key), :meth:`ClusterSecurity.client_context` is its TLS context, :func:`login` runs the
  SASL exchange on one of our own connections, :func:`open_blocking` opens an
  authenticated blocking socket (health probes), and :func:`aiokafka_kwargs` gives the
  same settings to aiokafka's clients. Nothing connects to a physical broker without
  going through one of these.
* **Secrets** (:func:`resolve_secret`): ``env:NAME`` or ``file:/path`` references, never a
  password in clear in the map or a config file.

The parsing and mapping are pure; only the context builders read files.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from federation.core.errors import ConfigError
from federation.core.model import Principal

__all__ = [
    "CLIENT_AUTH",
    "PROTOCOLS",
    "SASL_MECHANISMS",
    "ClusterSecurity",
    "ListenerTls",
    "PrincipalMapper",
    "SaslClient",
    "aiokafka_kwargs",
    "check_secret_ref",
    "cluster_security",
    "login",
    "open_blocking",
    "peer_principal",
    "prometheus_kwargs",
    "resolve_secret",
    "server_kwargs",
    "subject_dn",
]

CLIENT_AUTH = ("none", "requested", "required")
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
#: A TLS handshake that does not finish in this time closes the connection (before the
#: proxy's connection limits see it, so it must be short).
HANDSHAKE_TIMEOUT = 10.0

# -- secrets -------------------------------------------------------------------------------


def check_secret_ref(value: object, name: str) -> str:
    """``value`` if it is a secret reference (``env:NAME``/``file:/path``), else ConfigError."""
    text = str(value) if value is not None else ""
    kind, sep, rest = text.partition(":")
    if sep and rest and ((kind == "env" and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rest))
                         or (kind == "file" and rest.startswith("/"))):
        return text
    raise ConfigError(f"{name} must be a secret reference, \"env:VARIABLE\" or "
                      "\"file:/absolute/path\" (a password is never stored in clear); "
                      "put the secret in an environment variable or a 0600 file and "
                      "reference it")


def resolve_secret(ref: str, name: str) -> str:
    """The secret ``ref`` names: an environment variable's value or a file's first line."""
    check_secret_ref(ref, name)
    kind, _, rest = ref.partition(":")
    if kind == "env":
        value = os.environ.get(rest)
        if value is None:
            raise ConfigError(f"{name}: environment variable {rest} is not set in this "
                              "process; set it (e.g. in the service's environment file)")
        return value
    try:
        lines = Path(rest).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"{name}: cannot read {rest} ({e.strerror}); create it "
                          "(mode 0600) on this host or fix the path") from None
    return lines[0] if lines else ""


# -- principals from certificates ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: re.Pattern[str] | None  # None: DEFAULT
    replacement: str = ""
    case: str = ""  # "", "L" or "U"


_RULE = re.compile(r"\s*(?:(DEFAULT)|RULE:((?:\\.|[^\\/])*)/((?:\\.|[^\\/])*)/([LU]?))\s*"
                   r"(?:,|$)")


class PrincipalMapper:
    """Kafka's ``ssl.principal.mapping.rules``: a certificate subject DN → a principal name.

    Rules are tried in order; the first whose pattern matches the whole DN gives the name
    (``$1``… are its groups; ``/L`` lower-cases, ``/U`` upper-cases); ``DEFAULT`` is the DN
    itself. A DN no rule matches has no principal (the connection is refused, as in Kafka).
    """

    def __init__(self, rules: str = "DEFAULT") -> None:
        self.rules: list[_Rule] = []
        text, pos = rules.strip(), 0
        while pos < len(text):
            m = _RULE.match(text, pos)
            if m is None or m.end() == pos:
                raise ConfigError(f"principal_mapping_rules: cannot parse {text[pos:]!r}; "
                                  "write rules as RULE:pattern/replacement/[LU] or DEFAULT, "
                                  "separated by commas")
            pos = m.end()
            if m.group(1):
                self.rules.append(_Rule(None))
                continue
            try:
                pattern = re.compile(m.group(2).replace("\\/", "/"))
            except re.error as e:
                raise ConfigError(f"principal_mapping_rules: bad pattern {m.group(2)!r}: "
                                  f"{e}") from None
            # Java's $1 → Python's \g<1>
            replacement = re.sub(r"\$(\d+)", r"\\g<\1>", m.group(3).replace("\\/", "/"))
            self.rules.append(_Rule(pattern, replacement, m.group(4)))
        if not self.rules:
            self.rules.append(_Rule(None))

    def map(self, dn: str) -> str | None:
        for rule in self.rules:
            if rule.pattern is None:
                return dn
            if rule.pattern.fullmatch(dn):
                name = rule.pattern.sub(rule.replacement, dn)
                return name.lower() if rule.case == "L" else (
                    name.upper() if rule.case == "U" else name)
        return None


def subject_dn(der: bytes) -> str:
    """The subject of a DER certificate as Kafka prints it (RFC 2253: ``CN=app,OU=x,O=y``)."""
    from cryptography import x509

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


# -- listeners -----------------------------------------------------------------------------

_LISTENER_KEYS = frozenset({"cert", "key", "key_password", "ca", "client_auth",
                            "principal_mapping_rules", "min_version"})


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """TLS of one listener (a proxy config's ``tls``, ``http_tls`` or ``metrics_tls``)."""

    cert: str
    key: str
    key_password: str | None = None  #: a secret reference
    ca: str | None = None
    client_auth: str = "none"
    principal_mapping_rules: str = "DEFAULT"
    min_version: str = "TLSv1.2"

    @classmethod
    def from_dict(cls, data: object, name: str = "tls") -> ListenerTls:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{name} must be an object with \"cert\" and \"key\" (PEM "
                              "file paths), e.g. {\"cert\": \"/etc/fedkafka/tls/proxy.pem\", "
                              "\"key\": \"/etc/fedkafka/tls/proxy.key\"}")
        unknown = sorted(set(data) - _LISTENER_KEYS)
        if unknown:
            raise ConfigError(f"{name} has unknown key(s) {', '.join(unknown)}; known keys "
                              f"are {', '.join(sorted(_LISTENER_KEYS))}")
        for required in ("cert", "key"):
            if not data.get(required):
                raise ConfigError(f"{name}.{required} is missing: the path of the listener's "
                                  f"PEM {'certificate' if required == 'cert' else 'key'}")
        client_auth = str(data.get("client_auth", "none"))
        if client_auth not in CLIENT_AUTH:
            raise ConfigError(f"{name}.client_auth {client_auth!r} must be one of "
                              f"{', '.join(CLIENT_AUTH)}")
        if client_auth != "none" and not data.get("ca"):
            raise ConfigError(f"{name}.ca is missing: client_auth {client_auth!r} checks client "
                              "certificates against the CAs of a PEM file; set \"ca\"")
        min_version = str(data.get("min_version", "TLSv1.2"))
        if min_version not in TLS_VERSIONS:
            raise ConfigError(f"{name}.min_version {min_version!r} must be one of "
                              f"{', '.join(TLS_VERSIONS)}")
        password = data.get("key_password")
        if password is not None:
            check_secret_ref(password, f"{name}.key_password")
        rules = str(data.get("principal_mapping_rules", "DEFAULT"))
        PrincipalMapper(rules)  # validates
        return cls(cert=str(data["cert"]), key=str(data["key"]),
                   key_password=None if password is None else str(password),
                   ca=str(data["ca"]) if data.get("ca") else None, client_auth=client_auth,
                   principal_mapping_rules=rules, min_version=min_version)

    def server_context(self, name: str = "tls") -> ssl.SSLContext:
        """A server context: our certificate, client certificates checked per client_auth."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_VERSIONS[self.min_version]
        password = (resolve_secret(self.key_password, f"{name}.key_password")
                    if self.key_password else None)
        try:
            ctx.load_cert_chain(self.cert, self.key, password)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{name}: cannot load the certificate {self.cert} with key "
                              f"{self.key}: {e}; check both paths, that the key matches the "
                              "certificate, and key_password") from None
        if self.ca:
            try:
                ctx.load_verify_locations(cafile=self.ca)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"{name}.ca: cannot load {self.ca}: {e}") from None
        ctx.verify_mode = {"none": ssl.CERT_NONE, "requested": ssl.CERT_OPTIONAL,
                           "required": ssl.CERT_REQUIRED}[self.client_auth]
        return ctx

    def mapper(self) -> PrincipalMapper:
        return _mapper(self.principal_mapping_rules)


def server_kwargs(settings: ListenerTls | None, name: str = "tls") -> dict[str, Any]:
    """Keyword arguments of ``loop.create_server``/``asyncio.start_server`` for a listener."""
    if settings is None:
        return {}
    return {"ssl": settings.server_context(name), "ssl_handshake_timeout": HANDSHAKE_TIMEOUT}


def prometheus_kwargs(settings: ListenerTls | None) -> dict[str, Any]:
    """Keyword arguments of ``prometheus_client.start_http_server`` for ``metrics_tls``."""
    if settings is None:
        return {}
    if settings.key_password:
        raise ConfigError("metrics_tls.key_password is not supported (the Prometheus "
                          "endpoint loads an unencrypted key); use a key without password")
    return {"certfile": settings.cert, "keyfile": settings.key,
            "client_cafile": settings.ca,
            "client_auth_required": settings.client_auth == "required",
            "tls_min_version": TLS_VERSIONS[settings.min_version]}


@lru_cache(maxsize=16)
def _mapper(rules: str) -> PrincipalMapper:
    return PrincipalMapper(rules)


def peer_principal(transport: Any, settings: ListenerTls | None) -> Principal | None:
    """The principal a TLS client's certificate names (None: no TLS or no certificate).

    :raises PermissionError: the certificate's subject matches no mapping rule.
    """
    if settings is None or settings.client_auth == "none":
        return None
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    der = sslobj.getpeercert(binary_form=True)
    if not der:
        return None
    dn = subject_dn(der)
    name = settings.mapper().map(dn)
    if name is None:
        raise PermissionError(f"no principal mapping rule matches the certificate subject "
                              f"{dn!r}")
    return Principal(name)


# -- upstreams: a cluster's security -------------------------------------------------------

_CLUSTER_KEYS = {
    "security.protocol", "ssl.ca.location", "ssl.certificate.location", "ssl.key.location",
    "ssl.key.password", "ssl.endpoint.identification.algorithm", "sasl.mechanism",
    "sasl.username", "sasl.password",
}


@dataclass(frozen=True, slots=True)
class ClusterSecurity:
    """How to connect to one physical cluster (its ``security`` in the map)."""

    protocol: str = "PLAINTEXT"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    key_password: str | None = None  #: secret reference
    check_hostname: bool = True
    mechanism: str | None = None
    username: str | None = None
    password: str | None = None  #: secret reference
    where: str = "cluster"

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def client_context(self) -> ssl.SSLContext | None:
        """The TLS context for this cluster's brokers (None for a plaintext protocol)."""
        if not self.tls:
            return None
        stamps = tuple(_mtime(p) for p in (self.ca, self.cert, self.key))
        return _client_context(self, stamps)

    def sasl_password(self) -> str:
        assert self.password is not None
        return resolve_secret(self.password, f"{self.where}: sasl.password")

    def sasl_client(self) -> SaslClient:
        assert self.mechanism is not None and self.username is not None
        return SaslClient(self.mechanism, self.username, self.sasl_password())


def _mtime(path: str | None) -> float:
    try:
        return os.stat(path).st_mtime if path else 0.0
    except OSError:
        return -1.0


@lru_cache(maxsize=64)
def _client_context(sec: ClusterSecurity, _stamps: tuple[float, ...]) -> ssl.SSLContext:
    # one context per settings and file versions: a rotated CA or certificate is reloaded
    ctx = ssl.create_default_context(cafile=sec.ca) if sec.ca else ssl.create_default_context()
    ctx.check_hostname = sec.check_hostname
    if sec.cert:
        password = (resolve_secret(sec.key_password, f"{sec.where}: ssl.key.password")
                    if sec.key_password else None)
        ctx.load_cert_chain(sec.cert, sec.key, password)
    return ctx


def cluster_security(security: Mapping[str, str] | None, cluster_id: str = "?"
                     ) -> ClusterSecurity:
    """Parse a cluster's ``security`` object (empty: PLAINTEXT).

    :raises ConfigError: naming the cluster and the key, with the fix.
    """
    where = f"cluster {cluster_id!r} security"
    data = dict(security or {})
    unknown = sorted(set(data) - _CLUSTER_KEYS)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {', '.join(unknown)}; known keys are "
                          f"{', '.join(sorted(_CLUSTER_KEYS))}")
    protocol = str(data.get("security.protocol", "PLAINTEXT")).upper()
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{where}: security.protocol {protocol!r} must be one of "
                          f"{', '.join(PROTOCOLS)}")
    tls, sasl = protocol in ("SSL", "SASL_SSL"), protocol.startswith("SASL_")
    if not tls:
        ssl_keys = sorted(k for k in data if k.startswith("ssl."))
        if ssl_keys:
            raise ConfigError(f"{where}: {', '.join(ssl_keys)} need security.protocol SSL or "
                              f"SASL_SSL (it is {protocol}); remove them or change the protocol")
    if not sasl:
        sasl_keys = sorted(k for k in data if k.startswith("sasl."))
        if sasl_keys:
            raise ConfigError(f"{where}: {', '.join(sasl_keys)} need security.protocol "
                              f"SASL_PLAINTEXT or SASL_SSL (it is {protocol})")
    algorithm = str(data.get("ssl.endpoint.identification.algorithm", "https")).lower()
    if algorithm not in ("https", "none", ""):
        raise ConfigError(f"{where}: ssl.endpoint.identification.algorithm {algorithm!r} "
                          "must be \"https\" (check host names) or \"none\"")
    if bool(data.get("ssl.certificate.location")) != bool(data.get("ssl.key.location")):
        raise ConfigError(f"{where}: ssl.certificate.location and ssl.key.location go "
                          "together (a client certificate needs its key)")
    if data.get("ssl.key.password"):
        check_secret_ref(data["ssl.key.password"], f"{where}: ssl.key.password")
    mechanism = username = password = None
    if sasl:
        mechanism = str(data.get("sasl.mechanism", "")).upper()
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"{where}: sasl.mechanism {mechanism or None!r} must be one of "
                              f"{', '.join(SASL_MECHANISMS)}")
        username = str(data.get("sasl.username") or "")
        if not username:
            raise ConfigError(f"{where}: sasl.username is missing")
        if not data.get("sasl.password"):
            raise ConfigError(f"{where}: sasl.password is missing; reference the password "
                              "as \"env:VARIABLE\" or \"file:/path\"")
        password = check_secret_ref(data["sasl.password"], f"{where}: sasl.password")
    return ClusterSecurity(
        protocol=protocol, ca=data.get("ssl.ca.location") or None,
        cert=data.get("ssl.certificate.location") or None,
        key=data.get("ssl.key.location") or None,
        key_password=data.get("ssl.key.password") or None,
        check_hostname=algorithm == "https", mechanism=mechanism, username=username,
        password=password, where=where)


def aiokafka_kwargs(security: Mapping[str, str] | None, cluster_id: str = "?"
                    ) -> dict[str, Any]:
    """A cluster's security as keyword arguments of aiokafka's clients."""
    sec = cluster_security(security, cluster_id)
    out: dict[str, Any] = {"security_protocol": sec.protocol}
    if sec.tls:
        out["ssl_context"] = sec.client_context()
    if sec.sasl:
        out.update(sasl_mechanism=sec.mechanism, sasl_plain_username=sec.username,
                   sasl_plain_password=sec.sasl_password())
    return out


# -- SASL, client side ---------------------------------------------------------------------


class SaslClient:
    """The client side of one SASL exchange (sans-IO): PLAIN or SCRAM-SHA-256/512."""

    def __init__(self, mechanism: str, username: str, password: str) -> None:
        from federation.security.sasl import ScramClient

        self.mechanism = mechanism
        self._plain = (b"\0" + username.encode() + b"\0" + password.encode()
                       if mechanism == "PLAIN" else None)
        self._scram = None if mechanism == "PLAIN" else ScramClient(mechanism, username,
                                                                    password)
        self._round = 0

    def first(self) -> bytes:
        if self._plain is not None:
            return self._plain
        assert self._scram is not None
        return self._scram.first()

    def next(self, server_bytes: bytes) -> bytes | None:
        """The next bytes to send after ``server_bytes``; None: the exchange is complete.

        :raises PermissionError: the server's answer is wrong (bad SCRAM signature).
        """
        self._round += 1
        if self._scram is None:
            return None
        if self._round == 1:
            return self._scram.final(server_bytes)
        self._scram.verify(server_bytes)
        return None


class _Conn(Protocol):
    async def request(self, entity: Any, timeout: float, client_id: str | None = None
                      ) -> Any: ...


async def login(conn: _Conn, sec: ClusterSecurity, timeout: float, label: str) -> None:
    """SaslHandshake and SaslAuthenticate rounds on one of our broker connections.

    :raises PermissionError: the broker refused the mechanism or the credentials.
    """
    from kio.index import load_request_schema

    client = sec.sasl_client()
    handshake: Any = load_request_schema(17, 1)
    resp = await conn.request(handshake(mechanism=client.mechanism), timeout)
    if int(resp.error_code):
        raise PermissionError(f"{label}: SASL mechanism {client.mechanism} refused "
                              f"(error {int(resp.error_code)}; the broker offers "
                              f"{', '.join(resp.mechanisms) or 'none'})")
    authenticate: Any = load_request_schema(36, 2)
    out: bytes | None = client.first()
    while out is not None:
        resp = await conn.request(authenticate(auth_bytes=out), timeout)
        if int(resp.error_code):
            raise PermissionError(f"{label}: SASL {client.mechanism} authentication as "
                                  f"{sec.username!r} failed: {resp.error_message}")
        out = client.next(bytes(resp.auth_bytes))


# -- a blocking socket for health probes ---------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
    return bytes(buf)


def _exchange(sock: socket.socket, api_key: int, version: int, cid: int, body: bytes) -> bytes:
    client_id = b"fedkafka-probe"
    frame = struct.pack(">hhih", api_key, version, cid, len(client_id)) + client_id + body
    sock.sendall(struct.pack(">i", len(frame)) + frame)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    if size < 4 or size > 1 << 20:
        raise ConnectionError(f"bad response length {size}")
    data = _recv_exact(sock, size)
    if struct.unpack_from(">i", data)[0] != cid:
        raise ConnectionError("correlation id mismatch")
    return data[4:]


def _string(data: bytes, pos: int) -> tuple[str | None, int]:
    (n,) = struct.unpack_from(">h", data, pos)
    if n < 0:
        return None, pos + 2
    return data[pos + 2:pos + 2 + n].decode(), pos + 2 + n


def open_blocking(host: str, port: int, security: Mapping[str, str] | ClusterSecurity | None,
                  timeout: float, cluster_id: str = "?") -> socket.socket:
    """A connected blocking socket to one broker, TLS and SASL done per the cluster's security.

    SaslHandshake v1 and SaslAuthenticate v1 (not flexible) are encoded by hand, as the
    rest of :mod:`federation.clusters.probe`.
    """
    sec = (security if isinstance(security, ClusterSecurity)
           else cluster_security(security, cluster_id))
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.settimeout(timeout)
        ctx = sec.client_context()
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_hostname=host)
        if sec.sasl:
            client = sec.sasl_client()
            mech = client.mechanism.encode()
            data = _exchange(sock, 17, 1, 0x7FFF0001, struct.pack(">h", len(mech)) + mech)
            (code,) = struct.unpack_from(">h", data)
            if code:
                raise PermissionError(f"{host}:{port}: SASL mechanism {client.mechanism} "
                                      f"refused (error {code})")
            out: bytes | None = client.first()
            cid = 0x7FFF0002
            while out is not None:
                data = _exchange(sock, 36, 1, cid, struct.pack(">i", len(out)) + out)
                cid += 1
                (code,) = struct.unpack_from(">h", data)
                message, pos = _string(data, 2)
                if code:
                    raise PermissionError(f"{host}:{port}: SASL {client.mechanism} "
                                          f"authentication as {sec.username!r} failed: "
                                          f"{message}")
                (n,) = struct.unpack_from(">i", data, pos)
                out = client.next(data[pos + 4:pos + 4 + max(n, 0)])
        return sock
    except BaseException:
        sock.close()
        raise
