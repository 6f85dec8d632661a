"""Real clients produce to and consume from real physical clusters (no proxy yet)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from federation.tooling.kafka_dist import KafkaDist
from federation.tooling.testing.clients import Client, Rec, all_clients, java_murmur2_partition

from .kafka_admin import create_topic, end_offsets

pytestmark = pytest.mark.integration

N = 300
PARTITIONS = 3


def _records(tag: str) -> list[tuple[bytes | None, bytes]]:
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(N):
        key = f"key-{i % 17}".encode() if i % 3 else None
        out.append((key, f"{tag}-{i:05d}".encode()))
    return out


def _client_ids(dist: KafkaDist) -> list[str]:
    return [c.name for c in all_clients(dist)]


@pytest.mark.parametrize("client_name", ["aiokafka", "kafka-python", "confluent-kafka", "kcat",
                                         "java-console"])
def test_produce_consume_on_two_clusters(
    client_name: str, clusters: list[dict[str, Any]], kafka_dist: KafkaDist
) -> None:
    client: Client = next(c for c in all_clients(kafka_dist) if c.name == client_name)
    assert len(clusters) >= 2
    for cluster in clusters[:2]:
        bootstrap = cluster["bootstrap"]
        topic = f"phys-{client_name}-{cluster['name']}"
        create_topic(bootstrap, topic, PARTITIONS)
        records = _records(f"{client_name}-{cluster['name']}")
        client.produce(bootstrap, topic, records, idempotent=client.supports_idempotence)
        got: list[Rec] = client.consume(bootstrap, topic, N, timeout=90)

        assert len(got) == N, f"{client_name} on {cluster['name']}: {len(got)} of {N}"
        assert sorted(r.value for r in got) == sorted(v for _, v in records)
        # Keys land where Java's partitioner puts them.
        for r in got:
            if r.key is not None:
                assert r.partition == java_murmur2_partition(r.key, PARTITIONS), r
        # Per-partition order: offsets strictly increase, and values keep send order.
        by_part: dict[int, list[Rec]] = defaultdict(list)
        for r in got:
            by_part[r.partition].append(r)
        for recs in by_part.values():
            offsets = [r.offset for r in recs]
            assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
            values = [r.value for r in recs if r.key is not None]
            assert values == sorted(values)
        # The broker holds exactly what was acknowledged.
        assert sum(end_offsets(bootstrap, topic).values()) == N
