"""LightGBM's OpenMP threads on a machine that is busy with other work.

By default an OpenMP team spin-waits between parallel regions. LightGBM trains in many short regions (one
histogram pass per tree level), so on cores that other processes want, a spinning thread holds a core its
sibling needs and every region waits for a descheduled thread. Measured here (bench/bench_train.py --contention,
2 cores, two busy processes beside the trainer): 2 threads took 58 s, 1 thread 14 s, 2 threads with the passive
wait policy 17 s; on an idle machine the passive policy costs nothing measurable. So the trainer asks for the
passive policy, which libgomp (and LLVM's libomp) read once when the library loads: before lightgbm is imported.
If lightgbm was imported earlier with the spinning policy, training falls back to one thread, the setting that
never collapses.
"""

from __future__ import annotations

import os
import sys

PASSIVE = "PASSIVE"


def prepare_openmp() -> bool:
    """Ask for the passive OpenMP wait policy unless the user chose one. True when the policy in effect is passive
    (or will be when lightgbm loads); False when lightgbm is already loaded with another policy."""
    chosen = os.environ.get("OMP_WAIT_POLICY")
    if chosen is not None:
        return chosen.strip().upper() == PASSIVE
    if "lightgbm" in sys.modules:
        return False  # too late: the OpenMP runtime read its environment when lightgbm loaded
    # a process-wide setting on purpose: it must be in the environment before the OpenMP runtime starts
    os.environ["OMP_WAIT_POLICY"] = PASSIVE
    return True


def training_threads(requested: int) -> tuple[int, str | None]:
    """Threads to train with and, when they differ from ``requested``, why."""
    if requested > 1 and not prepare_openmp():
        return 1, (
            f"training with 1 thread instead of {requested}: lightgbm was loaded with OpenMP's spinning wait "
            "policy, which collapses on a busy machine (set OMP_WAIT_POLICY=PASSIVE before starting Python)"
        )
    return requested, None
