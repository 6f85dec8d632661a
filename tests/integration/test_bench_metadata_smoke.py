"""``fedkafka bench-metadata`` end to end with tiny numbers: for both backends it starts
its own federation (1 cluster, 2 proxies), publishes a few map changes, composes a small
map, prints a JSON report and stops everything. Structure and counts only (every change
seen by every proxy); no timing is judged.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BASE_PORT = int(os.environ.get("FEDKAFKA_TEST_BENCH_METADATA_PORT", "28092"))
CHANGES = 5
CLUSTERS, TOPICS, PARTITIONS = 4, 20, 8


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def test_bench_metadata_json_smoke() -> None:
    # `python -m federation.tooling.bench_metadata` is the `fedkafka bench-metadata` command on
    # its own, so the test does not depend on how the CLI assembles its commands.
    proc = subprocess.run(
        [sys.executable, "-m", "federation.tooling.bench_metadata", "--changes", str(CHANGES),
         "--clusters", str(CLUSTERS), "--topics", str(TOPICS), "--partitions", str(PARTITIONS),
         "--base-port", str(BASE_PORT), "--json"],
        capture_output=True, text=True, timeout=540, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)

    assert report["machine"]["cores"] >= 1
    assert report["reference"]["refresh_latency_s"] == 1.0
    assert report["settings"]["backends"] == ["file", "zookeeper"]
    assert report["settings"]["changes"] == CHANGES
    assert report["settings"]["proxies"] == 2

    assert set(report["refresh"]) == {"file", "zookeeper"}
    for backend, r in report["refresh"].items():
        assert r["changes"] == CHANGES, backend
        assert r["proxies"] == ["proxy-1", "proxy-2"], backend
        assert r["store"].startswith(f"{backend}:"), backend
        assert r["publish"]["count"] == CHANGES, backend
        assert r["versions"][1] - r["versions"][0] >= CHANGES - 1, backend
        for method in ("metadata", "metrics"):
            m = r[method]
            # every change was served by every proxy, seen both ways
            assert m["missed"] == 0, (backend, method, m)
            assert m["observed"] == {"proxy-1": CHANGES, "proxy-2": CHANGES}, (backend, method)
            assert m["all_proxies"]["count"] == CHANGES, (backend, method)
            assert len(m["samples_ms"]) == CHANGES, (backend, method)
            for key in ("p50_ms", "p99_ms", "max_ms", "mean_ms"):
                assert _is_number(m["all_proxies"][key]), (backend, method, key)
            for proxy, stats in m["per_proxy"].items():
                assert stats["count"] == CHANGES, (backend, method, proxy)
            a = m["all_proxies"]
            assert a["p50_ms"] <= a["p99_ms"] <= a["max_ms"], (backend, method)

    sc = report["scale"]
    assert (sc["clusters"], sc["topics"], sc["partitions"]) == (CLUSTERS, TOPICS, PARTITIONS)
    assert sc["segments"] == TOPICS * PARTITIONS
    assert sc["clusters_used"] == CLUSTERS
    assert sc["size_bytes"] > 0
    for key in ("build_s", "validate_s", "compose_s", "dumps_s", "loads_s"):
        assert _is_number(sc[key]), key
    file_result = sc["backends"]["file"]
    zk = sc["backends"]["zookeeper"]
    assert zk["fits_default"] is True  # a small map fits one default znode
    assert "raised" not in zk
    for b in (file_result, zk["default"]):
        assert b["ok"] is True, b
        assert b["updates"] >= 1
        assert b["version"] == 1 + b["updates"]  # every update reached the watcher
        for key in ("publish_first_s", "update_s", "update_max_s", "update_to_watcher_s",
                    "update_to_watcher_max_s", "load_s"):
            assert _is_number(b[key]), key

    # Everything it started is gone: nothing listens on the federation's ports any more.
    for port in (BASE_PORT, BASE_PORT + 1, BASE_PORT + 20, BASE_PORT + 30, BASE_PORT + 50,
                 BASE_PORT + 100):
        with socket.socket() as s:
            s.settimeout(0.5)
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
