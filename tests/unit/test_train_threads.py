"""Training threads are capped at the idle cores: two spinning OpenMP threads beside two busy processes made
training up to 4x slower than one thread (bench/bench_train.py --contention)."""

from __future__ import annotations

import pytest

from xylen.train.threads import idle_cores, training_threads

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("cores", "busy", "idle"), [(2, 0.0, 2), (2, 0.2, 2), (2, 0.3, 1), (2, 0.95, 1), (2, 1.0, 1), (8, 0.4, 5)]
)
def test_idle_cores(cores, busy, idle):
    assert idle_cores(cores, busy) == idle


def test_a_busy_machine_trains_with_fewer_threads_and_says_why():
    assert training_threads(2, explicit=False, cores=2, busy=0.05) == (2, None)
    n, why = training_threads(2, explicit=False, cores=2, busy=1.0)
    assert n == 1 and "other work kept 100% of the 2 cores busy" in why and "LGBM_NUM_THREADS" in why
    assert training_threads(4, explicit=True, cores=2, busy=1.0) == (4, None)  # the user's number is kept
    assert training_threads(1, explicit=False, cores=2, busy=1.0) == (1, None)


def test_the_pipeline_caps_the_profile_threads_but_not_an_explicit_setting(tmp_path, monkeypatch):
    from xylen.train import threads as threads_mod

    monkeypatch.setattr(threads_mod.psutil, "cpu_percent", lambda interval: 100.0)
    from tests.helpers import train_small

    res = train_small(tmp_path / "a", promote=False)
    assert res.profile["threads"] == 1 and any("other work kept" in w for w in res.warnings)
    res = train_small(tmp_path / "b", promote=False, lgbm_num_threads=2)
    assert res.profile["threads"] == 2 and not any("other work kept" in w for w in res.warnings)
