"""The pieces of `xylen train --distributed` that need no cluster: LightGBM's parameters for lightgbm.dask, and
early stopping's choice of round from a validation curve."""

from __future__ import annotations

import numpy as np

from tests.builders import sample_arrays
from xylen.profiles import resolve
from xylen.train import evaluate
from xylen.train.distributed import NETWORK_TIMEOUT_MIN, best_iteration, dask_params


def test_dask_params_are_local_trainings_with_a_short_network_time_out():
    params = evaluate.lgb_params(resolve("8gb", num_threads=1))
    got = dask_params(params, 123)
    assert got["time_out"] == NETWORK_TIMEOUT_MIN == 1  # minutes: a silent peer fails the fit in a minute
    assert got["tree_learner"] == "data" and got["n_estimators"] == 123
    assert "num_threads" not in got  # lightgbm.dask gives each worker its own thread count
    assert {k: v for k, v in got.items() if k in params} == {k: v for k, v in params.items() if k != "num_threads"}


def test_best_iteration_is_the_round_lightgbm_early_stopping_keeps():
    import lightgbm as lgb

    c = sample_arrays(4000)
    rng = np.random.default_rng(0)
    X = np.column_stack([np.diff(np.log(c.close), prepend=np.nan), rng.normal(size=len(c))])
    y = (np.roll(c.close, -6) > c.close).astype(float)
    params = {"objective": "binary", "metric": "binary_logloss", "verbosity": -1, "seed": 1, "num_threads": 1,
              "learning_rate": 0.2}
    for early in (3, 10):
        curve: dict = {}
        fit = lgb.Dataset(X[:3000], label=y[:3000])
        booster = lgb.train(params, fit, num_boost_round=300, valid_sets=[lgb.Dataset(X[3000:3990], y[3000:3990],
                                                                                      reference=fit)],
                            callbacks=[lgb.early_stopping(early, verbose=False), lgb.record_evaluation(curve)])
        logloss = curve["valid_0"]["binary_logloss"]
        assert best_iteration(logloss, early) == booster.best_iteration
    assert best_iteration([0.5, 0.4, 0.45, 0.41, 0.39, 0.5], 2) == 2  # stops at round 4, before the later 0.39
    assert best_iteration([0.5, 0.4, 0.45, 0.41, 0.39, 0.5], 3) == 5
