"""CPU caps for processes with Linux control groups (``fedkafka bench-workers``).

A process moved into a cgroup with a CPU quota gets at most ``quota / period`` of one
core, whatever else the machine does: a worker capped at 0.2 CPU stands in for one core
of a larger host. Both hierarchies are supported:

* **cgroup v1**, the ``cpu`` controller's own hierarchy (``/sys/fs/cgroup/cpu`` or
  ``/sys/fs/cgroup/cpu,cpuacct``): ``cpu.cfs_period_us`` and ``cpu.cfs_quota_us``;
* **cgroup v2** (``/sys/fs/cgroup/unified`` on hybrid systems, ``/sys/fs/cgroup`` on
  unified ones) when its ``cgroup.controllers`` lists ``cpu``: ``cpu.max`` (``"QUOTA
  PERIOD"``), after ``+cpu`` in the parents' ``cgroup.subtree_control``.

:class:`CpuCaps` makes one parent group (``fedkafka-bench-<pid>``) with a child per
capped set of processes, and removes them all at the end (processes still inside are
moved back to the cgroup they came from first). Nothing here needs more than the files
of the hierarchy and ``/proc/PID/cgroup``, so the logic runs against a directory laid
out like a cgroup tree (the unit tests) as well as against the kernel's.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from federation.core.errors import FedKafkaError

V1_ROOTS: Final = (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cpu,cpuacct"))
V2_ROOTS: Final = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
DEFAULT_PERIOD_US: Final = 100_000
V1_MAX_SHARES: Final = 262_144
V2_MAX_WEIGHT: Final = 10_000
MIN_QUOTA_US: Final = 1_000  # the kernel refuses smaller quotas
RMDIR_WAIT = 5.0
"""Seconds a group that is still busy (a process just exited, not yet reaped) is retried."""


class CgroupError(FedKafkaError):
    """No writable CPU cgroup hierarchy, or one that refused a change."""


@dataclass(frozen=True, slots=True)
class CpuHierarchy:
    """Where CPU cgroups can be made: ``version`` 1 or 2, ``root`` its mount point."""

    version: int
    root: Path


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def find_cpu_hierarchy(v1_roots: tuple[Path, ...] = V1_ROOTS,
                       v2_roots: tuple[Path, ...] = V2_ROOTS) -> CpuHierarchy:
    """The first writable CPU cgroup hierarchy: v2 with the ``cpu`` controller, else v1.

    :raises CgroupError: naming, for every place looked at, what was missing.
    """
    problems: list[str] = []
    for root in v2_roots:
        controllers = root / "cgroup.controllers"
        if not controllers.is_file():
            problems.append(f"{root}: no cgroup v2 here ({controllers.name} missing)")
            continue
        available = controllers.read_text().split()
        if "cpu" not in available:
            problems.append(f"{root}: cgroup v2 without the cpu controller (cgroup.controllers: "
                            f"{' '.join(available) or 'empty'}; cpu is bound to a v1 hierarchy "
                            "or not delegated)")
            continue
        control = root / "cgroup.subtree_control"
        if not (control.is_file() and _writable(control) and _writable(root)):
            problems.append(f"{root}: cgroup v2 with cpu, but {control} or the directory is not "
                            "writable (run as root, or delegate a writable subtree)")
            continue
        return CpuHierarchy(2, root)
    for root in v1_roots:
        quota = root / "cpu.cfs_quota_us"
        if not quota.is_file():
            problems.append(f"{root}: no cgroup v1 cpu controller ({quota.name} missing)")
            continue
        if not _writable(root):
            problems.append(f"{root}: cgroup v1 cpu controller, but not writable (run as "
                            "root; a container needs cgroups mounted read-write)")
            continue
        return CpuHierarchy(1, root)
    raise CgroupError("cannot cap CPU with cgroups: " + "; ".join(problems)
                      + ". bench-workers needs a writable cgroup v1 `cpu` hierarchy "
                        "(cpu.cfs_quota_us) or cgroup v2 with the cpu controller (cpu.max)")


def quota_us(cpus: float, period_us: int) -> int:
    """The quota per ``period_us`` that caps at ``cpus`` cores (at least the kernel's 1 ms)."""
    if cpus <= 0:
        raise ValueError(f"a CPU cap must be positive, not {cpus}")
    return max(MIN_QUOTA_US, round(cpus * period_us))


def process_cgroup(pid: int, version: int, proc: Path = Path("/proc")) -> str | None:
    """The cgroup path of ``pid`` in the v1 ``cpu`` hierarchy or in v2 (``/a/b``), None
    when the process is gone or not in that hierarchy."""
    try:
        lines = (proc / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if version == 2 and parts[0] == "0" and controllers == "":
            return path
        if version == 1 and "cpu" in controllers.split(","):
            return path
    return None


def _rmdir(path: Path) -> None:
    """Remove a cgroup directory (its control files go with it; tests replace this)."""
    path.rmdir()


@dataclass
class CpuCaps:
    """Child cgroups with CPU caps under one parent group; :meth:`close` removes them.

    Use as a context manager. ``name`` is the parent group, made under the hierarchy's
    root (default ``fedkafka-bench-<pid>``).
    """

    hierarchy: CpuHierarchy
    name: str = field(default_factory=lambda: f"fedkafka-bench-{os.getpid()}")
    period_us: int = DEFAULT_PERIOD_US
    reserve: bool = True
    proc: Path = Path("/proc")
    children: dict[str, Path] = field(default_factory=dict)
    origins: dict[int, str] = field(default_factory=dict)
    caps: dict[str, float] = field(default_factory=dict)

    @property
    def group(self) -> Path:
        return self.hierarchy.root / self.name

    def __enter__(self) -> CpuCaps:
        self.open()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def open(self) -> None:
        root = self.hierarchy.root
        if self.hierarchy.version == 2:
            self._enable_cpu(root)
        try:
            self.group.mkdir()
        except FileExistsError:
            raise CgroupError(f"{self.group} already exists (a run still going, or one that "
                              "could not clean up: rmdir it once it is empty)") from None
        except OSError as e:
            raise CgroupError(f"cannot create the cgroup {self.group}: {e}") from e
        if self.hierarchy.version == 2:
            self._enable_cpu(self.group)
        self._set_weight(self.group)

    def _set_weight(self, path: Path) -> None:
        """With ``reserve``, the highest CPU weight: a capped process then gets its whole
        quota whenever it can run, however busy the rest of the machine is (the cap is
        a reserved slice, like a core of its own), and never more than the quota."""
        if not self.reserve:
            return
        try:
            if self.hierarchy.version == 1:
                (path / "cpu.shares").write_text(str(V1_MAX_SHARES))
            else:
                (path / "cpu.weight").write_text(str(V2_MAX_WEIGHT))
        except OSError as e:
            raise CgroupError(f"cannot set the CPU weight of {path}: {e}") from e

    def _enable_cpu(self, where: Path) -> None:
        control = where / "cgroup.subtree_control"
        try:
            enabled = control.read_text().split() if control.exists() else []
            if "cpu" not in enabled:
                control.write_text("+cpu")
        except OSError as e:
            raise CgroupError(f"cannot enable the cpu controller in {control}: {e}") from e

    def path_of(self, label: str) -> str:
        """The cgroup path of a child as ``/proc/PID/cgroup`` shows it."""
        rel = self.children[label].relative_to(self.hierarchy.root)
        return "/" + rel.as_posix()

    def cap(self, label: str, pids: list[int], cpus: float) -> Path:
        """Make the child ``label`` capped at ``cpus`` cores and move ``pids`` (whole
        processes, every thread) into it; returns its directory."""
        quota = quota_us(cpus, self.period_us)
        path = self.group / label
        try:
            path.mkdir()
            self.children[label] = path  # removed by close() from here on
            if self.hierarchy.version == 1:
                (path / "cpu.cfs_period_us").write_text(str(self.period_us))
                (path / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (path / "cpu.max").write_text(f"{quota} {self.period_us}")
            self._set_weight(path)
        except OSError as e:
            raise CgroupError(f"cannot create the capped cgroup {path}: {e}") from e
        self.caps[label] = quota / self.period_us
        self.move(label, pids)
        return path

    def prioritize(self, label: str, pids: list[int]) -> Path:
        """Make the child ``label`` without a cap (with ``reserve``: the highest CPU
        weight) and move ``pids`` into it; returns its directory."""
        path = self.group / label
        try:
            path.mkdir()
            self.children[label] = path
            self._set_weight(path)
        except OSError as e:
            raise CgroupError(f"cannot create the cgroup {path}: {e}") from e
        self.move(label, pids)
        return path

    def move(self, label: str, pids: list[int]) -> None:
        """Move ``pids`` (whole processes) into the child ``label``."""
        path = self.children[label]
        for pid in pids:
            self.origins.setdefault(pid, process_cgroup(pid, self.hierarchy.version,
                                                        self.proc) or "/")
            try:
                (path / "cgroup.procs").write_text(str(pid))
            except OSError as e:
                raise CgroupError(f"cannot move process {pid} into {path}: {e}") from e

    def contains(self, label: str, pid: int) -> bool:
        """Whether the kernel reports ``pid`` in the child ``label``."""
        return process_cgroup(pid, self.hierarchy.version, self.proc) == self.path_of(label)

    def members(self, label: str) -> list[int]:
        try:
            text = (self.children[label] / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(x) for x in text.split()]

    def stat(self, label: str) -> dict[str, float]:
        """The child's ``cpu.stat``: ``nr_periods``, ``nr_throttled``, ``throttled_s``
        (and ``usage_s`` with v2)."""
        try:
            lines = (self.children[label] / "cpu.stat").read_text().splitlines()
        except OSError:
            return {}
        raw = {k: int(v) for k, v in (ln.split()[:2] for ln in lines if len(ln.split()) >= 2)
               if v.lstrip("-").isdigit()}
        out: dict[str, float] = {k: raw[k] for k in ("nr_periods", "nr_throttled") if k in raw}
        if "throttled_time" in raw:  # v1: nanoseconds
            out["throttled_s"] = raw["throttled_time"] / 1e9
        if "throttled_usec" in raw:  # v2
            out["throttled_s"] = raw["throttled_usec"] / 1e6
        if "usage_usec" in raw:
            out["usage_s"] = raw["usage_usec"] / 1e6
        return out

    def release(self, label: str) -> bool:
        """Remove the child ``label``, moving processes still in it back where they came
        from first. True when it is gone."""
        path = self.children.get(label)
        if path is None:
            return True
        for pid in self.members(label):
            origin = self.origins.get(pid, "/")
            target = self.hierarchy.root / origin.lstrip("/")
            for dest in (target, self.hierarchy.root):
                with contextlib.suppress(OSError):
                    (dest / "cgroup.procs").write_text(str(pid))
                    break
        # A process that just exited can keep the group busy for a moment (until reaped).
        deadline = time.monotonic() + RMDIR_WAIT
        while True:
            try:
                _rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
        del self.children[label]
        return True

    def close(self) -> list[Path]:
        """Remove every child and the parent group; the directories that could not be
        removed (empty when all went)."""
        left = [self.children[label] for label in list(self.children)
                if not self.release(label)]
        if self.group.exists():
            try:
                _rmdir(self.group)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(self.group)
        return left
