"""federation.clusters.admin against the session's real physical clusters (file metadata
backend)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from fedkafka_builtin.file_backend import FileBackend

from federation.clusters import admin
from federation.core.model import ClusterState, PhysicalCluster

pytestmark = pytest.mark.integration


async def _physical_topics(bootstrap: str) -> dict[str, int]:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="fk-test-admin")
    await client.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await client.describe_topics()}
    finally:
        await client.close()


async def _settled(bootstrap: str, check: Callable[[dict[str, int]], bool],
                   timeout: float = 15.0) -> dict[str, int]:
    """The cluster's topics once ``check`` holds (brokers learn of changes asynchronously)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        topics = await _physical_topics(bootstrap)
        if check(topics) or asyncio.get_running_loop().time() > deadline:
            return topics
        await asyncio.sleep(0.2)


def _name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileBackend]:
    backend = FileBackend(tmp_path / "map.json")
    yield backend
    backend.close()


@pytest.fixture
async def federated(store: FileBackend, clusters: list[dict[str, Any]]) -> FileBackend:
    """A map over the first two real clusters; c1 coordinates groups."""
    await admin.init_map(store, [PhysicalCluster(c["name"], c["bootstrap"]) for c in clusters[:2]],
                         coordination_cluster=clusters[0]["name"])
    return store


async def test_create_topic_contiguous_over_two_clusters(
        federated: FileBackend, clusters: list[dict[str, Any]]) -> None:
    name = _name()
    topic = await admin.create_topic(federated, name, 6)
    assert topic.partition_count == 6
    assert [p.active.cluster for p in topic.partitions] == ["c1"] * 3 + ["c2"] * 3
    # create_topic waits until the brokers know the topics before it publishes
    on_c1 = await _physical_topics(clusters[0]["bootstrap"])
    on_c2 = await _physical_topics(clusters[1]["bootstrap"])
    assert on_c1[f"{name}.fk"] == 3 and on_c2[f"{name}.fk"] == 3
    assert on_c1[name] == 6  # the shadow topic: logical name and count, coordination cluster
    assert name not in on_c2
    stored = federated.load()
    assert stored is not None and stored.topics[name] == topic
    assert [t.name for t in await admin.list_topics(federated)] == [name]
    assert await admin.describe_topic(federated, name) == topic

    with pytest.raises(admin.TopicExistsError, match=name):
        await admin.create_topic(federated, name, 2)
    assert federated.load() == stored  # nothing published by the failed create

    grown = await admin.add_partitions(federated, name, 8)
    assert grown.partitions[:6] == topic.partitions
    on_c1 = await _physical_topics(clusters[0]["bootstrap"])  # visible before publishing
    on_c2 = await _physical_topics(clusters[1]["bootstrap"])
    assert on_c1[f"{name}.fk"] == 4 and on_c2[f"{name}.fk"] == 4 and on_c1[name] == 8
    with pytest.raises(admin.InvalidPartitionsError, match="must be larger"):
        await admin.add_partitions(federated, name, 8)

    deleted = await admin.delete_topic(federated, name)
    assert deleted.leftovers == () and deleted.topic == grown
    on_c1 = await _settled(clusters[0]["bootstrap"], lambda t: name not in t)
    on_c2 = await _settled(clusters[1]["bootstrap"], lambda t: f"{name}.fk" not in t)
    assert {name, f"{name}.fk"}.isdisjoint(on_c1) and f"{name}.fk" not in on_c2
    with pytest.raises(admin.UnknownTopicError):
        await admin.describe_topic(federated, name)


async def test_failed_create_rolls_back(store: FileBackend, clusters: list[dict[str, Any]],
                                        unused_port: int) -> None:
    # c2's bootstrap points at a dead loopback port: the create must fail and leave
    # nothing on c1 (neither the data topic nor the shadow topic).
    dead = PhysicalCluster("dead", f"127.0.0.1:{unused_port}")
    await admin.init_map(store, [PhysicalCluster("c1", clusters[0]["bootstrap"]), dead],
                         coordination_cluster="c1", probe_first=False)
    before = store.load()
    name = _name()
    with pytest.raises(admin.ClusterUnreachableError, match="'dead'"):
        await admin.create_topic(store, name, 4)
    on_c1 = await _settled(clusters[0]["bootstrap"],
                           lambda t: name not in t and f"{name}.fk" not in t)
    assert name not in on_c1 and f"{name}.fk" not in on_c1
    assert store.load() == before


async def test_create_refuses_leftover_physical_topic(
        federated: FileBackend, clusters: list[dict[str, Any]]) -> None:
    name = _name()
    async with admin.aiokafka_admin(PhysicalCluster("c2", clusters[1]["bootstrap"])) as c2:
        await c2.create({f"{name}.fk": 1})
    with pytest.raises(admin.TopicExistsError, match=rf"{name}\.fk already exist.*'c2'"):
        await admin.create_topic(federated, name, 4)
    on_c1 = await _settled(clusters[0]["bootstrap"],
                           lambda t: name not in t and f"{name}.fk" not in t)
    assert name not in on_c1 and f"{name}.fk" not in on_c1  # rolled back
    assert name not in (federated.load() or pytest.fail("no map")).topics


async def test_bad_requests_are_clear(federated: FileBackend) -> None:
    with pytest.raises(admin.InvalidRequestError, match=r"unknown mapping strategy 'nope'.*"
                       "contiguous"):
        await admin.create_topic(federated, _name(), 2, strategy="nope")
    with pytest.raises(admin.InvalidPartitionsError, match=">= 1"):
        await admin.create_topic(federated, _name(), 0)
    with pytest.raises(admin.InvalidTopicError, match="illegal topic name"):
        await admin.create_topic(federated, "bad/name", 2)


async def test_cluster_lifecycle(federated: FileBackend, clusters: list[dict[str, Any]],
                                 unused_port: int) -> None:
    with pytest.raises(admin.ClusterUnreachableError, match="no bootstrap server answers"):
        await admin.add_cluster(federated, "c9", f"127.0.0.1:{unused_port}")
    if len(clusters) > 2:
        added = await admin.add_cluster(federated, "c3", clusters[2]["bootstrap"], weight=2)
        assert added.weight == 2
    name = _name()
    await admin.create_topic(federated, name, 2)
    with pytest.raises(admin.InvalidRequestError, match="still holds segments"):
        await admin.remove_cluster(federated, "c2")
    ro = await admin.set_cluster_state(federated, "c2", "read_only")
    assert ro.state is ClusterState.READ_ONLY
    with pytest.raises(admin.InvalidRequestError, match="valid: active"):
        await admin.set_cluster_state(federated, "c2", "sleepy")
    await admin.delete_topic(federated, name)
    with pytest.raises(admin.InvalidRequestError, match="coordinates consumer groups"):
        await admin.remove_cluster(federated, "c1")
    await admin.remove_cluster(federated, "c2")
    stored = federated.load()
    assert stored is not None and set(stored.clusters) == {"c1"}


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
