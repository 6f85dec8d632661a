"""Child processes we start and must be able to stop: spawn, identify, stop by PID.

Every process is started in its own session (process group), its output goes to
a log file, and it is recorded with the unique work directory on its command
line. Stopping checks that a PID still belongs to that command line before
signalling it, so a recycled PID is never killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class ProcessRecord:
    """One process of a local federation, as written to federation.json."""

    name: str
    kind: str
    pid: int
    ports: list[int]
    log: str
    cmd: list[str]
    marker: str = ""  # a string that must appear in /proc/PID/cmdline for the PID to be ours
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProcessRecord:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    name: str,
    kind: str,
    cmd: list[str],
    log: Path,
    ports: list[int],
    marker: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[ProcessRecord, subprocess.Popen[bytes]]:
    """Start ``cmd`` in its own session with stdout/stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    _children[proc.pid] = proc  # keep the handle: it reaps the child and avoids warnings
    record = ProcessRecord(name=name, kind=kind, pid=proc.pid, ports=ports, log=str(log),
                           cmd=cmd, marker=marker)
    return record, proc


def cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


def is_ours(record: ProcessRecord) -> bool:
    """True when ``record.pid`` is alive and is still the process we started."""
    child = _children.get(record.pid)
    if child is not None:
        # Started by this process: the handle knows (the java launcher may re-exec itself,
        # leaving /proc/PID/cmdline briefly empty).
        if child.poll() is None:
            return True
        del _children[record.pid]
        return False
    line = cmdline(record.pid)
    if line is None:
        return False
    try:
        with Path(f"/proc/{record.pid}/stat").open() as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            _reap(record.pid)
            return False
    except OSError:
        return False
    # An empty command line is a process between exec()s, not a recycled PID.
    return not record.marker or line.strip() == "" or record.marker in line


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _children[pid]
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal(pid: int, sig: signal.Signals) -> None:
    # Signal the process group first (its children too), then the process itself.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def stop(records: list[ProcessRecord], grace: float = 20.0) -> list[tuple[str, str]]:
    """Stop every live process of ``records``: SIGTERM, wait up to ``grace`` s, then SIGKILL.

    Returns (name, outcome) pairs, outcome one of "stopped", "killed", "not running".
    """
    outcomes: dict[str, str] = {}
    live = []
    for rec in records:
        if is_ours(rec):
            _signal(rec.pid, signal.SIGTERM)
            live.append(rec)
        else:
            outcomes[rec.name] = "not running"
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        for rec in list(live):
            _reap(rec.pid)
            if not is_ours(rec):
                outcomes[rec.name] = "stopped"
                live.remove(rec)
        if live:
            time.sleep(0.1)
    for rec in live:
        _signal(rec.pid, signal.SIGKILL)
    for rec in live:
        for _ in range(50):
            _reap(rec.pid)
            if not is_ours(rec):
                break
            time.sleep(0.1)
        outcomes[rec.name] = "killed"
    for rec in records:
        child = _children.pop(rec.pid, None)
        if child is not None and not is_ours(rec):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
    return [(rec.name, outcomes[rec.name]) for rec in records]


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MiB (None if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
