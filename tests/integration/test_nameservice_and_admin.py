"""The name service routes clients by client.id; admin requests act on logical topics."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewPartitions, NewTopic
from kafka.errors import InvalidPartitionsError, KafkaError, TopicAlreadyExistsError

from federation.core.model import FederationMap, RoutingRule
from federation.store.mapstore import update
from federation.tooling.testing.clients import KafkaPythonClient

from .fedtopics import backend_of
from .kafka_admin import end_offsets

pytestmark = pytest.mark.integration


def brokers_seen(bootstrap: str, client_id: str) -> set[int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id=client_id)
    try:
        consumer.topics()  # forces a metadata round trip
        return {b.node_id for b in consumer._client.cluster.brokers()}
    finally:
        consumer.close()


def test_client_id_routing_gives_different_pools(local_federation: dict[str, Any]) -> None:
    proxies = local_federation["proxies"]
    assert len(proxies) >= 2
    backend = backend_of(local_federation)
    try:
        def change(fmap: FederationMap | None) -> FederationMap:
            assert fmap is not None
            import dataclasses

            default = fmap.pools["default"]
            return dataclasses.replace(
                fmap,
                pools={**fmap.pools, "writers": default[:1], "readers": default[1:2]},
                routing=(RoutingRule(pattern="orders-writer-.*", pool="writers"),
                         RoutingRule(pattern="analytics-.*", pool="readers")))
        update(backend, change)
    finally:
        backend.close()
    import time

    time.sleep(0.5)  # the name service and proxies follow the store
    ns = local_federation["bootstrap"]
    writer = brokers_seen(ns, "orders-writer-1")
    reader = brokers_seen(ns, "analytics-7")
    other = brokers_seen(ns, "someone-else")
    assert writer == {proxies[0]["node_id"]}
    assert reader == {proxies[1]["node_id"]}
    assert other == {p["node_id"] for p in proxies}
    # A metadata refresh from a proxy keeps the client in its pool.
    direct = f"{proxies[1]['host']}:{proxies[1]['port']}"
    assert brokers_seen(direct, "orders-writer-2") == {proxies[0]["node_id"]}
    http = local_federation["nameservice_http"]
    answer = json.load(urllib.request.urlopen(f"{http}/v1/proxies?client_id=analytics-1"))
    assert answer["pool"] == "readers"
    assert [p["node_id"] for p in answer["proxies"]] == [proxies[1]["node_id"]]
    health = json.load(urllib.request.urlopen(f"{http}/health"))
    assert health["ok"] is True and health["map_version"] >= 1


def test_admin_client_creates_logical_topics(local_federation: dict[str, Any]) -> None:
    bootstrap = local_federation["bootstrap"]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fk-admin")
    try:
        admin.create_topics([NewTopic("admin-made", 6, 1,
                                      topic_configs={"fedkafka.strategy": "round_robin"})])
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics([NewTopic("admin-made", 6, 1)])
        with pytest.raises(KafkaError) as bad:
            admin.create_topics([NewTopic("bad-strategy", 2, 1,
                                          topic_configs={"fedkafka.strategy": "nope"})])
        assert "nope" in str(bad.value)
        with pytest.raises(InvalidPartitionsError):
            admin.create_partitions({"admin-made": NewPartitions(4)})
    finally:
        admin.close()
    # Usable at once, laid out round robin: logical i -> cluster c(i % 2 + 1), partition i // 2.
    records = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(600)]
    KafkaPythonClient().produce(bootstrap, "admin-made", records)
    got = KafkaPythonClient().consume(bootstrap, "admin-made", 600, timeout=60)
    assert len(got) == 600
    per_logical: dict[int, int] = {}
    for r in got:
        per_logical[r.partition] = per_logical.get(r.partition, 0) + 1
    clusters = {c["name"]: c["bootstrap"] for c in local_federation["clusters"]}
    c1 = end_offsets(clusters["c1"], "admin-made.fk")
    c2 = end_offsets(clusters["c2"], "admin-made.fk")
    assert set(c1) == {0, 1, 2} and set(c2) == {0, 1, 2}
    for i in range(6):
        physical = (c1 if i % 2 == 0 else c2)[i // 2]
        assert physical == per_logical.get(i, 0), i
    # The shadow topic (logical name, logical partition count) is on the coordination cluster.
    assert len(end_offsets(clusters["c1"], "admin-made")) == 6
    assert "bad-strategy" not in KafkaConsumer(bootstrap_servers=bootstrap).topics()
