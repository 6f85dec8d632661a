"""SASL/OAUTHBEARER through a proxy that requires SASL: locally issued JWTs (RS256, verified
against a JWKS file) let the Java client, librdkafka and aiokafka produce and consume; a
token signed by another key is refused and the connection closed."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from kio.index import load_request_schema

from federation.protocol import decode_response, encode_request
from federation.protocol.errors import ErrorCode
from federation.tooling.kafka_dist import KafkaDist
from federation.tooling.testing.jwt import RsaKeyPair

from .fedtopics import create_logical_topic, route_to_proxy
from .inprocess import InProcessProxy

pytestmark = pytest.mark.integration

TOPIC = "oauth-topic"
ISSUER = "https://idp.fedkafka.test"
AUDIENCE = "fedkafka"


class Oauth:
    def __init__(self, bootstrap: str, proxy: InProcessProxy, key: RsaKeyPair,
                 federation: dict[str, Any]) -> None:
        self.bootstrap, self.proxy, self.key, self.federation = bootstrap, proxy, key, federation

    def token(self, subject: str, key: RsaKeyPair | None = None, **claims: Any) -> str:
        return (key or self.key).token(subject, iss=ISSUER, aud=AUDIENCE, **claims)

    def count(self, result: str) -> float:
        assert self.proxy.state is not None
        value = self.proxy.state.metrics.registry.get_sample_value(
            "fedkafka_proxy_authentications_total",
            {"mechanism": "OAUTHBEARER", "result": result})
        return value or 0.0


@pytest.fixture(scope="module")
def oauth(local_federation: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Oauth]:
    """A proxy with ``sasl_required: true`` whose environment names a JWKS file."""
    create_logical_topic(local_federation, TOPIC, 2)
    port = int(local_federation["bootstrap"].rsplit(":", 1)[1]) + 14
    route_to_proxy(local_federation, "oauth", 1907, port, "fk-oauth-.*")
    key = RsaKeyPair.generate("fedkafka-test-1")
    jwks = tmp_path_factory.mktemp("oauth") / "jwks.json"
    jwks.write_text(json.dumps(key.jwks()))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FEDKAFKA_OAUTHBEARER_JWKS", str(jwks))
        env.setenv("FEDKAFKA_OAUTHBEARER_ISSUER", ISSUER)
        env.setenv("FEDKAFKA_OAUTHBEARER_AUDIENCE", AUDIENCE)
        with InProcessProxy(local_federation["store"], port, pool="oauth", node_id=1907,
                            sasl_required=True) as proxy:
            yield Oauth(f"127.0.0.1:{port}", proxy, key, local_federation)


# -- librdkafka --------------------------------------------------------------------------------


def _rdkafka(oauth: Oauth, client: str, token: str) -> dict[str, Any]:
    def refresh(_config: str) -> tuple[str, float]:
        return token, time.time() + 3600

    return {"bootstrap.servers": oauth.bootstrap, "client.id": f"fk-oauth-{client}",
            "security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "OAUTHBEARER",
            "oauth_cb": refresh}


def test_librdkafka_produces_and_consumes_with_a_jwt(oauth: Oauth) -> None:
    before = oauth.count("ok")
    tag = uuid.uuid4().hex[:8]
    sent = [f"rd-{tag}-{i}".encode() for i in range(20)]
    errors: list[Any] = []
    producer = Producer({**_rdkafka(oauth, "rd-p", oauth.token("orders-service")),
                         "acks": "all", "message.timeout.ms": 30000, "error_cb": errors.append})
    for value in sent:
        producer.produce(TOPIC, value, on_delivery=lambda err, _m: err and errors.append(err))
    assert producer.flush(60) == 0 and not errors, errors
    consumer = Consumer({**_rdkafka(oauth, "rd-c", oauth.token("billing-service")),
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
    assert sorted(v for v in got if tag.encode() in v) == sorted(sent)
    assert oauth.count("ok") >= before + 2


@pytest.mark.parametrize("bad", ["foreign key", "expired", "wrong audience"])
def test_librdkafka_with_a_bad_jwt_fails_to_authenticate(oauth: Oauth, bad: str) -> None:
    if bad == "foreign key":
        token = oauth.token("mallory", key=RsaKeyPair.generate(oauth.key.kid))
    elif bad == "expired":
        token = oauth.token("alice", lifetime=-120)
    else:
        token = oauth.key.token("alice", iss=ISSUER, aud="someone-else")
    before = oauth.count("failed")
    errors: list[KafkaError] = []
    delivered: list[Any] = []
    producer = Producer({**_rdkafka(oauth, "rd-bad", token), "message.timeout.ms": 5000,
                         "error_cb": errors.append})
    producer.produce(TOPIC, b"never", on_delivery=lambda err, _m: delivered.append(err))
    deadline = time.monotonic() + 20
    while not any(e.code() == KafkaError._AUTHENTICATION for e in errors) \
            and time.monotonic() < deadline:
        producer.poll(0.1)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    producer.purge()
    producer.flush(5)
    assert len(delivered) == 1 and delivered[0] is not None  # never written
    assert oauth.count("failed") > before


# -- aiokafka ----------------------------------------------------------------------------------


def test_aiokafka_produces_and_consumes_with_a_jwt(oauth: Oauth) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.abc import AbstractTokenProvider

    class Tokens(AbstractTokenProvider):
        def __init__(self, token: str) -> None:
            self._token = token

        async def token(self) -> str:
            return self._token

    tag = uuid.uuid4().hex[:8]
    sent = [f"aio-{tag}-{i}".encode() for i in range(20)]

    async def run() -> list[bytes]:
        security = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "OAUTHBEARER"}
        producer = AIOKafkaProducer(bootstrap_servers=oauth.bootstrap, acks="all",
                                    client_id="fk-oauth-aio-p", **security,
                                    sasl_oauth_token_provider=Tokens(oauth.token("aio-p")))
        await producer.start()
        try:
            for value in sent:
                await producer.send_and_wait(TOPIC, value)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=oauth.bootstrap,
                                    group_id=f"aio-{tag}", client_id="fk-oauth-aio-c",
                                    auto_offset_reset="earliest", **security,
                                    sasl_oauth_token_provider=Tokens(oauth.token("aio-c")))
        await consumer.start()
        got: list[bytes] = []
        try:
            deadline = time.monotonic() + 60
            while not set(sent) <= set(got) and time.monotonic() < deadline:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(m.value for m in msgs)
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(run())
    assert sorted(v for v in got if tag.encode() in v) == sorted(sent)


# -- Kafka's Java client: the token from a file (KIP-768's file-based token endpoint) -------------


def _java_properties(token_file: Path, client: str) -> str:
    return (f"client.id=fk-oauth-{client}\nsecurity.protocol=SASL_PLAINTEXT\n"
            "sasl.mechanism=OAUTHBEARER\n"
            "sasl.login.callback.handler.class="
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler\n"
            f"sasl.oauthbearer.token.endpoint.url={token_file.as_uri()}\n"
            "sasl.jaas.config=org.apache.kafka.common.security.oauthbearer."
            "OAuthBearerLoginModule required ;\n")


def _java(dist: KafkaDist, main: str, token_file: Path, *args: str, **run: Any
          ) -> subprocess.CompletedProcess[bytes]:
    command = dist.java_command(main, *args, heap="256m")
    command[1:1] = [f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={token_file.as_uri()}"]
    return subprocess.run(command, capture_output=True, timeout=180, check=False, **run)


def test_java_client_produces_and_consumes_with_a_jwt(oauth: Oauth,
                                                      kafka_dist: KafkaDist) -> None:
    topic = "oauth-java"  # its own: the consumer stops after exactly these records
    create_logical_topic(oauth.federation, topic, 2)
    tag = uuid.uuid4().hex[:8]
    sent = [f"java-{tag}-{i}".encode() for i in range(10)]
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token.jwt"
        token_file.write_text(oauth.token("java-service"))
        producer = Path(tmp) / "producer.properties"
        producer.write_text(_java_properties(token_file, "java-p") + "acks=all\n")
        produced = _java(kafka_dist, kafka_dist.console_producer, token_file,
                         "--bootstrap-server", oauth.bootstrap, "--topic", topic,
                         "--producer.config", str(producer),
                         input=b"".join(v + b"\n" for v in sent))
        consumer = Path(tmp) / "consumer.properties"
        consumer.write_text(_java_properties(token_file, "java-c"))
        consumed = _java(kafka_dist, kafka_dist.console_consumer, token_file,
                         "--bootstrap-server", oauth.bootstrap, "--topic", topic,
                         "--from-beginning", "--group", f"java-{tag}", "--max-messages",
                         str(len(sent)), "--timeout-ms", "30000",
                         "--consumer.config", str(consumer))
    got = [line for line in consumed.stdout.splitlines() if line.startswith(b"java-")]
    output = (produced.stdout + produced.stderr + consumed.stderr).decode(errors="replace")
    assert sorted(got) == sorted(sent), output[-3000:]


# -- on the wire ---------------------------------------------------------------------------------


def _request(api_key: int, version: int, correlation: int, **fields: Any) -> bytes:
    schema: Any = load_request_schema(api_key, version)
    return b"".join(encode_request(schema(**fields), correlation, "fk-oauth-wire"))


def _read(sock: socket.socket, api_key: int, version: int) -> Any:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    size = struct.unpack(">i", exact(4))[0]
    return decode_response(api_key, version, exact(size))[1]


def test_a_bad_token_gets_kafkas_error_challenge_then_a_closed_connection(
        oauth: Oauth) -> None:
    host, port = oauth.bootstrap.rsplit(":", 1)
    impostor = RsaKeyPair.generate(oauth.key.kid)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(_request(17, 1, 1, mechanism="OAUTHBEARER"))
        assert _read(sock, 17, 1).error_code == 0
        message = f"n,,\x01auth=Bearer {oauth.token('mallory', key=impostor)}\x01\x01"
        sock.sendall(_request(36, 2, 2, auth_bytes=message.encode()))
        challenge = _read(sock, 36, 2)
        assert challenge.error_code == 0
        assert json.loads(bytes(challenge.auth_bytes)) == {"status": "invalid_token",
                                                           "scope": AUDIENCE}
        sock.sendall(_request(36, 2, 3, auth_bytes=b"\x01"))
        final = _read(sock, 36, 2)
        assert final.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
        assert "bad signature" in final.error_message
        sock.settimeout(10)
        assert sock.recv(1) == b""  # closed
