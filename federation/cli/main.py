"""The ``fedkafka`` command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from federation import __version__
from federation.core import logs
from federation.core.errors import FedKafkaError
from federation.core.runloop import run_loop
from federation.tooling.kafka_dist import DEFAULT_KAFKA_VERSION, DEFAULT_ZOOKEEPER_VERSION

app = typer.Typer(
    name="fedkafka",
    help="A federated Kafka service: many physical Apache Kafka clusters presented as one.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
kafka_app = typer.Typer(help="Install Apache Kafka distributions into the local cache.",
                        no_args_is_help=True)
zk_app = typer.Typer(help="Install Apache ZooKeeper into the local cache.", no_args_is_help=True)
local_app = typer.Typer(help="Run a whole federation on this machine (loopback only).",
                        no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
app.add_typer(zk_app, name="zookeeper")
app.add_typer(local_app, name="local")

out = Console()
err = Console(stderr=True)

WorkdirOpt = Annotated[
    Path | None,
    typer.Option("--workdir", help="Where the local federation keeps its state "
                 "[default: $FEDKAFKA_WORKDIR or ./.fedkafka/local]"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"fedkafka {__version__}")
        raise typer.Exit()


# -- kafka / zookeeper install ---------------------------------------------


@kafka_app.command("install")
def kafka_install(
    version: Annotated[str, typer.Option(help="Apache Kafka release (4.x; 3.9.x works too).")]
    = DEFAULT_KAFKA_VERSION,
    tarball_url: Annotated[str | None, typer.Option(help="Install from the official release "
                                                    "tarball at this URL instead of Maven.")]
    = None,
    tarball_file: Annotated[Path | None, typer.Option(help="Install from a local release "
                                                      "tarball instead of Maven.")] = None,
    sha512: Annotated[str | None, typer.Option(help="Pinned SHA-512 of the tarball.")] = None,
    force: Annotated[bool, typer.Option(help="Re-install even if cached.")] = False,
) -> None:
    """Put a runnable Apache Kafka broker distribution in the cache and print where."""
    from federation.tooling.kafka_dist import install_kafka

    t0 = time.monotonic()
    with err.status(f"resolving Apache Kafka {version}…"):
        dist, fresh = install_kafka(version, tarball_url=tarball_url, tarball_file=tarball_file,
                                    sha512=sha512, force=force)
    how = f"installed in {time.monotonic() - t0:.1f}s" if fresh else "already cached"
    err.print(f"Apache Kafka {dist.version}: {how}")
    out.print(str(dist.home), soft_wrap=True)


@zk_app.command("install")
def zookeeper_install(
    version: Annotated[str, typer.Option(help="Apache ZooKeeper release.")]
    = DEFAULT_ZOOKEEPER_VERSION,
    force: Annotated[bool, typer.Option(help="Re-install even if cached.")] = False,
) -> None:
    """Put a runnable Apache ZooKeeper in the cache (from Maven Central) and print where."""
    from federation.tooling.kafka_dist import install_zookeeper

    with err.status(f"resolving Apache ZooKeeper {version}…"):
        dist, fresh = install_zookeeper(version, force=force)
    err.print(f"Apache ZooKeeper {dist.version}: {'installed' if fresh else 'already cached'}")
    out.print(str(dist.home), soft_wrap=True)


# -- local federation --------------------------------------------------------


@local_app.command("up")
def local_up(
    clusters: Annotated[int, typer.Option(help="Number of physical Kafka clusters.")] = 2,
    brokers_per_cluster: Annotated[int, typer.Option(help="Brokers in each cluster.")] = 1,
    metadata: Annotated[str, typer.Option(help="Metadata store: file or zookeeper.")] = "file",
    workdir: WorkdirOpt = None,
    kafka_version: Annotated[str, typer.Option(help="Apache Kafka release to run.")]
    = DEFAULT_KAFKA_VERSION,
    base_port: Annotated[int, typer.Option(help="First port of the range the federation uses.")]
    = 19092,
    heap: Annotated[str, typer.Option(help="Max heap of each broker JVM.")] = "256m",
    proxies: Annotated[int, typer.Option(help="Proxies (both roles) in the default pool.")]
    = 1,
    controllers: Annotated[int, typer.Option(help="Controllers (one active, the others "
                                                  "standing by).")] = 1,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for everything to answer.")]
    = 180.0,
    exporter: Annotated[bool, typer.Option(help="Run the lag exporter (metrics on base+70).")]
    = True,
    monitoring: Annotated[bool, typer.Option(help="Also run Prometheus (base+80) scraping "
                                             "every component, with fedkafka's rules.")]
    = False,
    secure: Annotated[bool, typer.Option(help="TLS and SASL/SCRAM everywhere: a generated "
                                         "CA, SASL_SSL brokers and proxies, users admin "
                                         "and app (settings in federation.json).")]
    = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a federation of real Kafka clusters on loopback and write federation.json."""
    from federation.tooling.local import LocalFederation

    fed = LocalFederation(workdir)
    t0 = time.monotonic()
    with err.status("starting the local federation…") as status:

        def progress(msg: str) -> None:
            status.update(msg + "…")
            err.print(f"[dim]{time.monotonic() - t0:6.1f}s[/dim] {msg}")

        state = fed.up(clusters=clusters, brokers_per_cluster=brokers_per_cluster,
                       metadata=metadata, kafka_version=kafka_version, base_port=base_port,
                       heap=heap, timeout=timeout, progress=progress, proxies=proxies,
                       controllers=controllers, exporter=exporter, monitoring=monitoring,
                       secure=secure)
    if as_json:
        _print_json(state)
        return
    err.print(f"federation up in {time.monotonic() - t0:.1f}s; state in {fed.state_path}")
    _status_table(fed)
    out.print(f"bootstrap: [bold]{state['bootstrap']}[/bold]")
    if state.get("security"):
        users = state["security"]["users"]
        out.print(f"security: SASL_SSL, SCRAM-SHA-512, CA {state['security']['ca']}; users "
                  + ", ".join(f"{u} ({users[u]['java_properties']})" for u in users)
                  + f"; passwords in {fed.state_path} (security.users)")
    if state.get("prometheus"):
        out.print(f"prometheus: [bold]{state['prometheus']}[/bold]")


@local_app.command("down")
def local_down(
    workdir: WorkdirOpt = None,
    grace: Annotated[float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")]
    = 20.0,
) -> None:
    """Stop every process the local federation started (gracefully, then forcibly)."""
    from federation.tooling.local import LocalFederation

    fed = LocalFederation(workdir)
    with err.status("stopping the local federation…"):
        outcomes = fed.down(grace=grace)
    for name, outcome in outcomes:
        out.print(f"{name}: {outcome}")


@local_app.command("status")
def local_status(workdir: WorkdirOpt = None, as_json: JsonOpt = False) -> None:
    """Show every component of the local federation with its health."""
    from federation.tooling.local import LocalFederation

    fed = LocalFederation(workdir)
    if as_json:
        state = fed.load() or {}
        _print_json({"bootstrap": state.get("bootstrap"), "components": fed.status()})
        return
    _status_table(fed)
    state = fed.load() or {}
    out.print(f"bootstrap: [bold]{state.get('bootstrap')}[/bold]")


def _status_table(fed: Any) -> None:
    rows = fed.status()
    table = Table(title=f"local federation in {fed.workdir}")
    for col in ("name", "kind", "pid", "ports", "health", "rss MiB"):
        table.add_column(col)
    colours = {"healthy": "green", "running": "green", "down": "red"}
    for r in rows:
        colour = colours.get(r["health"], "yellow")
        table.add_row(r["name"], r["kind"], str(r["pid"] or "-"),
                      ",".join(map(str, r["ports"])), f"[{colour}]{r['health']}[/{colour}]",
                      str(r["rss_mb"] or "-"))
    out.print(table)


@local_app.command("restart")
def local_restart(
    name: Annotated[str, typer.Argument(help="Component name, as in `fedkafka local status`.")],
    workdir: WorkdirOpt = None,
    kill: Annotated[bool, typer.Option(help="SIGKILL instead of a graceful stop.")] = False,
) -> None:
    """Restart one component (a broker, a proxy, ZooKeeper…) and wait until it answers."""
    from federation.tooling.local import LocalFederation

    with err.status(f"restarting {name}…"):
        rec = LocalFederation(workdir).restart_component(name, kill=kill)
    out.print(f"{name}: running again (pid {rec.pid})")


@local_app.command("logs")
def local_logs(
    name: Annotated[str, typer.Argument(help="Component name, as in `fedkafka local status`.")],
    workdir: WorkdirOpt = None,
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many last lines.")] = 50,
) -> None:
    """Show the last lines of one component's log."""
    from federation.tooling.local import LocalFederation
    from federation.tooling.procs import tail

    path = LocalFederation(workdir).log_path(name)
    sys.stdout.write(tail(path, lines) + "\n")


@local_app.command("demo")
def local_demo(
    workdir: WorkdirOpt = None,
    topic: Annotated[str, typer.Option(help="Topic to produce to and consume from.")] = "demo",
    message: Annotated[str | None, typer.Option(help="The message to send.")] = None,
) -> None:
    """Produce one message through the federation's bootstrap and consume it back."""
    import asyncio

    from federation.tooling.demo import produce_and_consume
    from federation.tooling.local import LocalFederation

    state = LocalFederation(workdir).load()
    if not state or not LocalFederation(workdir).running():
        raise FedKafkaError("no local federation is running; start one with `fedkafka local up`")
    text = message or f"hello from fedkafka at {time.strftime('%H:%M:%S')}"
    admin = (state.get("security") or {}).get("users", {}).get("admin")  # `up --secure`
    partition, offset, got = asyncio.run(produce_and_consume(state["bootstrap"], topic, text,
                                                             security=admin))
    out.print(f"produced to {topic}[{partition}] at offset {offset} via {state['bootstrap']}")
    out.print(f"consumed: {got!r}")
    if got != text:
        raise FedKafkaError(f"consumed {got!r} but produced {text!r}")


@app.command("proxy")
def proxy_cmd(
    config: Annotated[Path, typer.Option("--config", help="Proxy config (JSON).")],
    log_level: Annotated[str, typer.Option(help="Log level.")] = "INFO",
    workers: Annotated[int | None, typer.Option(
        help="Worker processes sharing the listener (overrides the config's workers).")]
    = None,
    worker: Annotated[int | None, typer.Option(
        hidden=True, help="Run this worker of the proxy (started by its supervisor).")]
    = None,
) -> None:
    """Run a proxy (pproxy, cproxy or both, as its config says) until SIGTERM."""
    import dataclasses

    from federation.proxy.config import ProxyConfig
    from federation.proxy.workers import run_proxy

    cfg = ProxyConfig.load(config)
    if workers is not None:
        if not 1 <= workers <= 64:
            raise FedKafkaError(f"--workers {workers} must be from 1 to 64")
        cfg = dataclasses.replace(cfg, workers=workers)
    logs.configure(log_level)
    code = run_proxy(cfg, config, log_level, worker)
    if code:
        raise typer.Exit(code)


@app.command("nameservice")
def nameservice_cmd(
    config: Annotated[Path, typer.Option("--config", help="Name-service config (JSON).")],
    log_level: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """Run the name service: the bootstrap endpoint that routes clients to proxy pools."""
    import dataclasses

    from federation.proxy.config import ProxyConfig
    from federation.proxy.server import serve

    cfg = dataclasses.replace(ProxyConfig.load(config), route_by_client_id=True)
    logs.configure(log_level)
    run_loop(serve(cfg))


def _register_plugins_commands() -> None:
    from federation.cli import acl, admin, group, user
    from federation.tooling import bench, bench_elastic, bench_metadata, bench_workers, fuzz

    bench.register(app)
    bench_metadata.register(app)
    bench_elastic.register(app)
    bench_workers.register(app)
    admin.register(app)
    app.add_typer(acl.acl_app, name="acl")
    app.add_typer(user.user_app, name="user")
    group.register(app)
    fuzz.register(app)


_register_plugins_commands()


def main() -> None:
    """Console-script entry point: one line per user error, no traceback."""
    long_running = len(sys.argv) > 1 and sys.argv[1] in ("proxy", "nameservice", "controller",
                                                         "exporter")
    logs.configure("INFO" if long_running else "WARNING")
    try:
        app()
    except FedKafkaError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
