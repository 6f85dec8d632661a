"""Fetch answers carry true watermarks for every partition, whatever arrives first.

A multi-cluster topic's partitions are fetched in one request: sub-fetches go to several
physical brokers and come back at different times. Every partition of every answer must
carry its broker's high watermark (translated), never a guess, and kcat's ``-e`` (stop at
the end of every partition) must read every record. Across a sealed segment, the high
watermark is the partition's, not the seal.
"""

from __future__ import annotations

import datetime
import socket
import struct
import subprocess
from collections import Counter
from typing import Any

import pytest
from kio.index import load_request_schema

from federation.core.model import Segment
from federation.protocol import decode_response, encode_request, records
from federation.tooling.testing.clients import ConfluentClient, KcatClient

from .fedtopics import create_logical_topic
from .kafka_admin import create_topic

pytestmark = pytest.mark.integration


class RawConnection:
    """One client connection to a proxy, speaking raw Fetch v12."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.correlation = 0

    def request(self, entity: Any) -> Any:
        self.correlation += 1
        body = b"".join(encode_request(entity, self.correlation, "fk-watermarks"))
        self.sock.sendall(body)
        (size,) = struct.unpack(">i", self._exact(4))
        cid, response = decode_response(int(entity.__api_key__), int(entity.__version__),
                                        self._exact(size))
        assert cid == self.correlation
        return response

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def fetch_v12(topic: str, offsets: dict[int, int], max_wait_ms: int = 300,
              partition_max_bytes: int = 16384) -> Any:
    schema: Any = load_request_schema(1, 12)
    import sys

    m = sys.modules[schema.__module__]
    parts = tuple(m.FetchPartition(partition=p, fetch_offset=o,
                                   partition_max_bytes=partition_max_bytes)
                  for p, o in sorted(offsets.items()))
    return schema(max_wait=datetime.timedelta(milliseconds=max_wait_ms), min_bytes=1,
                  max_bytes=1 << 20, session_id=0, session_epoch=-1,
                  topics=(m.FetchTopic(topic=topic, partitions=parts),),
                  forgotten_topics_data=(), rack_id="")


def next_offset(data: bytes | None, current: int) -> int:
    end = current
    for start, _ in records.iter_batches(data or b""):
        end = max(end, records.batch_info(data, start).last_offset + 1)  # type: ignore[arg-type]
    return end


def _fetch_all_and_check(proxy: str, topic: str, ends: dict[int, int],
                         starts: dict[int, int] | None = None) -> int:
    """Fetch every partition to its end; assert each answer's watermarks. Answers seen."""
    conn = RawConnection(proxy)
    offsets = dict(starts or dict.fromkeys(ends, 0))
    answers = 0
    try:
        for _ in range(2000):
            resp = conn.request(fetch_v12(topic, offsets))
            answers += 1
            assert int(resp.error_code) == 0
            seen = {int(p.partition_index): p for t in resp.responses for p in t.partitions}
            assert set(seen) == set(offsets), "a full fetch answer names every partition"
            for p, pr in seen.items():
                assert int(pr.error_code) == 0, (p, pr.error_code)
                assert int(pr.high_watermark) == ends[p], (
                    f"partition {p}: high watermark {pr.high_watermark}, broker's {ends[p]}")
                offsets[p] = next_offset(pr.records, offsets[p])
            if offsets == ends:
                break
        assert offsets == ends
        # At the end: sub-fetches long-poll upstream; answers still carry the true marks.
        for _ in range(3):
            resp = conn.request(fetch_v12(topic, offsets, max_wait_ms=200))
            answers += 1
            for t in resp.responses:
                for pr in t.partitions:
                    assert int(pr.high_watermark) == ends[int(pr.partition_index)]
                    assert not pr.records
    finally:
        conn.close()
    return answers


def test_every_fetch_answer_carries_the_brokers_watermarks(local_federation: dict[str, Any]
                                                           ) -> None:
    name = "watermarks"
    create_logical_topic(local_federation, name, 12)
    records_ = [(f"k{i % 97}".encode(), f"v{i}".encode()) for i in range(20_000)]
    ConfluentClient().produce(local_federation["bootstrap"], name, records_)
    got = KcatClient().consume(local_federation["bootstrap"], name, 20_000, timeout=120)
    ends = {p: n for p, n in Counter(r.partition for r in got).items()}
    assert sum(ends.values()) == 20_000 and len(ends) == 12
    proxy = local_federation["proxy_bootstrap"].split(",")[0]
    assert _fetch_all_and_check(proxy, name, ends) > 1


def test_kcat_exits_at_the_end_after_reading_every_record(local_federation: dict[str, Any]
                                                          ) -> None:
    """kcat -C -e stops when every partition reports its end: it must be the true end."""
    name = "kcat-end"
    create_logical_topic(local_federation, name, 12)
    ConfluentClient().produce(local_federation["bootstrap"], name,
                              [(f"k{i}".encode(), b"x" * 100) for i in range(20_000)])
    kcat = KcatClient()._kcat()
    proc = subprocess.run([kcat, "-C", "-b", local_federation["bootstrap"], "-t", name, "-e",
                           "-q", "-f", "%p %o\n", "-X", "client.id=fk-kcat-end"],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert len(lines) // 2 == 20_000


def test_a_sealed_segment_reports_the_partitions_high_watermark(
        local_federation: dict[str, Any]) -> None:
    clusters = {c["name"]: c["bootstrap"] for c in local_federation["clusters"]}
    name = "sealed-hwm"
    phys = f"{name}.fk"
    create_topic(clusters["c1"], phys, 1)
    create_topic(clusters["c2"], phys, 1)
    ConfluentClient().produce(clusters["c1"], phys, [(None, b"old")] * 300)
    ConfluentClient().produce(clusters["c2"], phys, [(None, b"skip")] * 57)
    layout = [[Segment("c1", phys, 0, logical_start=0, physical_start=0, sealed_end=300),
               Segment("c2", phys, 0, logical_start=300, physical_start=57)]]
    create_logical_topic(local_federation, name, 1, layout=layout)
    ConfluentClient().produce(local_federation["bootstrap"], name, [(None, b"new")] * 200)
    proxy = local_federation["proxy_bootstrap"].split(",")[0]
    # Every answer, in the sealed segment as in the active one, says 500.
    assert _fetch_all_and_check(proxy, name, {0: 500}) > 1
