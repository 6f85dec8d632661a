"""TLS everywhere, against a secure local federation (``fedkafka local up --secure``):

* two physical clusters whose brokers listen with SASL_SSL only (SCRAM-SHA-512, PEM
  keystores); every federation component connects to them with the map's ``security``;
* a proxy and the name service with TLS on their client listeners and SASL/SCRAM required;
  the name service's HTTP API over HTTPS;
* the Java client, librdkafka and aiokafka produce and consume through the federation
  with TLS + SCRAM (exact records back);
* mTLS: an in-process proxy requiring client certificates; the certificate's subject DN
  is the principal the ACLs name (granted: success; not granted: TOPIC_AUTHORIZATION_FAILED);
* plaintext to a TLS listener fails on that connection only.

The secure federation starts once for the module on ``FEDKAFKA_TEST_TLS_PORT`` (default
23500) and is stopped (secrets removed) at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import stat
import struct
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from federation.clusters import admin, probe
from federation.core.model import AclRule
from federation.tooling import certs, procs
from federation.tooling.kafka_dist import KafkaDist
from federation.tooling.local import LocalFederation

from .elastic_tools import wait_until
from .fedtopics import backend_of, route_to_proxy
from .inprocess import InProcessProxy

pytestmark = pytest.mark.integration

BASE_PORT = int(os.environ.get("FEDKAFKA_TEST_TLS_PORT", "23500"))
MTLS_PORT = BASE_PORT + 30  # free in the local layout (proxies +0.., name service +10)
MTLS_NODE = 1930
MTLS_METRICS_PORT = BASE_PORT + 31  # its Prometheus endpoint, HTTPS with client certificates
ZK_TLS_PORT = BASE_PORT + 40  # a TLS-only ZooKeeper
TOPIC = "app-tls"  # the example user `app` may use topics and groups starting with app-
MTLS_TOPIC = "mtls-orders"
APP_PRINCIPAL = "User:CN=app,OU=fedkafka-local"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory, kafka_dist: KafkaDist
           ) -> Iterator[dict[str, Any]]:
    """A secure local federation: 2 SASL_SSL clusters, a TLS proxy and name service, the
    map in a ZooKeeper that serves only TLS with client certificates."""
    workdir = tmp_path_factory.mktemp("tls-federation")
    fed = LocalFederation(workdir)
    state = fed.up(clusters=2, kafka_version=kafka_dist.version, base_port=BASE_PORT,
                   heap="256m", proxies=1, controllers=1, exporter=False, secure=True,
                   metadata="zookeeper", timeout=300)
    backend = backend_of(state)
    try:
        for name, partitions in ((TOPIC, 4), (MTLS_TOPIC, 2), ("app-java", 2),
                                 ("app-aio", 2), ("forbidden-topic", 1)):
            asyncio.run(admin.create_topic(backend, name, partitions))
        fmap = backend.load()
        assert fmap is not None
        health = f"{state['nameservice_http']}/health"
        ctx = ssl.create_default_context(cafile=state["security"]["ca"])
        wait_until(lambda: json.load(urllib.request.urlopen(health, context=ctx))[
            "map_version"] >= fmap.version, 60, "the name service to serve the topics")
        yield state
    finally:
        backend.close()
        records = fed.records()
        fed.down(grace=15)
        assert not [r.name for r in records if procs.is_ours(r)]
        left = [p for p in ("tls", "passwords", "clients") if (workdir / p).exists()]
        assert not left, f"secrets left behind: {left}"
        assert "security" not in json.loads((workdir / "federation.json").read_text())


def _user(state: dict[str, Any], name: str) -> dict[str, Any]:
    settings: dict[str, Any] = state["security"]["users"][name]
    return settings


def _rdkafka(state: dict[str, Any], user: str, client: str) -> dict[str, Any]:
    u = _user(state, user)
    return {"bootstrap.servers": u["bootstrap"], "client.id": f"fk-tls-{client}",
            "security.protocol": u["security.protocol"], "sasl.mechanism": u["sasl.mechanism"],
            "sasl.username": u["sasl.username"], "sasl.password": u["sasl.password"],
            "ssl.ca.location": u["ssl.ca.location"]}


def _produce(config: dict[str, Any], topic: str, values: list[bytes]
             ) -> tuple[list[bytes], list[Any]]:
    ok: list[bytes] = []
    errors: list[Any] = []
    producer = Producer({**config, "acks": "all", "message.timeout.ms": 30000})

    def delivered(err: Any, msg: Any) -> None:
        (errors.append(err) if err else ok.append(msg.value()))
    for value in values:
        producer.produce(topic, value, on_delivery=delivered)
    assert producer.flush(60) == 0
    return ok, errors


def _consume(config: dict[str, Any], topic: str, want: set[bytes], group: str
             ) -> list[bytes]:
    consumer = Consumer({**config, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 90
        while not want <= set(got) and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=100, timeout=0.5):
                assert m.error() is None, m.error()
                value = m.value()
                assert value is not None
                got.append(value)
    finally:
        consumer.close()
    return got


# -- the physical clusters -------------------------------------------------------------------


def test_physical_brokers_speak_only_sasl_ssl(secure: dict[str, Any]) -> None:
    """The brokers refuse a plaintext client; with the map's security they answer."""
    fmap = backend_of(secure).load()
    assert fmap is not None and len(fmap.clusters) == 2
    for cluster in fmap.clusters.values():
        assert cluster.security["security.protocol"] == "SASL_SSL"
        assert cluster.security["sasl.password"].startswith("file:")  # not in clear
        host, port = cluster.bootstrap_servers[0].rsplit(":", 1)
        with pytest.raises((OSError, probe.ProbeError)):
            probe.metadata(host, int(port), timeout=5.0)
        answer = probe.metadata(host, int(port), timeout=10.0, security=cluster.security)
        assert len(answer.brokers) == 1


def test_the_store_is_zookeeper_over_tls(secure: dict[str, Any]) -> None:
    """Every component reads the map from ZooKeeper over TLS with a client certificate
    (the store spec's query); a plaintext ZooKeeper client gets nowhere."""
    assert secure["store"].startswith("zookeeper:") and "?ssl=true&ca=" in secure["store"]
    assert not _kazoo_connects(secure["zookeeper"])
    fmap = backend_of(secure).load()  # the test's own backend: TLS + client certificate
    assert fmap is not None and set(fmap.clusters) == {"c1", "c2"}


def test_federation_json_has_client_settings(secure: dict[str, Any]) -> None:
    sec = secure["security"]
    assert set(sec["users"]) == {"admin", "app"}
    for user in sec["users"].values():
        assert user["security.protocol"] == "SASL_SSL"
        assert user["sasl.mechanism"] == "SCRAM-SHA-512"
        assert user["sasl.password"] and Path(user["ssl.ca.location"]).is_file()
        assert user["bootstrap"] == secure["bootstrap"]
        props = Path(user["java_properties"])
        assert stat.S_IMODE(props.stat().st_mode) == 0o600
    state_file = Path(secure["workdir"]) / "federation.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600


def test_name_service_http_api_is_https(secure: dict[str, Any]) -> None:
    assert secure["nameservice_http"].startswith("https://")
    ctx = ssl.create_default_context(cafile=secure["security"]["ca"])
    with urllib.request.urlopen(f"{secure['nameservice_http']}/health", context=ctx) as r:
        assert r.status == 200
    with pytest.raises(OSError):  # plain HTTP to the TLS port gets no HTTP answer
        urllib.request.urlopen(secure["nameservice_http"].replace("https", "http")
                               + "/health", timeout=10)


# -- clients through the federation with TLS + SCRAM -----------------------------------------


def test_librdkafka_produces_and_consumes_with_tls_and_scram(secure: dict[str, Any]) -> None:
    tag = uuid.uuid4().hex[:8]
    sent = [f"rd-{tag}-{i}".encode() for i in range(40)]
    ok, errors = _produce(_rdkafka(secure, "app", "rd-p"), TOPIC, sent)
    assert not errors and sorted(ok) == sorted(sent)
    got = _consume(_rdkafka(secure, "app", "rd-c"), TOPIC, set(sent), f"app-rd-{tag}")
    mine = [v for v in got if tag.encode() in v]
    assert sorted(mine) == sorted(sent)  # every record, once


def test_acls_hold_for_scram_users_over_tls(secure: dict[str, Any]) -> None:
    """`app` may only use topics starting with app-: elsewhere TOPIC_AUTHORIZATION_FAILED."""
    ok, errors = _produce({**_rdkafka(secure, "app", "rd-denied"),
                           "message.timeout.ms": 10000}, "forbidden-topic", [b"no"])
    assert not ok
    assert [e.code() for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
    ok, errors = _produce(_rdkafka(secure, "admin", "rd-admin"), "forbidden-topic", [b"yes"])
    assert ok == [b"yes"] and not errors


def test_wrong_password_over_tls_fails_authentication(secure: dict[str, Any]) -> None:
    errors: list[KafkaError] = []
    producer = Producer({**_rdkafka(secure, "app", "rd-bad"), "sasl.password": "wrong",
                         "message.timeout.ms": 5000, "error_cb": errors.append})
    producer.produce(TOPIC, b"never")
    deadline = time.monotonic() + 30
    while not any(e.code() == KafkaError._AUTHENTICATION for e in errors) \
            and time.monotonic() < deadline:
        producer.poll(0.1)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    producer.purge()
    producer.flush(5)


async def _aiokafka_roundtrip(state: dict[str, Any], topic: str, sent: list[bytes],
                              group: str) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    u = _user(state, "app")
    security = {"security_protocol": "SASL_SSL", "sasl_mechanism": u["sasl.mechanism"],
                "sasl_plain_username": u["sasl.username"],
                "sasl_plain_password": u["sasl.password"],
                "ssl_context": ssl.create_default_context(cafile=u["ssl.ca.location"])}
    producer = AIOKafkaProducer(bootstrap_servers=u["bootstrap"], client_id="fk-tls-aio-p",
                                acks="all", **security)
    await producer.start()
    try:
        for value in sent:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=u["bootstrap"], group_id=group,
                                client_id="fk-tls-aio-c", auto_offset_reset="earliest",
                                **security)
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 90
        while not set(sent) <= set(got) and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(m.value for m in msgs if m.value is not None)
    finally:
        await consumer.stop()
    return got


def test_aiokafka_produces_and_consumes_with_tls_and_scram(secure: dict[str, Any]) -> None:
    tag = uuid.uuid4().hex[:8]
    sent = [f"aio-{tag}-{i}".encode() for i in range(25)]
    got = asyncio.run(_aiokafka_roundtrip(secure, "app-aio", sent, f"app-aio-{tag}"))
    assert sorted(v for v in got if tag.encode() in v) == sorted(sent)


def test_java_client_produces_and_consumes_with_tls_and_scram(
        secure: dict[str, Any], kafka_dist: KafkaDist) -> None:
    """Kafka's console producer and consumer with the properties file `local up --secure`
    wrote (SASL_SSL, SCRAM-SHA-512, a PEM truststore)."""
    props = _user(secure, "app")["java_properties"]
    tag = uuid.uuid4().hex[:8]
    sent = [f"java-{tag}-{i}".encode() for i in range(12)]
    produced = subprocess.run(
        kafka_dist.java_command(kafka_dist.console_producer, "--bootstrap-server",
                                secure["bootstrap"], "--topic", "app-java",
                                "--producer.config", props,
                                "--producer-property", "acks=all", heap="256m"),
        input=b"".join(v + b"\n" for v in sent), capture_output=True, timeout=180,
        check=False)
    assert produced.returncode == 0, produced.stderr.decode(errors="replace")[-2000:]
    consumed = subprocess.run(
        kafka_dist.java_command(kafka_dist.console_consumer, "--bootstrap-server",
                                secure["bootstrap"], "--topic", "app-java",
                                "--from-beginning", "--group", f"app-java-{tag}",
                                "--max-messages", str(len(sent)), "--timeout-ms", "60000",
                                "--consumer.config", props, heap="256m"),
        capture_output=True, timeout=180, check=False)
    got = [line for line in consumed.stdout.splitlines() if line.startswith(b"java-")]
    assert sorted(got) == sorted(sent), consumed.stderr.decode(errors="replace")[-2000:]


# -- mTLS: the certificate names the principal -------------------------------------------------


@pytest.fixture(scope="module")
def mtls(secure: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """An in-process proxy with an SSL listener requiring client certificates, its pool
    the one for client ids fk-mtls-*; an ACL for the example app certificate."""
    route_to_proxy(secure, "mtls", MTLS_NODE, MTLS_PORT, "fk-mtls-.*")
    backend = backend_of(secure)
    rules = [AclRule(APP_PRINCIPAL, "Topic", MTLS_TOPIC, op) for op in ("Write", "Read")]
    rules += [AclRule(APP_PRINCIPAL, "Group", "mtls-", "Read", pattern_type="PREFIXED"),
              AclRule(APP_PRINCIPAL, "Cluster", "kafka-cluster", "IdempotentWrite")]
    asyncio.run(admin.add_acls(backend, rules))
    sec = secure["security"]
    workdir = Path(secure["workdir"])
    tls = {"cert": str(workdir / "tls" / "proxy.pem"), "key": str(workdir / "tls" / "proxy.key"),
           "ca": sec["ca"], "client_auth": "required"}
    # A certificate of the same CA whose subject has no ACL.
    stranger = certs.load_ca(workdir / "tls").issue("stranger", "stranger", units=["other"],
                                                   server=False)
    try:
        with InProcessProxy(secure["store"], MTLS_PORT, pool="mtls", node_id=MTLS_NODE,
                            tls=tls, metrics=f"127.0.0.1:{MTLS_METRICS_PORT}",
                            metrics_tls=tls):
            base = {"bootstrap.servers": f"127.0.0.1:{MTLS_PORT}",
                    "security.protocol": "SSL", "ssl.ca.location": sec["ca"]}
            yield f"127.0.0.1:{MTLS_PORT}", {
                "app": {**base, "ssl.certificate.location": sec["mtls_client"]["cert"],
                        "ssl.key.location": sec["mtls_client"]["key"]},
                "stranger": {**base, "ssl.certificate.location": str(stranger.cert),
                             "ssl.key.location": str(stranger.key)},
                "none": base}
    finally:
        asyncio.run(admin.remove_acls(backend, rules))
        backend.close()


def test_mtls_certificate_principal_with_the_acl_produces_and_consumes(
        mtls: tuple[str, dict[str, Any]]) -> None:
    _, clients = mtls
    tag = uuid.uuid4().hex[:8]
    sent = [f"mtls-{tag}-{i}".encode() for i in range(20)]
    ok, errors = _produce({**clients["app"], "client.id": "fk-mtls-p"}, MTLS_TOPIC, sent)
    assert not errors and sorted(ok) == sorted(sent)
    got = _consume({**clients["app"], "client.id": "fk-mtls-c"}, MTLS_TOPIC, set(sent),
                   f"mtls-{tag}")
    assert sorted(v for v in got if tag.encode() in v) == sorted(sent)


def test_mtls_certificate_principal_without_the_acl_is_denied(
        mtls: tuple[str, dict[str, Any]]) -> None:
    _, clients = mtls
    ok, errors = _produce({**clients["stranger"], "client.id": "fk-mtls-stranger",
                           "message.timeout.ms": 10000}, MTLS_TOPIC, [b"no"])
    assert not ok
    assert [e.code() for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]


def test_mtls_client_without_a_certificate_fails_the_handshake(
        mtls: tuple[str, dict[str, Any]]) -> None:
    bootstrap, clients = mtls
    host, port = bootstrap.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=clients["none"]["ssl.ca.location"])
    with pytest.raises((ssl.SSLError, ConnectionError)), ctx.wrap_socket(
            socket.create_connection((host, int(port)), timeout=10),
            server_hostname=host) as s:
        s.sendall(_api_versions())  # TLS 1.3: the refusal arrives with the first read
        if not s.recv(4):
            raise ConnectionError("closed")


def test_metrics_endpoint_with_tls_requires_a_client_certificate(
        mtls: tuple[str, dict[str, Any]]) -> None:
    _, clients = mtls
    url = f"https://127.0.0.1:{MTLS_METRICS_PORT}/metrics"
    ctx = ssl.create_default_context(cafile=clients["app"]["ssl.ca.location"])
    with pytest.raises(OSError):  # no client certificate: the handshake fails
        urllib.request.urlopen(url, context=ctx, timeout=10)
    ctx.load_cert_chain(clients["app"]["ssl.certificate.location"],
                        clients["app"]["ssl.key.location"])
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        assert b"fedkafka_proxy_connections" in r.read()


# -- plaintext to a TLS listener ---------------------------------------------------------------


def _api_versions() -> bytes:
    body = struct.pack(">hhih", 18, 0, 1, 1) + b"x"
    return struct.pack(">i", len(body)) + body


def test_plaintext_to_a_tls_listener_fails_without_hurting_others(
        secure: dict[str, Any]) -> None:
    """A plaintext Kafka request to the proxy's TLS port is not a TLS handshake: that
    connection closes; a TLS client connected before and after keeps being served."""
    config = _rdkafka(secure, "app", "rd-neighbour")
    tag = uuid.uuid4().hex[:8]
    producer = Producer({**config, "acks": "all", "message.timeout.ms": 30000})
    errors: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)
    producer.produce(TOPIC, f"before-{tag}".encode(), on_delivery=delivered)
    assert producer.flush(60) == 0 and not errors
    host, port = secure["proxy_bootstrap"].split(",")[0].rsplit(":", 1)
    for _ in range(20):
        with socket.create_connection((host, int(port)), timeout=15) as s:
            s.sendall(_api_versions())
            try:
                data = s.recv(1024)
            except ConnectionResetError:
                data = b""
            # No Kafka answer: at most a TLS alert record (content type 21), then EOF.
            assert data == b"" or data[0] == 21, data[:16]
    producer.produce(TOPIC, f"after-{tag}".encode(), on_delivery=delivered)
    assert producer.flush(60) == 0 and not errors
    fed = LocalFederation(Path(secure["workdir"]))
    assert all(procs.is_ours(r) for r in fed.records() if r.kind == "proxy")
    got = _consume(_rdkafka(secure, "app", "rd-neighbour-c"), TOPIC,
                   {f"before-{tag}".encode(), f"after-{tag}".encode()}, f"app-nb-{tag}")
    assert sorted(v for v in got if tag.encode() in v) == [f"after-{tag}".encode(),
                                                           f"before-{tag}".encode()]


# -- ZooKeeper over TLS ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_zookeeper(secure: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[str, certs.IssuedCert]]:
    """A ZooKeeper serving only TLS (Netty, PEM key and trust stores) and requiring client
    certificates; yields its host:port and a client certificate of the same CA."""
    from federation.tooling.kafka_dist import install_zookeeper

    folder = tmp_path_factory.mktemp("tls-zookeeper")
    ca = certs.load_ca(Path(secure["workdir"]) / "tls")
    server = ca.issue("zookeeper", "zookeeper", hosts=["127.0.0.1", "localhost"])
    client = ca.issue("zk-client", "fedkafka-proxy", units=["zookeeper-clients"],
                      server=False)
    port = ZK_TLS_PORT
    (folder / "data").mkdir()
    cfg = folder / "zoo.cfg"
    cfg.write_text(
        f"tickTime=2000\ndataDir={folder / 'data'}\nsecureClientPort={port}\n"
        "secureClientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
        "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n"
        f"ssl.keyStore.location={server.keystore}\nssl.keyStore.type=PEM\n"
        f"ssl.trustStore.location={ca.ca_path}\nssl.trustStore.type=PEM\n"
        "ssl.clientAuth=need\n")
    dist, _ = install_zookeeper()
    record, proc = procs.spawn(name="zookeeper-tls", kind="zookeeper", cmd=dist.java_command(cfg),
                               log=folder / "zookeeper.log", ports=[port], marker=str(cfg))
    hosts = f"127.0.0.1:{port}"
    try:
        def serving() -> bool:
            assert proc.poll() is None, (folder / "zookeeper.log").read_text()[-2000:]
            return _kazoo_connects(hosts, ca=str(ca.ca_path), certfile=str(client.cert),
                                   keyfile=str(client.key))
        wait_until(serving, 90, "ZooKeeper to serve TLS")
        yield hosts, client
    finally:
        procs.stop([record], grace=10)


def _kazoo_connects(hosts: str, **options: Any) -> bool:
    from kazoo.client import KazooClient
    from kazoo.handlers.threading import KazooTimeoutError

    client = KazooClient(hosts=hosts, timeout=3.0, connection_retry={"max_tries": 0},
                         use_ssl=bool(options), verify_certs=True, check_hostname=True,
                         **options)
    try:
        client.start(timeout=3.0)
        return True
    except (KazooTimeoutError, OSError):
        return False
    finally:
        client.stop()
        client.close()


def test_zookeeper_store_over_tls(secure: dict[str, Any],
                                  tls_zookeeper: tuple[str, certs.IssuedCert]) -> None:
    """The store spec's ?ssl=true&ca=&cert=&key= makes the ZooKeeper backend speak TLS
    with a client certificate; plaintext and certificate-less clients are refused."""
    from federation.plugin import get_plugins, parse_store
    from federation.store.mapstore import EMPTY_VERSION

    hosts, client = tls_zookeeper
    ca = secure["security"]["ca"]
    assert not _kazoo_connects(hosts)  # plaintext
    assert not _kazoo_connects(hosts, ca=ca)  # TLS without a client certificate
    spec = (f"zookeeper:{hosts}/fk-tls?ssl=true&ca={ca}&cert={client.cert}"
            f"&key={client.key}")
    name, options = parse_store(spec)
    assert options["tls"]["cert"] == str(client.cert)
    fmap = backend_of(secure).load()
    assert fmap is not None
    backend = get_plugins().backend(name, **options)
    try:
        current = backend.load()
        backend.publish(fmap, current.version if current is not None else EMPTY_VERSION)
        again = backend.load()
        assert again is not None and set(again.clusters) == set(fmap.clusters)
        assert again.clusters["c1"].security == fmap.clusters["c1"].security
    finally:
        backend.close()


# -- the admin CLI with secure clusters ------------------------------------------------------


def _cli(workdir: str, *args: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "federation.cli.main", *args,
                           "--workdir", workdir],
                          capture_output=True, text=True, timeout=120, check=False)


def test_local_demo_uses_the_admin_settings(secure: dict[str, Any]) -> None:
    demo = _cli(secure["workdir"], "local", "demo", "--topic", "demo-tls",
                "--message", "over tls")
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "consumed: 'over tls'" in demo.stdout


def test_cli_reaches_sasl_ssl_clusters_and_refuses_insecure_settings(
        secure: dict[str, Any]) -> None:
    """`fedkafka status` probes every cluster with its security; `cluster add` without
    security cannot reach a SASL_SSL broker, and a password in clear is refused first."""
    status = _cli(secure["workdir"], "status", "--json")
    assert status.returncode == 0, status.stderr
    clusters = {c["id"]: c for c in json.loads(status.stdout)["clusters"]}
    assert set(clusters) == {"c1", "c2"}
    assert all(c["reachable"] for c in clusters.values()), clusters
    bootstrap = secure["clusters"][1]["bootstrap"]
    plain = _cli(secure["workdir"], "cluster", "add", "c9", bootstrap)
    assert plain.returncode != 0 and "no bootstrap server answers" in plain.stderr
    clear = _cli(secure["workdir"], "cluster", "add", "c9", bootstrap,
                 "--security", "security.protocol=SASL_SSL",
                 "--security", "sasl.mechanism=SCRAM-SHA-512",
                 "--security", "sasl.username=fedkafka", "--security", "sasl.password=x")
    assert clear.returncode != 0 and "must be a secret reference" in clear.stderr
    fmap = backend_of(secure).load()
    assert fmap is not None and "c9" not in fmap.clusters
