"""Leader epochs are presented as unknown (-1): clients' truncation checks stay quiet and
a consumer resumes from committed offsets (which carry physical batch epochs) exactly."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import KafkaConsumer

from federation.tooling.kafka_dist import KafkaDist
from federation.tooling.testing.clients import ConfluentClient, JavaConsoleClient

from .fedtopics import create_logical_topic

pytestmark = pytest.mark.integration


def test_metadata_reports_unknown_leader_epochs(local_federation: dict[str, Any]) -> None:
    create_logical_topic(local_federation, "epochs", 4)
    consumer = KafkaConsumer(bootstrap_servers=local_federation["bootstrap"])
    try:
        consumer.topics()
        cluster = consumer._client.cluster
        for p in sorted(cluster.partitions_for_topic("epochs") or []):
            tp_meta = cluster._partitions["epochs"][p]
            assert tp_meta.leader_epoch == -1
    finally:
        consumer.close()


def test_java_consumer_resumes_from_committed_offsets(local_federation: dict[str, Any],
                                                     kafka_dist: KafkaDist) -> None:
    name = "resume-java"
    create_logical_topic(local_federation, name, 4)
    bootstrap = local_federation["bootstrap"]
    values = [f"r-{i:04d}".encode() for i in range(400)]
    ConfluentClient().produce(bootstrap, name, [(f"k{i % 9}".encode(), v)
                                                for i, v in enumerate(values)])
    java = JavaConsoleClient(kafka_dist)
    first = java.consume(bootstrap, name, 150, timeout=60, group="resumers")
    assert len(first) == 150
    rest = java.consume(bootstrap, name, 250, timeout=60, group="resumers")
    assert len(rest) == 250, "no reset, no truncation detected: resumed where it committed"
    assert sorted(r.value for r in first + rest) == values
