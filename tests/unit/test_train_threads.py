"""Training asks for OpenMP's passive wait policy before lightgbm loads, and falls back to one thread when too late
(two spinning threads on two busy cores took 4x longer than one: bench/bench_train.py --contention)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def _run(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=base | env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_passive_policy_is_set_before_lightgbm_loads():
    code = (
        "import os\nfrom xylen.train.threads import training_threads\n"
        "print(training_threads(2), os.environ.get('OMP_WAIT_POLICY'))"
    )
    assert _run(code) == "(2, None) PASSIVE"


def test_too_late_means_one_thread_with_the_reason():
    code = (
        "import lightgbm\nfrom xylen.train.threads import training_threads\nn, why = training_threads(2)\nprint(n, why)"
    )
    n, why = _run(code).split(" ", 1)
    assert n == "1" and "OMP_WAIT_POLICY=PASSIVE" in why


def test_the_users_choice_is_kept():
    code = "import lightgbm\nfrom xylen.train.threads import training_threads\nprint(training_threads(4)[0])"
    assert _run(code, OMP_WAIT_POLICY="passive") == "4"
    assert _run(code, OMP_WAIT_POLICY="ACTIVE") == "1"
    assert (
        _run("from xylen.train.threads import training_threads\nprint(training_threads(1))", OMP_WAIT_POLICY="ACTIVE")
        == "(1, None)"
    )
