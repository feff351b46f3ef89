"""Watching the live model: how it has scored on the labels realised since its promotion, and how old it is.

``record`` scores the live version on every candle of its series (from the store) that opened at or after its
promotion -- and after its training window, so nothing it trained on is counted -- and whose label is complete,
built by the same code as training (``dataset.build`` with the model's own feature set and label: windows whose
lookback or horizon spans a gap are left out). Next to it, the same metrics for the volatility baseline: a LightGBM on
the volatility features of the model's feature set alone (``FeatureSet.volatility``), fitted on the live model's
training window with its params and number of trees; with a threshold label volatility
alone is predictive, so the model's edge over that baseline is what says whether it knows anything (see
DESIGN.md). The record is stored beside CURRENT.json as ``models/<name>/WATCH.json``; ``read`` returns it only while
it describes the version that is live now.

``staleness`` says whether a model is older than ``XYLEN_MODEL_MAX_AGE``. ``read`` and ``staleness`` are used by
the server, so this module imports neither polars nor lightgbm until ``record`` runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from xylen.core import featuresets, labels
from xylen.core.bundle import Manifest
from xylen.core.errors import BundleError, XylenError
from xylen.core.intervals import approx_ms
from xylen.core.markets import exchange_flag, store_of
from xylen.core.registry import Registry
from xylen.core.storage import Conflict
from xylen.train import metrics

if TYPE_CHECKING:
    from xylen.core.settings import Settings
    from xylen.core.store import Store
    from xylen.train.dataset import Dataset

RECORD = "WATCH.json"
MIN_ROWS = 50  # fewer scored rows than this say nothing about AUC or hit rate
MIN_WINDOW_SHARE = 0.9  # the baseline must see (nearly) the rows the model trained on, or the comparison flatters
MAX_ROUNDS = 100_000
CACHE_FORMAT = 1
_SWAP_RETRIES = 50
# The learner's settings that the baseline copies from the live model's manifest; anything else (file paths,
# metrics, thread counts) is not the model's shape and is not passed to LightGBM.
_TREE_PARAMS = (
    "learning_rate",
    "num_leaves",
    "max_depth",
    "max_bin",
    "min_data_in_leaf",
    "min_sum_hessian_in_leaf",
    "min_gain_to_split",
    "feature_fraction",
    "feature_fraction_seed",
    "bagging_fraction",
    "bagging_freq",
    "bagging_seed",
    "lambda_l1",
    "lambda_l2",
    "seed",
    "deterministic",
    "force_col_wise",
)


# -- time -------------------------------------------------------------------------------------------------------
def parse_iso(text: object) -> float | None:
    """Epoch seconds of an ISO-8601 time (``2024-07-01T00:00:00Z``; naive times are UTC), None if it is not one."""
    if not isinstance(text, str) or not text:
        return None
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"  # fromisoformat accepts "Z" only from Python 3.11
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def staleness(manifest: Manifest | Mapping[str, Any], max_age_s: float, now: float | None = None) -> dict[str, Any]:
    """{"age_seconds", "max_age_seconds", "stale"} from the manifest's created_at. A created_at that is not an ISO
    time gives age and stale None: nothing can be said about the model's age."""
    created = manifest.get("created_at") if isinstance(manifest, Mapping) else manifest.created_at
    t = parse_iso(created)
    age = None if t is None else (time.time() if now is None else now) - t
    return {
        "age_seconds": None if age is None else round(age, 1),
        "max_age_seconds": float(max_age_s),
        "stale": None if age is None else age > max_age_s,
    }


def mark_stale(rows: list[dict[str, Any]], max_age_s: float, now: float | None = None) -> list[dict[str, Any]]:
    """``Registry.summary`` rows with "stale" added to each readable live row (what `xylen models list` shows).
    Kept here rather than in the registry: core/ does not depend on train/."""
    for r in rows:
        if r.get("live") and r.get("ok"):
            r["stale"] = staleness(r, max_age_s, now)["stale"]
    return rows


# -- reading ----------------------------------------------------------------------------------------------------
def _key(name: str) -> str:
    return f"{name}/{RECORD}"


def read(registry: Registry, name: str) -> dict[str, Any] | None:
    """The stored record if it describes the version live now (same version, same promotion), else None. Never
    raises: a damaged record, pointer or name reads as "no record" (servers call this)."""
    try:
        live = registry.current(name)
        got = None if live is None else registry.storage.read_versioned(_key(name))
        rec = None if got is None else orjson.loads(got.data)
    except (XylenError, OSError, ValueError):
        return None
    if live is None or not isinstance(rec, dict):
        return None
    if rec.get("name") != name or rec.get("version") != live.version or rec.get("promoted_at") != live.promoted_at:
        return None  # a record of an earlier live version (or an earlier promotion of this one)
    return rec if _well_formed(rec) else None


def _is(v: object, *types: type) -> bool:
    return isinstance(v, types) and not isinstance(v, bool)


def _opt_num(v: object) -> bool:
    return v is None or _is(v, int, float)


_MAX_MS = 253_402_300_799_999  # 9999-12-31: an open time a display can format


def _well_formed(rec: dict[str, Any]) -> bool:
    """The fields readers format, present and with the types ``record`` writes (a hand-edited file must not break
    a display: `xylen models show` indexes them)."""
    scored = [rec.get(k) for k in ("model", "volatility_baseline")]
    first, last = rec.get("first_open_time"), rec.get("last_open_time")
    numbers = ("base_rate", "auc_edge_vs_volatility", "entry_threshold")
    return (
        _is(rec.get("rows"), int)
        and isinstance(rec.get("computed_at"), str)
        and (first is None and last is None or all(isinstance(v, int) and 0 <= v <= _MAX_MS for v in (first, last)))
        and all(k in rec and _opt_num(rec[k]) for k in numbers)
        and (rec.get("note") is None or isinstance(rec.get("note"), str))
        and all(
            s is None
            or (
                isinstance(s, dict)
                and _is(s.get("signals"), int)
                and all(k in s and _opt_num(s[k]) for k in ("auc", "logloss", "hit_rate"))
            )
            for s in scored
        )
    )


# -- computing --------------------------------------------------------------------------------------------------
def watchable(m: Manifest) -> tuple[labels.LabelSpec, featuresets.FeatureSet] | None:
    """The label (of the primary head) and the feature set of a xylen-trained LightGBM bundle that can be scored from
    candles, else None (imported models, a feature set this xylen does not compute, no training window or series, a
    label this xylen does not read)."""
    if m.backend != "lightgbm" or m.training_window is None or not m.symbol or not m.interval:
        return None
    fs = featuresets.for_manifest(m.feature_set.version, list(m.feature_set.names), m.interval)
    if fs is None or m.label.get("horizon") is None:  # no horizon: an imported model's empty label
        return None
    try:
        return labels.LabelSpec.from_dict(m.label), fs
    except BundleError:
        return None


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def scores(y: np.ndarray, p: np.ndarray, entry_threshold: float) -> dict[str, Any]:
    """AUC, log-loss, and the hit rate: the share of label 1 among the rows the model signals (p >= threshold)."""
    signal = p >= entry_threshold
    n_sig = int(signal.sum())
    return {
        "auc": _num(metrics.auc(y, p)),
        "logloss": _num(metrics.logloss(y, p)),
        "hit_rate": float(y[signal].mean()) if n_sig else None,
        "signals": n_sig,
    }


def _margin_ms(interval: str, candles: int) -> int:
    return 2 * candles * approx_ms(interval)  # twice: calendar months are longer than the average month


def record(
    settings: Settings, registry: Registry, store: Store, name: str, *, now: float | None = None
) -> dict[str, Any] | None:
    """Score the live version of ``name`` on the labels realised since its promotion and store the record.

    None when nothing is live or the live model cannot be scored from candles (see ``watchable``). A damaged live
    bundle (BundleError) or an unreadable store file (DataError) raises, as every other reader of them does."""
    live = registry.current(name)
    if live is None:
        return None
    m = registry.manifest(name, live.version)
    got = watchable(m)
    if got is None:
        return None
    spec, fs = got
    assert m.training_window is not None and m.symbol and m.interval  # watchable() checked them
    rec: dict[str, Any] = {
        "name": name,
        "version": live.version,
        "symbol": m.symbol,
        "interval": m.interval,
        "promoted_at": live.promoted_at,
        "computed_at": iso(time.time() if now is None else now),
        "first_open_time": None,
        "last_open_time": None,
        "rows": 0,
        "base_rate": None,
        "entry_threshold": settings.entry_threshold,
        "model": None,
        "volatility_baseline": None,
        "auc_edge_vs_volatility": None,
        "note": None,
    }
    promoted = parse_iso(live.promoted_at)
    if promoted is None:
        rec["note"] = f"CURRENT.json has no promotion time ({live.promoted_at!r}): nothing to count from."
        return _store(registry, name, rec)
    # after the training window too: a model promoted before the end of its own data must not score on it
    since = max(int(promoted * 1000), m.training_window.last_open_time + 1)
    from xylen.train.dataset import build

    df = store_of(store, m.exchange).read(m.symbol, m.interval, start=since - _margin_ms(m.interval, fs.lookback + 1))
    ds = build(df, m.interval, spec, fs)
    rows = ds.rows[ds.open_time[ds.rows] >= since]
    y = ds.y[rows]
    rec["rows"] = len(rows)
    if len(rows):
        rec["first_open_time"] = int(ds.open_time[rows[0]])
        rec["last_open_time"] = int(ds.open_time[rows[-1]])
        rec["base_rate"] = float(y.mean())
    if len(rows) < MIN_ROWS:
        rec["note"] = (
            f"{len(rows)} candle(s) with a complete {spec.horizon}-candle label since {iso(since / 1000)}; "
            f"metrics need at least {MIN_ROWS}."
        )
        return _store(registry, name, rec)
    if len(np.unique(y)) < 2:
        rec["note"] = f"every label since {iso(since / 1000)} is {int(y[0])}: AUC and log-loss need both classes."
        return _store(registry, name, rec)
    from xylen.core.bundle import load_bundle

    bundle = load_bundle(registry.path(name, live.version))  # size + sha256 before LightGBM reads the file
    rec["model"] = scores(y, bundle.predict(ds.X[rows]), settings.entry_threshold)
    booster, why = baseline(settings, store, m)
    if booster is None:
        rec["note"] = f"no volatility baseline: {why}"
    else:
        X_vol = np.ascontiguousarray(ds.X[rows][:, fs.indices(fs.volatility)])
        rec["volatility_baseline"] = scores(y, booster.predict(X_vol, num_threads=1), settings.entry_threshold)
        a, b = rec["model"]["auc"], rec["volatility_baseline"]["auc"]
        rec["auc_edge_vs_volatility"] = None if a is None or b is None else a - b
    return _store(registry, name, rec)


def _store(registry: Registry, name: str, rec: dict[str, Any]) -> dict[str, Any]:
    """Write the record by compare-and-swap (retried); a record whose version stopped being live meanwhile is not
    written over the newer one's."""
    data = orjson.dumps(rec, option=orjson.OPT_INDENT_2)
    for _ in range(_SWAP_RETRIES):
        token = registry.storage.token(_key(name))
        try:
            registry.storage.swap(_key(name), data, token)
            return rec
        except Conflict:
            live = registry.current(name)
            if live is None or live.version != rec["version"] or live.promoted_at != rec["promoted_at"]:
                return rec
    return rec  # fifty writers in a row: theirs is as fresh as ours


# -- the volatility baseline ------------------------------------------------------------------------------------
def _window_frame(store: Store, m: Manifest, spec: labels.LabelSpec, fs: featuresets.FeatureSet) -> Dataset:
    from xylen.train.dataset import build

    assert m.training_window is not None and m.symbol and m.interval
    tw = m.training_window
    source = str(m.metrics.get("data_source", ""))
    if source.startswith("bundled sample"):
        from xylen.core.candles import read_candles
        from xylen.train.pipeline import sample_path

        df = read_candles(sample_path()).frame
    else:
        lo = tw.first_open_time - _margin_ms(m.interval, fs.lookback + 1)
        hi = tw.last_open_time + _margin_ms(m.interval, spec.horizon + 1)
        df = store_of(store, m.exchange).read(m.symbol, m.interval, start=lo, end=hi)
    return build(df, m.interval, spec, fs)


def _params(settings: Settings, m: Manifest) -> tuple[dict[str, Any], int] | str:
    raw = m.params
    rounds = raw.get("num_boost_round")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or not 1 <= rounds <= MAX_ROUNDS:
        return f"the manifest's num_boost_round {str(rounds)[:40]!r} is not a number of trees (1..{MAX_ROUNDS})"
    if raw.get("objective", "binary") != "binary":
        return f"the live model's objective {str(raw.get('objective'))[:40]!r} is not binary"
    from xylen.train.threads import training_threads

    asked = raw.get("num_threads")
    asked = asked if isinstance(asked, int) and not isinstance(asked, bool) and asked >= 1 else 1
    wanted = settings.lgbm_num_threads or min(asked, os.cpu_count() or 1)
    threads, _ = training_threads(max(1, wanted), explicit=settings.lgbm_num_threads is not None)
    params = {k: raw[k] for k in _TREE_PARAMS if k in raw}
    return params | {"objective": "binary", "num_threads": threads, "verbosity": -1}, rounds


def _cache_path(settings: Settings, m: Manifest) -> Path:
    return settings.home / "cache" / "watch" / m.name / f"{m.version}.json"


def _cached(path: Path, m: Manifest, n_features: int) -> Any:
    """The cached baseline booster, or None when there is none or it cannot be trusted (its model text is checked
    against the sha256 stored beside it before LightGBM reads it: a damaged text model can crash the process)."""
    try:
        raw = orjson.loads(path.read_bytes())
        text = raw["booster"]
        ok = (
            raw.get("format") == CACHE_FORMAT
            and raw.get("model_sha256") == m.artifact.sha256  # a registry rebuilt since can reuse version numbers
            and isinstance(text, str)
            and hashlib.sha256(text.encode()).hexdigest() == raw.get("sha256")
            and text.startswith("tree")
            and "end of trees" in text
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not ok:
        return None
    import lightgbm as lgb

    try:
        booster = lgb.Booster(model_str=text)
    except lgb.basic.LightGBMError:
        return None
    return booster if booster.num_feature() == n_features else None


def _write_cache(path: Path, data: bytes) -> None:
    """Temp file + fsync + rename: a reader sees the old file or the new one. A cache that cannot be written
    (read-only home, full disk) costs a refit next time, nothing else."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def baseline(settings: Settings, store: Store, m: Manifest) -> tuple[Any, str | None]:
    """(booster, None), or (None, why not): LightGBM on the volatility features alone, fitted on the live model's
    training window with its params and number of trees; cached per model version under XYLEN_HOME/cache/watch."""
    what = watchable(m)
    if what is None:
        return None, "the live model's label or feature set cannot be rebuilt"
    spec, fs = what
    path = _cache_path(settings, m)
    booster = _cached(path, m, len(fs.volatility))
    if booster is not None:
        return booster, None
    got = _params(settings, m)
    if isinstance(got, str):
        return None, got
    params, rounds = got
    assert m.training_window is not None
    tw = m.training_window
    ds = _window_frame(store, m, spec, fs)
    fit = ds.rows[(ds.open_time[ds.rows] >= tw.first_open_time) & (ds.open_time[ds.rows] <= tw.last_open_time)]
    if len(fit) < MIN_WINDOW_SHARE * tw.rows or len(np.unique(ds.y[fit])) < 2:
        return None, (
            f"the store holds {len(fit)} usable candles of the training window ({iso(tw.first_open_time / 1000)} .. "
            f"{iso(tw.last_open_time / 1000)}, {tw.rows} trained on); collect them with `xylen collect --symbols "
            f"{m.symbol} --intervals {m.interval}{exchange_flag(m.exchange)} "
            f"--since {iso(tw.first_open_time / 1000)[:10]} --once`"
        )
    import lightgbm as lgb

    X = np.ascontiguousarray(ds.X[fit][:, fs.indices(fs.volatility)])
    data = lgb.Dataset(
        X,
        label=ds.y[fit],
        feature_name=list(fs.volatility),
        params={"max_bin": params.get("max_bin", 255), "verbosity": -1},
    )
    try:
        booster = lgb.train(params, data, num_boost_round=rounds)
    except (lgb.basic.LightGBMError, ValueError, TypeError) as exc:  # a hand-edited manifest's params
        return None, f"LightGBM refused the live model's params ({str(exc)[:200]})"
    text = booster.model_to_string()
    entry = {
        "format": CACHE_FORMAT,
        "name": m.name,
        "version": m.version,
        "model_sha256": m.artifact.sha256,
        "rows": len(fit),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "booster": text,
    }
    _write_cache(path, orjson.dumps(entry))
    return booster, None
