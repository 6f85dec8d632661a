"""``fedkafka bench`` end to end with tiny numbers: it starts its own federation, measures
both paths, prints a JSON report and stops everything. Structure and record counts only;
no timing is judged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BASE_PORT = int(os.environ.get("FEDKAFKA_TEST_BENCH_PORT", "26092"))
RECORDS = 2000
LATENCY_RECORDS = 200
# The proxy on a CPU of its own where there are 2 (the numbers mean more; the records
# asserted below are the same either way).
PIN = ["--pin-proxy"] if len(os.sched_getaffinity(0)) >= 2 else []


def test_bench_json_smoke() -> None:
    # `python -m federation.tooling.bench` is the `fedkafka bench` command on its own, so the test
    # does not depend on how the CLI assembles its commands.
    proc = subprocess.run(
        [sys.executable, "-m", "federation.tooling.bench", "--records", str(RECORDS),
         "--record-size", "512", "--latency-records", str(LATENCY_RECORDS),
         "--latency-rate", "2000", "--warmup", "200", "--base-port", str(BASE_PORT),
         "--clusters", "2", "--rounds", "2", "--json", *PIN],
        capture_output=True, text=True, timeout=480, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)

    assert report["machine"]["cores"] >= 1
    assert report["kafka_version"]
    assert report["client"].startswith("confluent-kafka")
    assert report["settings"]["records"] == RECORDS
    assert report["settings"]["record_size"] == 512
    assert report["settings"]["acks"] == "all"
    assert report["java"] is None
    if PIN:
        pin = report["settings"]["cpu_pinning"]
        assert pin["proxy"] and pin["brokers_and_clients"]
        assert not set(pin["proxy"]) & set(pin["brokers_and_clients"])
    assert report["settings"]["rounds"] == 2 and len(report["rounds"]) == 2
    # Equal footing: the direct path uses the clusters holding the logical topic, with
    # the same partition counts (one client per cluster).
    assert report["topics"]["proxy"]["clusters"] == 2
    direct = report["topics"]["direct"]["clusters"]
    assert sorted(direct) == ["c1", "c2"]
    assert sum(c["partitions"] for c in direct.values()) == report["settings"]["partitions"]
    assert report["topics"]["proxy"]["proxy_processes"] == 1

    for path, res in ((p, r[p]) for r in report["rounds"] for p in ("direct", "proxy")):
        assert res["produce"]["records"] == RECORDS
        assert res["produce"]["failed"] == 0
        assert res["latency"]["records"] == LATENCY_RECORDS
        assert res["latency"]["failed"] == 0
        produced = sum(res[ph]["records"] + res[ph]["primed"] for ph in ("produce", "latency"))
        assert res["consume"]["expected"] == produced
        assert res["consume"]["records"] == produced, f"{path}: consumed != produced"
        for phase in ("produce", "consume"):
            assert res[phase]["broker_cpu_s_per_mb"] >= 0
            if path == "proxy":
                assert res[phase]["proxy_cpu_s_per_mb"] >= 0
            else:
                assert "proxy_cpu_s" not in res[phase]
    for path in ("direct", "proxy"):
        for key, value in report["summary"][path].items():
            if path == "direct" and "proxy_cpu" in key:
                assert value is None  # no proxy on the direct path
                continue
            assert isinstance(value, (int, float)), (path, key)
    assert set(report["ratio"]) <= set(report["summary"]["direct"])
    assert all(v is None or v > 0 for v in report["ratio"].values())
    assert set(report["targets"]) >= {"produce_ratio", "consume_ratio", "paced_p99_overhead_ms",
                                      "produce_cpu_proxy_over_broker",
                                      "consume_cpu_proxy_over_broker"}

    # Everything it started is gone: nothing listens on the federation's ports any more.
    import socket

    for port in (BASE_PORT, BASE_PORT + 100, BASE_PORT + 200):
        with socket.socket() as s:
            s.settimeout(0.5)
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
