"""Limits read from fake cgroup trees (v1 and v2), and what `auto` makes of them: a container with 1 CPU and
1 GB trains with 1 thread and a 0.8 GB cap, not with the host's 2 threads and 6 GB."""

from __future__ import annotations

from pathlib import Path

import pytest

from xylen.core.cgroup import Limits, read_limits, usable_cores
from xylen.profiles import resolve

pytestmark = pytest.mark.unit
GB = 2**30


def write(root: Path, rel: str, text: str) -> None:
    f = root / rel
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text)


def v2(tmp_path: Path, files: dict[str, str], path: str = "/system.slice/xylen-retrain.service") -> Limits:
    root = tmp_path / "cg"
    write(root, "cgroup.controllers", "cpu memory pids\n")
    for rel, text in files.items():
        write(root, rel, text)
    (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    write(tmp_path, "proc", f"0::{path}\n")
    return read_limits(root, tmp_path / "proc")


def test_v2_the_tightest_limit_on_the_path_up_wins(tmp_path: Path) -> None:
    lim = v2(tmp_path, {
        "memory.max": "max\n",
        "system.slice/memory.max": str(4 * GB),
        "system.slice/xylen-retrain.service/memory.max": str(7 * GB),  # a child cannot exceed its parent
        "system.slice/xylen-retrain.service/cpu.max": "150000 100000\n",
        "system.slice/cpu.max": "max 100000\n",
    })
    assert lim == Limits(4 * GB, 1.5)


def test_v2_no_limits_and_garbage_are_no_limit(tmp_path: Path) -> None:
    assert v2(tmp_path, {"memory.max": "max\n", "cpu.max": "max 100000\n"}) == Limits(None, None)
    assert v2(tmp_path / "b", {"memory.max": "lots\n", "cpu.max": "1 0\n"}) == Limits(None, None)


def test_v2_a_container_whose_own_cgroup_is_the_mount_root(tmp_path: Path) -> None:
    assert v2(tmp_path, {"memory.max": str(GB), "cpu.max": "100000 100000"}, path="/") == Limits(GB, 1.0)


def test_v1_docker_limits_and_the_no_limit_value(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    cid = "docker/abc123"
    write(root, "memory/memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    write(root, f"memory/{cid}/memory.limit_in_bytes", f"{3 * GB}\n")
    write(root, "cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    write(root, "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    write(root, f"cpu,cpuacct/{cid}/cpu.cfs_quota_us", "50000\n")
    write(root, f"cpu,cpuacct/{cid}/cpu.cfs_period_us", "100000\n")
    write(tmp_path, "proc", f"12:memory:/{cid}\n4:cpu,cpuacct:/{cid}\n0::/\n")
    assert read_limits(root, tmp_path / "proc") == Limits(3 * GB, 0.5)
    # inside the container: its own cgroup is mounted at the root, and the path /proc names does not exist there
    inside = tmp_path / "inside"
    write(inside, "memory/memory.limit_in_bytes", f"{GB}\n")
    write(inside, "cpu/cpu.cfs_quota_us", "200000\n")
    write(inside, "cpu/cpu.cfs_period_us", "100000\n")
    assert read_limits(inside, tmp_path / "proc") == Limits(GB, 2.0)


def test_unreadable_proc_is_no_limit(tmp_path: Path) -> None:
    assert read_limits(tmp_path / "none", tmp_path / "missing") == Limits(None, None)


def test_a_quota_rounds_down_to_whole_cores_never_below_one() -> None:
    assert usable_cores(Limits(None, 0.5)) == 1
    assert usable_cores(Limits(None, 1.99)) == 1
    assert usable_cores(Limits(None, None)) >= 1


def test_auto_in_a_small_container_and_explicit_settings_win() -> None:
    small = Limits(1 * GB, 1.0)
    prof = resolve("auto", limits=small, cpu_count=None)
    assert prof.name == "8gb" and prof.threads == 1 and prof.memory_gb == 0.8
    assert "within the cgroup limits 1 GB, 1 CPUs" in prof.chosen_by
    named = resolve("16gb", limits=Limits(4 * GB, None))
    assert named.memory_gb == 3.2  # 80% of the limit, not the profile's 6 GB the kernel would never grant
    explicit = resolve("auto", limits=small, max_memory_gb=5.0, num_threads=2)
    assert explicit.memory_gb == 5.0 and explicit.threads == 2
    roomy = resolve("8gb", limits=Limits(64 * GB, None))
    assert roomy.memory_gb == 2.0 and "cgroup" not in roomy.chosen_by


def test_the_readme_says_what_resolve_does() -> None:
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    prof = resolve("auto", limits=Limits(1 * GB, 1.0))
    assert f"`{prof.name} ({prof.chosen_by})`" in readme
    assert "threads are capped at the CPU quota (rounded down, at least 1)" in readme
