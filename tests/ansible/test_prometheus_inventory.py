"""The example inventory's Prometheus scrape configuration (group_vars/prometheus.yml, for the
prometheus.prometheus collection): rendered by Ansible for a host in a ``prometheus`` group,
it lists every fedkafka component under the job names the rules use, ``promtool check
config`` accepts it, and the rule file it ships exists and passes ``promtool check rules``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from federation.exporter.monitoring import JOBS

pytestmark = pytest.mark.ansible

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventories" / "example"

PLAY = """- hosts: prometheus
  gather_facts: false
  tasks:
    - ansible.builtin.copy:
        dest: "{{ out }}/prometheus.yml"
        content: "{{ {'global': prometheus_global, 'scrape_configs': prometheus_scrape_configs}
                     | to_nice_yaml }}"
      delegate_to: localhost
    - ansible.builtin.copy:
        dest: "{{ out }}/rule_files.json"
        content: "{{ prometheus_alert_rules_files | to_json }}"
      delegate_to: localhost
"""


def _ansible_playbook() -> Path:
    venv = Path(os.environ.get("FEDKAFKA_ANSIBLE_VENV", "/opt/fedkafka-ansible-venv"))
    found = venv / "bin" / "ansible-playbook"
    if found.exists():
        return found
    on_path = shutil.which("ansible-playbook")
    if on_path is None:
        pytest.skip("ansible-playbook not found (run .ci/molecule.sh --prepare-only)")
    return Path(on_path)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_example_inventory_scrapes_every_component(tmp_path: Path) -> None:
    extra = tmp_path / "prometheus-hosts.yml"
    extra.write_text("all:\n  children:\n    prometheus:\n      hosts:\n"
                     "        prom1.example.net: {ansible_connection: local}\n")
    play = tmp_path / "render.yml"
    play.write_text(PLAY)
    proc = subprocess.run(
        [str(_ansible_playbook()), "-i", str(EXAMPLE), "-i", str(extra), str(play),
         "-e", json.dumps({"out": str(tmp_path)})],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0"})
    assert proc.returncode == 0, proc.stdout + proc.stderr

    config = tmp_path / "prometheus.yml"
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True,
                           text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    text = config.read_text()
    for job in JOBS.values():
        assert f"job_name: {job}" in text
    assert "pproxy1.example.net:9102" not in text  # one worker: one target
    for target in ("pproxy1.example.net:9101", "cproxy2.example.net:9101",
                   "cproxy2.example.net:9102",  # its second worker
                   "ns2.example.net:9102", "ctl1.example.net:9308", "ctl2.example.net:9309",
                   "prom1.example.net:9090"):
        assert target in text

    # Relative to the inventory directory (here the extra file's, as prom1 is defined there;
    # in a real inventory, inventories/<name>/).
    (rules,) = json.loads((tmp_path / "rule_files.json").read_text())
    assert rules == f"{tmp_path}/../../monitoring/prometheus/fedkafka-rules.yml"
    rules_path = (EXAMPLE / rules.removeprefix(f"{tmp_path}/")).resolve()
    assert rules_path == REPO / "monitoring" / "prometheus" / "fedkafka-rules.yml"
    check = subprocess.run(["promtool", "check", "rules", str(rules_path)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
