"""Hardware profiles, as data: one JSON file per profile beside this module, plus `auto`."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, replace
from importlib import resources

import psutil

from xylen.core.cgroup import Limits, read_limits, usable_cores
from xylen.core.errors import ConfigError

NAMES = ("m1", "m4", "8gb", "16gb")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    threads: int
    memory_gb: float
    num_leaves: int
    max_bin: int
    learning_rate: float
    num_boost_round: int
    early_stopping_rounds: int
    min_data_in_leaf: int
    feature_fraction: float
    train_window_days: int
    chosen_by: str = "named"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def load(name: str) -> Profile:
    if name not in NAMES:
        raise ConfigError(f"Unknown profile {name!r}.", hint=f"use one of: {', '.join(NAMES)}, auto.")
    data = json.loads(resources.files(__package__).joinpath(f"{name}.json").read_text())
    return Profile(**data)


def auto_name(total_memory_bytes: int | None = None, system: str | None = None, machine: str | None = None) -> str:
    """Pick a profile from the machine: Apple silicon -> m1/m4; otherwise by memory -> 8gb/16gb."""
    mem_gb = (total_memory_bytes if total_memory_bytes is not None else psutil.virtual_memory().total) / 2**30
    system = system or sys.platform
    machine = machine or platform.machine()
    if system == "darwin" and machine == "arm64":
        return "m4" if mem_gb >= 15 else "m1"
    return "16gb" if mem_gb >= 15 else "8gb"


# Share of a cgroup's memory limit a training run may plan for: the rest is the interpreter, the server or loop
# beside it, and the estimate's error (the kernel kills at the limit; the profile's cap is an estimate).
CGROUP_MEMORY_SHARE = 0.8


def resolve(
    name: str,
    *,
    max_memory_gb: float | None = None,
    num_threads: int | None = None,
    cpu_count: int | None = None,
    limits: Limits | None = None,
) -> Profile:
    """The profile to train with: `auto` resolved, the alpha's LGBM_* overrides applied, threads capped at cores.

    Inside a container or a systemd unit with limits (``limits``; read from this process's cgroup when None), `auto`
    picks by the memory limit rather than the host's, threads are capped at the CPU quota, and the memory cap at
    80% of the memory limit. An explicit LGBM_MAX_MEMORY_GB or LGBM_NUM_THREADS is used as given."""
    limits = limits if limits is not None else read_limits()
    chosen_by = "named"
    if name == "auto":
        total = psutil.virtual_memory().total
        if limits.memory_bytes is not None:
            total = min(total, limits.memory_bytes)
        name, chosen_by = auto_name(total), "auto"
    prof = replace(load(name), chosen_by=chosen_by)
    cores = cpu_count or usable_cores(limits)
    threads = num_threads if num_threads is not None else min(prof.threads, cores)
    memory_gb = prof.memory_gb
    if max_memory_gb is not None:
        memory_gb = float(max_memory_gb)
    elif limits.memory_bytes is not None and memory_gb * 2**30 > limits.memory_bytes * CGROUP_MEMORY_SHARE:
        memory_gb = math.floor(limits.memory_bytes * CGROUP_MEMORY_SHARE / 2**30 * 100) / 100
    if (limits.memory_bytes is not None or limits.cpus is not None) and (
        memory_gb != prof.memory_gb or threads < min(prof.threads, os.cpu_count() or 1)
    ):
        chosen_by = f"{chosen_by}; within the cgroup limits {limits.describe()}"
    return replace(prof, memory_gb=memory_gb, threads=int(threads), chosen_by=chosen_by)
