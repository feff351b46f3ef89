"""A retrain candidate, head by head.

A bundle may carry extra heads beside its primary model (a move-size head beside a direction model, ...): LightGBM
models on the same features, each with its own label. A retrain keeps them all. Each head of the candidate is fitted
on the same rows -- a full refit, or more trees boosted onto the live version's same head (``init_model``) -- and
scored on its own labels against the live version's same head on the same holdout (like with like: a move head
against the live move head, never against the direction model). ``gate.combine`` then promotes the candidate only
when every head passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from xylen.core import labels
from xylen.core.bundle import Artifact, Manifest, verify_artifact
from xylen.core.errors import BundleError, TrainingError
from xylen.train import gate
from xylen.train.dataset import Dataset, labelled

PRIMARY = "primary"


@dataclass
class LiveHead:
    """One head of the live version: ``key`` is "primary" or the extra head's label kind."""

    key: str
    spec: labels.LabelSpec
    booster: Any | None  # None: its artifact is missing, tampered with or unreadable (``problem`` says which)
    problem: str | None
    rounds: int  # trees of a full refit: the live head's own count
    artifact: Artifact

    @property
    def name(self) -> str:
        return f"{self.key} head" if self.key != PRIMARY else f"primary ({self.spec.kind}) head"


@dataclass
class Fitted:
    head: LiveHead
    booster: Any
    verdict: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        """What a published head records about itself: its holdout scores and its number of trees."""
        return {
            "auc_holdout": self.verdict["candidate"]["auc"],
            "logloss_holdout": self.verdict["candidate"]["logloss"],
            "num_boost_round": int(self.booster.current_iteration()),
        }


def live_heads(lgb: Any, folder: Path, m: Manifest) -> list[LiveHead]:
    """The primary head, then each extra head of the live manifest, with its booster when its artifact verifies and
    loads. A label this xylen does not read is a BundleError (naming it); an unreadable artifact is not: the head is
    then compared with the base rate, as an unreadable primary is."""
    primary_rounds = _rounds(m.params.get("num_boost_round"), 100)
    out = [_load(lgb, folder, m, PRIMARY, labels.LabelSpec.from_dict(m.label), m.artifact, primary_rounds)]
    for head in m.heads:
        spec = labels.LabelSpec.from_dict(head.label)
        out.append(_load(lgb, folder, m, spec.kind, spec, head.artifact, _rounds(head.metrics.get("num_boost_round"))))
        if out[-1].rounds == 0:  # not recorded, and unreadable: as many trees as the primary
            out[-1].rounds = primary_rounds
    return out


def _rounds(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100_000 else default


def _load(
    lgb: Any, folder: Path, m: Manifest, key: str, spec: labels.LabelSpec, art: Artifact, rounds: int
) -> LiveHead:
    booster, problem = None, None
    try:
        # size and sha256 first: LightGBM aborts the process on some corrupt model texts instead of raising
        booster = lgb.Booster(model_file=str(verify_artifact(folder, m, art)))
    except (BundleError, lgb.basic.LightGBMError, OSError) as exc:
        problem = exc.message if isinstance(exc, BundleError) else str(exc)[:200]
    if booster is not None and rounds == 0:
        rounds = int(booster.current_iteration())  # a head that did not record its count: the trees it has
    return LiveHead(key, spec, booster, problem, rounds, art)


def problems(heads: Sequence[LiveHead]) -> str | None:
    """Why the live version cannot be served as it is (None when every head loads)."""
    bad = [h for h in heads if h.problem]
    if not bad:
        return None
    if len(bad) == 1 and bad[0].key == PRIMARY:
        return bad[0].problem
    return "; ".join(f"{h.name}: {h.problem}" for h in bad)


def labels_and_rows(
    df: pl.DataFrame, interval: str, heads: Sequence[LiveHead], lookback: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every head's labels (NaN as 0), and the rows usable for all of them (cheap: no feature is computed)."""
    close = df["close"].to_numpy().astype(np.float64)
    high, low = (df[c].to_numpy().astype(np.float64) for c in ("high", "low"))
    open_time = df["open_time"].to_numpy().astype(np.int64)
    ys, valid = {}, np.ones(df.height, dtype=bool)
    for h in heads:
        y, ok = labelled(open_time, close, interval, h.spec, lookback=lookback, high=high, low=low)
        ys[h.key], valid = np.nan_to_num(y, nan=0.0), valid & ok
    return ys, valid


def check_labels(heads: Sequence[LiveHead], y_train: dict[str, np.ndarray], name: str) -> None:
    for h in heads:
        y = y_train[h.key]
        if len(np.unique(y)) < 2:
            which = "" if h.key == PRIMARY else f" of its {h.key} head"
            raise TrainingError(
                f"Every training label{which} of {name!r} is {int(y[0])}.",
                hint="the label threshold does not suit this data; make a new model with `xylen train --threshold`.",
            )


def fit(
    lgb: Any,
    heads: Sequence[LiveHead],
    ds: Dataset,
    fit_rows: np.ndarray,
    params: dict[str, Any],
    *,
    warm_rounds: int | None,
) -> list[Fitted]:
    """Fit every head on ``fit_rows`` of ``ds`` with the same params: a full refit with each head's own number of
    trees, or (``warm_rounds``) that many more trees boosted onto the live head."""
    out = []
    names = list(ds.fs.names)
    for h in heads:
        y = labels_of(ds, h)
        data = lgb.Dataset(ds.X[fit_rows], label=y[fit_rows], feature_name=names, params={"max_bin": params["max_bin"]})
        if warm_rounds is not None:
            booster = lgb.train(params, data, num_boost_round=warm_rounds, init_model=h.booster)
        else:
            booster = lgb.train(params, data, num_boost_round=h.rounds)
        out.append(Fitted(h, booster))
    return out


def labels_of(ds: Dataset, h: LiveHead) -> np.ndarray:
    y = ds.y if h.key == PRIMARY else (ds.heads or {})[h.key]
    return np.nan_to_num(y, nan=0.0)


def score(
    fitted: Sequence[Fitted],
    ds: Dataset,
    hold: np.ndarray,
    base_rates: dict[str, float],
    *,
    tolerance: float,
    purged: int,
    fair: bool,
) -> dict[str, Any]:
    """Each head's gate record on its own labels against the live version's same head, then the combined record.

    ``fair`` False: the live version trained on part of the holdout (and is damaged, or the run would have waited):
    scoring it there would rig the comparison in its favour, so every head must beat the base rate instead."""
    X = ds.X[hold]
    for f in fitted:
        h = f.head
        p_live = None
        why = "the live model is unreadable" if h.key == PRIMARY else f"the live {h.key} head is unreadable"
        if h.booster is not None and fair:
            p_live = np.asarray(h.booster.predict(X, num_threads=1))
        elif h.booster is not None:
            why = "the damaged live version trained on this holdout, so it cannot be scored on it"
        f.verdict = gate.compare(
            labels_of(ds, h)[hold],
            ds.open_time[hold],
            np.asarray(f.booster.predict(X, num_threads=1)),
            p_live,
            tolerance=tolerance,
            base_rate=base_rates[h.key],
            purged=purged,
            why_base_rate=why,
        )
        f.verdict["head"] = h.key if h.key != PRIMARY else h.spec.kind
    primary, *extra = fitted
    return gate.combine(primary.verdict, {f.head.key: f.verdict for f in extra}, primary.head.spec.kind)
