"""DescribeLogDirs through the federation: Kafka's own ``kafka-log-dirs.sh --describe``
(org.apache.kafka.tools.LogDirsCommand) and kafka-python's admin client see each logical
partition once, its size the sum of its segments' physical partitions as the physical
brokers report them (docs/adr/0027-describe-log-dirs.md).

A logical topic of three partitions on the session federation's two clusters: partition 0
is a chain [c1 sealed, c2 active] (records written straight to c1 before the topic
exists, then through the proxies to c2), partition 1 lives on c2, partition 2 on c1.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from kafka import KafkaAdminClient

from federation.core.model import FederationMap, Segment
from federation.tooling.kafka_dist import KafkaDist
from tests.kafka_requests import make

from .fedtopics import create_logical_topic, stored_map
from .kafka_admin import create_topic
from .test_conformance import metadata_v12, send_raw, wait_for

pytestmark = pytest.mark.integration

SEALED = 30  # records on c1's partition 0 before the seal
THROUGH_PROXY = {0: 25, 1: 40, 2: 15}  # then, per logical partition, through the proxies


def produce(bootstrap: str, topic: str, counts: dict[int, int], tag: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "client.id": "fk-logdirs-producer"})
    errors: list[str] = []
    for p, n in counts.items():
        for i in range(n):
            producer.produce(topic, value=f"{tag}-{p}-{i}-".encode() * 8, partition=p,
                             on_delivery=lambda err, msg: err and errors.append(str(err)))
    assert producer.flush(60) == 0
    assert not errors, errors


def physical_sizes(fmap: FederationMap, parts: set[tuple[str, str, int]]
                   ) -> dict[tuple[str, str, int], int]:
    """Each physical partition's size as its leader reports it (a raw DescribeLogDirs)."""
    out = {}
    for cid in sorted({c for c, _, _ in parts}):
        bootstrap = fmap.clusters[cid].bootstrap.split(",")[0]
        topics = sorted({t for c, t, _ in parts if c == cid})
        md = send_raw(bootstrap, metadata_v12(topics))
        brokers = {int(b.node_id): f"{b.host}:{b.port}" for b in md.brokers}
        by_leader: dict[int, list[tuple[str, int]]] = {}
        for t in md.topics:
            for p in t.partitions:
                if (cid, t.name, int(p.partition_index)) in parts:
                    by_leader.setdefault(int(p.leader_id), []).append(
                        (t.name, int(p.partition_index)))
        for leader, tps in by_leader.items():
            resp = send_raw(brokers[leader], make(35, 4, topics=tuple(
                make(35, 4, "DescribableLogDirTopic", topic=t, partitions=(p,))
                for t, p in tps)))
            assert int(resp.error_code) == 0
            for result in resp.results:
                for t in result.topics:
                    for p in t.partitions:
                        if not p.is_future_key:
                            out[(cid, t.name, int(p.partition_index))] = int(p.partition_size)
    assert set(out) == parts, (out, parts)
    return out


def log_dirs_command(dist: KafkaDist, folder: Path, bootstrap: str, topic: str
                     ) -> dict[str, Any]:
    """``kafka-log-dirs.sh --describe --topic-list`` (Kafka's own tool): its JSON."""
    config = folder / "log4j2.properties"
    config.write_text("status = error\nappender.err.type = Console\nappender.err.name = E\n"
                      "appender.err.target = SYSTEM_ERR\nappender.err.layout.type = "
                      "PatternLayout\nappender.err.layout.pattern = %p %m%n\n"
                      "rootLogger.level = WARN\nrootLogger.appenderRef.err.ref = E\n")
    main = ("org.apache.kafka.tools.LogDirsCommand" if dist.major >= 4
            else "kafka.admin.LogDirsCommand")
    command = [c for c in dist.java_command(main, "--bootstrap-server", bootstrap,
                                            "--describe", "--topic-list", topic)
               if not c.startswith("-Dlog4j")]
    command[1:1] = [f"-Dlog4j2.configurationFile={config}", "-XX:TieredStopAtLevel=1"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    return json.loads(line)  # type: ignore[no-any-return]


def test_log_dirs_command_sees_logical_sizes(local_federation: dict[str, Any],
                                            kafka_dist: KafkaDist, tmp_path: Path) -> None:
    state = local_federation
    name = f"logdirs-{uuid.uuid4().hex[:8]}"
    fmap = stored_map(state)
    c1, c2 = sorted(fmap.clusters)[:2]
    phys = fmap.physical_topic_name(name)
    # The sealed segment's records, on c1 before the logical topic exists.
    create_topic(fmap.clusters[c1].bootstrap, phys, 3)
    produce(fmap.clusters[c1].bootstrap, phys, {0: SEALED}, "sealed")
    layout = [
        [Segment(c1, phys, 0, 0, 0, sealed_end=SEALED), Segment(c2, phys, 0, SEALED, 0)],
        [Segment(c2, phys, 1, 0, 0)],
        [Segment(c1, phys, 2, 0, 0)],
    ]
    create_logical_topic(state, name, 3, layout=layout)
    proxies = state["proxy_bootstrap"].split(",")

    def served_everywhere() -> bool:
        for address in proxies:
            [t] = send_raw(address, metadata_v12([name])).topics
            if int(t.error_code) != 0 or len(t.partitions) != 3:
                return False
        return True
    wait_for(served_everywhere, f"every proxy serving {name}", timeout=60.0)
    produce(state["bootstrap"], name, THROUGH_PROXY, "proxy")

    segments = {(s.cluster, s.topic, s.partition) for segs in layout for s in segs}
    before = physical_sizes(fmap, segments)
    expected = {f"{name}-{i}": sum(before[(s.cluster, s.topic, s.partition)]
                                   for s in segs) for i, segs in enumerate(layout)}
    assert all(size > 0 for size in expected.values()), expected
    assert expected[f"{name}-0"] > before[(c2, phys, 0)] > 0  # the sealed segment counts

    # Kafka's own tool, through the name service: every proxy of the pool is asked.
    out = log_dirs_command(kafka_dist, tmp_path, state["bootstrap"], name)
    seen: dict[str, int] = {}
    brokers = set()
    for broker in out["brokers"]:
        brokers.add(broker["broker"])
        [log_dir] = broker["logDirs"]
        assert log_dir["logDir"].startswith("fedkafka:") and log_dir["error"] is None
        for p in log_dir["partitions"]:
            assert p["partition"] not in seen, f"{p['partition']} listed twice"
            assert p["offsetLag"] == 0 and p["isFuture"] is False
            seen[p["partition"]] = p["size"]
    assert brokers == {p["node_id"] for p in state["proxies"]}
    assert seen == expected
    assert not any(phys in key for key in seen)  # physical names never leak

    # kafka-python's admin client (every topic: this one among them, once).
    admin = KafkaAdminClient(bootstrap_servers=state["bootstrap"], client_id="fk-logdirs")
    try:
        answers = admin.describe_log_dirs()
    finally:
        admin.close()
    listed: dict[str, int] = {}
    for answer in answers:
        for log_dir in answer["log_dirs"]:
            for t in log_dir["topics"]:
                assert t["name"] != phys  # physical names never leak
                if t["name"] != name:
                    continue
                for p in t["partitions"]:
                    key = f"{name}-{p['partition_index']}"
                    assert key not in listed
                    listed[key] = p["partition_size"]
    assert listed == expected

    # Nothing moved meanwhile: the sizes compared were the physical ones.
    assert physical_sizes(fmap, segments) == before
