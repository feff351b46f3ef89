"""Member models for the ensemble tests: small real LightGBM bundles that share the label and feature set (and a
few that do not), built once per module and copied per test."""

from __future__ import annotations

from xylen.core import labels
from xylen.core.registry import Registry


def build_members(reg: Registry, *, others: bool = True) -> None:
    """m-a v0001 (live) and v0002; m-b v0001 and v0002 (live); with ``others``: m-dir (a direction label), m-ctx
    (another feature set), m-1h (1h candles), m-kraken (Kraken's candles), m-h1 and m-h2 (a direction label with a
    move head)."""
    from tests.builders import build_bundle

    build_bundle(reg, "m-a", rounds=10, rows=1500, seed=1)
    build_bundle(reg, "m-a", rounds=14, rows=1500, seed=4, promote=False)
    build_bundle(reg, "m-b", rounds=12, rows=1500, seed=2)
    build_bundle(reg, "m-b", rounds=8, rows=1500, seed=3)
    if not others:
        return
    build_bundle(reg, "m-dir", rounds=8, rows=1500, seed=5, label=labels.LabelSpec(kind="direction"))
    build_bundle(reg, "m-ctx", rounds=8, rows=3000, seed=6, feature_set="ohlcv-ctx-v1")
    build_bundle(reg, "m-1h", rounds=8, rows=1500, seed=6, interval="1h")
    build_bundle(reg, "m-kraken", rounds=8, rows=1500, seed=6, exchange="kraken")
    for i, name in enumerate(("m-h1", "m-h2")):
        build_bundle(reg, name, rounds=8 + i, rows=1500, seed=7 + i, label=labels.LabelSpec(kind="direction"),
                     heads=("move",))
