"""Monitoring as code: Prometheus recording and alert rules, scrape configuration, and the
Grafana dashboard (built with Grafana's typed models, ``grafana-foundation-sdk``).

The files shipped in ``monitoring/`` are generated from here
(``python -m federation.exporter.monitoring monitoring``); a test checks they are up to date, runs
``promtool check rules`` on the rules, and a slow test evaluates every expression of the
rules and the dashboard against a real Prometheus scraping a local federation.

Scrape job names matter: the rules use ``fedkafka-proxy``, ``fedkafka-nameservice``,
``fedkafka-controller`` and ``fedkafka-exporter`` (:data:`JOBS`). Several lag exporters may
run (say, one beside each controller): expressions take the ``max`` over exporters before
summing, so their series are not counted twice.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ALERTS", "GRAFANA_VERSION", "JOBS", "RECORDS", "Alert", "Record", "dashboard",
           "dashboard_expressions", "probe_expressions", "rules_document", "rules_yaml",
           "scrape_config_yaml", "to_yaml", "write_all"]

#: The Grafana release the dashboard targets (``grafana-foundation-sdk`` 11.6.x models,
#: dashboard schemaVersion 41).
GRAFANA_VERSION = "11.6"

#: Scrape job of each component kind.
JOBS = {"proxy": "fedkafka-proxy", "nameservice": "fedkafka-nameservice",
        "controller": "fedkafka-controller", "exporter": "fedkafka-exporter"}

DASHBOARD_UID = "fedkafka-overview"


@dataclass(frozen=True, slots=True)
class Record:
    record: str
    expr: str


@dataclass(frozen=True, slots=True)
class Alert:
    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    #: Sub-expressions that must return data for the alert to be able to fire (its
    #: operands without the threshold): what the Prometheus test evaluates.
    probes: tuple[str, ...]


_LAG = "fedkafka_consumer_group_lag_records"
_PART = "group, topic, partition"


def _dedup(expr: str, by: str = _PART) -> str:
    """One series per label set whatever the number of exporters reporting it."""
    return f"max by ({by}) ({expr})"


RECORDS: tuple[Record, ...] = (
    Record("fedkafka:consumer_group_lag_records:sum", f"sum by (group) ({_dedup(_LAG)})"),
    Record("fedkafka:consumer_group_topic_lag_records:sum",
           f"sum by (group, topic) ({_dedup(_LAG)})"),
    Record("fedkafka:cluster_unread_records:sum",
           "sum by (cluster) "
           f"({_dedup('fedkafka_consumer_group_unread_records', 'group, cluster')})"),
    Record("fedkafka:consumer_group_consumed_records:rate5m",
           "sum by (group) (clamp_min("
           f"{_dedup('deriv(fedkafka_consumer_group_committed_offset[5m])')}, 0))"),
    Record("fedkafka:topic_produced_records:rate5m",
           "sum by (topic) (clamp_min("
           f"{_dedup('deriv(fedkafka_partition_end_offset[5m])', 'topic, partition')}, 0))"),
    Record("fedkafka:proxy_map_version_skew",
           "max(fedkafka_proxy_map_version) - min(fedkafka_proxy_map_version)"),
    Record("fedkafka:proxy_request_seconds:p99",
           "histogram_quantile(0.99, sum by (le, api) "
           "(rate(fedkafka_proxy_request_seconds_bucket[5m])))"),
    Record("fedkafka:proxy_upstream_seconds:p99",
           "histogram_quantile(0.99, sum by (le, cluster) "
           "(rate(fedkafka_proxy_upstream_seconds_bucket[5m])))"),
    # Errors per request; 0 (not "no data") for APIs without errors.
    Record("fedkafka:proxy_error_ratio:rate5m",
           "(sum by (api) (rate(fedkafka_proxy_errors_total[5m])) "
           "or 0 * sum by (api) (rate(fedkafka_proxy_requests_total[5m]))) "
           "/ sum by (api) (rate(fedkafka_proxy_requests_total[5m]))"),
)

_LEADER_CLUSTER_UP = ("fedkafka_controller_cluster_up * on (instance) group_left () "
                      "(fedkafka_controller_is_leader == 1)")
_EXPORTER_AGE = "time() - fedkafka_lag_exporter_last_success_timestamp_seconds"
_UNREAD = _dedup("fedkafka_consumer_group_unread_records", "group, cluster")
_DRAINING = 'max by (cluster) (fedkafka_map_cluster_state{state="draining"})'

ALERTS: tuple[Alert, ...] = (
    Alert("FedkafkaComponentDown", 'up{job=~"fedkafka-.*"} == 0', "2m", "critical",
          "{{ $labels.job }} {{ $labels.instance }} is down",
          "Prometheus cannot scrape {{ $labels.instance }} ({{ $labels.job }}).",
          ('up{job=~"fedkafka-.*"}',)),
    Alert("FedkafkaNoActiveController",
          "(sum(fedkafka_controller_is_leader) or vector(0)) != 1", "1m", "critical",
          "{{ $value }} active fedkafka controllers (want exactly 1)",
          "Without an active controller no failover, drain or repair happens.",
          ("sum(fedkafka_controller_is_leader)",)),
    Alert("FedkafkaClusterDown",
          'max by (cluster) (fedkafka_map_cluster_state{state="down"}) == 1', "1m",
          "critical", "Physical cluster {{ $labels.cluster }} is down",
          "The controller marked {{ $labels.cluster }} down; its active partitions fail over "
          "after failover_after seconds, reads of its sealed segments wait for it.",
          ('max by (cluster) (fedkafka_map_cluster_state{state="down"})',)),
    Alert("FedkafkaClusterUnreachable", f"({_LEADER_CLUSTER_UP}) == 0", "30s", "warning",
          "The active controller cannot reach cluster {{ $labels.cluster }}",
          "Health checks of {{ $labels.cluster }} fail; it is marked down after down_after "
          "failed rounds.", (_LEADER_CLUSTER_UP,)),
    Alert("FedkafkaMapVersionSkew", "fedkafka:proxy_map_version_skew > 0", "5m", "warning",
          "Proxies serve different map versions for 5 minutes",
          "A proxy or name service does not follow the metadata store; check "
          "fedkafka_proxy_store_healthy and its log.", ("fedkafka:proxy_map_version_skew",)),
    Alert("FedkafkaProxyStoreUnreachable", "fedkafka_proxy_store_healthy == 0", "2m",
          "warning", "{{ $labels.instance }} serves its last map without the store",
          "The proxy lost the metadata store; it keeps serving its last map but misses "
          "changes (rolls, new topics).", ("fedkafka_proxy_store_healthy",)),
    Alert("FedkafkaRollStuck", "max(fedkafka_map_fenced_partitions) > 0", "5m", "warning",
          "{{ $value }} partitions fenced for 5 minutes (writes paused)",
          "A roll did not complete: is a controller active, do all proxies report?",
          ("max(fedkafka_map_fenced_partitions)",)),
    Alert("FedkafkaMovesPending", "max(fedkafka_map_moves_pending) > 0", "15m", "warning",
          "{{ $value }} rebalance moves pending for 15 minutes",
          "The controller has not carried out requested moves.",
          ("max(fedkafka_map_moves_pending)",)),
    Alert("FedkafkaConsumerGroupLagGrowing",
          "fedkafka:consumer_group_lag_records:sum > 1000 "
          "and deriv(fedkafka:consumer_group_lag_records:sum[15m]) > 0", "15m", "warning",
          "Consumer group {{ $labels.group }} falls behind ({{ $value }} records)",
          "Its lag over the federation grew for 15 minutes.",
          ("fedkafka:consumer_group_lag_records:sum",
           "deriv(fedkafka:consumer_group_lag_records:sum[15m])")),
    Alert("FedkafkaConsumerGroupStalled",
          "fedkafka:consumer_group_lag_records:sum > 0 "
          "and fedkafka:consumer_group_consumed_records:rate5m == 0", "15m", "warning",
          "Consumer group {{ $labels.group }} commits nothing while it has lag",
          "No committed offset moved for 15 minutes although records wait.",
          ("fedkafka:consumer_group_lag_records:sum",
           "fedkafka:consumer_group_consumed_records:rate5m")),
    Alert("FedkafkaDrainBlockedByGroup",
          f"{_UNREAD} > 0 and on (cluster) ({_DRAINING} == 1)", "1h",
          "warning", "Group {{ $labels.group }} keeps draining cluster {{ $labels.cluster }}",
          "{{ $value }} records on the draining cluster are unread by the group; the cluster "
          "cannot be retired until it reads them (or `fedkafka cluster retire --force`).",
          (_UNREAD, _DRAINING)),
    Alert("FedkafkaLagExporterStale", f"{_EXPORTER_AGE} > 300", "5m", "warning",
          "The lag exporter has not completed a collection for 5 minutes",
          "Lag metrics are stale; see fedkafka_lag_exporter_errors_total and its log.",
          (_EXPORTER_AGE,)),
    Alert("FedkafkaLagExporterClusterUnreachable",
          "fedkafka_lag_exporter_cluster_reachable == 0", "5m", "warning",
          "The lag exporter cannot read offsets of cluster {{ $labels.cluster }}",
          "Lag of partitions whose active segment is there is not reported.",
          ("fedkafka_lag_exporter_cluster_reachable",)),
    Alert("FedkafkaLagExporterGroupsCapped",
          'max(fedkafka_lag_exporter_groups{status="capped"}) > 0',
          "1h", "info", "{{ $value }} consumer groups are left out of the lag metrics",
          "Raise max_groups or narrow group_allow/group_deny in the exporter config.",
          ('max(fedkafka_lag_exporter_groups{status="capped"})',)),
    Alert("FedkafkaProxyErrorRatioHigh", "fedkafka:proxy_error_ratio:rate5m > 0.05", "10m",
          "warning", "{{ $labels.api }}: {{ $value | humanizePercentage }} of requests fail",
          "Partition-level errors returned by the proxies.",
          ("fedkafka:proxy_error_ratio:rate5m",)),
    Alert("FedkafkaProxyUpstreamSlow", "fedkafka:proxy_upstream_seconds:p99 > 1", "10m",
          "warning", "p99 round trip to cluster {{ $labels.cluster }} is {{ $value }}s",
          "Proxies wait long for the physical brokers of this cluster.",
          ("fedkafka:proxy_upstream_seconds:p99",)),
)


def rules_document() -> dict[str, Any]:
    """The Prometheus rule file, as data."""
    return {"groups": [
        {"name": "fedkafka.recording",
         "rules": [{"record": r.record, "expr": r.expr} for r in RECORDS]},
        {"name": "fedkafka.alerts",
         "rules": [{"alert": a.alert, "expr": a.expr, "for": a.for_,
                    "labels": {"severity": a.severity},
                    "annotations": {"summary": a.summary, "description": a.description}}
                   for a in ALERTS]},
    ]}


def probe_expressions() -> list[str]:
    """Every expression of the rules that must return data on a working federation."""
    out = [r.expr for r in RECORDS] + [r.record for r in RECORDS]
    for a in ALERTS:
        out.extend(a.probes)
    return list(dict.fromkeys(out))


# -- YAML (a small emitter: strings are JSON-quoted, which YAML reads as they are) ---------------


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(str(value), ensure_ascii=False)


def to_yaml(data: Any, indent: int = 0) -> str:
    """YAML for nested dicts/lists of strings, numbers and booleans."""
    return "".join(_yaml_lines(data, indent))


def _yaml_lines(data: Any, indent: int) -> Iterator[str]:
    pad = " " * indent
    if isinstance(data, Mapping):
        for key, value in data.items():
            if isinstance(value, Mapping | list) and value:
                yield f"{pad}{key}:\n"
                yield from _yaml_lines(value, indent + 2)
            else:
                empty = "{}" if isinstance(value, Mapping) else "[]"
                text = empty if isinstance(value, Mapping | list) else _scalar(value)
                yield f"{pad}{key}: {text}\n"
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, Mapping) and item:
                lines = list(_yaml_lines(item, indent + 2))
                yield f"{pad}- {lines[0][indent + 2:]}"
                yield from lines[1:]
            else:
                yield f"{pad}- {_scalar(item)}\n"
    else:
        yield f"{pad}{_scalar(data)}\n"


def rules_yaml() -> str:
    return ("# Generated by `python -m federation.exporter.monitoring` from "
            "federation/exporter/monitoring.py;\n"
            "# do not edit by hand.\n" + to_yaml(rules_document()))


def scrape_config_yaml(targets: Mapping[str, Sequence[str]], rule_files: Sequence[str] = (),
                       interval: str = "15s") -> str:
    """A Prometheus config scraping ``targets`` (job → ["host:port", ...])."""
    doc: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": list(rule_files),
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(hosts)}]}
                           for job, hosts in targets.items() if hosts],
    }
    return to_yaml(doc)


# -- the Grafana dashboard ----------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    """The fedkafka overview dashboard (JSON model), built with grafana-foundation-sdk."""
    from grafana_foundation_sdk.builders import (
        bargauge,
        prometheus,
        stat,
        table,
        timeseries,
    )
    from grafana_foundation_sdk.builders import (
        dashboard as dash,
    )
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard as model

    ds = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
    ids = iter(range(1, 1000))

    def query(expr: str, legend: str = "__auto", ref: str = "A", instant: bool = False
              ) -> prometheus.Dataquery:
        q = prometheus.Dataquery().datasource(ds).ref_id(ref).expr(expr).legend_format(legend)
        if instant:
            q = q.instant().format(model_prometheus_format("table"))
        return q

    def series(title: str, unit: str, *queries: prometheus.Dataquery, span: int = 12,
               description: str = "") -> timeseries.Panel:
        p = (timeseries.Panel().id(next(ids)).title(title).description(description)
             .datasource(ds).unit(unit).span(span).height(8))
        for q in queries:
            p = p.with_target(q)
        return p

    def single(title: str, expr: str, unit: str = "none", description: str = "") -> stat.Panel:
        return (stat.Panel().id(next(ids)).title(title).description(description)
                .datasource(ds).unit(unit).span(4).height(4).with_target(query(expr)))

    group = '{group=~"$group"}'
    lag_group = f"{_LAG}{group}"
    board = (
        dash.Dashboard("fedkafka: federation overview").uid(DASHBOARD_UID)
        .description("Consumer lag over segment chains and physical clusters, federation "
                     f"health, proxies. Targets Grafana {GRAFANA_VERSION}.")
        .tags(["fedkafka", "kafka"]).refresh("30s").time("now-1h", "now").timezone("browser")
        .with_variable(dash.DatasourceVariable("datasource").label("Prometheus")
                       .type("prometheus"))
        .with_variable(dash.QueryVariable("group").label("Consumer group").datasource(ds)
                       .query(f"label_values({_LAG}, group)").multi(True).include_all(True)
                       .all_value(".*").refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
                       .sort(model.VariableSort.ALPHABETICAL_ASC))
        .with_row(dash.Row("Consumer lag").id(next(ids)))
        .with_panel(series("Lag per group (records)", "short",
                           query(f"sum by (group) ({_dedup(lag_group)})", "{{group}}"),
                           description="Logical end offset minus committed offset, summed "
                           "over the group's logical partitions."))
        .with_panel(series("Unread records per physical cluster", "short",
                           query("sum by (cluster) (" + _dedup(
                               f"fedkafka_consumer_group_unread_records{group}",
                               "group, cluster") + ")", "{{cluster}}"),
                           description="Records the selected groups have not read, by the "
                           "physical cluster storing them: what a drain of that cluster "
                           "waits for."))
        .with_panel(table.Panel().id(next(ids)).title("Lag per logical partition")
                    .datasource(ds).span(12).height(8)
                    .with_target(query(_dedup(lag_group), instant=True)))
        .with_panel(series("Consumed and produced (records/s)", "short",
                           query(f"fedkafka:consumer_group_consumed_records:rate5m{group}",
                                 "consumed by {{group}}"),
                           query("fedkafka:topic_produced_records:rate5m",
                                 "produced to {{topic}}", "B")))
        .with_row(dash.Row("Federation").id(next(ids)))
        .with_panel(single("Map version", "max(fedkafka_map_version)"))
        .with_panel(single("Proxy map version skew", "fedkafka:proxy_map_version_skew",
                           description="Newest minus oldest map version served by proxies "
                           "and name services."))
        .with_panel(single("Active controllers", "sum(fedkafka_controller_is_leader)"))
        .with_panel(single("Fenced partitions", "max(fedkafka_map_fenced_partitions)",
                           description="Partitions whose writes pause for a roll."))
        .with_panel(single("Store reachable (proxies)", "min(fedkafka_proxy_store_healthy)"))
        .with_panel(single("Seconds since the last lag collection", f"max({_EXPORTER_AGE})",
                           unit="s"))
        .with_panel(table.Panel().id(next(ids)).title("Cluster states").datasource(ds)
                    .span(8).height(8)
                    .with_target(query("max by (cluster, state) "
                                       "(fedkafka_map_cluster_state) == 1", instant=True)))
        .with_panel(bargauge.Panel().id(next(ids)).title("Segments per cluster")
                    .datasource(ds).span(8).height(8)
                    .with_target(query("max by (cluster, kind) (fedkafka_map_segments)",
                                       "{{cluster}} {{kind}}", instant=True)))
        .with_panel(series("Clusters reachable (active controller)", "none",
                           query(_LEADER_CLUSTER_UP, "{{cluster}}"), span=8))
        .with_row(dash.Row("Proxies").id(next(ids)))
        .with_panel(series("Requests per second by API", "reqps",
                           query("sum by (api) (rate(fedkafka_proxy_requests_total"
                                 "[$__rate_interval]))", "{{api}}")))
        .with_panel(series("p99 request latency by API", "s",
                           query("fedkafka:proxy_request_seconds:p99", "{{api}}")))
        .with_panel(series("p99 upstream round trip by cluster", "s",
                           query("fedkafka:proxy_upstream_seconds:p99", "{{cluster}}")))
        .with_panel(series("Error ratio by API", "percentunit",
                           query("fedkafka:proxy_error_ratio:rate5m", "{{api}}")))
        .with_panel(series("Client connections per proxy", "short",
                           query("fedkafka_proxy_connections", "{{instance}}")))
        .with_panel(series("Record bytes per topic", "Bps",
                           query("sum by (topic) (rate(fedkafka_proxy_bytes_in_total"
                                 "[$__rate_interval]))", "in {{topic}}"),
                           query("sum by (topic) (rate(fedkafka_proxy_bytes_out_total"
                                 "[$__rate_interval]))", "out {{topic}}", "B")))
    )
    data: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return data


def model_prometheus_format(name: str) -> Any:
    from grafana_foundation_sdk.models import prometheus as prom

    return prom.PromQueryFormat(name)


def dashboard_expressions(board: Mapping[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets and query variables."""
    out: list[str] = []

    def panels(items: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for panel in panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append(str(target["expr"]))
    for var in board.get("templating", {}).get("list", []):
        q = var.get("query")
        if var.get("type") == "query" and isinstance(q, str):
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q)
            out.append(m.group(1) if m else q)
    return list(dict.fromkeys(out))


def write_all(root: Path) -> list[Path]:
    """Regenerate the shipped files under ``root`` (the repository's ``monitoring/``)."""
    rules = root / "prometheus" / "fedkafka-rules.yml"
    board = root / "grafana" / "fedkafka-overview.json"
    for path in (rules, board):
        path.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text(rules_yaml())
    board.write_text(json.dumps(dashboard(), indent=2, sort_keys=True) + "\n")
    return [rules, board]


if __name__ == "__main__":  # pragma: no cover - a developer's tool
    for written in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "monitoring")):
        print(written)
