"""The lag exporter and Prometheus of a local federation (``fedkafka local up [--monitoring]``).

Ports: the exporter on ``base + 70``, Prometheus on ``base + 80`` (Debian's ``prometheus``
package, 2.42 on bookworm), scraping every component that serves metrics: proxies
(``base + 50 + i``), the name service's HTTP (``base + 11``), controllers
(``base + 60 + i``), the exporter, and itself; fedkafka's rules
(:mod:`federation.exporter.monitoring`) loaded.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federation.clusters import probe
from federation.core.errors import ConfigError, FedKafkaError
from federation.tooling import procs

if TYPE_CHECKING:
    from federation.tooling.local import LocalFederation, Progress

__all__ = ["LOCAL_EXPORTER_DEFAULTS", "LOCAL_PROMETHEUS_INTERVAL", "check_ports",
           "start_exporter", "start_prometheus", "targets"]

HOST = "127.0.0.1"
#: The local lag exporter collects every 2 s (a fleet's default: 15 s).
LOCAL_EXPORTER_DEFAULTS: dict[str, Any] = {"interval": 2.0}
#: Scrape and rule evaluation interval of ``local up --monitoring``'s Prometheus.
LOCAL_PROMETHEUS_INTERVAL = "2s"


def start_exporter(fed: LocalFederation, state: dict[str, Any], base_port: int,
                   progress: Progress, options: dict[str, Any] | None = None
                   ) -> procs.ProcessRecord:
    from federation.exporter.service import exporter_config

    port = base_port + 70
    cfg_path = fed.workdir / "proxies" / "exporter.json"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg = {**exporter_config(state["store"], f"{HOST}:{port}", **LOCAL_EXPORTER_DEFAULTS),
           **(options or {})}
    cfg_path.write_text(json.dumps(cfg, indent=2))
    progress(f"starting the lag exporter (metrics on {HOST}:{port})")
    rec, _ = procs.spawn(
        name="exporter", kind="exporter",
        cmd=[sys.executable, "-m", "federation.cli.main", "exporter", "--config", str(cfg_path)],
        log=fed.workdir / "logs" / "exporter.log", ports=[port], marker=str(cfg_path))
    state["processes"].append(rec.to_dict())
    state["exporter"] = {"metrics": f"http://{HOST}:{port}/metrics"}
    fed._save(state)
    return rec


def check_ports(base_port: int) -> None:
    """Refuse ``--monitoring`` early: no Prometheus installed, or its port taken."""
    if shutil.which("prometheus") is None:
        raise ConfigError("--monitoring needs Prometheus: install Debian's `prometheus` "
                          "package (scripts/setup.sh does)")
    if probe.port_in_use(HOST, base_port + 80):
        raise FedKafkaError(f"port {base_port + 80} (for Prometheus) is already in use on "
                            f"{HOST}; pass --base-port with another free range")


def targets(fed: LocalFederation, state: dict[str, Any]) -> dict[str, list[str]]:
    """Scrape job → ["host:port", ...] of every component of ``state`` serving metrics."""
    from federation.exporter.monitoring import JOBS

    out: dict[str, list[str]] = {job: [] for job in JOBS.values()}
    for rec in fed.records(state):
        if rec.kind in ("proxy", "nameservice") and len(rec.ports) > 1:
            out[JOBS[rec.kind]].append(f"{HOST}:{rec.ports[1]}")
        elif rec.kind in ("controller", "exporter") and rec.ports:
            out[JOBS[rec.kind]].append(f"{HOST}:{rec.ports[0]}")
    return out


def start_prometheus(fed: LocalFederation, state: dict[str, Any], base_port: int,
                     progress: Progress, timeout: float) -> procs.ProcessRecord:
    """Write the scrape config and rules, start Prometheus, wait until it is ready."""
    from federation.exporter.monitoring import rules_yaml, scrape_config_yaml
    from federation.tooling.procs import tail

    port = base_port + 80
    mdir = fed.workdir / "monitoring"
    (mdir / "data").mkdir(parents=True, exist_ok=True)
    rules = mdir / "fedkafka-rules.yml"
    rules.write_text(rules_yaml())
    jobs = {**targets(fed, state), "prometheus": [f"{HOST}:{port}"]}
    cfg_path = mdir / "prometheus.yml"
    cfg_path.write_text(scrape_config_yaml(jobs, [str(rules)], LOCAL_PROMETHEUS_INTERVAL))
    binary = shutil.which("prometheus") or "prometheus"
    progress(f"starting Prometheus on {HOST}:{port}")
    rec, _ = procs.spawn(
        name="prometheus", kind="prometheus",
        cmd=[binary, f"--config.file={cfg_path}", f"--storage.tsdb.path={mdir / 'data'}",
             f"--web.listen-address={HOST}:{port}", "--storage.tsdb.retention.time=2d",
             "--log.level=warn"],
        log=fed.workdir / "logs" / "prometheus.log", ports=[port], marker=str(cfg_path))
    state["processes"].append(rec.to_dict())
    state["prometheus"] = f"http://{HOST}:{port}"
    fed._save(state)
    deadline = time.monotonic() + timeout
    while True:
        if not procs.is_ours(rec):
            raise FedKafkaError(f"Prometheus exited during start-up; see {rec.log}:\n"
                                f"{tail(Path(rec.log), 8)}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/-/ready", timeout=1.0) as answer:
                if answer.status == 200:
                    progress(f"Prometheus is up at http://{HOST}:{port}")
                    return rec
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise FedKafkaError(f"Prometheus did not get ready within {timeout:.0f}s; "
                                f"see {rec.log}")
        time.sleep(0.2)
