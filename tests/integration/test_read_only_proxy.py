"""A proxy never writes the map (ADR 0015): with every publish of its store refused, it
still serves CreateTopics, CreatePartitions, IncrementalAlterConfigs, DeleteTopics and
automatic topic creation — each an intent applied by the federation's controller."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any, NoReturn

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from fedkafka_builtin.file_backend import FileBackend

from federation.plugin import get_plugins, parse_store
from tests.integration.inprocess import InProcessProxy

pytestmark = pytest.mark.integration

PORT = int(os.environ.get("FEDKAFKA_TEST_RO_PROXY_PORT", "30476"))
NODE_ID = 1951


def _refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise AssertionError("a proxy published a map")


async def test_proxy_with_a_read_only_store(local_federation: dict[str, Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = local_federation["store"]
    name, options = parse_store(store)
    reader = get_plugins().backend(name, **options)
    assert isinstance(reader, FileBackend)
    # Everything in this process that would publish a map fails the test (the
    # controller is another process and keeps writing).
    monkeypatch.setattr(FileBackend, "publish", _refuse)
    topic, auto = f"ro-{uuid.uuid4().hex[:8]}", f"ro-auto-{uuid.uuid4().hex[:8]}"
    try:
        with InProcessProxy(store, PORT, pool="ro", node_id=NODE_ID):
            bootstrap = f"127.0.0.1:{PORT}"
            client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="ro-admin",
                                         request_timeout_ms=60_000)
            await client.start()
            try:
                await client.create_topics([NewTopic(topic, 2, 1)], timeout_ms=60_000)
                assert reader.load().topics[topic].partition_count == 2  # type: ignore[union-attr]
                await client.create_partitions({topic: NewPartitions(total_count=4)},
                                               timeout_ms=60_000)
                assert reader.load().topics[topic].partition_count == 4  # type: ignore[union-attr]
                await client.alter_configs([ConfigResource(
                    ConfigResourceType.TOPIC, topic, {"retention.ms": "3600000"})])
                stored = reader.load().topics[topic].config  # type: ignore[union-attr]
                assert stored.get("retention.ms") == "3600000"

                producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="ro-p")
                await producer.start()
                try:  # a producer to a new topic: auto-created through an intent
                    sent = await asyncio.wait_for(producer.send_and_wait(auto, b"x"), 120)
                    assert sent.offset == 0
                finally:
                    await producer.stop()
                assert auto in reader.load().topics  # type: ignore[union-attr]

                await client.delete_topics([topic, auto], timeout_ms=60_000)
                left = reader.load().topics  # type: ignore[union-attr]
                assert topic not in left and auto not in left
            finally:
                await client.close()
    finally:
        reader.close()
