"""The cgroup CPU caps of ``fedkafka bench-workers`` (federation/tooling/cgroups.py) against
directories laid out like cgroup v1 and v2 trees: no root, no kernel cgroups needed.

The kernel creates a cgroup's control files on ``mkdir`` and moves a process on each
write to ``cgroup.procs``; a plain directory does neither, so these tests check what the
helper writes where, and read ``/proc/PID/cgroup`` from a fake ``/proc``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from federation.tooling import bench_workers, cgroups
from federation.tooling.cgroups import CgroupError, CpuCaps, CpuHierarchy


def _v1(tmp: Path) -> Path:
    root = tmp / "cpu"
    root.mkdir()
    for name, text in (("cpu.cfs_quota_us", "-1"), ("cpu.cfs_period_us", "100000"),
                       ("cgroup.procs", ""), ("cpu.shares", "1024")):
        (root / name).write_text(text)
    return root


def _v2(tmp: Path, controllers: str = "cpuset cpu io memory pids") -> Path:
    root = tmp / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers)
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.procs").write_text("")
    return root


def _proc(tmp: Path, pid: int, text: str) -> Path:
    proc = tmp / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cgroup").write_text(text)
    return proc


@pytest.fixture(autouse=True)
def _rmdir_with_files(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real cgroup directory goes with its control files; a fake one holds plain files.
    monkeypatch.setattr(cgroups, "_rmdir", shutil.rmtree)


def test_finds_v2_with_cpu_first_then_v1(tmp_path: Path) -> None:
    v1 = _v1(tmp_path)
    v2 = _v2(tmp_path)
    assert cgroups.find_cpu_hierarchy((v1,), (v2,)) == CpuHierarchy(2, v2)
    # A hybrid host: v2 mounted without the cpu controller (bound to v1).
    (v2 / "cgroup.controllers").write_text("hugetlb")
    assert cgroups.find_cpu_hierarchy((v1,), (v2,)) == CpuHierarchy(1, v1)


def test_names_what_is_missing_when_nothing_is_usable(tmp_path: Path) -> None:
    v2 = _v2(tmp_path, controllers="hugetlb")
    nothing = tmp_path / "cpu"
    with pytest.raises(CgroupError) as e:
        cgroups.find_cpu_hierarchy((nothing,), (v2,))
    msg = str(e.value)
    assert f"{v2}: cgroup v2 without the cpu controller" in msg
    assert f"{nothing}: no cgroup v1 cpu controller (cpu.cfs_quota_us missing)" in msg
    assert "cpu.max" in msg


def test_quota_is_the_share_of_the_period_and_at_least_1ms() -> None:
    assert cgroups.quota_us(0.2, 100_000) == 20_000
    assert cgroups.quota_us(1.5, 100_000) == 150_000
    assert cgroups.quota_us(0.001, 100_000) == cgroups.MIN_QUOTA_US
    with pytest.raises(ValueError):
        cgroups.quota_us(0, 100_000)


def test_v1_caps_moves_and_removes(tmp_path: Path) -> None:
    root = _v1(tmp_path)
    proc = _proc(tmp_path, 4242, "4:memory:/x\n1:cpu:/\n0::/\n")
    caps = CpuCaps(CpuHierarchy(1, root), name="fedkafka-t", proc=proc)
    with caps:
        path = caps.cap("w0", [4242], 0.15)
        (proc / "4242" / "cgroup").write_text("4:memory:/x\n1:cpu:/fedkafka-t/w0\n0::/\n")
        assert path == root / "fedkafka-t" / "w0"
        assert (path / "cpu.cfs_period_us").read_text() == "100000"
        assert (path / "cpu.cfs_quota_us").read_text() == "15000"
        assert (path / "cpu.shares").read_text() == str(cgroups.V1_MAX_SHARES)
        assert (root / "fedkafka-t" / "cpu.shares").read_text() == str(cgroups.V1_MAX_SHARES)
        assert caps.members("w0") == [4242]
        assert caps.caps["w0"] == pytest.approx(0.15)
        assert caps.path_of("w0") == "/fedkafka-t/w0"
        assert caps.contains("w0", 4242)
        assert not caps.contains("w0", 999)  # no such process
        (path / "cpu.stat").write_text("nr_periods 50\nnr_throttled 48\n"
                                       "throttled_time 2500000000\n")
        assert caps.stat("w0") == {"nr_periods": 50, "nr_throttled": 48, "throttled_s": 2.5}
        caps.prioritize("rest", [4242])
        assert "cpu.cfs_quota_us" not in {p.name for p in (root / "fedkafka-t" / "rest")
                                          .iterdir()}
    # Removed at the end; a process still inside went back where it came from (the
    # origin recorded at its first move: the root).
    assert not (root / "fedkafka-t").exists()
    assert (root / "cgroup.procs").read_text() == "4242"
    assert caps.children == {}


def test_v2_enables_cpu_and_writes_cpu_max(tmp_path: Path) -> None:
    root = _v2(tmp_path)
    (root / "origin").mkdir()
    (root / "origin" / "cgroup.procs").write_text("")
    proc = _proc(tmp_path, 7, "0::/origin\n")
    caps = CpuCaps(CpuHierarchy(2, root), name="fk", period_us=50_000, proc=proc)
    caps.open()
    assert (root / "cgroup.subtree_control").read_text() == "+cpu"
    assert (root / "fk" / "cgroup.subtree_control").read_text() == "+cpu"
    path = caps.cap("w1", [7], 0.2)
    assert (path / "cpu.max").read_text() == "10000 50000"
    assert (path / "cpu.weight").read_text() == str(cgroups.V2_MAX_WEIGHT)
    (path / "cpu.stat").write_text("usage_usec 2000000\nnr_periods 40\nnr_throttled 39\n"
                                   "throttled_usec 1500000\n")
    assert caps.stat("w1") == {"nr_periods": 40, "nr_throttled": 39, "throttled_s": 1.5,
                               "usage_s": 2.0}
    assert caps.close() == []
    # The process was moved back to its own cgroup before the group went.
    assert (root / "origin" / "cgroup.procs").read_text() == "7"
    assert not (root / "fk").exists()


def test_no_reserve_leaves_the_weight_alone(tmp_path: Path) -> None:
    root = _v1(tmp_path)
    with CpuCaps(CpuHierarchy(1, root), name="fk", reserve=False,
                 proc=tmp_path / "noproc") as caps:
        path = caps.cap("w0", [], 0.1)
        assert not (path / "cpu.shares").exists()


def test_a_leftover_group_is_refused_and_kept(tmp_path: Path) -> None:
    root = _v1(tmp_path)
    (root / "fk").mkdir()
    with pytest.raises(CgroupError, match="already exists"):
        CpuCaps(CpuHierarchy(1, root), name="fk").open()
    assert (root / "fk").is_dir()


def test_an_unremovable_group_is_reported(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = _v1(tmp_path)
    caps = CpuCaps(CpuHierarchy(1, root), name="fk", proc=tmp_path / "noproc")
    caps.open()
    caps.cap("w0", [], 0.1)

    def busy(path: Path) -> None:
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(cgroups, "_rmdir", busy)
    monkeypatch.setattr(cgroups, "RMDIR_WAIT", -1.0)
    assert caps.close() == [root / "fk" / "w0", root / "fk"]


def test_process_cgroup_reads_the_cpu_line(tmp_path: Path) -> None:
    proc = _proc(tmp_path, 1, "3:cpuset:/\n2:cpu,cpuacct:/a/b\n0::/c\n")
    assert cgroups.process_cgroup(1, 1, proc) == "/a/b"
    assert cgroups.process_cgroup(1, 2, proc) == "/c"
    assert cgroups.process_cgroup(2, 1, proc) is None


def _run(workers: int, mb: float, *, cpu: float = 0.1, spare: float = 0.3,
         in_cgroup: bool = True, received: float = 1.02) -> dict[str, object]:
    run: dict[str, object] = {
        "workers": workers, "mb_per_s": mb, "spare_share": spare,
        "received_mb_per_s": mb * received,
        "per_worker": [{"in_cgroup": in_cgroup, "restarted": False, "record_mb_per_s": 5.0,
                        "connections": 3, "cpu_util": cpu, "cap_cpus": 0.1}
                       for _ in range(workers)],
    }
    run["checks"] = bench_workers.checks(run)
    return run


def test_checks_and_summary() -> None:
    good = _run(1, 50.0)
    assert all(good["checks"].values())  # type: ignore[union-attr]
    assert _run(2, 90.0, cpu=0.05)["checks"]["workers_at_cap"] is False  # type: ignore[index]
    assert _run(2, 90.0, spare=0.02)["checks"]["spare_cpu"] is False  # type: ignore[index]
    assert _run(2, 90.0, in_cgroup=False)["checks"]["in_cgroups"] is False  # type: ignore[index]
    # Acknowledgements lagging what the workers received: the window was not steady.
    assert _run(1, 30.0, received=1.3)["checks"]["steady"] is False  # type: ignore[index]
    summary = bench_workers.summarize([good, _run(2, 95.0), _run(1, 40.0), _run(2, 91.0)])
    assert summary["mb_per_s_median"] == {"1": 45.0, "2": 93.0}
    assert summary["ratio_2_over_1"] == pytest.approx(93 / 45, abs=1e-3)
    assert summary["met"] is True and summary["isolated"] is True
    low = bench_workers.summarize([_run(1, 50.0), _run(2, 80.0, cpu=0.05)])
    assert low["met"] is False and low["isolated"] is False


def test_workers_option_parses_a_list() -> None:
    assert bench_workers._parse_workers("1,2") == (1, 2)
    assert bench_workers._parse_workers("1, 2, 4") == (1, 2, 4)
    for bad in ("", "0,1", "a"):
        with pytest.raises(Exception, match="--workers"):
            bench_workers._parse_workers(bad)
