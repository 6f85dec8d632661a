"""The controller converges the physical clusters to the map continuously (not only when a
topic is created): a physical data topic or shadow topic deleted behind its back comes
back with the right partition count, and the records lost with it are reported."""

from __future__ import annotations

import asyncio
import re
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from federation.controller import intents
from federation.plugin import get_plugins, parse_store
from federation.store.mapstore import MetadataBackend

pytestmark = pytest.mark.integration


async def _physical(bootstrap: str) -> dict[str, int]:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="fk-test-converge")
    await client.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await client.describe_topics()
                if t.get("error_code", 0) == 0}
    finally:
        await client.close()


async def _delete(bootstrap: str, name: str) -> None:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="fk-test-converge")
    await client.start()
    try:
        await client.delete_topics([name], timeout_ms=30_000)
    finally:
        await client.close()


async def _until(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.5)


def _controller(backend: MetadataBackend) -> dict[str, Any]:
    leaders = [d for d in backend.members("controller").values() if d.get("leader")]
    assert len(leaders) == 1, backend.members("controller")
    return leaders[0]


def _rounds(backend: MetadataBackend) -> float:
    metrics = _controller(backend)["metrics"]
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(r"^fedkafka_controller_rounds_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_deleted_physical_and_shadow_topics_are_repaired(
        local_federation: dict[str, Any], clusters: list[dict[str, Any]]) -> None:
    name, store = f"conv-{uuid.uuid4().hex[:8]}", local_federation["store"]
    backend_name, options = parse_store(store)
    backend = get_plugins().backend(backend_name, **options)
    try:
        via = intents.Submitter(token=intents.store_token(store, intents.ADMIN))
        topic = await intents.create_topic(backend, name, 4, via=via)
        on = {c["name"]: c["bootstrap"] for c in clusters}
        physical = f"{name}.fk"
        holders = sorted({p.active.cluster for p in topic.partitions})
        assert len(holders) == 2  # contiguous over c1, c2: two partitions each
        victim, coordination = holders[-1], local_federation["clusters"][0]["name"]

        producer = AIOKafkaProducer(bootstrap_servers=local_federation["proxy_bootstrap"],
                                    client_id="fk-test-converge")
        await producer.start()
        try:
            for i in range(40):
                await producer.send(name, f"r{i}".encode(), partition=i % 4)
            await producer.flush()
        finally:
            await producer.stop()
        # Two full rounds later the controller has seen the partitions' end offsets.
        seen = await asyncio.to_thread(_rounds, backend)
        await _until("two controller rounds",
                     lambda: asyncio.to_thread(lambda: _rounds(backend) >= seen + 2))

        # Behind the controller's back: the data topic on one cluster, the shadow topic.
        await _delete(on[victim], physical)
        await _delete(on[coordination], name)

        async def repaired() -> bool:
            data, shadow = await asyncio.gather(_physical(on[victim]),
                                                _physical(on[coordination]))
            return data.get(physical) == 2 and shadow.get(name) == 4
        await _until("the data and shadow topics recreated with their counts", repaired)

        # The records of the deleted partitions are gone, and the controller says so.
        def reported() -> list[str]:
            report = _controller(backend).get("convergence") or {}
            return [x["partition"] for x in report.get("lost", [])
                    if x["partition"].startswith(f"{victim}/{physical}/")]
        lost = await _until("the loss reported in the controller's member record",
                            lambda: asyncio.to_thread(reported))
        assert len(lost) == 2
        report = _controller(backend)["convergence"]
        kinds = {(r["cluster"], r["topic"], r["kind"]) for r in report["repaired"]}
        assert {(victim, physical, "data_created"),
                (coordination, name, "shadow_created")} <= kinds

        # Their logical offsets are not handed out again: the controller rolls them onto
        # another cluster, sealed at the end it had seen (10 records each).
        lost_parts = {p.index for p in topic.partitions if p.active.cluster == victim}

        async def rolled() -> Any:
            fmap = await asyncio.to_thread(backend.load)
            parts = [fmap.topics[name].partitions[i] for i in sorted(lost_parts)]
            done = all(p.active.cluster != victim and p.fence is None for p in parts)
            return parts if done else None
        parts = await _until("the lost partitions rolled off the recreated topic", rolled)
        assert [p.active.logical_start for p in parts] == [10] * len(parts)
        producer = AIOKafkaProducer(bootstrap_servers=local_federation["proxy_bootstrap"],
                                    client_id="fk-test-converge")
        await producer.start()
        try:
            sent = await (await producer.send(name, b"after", partition=parts[0].index))
        finally:
            await producer.stop()
        assert sent.offset == 10
    finally:
        backend.close()
