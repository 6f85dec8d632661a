"""One message through the federation and back, with an ordinary Kafka client (aiokafka)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from federation.errors import FedKafkaError


async def ensure_topic(bootstrap: str, topic: str, partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="fedkafka-demo")
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def produce_and_consume(bootstrap: str, topic: str, text: str) -> tuple[int, int, str]:
    """Produce ``text`` to ``topic``, read it back by offset; returns (partition, offset, text)."""
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # first-send retries are expected
    await ensure_topic(bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                client_id="fedkafka-demo")
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, text.encode(), key=b"demo")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id="fedkafka-demo",
                                enable_auto_commit=False)
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
