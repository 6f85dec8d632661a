"""SASL/SCRAM-SHA-256/512 and PLAIN against users stored in the map, through a proxy that
requires SASL: the Java client, librdkafka and aiokafka produce and consume; a wrong
password is answered SASL_AUTHENTICATION_FAILED and the connection is closed."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from kio.index import load_request_schema

from federation.controller import users
from federation.protocol import decode_response, encode_request
from federation.protocol.errors import ErrorCode
from federation.security.sasl import ScramClient
from federation.tooling.kafka_dist import KafkaDist

from .elastic_tools import wait_until
from .fedtopics import backend_of, create_logical_topic, route_to_proxy
from .inprocess import InProcessProxy

pytestmark = pytest.mark.integration

TOPIC = "scram-topic"
Secure = tuple[str, InProcessProxy, dict[str, Any]]  # bootstrap, proxy, federation
# alice holds every mechanism; bob only SCRAM-SHA-512 (so SHA-256 and PLAIN fail for him).
USERS = {"alice": ("alice-secret", ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")),
         "bob": ("bob secret, with = and ,", ("SCRAM-SHA-512",))}


@pytest.fixture(scope="module")
def secure(local_federation: dict[str, Any]
           ) -> Iterator[tuple[str, InProcessProxy, dict[str, Any]]]:
    """A proxy with ``sasl_required: true`` (its own pool) and two users in the map."""
    create_logical_topic(local_federation, TOPIC, 2)
    port = int(local_federation["bootstrap"].rsplit(":", 1)[1]) + 13
    route_to_proxy(local_federation, "scram", 1903, port, "fk-scram-.*")
    backend = backend_of(local_federation)
    try:
        for name, (password, mechanisms) in USERS.items():
            fmap, _ = asyncio.run(users.add_user(backend, name, password, mechanisms))
        health = f"{local_federation['nameservice_http']}/health"
        wait_until(lambda: json.load(urllib.request.urlopen(health))["map_version"]
                   >= fmap.version, 30, "the name service to serve the map with the users")
        with InProcessProxy(local_federation["store"], port, pool="scram", node_id=1903,
                            sasl_required=True) as proxy:
            yield f"127.0.0.1:{port}", proxy, local_federation
    finally:
        for name in USERS:  # the shared federation goes back to having no users
            asyncio.run(users.remove_user(backend, name))
        backend.close()


def _counter(proxy: InProcessProxy, name: str, **labels: str) -> float:
    assert proxy.state is not None
    value = proxy.state.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# -- librdkafka --------------------------------------------------------------------------------


def _rdkafka_config(bootstrap: str, mechanism: str, user: str, password: str,
                    client: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "client.id": f"fk-scram-{client}",
            "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
            "sasl.username": user, "sasl.password": password}


def _rdkafka_roundtrip(bootstrap: str, mechanism: str, user: str, password: str
                       ) -> tuple[list[bytes], list[bytes]]:
    tag = uuid.uuid4().hex[:8]
    sent = [f"rd-{mechanism}-{tag}-{i}".encode() for i in range(20)]
    errors: list[Any] = []
    producer = Producer({**_rdkafka_config(bootstrap, mechanism, user, password, "rd-p"),
                         "acks": "all", "message.timeout.ms": 30000,
                         "error_cb": errors.append})
    for value in sent:
        producer.produce(TOPIC, value, on_delivery=lambda err, _m: err and errors.append(err))
    assert producer.flush(60) == 0 and not errors, errors
    consumer = Consumer({**_rdkafka_config(bootstrap, mechanism, user, password, "rd-c"),
                         "group.id": f"rd-{tag}", "auto.offset.reset": "earliest"})
    consumer.subscribe([TOPIC])
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while not set(sent) <= set(got) and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=100, timeout=0.5):
                assert m.error() is None, m.error()
                got.append(m.value())
    finally:
        consumer.close()
    return sent, [v for v in got if tag.encode() in v]


@pytest.mark.parametrize(("mechanism", "user"), [
    ("SCRAM-SHA-256", "alice"), ("SCRAM-SHA-512", "alice"), ("SCRAM-SHA-512", "bob"),
    ("PLAIN", "alice"),
])
def test_librdkafka_produces_and_consumes(secure: Secure, mechanism: str,
                                          user: str) -> None:
    bootstrap, proxy, _ = secure
    before = _counter(proxy, "fedkafka_proxy_authentications_total", mechanism=mechanism,
                      result="ok")
    sent, got = _rdkafka_roundtrip(bootstrap, mechanism, user, USERS[user][0])
    assert sorted(got) == sorted(sent)
    assert _counter(proxy, "fedkafka_proxy_authentications_total", mechanism=mechanism,
                    result="ok") > before


def test_librdkafka_bootstraps_through_the_name_service_with_scram(secure: Secure) -> None:
    """The name service (a proxy without sasl_required) offers the users' mechanisms too,
    and sends the authenticated client to the pool of its client.id: the SASL proxy."""
    _, proxy, federation = secure
    before = _counter(proxy, "fedkafka_proxy_authentications_total",
                      mechanism="SCRAM-SHA-512", result="ok")
    sent, got = _rdkafka_roundtrip(federation["bootstrap"], "SCRAM-SHA-512", "bob",
                                   USERS["bob"][0])
    assert sorted(got) == sorted(sent)
    assert _counter(proxy, "fedkafka_proxy_authentications_total",
                    mechanism="SCRAM-SHA-512", result="ok") >= before + 2  # producer, consumer


@pytest.mark.parametrize(("mechanism", "user", "password"), [
    ("SCRAM-SHA-256", "alice", "wrong"),
    ("SCRAM-SHA-256", "bob", USERS["bob"][0]),  # bob has no SHA-256 credential
    ("SCRAM-SHA-512", "mallory", "guess"),  # no such user
    ("PLAIN", "alice", "wrong"),
])
def test_librdkafka_wrong_credentials_fail_to_authenticate(
        secure: Secure, mechanism: str, user: str, password: str) -> None:
    bootstrap, proxy, _ = secure
    before = _counter(proxy, "fedkafka_proxy_authentications_total", mechanism=mechanism,
                      result="failed")
    errors: list[KafkaError] = []
    delivered: list[Any] = []
    producer = Producer({**_rdkafka_config(bootstrap, mechanism, user, password, "rd-bad"),
                         "message.timeout.ms": 5000, "error_cb": errors.append})
    producer.produce(TOPIC, b"never", on_delivery=lambda err, _m: delivered.append(err))
    deadline = time.monotonic() + 20
    while not any(e.code() == KafkaError._AUTHENTICATION for e in errors) \
            and time.monotonic() < deadline:
        producer.poll(0.1)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    producer.purge()
    producer.flush(5)
    assert len(delivered) == 1 and delivered[0] is not None  # never written
    assert _counter(proxy, "fedkafka_proxy_authentications_total", mechanism=mechanism,
                    result="failed") > before


# -- aiokafka ----------------------------------------------------------------------------------


async def _aiokafka_roundtrip(bootstrap: str, mechanism: str, user: str, password: str
                              ) -> tuple[list[bytes], list[bytes]]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    security = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
                "sasl_plain_username": user, "sasl_plain_password": password}
    tag = uuid.uuid4().hex[:8]
    sent = [f"aio-{mechanism}-{tag}-{i}".encode() for i in range(20)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="fk-scram-aio-p",
                                acks="all", **security)
    await producer.start()
    try:
        for value in sent:
            await producer.send_and_wait(TOPIC, value)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=f"aio-{tag}",
                                client_id="fk-scram-aio-c", auto_offset_reset="earliest",
                                **security)
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while not set(sent) <= set(got) and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(m.value for m in msgs)
    finally:
        await consumer.stop()
    return sent, [v for v in got if tag.encode() in v]


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_aiokafka_produces_and_consumes(secure: Secure,
                                        mechanism: str) -> None:
    sent, got = asyncio.run(_aiokafka_roundtrip(secure[0], mechanism, "alice",
                                                USERS["alice"][0]))
    assert sorted(got) == sorted(sent)


def test_aiokafka_wrong_password_is_refused(secure: Secure,
                                            caplog: pytest.LogCaptureFixture) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError as AioKafkaError

    async def attempt() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=secure[0], client_id="fk-scram-aio-bad",
            security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
            sasl_plain_username="alice", sasl_plain_password="wrong", request_timeout_ms=10000)
        try:
            await producer.start()
        finally:
            await producer.stop()

    with pytest.raises(AioKafkaError) as failure:
        asyncio.run(attempt())
    assert "Unable to bootstrap" in str(failure.value)
    # aiokafka logs why: the proxy's SASL_AUTHENTICATION_FAILED answer.
    reasons = [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka")]
    assert any("[Error 58] SaslAuthenticationFailed" in m and "invalid credentials" in m
               for m in reasons), reasons


# -- Kafka's Java client -----------------------------------------------------------------------


def _jaas(mechanism: str, user: str, password: str) -> str:
    module = ("org.apache.kafka.common.security.plain.PlainLoginModule" if mechanism == "PLAIN"
              else "org.apache.kafka.common.security.scram.ScramLoginModule")
    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    return (f"security.protocol=SASL_PLAINTEXT\nsasl.mechanism={mechanism}\n"
            f'sasl.jaas.config={module} required username="{user}" password="{quoted}";\n')


def _java_roundtrip(dist: KafkaDist, bootstrap: str, topic: str, mechanism: str, user: str,
                    password: str) -> tuple[list[bytes], list[bytes], bytes]:
    tag = uuid.uuid4().hex[:8]
    sent = [f"java-{mechanism}-{tag}-{i}".encode() for i in range(10)]
    with tempfile.TemporaryDirectory() as tmp:
        producer = Path(tmp) / "producer.properties"
        producer.write_text(f"client.id=fk-scram-java-p\nacks=all\ndelivery.timeout.ms=30000\n"
                            f"request.timeout.ms=10000\n{_jaas(mechanism, user, password)}")
        produced = subprocess.run(
            dist.java_command(dist.console_producer, "--bootstrap-server", bootstrap, "--topic",
                              topic, "--producer.config", str(producer), heap="256m"),
            input=b"".join(v + b"\n" for v in sent), capture_output=True, timeout=180,
            check=False)
        consumer = Path(tmp) / "consumer.properties"
        consumer.write_text(f"client.id=fk-scram-java-c\n{_jaas(mechanism, user, password)}")
        consumed = subprocess.run(
            dist.java_command(dist.console_consumer, "--bootstrap-server", bootstrap,
                              "--topic", topic, "--from-beginning", "--group", f"java-{tag}",
                              "--max-messages", str(len(sent)), "--timeout-ms", "30000",
                              "--consumer.config", str(consumer),
                              heap="256m"),
            capture_output=True, timeout=180, check=False)
    prefix = f"java-{mechanism}-{tag}-".encode()  # the tools log INFO lines on stdout too
    got = [line for line in consumed.stdout.splitlines() if line.startswith(prefix)]
    return sent, got, produced.stdout + produced.stderr + consumed.stderr


@pytest.mark.parametrize(("mechanism", "user"), [("SCRAM-SHA-256", "alice"),
                                                 ("SCRAM-SHA-512", "bob")])
def test_java_client_produces_and_consumes(secure: Secure,
                                           kafka_dist: KafkaDist, mechanism: str,
                                           user: str) -> None:
    topic = f"scram-java-{mechanism.lower()}"  # its own: the consumer stops at 10 records
    create_logical_topic(secure[2], topic, 2)
    sent, got, output = _java_roundtrip(kafka_dist, secure[0], topic, mechanism, user,
                                        USERS[user][0])
    assert sorted(got) == sorted(sent), output.decode(errors="replace")[-2000:]


def test_java_client_with_a_wrong_password_gets_an_authentication_error(
        secure: Secure, kafka_dist: KafkaDist) -> None:
    _, got, output = _java_roundtrip(kafka_dist, secure[0], TOPIC, "SCRAM-SHA-512", "bob",
                                     "nope")
    assert got == []
    assert b"SaslAuthenticationException" in output, output.decode(errors="replace")[-2000:]
    assert b"invalid credentials with SASL mechanism SCRAM-SHA-512" in output


# -- on the wire: the error, then the connection closes ------------------------------------------


def _request(api_key: int, version: int, correlation: int, **fields: Any) -> bytes:
    schema: Any = load_request_schema(api_key, version)
    return b"".join(encode_request(schema(**fields), correlation, "fk-scram-wire"))


def _read_response(sock: socket.socket, api_key: int, version: int) -> Any:
    size = struct.unpack(">i", _exact(sock, 4))[0]
    _, resp = decode_response(api_key, version, _exact(sock, size))
    return resp


def _exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _closed(sock: socket.socket, seconds: float = 10.0) -> bool:
    """Whether the proxy closes ``sock`` (EOF) within ``seconds``, sending nothing more."""
    sock.settimeout(seconds)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _handshake(sock: socket.socket, mechanism: str) -> None:
    sock.sendall(_request(17, 1, 1, mechanism=mechanism))
    resp = _read_response(sock, 17, 1)
    assert resp.error_code == 0, resp
    assert mechanism in resp.mechanisms


def test_wrong_scram_proof_is_answered_then_the_connection_closes(
        secure: Secure) -> None:
    bootstrap, proxy, _ = secure
    host, port = bootstrap.rsplit(":", 1)
    closed_before = _counter(proxy, "fedkafka_proxy_connections_closed_total",
                             reason="authentication_failed")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        _handshake(sock, "SCRAM-SHA-256")
        client = ScramClient("SCRAM-SHA-256", "alice", "not her password")
        sock.sendall(_request(36, 2, 2, auth_bytes=client.first()))
        first = _read_response(sock, 36, 2)
        assert first.error_code == 0 and bytes(first.auth_bytes).startswith(b"r=")
        # The failing final message and, pipelined behind it, a next guess: only the
        # failure is answered, then the connection closes.
        sock.sendall(_request(36, 2, 3, auth_bytes=client.final(bytes(first.auth_bytes)))
                     + _request(17, 1, 4, mechanism="PLAIN"))
        final = _read_response(sock, 36, 2)
        assert final.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
        assert final.error_message == ("Authentication failed during authentication due to "
                                       "invalid credentials with SASL mechanism SCRAM-SHA-256")
        assert bytes(final.auth_bytes) == b""
        assert _closed(sock)
    assert _counter(proxy, "fedkafka_proxy_connections_closed_total",
                    reason="authentication_failed") == closed_before + 1


def test_right_scram_proof_gets_the_server_signature(
        secure: Secure) -> None:
    host, port = secure[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        _handshake(sock, "SCRAM-SHA-512")
        client = ScramClient("SCRAM-SHA-512", "bob", USERS["bob"][0])
        sock.sendall(_request(36, 2, 2, auth_bytes=client.first()))
        first = _read_response(sock, 36, 2)
        sock.sendall(_request(36, 2, 3, auth_bytes=client.final(bytes(first.auth_bytes))))
        final = _read_response(sock, 36, 2)
        assert final.error_code == 0, final
        client.verify(bytes(final.auth_bytes))  # the proxy holds bob's server key
        sock.sendall(_request(3, 12, 4, topics=None, allow_auto_topic_creation=False,
                              include_topic_authorized_operations=False))
        metadata = _read_response(sock, 3, 12)  # authenticated: served
        assert TOPIC in {t.name for t in metadata.topics}
        assert not _closed(sock, 0.5)


@pytest.mark.parametrize(("mechanism", "auth_bytes"), [
    ("PLAIN", b"\0alice\0wrong"),
    ("PLAIN", b"\0mallory\0guess"),
])
def test_wrong_plain_password_is_answered_then_the_connection_closes(
        secure: Secure, mechanism: str, auth_bytes: bytes) -> None:
    host, port = secure[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        _handshake(sock, mechanism)
        sock.sendall(_request(36, 2, 2, auth_bytes=auth_bytes))
        resp = _read_response(sock, 36, 2)
        assert resp.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
        assert _closed(sock)


def test_an_unoffered_mechanism_is_answered_then_the_connection_closes(
        secure: Secure) -> None:
    host, port = secure[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(_request(17, 1, 1, mechanism="GSSAPI"))
        resp = _read_response(sock, 17, 1)
        assert resp.error_code == ErrorCode.UNSUPPORTED_SASL_MECHANISM
        assert sorted(resp.mechanisms) == ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
        assert _closed(sock)
