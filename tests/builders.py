"""Real bundles for tests and benchmarks, fast: LightGBM on ``features.frame`` of the bundled sample.

Not the training pipeline (no walk-forward, no report): a fixed number of rounds on a slice, written through
the registry with a complete manifest (golden rows + golden candle window), so servers verify it exactly like a
trained one. Also writes the corrupt candidates the hot-swap tests and bench/bench_swaps.py promote.
Lives in tests/ (not the wheel): it writes CURRENT pointers without checks, and needs the training code.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import numpy as np

from xylen.core import features, featuresets, labels
from xylen.core.bundle import (
    Head,
    Manifest,
    TrainingWindow,
    artifact_info,
    make_golden,
    new_manifest,
    now_iso,
    read_manifest,
    write_durably,
    write_manifest,
)
from xylen.core.registry import POINTER, Pointer, Registry

Corruption = Literal["truncated", "wrong_sha", "wrong_features", "head_truncated", "head_tampered", "head_swapped"]


def sample_arrays(rows: int | None = None) -> features.CandleArrays:
    """The bundled BTCUSDT 5m sample (real candles), the last ``rows`` of it."""
    from xylen.core.candles import read_candles
    from xylen.train.dataset import arrays_of
    from xylen.train.pipeline import sample_path

    df = read_candles(sample_path()).frame
    return arrays_of(df.tail(rows) if rows else df)


def window_matrix(c: features.CandleArrays, end: int, n: int) -> np.ndarray:
    """Rows ``end-n+1 .. end`` as an (n, 6) matrix: open_time, o, h, l, c, v."""
    s = slice(end - n + 1, end + 1)
    return np.column_stack([c.open_time[s].astype(np.float64), c.open[s], c.high[s], c.low[s], c.close[s], c.volume[s]])


def build_bundle(
    registry: Registry,
    name: str = "btcusdt-5m",
    *,
    rounds: int = 40,
    leaves: int = 15,
    rows: int = 4000,
    seed: int = 0,
    promote: bool = True,
    n_features: int | None = None,
    candles: features.CandleArrays | None = None,
    symbol: str = "BTCUSDT",
    interval: str = "5m",
    label: labels.LabelSpec | None = None,
    heads: tuple[str, ...] = (),
    feature_set: str = features.VERSION,
    exchange: str = "binance",
) -> str:
    """Train ``rounds`` x ``leaves`` on the last ``rows`` sample candles, publish, optionally promote.

    ``n_features`` < N_FEATURES trains on the first n features but still names all of them in the manifest
    (the "wrong feature count" corruption). ``label``: the primary's (default ``LabelSpec()``); ``heads``: label
    kinds ("move", "direction") of extra heads, each a LightGBM model on the same rows (``head-<kind>.txt``);
    ``feature_set``: a version of core/featuresets.py. Returns the new version.
    """
    import lightgbm as lgb

    c = candles if candles is not None else sample_arrays(rows)
    fs = featuresets.get(feature_set, interval)
    X = fs.frame(c)
    spec = label or labels.LabelSpec()
    y = labels.make(c.close, spec, c.high, c.low)
    ok = ~np.isnan(y) & ~np.isnan(X).any(axis=1)
    idx = np.flatnonzero(ok)
    Xt = X[idx] if n_features is None else X[idx][:, :n_features]
    params = {
        "objective": "binary",
        "num_leaves": leaves,
        "learning_rate": 0.05,
        "min_data_in_leaf": 20,
        "verbose": -1,
        "num_threads": 2,
        "seed": seed,
        "deterministic": True,
        "bagging_seed": seed,
        "feature_fraction": 0.9,
        "feature_fraction_seed": seed,
    }
    booster = lgb.train(params, lgb.Dataset(Xt, label=y[idx]), num_boost_round=rounds)
    with registry.stage(name) as staging:
        model_file = staging / "model.txt"
        booster.save_model(str(model_file))
        g_rows = Xt[np.linspace(0, len(idx) - 1, 8).astype(int)]
        last = int(idx[-1])
        window = window_matrix(c, last, fs.min_candles)
        predict = lambda X: booster.predict(X, num_threads=1)  # noqa: E731
        golden = make_golden(predict, g_rows, window if n_features is None else None, fs)
        extra = []
        for kind in heads:  # same rows, same params, its own label: what pipeline.publish_booster writes
            h_spec = labels.LabelSpec(horizon=spec.horizon, kind=kind)
            h_y = labels.make(c.close, h_spec, c.high, c.low)[idx]
            h_booster = lgb.train(params, lgb.Dataset(Xt, label=h_y), num_boost_round=rounds)
            h_file = staging / f"head-{kind}.txt"
            h_booster.save_model(str(h_file))
            h_row = fs.last_row(features.CandleArrays.from_matrix(window)).reshape(1, -1)
            extra.append(Head(artifact=artifact_info(h_file), label=h_spec.to_dict(),
                              golden_outputs=h_booster.predict(g_rows, num_threads=1).tolist(),
                              window_output=float(h_booster.predict(h_row, num_threads=1)[0])))
        manifest = new_manifest(
            name=name,
            version="v0000",
            backend="lightgbm",
            artifact=artifact_info(model_file),
            feature_set={"version": fs.version, "names": list(fs.names)},
            label=spec.to_dict(),
            heads=extra,
            symbol=symbol,
            interval=interval,
            exchange=exchange,
            training_window=TrainingWindow(
                first_open_time=int(c.open_time[idx[0]]), last_open_time=int(c.open_time[idx[-1]]), rows=len(idx)
            ),
            params=params | {"num_boost_round": rounds},
            golden=golden,
        )
        write_manifest(staging, manifest)
        version = registry.publish(name, staging)
    if promote:
        registry.promote(name, version)
    return version


def publish_corrupt(registry: Registry, name: str, kind: Corruption, *, base: str | None = None) -> str:
    """Publish a broken copy of version ``base`` (default: the live one) and point CURRENT at it directly,
    bypassing ``Registry.promote``'s own checks, as a damaged disk or a buggy writer would. Returns its version."""
    if kind == "wrong_features":
        version = build_bundle(registry, name, rounds=5, rows=800, promote=False, n_features=features.N_FEATURES // 2)
    else:
        src = registry.path(name, base or registry.current_path(name).name)
        with registry.stage(name) as staging:
            for f in src.iterdir():
                if f.is_file():
                    shutil.copy2(f, staging / f.name)
            m = read_manifest(staging)
            art = staging / m.artifact.file
            if kind.startswith("head_"):
                _corrupt_head(staging, m, kind)
            elif kind == "truncated":
                data = art.read_bytes()
                art.write_bytes(data[: len(data) // 2])
                m.artifact = artifact_info(art)  # the hash matches the damage: only a load can tell
            else:
                m.artifact.sha256 = ("0" if m.artifact.sha256[0] != "0" else "1") + m.artifact.sha256[1:]
            write_manifest(staging, m)
            version = registry.publish(name, staging)
    point(registry, name, version)
    return version


def _corrupt_head(staging: Path, m: Manifest, kind: str) -> None:
    """Damage the first extra head of the copy in ``staging``: ``head_truncated`` (half the file, its manifest
    entry updated to match: only a load can tell), ``head_tampered`` (a leaf value edited, the manifest left as it
    was: the sha256 tells), ``head_swapped`` (another model's trees with a matching manifest entry: only the
    golden outputs tell)."""
    head = m.heads[0]
    art = staging / head.artifact.file
    text = art.read_text()
    if kind == "head_truncated":
        art.write_text(text[: len(text) // 2])
        head.artifact = artifact_info(art)
    elif kind == "head_tampered":
        at = text.index("leaf_value=") + len("leaf_value=")
        art.write_text(text[:at] + ("9" if text[at] != "9" else "8") + text[at + 1 :])
    else:
        shutil.copy2(staging / m.artifact.file, art)  # the primary's trees
        head.artifact = artifact_info(art)


def point(registry: Registry, name: str, version: str) -> None:
    """Write CURRENT.json naming ``version`` without any check (what a tampered pointer looks like)."""
    m: Manifest = read_manifest(registry.path(name, version))
    old = registry.current(name)
    history = (old.version, *old.history)[:50] if old and old.version != version else ()
    ptr = Pointer(name=name, version=version, sha256=m.artifact.sha256, promoted_at=now_iso(), history=history)
    write_durably(registry.root / name / POINTER, ptr.to_json())


def publish_copies(registry: Registry, source: Path, symbols: list[str], *, promote: bool = True) -> list[str]:
    """Publish a copy of the bundle folder ``source`` as the model of each of ``symbols`` (same interval and
    exchange: ``c0001usdt-5m`` for ``C0001USDT``) through ``registry``, each a complete bundle that verifies as the
    source does; ``promote``: point CURRENT at it without the per-version child (callers verify in one batch).
    Returns the model names. Many markets in one server without training each one."""
    from xylen.core.markets import model_name

    names = []
    for symbol in symbols:
        m = read_manifest(source)
        name = model_name(symbol, m.interval or "5m", m.exchange)
        with registry.stage(name) as staging:
            for f in source.iterdir():
                if f.is_file():
                    shutil.copy2(f, staging / f.name)
            m.name, m.symbol = name, symbol
            write_manifest(staging, m)
            version = registry.publish(name, staging)
        if promote:
            point(registry, name, version)
        names.append(name)
    return names
