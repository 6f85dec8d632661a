"""``fedkafka local up --secure``: TLS and SASL/SCRAM everywhere in a local federation.

:func:`prepare` makes, in the work dir:

* ``tls/``: a CA, one broker certificate (every local broker: 127.0.0.1/localhost), one
  proxy certificate (proxies and the name service), a client certificate for mTLS
  examples (``CN=app,OU=fedkafka-local``);
* ``passwords/``: random passwords (0600): the brokers' SCRAM users ``admin`` (between
  brokers, operators) and ``fedkafka`` (the federation's proxies, controller, exporter,
  admin CLI), and the federation's own SASL users ``admin`` and ``app``;
* ``clients/``: client settings of ``admin`` and ``app`` for the Java tools
  (``admin.properties``, ``app.properties``).

Each physical broker then listens with SASL_SSL (SCRAM-SHA-512, PEM keystore, KIP-651)
for clients and between brokers; only its KRaft controller listener stays plaintext on
loopback. The map's cluster ``security`` makes every federation component connect with
SASL_SSL as ``fedkafka`` (the password a ``file:`` reference, not in the map). Proxies
and the name service listen with TLS and require SASL; the name service's HTTP API uses
TLS. The map holds the users ``admin`` (every ACL) and ``app`` (topics and groups
starting with ``app-``). ``local down`` removes the secrets again (:data:`SECRET_DIRS`).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federation.tooling import certs

__all__ = ["SECRET_DIRS", "SecureSetup", "prepare", "scrub"]

HOST = "127.0.0.1"
MECHANISM = "SCRAM-SHA-512"
SECRET_DIRS = ("tls", "passwords", "clients")
#: the example application's topics and groups start with this
APP_PREFIX = "app-"


@dataclass(slots=True)
class SecureSetup:
    workdir: Path
    ca: Path
    broker_keystore: Path
    proxy_cert: Path
    proxy_key: Path
    passwords: dict[str, Path] = field(default_factory=dict)  # name → 0600 file

    def password(self, name: str) -> str:
        return self.passwords[name].read_text().strip()

    # -- physical brokers -------------------------------------------------------------

    def broker_overrides(self, port: int, controller_port: int | None) -> dict[str, str]:
        listeners = f"SASL_SSL://{HOST}:{port}"
        if controller_port is not None:
            listeners += f",CONTROLLER://{HOST}:{controller_port}"
        jaas = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="admin" password="{self.password("broker-admin")}";')
        return {
            "listeners": listeners,
            "advertised.listeners": f"SASL_SSL://{HOST}:{port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.broker_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca),
            "ssl.client.auth": "none",
        }

    def format_args(self) -> list[str]:
        """``kafka-storage format`` arguments: the brokers' SCRAM users (KIP-900)."""
        return [f"--add-scram={MECHANISM}=[name=admin,password={self.password('broker-admin')}]",
                f"--add-scram={MECHANISM}=[name=fedkafka,password="
                f"{self.password('broker-fedkafka')}]"]

    def cluster_security(self) -> dict[str, str]:
        """The map's ``security`` of every local cluster (the password by reference)."""
        return {"security.protocol": "SASL_SSL", "ssl.ca.location": str(self.ca),
                "sasl.mechanism": MECHANISM, "sasl.username": "fedkafka",
                "sasl.password": f"file:{self.passwords['broker-fedkafka']}"}

    # -- proxies and name service ---------------------------------------------------

    def proxy_settings(self) -> dict[str, Any]:
        """Proxy config keys: TLS on the client listener, SASL required."""
        return {"sasl_required": True,
                "tls": {"cert": str(self.proxy_cert), "key": str(self.proxy_key),
                        "ca": str(self.ca), "client_auth": "requested"}}

    def http_settings(self) -> dict[str, Any]:
        return {"http_tls": {"cert": str(self.proxy_cert), "key": str(self.proxy_key)}}

    def proxy_probe_security(self) -> dict[str, str]:
        """How local readiness probes reach a proxy: SASL_SSL as the federation's admin."""
        return {"security.protocol": "SASL_SSL", "ssl.ca.location": str(self.ca),
                "sasl.mechanism": MECHANISM, "sasl.username": "admin",
                "sasl.password": f"file:{self.passwords['admin']}"}

    # -- the federation's users and what they may do ------------------------------

    # -- ZooKeeper (with --metadata zookeeper) -----------------------------------

    def zookeeper_config(self, port: int) -> str:
        """zoo.cfg lines: TLS only (Netty, PEM stores), client certificates required."""
        tls_dir = self.workdir / "tls"
        return (f"secureClientPort={port}\nsecureClientPortAddress={HOST}\n"
                "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n"
                f"ssl.keyStore.location={tls_dir / 'zookeeper.keystore.pem'}\n"
                "ssl.keyStore.type=PEM\n"
                f"ssl.trustStore.location={self.ca}\nssl.trustStore.type=PEM\n"
                "ssl.clientAuth=need\n")

    def zookeeper_client(self) -> dict[str, str]:
        """The client certificate every component presents to ZooKeeper."""
        tls_dir = self.workdir / "tls"
        return {"ca": str(self.ca), "cert": str(tls_dir / "zk-client.pem"),
                "key": str(tls_dir / "zk-client.key")}

    def store_query(self) -> str:
        """The store spec's query: ZooKeeper over TLS with the client certificate."""
        c = self.zookeeper_client()
        return f"?ssl=true&ca={c['ca']}&cert={c['cert']}&key={c['key']}"

    def users(self) -> dict[str, str]:
        return {"admin": self.password("admin"), "app": self.password("app")}

    def acls(self) -> list[Any]:
        from federation.core.model import AclRule

        rules = [AclRule("User:admin", kind, name, "All")
                 for kind, name in (("Topic", "*"), ("Group", "*"),
                                    ("Cluster", "kafka-cluster"), ("TransactionalId", "*"))]
        for op in ("Read", "Write", "Describe", "Create", "DescribeConfigs"):
            rules.append(AclRule("User:app", "Topic", APP_PREFIX, op, pattern_type="PREFIXED"))
        for op in ("Read", "Describe"):
            rules.append(AclRule("User:app", "Group", APP_PREFIX, op, pattern_type="PREFIXED"))
        rules.append(AclRule("User:app", "Cluster", "kafka-cluster", "IdempotentWrite"))
        return rules

    def client_settings(self, bootstrap: str) -> dict[str, Any]:
        """What federation.json tells clients: per user, everything a client needs."""
        out: dict[str, Any] = {"ca": str(self.ca), "users": {}}
        for user in ("admin", "app"):
            settings = {"bootstrap": bootstrap, "security.protocol": "SASL_SSL",
                        "sasl.mechanism": MECHANISM, "sasl.username": user,
                        "sasl.password": self.password(user), "ssl.ca.location": str(self.ca)}
            props = self.workdir / "clients" / f"{user}.properties"
            props.parent.mkdir(parents=True, exist_ok=True)
            _write_private(props, java_properties(settings).encode())
            out["users"][user] = {**settings, "java_properties": str(props)}
        out["app_prefix"] = APP_PREFIX
        out["mtls_client"] = {"cert": str(self.workdir / "tls" / "app-client.pem"),
                              "key": str(self.workdir / "tls" / "app-client.key"),
                              "principal": "User:CN=app,OU=fedkafka-local"}
        out["cluster_security"] = self.cluster_security()
        return out


def java_properties(settings: dict[str, str]) -> str:
    """Java client properties (SASL_SSL + SCRAM, PEM truststore) for ``settings``."""
    jaas = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{settings["sasl.username"]}" password="{settings["sasl.password"]}";')
    return (f"security.protocol={settings['security.protocol']}\n"
            f"sasl.mechanism={settings['sasl.mechanism']}\n"
            f"sasl.jaas.config={jaas}\n"
            "ssl.truststore.type=PEM\n"
            f"ssl.truststore.location={settings['ssl.ca.location']}\n")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def prepare(workdir: Path) -> SecureSetup:
    """Certificates and passwords for a secure local federation in ``workdir``."""
    scrub(workdir)
    ca = certs.create_ca(workdir / "tls")
    hosts = [HOST, "localhost"]
    broker = ca.issue("broker", "kafka-broker", units=["fedkafka-local"], hosts=hosts)
    proxy = ca.issue("proxy", "fedkafka-proxy", units=["fedkafka-local"], hosts=hosts)
    ca.issue("app-client", "app", units=["fedkafka-local"], server=False)
    ca.issue("zookeeper", "zookeeper", units=["fedkafka-local"], hosts=hosts)
    ca.issue("zk-client", "fedkafka", units=["fedkafka-local"], server=False)
    folder = workdir / "passwords"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    setup = SecureSetup(workdir=workdir, ca=ca.ca_path, broker_keystore=broker.keystore,
                        proxy_cert=proxy.cert, proxy_key=proxy.key)
    for name in ("broker-admin", "broker-fedkafka", "admin", "app"):
        path = folder / f"{name}.password"
        _write_private(path, (secrets.token_hex(16) + "\n").encode())
        setup.passwords[name] = path
    return setup


def scrub(workdir: Path) -> None:
    """Remove the certificates, keys, passwords and client settings from ``workdir``."""
    import shutil

    for sub in SECRET_DIRS:
        shutil.rmtree(workdir / sub, ignore_errors=True)
