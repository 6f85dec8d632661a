"""Unmodified clients produce to and consume from logical topics through the proxies.

For each client: 20,000 keyed and unkeyed records (idempotence on where the client
supports it) to a logical topic of 8 partitions laid out contiguously over 2 physical
clusters; consumed back; counts, per-partition order and key→partition placement are
asserted, and the physical clusters are checked to hold the data where the map says.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import pytest

from federation.tooling.kafka_dist import KafkaDist
from federation.tooling.testing.clients import Rec, all_clients, java_murmur2_partition

from .fedtopics import create_logical_topic
from .kafka_admin import end_offsets

pytestmark = pytest.mark.integration

N = 20_000
PARTITIONS = 8
CLIENTS = ["aiokafka", "kafka-python", "confluent-kafka", "kcat", "java-console"]


def records(tag: str) -> list[tuple[bytes | None, bytes]]:
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(N):
        key = f"user-{i % 101}".encode() if i % 4 else None
        out.append((key, f"{tag}-{i:06d}".encode()))
    return out


@pytest.mark.parametrize("client_name", CLIENTS)
def test_client_through_proxy(client_name: str, local_federation: dict[str, Any],
                              kafka_dist: KafkaDist) -> None:
    client = next(c for c in all_clients(kafka_dist) if c.name == client_name)
    topic_name = f"compat-{client_name}"
    topic = create_logical_topic(local_federation, topic_name, PARTITIONS, "contiguous")
    # The seed's figure: 8 logical partitions = cluster A P0-P3 + cluster B P0-P3.
    assert [(p.active.cluster, p.active.partition) for p in topic.partitions] == [
        ("c1", 0), ("c1", 1), ("c1", 2), ("c1", 3), ("c2", 0), ("c2", 1), ("c2", 2), ("c2", 3)]
    bootstrap = local_federation["bootstrap"]
    sent = records(client_name)
    client.produce(bootstrap, topic_name, sent, idempotent=client.supports_idempotence)
    got: list[Rec] = client.consume(bootstrap, topic_name, N, timeout=180)

    assert len(got) == N, f"{client_name}: consumed {len(got)} of {N}"
    assert Counter(r.value for r in got) == Counter(v for _, v in sent)  # no loss, no dups
    key_of = {v: k for k, v in sent}
    by_part: dict[int, list[Rec]] = defaultdict(list)
    for r in got:
        assert r.key == key_of[r.value]
        if r.key is not None:
            assert r.partition == java_murmur2_partition(r.key, PARTITIONS), (r.key, r.partition)
        by_part[r.partition].append(r)
    assert set(by_part) == set(range(PARTITIONS)), "every logical partition got data"
    for part, recs in by_part.items():
        offsets = [r.offset for r in recs]
        assert offsets == list(range(len(recs))), f"partition {part}: logical offsets 0..n-1"
        keyed = [r.value for r in recs if r.key is not None]
        assert keyed == sorted(keyed), f"partition {part}: send order kept"

    # The physical clusters hold exactly the records of their logical partitions.
    clusters = {c["name"]: c["bootstrap"] for c in local_federation["clusters"]}
    physical = {name: end_offsets(bs, f"{topic_name}.fk") for name, bs in clusters.items()}
    for lp in topic.partitions:
        seg = lp.active
        assert physical[seg.cluster][seg.partition] == len(by_part[lp.index]), lp.index
