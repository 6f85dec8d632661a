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


def test_bench_json_smoke() -> None:
    # `python -m federation.bench` is the `fedkafka bench` command on its own, so the test
    # does not depend on how the CLI assembles its commands.
    proc = subprocess.run(
        [sys.executable, "-m", "federation.bench", "--records", str(RECORDS),
         "--record-size", "512", "--latency-records", str(LATENCY_RECORDS),
         "--latency-rate", "2000", "--warmup", "200", "--base-port", str(BASE_PORT),
         "--json"],
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
    assert report["topics"]["proxy"]["clusters"] == 2

    for path in ("direct", "proxy"):
        res = report["results"][path]
        assert res["produce"]["records"] == RECORDS
        assert res["produce"]["failed"] == 0
        assert res["latency"]["records"] == LATENCY_RECORDS
        assert res["latency"]["failed"] == 0
        produced = sum(res[ph]["records"] + res[ph]["primed"] for ph in ("produce", "latency"))
        assert res["consume"]["expected"] == produced
        assert res["consume"]["records"] == produced, f"{path}: consumed != produced"
        for key in report["summary"][path]:
            assert isinstance(report["summary"][path][key], (int, float)), (path, key)
    assert set(report["ratio"]) == set(report["summary"]["direct"])
    assert all(v is None or v > 0 for v in report["ratio"].values())

    # Everything it started is gone: nothing listens on the federation's ports any more.
    import socket

    for port in (BASE_PORT, BASE_PORT + 100, BASE_PORT + 200):
        with socket.socket() as s:
            s.settimeout(0.5)
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
