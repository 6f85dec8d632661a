"""``fedkafka fuzz`` against a live proxy process (SASL required): random and mutated
requests of every served API version, authenticated and not, over many connections, while
a librdkafka canary produces and consumes through the same proxy. Then one regression test
per bug fuzzing found (each a request that crashed a handler or left its client waiting).

``FEDKAFKA_TEST_FUZZ_FRAMES`` sets the count (default 20,000; the full run of a million
frames is in docs/security.md, "Fuzzing")."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kio.schema.fetch.v13 import request as fetch13
from kio.schema.list_offsets.v1 import request as list_offsets1
from kio.schema.metadata.v11 import request as metadata11

from federation.clusters import admin
from federation.protocol.errors import ErrorCode

from .elastic_tools import wait_until
from .fedtopics import backend_of, create_logical_topic, route_to_proxy
from .proxy_process import (
    ProxyProcess,
    authenticate,
    closed_within,
    federation_port,
    request,
    sasl_user,
)

pytestmark = pytest.mark.integration

FRAMES = int(os.environ.get("FEDKAFKA_TEST_FUZZ_FRAMES", "20000"))
USER, PASSWORD = "fuzz-user", "fuzz-secret"
TARGET, CANARY = "fuzz-ci-target", "fuzz-ci-canary"
NODE_ID = 1962
#: How much the proxy's resident memory may grow over a CI fuzz run (its caches, the
#: connections of the moment, a few topics a mutation may create).
MEMORY_BOUND = 96 << 20


@pytest.fixture(scope="module")
def fuzzed(local_federation: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ProxyProcess]:
    create_logical_topic(local_federation, TARGET, 3)
    create_logical_topic(local_federation, CANARY, 2)
    port = federation_port(local_federation, 33)
    route_to_proxy(local_federation, "fuzz", NODE_ID, port, "fuzz-canary.*")
    with sasl_user(local_federation, USER, PASSWORD):
        proc = ProxyProcess(local_federation["store"], port,
                            federation_port(local_federation, 34), NODE_ID, "fuzz",
                            Path(tmp_path_factory.mktemp("fuzz")), sasl_required=True)
        proc.start()
        try:
            yield proc
        finally:
            proc.stop()
            _delete_fuzz_topics(local_federation)


def _delete_fuzz_topics(federation: dict[str, Any]) -> None:
    """Topics a mutation created (one that cleared CreateTopics' validate_only)."""
    backend = backend_of(federation)
    try:
        fmap = backend.load()
        assert fmap is not None
        for name in fmap.topics:
            if name.startswith("fuzz-") and name not in (TARGET, CANARY):
                asyncio.run(admin.delete_topic(backend, name))
    finally:
        backend.close()


def test_fuzz_run(fuzzed: ProxyProcess, tmp_path: Path) -> None:
    sockets = fuzzed.sockets()
    env = {**os.environ, "FEDKAFKA_FUZZ_PASSWORD": PASSWORD}
    out = subprocess.run(
        [sys.executable, "-m", "federation.cli.main", "fuzz", fuzzed.bootstrap, "--frames",
         str(FRAMES), "--seed", "11", "--connections", "12", "--user", USER,
         "--topic", TARGET, "--canary-topic", CANARY, "--canary-client-id", "fuzz-canary-ci",
         "--proxy-pid", str(fuzzed.pid), "--metrics",
         f"http://127.0.0.1:{fuzzed.metrics_port}/metrics",
         "--save-dir", str(tmp_path), "--json"],
        capture_output=True, text=True, env=env, timeout=3600)
    assert out.stdout, out.stderr[-3000:]
    report = json.loads(out.stdout[out.stdout.index("{"):])
    assert report["frames_sent"] == FRAMES, report
    assert report["proxy_crashes"] == 0, report["notes"]
    assert report["hangs"] == 0, report["notes"]
    assert report["internal_errors"] == 0, report
    assert report["unresponsive_checks"] == 0, report["notes"]
    assert report["authentication_failures"] == 0, report["notes"]
    assert report["canary_failures"] == 0, report["notes"]
    assert report["canary_rounds"] >= 1
    assert report["canary_records"] == 20 * report["canary_rounds"]
    # Both sides of the proxy were exercised: closed connections and answered ones,
    # authenticated and not, every kind of frame.
    assert report["closed_by_proxy"] > 0 and report["probes_answered"] > 0
    assert 0 < report["authenticated_connections"] < report["connections"]
    assert {"random", "valid", "mutated"} <= set(report["kinds"])
    assert report["rss_high_water_mark"] - report["rss_start"] <= MEMORY_BOUND, report
    assert out.returncode == 0, out.stderr[-3000:]
    assert fuzzed.alive()
    # Every upstream connection closes with its client: a group request forwarded after
    # its client left opened one that stayed open for good (1,800 of them in a run).
    wait_until(lambda: fuzzed.sockets() <= sockets + 10, 120,
               f"the proxy's sockets to come back to {sockets} (+10)")


# -- regressions: what fuzzing found ----------------------------------------------------------


def _authenticated(proxy: ProxyProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=60)
    authenticate(sock, USER, PASSWORD)
    return sock


def _still_open(sock: socket.socket) -> None:
    resp = request(sock, 18, 3, correlation_id=99, client_software_name="fuzz",
                   client_software_version="1")
    assert resp.error_code == 0


def test_a_null_array_where_none_is_allowed_is_undecodable(fuzzed: ProxyProcess) -> None:
    """CreatePartitions v3 with topics null (compact length 0) crashed the handler
    (TypeError), as ListOffsets did: Kafka refuses the request as malformed."""
    internal = fuzzed.metric("fedkafka_proxy_connections_closed_total",
                             reason="internal_error")
    undecodable = fuzzed.metric("fedkafka_proxy_connections_closed_total",
                                reason="undecodable")
    body = (struct.pack(">hhih", 37, 3, 5, 4) + b"fuzz" + b"\x00"  # header v2
            + b"\x00" + struct.pack(">i", 1000) + b"\x01" + b"\x00")  # topics: null
    with _authenticated(fuzzed) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        assert closed_within(sock, 30)
    assert fuzzed.metric("fedkafka_proxy_connections_closed_total",
                         reason="undecodable") == undecodable + 1
    assert fuzzed.metric("fedkafka_proxy_connections_closed_total",
                         reason="internal_error") == internal


def test_list_offsets_whose_first_topic_names_no_partition(fuzzed: ProxyProcess) -> None:
    """The handler took the first topic's first partition as a template (IndexError)."""
    topic: Any = list_offsets1.ListOffsetsTopic
    part: Any = list_offsets1.ListOffsetsPartition
    with _authenticated(fuzzed) as sock:
        resp = request(sock, 2, 1, replica_id=-1, topics=(
            topic(name=TARGET, partitions=()),
            topic(name=TARGET, partitions=(part(partition_index=0, timestamp=-2),))))
        answered = [(t.name, int(p.partition_index), int(p.error_code))
                    for t in resp.topics for p in t.partitions]
        assert answered == [(TARGET, 0, 0)]
        _still_open(sock)


def test_offset_fetch_v8_with_no_group(fuzzed: ProxyProcess) -> None:
    """An empty groups batch fell through to a v0-7 field (AttributeError)."""
    with _authenticated(fuzzed) as sock:
        resp = request(sock, 9, 8, groups=(), require_stable=False)
        assert resp.groups == ()
        _still_open(sock)


def test_fetch_v13_naming_the_zero_topic_id(fuzzed: ProxyProcess) -> None:
    """The all-zero topic id (read as None) could not be encoded in the answer."""
    topic: Any = fetch13.FetchTopic
    part: Any = fetch13.FetchPartition
    with _authenticated(fuzzed) as sock:
        resp = request(sock, 1, 13, cluster_id=None, replica_id=-1,
                       max_wait=datetime.timedelta(milliseconds=10), min_bytes=0,
                       max_bytes=1 << 20, isolation_level=0, session_id=0, session_epoch=-1,
                       topics=(topic(topic_id=uuid.UUID(int=0), partitions=(part(
                           partition=0, current_leader_epoch=-1, fetch_offset=0,
                           last_fetched_epoch=-1, log_start_offset=-1,
                           partition_max_bytes=1024),)),),
                       forgotten_topics_data=(), rack_id="")
        assert resp.error_code == 0
        codes = [int(p.error_code) for t in resp.responses for p in t.partitions]
        assert codes == [ErrorCode.UNKNOWN_TOPIC_ID]
        _still_open(sock)


def test_metadata_v11_naming_an_unknown_topic_id(fuzzed: ProxyProcess) -> None:
    """Its answer (name null, not allowed before v12) failed to encode, which ended the
    connection's reply loop silently: the client waited forever."""
    topic: Any = metadata11.MetadataRequestTopic
    with _authenticated(fuzzed) as sock:
        resp = request(sock, 3, 11, topics=(topic(topic_id=uuid.uuid4(), name=None),),
                       allow_auto_topic_creation=False,
                       include_topic_authorized_operations=False)
        assert [(t.name, int(t.error_code)) for t in resp.topics] == [
            ("", ErrorCode.UNKNOWN_TOPIC_ID)]
        _still_open(sock)


def test_no_upstream_connection_outlives_its_client(fuzzed: ProxyProcess) -> None:
    """A ListOffsets naming partitions of one broker opened one upstream connection per
    partition at once; all but the last were orphaned, open for good."""
    topic: Any = list_offsets1.ListOffsetsTopic
    part: Any = list_offsets1.ListOffsetsPartition
    sockets = fuzzed.sockets()
    for _ in range(10):
        with _authenticated(fuzzed) as sock:
            resp = request(sock, 2, 1, replica_id=-1, topics=(topic(name=TARGET, partitions=tuple(
                part(partition_index=i, timestamp=-1) for i in range(3))),))
            assert [int(p.error_code) for p in resp.topics[0].partitions] == [0, 0, 0]
    wait_until(lambda: fuzzed.sockets() <= sockets + 2, 60,
               f"the proxy's sockets to come back to {sockets} (+2)")


@pytest.mark.parametrize("version", [3, 4])
def test_produce_v3_and_v4_are_answered(fuzzed: ProxyProcess, version: int) -> None:
    """Their upstream answers carry no log_start_offset (v5+): answering crashed."""
    import random

    from kio.index import load_request_schema

    from federation.tooling.fuzz import record_batch

    schema: Any = load_request_schema(0, version)
    mod = sys.modules[schema.__module__]
    topic: Any = mod.TopicProduceData
    part: Any = mod.PartitionProduceData
    with _authenticated(fuzzed) as sock:
        resp = request(sock, 0, version, transactional_id=None, acks=1,
                       timeout=datetime.timedelta(seconds=30), topic_data=(topic(
                           name=TARGET, partition_data=(part(
                               index=0, records=record_batch(random.Random(1), 2)),)),))
        (result,) = resp.responses[0].partition_responses
        assert int(result.error_code) == 0 and int(result.base_offset) >= 0, result
        _still_open(sock)
