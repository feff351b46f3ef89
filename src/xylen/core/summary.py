"""The one honest sentence about a model, from its manifest: what it forecasts and whether it beats the baseline.

Written at training time into ``metrics["honesty"]["sentence"]`` (train/honesty.py builds it from the walk-forward
evaluation); shown by `xylen models show`, GET /models and the report. Bundles without that record (trained by
xylen 0.1, or imported) get a sentence that says what is missing instead of a figure without an interval.
"""

from __future__ import annotations

from typing import Any

from xylen.core.bundle import Manifest


def sentence(manifest: Manifest) -> str:
    m = manifest.metrics or {}
    if manifest.backend == "ensemble":  # never evaluated as a whole: say so, and where the figures are
        info = (manifest.model_extra or {}).get("ensemble")
        members = info.get("members") if isinstance(info, dict) else None  # a hand-edited record: no names
        members = members if isinstance(members, list) else []
        names = ", ".join(f"{x.get('name')} {x.get('version')}" for x in members if isinstance(x, dict))
        return (f"an ensemble of {names or 'its members'}, not evaluated as a whole: each member's evaluation is in "
                "`xylen models show MEMBER`")
    honesty = m.get("honesty")
    if isinstance(honesty, dict) and isinstance(honesty.get("sentence"), str):
        text: str = honesty["sentence"]
        retrain = manifest.model_extra.get("retrain") if manifest.model_extra else None
        if isinstance(retrain, dict) and honesty.get("version"):
            text += f" (walk-forward of {honesty['version']}; retrained since, each version gated on log-loss)"
        return text
    if manifest.backend != "lightgbm" or manifest.feature_set.version == "external" or not _has(m, "auc_mean"):
        if _has(m, "auc_holdout"):
            return (
                f"holdout AUC {m['auc_holdout']:.3f} at its last retrain; no walk-forward evaluation with intervals "
                "recorded (retrain it with `xylen train` for one)"
            )
        return "no evaluation recorded (an imported model): xylen cannot say what it knows"
    edge = m.get("auc_edge_vs_volatility")
    tail = f", edge over the volatility-only learner {edge:+.4f}" if isinstance(edge, (int, float)) else ""
    return (
        f"AUC {m['auc_mean']:.3f}{tail}, without an interval (trained by xylen {manifest.xylen_version}); "
        "train it again with `xylen train` for an evaluation with intervals"
    )


def _has(m: dict[str, Any], key: str) -> bool:
    return isinstance(m.get(key), (int, float))
