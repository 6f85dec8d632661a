"""``fedkafka group list|describe|reset-offsets`` and ``fedkafka exporter``.

Groups are read where they live, on the coordination cluster; lag is computed over the
segment chains (:mod:`federation.exporter.lag`), so the numbers match what
``kafka-consumer-groups.sh --describe`` shows through a proxy, plus what no single
physical cluster can show: which clusters hold the records a group has not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from federation.cli.common import JsonOpt, StoreOpt, WorkdirOpt, _backend, _print_json, _run, out
from federation.clusters import admin
from federation.core.errors import ConfigError, FedKafkaError
from federation.core.model import FederationMap

__all__ = ["group_app", "register"]

group_app = typer.Typer(help="Consumer groups: lag over the federation, offsets.",
                        no_args_is_help=True)


def _num(value: Any) -> str:
    return "-" if value is None else str(value)


def _unread_text(unread: dict[str, int]) -> str:
    return " ".join(f"{c}={n}" for c, n in sorted(unread.items()) if n) or "-"


@group_app.command("list")
def group_list(store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False
               ) -> None:
    """List consumer groups with their state, members and total lag over the federation."""
    from federation.exporter.groups import describe_groups, list_groups
    from federation.exporter.lag import collect

    async def gather() -> list[dict[str, Any]]:
        fmap = await admin._load(backend)
        groups = [g for g, _ in await list_groups(fmap)]
        infos = await describe_groups(fmap, groups)
        report, _ = await collect(fmap, groups=groups)
        unread = report.unread_by_cluster()
        rows = []
        for g in groups:
            parts = report.for_group(g)
            info = infos.get(g)
            rows.append({"group": g, "state": info.state if info else "Unknown",
                         "members": len(info.members) if info else 0,
                         "topics": sorted({p.topic for p in parts}),
                         "lag": sum(p.lag or 0 for p in parts) if parts else None,
                         "unread_by_cluster": unread.get(g, {})})
        return rows

    with _backend(store, workdir) as backend:
        rows = _run(gather())
    if as_json:
        _print_json({"groups": rows})
        return
    table = Table(title="consumer groups")
    for col in ("group", "state", "members", "topics", "lag", "unread on"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["group"], r["state"], str(r["members"]), ",".join(r["topics"]) or "-",
                      _num(r["lag"]), _unread_text(r["unread_by_cluster"]))
    out.print(table)


@group_app.command("describe")
def group_describe(
    group: Annotated[str, typer.Argument(help="Consumer group id.")],
    store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Per logical partition: committed offset, end offset, lag, the physical clusters
    holding what the group has not read, and the member consuming it."""
    from federation.exporter.groups import describe_group

    async def gather() -> dict[str, Any]:
        fmap = await admin._load(backend)
        return (await describe_group(fmap, group)).to_dict()

    with _backend(store, workdir) as backend:
        desc = _run(gather())
    if desc["state"] == "Dead" and not desc["partitions"]:
        raise admin.InvalidRequestError(f"consumer group {group!r} does not exist")
    if as_json:
        _print_json(desc)
        return
    out.print(f"group [bold]{group}[/bold]: {desc['state']}, {len(desc['members'])} member(s), "
              f"lag {desc['lag']}; unread on {_unread_text(desc['unread_by_cluster'])}")
    if desc["unreachable_clusters"]:
        out.print(f"[yellow]clusters not answering: {', '.join(desc['unreachable_clusters'])}"
                  " (their partitions' end offsets are unknown)[/yellow]")
    table = Table()
    for col in ("topic", "partition", "committed", "end", "lag", "unread on", "consumer id",
                "host", "client id"):
        table.add_column(col, overflow="fold")
    for r in desc["partitions"]:
        table.add_row(r["topic"], str(r["partition"]), _num(r["committed"]), _num(r["end"]),
                      _num(r["lag"]), _unread_text(r["unread"]), r["member_id"] or "-",
                      r["host"] or "-", r["client_id"] or "-")
    out.print(table)


def _parse_topics(specs: list[str]) -> dict[str, list[int] | None]:
    """``["orders", "pay:0,2"]`` → {"orders": None, "pay": [0, 2]}."""
    out_: dict[str, list[int] | None] = {}
    for spec in specs:
        name, sep, parts = spec.partition(":")
        if not name:
            raise ConfigError(f"bad --topic {spec!r}: use TOPIC or TOPIC:0,1,2")
        if not sep:
            out_[name] = None
            continue
        try:
            chosen = [int(p) for p in parts.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"bad --topic {spec!r}: partitions are numbers, e.g. "
                              f"{name}:0,1") from None
        prev = out_.get(name, [])
        out_[name] = None if prev is None and name in out_ else [*(prev or []), *chosen]
    return out_


@group_app.command("reset-offsets")
def group_reset_offsets(
    group: Annotated[str, typer.Argument(help="Consumer group id (must be inactive).")],
    topic: Annotated[list[str] | None, typer.Option(
        "--topic", "-t", help="Logical topic, or TOPIC:0,1 for some partitions (repeat).")]
    = None,
    all_topics: Annotated[bool, typer.Option(
        "--all-topics", help="Every logical topic the group committed offsets on.")] = False,
    to_earliest: Annotated[bool, typer.Option("--to-earliest")] = False,
    to_latest: Annotated[bool, typer.Option("--to-latest")] = False,
    to_offset: Annotated[int | None, typer.Option("--to-offset", help="A logical offset.")]
    = None,
    shift_by: Annotated[int | None, typer.Option("--shift-by", help="Move by N (may be < 0).")]
    = None,
    execute: Annotated[bool, typer.Option(
        "--execute", help="Commit the new offsets (default: only show them).")] = False,
    store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Move an inactive group's committed (logical) offsets; a dry run unless --execute."""
    from federation.controller.elastic import committed_offsets
    from federation.exporter.groups import ResetSpec, apply_reset, plan_reset

    spec = ResetSpec(to_earliest, to_latest, to_offset, shift_by)
    if bool(topic) == all_topics:
        raise ConfigError("give --topic (one or more) or --all-topics")
    wanted = _parse_topics(topic or [])

    async def go() -> dict[tuple[str, int], tuple[int | None, int]]:
        fmap = await admin._load(backend)
        parts = wanted
        if all_topics:
            mine = (await committed_offsets(fmap, include=group.__eq__)).get(group, {})
            if not mine:
                raise admin.InvalidRequestError(
                    f"group {group!r} committed no offset on any logical topic")
            parts = {t: None for t, _ in mine}
        plan = await plan_reset(fmap, group, parts, spec)
        if execute:
            await apply_reset(fmap, group, {tp: new for tp, (_, new) in plan.items()})
        return plan

    with _backend(store, workdir) as backend:
        plan = _run(go())
    rows = [{"topic": t, "partition": p, "committed": old, "new": new}
            for (t, p), (old, new) in sorted(plan.items())]
    if as_json:
        _print_json({"group": group, "executed": execute, "partitions": rows})
        return
    table = Table(title=f"group {group}: new offsets"
                  + ("" if execute else " (dry run: add --execute to commit them)"))
    for col in ("topic", "partition", "committed", "new"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["topic"]), str(r["partition"]), _num(r["committed"]), str(r["new"]))
    out.print(table)


# -- what `fedkafka status` shows of groups and segments ------------------------------------


async def status_extras(fmap: FederationMap | None) -> dict[str, Any]:
    """Segments per cluster and the biggest lags, for ``fedkafka status``."""
    from federation.exporter.lag import top_lags

    if fmap is None:
        return {"segments": {}, "top_lags": [], "lag_error": None}
    segments = {c: {"active": 0, "sealed": 0} for c in sorted(fmap.clusters)}
    for topic in fmap.topics.values():
        for lp in topic.partitions:
            for seg in lp.segments:
                kind = "active" if seg.is_active else "sealed"
                segments.setdefault(seg.cluster, {"active": 0, "sealed": 0})[kind] += 1
    lags: list[dict[str, Any]] = []
    error = None
    try:
        lags = await top_lags(fmap)
    except FedKafkaError as e:
        error = str(e)
    return {"segments": segments, "top_lags": lags, "lag_error": error}


def print_status_extras(report: dict[str, Any]) -> None:
    """The proxies by pool and role, segments per cluster and the biggest lags."""
    proxies = report.get("members", {}).get("proxy", {})
    if proxies:
        table = Table(title="proxies")
        for col in ("member", "pool", "roles", "node id"):
            table.add_column(col)
        for member, data in sorted(proxies.items(),
                                   key=lambda kv: (str(kv[1].get("pool")), kv[0])):
            table.add_row(member, str(data.get("pool", "-")),
                          ",".join(data.get("roles", [])) or "-", str(data.get("node_id", "-")))
        out.print(table)
    segments = report.get("segments", {})
    if segments:
        out.print("segments: " + ", ".join(f"{c} {n['active']} active/{n['sealed']} sealed"
                                           for c, n in segments.items()))
    if report.get("lag_error"):
        out.print(f"[yellow]lag unknown: {report['lag_error']}[/yellow]")
    elif report.get("top_lags"):
        table = Table(title="biggest consumer lags")
        for col in ("group", "topic", "partition", "lag", "unread on"):
            table.add_column(col)
        for r in report["top_lags"]:
            table.add_row(r["group"], r["topic"], str(r["partition"]), _num(r["lag"]),
                          _unread_text(r["unread"]))
        out.print(table)
    else:
        out.print("consumer lag: none")


def exporter(
    config: Annotated[Path, typer.Option("--config", help="Exporter config JSON file.")],
) -> None:
    """Serve consumer lag over the federation and map health on /metrics until SIGTERM."""
    import asyncio

    from federation.exporter.service import load_config, serve

    asyncio.run(serve(load_config(config)))


def register(app: typer.Typer) -> None:
    """Add ``group`` and ``exporter`` to the main ``fedkafka`` app."""
    app.add_typer(group_app, name="group")
    app.command("exporter")(exporter)
