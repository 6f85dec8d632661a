"""`fedkafka local …` and `fedkafka kafka install` as a user runs them, bad input included."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federation.clusters import probe
from federation.tooling import procs
from federation.tooling.testing.clients import KcatClient

FEDKAFKA = [sys.executable, "-m", "federation.cli.main"]
BASE = int(os.environ.get("FEDKAFKA_TEST_CLI_BASE_PORT", "22092"))


def wait_until_leader_serves(bootstrap: str, topic: str, partition: int,
                             timeout: float = 120) -> None:
    """Wait until the partition's leader answers for it (ListOffsets, via ``kcat -Q``).

    CreateTopics returns once the controller committed the topic; the broker learns of it
    later, and its metadata can name a leader before the log is ready to take writes.
    """
    deadline = time.monotonic() + timeout
    while True:
        q = subprocess.run(["kcat", "-b", bootstrap, "-Q", "-t", f"{topic}:{partition}:-1"],
                           capture_output=True, text=True, timeout=60, check=False)
        if q.returncode == 0 and f"{topic} [{partition}] offset " in q.stdout:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic} [{partition}] has no serving leader on {bootstrap} "
                                 f"after {timeout}s: {q.stdout}{q.stderr}")
        time.sleep(0.2)


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDKAFKA, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


@pytest.mark.integration
def test_local_up_status_logs_down(tmp_path: Path, kafka_dist: object) -> None:
    wd = tmp_path / "fed"
    up = run("local", "up", "--clusters", "3", "--workdir", str(wd), "--base-port", str(BASE))
    assert up.returncode == 0, up.stderr
    state = json.loads((wd / "federation.json").read_text())
    try:
        names = [c["name"] for c in state["clusters"]]
        assert names == ["c1", "c2", "c3"]
        assert len({c["cluster_id"] for c in state["clusters"]}) == 3
        assert state["bootstrap"]
        for c in state["clusters"]:
            host, port = c["bootstrap"].split(":")
            answer = probe.metadata(host, int(port))
            assert [b.port for b in answer.brokers] == [int(port)]
            assert answer.cluster_id == c["cluster_id"]
            if shutil.which("kcat"):
                listing = subprocess.run(["kcat", "-b", c["bootstrap"], "-L"],
                                         capture_output=True, text=True, timeout=30, check=False)
                assert f"broker 1 at {c['bootstrap']}" in listing.stdout
        for p in state["processes"]:
            assert {"name", "pid", "ports", "log"} <= p.keys()
            assert Path(p["log"]).exists()

        st = run("local", "status", "--workdir", str(wd), "--json")
        assert st.returncode == 0, st.stderr
        comps = json.loads(st.stdout)["components"]
        assert {c["name"]: c["health"] for c in comps} == {
            "c1-b1": "healthy", "c2-b1": "healthy", "c3-b1": "healthy", "proxy-1": "healthy",
            "nameservice": "healthy", "controller-1": "running", "exporter": "running"}
        # The federation's entry point is the name service, which answers with the proxies.
        host, port = state["bootstrap"].split(":")
        assert [b.port for b in probe.metadata(host, int(port)).brokers] == [
            p["port"] for p in state["proxies"]]
        # Producing to one physical cluster and consuming from it works (kcat).
        if shutil.which("kcat"):
            c3 = state["clusters"][2]["bootstrap"]
            from tests.integration.kafka_admin import create_topic

            create_topic(c3, "direct", 1)
            wait_until_leader_serves(c3, "direct", 0)
            # Idempotent, acks=all, exit code and delivery reports checked: a batch retried
            # on a just-created partition can neither be lost nor overtaken by a later one.
            KcatClient().produce(c3, "direct", [(None, f"m{i}".encode()) for i in range(50)],
                                 idempotent=True)
            cons = subprocess.run(["kcat", "-b", c3, "-C", "-t", "direct", "-o", "beginning",
                                   "-e", "-f", "%p %o %s\n"], text=True, capture_output=True,
                                  timeout=120, check=False)
            assert cons.returncode == 0, cons.stderr
            assert cons.stdout.splitlines() == [f"0 {i} m{i}" for i in range(50)], cons.stderr
        logs = run("local", "logs", "c1-b1", "--workdir", str(wd))
        assert "Kafka Server started" in logs.stdout

        again = run("local", "up", "--clusters", "1", "--workdir", str(wd), "--base-port",
                    str(BASE + 1000))
        assert again.returncode != 0
        assert "already running" in again.stderr
    finally:
        down = run("local", "down", "--workdir", str(wd))
    assert down.returncode == 0, down.stderr
    for p in state["processes"]:
        assert not procs.is_ours(procs.ProcessRecord.from_dict(p)), p["name"]
    ours = subprocess.run(["pgrep", "-f", str(wd)], capture_output=True, text=True, check=False)
    assert ours.stdout.strip() == "", "no java (or other) process of this federation is left"
    second = run("local", "down", "--workdir", str(wd))
    assert second.returncode == 1
    assert "nothing to stop" in second.stderr


@pytest.mark.integration
def test_port_in_use_is_refused_before_anything_starts(tmp_path: Path, kafka_dist: object
                                                       ) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", BASE + 2100))  # cluster c1's broker port for base BASE+2000
        s.listen()
        res = run("local", "up", "--clusters", "1", "--workdir", str(tmp_path / "w"),
                  "--base-port", str(BASE + 2000))
    assert res.returncode == 1
    assert f"port {BASE + 2100}" in res.stderr and "already in use" in res.stderr
    assert "--base-port" in res.stderr
    assert not (tmp_path / "w" / "federation.json").exists()


def test_down_with_nothing_running(tmp_path: Path) -> None:
    res = run("local", "down", "--workdir", str(tmp_path))
    assert res.returncode == 1
    assert "nothing to stop" in res.stderr
    assert "Traceback" not in res.stderr


def test_unwritable_workdir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    res = run("local", "up", "--workdir", str(blocker / "sub"))
    assert res.returncode == 1
    assert "not writable" in res.stderr and "--workdir" in res.stderr


def test_missing_java(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "JAVA_HOME": ""}
    res = run("local", "up", "--workdir", str(tmp_path / "w"), env=env)
    assert res.returncode == 1
    assert "java was not found" in res.stderr and "JAVA_HOME" in res.stderr


def test_bad_arguments_name_the_option(tmp_path: Path) -> None:
    res = run("local", "up", "--clusters", "0", "--workdir", str(tmp_path / "w"))
    assert res.returncode == 2 and "--clusters" in res.stderr
    res = run("local", "up", "--metadata", "etcd", "--workdir", str(tmp_path / "w"))
    assert res.returncode == 2 and "--metadata" in res.stderr
    res = run("kafka", "install", "--version", "four")
    assert res.returncode == 2 and "--version" in res.stderr


@pytest.mark.integration
def test_unknown_kafka_version(tmp_path: Path) -> None:
    res = run("kafka", "install", "--version", "9.9.9",
              env={"FEDKAFKA_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 1
    assert "not on Maven Central" in res.stderr and "--version" in res.stderr
    assert not (tmp_path / "cache" / "kafka" / "9.9.9").exists()


def test_unreachable_maven(tmp_path: Path) -> None:
    settings = tmp_path / "settings.xml"
    settings.write_text(
        "<settings><mirrors><mirror><id>dead</id><mirrorOf>*</mirrorOf>"
        "<url>http://127.0.0.1:9/maven2</url></mirror></mirrors></settings>"
    )
    res = run("kafka", "install", "--version", "4.0.0",
              env={"FEDKAFKA_CACHE": str(tmp_path / "cache"),
                   "FEDKAFKA_MAVEN_SETTINGS": str(settings),
                   "FEDKAFKA_MAVEN_REPO": str(tmp_path / "m2")})
    assert res.returncode == 1
    assert "could not be reached" in res.stderr
    assert not (tmp_path / "cache" / "kafka" / "4.0.0").exists()


def test_install_twice_reuses_cache(kafka_dist: object) -> None:
    res = run("kafka", "install")
    assert res.returncode == 0
    assert "already cached" in res.stderr
    assert Path(res.stdout.strip(), "libs").is_dir()
