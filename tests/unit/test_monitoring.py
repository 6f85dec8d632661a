"""The shipped Prometheus rules and Grafana dashboard: generated, up to date, valid.

``promtool`` comes with Debian's ``prometheus`` package (scripts/setup.sh installs it);
the dashboard is built and checked with Grafana's typed models (grafana-foundation-sdk,
the ``monitoring`` extra, in ``dev``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from federation.exporter import monitoring

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "prometheus" / "fedkafka-rules.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "fedkafka-overview.json"

promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                              reason="promtool not installed (Debian package prometheus)")


def test_shipped_rules_are_the_generated_ones() -> None:
    assert RULES.read_text() == monitoring.rules_yaml(), (
        "monitoring/ is stale: run `python -m federation.exporter.monitoring monitoring`")


@promtool
def test_promtool_checks_the_rules() -> None:
    proc = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = len(monitoring.RECORDS) + len(monitoring.ALERTS)
    assert f"SUCCESS: {n} rules found" in proc.stdout


def test_every_alert_is_documented_and_probed() -> None:
    names = [a.alert for a in monitoring.ALERTS]
    assert len(names) == len(set(names))
    for a in monitoring.ALERTS:
        assert a.severity in ("critical", "warning", "info")
        assert a.probes and all(p in a.expr or p.split("{")[0] in a.expr for p in a.probes)
        assert re.fullmatch(r"\d+[smh]", a.for_)
    records = {r.record for r in monitoring.RECORDS}
    used = " ".join(a.expr for a in monitoring.ALERTS) + " ".join(
        monitoring.dashboard_expressions(json.loads(DASHBOARD.read_text())))
    assert {r for r in records if r not in used} == {
        "fedkafka:consumer_group_topic_lag_records:sum", "fedkafka:cluster_unread_records:sum"}


def _sdk() -> None:
    pytest.importorskip("grafana_foundation_sdk",
                        reason="grafana-foundation-sdk not installed (pip install -e .[dev])")


def test_shipped_dashboard_is_the_generated_one() -> None:
    _sdk()
    shipped = json.loads(DASHBOARD.read_text())
    assert shipped == monitoring.dashboard(), (
        "monitoring/ is stale: run `python -m federation.exporter.monitoring monitoring`")


def test_dashboard_decodes_into_grafanas_typed_models() -> None:
    _sdk()
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard as model
    from grafana_foundation_sdk.models import prometheus

    plugins.register_default_plugins()
    shipped = json.loads(DASHBOARD.read_text())
    board = model.Dashboard.from_json(shipped)
    assert board.uid == monitoring.DASHBOARD_UID and board.schema_version == 41  # Grafana 11.6
    targets = 0
    for panel in board.panels or []:
        if isinstance(panel, model.RowPanel):
            continue
        assert isinstance(panel, model.Panel), panel
        assert panel.type_val in {"timeseries", "stat", "table", "bargauge"}
        assert panel.targets, panel.title
        for target in panel.targets:
            assert isinstance(target, prometheus.Dataquery), (panel.title, type(target))
            targets += 1
    assert targets >= 20
    # What the models re-encode is what is shipped (modulo defaults they fill in).
    def prune(x: object) -> object:
        if isinstance(x, dict):
            return {k: prune(v) for k, v in x.items() if v != {}}
        if isinstance(x, list):
            return [prune(v) for v in x]
        return x
    assert prune(json.loads(json.dumps(board, cls=JSONEncoder))) == prune(shipped)
    ids = [p["id"] for p in shipped["panels"]]
    assert len(ids) == len(set(ids))


@promtool
def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (Grafana variables filled in)."""
    exprs = monitoring.dashboard_expressions(json.loads(DASHBOARD.read_text()))
    assert len(exprs) >= 20
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": fill_variables(e)}
        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(monitoring.to_yaml(rules))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def fill_variables(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced as Grafana would."""
    return expr.replace("$__rate_interval", "1m").replace("$group", ".*")


def test_scrape_config_lists_every_job() -> None:
    text = monitoring.scrape_config_yaml({"fedkafka-proxy": ["h:1", "h:2"],
                                          "fedkafka-exporter": []}, ["/r.yml"], "5s")
    assert '- job_name: "fedkafka-proxy"' in text
    assert '- "h:1"\n' in text and "fedkafka-exporter" not in text
    assert 'scrape_interval: "5s"' in text
