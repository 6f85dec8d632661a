"""Several worker processes per proxy, sharing its listener (``workers: N``).

One Python process serves its connections on one core. With ``workers`` > 1 the
``fedkafka proxy`` process becomes a small supervisor: it starts N worker processes
(``fedkafka proxy --config FILE --worker I``), each a full proxy (its own event loop,
upstream connections, map copy and member record in the store) bound to the same
listen address with ``SO_REUSEPORT``, so the kernel spreads new client connections
over them. See docs/adr/0018-proxy-worker-processes-and-raw-fetch.md.

- Worker ``I`` serves Prometheus metrics on the configured metrics port + ``I``, and
  registers in the store as ``HOST:PORT/wI`` (each worker acknowledges writes on its
  own, so each reports its own fences); only worker 0 serves the name service's HTTP API.
- SIGTERM/SIGINT to the supervisor is passed to every worker, which finishes its
  in-flight requests (``shutdown_grace``); a worker still running ``shutdown_grace`` + 10 s
  later is killed. The workers get SIGTERM from the kernel if the supervisor dies
  (``PR_SET_PDEATHSIG``), so none is left behind.
- A worker that exits on its own is started again; one that fails within
  :data:`FAST_FAILURE` seconds of its start (a bad config, the port taken) stops the
  whole proxy with its exit status.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Final

from federation.proxy.config import ProxyConfig

log = logging.getLogger("fedkafka.proxy")

FAST_FAILURE: Final = 5.0
"""A worker exiting sooner than this after its start is a failure, not a crash to retry."""
_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def worker_command(config_path: Path, workers: int, index: int, log_level: str) -> list[str]:
    return [sys.executable, "-m", "federation.cli.main", "proxy", "--config", str(config_path),
            "--workers", str(workers), "--worker", str(index), "--log-level", log_level]


class Supervisor:
    """Starts, watches and stops the worker processes of one proxy."""

    def __init__(self, config: ProxyConfig, config_path: Path, log_level: str) -> None:
        self.config = config
        self.config_path = config_path
        self.log_level = log_level
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self._stop = threading.Event()
        self.exit_code = 0

    def _start(self, index: int) -> None:
        cmd = worker_command(self.config_path, self.config.workers, index, self.log_level)
        proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent)
        self.procs[index] = proc
        self.started[index] = time.monotonic()
        log.info("proxy %d: worker %d of %d started (pid %d)", self.config.node_id,
                 index + 1, self.config.workers, proc.pid)

    def stop(self, *_: object) -> None:
        self._stop.set()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or a worker fails at start); the exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        try:
            for i in range(self.config.workers):
                self._start(i)
            while not self._stop.wait(0.2):
                for index, proc in list(self.procs.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    # A worker that exits on its own right after its start cannot serve (bad
                    # config, port taken): stop. One killed by a signal is started again.
                    if code > 0 and time.monotonic() - self.started[index] < FAST_FAILURE:
                        log.error("proxy %d: worker %d exited with status %d right after its "
                                  "start; stopping the proxy (see its log above)",
                                  self.config.node_id, index + 1, code)
                        self.exit_code = code or 1
                        self._stop.set()
                        break
                    log.warning("proxy %d: worker %d (pid %d) exited with status %d; "
                                "starting it again", self.config.node_id, index + 1,
                                proc.pid, code)
                    self._start(index)
        finally:
            self._shutdown()
        return self.exit_code

    def _shutdown(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_grace + 10.0
        for index, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("proxy %d: worker %d (pid %d) did not stop in time; killing it",
                            self.config.node_id, index + 1, proc.pid)
                proc.kill()
                proc.wait()


def run_proxy(config: ProxyConfig, config_path: Path, log_level: str,
              worker: int | None = None) -> int:
    """``fedkafka proxy``: one proxy in this process, or its supervisor when ``workers`` >
    1 (``worker``: run that worker of it). Returns the exit status."""
    import dataclasses

    from federation.core.runloop import run_loop
    from federation.proxy.server import serve

    if worker is not None:
        if not 0 <= worker < config.workers:
            from federation.core.errors import ConfigError

            raise ConfigError(f"--worker {worker} is outside 0..{config.workers - 1} "
                              f"(the config's workers: {config.workers})")
        run_loop(serve(dataclasses.replace(config, worker=worker)))
        return 0
    if config.workers <= 1:
        run_loop(serve(config))
        return 0
    return Supervisor(config, config_path, log_level).run()
