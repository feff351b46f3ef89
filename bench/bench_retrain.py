"""`xylen retrain` benchmarks (issues #8, #10): retrain time with one head and two, and how fast a promotion reaches
a loaded server.

    python bench/bench_retrain.py [--reps 3] [--promotions 3] [--rate 250]

1. Retrain on the bundled sample plus 1,000 new candles (aim: full refit <= 10 s, warm start <= 3 s, gate
   included). The store holds the whole bundled sample (BTCUSDT 5m 2023, 104,816 candles). The gate's holdout is the
   last H = max(2,000, 10 % of the window) candles (H = 10,482 here), which the live model must not have seen, so the
   live model is `xylen train --profile 8gb` on the sample minus its last H + 1,000 candles: the candidate then fits
   1,000 candles the live model never saw, and both are scored on the same H candles neither saw. Two live models:
   one head (`--label direction --extra-head none`) and two heads (`--label direction --extra-head move`, the
   default): the same primary, so the difference is the move head's refit and gate. Each run is a
   `python -m xylen retrain --json` process on a fresh copy of that home (so each one has the same new candles):
   full refit and warm start of each, and the same-run baseline -- a plain `lgb.train` of the one-head full refit's
   rows with its parameters and tree count, in this process, features already computed -- alternating, medians
   printed. Wall = the process from start to exit (Python start-up included); "run" = the seconds the run reports.
2. A promotion reaches a server answering ~250 req/s (aim: within 2 s, 0 failed requests): `xylen serve` on the
   two-head home, a client thread sending POST /predict at --rate, then `xylen retrain` promotes (with
   XYLEN_RETRAIN_TOLERANCE=0.05: this measures the swap, and a direction model's log-loss moves by a few thousandths
   between two windows, more than the default tolerance); measured from the moment CURRENT.json is replaced (its
   ctime) to the first answer that names the new version. Between promotions, `xylen models rollback` makes the old
   version live again: a swap under the same load with no trainer running beside the server, timed the same way --
   the same-run baseline (its failures count too).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import free_port, request_body  # noqa: E402

MODEL = "btcusdt-5m"
NEW = 1000
HEADS = {"one head": ("--label", "direction", "--extra-head", "none"), "two heads": ("--label", "direction")}
PROMOTE_ENV = {"XYLEN_RETRAIN_TOLERANCE": "0.05"}


def xylen(
    home: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    env = {**os.environ, "XYLEN_HOME": str(home)} | (env or {})
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "xylen", *args], env=env, capture_output=True, check=False)
    wall = time.perf_counter() - t
    if check and proc.returncode != 0:
        raise SystemExit(f"xylen {' '.join(args)}: exit {proc.returncode}\n{proc.stderr.decode()[-3000:]}")
    return wall, proc


def make_template(root: Path, heads: str) -> Path:
    from xylen.core.candles import read_candles
    from xylen.core.store import Store
    from xylen.train import gate
    from xylen.train.pipeline import sample_path

    frame = read_candles(sample_path()).frame
    hold = gate.holdout_size(frame.height, 2000)  # 10 % of the window: more than the 2,000 minimum
    home = root / f"template-{heads.replace(' ', '-')}"
    old = root / "live-window.parquet"
    frame.head(frame.height - hold - NEW).write_parquet(old)
    args = ("train", "--profile", "8gb", "--data", str(old), "--symbol", "BTCUSDT", "--interval", "5m", *HEADS[heads])
    wall, _ = xylen(home, *args)
    Store(home / "data").append("BTCUSDT", "5m", frame)
    print(
        f"{heads}: store = the bundled sample, {frame.height} candles; live v0001 = `xylen {' '.join(args[:3])} "
        f"{' '.join(HEADS[heads])}` on all but the last {hold} + {NEW} of them ({wall:.1f} s, walk-forward included)"
    )
    return home


def retrain_once(template: Path, work: Path, mode: str) -> dict[str, Any]:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(template, work)
    wall, proc = xylen(work, "retrain", MODEL, "--json", mode)
    (r,) = orjson.loads(proc.stdout)["results"]
    if r["candidate_version"] is None:
        raise SystemExit(f"retrain {mode} made no candidate: {r['message']}")
    return {"wall": wall, "run": r["seconds"], "result": r}


def plain_fit(work: Path, version: str) -> Any:
    """The baseline: lgb.train of the same rows with the same parameters and trees as that full refit."""
    import lightgbm as lgb
    import numpy as np

    from xylen.core import featuresets, labels
    from xylen.core.registry import Registry
    from xylen.core.store import Store
    from xylen.train.dataset import build

    m = Registry(work / "models").manifest(MODEL, version)
    assert m.training_window is not None
    df = Store(work / "data").read("BTCUSDT", "5m")
    fs = featuresets.for_manifest(m.feature_set.version, list(m.feature_set.names), "5m")
    assert fs is not None
    ds = build(df, "5m", labels.LabelSpec.from_dict(m.label), fs)
    tw = m.training_window
    rows = ds.rows[(ds.open_time[ds.rows] >= tw.first_open_time) & (ds.open_time[ds.rows] <= tw.last_open_time)]
    assert len(rows) == tw.rows, (len(rows), tw.rows)
    X, y = ds.X[rows], np.nan_to_num(ds.y[rows], nan=0.0)
    params = {k: v for k, v in m.params.items() if k != "num_boost_round"}
    rounds = int(m.params["num_boost_round"])

    def fit() -> float:
        t = time.perf_counter()
        dset = lgb.Dataset(X, label=y, feature_name=list(fs.names), params={"max_bin": params["max_bin"]})
        lgb.train(params, dset, num_boost_round=rounds)
        return time.perf_counter() - t

    return fit, len(rows), rounds, params.get("num_threads")


def bench_retrain(templates: dict[str, Path], root: Path, reps: int) -> None:
    work = root / "work"
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(h, m): [] for h in HEADS for m in ("--full", "--warm-start")}
    base: list[float] = []
    fit = None
    for i in range(reps):
        for heads, mode in runs:
            runs[heads, mode].append(retrain_once(templates[heads], work, mode))
            if (heads, mode) == ("one head", "--full") and fit is None:
                fit, n, rounds, threads = plain_fit(work, runs[heads, mode][-1]["result"]["candidate_version"])
                print(
                    f"baseline: plain lgb.train of the one-head full refit's {n} rows, {rounds} trees, "
                    f"{threads} thread(s)"
                )
        base.append(fit())  # type: ignore[misc]
        print(
            f"  rep {i + 1}: "
            + ", ".join(f"{h} {m[2:]} {v[-1]['wall']:.2f} s" for (h, m), v in runs.items())
            + f", plain fit {base[-1]:.2f} s"
        )
    med_base = statistics.median(base)
    print(f"\nretrain on the bundled sample plus {NEW} new candles (median of {reps}, alternating):")
    wall = {k: statistics.median(r["wall"] for r in v) for k, v in runs.items()}
    for (heads, mode), aim in zip(runs, (10.0, 3.0, 10.0, 3.0)):
        run = statistics.median(r["run"] for r in runs[heads, mode])
        r = runs[heads, mode][-1]["result"]
        g = r["gate"]
        per_head = "; ".join(
            f"{k} {h['decision']} ({h['candidate']['logloss']:.5f} vs {h['live']['logloss']:.5f})"
            for k, h in (g.get("heads") or {}).items()
        )
        print(
            f"  {heads:9s} {mode:13s} wall {wall[heads, mode]:5.2f} s (aim <= {aim:g} s), run {run:5.2f} s = "
            f"{wall[heads, mode] / med_base:4.1f}x the plain fit; {r['outcome']}, fits {r['samples_used']} rows, "
            f"holdout {g['holdout']['rows']}, log-loss {g['candidate']['logloss']:.5f} vs live "
            f"{g['live']['logloss']:.5f}{'; ' + per_head if per_head else ''}; peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    for mode in ("--full", "--warm-start"):
        print(f"  two heads / one head, {mode[2:]}: wall {wall['two heads', mode] / wall['one head', mode]:.2f}x")
    print(f"  baseline      plain lgb.train {med_base:.2f} s")


def bench_promotion(template: Path, root: Path, promotions: int, rate: float) -> None:
    home = root / "serve"
    if home.exists():
        shutil.rmtree(home)
    shutil.copytree(template, home)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "xylen", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    body = request_body()
    answers: list[tuple[float, str]] = []  # (wall clock, model_version)
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client() as c:
            t_next = time.perf_counter()
            while not stop.is_set():
                try:
                    r = c.post(f"{url}/predict", content=body, headers={"content-type": "application/json"})
                    if r.status_code == 200:
                        answers.append((time.time(), r.json()["model_version"]))
                    else:
                        failures.append(f"{r.status_code} {r.text[:120]}")
                except httpx.TransportError as exc:
                    failures.append(repr(exc))
                t_next += 1.0 / rate
                time.sleep(max(0.0, t_next - time.perf_counter()))

    def served(version: str, since: float, timeout: float = 30.0) -> float | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            hit = next((t for t, v in reversed(answers) if v == version and t >= since), None)
            if hit is not None and answers[-1][1] == version:
                return min(t for t, v in answers if v == version and t >= since)
            time.sleep(0.01)
        return None

    worker = threading.Thread(target=load)
    current = home / "models" / MODEL / "CURRENT.json"
    lat: list[float] = []
    rollback_lat: list[float] = []  # the same-run baseline: a swap with no trainer running beside the server
    retrain_s: list[float] = []
    t0 = time.perf_counter()
    worker.start()
    try:
        for i in range(promotions):
            if i:  # make the old version live again, so the next retrain has something to replace
                xylen(home, "models", "rollback", MODEL)
                at = current.stat().st_ctime
                back = served("v0001", at)
                rollback_lat.append(float("inf") if back is None else back - at)
            wall, proc = xylen(home, "retrain", MODEL, "--json", env=PROMOTE_ENV)
            (r,) = orjson.loads(proc.stdout)["results"]
            if r["outcome"] != "promoted":
                raise SystemExit(f"retrain did not promote: {r['message']}")
            swapped_at = current.stat().st_ctime  # the rename that made the new version live
            first = served(r["candidate_version"], swapped_at)
            retrain_s.append(wall)
            lat.append(float("inf") if first is None else first - swapped_at)
            print(
                f"  promotion {i + 1}: {r['candidate_version']} (retrain {wall:.1f} s) served "
                f"{lat[-1]:.2f} s after CURRENT.json was replaced"
            )
    finally:
        stop.set()
        worker.join()
        server.terminate()
        server.wait(30)
    took = time.perf_counter() - t0
    print(
        f"\npromotion under load: {len(answers)} requests in {took:.1f} s (~{len(answers) / took:.0f} req/s), "
        f"failed {len(failures)}; promotion -> first answer with the new version: median "
        f"{statistics.median(lat):.2f} s, max {max(lat):.2f} s (aim <= 2 s); server exit {server.returncode}"
    )
    if rollback_lat:
        print(
            f"baseline: `xylen models rollback` (no trainer running) -> first answer with the old version: median "
            f"{statistics.median(rollback_lat):.2f} s, max {max(rollback_lat):.2f} s"
        )
    if failures:
        print("first failures:", failures[:3])
    print(f"load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--promotions", type=int, default=3)
    ap.add_argument("--rate", type=float, default=250.0)
    ap.add_argument("--only", choices=["retrain", "promotion"])
    args = ap.parse_args()
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="retrain-", dir=out))
    # the machine may be shared: the load says how much of it the figures had
    print(f"{os.cpu_count()} CPUs, load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())} at the start")
    try:
        templates = {h: make_template(root, h) for h in HEADS if args.only != "promotion" or h == "two heads"}
        if args.only != "promotion":
            bench_retrain(templates, root, args.reps)
        if args.only != "retrain":
            bench_promotion(templates["two heads"], root, args.promotions, args.rate)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
