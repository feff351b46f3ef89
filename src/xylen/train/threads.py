"""How many LightGBM threads to train with on a machine that may be busy with other work.

LightGBM trains in many short OpenMP parallel regions (one histogram pass per tree level). Between regions the
team's threads spin-wait for a while (libgomp's default), so a thread whose core is taken by another process
holds up every region. Measured on 2 cores (bench/bench_train.py --contention, median of 3, the bundled sample):

=====================================  ==============  ==========================
                                       idle machine    two busy processes beside
=====================================  ==============  ==========================
1 thread                               11.3 s          18.4 s
2 threads, default (spinning) policy    8.1 s          25.7 s (16 to 58 s)
2 threads, OMP_WAIT_POLICY=PASSIVE     18.8 s          17.4 s
=====================================  ==============  ==========================

No single setting wins both columns, and the wait policy can only be chosen before the OpenMP runtime loads. So
the profile's threads are capped at the cores that are idle when training starts (from the 1-minute load
average): a busy machine trains with fewer threads, which never collapses, and an idle one with all of them.
An explicit LGBM_NUM_THREADS / XYLEN_LGBM_NUM_THREADS is used as given.
"""

from __future__ import annotations

import os


def idle_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores not taken by other work right now (at least 1), from the 1-minute load average."""
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not available on this platform: assume idle
            load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def training_threads(
    requested: int, *, explicit: bool, cores: int | None = None, load: float | None = None
) -> tuple[int, str | None]:
    """Threads to train with and, when fewer than ``requested``, why."""
    if explicit or requested <= 1:
        return requested, None
    idle = idle_cores(cores, load)
    if requested <= idle:
        return requested, None
    shown = f"{load:.1f}" if load is not None else f"{os.getloadavg()[0]:.1f}"
    return idle, (
        f"trained with {idle} thread{'s' if idle != 1 else ''} instead of {requested}: the machine is busy "
        f"(load {shown} on {cores or os.cpu_count()} cores), and LightGBM threads that wait for a busy core made "
        "training up to 4x slower; set LGBM_NUM_THREADS to choose"
    )
