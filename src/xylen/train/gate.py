"""The retrain gate: may a retrained candidate replace the live model?

Both models are scored on the same most recent *purged holdout*, which neither trained on: the last
max(XYLEN_RETRAIN_HOLDOUT, 10% of the window) usable rows; training rows whose label looks into the holdout (the
last ``horizon`` before it) are purged. The score is log-loss, a proper scoring rule (AUC is reported beside it,
but AUC ignores calibration and a model can gain AUC while its probabilities get worse). The candidate is promoted
when its log-loss is at most the live model's plus a tolerance.

The difference of the two log-losses comes with a paired day-block bootstrap interval: the per-candle loss
differences are grouped by UTC day (neighbouring candles' labels overlap and volatility clusters, so single candles
are not independent draws; a day is), whole days are resampled with replacement, and the 2.5% and 97.5% quantiles of
the resampled mean difference bound it. "Paired" because both models are scored on the very same candles, which
cancels most of the candle-to-candle noise. A holdout holds few days (2,000 5m candles are 7), and a percentile
bootstrap over G blocks is too narrow for small G (its spread is the plug-in standard error with the normal's
quantile: 7 days covered ~87%, 3 days ~72%): the interval is widened about the mean as a clustered standard error is,
by sqrt(G/(G-1)) and Student's t with G-1 degrees of freedom instead of the normal, which keeps it near 95% from 2
days up. The interval is recorded, not used in the decision: the tolerance rule is the documented gate, the
interval says how sure it could be.

A bundle with extra heads (a move-size head beside a direction model) is gated head by head, like with like: each
head of the candidate is scored on its own labels against the live version's same head, on the same holdout, by the
same rule; ``combine`` promotes the candidate only when every head passes, and its reason names a failing head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from xylen.train import metrics

HOLDOUT_FRACTION = 0.10
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
DAY_MS = 86_400_000
SEED = 7
_EPS = 1e-15
_Z = 1.959964  # the normal's 97.5% quantile; _T: Student's t's, for 1..30 degrees of freedom (CONFIDENCE = 0.95)
_T = (
    *(12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131),
    *(2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042),
)


def holdout_size(n_rows: int, minimum: int) -> int:
    return max(minimum, math.ceil(HOLDOUT_FRACTION * n_rows))


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # dataset row indices the candidate may fit on
    holdout: np.ndarray  # the most recent rows, scored by both models
    purged: int  # training rows dropped because their labels reach into the holdout


def split(rows: np.ndarray, horizon: int, size: int) -> Split:
    """The last ``size`` of ``rows`` (dataset row indices in time order) are the holdout; a row's label reads the
    next ``horizon`` candles, so training rows up to ``horizon`` before the holdout are purged."""
    holdout = rows[-size:]
    before = rows[: len(rows) - size]
    train = before[before + horizon < holdout[0]]
    return Split(train, holdout, len(before) - len(train))


def small_sample_factor(n_blocks: int) -> float:
    """How much wider than the plain percentile bootstrap the interval over ``n_blocks`` (>= 2) days is made:
    sqrt(G/(G-1)) * t(G-1) / z (beyond 30 degrees of freedom t by its Cornish-Fisher expansion, within 1e-3)."""
    df = n_blocks - 1
    t = _T[df - 1] if df <= len(_T) else _Z + (_Z**3 + _Z) / (4 * df) + (5 * _Z**5 + 16 * _Z**3 + 3 * _Z) / (96 * df**2)
    return t / _Z * math.sqrt(n_blocks / df)


def row_losses(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def day_block_interval(
    diff: np.ndarray, open_time: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = SEED
) -> tuple[float, float, int]:
    """(low, high, number of days) of the paired day-block bootstrap interval of mean(diff), widened by
    small_sample_factor."""
    day = (np.asarray(open_time, dtype=np.int64) // DAY_MS).astype(np.int64)
    _, block = np.unique(day, return_inverse=True)
    n_blocks = int(block.max()) + 1 if len(block) else 0
    if n_blocks < 2:
        return float("nan"), float("nan"), n_blocks
    sums = np.bincount(block, weights=diff, minlength=n_blocks)
    counts = np.bincount(block, minlength=n_blocks).astype(np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, n_blocks, size=(resamples, n_blocks))
    means = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    mean, widen = sums.sum() / counts.sum(), small_sample_factor(n_blocks)
    return float(mean + widen * (lo - mean)), float(mean + widen * (hi - mean)), n_blocks


def _score(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"logloss": metrics.logloss(y, p), "auc": metrics.auc(y, p)}


def compare(
    y: np.ndarray,
    open_time: np.ndarray,
    p_candidate: np.ndarray,
    p_live: np.ndarray | None,
    *,
    tolerance: float,
    base_rate: float,
    purged: int,
    why_base_rate: str = "the live model is unreadable",
) -> dict[str, Any]:
    """The gate's record: both scores, the difference with its interval, and the decision.

    ``p_live`` None means the live model cannot be scored fairly (``why_base_rate``: its artifact is corrupt, ...):
    the candidate must then beat the constant prediction ``base_rate`` (the training rows' share of 1 labels), the
    least any model must do."""
    y = np.asarray(y, dtype=np.float64)
    cand = _score(y, p_candidate)
    base_p = np.full(len(y), min(max(base_rate, _EPS), 1 - _EPS))
    base = {"logloss": metrics.logloss(y, base_p)}
    reference = p_live if p_live is not None else base_p
    diff = row_losses(y, p_candidate) - row_losses(y, reference)
    lo, hi, days = day_block_interval(diff, open_time)
    mean = float(diff.mean())
    against = "the live model" if p_live is not None else f"the constant base rate ({why_base_rate})"
    allowed = tolerance if p_live is not None else 0.0
    promote = mean <= allowed
    ref_ll = cand["logloss"] - mean
    verdict = "at most" if promote else "above"
    reason = (
        f"candidate log-loss {cand['logloss']:.5f} is {verdict} {against}'s {ref_ll:.5f}"
        + (f" + tolerance {tolerance:g}" if p_live is not None else "")
        + f" (difference {mean:+.5f}, {CONFIDENCE:.0%} day-block interval "
        + (f"[{lo:+.5f}, {hi:+.5f}] over {days} days)" if days >= 2 else f"not available: {days} day)")
    )
    return {
        "holdout": {
            "rows": len(y),
            "first_open_time": int(open_time[0]),
            "last_open_time": int(open_time[-1]),
            "days": days,
            "purged": purged,
            "positive_rate": float(y.mean()),
        },
        "metric": "logloss",
        "candidate": cand,
        "live": _score(y, p_live) if p_live is not None else None,
        "base_rate": base | {"p": float(base_p[0])},
        "difference": mean,
        "interval": [lo, hi] if days >= 2 else None,
        "confidence": CONFIDENCE,
        "bootstrap": {
            "resamples": BOOTSTRAP_RESAMPLES,
            "block": "UTC day",
            "blocks": days,
            "seed": SEED,
            "small_sample_factor": small_sample_factor(days) if days >= 2 else None,
        },
        "tolerance": tolerance,
        "compared_with": "live" if p_live is not None else "base_rate",
        "decision": "promote" if promote else "keep",
        "reason": reason,
    }


def combine(primary: dict[str, Any], heads: dict[str, dict[str, Any]], primary_kind: str) -> dict[str, Any]:
    """One gate record for a candidate with extra heads: the primary head's record (its scores stay at the top level,
    as for a bundle without heads), each head's own record under ``heads[kind]``, and the decision: promote only when
    every head passes. The reason names each head that failed first, then the ones that passed."""
    if not heads:
        return primary
    parts = [("primary", f"primary ({primary_kind}) head", primary)]
    parts += [(kind, f"{kind} head", rec) for kind, rec in heads.items()]
    failed = [p for p in parts if p[2]["decision"] != "promote"]
    passed = [p for p in parts if p[2]["decision"] == "promote"]
    reason = "; ".join(
        [f"{who} FAILED: {rec['reason']}" for _, who, rec in failed]
        + [f"{who} passed: {rec['reason']}" for _, who, rec in passed]
    )
    return primary | {
        "primary": {"kind": primary_kind, "decision": primary["decision"], "reason": primary["reason"]},
        "heads": heads,
        "failed_heads": [key for key, _, _ in failed],
        "decision": "keep" if failed else "promote",
        "reason": reason,
    }
