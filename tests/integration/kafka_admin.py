"""Direct admin operations on a physical cluster, for test set-up and checks."""

from __future__ import annotations

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic


def create_topic(bootstrap: str, name: str, partitions: int, replication: int = 1) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fk-test-admin")
    try:
        admin.create_topics([NewTopic(name, partitions, replication)], timeout_ms=30000)
    finally:
        admin.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="fk-test-offsets")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()
