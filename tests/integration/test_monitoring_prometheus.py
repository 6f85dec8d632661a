"""``fedkafka local up --monitoring``: a real Prometheus (Debian's package) scrapes every
component, loads fedkafka's rules, and every expression of the rules and of the Grafana
dashboard returns data through Prometheus's HTTP API."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation.clusters import admin
from federation.exporter import monitoring
from federation.tooling.kafka_dist import KafkaDist
from federation.tooling.local import temporary_federation

from .fedtopics import backend_of
from .test_group_lag import produce, read_and_commit

pytestmark = [
    pytest.mark.integration, pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None,
                       reason="Prometheus not installed (Debian package prometheus)"),
]

# Below the ephemeral port range (32768+) by default, clear of the other tests' ranges.
BASE_PORT = int(os.environ.get("FEDKAFKA_TEST_MONITORING_PORT", "24592"))
DASHBOARD = Path(__file__).resolve().parents[2] / "monitoring" / "grafana" / \
    "fedkafka-overview.json"
TOPIC = "monitored"
PRODUCED = {0: 40, 1: 30, 2: 20, 3: 10}
COMMITTED = {0: 40, 1: 10, 2: 0, 3: 5}


@pytest.fixture(scope="module")
def fed(kafka_dist: KafkaDist) -> Iterator[dict[str, Any]]:
    with temporary_federation("fk-monitoring-", clusters=2, base_port=BASE_PORT,
                              heap="256m", proxies=2, kafka_version=kafka_dist.version,
                              monitoring=True) as state:
        yield state


def api(state: dict[str, Any], path: str, **params: str) -> Any:
    url = f"{state['prometheus']}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.load(answer)
    assert body["status"] == "success", body
    return body["data"]


def fill_variables(expr: str) -> str:
    """Grafana's variables as Grafana fills them in (group: All)."""
    return expr.replace("$__rate_interval", "1m").replace("$group", ".*")


def test_every_rule_and_dashboard_expression_returns_data(fed: dict[str, Any]) -> None:
    backend = backend_of(fed)
    try:
        asyncio.run(admin.create_topic(backend, TOPIC, len(PRODUCED)))
    finally:
        backend.close()
    produce(fed["bootstrap"], TOPIC, PRODUCED, "m")
    read_and_commit(fed["bootstrap"], "monitored-group", TOPIC, COMMITTED)

    # Prometheus scrapes every component that serves metrics.
    expected = {"fedkafka-proxy": 2, "fedkafka-nameservice": 1, "fedkafka-controller": 1,
                "fedkafka-exporter": 1, "prometheus": 1}

    def jobs() -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in api(fed, "targets")["activeTargets"]:
            counts[t["labels"]["job"]] = counts.get(t["labels"]["job"], 0) + 1
        return counts
    # A Prometheus that just started lists its targets once it has read its config.
    _wait(lambda: jobs() == expected, 60, f"Prometheus's targets {expected}")

    def all_up() -> bool:
        return all(t["health"] == "up" for t in api(fed, "targets")["activeTargets"])
    _wait(all_up, 60, "every target up")

    exprs = monitoring.probe_expressions() + [
        fill_variables(e) for e in monitoring.dashboard_expressions(
            json.loads(DASHBOARD.read_text()))]
    exprs = list(dict.fromkeys(exprs))
    assert len(exprs) > 40
    missing = list(exprs)
    deadline = time.monotonic() + 120
    while missing and time.monotonic() < deadline:
        missing = [e for e in missing if not api(fed, "query", query=e)["result"]]
        if missing:
            time.sleep(1)
    assert not missing, f"no data for {len(missing)} expression(s): {missing}"

    # The rules are loaded and evaluate without errors.
    groups = api(fed, "rules")["groups"]
    names = {r.get("name") for g in groups for r in g["rules"]}
    assert names == ({r.record for r in monitoring.RECORDS}
                     | {a.alert for a in monitoring.ALERTS})
    assert all(r["health"] == "ok" for g in groups for r in g["rules"]), [
        (r["name"], r.get("lastError")) for g in groups for r in g["rules"]
        if r["health"] != "ok"]
    # Every alert expression evaluates (none fires on this healthy federation except the
    # ones about lag, which is real here).
    for a in monitoring.ALERTS:
        api(fed, "query", query=a.expr)

    # Real numbers through Prometheus: the recorded lag is produced minus committed.
    want = sum(PRODUCED.values()) - sum(COMMITTED.values())

    def recorded_lag() -> bool:
        got = api(fed, "query", query='fedkafka:consumer_group_lag_records:sum'
                  '{group="monitored-group"}')["result"]
        return bool(got) and float(got[0]["value"][1]) == want
    _wait(recorded_lag, 60, f"the recorded lag to be {want}")
    by_cluster = {r["metric"]["cluster"]: float(r["value"][1]) for r in api(
        fed, "query", query='fedkafka_consumer_group_unread_records{group="monitored-group"}'
    )["result"]}
    # contiguous layout: partitions 0-1 on c1, 2-3 on c2
    assert by_cluster == {"c1": (40 - 40) + (30 - 10), "c2": (20 - 0) + (10 - 5)}


def test_status_shows_proxies_segments_and_biggest_lags(fed: dict[str, Any]) -> None:
    """`fedkafka status` on the same federation (after the test above)."""
    proc = subprocess.run([sys.executable, "-m", "federation.cli.main", "status", "--json",
                           "--store", fed["store"]], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["segments"] == {"c1": {"active": 2, "sealed": 0},
                                  "c2": {"active": 2, "sealed": 0}}
    assert [(r["group"], r["partition"], r["lag"], r["unread"]) for r in report["top_lags"]] == [
        ("monitored-group", 1, 20, {"c1": 20}), ("monitored-group", 2, 20, {"c2": 20}),
        ("monitored-group", 3, 5, {"c2": 5})]
    # Proxies by pool and role (the name service registers as a proxy of its pool too).
    proxies = report["members"]["proxy"]
    endpoints = [f"{p['host']}:{p['port']}" for p in fed["proxies"]]
    assert set(proxies) == {*endpoints, fed["bootstrap"]}
    assert {(d["pool"], tuple(d["roles"])) for d in proxies.values()} == {
        ("default", ("consumer", "producer"))}
    assert list(report["members"]["exporter"]) == ["exporter-1"]
    # Every proxy (the name service included) reports the map version it serves: at rest,
    # nobody is behind.
    deadline = time.monotonic() + 60
    while report["members_behind"] and time.monotonic() < deadline:
        time.sleep(1)
        again = subprocess.run([sys.executable, "-m", "federation.cli.main", "status", "--json",
                                "--store", fed["store"]], capture_output=True, text=True,
                               timeout=120, check=False)
        report = json.loads(again.stdout)
    assert report["members_behind"] == {}
    assert set(report["map_versions_served"]) >= {f"proxy/{e}" for e in endpoints}
    assert set(report["map_versions_served"].values()) == {report["map_version"]}
    text = subprocess.run([sys.executable, "-m", "federation.cli.main", "status", "--store",
                           fed["store"]], capture_output=True, text=True, timeout=120,
                          check=False)
    assert text.returncode == 0, text.stderr
    assert "biggest consumer lags" in text.stdout and "monitored-group" in text.stdout


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)
