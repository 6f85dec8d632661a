"""BrokerConnection's buffered receive: frames of every size, cut anywhere, reach their
waiters whole and in order; large ones arrive in a buffer of their own."""

from __future__ import annotations

import asyncio
import random
import struct
import time

import pytest

from federation.clusters import upstream
from federation.clusters.upstream import BrokerConnection, _Pending


def _frame(cid: int, size: int) -> bytes:
    body = struct.pack(">i", cid) + bytes([cid % 251, 7, 1]) * ((size - 4) // 3) + bytes(
        (size - 4) % 3)
    return struct.pack(">i", len(body)) + body


def _feed(conn: BrokerConnection, data: bytes, rng: random.Random) -> None:
    pos = 0
    while pos < len(data):
        buf = conn.get_buffer(-1)
        assert len(buf) > 0
        n = min(len(buf), rng.choice([1, 3, 7, 100, 4096, 70_000, 300_000]), len(data) - pos)
        buf[:n] = data[pos:pos + n]
        conn.buffer_updated(n)
        pos += n


@pytest.mark.parametrize("seed", range(5))
async def test_frames_cut_anywhere_arrive_whole(seed: int) -> None:
    rng = random.Random(seed)
    conn = BrokerConnection("127.0.0.1", 1, "t", "test")
    loop = asyncio.get_running_loop()
    sizes = [rng.choice([8, 50, 5000, upstream.BIG_FRAME, upstream.BIG_FRAME + 1, 200_000,
                         upstream.SCRATCH_SIZE + 10, 1 << 20]) for _ in range(40)]
    futures = []
    for cid, _ in enumerate(sizes, start=1):
        fut = loop.create_future()
        conn._pending[cid] = _Pending(1, 12, fut, time.monotonic(), raw=True)
        futures.append(fut)
    stream = b"".join(_frame(cid, size) for cid, size in enumerate(sizes, start=1))
    _feed(conn, stream, rng)
    for cid, (size, fut) in enumerate(zip(sizes, futures, strict=True), start=1):
        assert fut.done()
        frame = fut.result()
        assert bytes(frame) == _frame(cid, size)[4:]
        if size > upstream.SCRATCH_SIZE:  # received in place (a pooled buffer), not copied
            assert isinstance(frame, bytearray) or isinstance(frame.obj, bytearray)
    assert conn._filled == 0 and conn._big is None


async def test_a_bad_length_closes_the_connection() -> None:
    conn = BrokerConnection("127.0.0.1", 1, "t", "test")
    fut = asyncio.get_running_loop().create_future()
    conn._pending[1] = _Pending(1, 12, fut, time.monotonic(), raw=True)
    buf = conn.get_buffer(-1)
    buf[:4] = struct.pack(">i", -5)
    conn.buffer_updated(4)
    assert not conn.alive
    assert isinstance(fut.exception(), upstream.UpstreamError)



def test_buffer_pool_reuses_a_buffer_once_nothing_refers_to_it() -> None:
    pool = upstream.BufferPool(max_bytes=8 << 20, max_buffers=4)
    a = pool.take(100_000)
    assert len(a) == pool.GRAIN
    first = id(a)
    view = memoryview(a)[:10]  # a frame or records view still in use
    del a
    b = pool.take(100_000)
    assert id(b) != first  # still referenced by ``view``
    del view
    c = pool.take(200_000)
    assert id(c) == first  # free again: used again
    assert pool.take(2 << 20) is not b
    assert pool._bytes == 4 << 20


def test_buffer_pool_is_bounded() -> None:
    pool = upstream.BufferPool(max_bytes=4 << 20, max_buffers=8)
    held = [pool.take(1 << 20) for _ in range(4)]
    extra = pool.take(1 << 20)  # full, every buffer in use: not pooled
    assert all(extra is not h for h in held) and pool._bytes == 4 << 20
    del held[0]
    big = pool.take(2 << 20)  # dropping the free 1 MiB buffer is not room enough
    assert len(big) == 2 << 20 and pool._bytes == 4 << 20
    del held[0], big
    big = pool.take(2 << 20)  # two free ones dropped: room
    assert pool._bytes == 4 << 20 and any(b is big for b in pool._bufs)
