"""The memory and CPU limits of the cgroup this process runs in: a container's `mem_limit`/`cpus`, a systemd unit's
MemoryMax/CPUQuota. psutil and os.cpu_count() see the whole host, so without these a container with 1 CPU and 1 GB
trained with the host's profile (2 threads, a 6 GB cap) and was throttled or killed by the kernel.

cgroup v2 (one hierarchy, `0::/path` in /proc/self/cgroup): memory.max and cpu.max. cgroup v1 (Docker on older
hosts, this project's CI machines): memory/memory.limit_in_bytes and cpu/cpu.cfs_quota_us + cpu.cfs_period_us. The
effective limit is the smallest one on the path from this process's cgroup up to the mount's root (a parent's
limit binds its children); in a container the mount's root often is the container's own cgroup. Anything
unreadable or malformed counts as no limit: this only ever lowers a default, it never fails a command.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
NO_LIMIT_V1 = 2**60  # v1 spells "no limit" as 2^63-1 rounded down to a page


@dataclass(frozen=True)
class Limits:
    memory_bytes: int | None = None
    cpus: float | None = None  # CPU time per wall second (quota / period): 1.5 means one and a half cores

    def describe(self) -> str:
        parts = []
        if self.memory_bytes is not None:
            parts.append(f"{self.memory_bytes / 2**30:.3g} GB")
        if self.cpus is not None:
            parts.append(f"{self.cpus:g} CPUs")
        return ", ".join(parts)


def _paths(proc_cgroup: Path) -> dict[str, str]:
    """controller -> this process's cgroup path ("" for the v2 unified line), from /proc/self/cgroup."""
    out: dict[str, str] = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for name in controllers.split(",") if controllers else [""]:
            out[name] = path
    return out


def _walk(mount: Path, path: str) -> list[Path]:
    """The folders from this process's cgroup up to the mount's root (those that exist here)."""
    rel = Path(path.lstrip("/")) if path else Path()
    folders = [mount / rel, *(mount / p for p in rel.parents)]
    return [f for f in dict.fromkeys(folders) if f.is_dir()]


def _read(file: Path) -> str | None:
    try:
        return file.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _smallest(values: list[float]) -> float | None:
    return min(values) if values else None


def read_limits(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> Limits:
    """The tightest memory and CPU limits above this process (None where there is none)."""
    paths = _paths(proc_cgroup)
    memory: list[float] = []
    cpus: list[float] = []
    if (root / "cgroup.controllers").exists():  # v2
        for folder in _walk(root, paths.get("", "/")):
            mem = _read(folder / "memory.max")
            if mem and mem.isdigit():
                memory.append(int(mem))
            cpu = (_read(folder / "cpu.max") or "").split()
            if len(cpu) == 2 and cpu[0].isdigit() and cpu[1].isdigit() and int(cpu[1]) > 0:
                cpus.append(int(cpu[0]) / int(cpu[1]))
    else:  # v1: one mount per controller
        for folder in _walk(root / "memory", paths.get("memory", "/")):
            mem = _read(folder / "memory.limit_in_bytes")
            if mem and mem.isdigit() and int(mem) < NO_LIMIT_V1:
                memory.append(int(mem))
        cpu_mount = next((root / n for n in ("cpu", "cpu,cpuacct") if (root / n).is_dir()), root / "cpu")
        for folder in _walk(cpu_mount, paths.get("cpu", "/")):
            quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            if quota and period and quota.isdigit() and period.isdigit() and int(period) > 0:
                cpus.append(int(quota) / int(period))  # "-1" (no quota) is not all digits
    mem_limit = _smallest(memory)
    return Limits(int(mem_limit) if mem_limit is not None else None, _smallest(cpus))


def usable_cores(limits: Limits | None = None) -> int:
    """Cores this process may use: the host's, narrowed by CPU affinity (cpusets) and a CPU quota. A quota rounds
    down (at least 1): LightGBM threads beyond it spin-wait on throttled time, which is far slower than fewer."""
    cores = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)) or cores)
    limits = limits if limits is not None else read_limits()
    if limits.cpus is not None:
        cores = min(cores, max(1, math.floor(limits.cpus + 1e-9)))
    return cores
