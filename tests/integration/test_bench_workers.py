"""``fedkafka bench-workers`` end to end with short windows: it starts its own federation,
caps each proxy worker with its own cgroup, loads the proxy with 1 then 2 workers, and
removes the cgroups at the end. Real outcomes only (records acknowledged, the workers in
their cgroups and held to their cap by CPU accounting, nothing left behind); the
throughput ratio is reported by the command, never asserted here (no wall-clock checks).

Needs writable CPU cgroups (root; cgroup v1 ``cpu`` or v2 with ``cpu``): skipped otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from federation.tooling.cgroups import CgroupError, find_cpu_hierarchy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_PORT = int(os.environ.get("FEDKAFKA_TEST_BENCH_WORKERS_PORT", "30092"))
CAP = 0.1


def _hierarchy_or_skip() -> None:
    try:
        find_cpu_hierarchy()
    except CgroupError as e:
        pytest.skip(f"CPU cgroups are not writable here: {e}")


def test_bench_workers_caps_each_worker_and_cleans_up() -> None:
    _hierarchy_or_skip()
    proc = subprocess.run(
        [sys.executable, "-m", "federation.tooling.bench_workers", "--workers", "1,2",
         "--worker-cpu", str(CAP), "--connections", "8", "--warmup", "2", "--seconds", "4",
         "--base-port", str(BASE_PORT), "--json"],
        capture_output=True, text=True, timeout=480, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)

    runs = {r["workers"]: r for r in report["runs"]}
    assert sorted(runs) == [1, 2]
    for workers, run in runs.items():
        assert run["records"] > 0, f"{workers} worker(s): nothing acknowledged in the window"
        assert run["failed"] == 0, run["errors"]
        assert len(run["per_worker"]) == workers
        pids = {w["pid"] for w in run["per_worker"]}
        assert len(pids) == workers
        for w in run["per_worker"]:
            assert w["in_cgroup"], f"worker {w['index']} (pid {w['pid']}) not in {w['cgroup']}"
            assert not w["restarted"]
            assert w["cap_cpus"] == pytest.approx(CAP)
            # CPU accounting (utime+stime over the window), not wall-clock: the cap holds.
            assert w["cpu_util"] is not None
            assert w["cpu_util"] <= 1.5 * CAP + 0.02, w
        # Every process the bench counted as a worker is one of the proxy's.
        assert run["checks"]["in_cgroups"]
    assert report["cgroup"]["removed"] is True
    assert report["cgroup"]["left"] == []
    assert not Path(report["cgroup"]["group"]).exists()
    assert report["summary"]["mb_per_s_median"].keys() == {"1", "2"}
