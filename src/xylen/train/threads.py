"""How many LightGBM threads to train with on a machine that may be busy with other work.

LightGBM trains in many short OpenMP parallel regions (one histogram pass per tree level). Between regions the
team's threads spin-wait for a while (libgomp's default), so a thread whose core is taken by another process
holds up every region. Measured on 2 cores (bench/bench_train.py --contention, median of 3, the bundled sample):

=====================================  ==============  ==============================
                                       idle machine    two busy processes beside
=====================================  ==============  ==============================
1 thread                                8.8 s          14.9 s
2 threads, default (spinning) policy    6.5 s          53.4 s (runs from 20 to 169 s)
2 threads, OMP_WAIT_POLICY=PASSIVE     15.6 s          13.8 s
=====================================  ==============  ==============================

No single setting wins both columns, and the wait policy can only be chosen before the OpenMP runtime loads. So
the profile's threads are capped at the cores that are idle when training starts (CPU use sampled for 0.3 s; the
1-minute load average still counts work that has just ended): a busy machine trains with fewer threads, which
never collapses, and an idle one with all of them.
An explicit LGBM_NUM_THREADS / XYLEN_LGBM_NUM_THREADS is used as given.
"""

from __future__ import annotations

import os

import psutil

SAMPLE_S = 0.3


def idle_cores(cores: int | None = None, busy: float | None = None) -> int:
    """Cores not taken by other work right now (at least 1). ``busy`` is the share of all cores in use (0..1),
    sampled over a short moment when not given: a 1-minute load average still counts work that just ended."""
    cores = cores or os.cpu_count() or 1
    if busy is None:
        busy = psutil.cpu_percent(interval=SAMPLE_S) / 100.0
    return max(1, min(cores, int(cores * (1.0 - busy) + 0.5)))


def training_threads(
    requested: int, *, explicit: bool, cores: int | None = None, busy: float | None = None
) -> tuple[int, str | None]:
    """Threads to train with and, when fewer than ``requested``, why."""
    if explicit or requested <= 1:
        return requested, None
    cores = cores or os.cpu_count() or 1
    if busy is None:
        busy = psutil.cpu_percent(interval=SAMPLE_S) / 100.0
    idle = idle_cores(cores, busy)
    if requested <= idle:
        return requested, None
    return idle, (
        f"trained with {idle} thread{'s' if idle != 1 else ''} instead of {requested}: other work kept "
        f"{busy:.0%} of the {cores} cores busy, and LightGBM threads that wait for a busy core made training up to "
        "4x slower; set LGBM_NUM_THREADS to choose"
    )
