"""Exactly once across a roll: a retried idempotent batch that the sealed segment already
holds is not written again into the new segment.

The retry is made by hand, as a producer whose acknowledgement was lost makes it: the
same batch (producer id, epoch, sequence) sent again after the partition rolled onto
another cluster. The proxy answers DUPLICATE_SEQUENCE_NUMBER (which Java clients and
librdkafka count as written), and the partition holds every record once.
"""

from __future__ import annotations

import asyncio
import datetime
import sys
import time
from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from kio.index import load_request_schema

from federation.clusters import admin
from federation.controller import elastic
from federation.core.model import Segment
from federation.tooling.testing.clients import KafkaPythonClient

from .fedtopics import backend_of, create_logical_topic
from .test_fetch_watermarks import RawConnection

pytestmark = pytest.mark.integration

DUPLICATE_SEQUENCE_NUMBER = 46
NOT_LEADER_OR_FOLLOWER = 6


def _batch(pid: int, epoch: int, seq: int, values: list[bytes]) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0,
                                        producer_id=pid, producer_epoch=epoch,
                                        base_sequence=seq, batch_size=1 << 20)
    now = int(time.time() * 1000)
    for i, value in enumerate(values):
        builder.append(i, timestamp=now, key=None, value=value, headers=[])
    return bytes(builder.build())


def _produce(conn: RawConnection, topic: str, data: bytes) -> tuple[int, int]:
    schema: Any = load_request_schema(0, 9)
    m = sys.modules[schema.__module__]
    req = schema(transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=30),
                 topic_data=(m.TopicProduceData(name=topic, partition_data=(
                     m.PartitionProduceData(index=0, records=data),)),))
    resp = conn.request(req)
    pr = resp.responses[0].partition_responses[0]
    return int(pr.error_code), int(pr.base_offset)


def test_a_retried_batch_the_sealed_segment_holds_is_not_written_twice(
        local_federation: dict[str, Any]) -> None:
    name = "roll-dedup"
    phys = f"{name}.fk"
    create_logical_topic(local_federation, name, 1,
                         layout=[[Segment("c1", phys, 0, logical_start=0, physical_start=0)]])
    proxy = local_federation["proxy_bootstrap"].split(",")[0]
    conn = RawConnection(proxy)
    try:
        init: Any = load_request_schema(22, 4)
        deadline = time.monotonic() + 60
        while True:  # a fresh cluster answers COORDINATOR_LOAD_IN_PROGRESS for a while
            answer = conn.request(init(transactional_id=None,
                                       transaction_timeout=datetime.timedelta(seconds=60)))
            if int(answer.error_code) != 14 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert int(answer.error_code) == 0
        pid, epoch = int(answer.producer_id), int(answer.producer_epoch)
        first = _batch(pid, epoch, 0, [f"a{i}".encode() for i in range(5)])
        second = _batch(pid, epoch, 5, [f"b{i}".encode() for i in range(5)])
        # The proxy learns of the new topic through the store: until then it is unknown
        # (a retriable error; the batch is not written), as a client would see it.
        deadline = time.monotonic() + 60
        while True:
            answer_first = _produce(conn, name, first)
            if answer_first[0] not in (3, 5, 6) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert answer_first == (0, 0)
        assert _produce(conn, name, second) == (0, 5)

        backend = backend_of(local_federation)
        try:
            moves = asyncio.run(_move(backend, name))
            assert moves == {(name, 0): "c2"}
        finally:
            backend.close()

        # The acknowledgement of `second` was "lost": the producer retries it. Until the
        # proxy serves the rolled map it answers NOT_LEADER (fenced), then the duplicate.
        deadline = time.monotonic() + 60
        while True:
            code, _ = _produce(conn, name, second)
            if code != NOT_LEADER_OR_FOLLOWER or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert code == DUPLICATE_SEQUENCE_NUMBER
        # The producer goes on: the next sequence lands in the new segment, on c2.
        third = _batch(pid, epoch, 10, [f"c{i}".encode() for i in range(5)])
        assert _produce(conn, name, third) == (0, 10)
    finally:
        conn.close()
    got = KafkaPythonClient().consume(local_federation["bootstrap"], name, 15, timeout=60)
    assert [r.value for r in got] == [f"{p}{i}".encode() for p in "abc" for i in range(5)]
    assert [r.offset for r in got] == list(range(15))


async def _move(backend: Any, name: str) -> dict[tuple[str, int], str]:
    import dataclasses

    from federation.core.model import Move

    fmap = await admin._load(backend)
    moves = (Move(name, 0, "c2", "test"),)

    def change(current: Any) -> Any:
        return dataclasses.replace(current, moves=(*current.moves, *moves))

    await admin._publish(backend, change)
    assert fmap is not None
    return await elastic.wait_moves(backend, moves, timeout=60)
