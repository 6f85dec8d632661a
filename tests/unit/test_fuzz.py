"""The fuzzer's pure parts: every generated request decodes (it is valid), mutations are
reproducible per seed, record batches carry a correct CRC."""

from __future__ import annotations

import random

import pytest

from federation.protocol import codec, records
from federation.proxy.server import CAPS
from federation.tooling.fuzz import MUTATIONS, FramePool, mutate, random_frame, record_batch


@pytest.fixture(scope="module")
def pool() -> FramePool:
    return FramePool(dict(CAPS), random.Random(5), ("t",), variants=3)


def test_every_served_version_gets_valid_requests(pool: FramePool) -> None:
    built = {(k, v) for k, v, _ in pool.frames}
    for key, (low, high) in CAPS.items():
        for version in range(low, high + 1):
            assert (key, version) in built, (key, version)
    for key, version, frame in pool.frames:
        req = codec.decode_request(frame[4:])
        assert (req.header.api_key, req.header.api_version) == (key, version)
        assert int.from_bytes(frame[:4], "big") == len(frame) - 4


@pytest.mark.parametrize("how", MUTATIONS)
def test_mutations_are_reproducible(pool: FramePool, how: str) -> None:
    frame, other = pool.frames[0][2], pool.frames[1][2]
    one = mutate(frame, random.Random(9), other, how)
    assert one == mutate(frame, random.Random(9), other, how)
    assert one[1] == how and one[2] == (how == "long_length")


def test_random_frames_and_record_batches() -> None:
    rng = random.Random(3)
    for _ in range(100):
        data, open_ended = random_frame(rng, [0, 1, 3])
        assert open_ended or int.from_bytes(data[:4], "big", signed=True) <= len(data) - 4
    batch = record_batch(rng, 3)
    assert records.crc_ok(batch) and records.count_records(batch) == 3
