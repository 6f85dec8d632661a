"""A third-party plugin package, installed through its entry point, used end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from federation.tooling.testing.clients import KafkaPythonClient

from .kafka_admin import end_offsets

pytestmark = pytest.mark.integration

PLUGIN = Path(__file__).resolve().parents[1] / "fixtures" / "example_plugin"


def test_third_party_strategy_via_entry_point(local_federation: dict[str, Any],
                                              tmp_path: Path) -> None:
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(PLUGIN)],
        capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stderr
    assert list(target.glob("fedkafka_example_plugin*.dist-info/entry_points.txt"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(target), str(Path(__file__).resolve().parents[2])])}

    def fedkafka(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "federation.cli.main", *args, "--store",
                               local_federation["store"]], capture_output=True, text=True,
                              timeout=120, env=env, check=False)

    # Without the plugin on the path the strategy is unknown, and the error lists the others.
    plain = subprocess.run([sys.executable, "-m", "federation.cli.main", "topic", "create", "rev",
                            "--partitions", "4", "--strategy", "reverse_contiguous",
                            "--store", local_federation["store"]],
                           capture_output=True, text=True, timeout=120, check=False)
    assert plain.returncode != 0
    assert "reverse_contiguous" in plain.stderr and "contiguous" in plain.stderr

    made = fedkafka("topic", "create", "rev", "--partitions", "4", "--strategy",
                    "reverse_contiguous")
    assert made.returncode == 0, made.stderr
    described = json.loads(fedkafka("topic", "describe", "rev", "--json").stdout)
    clusters = [p["segments"][-1]["cluster"] for p in described["partitions"]]
    assert clusters == ["c2", "c2", "c1", "c1"], "laid out by the plugin's strategy"

    # Usable at once through the proxies (which never load the plugin: the map says it all).
    bootstrap = local_federation["bootstrap"]
    records = [(None, f"p{i}".encode()) for i in range(100)]
    KafkaPythonClient().produce(bootstrap, "rev", records)
    got = KafkaPythonClient().consume(bootstrap, "rev", 100, timeout=60)
    assert sorted(r.value for r in got) == sorted(v for _, v in records)
    phys = {c["name"]: sum(end_offsets(c["bootstrap"], "rev.fk").values())
            for c in local_federation["clusters"]}
    per_logical: dict[int, int] = {}
    for r in got:
        per_logical[r.partition] = per_logical.get(r.partition, 0) + 1
    assert phys["c2"] == per_logical.get(0, 0) + per_logical.get(1, 0)
    assert phys["c1"] == per_logical.get(2, 0) + per_logical.get(3, 0)
