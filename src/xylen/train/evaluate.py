"""Walk-forward evaluation with purging, next to volatility baselines and a shuffled-label control.

For fold k of K the rows (in time order) are cut into K+1 equal chunks: chunk k is the test window and
everything before it is training data. The last ``horizon`` rows before each test window are purged
(their labels look into it), the tail of the training data is an early-stopping validation slice, purged
from the rows fitted on in the same way. Three models are trained on the same folds: the model on every
feature, the same learner on volatility features alone, and the model on shuffled labels (a control that
must score AUC ~0.5: it checks that predictions are scored against the right labels; it cannot see a feature
that reads the future -- that is what the no-look-ahead property test of core/featuresets.py guards).

Every head (the primary label and each extra head, e.g. the move-size head) gets its own model and its own fitted
volatility-only learner per fold, and two raw volatility features are scored as baselines too (mean 12-candle range,
48-candle return std), each oriented on the fold's training rows (a raw feature may rank the label backwards; which
way is decided before the test window is seen). The out-of-sample scores of all of them are kept per row, with the
row's fold, for train/honesty.py's day-block bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xylen.core.errors import TrainingError
from xylen.profiles import Profile
from xylen.train import metrics
from xylen.train.dataset import Dataset

VAL_FRACTION = 0.15
MIN_TRAIN_ROWS = 500
MIN_TEST_ROWS = 100
SEED = 42


def lgb_params(profile: Profile) -> dict[str, Any]:
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "learning_rate": profile.learning_rate,
        "num_leaves": profile.num_leaves,
        "max_bin": profile.max_bin,
        "min_data_in_leaf": profile.min_data_in_leaf,
        "feature_fraction": profile.feature_fraction,
        "num_threads": profile.threads,
        "seed": SEED,
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }


@dataclass
class Fold:
    index: int
    train_rows: int
    val_rows: int
    test_rows: int
    test_first: int  # open_time of the first test row
    test_last: int
    purged: int
    auc: float
    auc_volatility: float
    auc_shuffled: float
    logloss: float
    logloss_base: float
    brier: float
    brier_base: float
    base_rate: float
    test_positive_rate: float
    best_iteration: int


@dataclass
class HeadScores:
    """Out-of-sample scores of one head's model and of its baselines, one value per test row."""

    kind: str
    y: np.ndarray  # the head's labels of the test rows
    scores: dict[str, np.ndarray]  # "model", "volatility_learner", and the raw features by name (oriented)
    best_iterations: list[int] = field(default_factory=list)  # of the head's model in each fold


@dataclass
class Evaluation:
    folds: list[Fold]
    test_index: np.ndarray  # row indices of all test rows, in time order
    test_proba: np.ndarray  # model probability for each
    importance: dict[str, float] = field(default_factory=dict)
    test_fold: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # fold number of each
    heads: list[HeadScores] = field(default_factory=list)  # the primary head first

    def mean(self, attr: str) -> float:
        vals = [getattr(f, attr) for f in self.folds]
        return float(np.nanmean(vals)) if vals else float("nan")


def split(rows: np.ndarray, n_folds: int, horizon: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """(fit rows, validation rows, test rows, purged count) per fold; rows are dataset row indices."""
    n = len(rows)
    chunk = n // (n_folds + 1)
    if chunk < MIN_TEST_ROWS or chunk * 1 < MIN_TRAIN_ROWS:
        need = max(MIN_TEST_ROWS, MIN_TRAIN_ROWS) * (n_folds + 1)
        raise TrainingError(
            f"{n} usable rows are too few for {n_folds} walk-forward folds (about {need} needed).",
            hint="use more candles (a longer --data range, or `xylen collect --since ...`) or fewer "
            "folds (XYLEN_FOLDS=3).",
        )
    out = []
    for k in range(1, n_folds + 1):
        test = rows[k * chunk : (k + 1) * chunk if k < n_folds else n]
        before = rows[: k * chunk]
        train = before[before + horizon < test[0]]  # purge: labels must not reach the test window
        purged = len(before) - len(train)
        n_val = max(int(len(train) * VAL_FRACTION), 50)
        val = train[-n_val:]
        fit = train[: len(train) - n_val]
        fit = fit[fit + horizon < val[0]]  # purge between fitted rows and validation slice
        if len(fit) < MIN_TRAIN_ROWS // 2:
            raise TrainingError(
                f"Fold {k} has only {len(fit)} rows to fit on.", hint="use more candles or fewer folds."
            )
        out.append((fit, val, test, purged))
    return out


def _fold_data(
    lgb: Any,
    X: np.ndarray,
    y: np.ndarray,
    fit: np.ndarray,
    val: np.ndarray,
    max_bin: int,
    names: list[str] | None = None,
    reference: Any = None,
) -> tuple[Any, Any]:
    """Datasets of one fold, binned on that fold's fitted rows only: bin edges computed over every row would let
    the test window's distribution into training."""
    d_fit = lgb.Dataset(
        X[fit], label=y[fit], feature_name=names or "auto", params={"max_bin": max_bin}, reference=reference
    )
    return d_fit, lgb.Dataset(X[val], label=y[val], reference=d_fit)


def _train(lgb: Any, params: dict[str, Any], data: tuple[Any, Any], rounds: int, early: int) -> Any:
    d_fit, d_val = data
    return lgb.train(
        params, d_fit, num_boost_round=rounds, valid_sets=[d_val], callbacks=[lgb.early_stopping(early, verbose=False)]
    )


def _oriented(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """A raw feature as a score, its sign chosen on the training rows (never on the test window)."""
    return x_test if metrics.auc(y_fit, x_fit) >= 0.5 else -x_test


def _baselines(
    lgb: Any, params: dict[str, Any], profile: Profile, ds: Dataset, y: np.ndarray, X_vol: np.ndarray,
    fold: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> dict[str, np.ndarray]:
    """Test-window scores of the fitted volatility-only learner and of the raw volatility features."""
    fit, val, test = fold
    rounds, early = profile.num_boost_round, profile.early_stopping_rounds
    vol_model = _train(lgb, params, _fold_data(lgb, X_vol, y, fit, val, profile.max_bin), rounds, early)
    out = {"volatility_learner": vol_model.predict(X_vol[test], num_iteration=vol_model.best_iteration)}
    for name, col in zip(ds.fs.raw_volatility, ds.fs.indices(ds.fs.raw_volatility)):
        out[name] = _oriented(ds.X[fit, col], y[fit], ds.X[test, col])
    return out


def walk_forward(
    ds: Dataset, profile: Profile, n_folds: int, horizon: int, on_fold: Callable[[int, int], None] | None = None
) -> Evaluation:
    import lightgbm as lgb

    rows = ds.rows
    splits = split(rows, n_folds, horizon)
    params = lgb_params(profile)
    vol_cols = ds.fs.indices(ds.fs.volatility)
    rng = np.random.default_rng(SEED)
    y_shuf = ds.y.copy()
    y_shuf[rows] = rng.permutation(ds.y[rows])
    y_full = np.nan_to_num(ds.y, nan=0.0)
    y_shuf = np.nan_to_num(y_shuf, nan=0.0)
    X_full = ds.X
    X_vol = np.ascontiguousarray(X_full[:, vol_cols])
    names = list(ds.fs.names)
    extra = {kind: np.nan_to_num(y, nan=0.0) for kind, y in (ds.heads or {}).items()}
    folds: list[Fold] = []
    test_idx, test_p, test_fold = [], [], []
    scores: dict[str, dict[str, list[np.ndarray]]] = {k: {} for k in ["primary", *extra]}
    gain = np.zeros(len(names))
    best_its: dict[str, list[int]] = {}
    for k, (fit, val, test, purged) in enumerate(splits, 1):
        if on_fold:
            on_fold(k, n_folds)
        if len(np.unique(ds.y[fit])) < 2:
            raise TrainingError(
                f"Fold {k}: every training label is {int(ds.y[fit][0])}.",
                hint="the threshold is too high or too low for this data; adjust XYLEN_LABEL_THRESHOLD.",
            )
        for kind, y_h in extra.items():
            if len(np.unique(y_h[fit])) < 2:
                raise TrainingError(
                    f"Fold {k}: every training label of the {kind} head is {int(y_h[fit][0])}.",
                    hint="the threshold is too high or too low for this data; adjust XYLEN_LABEL_THRESHOLD, or "
                    "train without the head (--extra-head none).",
                )
        rounds, early = profile.num_boost_round, profile.early_stopping_rounds
        data = _fold_data(lgb, X_full, y_full, fit, val, profile.max_bin, names)
        model = _train(lgb, params, data, rounds, early)
        base_scores = _baselines(lgb, params, profile, ds, y_full, X_vol, (fit, val, test))
        # the control reuses the fold's bins (same rows, same X): only the labels differ
        shuf_data = _fold_data(lgb, X_full, y_shuf, fit, val, profile.max_bin, names, reference=data[0])
        shuf_model = _train(lgb, params, shuf_data, rounds, early)
        X_test, y_test = X_full[test], ds.y[test]
        p = model.predict(X_test, num_iteration=model.best_iteration)
        p_vol = base_scores["volatility_learner"]
        p_shuf = shuf_model.predict(X_test, num_iteration=shuf_model.best_iteration)
        for name, sc in {"model": p, **base_scores}.items():
            scores["primary"].setdefault(name, []).append(sc)
        best_its.setdefault("primary", []).append(int(model.best_iteration or rounds))
        for kind, y_h in extra.items():  # each extra head: its own model and baselines on the same fold
            head = _train(lgb, params, _fold_data(lgb, X_full, y_h, fit, val, profile.max_bin, names,
                                                  reference=data[0]), rounds, early)
            head_scores = {"model": head.predict(X_test, num_iteration=head.best_iteration),
                           **_baselines(lgb, params, profile, ds, y_h, X_vol, (fit, val, test))}
            for name, sc in head_scores.items():
                scores[kind].setdefault(name, []).append(sc)
            best_its.setdefault(kind, []).append(int(head.best_iteration or rounds))
        base = float(ds.y[np.concatenate([fit, val])].mean())
        gain += model.feature_importance("gain", iteration=model.best_iteration)
        folds.append(
            Fold(
                index=k,
                train_rows=len(fit),
                val_rows=len(val),
                test_rows=len(test),
                test_first=int(ds.open_time[test[0]]),
                test_last=int(ds.open_time[test[-1]]),
                purged=purged,
                auc=metrics.auc(y_test, p),
                auc_volatility=metrics.auc(y_test, p_vol),
                auc_shuffled=metrics.auc(y_test, p_shuf),
                logloss=metrics.logloss(y_test, p),
                logloss_base=metrics.logloss(y_test, np.full(len(test), base)),
                brier=metrics.brier(y_test, p),
                brier_base=metrics.brier(y_test, np.full(len(test), base)),
                base_rate=base,
                test_positive_rate=float(y_test.mean()),
                best_iteration=int(model.best_iteration or rounds),
            )
        )
        test_idx.append(test)
        test_p.append(p)
        test_fold.append(np.full(len(test), k, dtype=np.int64))
    total = gain.sum() or 1.0
    importance = {n: float(g / total) for n, g in zip(names, gain)}
    index = np.concatenate(test_idx)
    heads = [
        HeadScores(kind, (ds.y if kind == "primary" else (ds.heads or {})[kind])[index],
                   {name: np.concatenate(parts) for name, parts in by_name.items()}, best_its[kind])
        for kind, by_name in scores.items()
    ]
    return Evaluation(folds, index, np.concatenate(test_p), importance, np.concatenate(test_fold), heads)
