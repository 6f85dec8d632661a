"""``fedkafka bench --pin-proxy``: the proxy's processes (and their workers) on a CPU of
their own, every other process of the federation and the bench's clients on the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from federation.core.errors import ConfigError
from federation.tooling.bench import pin_proxy_apart

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")

# A "proxy" that starts a worker process below it, as `workers: 2` does.
PARENT = ("import subprocess, sys, time; "
          "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
          "time.sleep(60)")


@pytest.fixture
def own_affinity() -> Iterator[set[int]]:
    before = os.sched_getaffinity(0)
    try:
        yield before
    finally:
        os.sched_setaffinity(0, before)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return [int(x) for x in out.split()]


def test_proxy_and_its_workers_apart_from_brokers_and_clients(own_affinity: set[int]) -> None:
    if len(own_affinity) < 2:
        pytest.skip("needs 2 CPUs")
    cpus = sorted(own_affinity)
    proxy = subprocess.Popen([sys.executable, "-c", PARENT])
    broker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not workers:
            assert time.monotonic() < deadline, "the proxy's worker did not start"
            time.sleep(0.05)
            workers = _children(proxy.pid)
        worker = workers[0]
        state = {"processes": [{"kind": "proxy", "pid": proxy.pid},
                               {"kind": "kafka-broker", "pid": broker.pid}]}
        pinning = pin_proxy_apart(state)
        assert pinning == {"proxy": [cpus[-1]], "brokers_and_clients": cpus[:-1]}
        assert os.sched_getaffinity(proxy.pid) == {cpus[-1]}
        assert os.sched_getaffinity(worker) == {cpus[-1]}
        assert os.sched_getaffinity(broker.pid) == set(cpus[:-1])
        assert os.sched_getaffinity(0) == set(cpus[:-1])  # the clients: this process
    finally:
        for p in (proxy, broker):
            p.kill()
            p.wait()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)


def test_one_cpu_is_refused_with_the_reason(own_affinity: set[int]) -> None:
    os.sched_setaffinity(0, {min(own_affinity)})
    with pytest.raises(ConfigError, match="at least 2 CPUs"):
        pin_proxy_apart({"processes": []})
