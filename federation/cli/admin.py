"""Admin commands of the ``fedkafka`` CLI: clusters, topics, pools, status, controller.

The main app adds them with :func:`register`. Every command finds the metadata store
through ``--store`` (``file:/path/map.json`` or ``zookeeper:host:port[,host:port]/root``),
else ``$FEDKAFKA_STORE``, else the ``"store"`` of the local federation's
``federation.json`` (``--workdir`` / ``$FEDKAFKA_WORKDIR``).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from federation.cli.common import (
    JsonOpt,
    StoreOpt,
    WorkdirOpt,
    _backend,
    _load,
    _print_json,
    _run,
    _state,
    err,
    out,
    via,
)
from federation.cli.group import print_status_extras, status_extras
from federation.clusters import admin
from federation.controller import intents
from federation.core.errors import ConfigError
from federation.core.model import (
    ROLE_CONSUMER,
    ROLE_PRODUCER,
    AutoCreatePolicy,
    ClusterState,
    FederationMap,
    LogicalTopic,
    PhysicalCluster,
    ProxyEndpoint,
)
from federation.store.mapstore import MetadataBackend

__all__ = ["endpoint_from_text", "register"]


# -- clusters --------------------------------------------------------------------------------

cluster_app = typer.Typer(help="Physical Kafka clusters of the federation.", no_args_is_help=True)


def _cluster_json(c: PhysicalCluster, fmap: FederationMap) -> dict[str, Any]:
    return {"id": c.id, "bootstrap": c.bootstrap, "state": c.state.value, "weight": c.weight,
            "coordination": c.id == fmap.coordination_cluster,
            "physical_topics": fmap.physical_topics_on(c.id)}


def _security_settings(cluster_id: str, items: list[str]) -> dict[str, str]:
    """``--security KEY=VALUE`` options → a cluster's ``security`` (validated)."""
    from federation.security.tls import cluster_security

    settings: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--security {item!r} is not KEY=VALUE; write e.g. "
                              "--security security.protocol=SASL_SSL")
        settings[key.strip()] = value.strip()
    cluster_security(settings, cluster_id)
    return settings


@cluster_app.command("add")
def cluster_add(
    cluster_id: Annotated[str, typer.Argument(help="Cluster id, e.g. c3.")],
    bootstrap: Annotated[str, typer.Argument(help="host:port[,host:port] of its brokers.")],
    weight: Annotated[int, typer.Option(help="Relative capacity (weighted strategy).")] = 1,
    state: Annotated[str, typer.Option(help="Initial state.")] = "active",
    coordination: Annotated[bool, typer.Option(
        help="Make it the consumer-group coordination cluster.")] = False,
    security: Annotated[list[str] | None, typer.Option(
        "--security", help="KEY=VALUE, repeatable: how every federation component connects "
        "to it (security.protocol, ssl.ca.location, sasl.mechanism, sasl.username, "
        "sasl.password=file:/path or env:VAR; docs/security.md).")] = None,
    store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Add a physical cluster (it must answer Kafka Metadata first)."""
    settings = _security_settings(cluster_id, security or [])
    with _backend(store, workdir) as backend:
        cluster = _run(intents.add_cluster(backend, cluster_id, bootstrap, weight, state=state,
                                           coordination=coordination, security=settings,
                                           via=via(store, workdir)))
        fmap = _load(backend)
    if as_json:
        _print_json(_cluster_json(cluster, fmap))
        return
    out.print(f"cluster {cluster.id} added ({cluster.bootstrap}, {cluster.state.value}); "
              f"map version {fmap.version}")


@cluster_app.command("list")
def cluster_list(store: StoreOpt = None, workdir: WorkdirOpt = None,
                 as_json: JsonOpt = False) -> None:
    """List the physical clusters with their state."""
    with _backend(store, workdir) as backend:
        fmap = _load(backend)
    if as_json:
        _print_json([_cluster_json(c, fmap) for c in fmap.clusters.values()])
        return
    table = Table(title=f"clusters (map version {fmap.version})")
    for col in ("id", "bootstrap", "state", "weight", "coordination", "physical topics"):
        table.add_column(col)
    for c in fmap.clusters.values():
        table.add_row(c.id, c.bootstrap, _state(c.state), str(c.weight),
                      "yes" if c.id == fmap.coordination_cluster else "",
                      str(len(fmap.physical_topics_on(c.id))))
    out.print(table)


@cluster_app.command("set-state")
def cluster_set_state(
    cluster_id: Annotated[str, typer.Argument(help="Cluster id.")],
    state: Annotated[str, typer.Argument(
        help=f"One of: {', '.join(s.value for s in ClusterState)}.")],
    store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Change a cluster's state (e.g. read_only to stop new writes there)."""
    with _backend(store, workdir) as backend:
        cluster = _run(intents.set_cluster_state(backend, cluster_id, state,
                                                 via=via(store, workdir)))
        fmap = _load(backend)
    if as_json:
        _print_json(_cluster_json(cluster, fmap))
        return
    out.print(f"cluster {cluster.id} is now {cluster.state.value}; map version {fmap.version}")


@cluster_app.command("remove")
def cluster_remove(
    cluster_id: Annotated[str, typer.Argument(help="Cluster id.")],
    store: StoreOpt = None, workdir: WorkdirOpt = None,
) -> None:
    """Remove a cluster that holds no segment any more."""
    with _backend(store, workdir) as backend:
        _run(intents.remove_cluster(backend, cluster_id, via=via(store, workdir)))
    out.print(f"cluster {cluster_id} removed")


@cluster_app.command("drain")
def cluster_drain(
    cluster_id: Annotated[str, typer.Argument(help="Cluster id.")],
    wait: Annotated[bool, typer.Option(
        "--wait", help="Block until drained (every group read its data there).")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 3600.0,
    interval: Annotated[float, typer.Option(help="Seconds between progress reports.")] = 2.0,
    store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Drain a cluster: no new writes there, its partitions roll onto the other clusters,
    then wait until consumer groups have read what it holds (`retire` it after that)."""
    from federation.controller import elastic

    async def go() -> Any:
        with _backend(store, workdir) as backend:
            await intents.start_drain(backend, cluster_id, via=via(store, workdir))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                progress = await elastic.drain_status(backend, cluster_id)
                if as_json and (not wait or progress.done):
                    _print_json(progress.to_dict())
                elif not as_json:
                    out.print(elastic.summary(progress))
                if not wait or progress.done:
                    return progress
                if loop.time() > deadline:
                    raise admin.AdminError(f"cluster {cluster_id!r} not drained after "
                                           f"{timeout:.0f}s")
                await asyncio.sleep(interval)

    _run(go())


@cluster_app.command("retire")
def cluster_retire(
    cluster_id: Annotated[str, typer.Argument(help="Cluster id.")],
    force: Annotated[bool, typer.Option(
        "--force", help="Retire although groups have not read all its data.")] = False,
    store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Retire a drained cluster: the map forgets its segments; its brokers can be stopped."""

    with _backend(store, workdir) as backend:
        fmap = _run(intents.retire_cluster(backend, cluster_id, force=force,
                                           via=via(store, workdir)))
    if as_json:
        _print_json(_cluster_json(fmap.clusters[cluster_id], fmap))
        return
    out.print(f"cluster {cluster_id} retired; map version {fmap.version}. Its brokers can be "
              f"stopped; `fedkafka cluster remove {cluster_id}` forgets it.")


def rebalance(
    topic: Annotated[list[str] | None, typer.Option(
        "--topic", help="Only this topic (repeatable) [default: every topic].")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the controller moved them.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait at most.")] = 120.0,
    store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Spread topics' writes over the writable clusters by weight (e.g. onto a new cluster).

    The controller rolls a share of active segments onto the clusters below their share:
    no data is copied, every key keeps its logical partition, per-key order holds.
    """
    from federation.controller import elastic

    async def go() -> dict[str, Any]:
        with _backend(store, workdir) as backend:
            moves = await intents.request_rebalance(backend, topic, via=via(store, workdir))
            placed = await elastic.wait_moves(backend, moves, timeout) if wait and moves else {}
        return {"moves": [{"topic": m.topic, "partition": m.partition, "target": m.target,
                           "now_on": placed.get((m.topic, m.partition))} for m in moves]}

    result = _run(go())
    if as_json:
        _print_json(result)
        return
    if not result["moves"]:
        out.print("balanced already: nothing to move")
        return
    for m in result["moves"]:
        where = f", now on {m['now_on']}" if m["now_on"] else ""
        out.print(f"{m['topic']}[{m['partition']}] → {m['target']}{where}")


# -- topics ----------------------------------------------------------------------------------

topic_app = typer.Typer(help="Logical topics.", no_args_is_help=True)


def _topic_json(t: LogicalTopic) -> dict[str, Any]:
    return {
        "name": t.name, "topic_id": str(t.topic_id), "strategy": t.strategy,
        "config": dict(t.config), "partition_count": t.partition_count,
        "partitions": [
            {"partition": p.index, "segments": [
                {"cluster": s.cluster, "topic": s.topic, "partition": s.partition,
                 "logical_start": s.logical_start, "physical_start": s.physical_start,
                 "sealed_end": s.sealed_end} for s in p.segments]}
            for p in t.partitions],
    }


def _parse_config(items: list[str] | None) -> dict[str, str]:
    config = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad --config {item!r}: use KEY=VALUE, e.g. retention.ms=86400000")
        config[key] = value
    return config


@topic_app.command("create")
def topic_create(
    name: Annotated[str, typer.Argument(help="Logical topic name.")],
    partitions: Annotated[int, typer.Option("--partitions", "-p", help="Logical partitions.")],
    strategy: Annotated[str, typer.Option(help="Mapping strategy (see `fedkafka plugins`).")]
    = "contiguous",
    config: Annotated[list[str] | None, typer.Option(
        "--config", help="Topic config KEY=VALUE (repeatable).")] = None,
    replication: Annotated[int | None, typer.Option(
        help="Replication factor of the physical topics [default: min(3, brokers)].")] = None,
    store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create a logical topic over the active clusters."""
    with _backend(store, workdir) as backend:
        topic = _run(intents.create_topic(backend, name, partitions, strategy,
                                          _parse_config(config), replication,
                                          via=via(store, workdir)))
    if as_json:
        _print_json(_topic_json(topic))
        return
    clusters = sorted({s.cluster for p in topic.partitions for s in p.segments})
    out.print(f"topic {topic.name} created: {topic.partition_count} partitions "
              f"({topic.strategy}) on {', '.join(clusters)}")


@topic_app.command("describe")
def topic_describe(
    name: Annotated[str, typer.Argument(help="Logical topic name.")],
    store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Show a topic's logical partitions and their segments."""
    with _backend(store, workdir) as backend:
        topic = _run(admin.describe_topic(backend, name))
    if as_json:
        _print_json(_topic_json(topic))
        return
    table = Table(title=f"{topic.name} ({topic.partition_count} partitions, {topic.strategy}, "
                  f"id {topic.topic_id})")
    for col in ("partition", "segment", "cluster", "physical", "logical range",
                "physical start"):
        table.add_column(col)
    for p in topic.partitions:
        for i, s in enumerate(p.segments):
            end = "…" if s.sealed_end is None else str(s.sealed_end)
            table.add_row(str(p.index) if i == 0 else "",
                          f"{i}{' (active)' if s.is_active else ''}", s.cluster,
                          f"{s.topic}[{s.partition}]", f"{s.logical_start}-{end}",
                          str(s.physical_start))
    out.print(table)
    if topic.config:
        out.print("config: " + ", ".join(f"{k}={v}" for k, v in sorted(topic.config.items())))


@topic_app.command("list")
def topic_list(store: StoreOpt = None, workdir: WorkdirOpt = None,
               as_json: JsonOpt = False) -> None:
    """List logical topics."""
    with _backend(store, workdir) as backend:
        topics = _run(admin.list_topics(backend))
    if as_json:
        _print_json([{"name": t.name, "partition_count": t.partition_count,
                      "strategy": t.strategy, "topic_id": str(t.topic_id)} for t in topics])
        return
    table = Table(title="topics")
    for col in ("name", "partitions", "strategy", "clusters"):
        table.add_column(col)
    for t in topics:
        clusters = sorted({s.cluster for p in t.partitions for s in p.segments})
        table.add_row(t.name, str(t.partition_count), t.strategy, ", ".join(clusters))
    out.print(table)


@topic_app.command("delete")
def topic_delete(
    name: Annotated[str, typer.Argument(help="Logical topic name.")],
    store: StoreOpt = None, workdir: WorkdirOpt = None,
) -> None:
    """Delete a logical topic, its physical topics and its shadow topic."""
    with _backend(store, workdir) as backend:
        deleted = _run(intents.delete_topic(backend, name, via=via(store, workdir)))
    out.print(f"topic {name} deleted")
    for cluster, physical in deleted.leftovers:
        err.print(f"[yellow]warning:[/yellow] {physical} on cluster {cluster} could not be "
                  "deleted (unreachable); delete it there later")


@topic_app.command("add-partitions")
def topic_add_partitions(
    name: Annotated[str, typer.Argument(help="Logical topic name.")],
    count: Annotated[int, typer.Argument(help="The new total partition count.")],
    store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Grow a topic to COUNT logical partitions."""
    with _backend(store, workdir) as backend:
        topic = _run(intents.add_partitions(backend, name, count, via=via(store, workdir)))
    if as_json:
        _print_json(_topic_json(topic))
        return
    out.print(f"topic {name} now has {topic.partition_count} partitions")


@topic_app.command("auto-create")
def topic_auto_create(
    enable: Annotated[bool | None, typer.Option(
        "--enable/--disable", help="Create unknown topics a client asks for.")] = None,
    partitions: Annotated[int | None, typer.Option(
        help="Logical partitions of a topic created so.")] = None,
    strategy: Annotated[str | None, typer.Option(help="Its mapping strategy.")] = None,
    replication: Annotated[int | None, typer.Option(
        help="Replication factor of its physical topics (-1: each cluster's default).")]
    = None,
    store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Show or set automatic topic creation (Kafka's auto.create.topics.enable)."""
    with _backend(store, workdir) as backend:
        fmap = backend.load()
        if fmap is None:
            raise ConfigError("the metadata store holds no map yet")
        current = fmap.auto_create
        policy = AutoCreatePolicy(
            enabled=current.enabled if enable is None else enable,
            partitions=current.partitions if partitions is None else partitions,
            strategy=current.strategy if strategy is None else strategy,
            replication_factor=(current.replication_factor if replication is None
                                else replication))
        if policy != current:
            fmap = _run(intents.set_auto_create(backend, policy, via=via(store, workdir)))
    if as_json:
        _print_json(policy.to_dict())
        return
    state = "on" if policy.enabled else "off"
    out.print(f"automatic topic creation {state}: {policy.partitions} partition(s), "
              f"{policy.strategy}, replication factor {policy.replication_factor}; "
              f"map version {fmap.version}")


# -- pools -----------------------------------------------------------------------------------

pool_app = typer.Typer(help="Proxy pools clients are routed to.", no_args_is_help=True)

_ROLES = {"producer": {ROLE_PRODUCER}, "consumer": {ROLE_CONSUMER},
          "both": {ROLE_PRODUCER, ROLE_CONSUMER}}


def endpoint_from_text(text: str) -> ProxyEndpoint:
    """``NODE_ID@HOST:PORT[/producer|consumer|both]`` → ProxyEndpoint."""
    m = re.fullmatch(r"(\d+)@([^:/]+):(\d+)(?:/(\w+))?", text)
    if not m or not 0 < int(m.group(3)) < 65536 or (m.group(4) or "both") not in _ROLES:
        raise ConfigError(f"bad --endpoint {text!r}: use NODE_ID@HOST:PORT[/producer|consumer"
                          "|both], e.g. 1000@127.0.0.1:19092")
    return ProxyEndpoint(int(m.group(1)), m.group(2), int(m.group(3)),
                         frozenset(_ROLES[m.group(4) or "both"]))


@pool_app.command("list")
def pool_list(store: StoreOpt = None, workdir: WorkdirOpt = None,
              as_json: JsonOpt = False) -> None:
    """List proxy pools and their endpoints."""
    with _backend(store, workdir) as backend:
        fmap = _load(backend)
    if as_json:
        _print_json({"default_pool": fmap.default_pool, "pools": {
            name: [{"node_id": e.node_id, "host": e.host, "port": e.port,
                    "roles": sorted(e.roles)} for e in endpoints]
            for name, endpoints in fmap.pools.items()}})
        return
    table = Table(title=f"pools (default: {fmap.default_pool})")
    for col in ("pool", "node id", "address", "roles"):
        table.add_column(col)
    for name, endpoints in fmap.pools.items():
        for i, e in enumerate(endpoints):
            table.add_row(name if i == 0 else "", str(e.node_id), f"{e.host}:{e.port}",
                          ",".join(sorted(e.roles)))
    out.print(table)


@pool_app.command("set")
def pool_set(
    name: Annotated[str, typer.Argument(help="Pool name.")],
    endpoint: Annotated[list[str] | None, typer.Option(
        "--endpoint", help="NODE_ID@HOST:PORT[/producer|consumer|both] (repeatable; "
        "none removes the pool).")] = None,
    store: StoreOpt = None, workdir: WorkdirOpt = None,
) -> None:
    """Set the proxies of a pool."""
    endpoints = [endpoint_from_text(e) for e in endpoint or []]
    with _backend(store, workdir) as backend:
        fmap = _run(intents.set_pool(backend, name, endpoints, via=via(store, workdir)))
    what = f"{len(endpoints)} endpoint(s)" if endpoints else "removed"
    out.print(f"pool {name}: {what}; map version {fmap.version}")


@pool_app.command("route")
def pool_route(
    pattern: Annotated[str, typer.Argument(help="Regex the whole client.id must match.")],
    pool: Annotated[str, typer.Argument(help="Pool that serves those clients.")],
    role: Annotated[str | None, typer.Option(
        help="producer or consumer: those clients only ever go to proxies with that "
             "role [default: proxies with both roles].")] = None,
    store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Route clients by client.id to a pool (and a role); replaces a rule with that pattern."""
    if role is not None and role not in (ROLE_PRODUCER, ROLE_CONSUMER):
        raise ConfigError(f"bad --role {role!r}: use {ROLE_PRODUCER} or {ROLE_CONSUMER}")
    with _backend(store, workdir) as backend:
        fmap = _run(intents.set_route(backend, pattern, pool, role, via=via(store, workdir)))
    rules = [{"pattern": r.pattern, "pool": r.pool, "role": r.role} for r in fmap.routing]
    if as_json:
        _print_json(rules)
        return
    out.print(f"clients matching {pattern!r} → pool {pool}"
              f"{f' as {role}s' if role else ''}; map version {fmap.version}")


@pool_app.command("unroute")
def pool_unroute(
    pattern: Annotated[str, typer.Argument(help="The pattern of the rule to remove.")],
    store: StoreOpt = None, workdir: WorkdirOpt = None,
) -> None:
    """Remove a routing rule."""
    with _backend(store, workdir) as backend:
        fmap = _run(intents.remove_route(backend, pattern, via=via(store, workdir)))
    out.print(f"route {pattern!r} removed; map version {fmap.version}")


# -- status and controller -------------------------------------------------------------------


async def _status(backend: MetadataBackend) -> dict[str, Any]:
    fmap = await asyncio.to_thread(backend.load)
    health = await asyncio.to_thread(backend.health)
    members = {kind: await asyncio.to_thread(backend.members, kind)
               for kind in ("controller", "proxy", "nameservice", "exporter")}
    clusters = []
    if fmap is not None:
        async def check(c: PhysicalCluster) -> dict[str, Any]:
            try:
                kafka_id = await admin.probe_cluster(c, timeout=2.0)
                reachable, error = True, None
            except admin.AdminError as e:
                kafka_id, reachable, error = None, False, str(e)
            return {"id": c.id, "bootstrap": c.bootstrap, "state": c.state.value,
                    "reachable": reachable, "kafka_cluster_id": kafka_id, "error": error}

        clusters = list(await asyncio.gather(*(check(c) for c in fmap.clusters.values())))
    # Map version skew: members report the version they serve (read-your-writes).
    served = {f"{kind}/{m}": d.get("map_version") for kind in ("proxy", "nameservice")
              for m, d in members[kind].items()}
    behind = {m: v for m, v in served.items()
              if fmap is not None and (not isinstance(v, int) or v < fmap.version)}
    return {"store": health, "map_version": fmap.version if fmap else None,
            "topics": len(fmap.topics) if fmap else 0, "clusters": clusters,
            "members": members, "map_versions_served": served, "members_behind": behind,
            **await status_extras(fmap)}


def status(store: StoreOpt = None, workdir: WorkdirOpt = None, as_json: JsonOpt = False) -> None:
    """Show the store, the map version, cluster reachability and live members."""
    with _backend(store, workdir) as backend:
        report = _run(_status(backend))
    if as_json:
        _print_json(report)
        return
    h = report["store"]
    ok = "[green]ok[/green]" if h.get("ok") else f"[red]{h.get('error', 'not ok')}[/red]"
    out.print(f"store: {h.get('backend')} {ok}; map version {report['map_version']}; "
              f"{report['topics']} topic(s)")
    if report["members_behind"]:
        lagging = ", ".join(f"{m} (v{v})" for m, v in sorted(report["members_behind"].items()))
        out.print(f"[yellow]serving an older map:[/yellow] {lagging}")
    else:
        out.print(f"every proxy and name service serves map version {report['map_version']}")
    table = Table(title="clusters")
    for col in ("id", "bootstrap", "state", "reachable"):
        table.add_column(col)
    for c in report["clusters"]:
        reach = "[green]yes[/green]" if c["reachable"] else "[red]no[/red]"
        table.add_row(c["id"], c["bootstrap"], _state(ClusterState(c["state"])), reach)
    out.print(table)
    for kind, members in report["members"].items():
        if members:
            names = ", ".join(f"{m}{' (leader)' if d.get('leader') else ''}"
                              for m, d in sorted(members.items()))
            out.print(f"{kind}s: {names}")
    print_status_extras(report)


def controller(
    config: Annotated[Path, typer.Option("--config", help="Controller config JSON file.")],
) -> None:
    """Run a controller (one is elected active; others stand by) until SIGTERM."""
    from federation.controller.service import run_from_file

    run_from_file(config)


def register(app: typer.Typer) -> None:
    """Add the admin commands to the main ``fedkafka`` app."""
    app.add_typer(cluster_app, name="cluster")
    app.add_typer(topic_app, name="topic")
    app.add_typer(pool_app, name="pool")
    app.command("status")(status)
    app.command("controller")(controller)
    app.command("rebalance")(rebalance)
