"""One message through the federation and back, with an ordinary Kafka client (aiokafka)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from federation.core.errors import FedKafkaError


def client_security(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """aiokafka keyword arguments for a user's client settings of ``local up --secure``
    (``federation.json``'s ``security.users.NAME``: Kafka property names, the password
    itself); none: plaintext."""
    if not settings:
        return {}
    out: dict[str, Any] = {"security_protocol": settings["security.protocol"]}
    if "SSL" in out["security_protocol"]:
        out["ssl_context"] = ssl.create_default_context(cafile=settings.get("ssl.ca.location"))
    if out["security_protocol"].startswith("SASL_"):
        out.update(sasl_mechanism=settings["sasl.mechanism"],
                   sasl_plain_username=settings["sasl.username"],
                   sasl_plain_password=settings["sasl.password"])
    return out


async def ensure_topic(bootstrap: str, topic: str, partitions: int = 4,
                       security: Mapping[str, Any] | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="fedkafka-demo",
                                **client_security(security))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def produce_and_consume(bootstrap: str, topic: str, text: str,
                              security: Mapping[str, Any] | None = None
                              ) -> tuple[int, int, str]:
    """Produce ``text`` to ``topic``, read it back by offset; returns (partition, offset, text).

    :param security: a user's client settings (a secure local federation's ``admin``).
    """
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # first-send retries are expected
    await ensure_topic(bootstrap, topic, security=security)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                client_id="fedkafka-demo", **client_security(security))
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, text.encode(), key=b"demo")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id="fedkafka-demo",
                                enable_auto_commit=False, **client_security(security))
    await consumer.start()
    try:
        tp = TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        msg = await asyncio.wait_for(consumer.getone(), timeout=30)
    except TimeoutError as e:
        raise FedKafkaError(f"the message produced to {topic} did not come back within 30s") from e
    finally:
        await consumer.stop()
    return meta.partition, meta.offset, (msg.value or b"").decode()
