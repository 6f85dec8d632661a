"""A whole federation on one machine, as child processes on loopback.

``LocalFederation(workdir).up(...)`` starts N independent single- or multi-broker
KRaft clusters (each with its own cluster id, ports, data directory and small
heap), ZooKeeper when asked, and records everything it started in
``WORKDIR/federation.json``; ``down()`` stops exactly those processes.

Port layout (``base`` defaults to 19092):

* ``base + 0 ..``     federation entry points (proxies), later components
* ``base + 20``       ZooKeeper client port
* ``base + 100*(i+1) + 2*j``  cluster i, broker j (``+1`` is its KRaft controller port)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.clusters import probe
from federation.core.errors import ConfigError, FedKafkaError
from federation.tooling import local_secure, procs
from federation.tooling.kafka_dist import (
    DEFAULT_KAFKA_VERSION,
    KafkaDist,
    ZooKeeperDist,
    install_kafka,
    install_zookeeper,
    java_executable,
)
from federation.tooling.local_secure import SecureSetup

STATE_FILE = "federation.json"
FORMAT = 1
HOST = "127.0.0.1"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def default_workdir() -> Path:
    env = os.environ.get("FEDKAFKA_WORKDIR")
    return Path(env) if env else Path.cwd() / ".fedkafka" / "local"


@dataclass(frozen=True, slots=True)
class BrokerPlan:
    cluster: str
    node_id: int
    port: int
    controller_port: int | None

    @property
    def name(self) -> str:
        return f"{self.cluster}-b{self.node_id}"


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    name: str
    cluster_id: str
    brokers: tuple[BrokerPlan, ...]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{b.port}" for b in self.brokers)

    @property
    def voters(self) -> str:
        return ",".join(f"{b.node_id}@{HOST}:{b.controller_port}"
                        for b in self.brokers if b.controller_port is not None)


def cluster_name(index: int) -> str:
    return f"c{index + 1}"


def plan_clusters(n: int, brokers_per_cluster: int, base_port: int) -> list[ClusterPlan]:
    """Decide names, ids and ports for ``n`` clusters (no side effects)."""
    if n < 1:
        raise ConfigError("--clusters must be at least 1")
    if n > 60:
        raise ConfigError("--clusters must be at most 60 on one machine")
    if not 1 <= brokers_per_cluster <= 9:
        raise ConfigError("--brokers-per-cluster must be between 1 and 9")
    if not 1024 <= base_port <= 65535 - 100 * (n + 1):
        raise ConfigError(f"--base-port {base_port} leaves no room for {n} clusters; "
                          "pick one between 1024 and 50000")
    plans = []
    voters = min(brokers_per_cluster, 3)
    for i in range(n):
        brokers = tuple(
            BrokerPlan(
                cluster=cluster_name(i),
                node_id=j + 1,
                port=base_port + 100 * (i + 1) + 2 * j,
                controller_port=(base_port + 100 * (i + 1) + 2 * j + 1) if j < voters else None,
            )
            for j in range(brokers_per_cluster)
        )
        plans.append(ClusterPlan(cluster_name(i), new_cluster_id(), brokers))
    return plans


def new_cluster_id() -> str:
    """A Kafka cluster id (base64url UUID). Like Kafka's own ``Uuid.randomUuid``, never one
    that starts with '-', which command-line parsers take for an option."""
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def broker_properties(cluster: ClusterPlan, broker: BrokerPlan, data_dir: Path,
                      overrides: dict[str, str] | None = None) -> str:
    """``server.properties`` of one local broker (``overrides``: e.g. SASL_SSL listeners)."""
    rf = min(len(cluster.brokers), 3)
    roles = "broker,controller" if broker.controller_port is not None else "broker"
    listeners = f"PLAINTEXT://{HOST}:{broker.port}"
    if broker.controller_port is not None:
        listeners += f",CONTROLLER://{HOST}:{broker.controller_port}"
    lines = {
        "process.roles": roles,
        "node.id": str(broker.node_id),
        "controller.quorum.voters": cluster.voters,
        "listeners": listeners,
        "advertised.listeners": f"PLAINTEXT://{HOST}:{broker.port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.partitions": "1",
        "default.replication.factor": str(rf),
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": str(rf),
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": str(rf),
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.retention.hours": "24",
        "log.segment.bytes": str(64 << 20),
        "socket.request.max.bytes": str(100 << 20),
    }
    lines.update(overrides or {})
    return "".join(f"{k}={v}\n" for k, v in lines.items())


#: A local federation reacts faster than a fleet's defaults: a killed cluster's partitions
#: fail over after 5 s (fleet default 10 s).
LOCAL_CONTROLLER_DEFAULTS: dict[str, Any] = {"health_interval": 1.0, "down_after": 2,
                                             "failover_after": 5.0}


class LocalFederation:
    """The local federation whose state lives in ``workdir``."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = (workdir or default_workdir()).resolve()
        self.state_path = self.workdir / STATE_FILE
        self._secure: SecureSetup | None = None  # while `up --secure` runs

    # -- state -------------------------------------------------------------

    def load(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as e:
            raise FedKafkaError(f"{self.state_path} is unreadable ({e}); "
                                "remove it after checking no process of ours runs") from e
        return data

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        if state.get("secure"):
            tmp.chmod(0o600)  # it holds the example users' passwords
        os.replace(tmp, self.state_path)

    def records(self, state: dict[str, Any] | None = None) -> list[procs.ProcessRecord]:
        state = state if state is not None else self.load()
        if not state:
            return []
        return [procs.ProcessRecord.from_dict(p) for p in state.get("processes", [])]

    def running(self) -> list[procs.ProcessRecord]:
        return [r for r in self.records() if procs.is_ours(r)]

    # -- up ----------------------------------------------------------------

    def _check_workdir(self) -> None:
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            probe_file = self.workdir / ".write-test"
            probe_file.write_text("x")
            probe_file.unlink()
        except OSError as e:
            raise FedKafkaError(
                f"the work directory {self.workdir} is not writable ({e.strerror}); "
                "pass --workdir with a writable directory"
            ) from e

    def up(
        self,
        clusters: int = 2,
        brokers_per_cluster: int = 1,
        metadata: str = "file",
        kafka_version: str = DEFAULT_KAFKA_VERSION,
        base_port: int = 19092,
        heap: str = "256m",
        timeout: float = 180.0,
        progress: Progress = _quiet,
        proxies: int = 1,
        controllers: int = 1,
        controller_options: dict[str, Any] | None = None,
        exporter: bool = True,
        monitoring: bool = False,
        exporter_options: dict[str, Any] | None = None,
        proxy_workers: int = 1,
        secure: bool = False,
    ) -> dict[str, Any]:
        """Start the federation and return its description (also in federation.json).

        :param controller_options: controller config fields over the local defaults
            (:data:`LOCAL_CONTROLLER_DEFAULTS`), e.g. ``{"failover_after": 3}``.
        :param exporter: start the lag exporter (``fedkafka exporter``) on ``base + 70``.
        :param monitoring: also start a Prometheus (Debian's ``prometheus`` package) on
            ``base + 80`` scraping every component, with fedkafka's rules loaded.
        :param exporter_options: exporter config fields, e.g. ``{"max_groups": 10}``.
        :param proxy_workers: worker processes per proxy (its config's ``workers``).
        :param secure: TLS and SASL/SCRAM everywhere (:mod:`federation.tooling.local_secure`).
        """
        from federation.tooling import local_monitoring

        if metadata not in ("file", "zookeeper"):
            raise ConfigError(f"--metadata {metadata!r} is unknown; use 'file' or 'zookeeper'")
        java_executable()  # fail first, and clearly, when there is no Java
        self._check_workdir()
        if self.running():
            raise FedKafkaError(
                f"a local federation is already running in {self.workdir}; "
                "run `fedkafka local down` first (or pass another --workdir)"
            )
        plans = plan_clusters(clusters, brokers_per_cluster, base_port)
        if not 0 <= proxies <= 9:
            raise ConfigError("--proxies must be between 0 and 9")
        if not 0 <= controllers <= 3:
            raise ConfigError("--controllers must be between 0 and 3")
        zk_port = base_port + 20 if metadata == "zookeeper" else None
        proxy_ports = [base_port + i for i in range(proxies)]
        self._check_ports(plans, zk_port, proxy_ports)
        if monitoring and proxy_ports:
            local_monitoring.check_ports(base_port)

        progress(f"installing Apache Kafka {kafka_version} (cached after the first time)")
        dist, _ = install_kafka(kafka_version)
        zk_dist: ZooKeeperDist | None = None
        if zk_port is not None:
            progress("installing Apache ZooKeeper (cached after the first time)")
            zk_dist, _ = install_zookeeper()

        # A fresh start: data of an earlier, stopped federation in this workdir is discarded.
        for sub in ("clusters", "zookeeper", "logs", "run", "store", "proxies", "monitoring"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
        self._secure = local_secure.prepare(self.workdir) if secure else None
        if not secure:
            local_secure.scrub(self.workdir)
        state: dict[str, Any] = {
            "format": FORMAT,
            "workdir": str(self.workdir),
            "kafka_version": dist.version,
            "started_at": time.time(),
            "bootstrap": plans[0].bootstrap,
            "clusters": [
                {
                    "name": p.name,
                    "cluster_id": p.cluster_id,
                    "bootstrap": p.bootstrap,
                    "brokers": [{"node_id": b.node_id, "host": HOST, "port": b.port,
                                 "controller_port": b.controller_port} for b in p.brokers],
                }
                for p in plans
            ],
            "metadata": {"backend": metadata},
            "store": (f"zookeeper:{HOST}:{zk_port}/fedkafka"
                      + (self._secure.store_query() if self._secure is not None else "")
                      if zk_port is not None
                      else f"file:{self.workdir / 'store' / 'map.json'}"),
            "proxies": [{"node_id": 1000 + i, "host": HOST, "port": p}
                        for i, p in enumerate(proxy_ports)],
            "zookeeper": f"{HOST}:{zk_port}" if zk_port else None,
            "proxy_workers": proxy_workers,
            "processes": [],
            "secure": secure,
        }
        if self._secure is not None:
            state["probe_security"] = {"kafka-broker": self._secure.cluster_security(),
                                       "zookeeper": self._secure.zookeeper_client(),
                                       "proxy": self._secure.proxy_probe_security(),
                                       "nameservice": self._secure.proxy_probe_security()}
        self._save(state)
        started: list[procs.ProcessRecord] = []
        try:
            if zk_dist is not None and zk_port is not None:
                started.append(self._start_zookeeper(zk_dist, zk_port, state, progress))
            for plan in plans:
                started.extend(self._start_cluster(dist, plan, heap, state, progress))
            self._wait_clusters(plans, started, timeout, progress,
                                _probe_security(state, "kafka-broker"))
            if zk_port is not None:
                self._wait_zookeeper(zk_port, started, timeout,
                                     _probe_security(state, "zookeeper"))
            if proxy_ports:
                self._init_map(plans, state)
                self._write_intent_tokens(state)
                started.extend(self._start_proxies(state, base_port, progress))
                started.append(self._start_nameservice(state, base_port, progress))
                for i in range(controllers):
                    started.append(self._start_controller(state, base_port, progress, i,
                                                          controller_options))
                if exporter:
                    started.append(local_monitoring.start_exporter(
                        self, state, base_port, progress, exporter_options))
                self._wait_proxies(state, started, timeout, progress)
                if monitoring:
                    started.append(local_monitoring.start_prometheus(
                        self, state, base_port, progress, timeout))
                state["proxy_bootstrap"] = ",".join(f"{HOST}:{p}" for p in proxy_ports)
                state["bootstrap"] = f"{HOST}:{base_port + 10}"
                scheme = "https" if self._secure is not None else "http"
                state["nameservice_http"] = f"{scheme}://{HOST}:{base_port + 11}"
                if self._secure is not None:
                    state["security"] = self._secure.client_settings(state["bootstrap"])
        except BaseException:
            progress("start failed: stopping what was started")
            procs.stop(started)
            raise
        state["ready_at"] = time.time()
        self._save(state)
        return state

    def _init_map(self, plans: list[ClusterPlan], state: dict[str, Any]) -> None:
        """Publish the first map: the clusters, the proxies' pool, no topics yet."""
        from federation.core.model import FederationMap, PhysicalCluster, ProxyEndpoint
        from federation.plugin import get_plugins, parse_store
        from federation.store.mapstore import EMPTY_VERSION

        (self.workdir / "store").mkdir(parents=True, exist_ok=True)
        security = self._secure.cluster_security() if self._secure is not None else {}
        extra: dict[str, Any] = {}
        if self._secure is not None:
            from federation.core.credentials import make_user

            extra = {"users": {name: make_user(password)
                               for name, password in self._secure.users().items()},
                     "acls": tuple(self._secure.acls())}
        fmap = FederationMap(
            version=0,
            clusters={p.name: PhysicalCluster(id=p.name, bootstrap=p.bootstrap,
                                              security=security) for p in plans},
            coordination_cluster=plans[0].name,
            pools={"default": tuple(ProxyEndpoint(node_id=p["node_id"], host=p["host"],
                                                  port=p["port"]) for p in state["proxies"])},
            **extra,
        )
        name, options = parse_store(state["store"])
        backend = get_plugins().backend(name, **options)
        try:
            current = backend.load()
            backend.publish(fmap, current.version if current is not None else EMPTY_VERSION)
        finally:
            backend.close()

    def _write_intent_tokens(self, state: dict[str, Any]) -> None:
        """Fresh intent tokens (ADR 0015): the controllers' tokens file (0600) and this
        user's per-store credentials, where the CLI and the proxies of the store find them."""
        from federation.controller import intents

        tokens = intents.new_tokens()
        secrets_dir = self.workdir / "secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        path = secrets_dir / "intent-tokens.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(tokens, f)
        intents.save_store_credentials(state["store"], tokens)
        state["intent_tokens_file"] = str(path)
        self._save(state)

    def _start_proxies(self, state: dict[str, Any], base_port: int, progress: Progress
                       ) -> list[procs.ProcessRecord]:
        import sys

        out = []
        for i, p in enumerate(state["proxies"]):
            name = f"proxy-{i + 1}"
            cfg_path = self.workdir / "proxies" / f"{name}.json"
            cfg_path.parent.mkdir(parents=True, exist_ok=True)
            metrics_port = base_port + 50 + i
            cfg_path.write_text(json.dumps({
                "node_id": p["node_id"], "listen": f"{HOST}:{p['port']}",
                "advertised": f"{HOST}:{p['port']}", "store": state["store"],
                "roles": ["producer", "consumer"], "pool": "default",
                "metrics": f"{HOST}:{metrics_port}",
                **(self._secure.proxy_settings() if self._secure is not None else {}),
                **({"workers": state["proxy_workers"]}
                   if state.get("proxy_workers", 1) > 1 else {}),
            }, indent=2))
            progress(f"starting {name} on {HOST}:{p['port']}")
            rec, _ = procs.spawn(
                name=name, kind="proxy",
                cmd=[sys.executable, "-m", "federation.cli.main", "proxy", "--config",
                     str(cfg_path)],
                log=self.workdir / "logs" / f"{name}.log", ports=[p["port"], metrics_port],
                marker=str(cfg_path),
                env={"MALLOC_MMAP_THRESHOLD_": str(8 << 20),
                     "MALLOC_TRIM_THRESHOLD_": str(64 << 20)},
            )
            state["processes"].append(rec.to_dict())
            self._save(state)
            out.append(rec)
        return out

    def _start_nameservice(self, state: dict[str, Any], base_port: int, progress: Progress
                           ) -> procs.ProcessRecord:
        import sys

        port, http = base_port + 10, base_port + 11
        cfg_path = self.workdir / "proxies" / "nameservice.json"
        cfg_path.write_text(json.dumps({
            "node_id": 999, "listen": f"{HOST}:{port}", "advertised": f"{HOST}:{port}",
            "store": state["store"], "pool": "default", "http": f"{HOST}:{http}",
            **(self._secure.proxy_settings() if self._secure is not None else {}),
            **(self._secure.http_settings() if self._secure is not None else {}),
        }, indent=2))
        progress(f"starting the name service on {HOST}:{port} (HTTP {http})")
        rec, _ = procs.spawn(
            name="nameservice", kind="nameservice",
            cmd=[sys.executable, "-m", "federation.cli.main", "nameservice", "--config",
                 str(cfg_path)],
            log=self.workdir / "logs" / "nameservice.log", ports=[port, http],
            marker=str(cfg_path))
        state["processes"].append(rec.to_dict())
        self._save(state)
        return rec

    def _start_controller(self, state: dict[str, Any], base_port: int, progress: Progress,
                          index: int = 0, overrides: dict[str, Any] | None = None
                          ) -> procs.ProcessRecord:
        import sys

        from federation.plugin import parse_store

        name, options = parse_store(state["store"])
        metrics = base_port + 60 + index
        cname = f"controller-{index + 1}"
        cfg_path = self.workdir / "proxies" / f"{cname}.json"
        cfg_path.write_text(json.dumps({
            "metadata": {"backend": name, **options}, "metrics_port": metrics,
            "metrics_host": HOST, "member_id": cname,
            **({"intent_tokens_file": state["intent_tokens_file"],
                "intent_listen": f"{HOST}:{base_port + 66 + index}"}
               if state.get("intent_tokens_file") else {}),
            **LOCAL_CONTROLLER_DEFAULTS, **(overrides or {}),
        }, indent=2))
        progress(f"starting {cname}")
        rec, _ = procs.spawn(
            name=cname, kind="controller",
            cmd=[sys.executable, "-m", "federation.cli.main", "controller", "--config",
                 str(cfg_path)],
            log=self.workdir / "logs" / f"{cname}.log", ports=[metrics],
            marker=str(cfg_path))
        state["processes"].append(rec.to_dict())
        self._save(state)
        return rec

    def _wait_proxies(self, state: dict[str, Any], started: list[procs.ProcessRecord],
                      timeout: float, progress: Progress) -> None:
        deadline = time.monotonic() + timeout
        for rec in started:
            if rec.kind not in ("proxy", "nameservice"):
                continue
            while True:
                if not procs.is_ours(rec):
                    raise FedKafkaError(f"{rec.name} exited during start-up; see its log "
                                        f"{rec.log}:\n{procs.tail(Path(rec.log), 8)}")
                try:
                    probe.metadata(HOST, rec.ports[0], timeout=1.0,
                                   security=_probe_security(state, rec.kind))
                    progress(f"{rec.name} is up at {HOST}:{rec.ports[0]}")
                    break
                except (OSError, probe.ProbeError):
                    pass
                if time.monotonic() > deadline:
                    raise FedKafkaError(f"{rec.name} did not answer within {timeout:.0f}s; "
                                        f"see {rec.log}")
                time.sleep(0.1)

    def _check_ports(self, plans: list[ClusterPlan], zk_port: int | None,
                     proxy_ports: list[int] | None = None) -> None:
        wanted: list[tuple[int, str]] = [(p, "a proxy") for p in proxy_ports or []]
        if proxy_ports:
            base = proxy_ports[0]
            wanted += [(base + 10, "the name service"), (base + 11, "the name service HTTP")]
            wanted += [(base + 50 + i, "proxy metrics") for i in range(len(proxy_ports))]
            wanted += [(base + 60 + i, "controller metrics") for i in range(3)]
            wanted += [(base + 66 + i, "controller intents") for i in range(3)]
            wanted += [(base + 70, "the lag exporter")]
        for p in plans:
            for b in p.brokers:
                wanted.append((b.port, f"cluster {p.name} broker {b.node_id}"))
                if b.controller_port is not None:
                    wanted.append((b.controller_port,
                                   f"cluster {p.name} KRaft controller {b.node_id}"))
        if zk_port is not None:
            wanted.append((zk_port, "ZooKeeper"))
        for port, what in wanted:
            if probe.port_in_use(HOST, port):
                raise FedKafkaError(
                    f"port {port} (for {what}) is already in use on {HOST}; stop what "
                    "listens there or pass --base-port with another free range"
                )

    def _start_cluster(
        self, dist: KafkaDist, plan: ClusterPlan, heap: str, state: dict[str, Any],
        progress: Progress,
    ) -> list[procs.ProcessRecord]:
        progress(f"formatting and starting cluster {plan.name} ({len(plan.brokers)} broker(s))")
        out = []
        for b in plan.brokers:
            bdir = self.workdir / "clusters" / plan.name / f"broker-{b.node_id}"
            data = bdir / "data"
            bdir.mkdir(parents=True, exist_ok=True)
            props = bdir / "server.properties"
            secure = self._secure
            props.write_text(broker_properties(
                plan, b, data, secure.broker_overrides(b.port, b.controller_port)
                if secure is not None else None))
            if secure is not None:
                props.chmod(0o600)  # the inter-broker SCRAM password
            fmt = subprocess.run(
                dist.java_command(dist.storage_tool, "format", f"--cluster-id={plan.cluster_id}",
                                  "-c", str(props), "--ignore-formatted",
                                  *(secure.format_args() if secure is not None else []),
                                  heap="128m"),
                capture_output=True, text=True, check=False, timeout=120,
            )
            if fmt.returncode != 0:
                raise FedKafkaError(
                    f"formatting storage for {b.name} failed: "
                    f"{(fmt.stdout + fmt.stderr).strip().splitlines()[-1:]}"
                )
            ports = [b.port] + ([b.controller_port] if b.controller_port else [])
            rec, _ = procs.spawn(
                name=b.name, kind="kafka-broker",
                cmd=dist.java_command("kafka.Kafka", str(props), heap=heap),
                log=self.workdir / "logs" / f"{b.name}.log", ports=ports,
                marker=str(props),
            )
            rec.extra = {"cluster": plan.name, "node_id": b.node_id}
            state["processes"].append(rec.to_dict())
            self._save(state)
            out.append(rec)
        return out

    def _start_zookeeper(self, dist: ZooKeeperDist, port: int, state: dict[str, Any],
                         progress: Progress) -> procs.ProcessRecord:
        progress(f"starting ZooKeeper on {HOST}:{port}")
        zdir = self.workdir / "zookeeper"
        (zdir / "data").mkdir(parents=True, exist_ok=True)
        cfg = zdir / "zoo.cfg"
        cfg.write_text(
            f"tickTime=2000\ninitLimit=10\nsyncLimit=5\ndataDir={zdir / 'data'}\n"
            + (self._secure.zookeeper_config(port) if self._secure is not None
               else f"clientPort={port}\nclientPortAddress={HOST}\n")
            + "maxClientCnxns=200\nadmin.enableServer=false\n"
        )
        rec, _ = procs.spawn(name="zookeeper", kind="zookeeper",
                             cmd=dist.java_command(cfg), log=self.workdir / "logs" /
                             "zookeeper.log", ports=[port], marker=str(cfg))
        state["processes"].append(rec.to_dict())
        self._save(state)
        return rec

    def _wait_clusters(self, plans: list[ClusterPlan], started: list[procs.ProcessRecord],
                       timeout: float, progress: Progress,
                       security: dict[str, str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        pending = {p.name: p for p in plans}
        by_name = {r.name: r for r in started}
        t0 = time.monotonic()
        while pending:
            for name, plan in list(pending.items()):
                for b in plan.brokers:
                    rec = by_name[b.name]
                    if not procs.is_ours(rec):
                        raise FedKafkaError(
                            f"broker {b.name} exited during start-up; see its log "
                            f"{rec.log}:\n{procs.tail(Path(rec.log), 8)}"
                        )
                if self._cluster_ready(plan, security):
                    del pending[name]
                    progress(f"cluster {name} is up at {plan.bootstrap} "
                             f"({time.monotonic() - t0:.1f}s)")
            if not pending:
                break
            if time.monotonic() > deadline:
                names = ", ".join(sorted(pending))
                raise FedKafkaError(
                    f"cluster(s) {names} did not answer Metadata within {timeout:.0f}s; "
                    f"see the logs in {self.workdir / 'logs'}"
                )
            time.sleep(0.25)

    @staticmethod
    def _cluster_ready(plan: ClusterPlan, security: dict[str, str] | None = None) -> bool:
        want = {b.node_id for b in plan.brokers}
        for b in plan.brokers:
            try:
                answer = probe.metadata(HOST, b.port, timeout=1.0, security=security)
            except (OSError, probe.ProbeError):
                return False
            if {x.node_id for x in answer.brokers} != want:
                return False
        return True

    def _wait_zookeeper(self, port: int, started: list[procs.ProcessRecord],
                        timeout: float, tls: dict[str, str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if zookeeper_ok(HOST, port, tls):
                return
            time.sleep(0.2)
        raise FedKafkaError(f"ZooKeeper did not answer on {HOST}:{port} within {timeout:.0f}s; "
                            f"see {self.workdir / 'logs' / 'zookeeper.log'}")

    # -- down / status -----------------------------------------------------

    def down(self, grace: float = 20.0) -> list[tuple[str, str]]:
        state = self.load()
        if state is None:
            raise FedKafkaError(
                f"nothing to stop: no local federation was started in {self.workdir} "
                "(pass --workdir if it was started elsewhere)"
            )
        records = self.records(state)
        if not any(procs.is_ours(r) for r in records):
            raise FedKafkaError(
                f"nothing to stop: no process of the federation in {self.workdir} is running"
            )
        # Stop in reverse order of start: entry points first, metadata store last.
        outcomes = procs.stop(list(reversed(records)), grace=grace)
        if state.get("intent_tokens_file") and isinstance(state.get("store"), str):
            from federation.controller import intents

            intents.forget_store_credentials(state["store"])
        state["stopped_at"] = time.time()
        if state.get("secure"):  # no key or password outlives the federation
            local_secure.scrub(self.workdir)
            for props in (self.workdir / "clusters").glob("*/broker-*/server.properties"):
                props.unlink()
            for key in ("security", "probe_security"):
                state.pop(key, None)
        self._save(state)
        return outcomes

    def status(self) -> list[dict[str, Any]]:
        state = self.load()
        if state is None:
            raise FedKafkaError(f"no local federation in {self.workdir}; start one with "
                                "`fedkafka local up` (or pass --workdir)")
        rows = []
        for rec in self.records(state):
            alive = procs.is_ours(rec)
            health = "down"
            if alive:
                health = "starting"
                if rec.kind in ("kafka-broker", "proxy", "nameservice"):
                    try:
                        probe.metadata(HOST, rec.ports[0], timeout=1.0,
                                       security=_probe_security(state, rec.kind))
                        health = "healthy"
                    except (OSError, probe.ProbeError):
                        health = "not answering"
                elif rec.kind == "zookeeper":
                    health = ("healthy" if zookeeper_ok(HOST, rec.ports[0],
                                                        _probe_security(state, rec.kind))
                              else "not answering")
                else:
                    health = "running"
            rows.append({
                "name": rec.name, "kind": rec.kind, "pid": rec.pid if alive else None,
                "ports": rec.ports, "health": health,
                "rss_mb": round(procs.rss_mb(rec.pid) or 0) if alive else None,
                "log": rec.log,
            })
        return rows

    def _record(self, state: dict[str, Any], name: str) -> tuple[int, procs.ProcessRecord]:
        for i, p in enumerate(state.get("processes", [])):
            if p["name"] == name:
                return i, procs.ProcessRecord.from_dict(p)
        names = ", ".join(p["name"] for p in state.get("processes", [])) or "none"
        raise ConfigError(f"no component named {name!r} in {self.workdir}; known: {names}")

    def stop_component(self, name: str, grace: float = 20.0, kill: bool = False) -> None:
        """Stop one component (SIGTERM, or SIGKILL at once with ``kill``)."""
        state = self.load()
        if state is None:
            raise FedKafkaError(f"no local federation in {self.workdir}")
        _, rec = self._record(state, name)
        procs.stop([rec], grace=0.0 if kill else grace)

    def start_component(self, name: str, wait: float = 120.0) -> procs.ProcessRecord:
        """Start a stopped component again with the same command line, ports and log."""
        state = self.load()
        if state is None:
            raise FedKafkaError(f"no local federation in {self.workdir}")
        i, rec = self._record(state, name)
        if procs.is_ours(rec):
            raise FedKafkaError(f"{name} is already running (pid {rec.pid})")
        env = None
        if rec.kind == "proxy":
            env = {"MALLOC_MMAP_THRESHOLD_": str(8 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}
        new, _ = procs.spawn(rec.name, rec.kind, rec.cmd, Path(rec.log), rec.ports, rec.marker,
                             env=env)
        new.extra = rec.extra
        state["processes"][i] = new.to_dict()
        self._save(state)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not procs.is_ours(new):
                raise FedKafkaError(f"{name} exited during start-up; see {new.log}")
            if rec.kind == "zookeeper":
                if zookeeper_ok(HOST, new.ports[0], _probe_security(state, rec.kind)):
                    return new
            elif rec.kind in ("controller", "exporter", "prometheus"):
                if not probe.port_in_use(HOST, new.ports[0]):
                    time.sleep(0.2)
                    continue
                return new  # its metrics port is bound: it has started
            else:
                try:
                    probe.metadata(HOST, new.ports[0], timeout=1.0,
                                   security=_probe_security(state, rec.kind))
                    return new
                except (OSError, probe.ProbeError):
                    pass
            time.sleep(0.2)
        raise FedKafkaError(f"{name} did not answer within {wait:.0f}s; see {new.log}")

    def restart_component(self, name: str, kill: bool = False) -> procs.ProcessRecord:
        self.stop_component(name, kill=kill)
        return self.start_component(name)

    def log_path(self, name: str) -> Path:
        for rec in self.records():
            if rec.name == name:
                return Path(rec.log)
        names = ", ".join(r.name for r in self.records()) or "none"
        raise ConfigError(f"no component named {name!r} in {self.workdir}; known: {names}")


def _probe_security(state: dict[str, Any], kind: str) -> dict[str, str] | None:
    """How readiness probes reach a component of kind ``kind`` (None: plaintext)."""
    found: dict[str, str] | None = state.get("probe_security", {}).get(kind)
    return found


def zookeeper_ok(host: str, port: int, tls: dict[str, str] | None = None) -> bool:
    """ZooKeeper answers ``ruok`` (over TLS with ``tls``: ``ca``, ``cert``, ``key``)."""
    import socket
    import ssl

    try:
        with socket.create_connection((host, port), timeout=1.0) as raw:
            s = raw
            if tls:
                ctx = ssl.create_default_context(cafile=tls["ca"])
                ctx.load_cert_chain(tls["cert"], tls["key"])
                s = ctx.wrap_socket(raw, server_hostname=host)
            s.sendall(b"ruok")
            return s.recv(4) == b"imok"
    except OSError:
        return False


@contextlib.contextmanager
def temporary_federation(prefix: str, progress: Progress = _quiet,
                         **up_options: Any) -> Iterator[dict[str, Any]]:
    """A federation in a new temporary work dir, stopped (and removed) at the end.

    The work dir (with its logs) is kept when the block fails, and its path reported.
    """
    import shutil as _shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    fed = LocalFederation(tmp)
    ok = False
    try:
        progress(f"starting a local federation in {tmp}")
        state = fed.up(progress=progress, **up_options)
        yield state
        ok = True
    finally:
        if fed.running():
            progress("stopping the local federation")
            fed.down(grace=20)
        if ok:
            _shutil.rmtree(tmp, ignore_errors=True)
        else:
            progress(f"logs kept in {tmp / 'logs'}")
