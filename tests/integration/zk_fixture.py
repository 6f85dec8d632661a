"""A real ZooKeeper for the session, on loopback, started from ``install_zookeeper()``.

The fixture is registered in tests/conftest.py; ask for ``zookeeper`` in a test.
Port: ``FEDKAFKA_TEST_ZK_PORT``, default ``FEDKAFKA_TEST_BASE_PORT + 28``
(29120 with the default base), away from the clusters' ``base + 100*i`` ports.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from federation.clusters.probe import port_in_use
from federation.tooling import procs
from federation.tooling.kafka_dist import install_zookeeper
from federation.tooling.local import HOST, zookeeper_ok


def _port() -> int:
    if os.environ.get("FEDKAFKA_TEST_ZK_PORT"):
        return int(os.environ["FEDKAFKA_TEST_ZK_PORT"])
    return int(os.environ.get("FEDKAFKA_TEST_BASE_PORT", "29092")) + 28


def _serving(hosts: str) -> bool:
    client = KazooClient(hosts=hosts, timeout=2.0)
    try:
        client.start(timeout=1.0)
    except KazooTimeoutError:
        return False
    finally:
        client.stop()
        client.close()
    return True


@dataclass
class ZooKeeperServer:
    """One standalone ZooKeeper we started; ``restart()`` keeps its data directory."""

    workdir: Path
    port: int
    cmd: list[str]
    record: procs.ProcessRecord | None = None
    starts: int = field(default=0)

    @property
    def hosts(self) -> str:
        return f"{HOST}:{self.port}"

    def new_root(self) -> str:
        """A fresh root znode, so tests sharing the server don't see each other."""
        return f"/fktest-{uuid.uuid4().hex[:10]}"

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        self.record, proc = procs.spawn(
            name="zookeeper", kind="zookeeper", cmd=self.cmd,
            log=self.workdir / f"zookeeper-{self.starts}.log", ports=[self.port],
            marker=str(self.workdir / "zoo.cfg"))
        deadline = time.monotonic() + timeout
        while not (zookeeper_ok(HOST, self.port) and _serving(self.hosts)):
            if proc.poll() is not None:
                log = (self.workdir / f"zookeeper-{self.starts}.log").read_text()[-2000:]
                raise RuntimeError(f"ZooKeeper exited during start-up:\n{log}")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"ZooKeeper did not answer on {self.hosts}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.record is not None:
            procs.stop([self.record], grace=10)
            self.record = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _start_server(tmp_path_factory: pytest.TempPathFactory) -> ZooKeeperServer:
    port = _port()
    if port_in_use(HOST, port):
        pytest.fail(f"port {port} for the test ZooKeeper is taken; set FEDKAFKA_TEST_ZK_PORT")
    dist, _ = install_zookeeper()
    workdir = tmp_path_factory.mktemp("zookeeper")
    (workdir / "data").mkdir()
    cfg = workdir / "zoo.cfg"
    # tickTime 500 ms lets sessions be as short as 1 s, so failover tests stay fast.
    cfg.write_text(
        f"tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={workdir / 'data'}\n"
        f"clientPort={port}\nclientPortAddress={HOST}\nmaxClientCnxns=200\n"
        "admin.enableServer=false\n"
    )
    cmd = dist.java_command(cfg)
    server = ZooKeeperServer(workdir, port, cmd)
    server.start()
    return server


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """A real standalone ZooKeeper on loopback for the whole session (see conftest.py)."""
    server = _start_server(tmp_path_factory)
    try:
        yield server
    finally:
        server.stop()
