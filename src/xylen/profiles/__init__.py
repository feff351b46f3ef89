"""Hardware profiles, as data: one JSON file per profile beside this module, plus `auto`."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, replace
from importlib import resources

import psutil

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


def resolve(
    name: str, *, max_memory_gb: float | None = None, num_threads: int | None = None, cpu_count: int | None = None
) -> Profile:
    """The profile to train with: `auto` resolved, the alpha's LGBM_* overrides applied, threads capped at cores."""
    chosen_by = "named"
    if name == "auto":
        name, chosen_by = auto_name(), "auto"
    prof = replace(load(name), chosen_by=chosen_by)
    cores = cpu_count or os.cpu_count() or 1
    threads = num_threads if num_threads is not None else min(prof.threads, cores)
    if max_memory_gb is not None:
        prof = replace(prof, memory_gb=float(max_memory_gb))
    return replace(prof, threads=int(threads))
