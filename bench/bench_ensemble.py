"""Benchmark a 3-member ensemble's POST /predict against a single model's, same server, same run, interleaved.

    python bench/bench_ensemble.py [--home /tmp/xylen-bench-ens] [--duration 3] [--rounds 5] [--connections 16]

1. Builds (or reuses) three 500-tree x 31-leaf LightGBM models on the whole bundled sample (seeds 0, 1, 2:
   m1, m2, m3) and the ensemble ``btcusdt-5m`` = mean(m1, m2, m3) (`xylen.core.ensemble.create`, promoted), and a
   single model ``ethusdt-5m`` with m1's parameters and seed (the same trees) trained as ETHUSDT: the two bodies
   differ only in their symbol, so both requests decode and compute the same 100-candle features.
2. Baseline, in this process: the /predict handler for each body, and the model part alone (one fast single-row
   LightGBM call vs the ensemble's three and their mean), per call.
3. Starts `xylen serve` (one worker) with both, then alternates ``--rounds`` times: single, ensemble, each
   ``--duration`` s at concurrency 1 (p50/p99 latency) and at ``--connections`` (requests/s), with bench_predict's
   keep-alive client. Prints the medians and the ratio ensemble / single (aim: p50 <= 2x).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.builders
sys.path.insert(0, str(ROOT / "bench"))  # bench_predict: the server starter and the load client

import bench_predict as bp  # noqa: E402

ENS, SINGLE, MEMBERS = "btcusdt-5m", "ethusdt-5m", ("m1", "m2", "m3")


def build(home: Path) -> None:
    from tests.builders import build_bundle

    from xylen.core import ensemble
    from xylen.core.registry import Registry

    reg = Registry(home / "models")
    for seed, name in enumerate((*MEMBERS, SINGLE)):
        if reg.current(name) is not None:
            print(f"model: reusing {reg.current_path(name)}")
            continue
        t = time.perf_counter()
        symbol = "ETHUSDT" if name == SINGLE else "BTCUSDT"
        build_bundle(reg, name, rounds=500, leaves=31, rows=0, seed=seed if name != SINGLE else 0, symbol=symbol)
        print(f"model: {name}: 500 trees x 31 leaves on the full sample in {time.perf_counter() - t:.1f} s")
    if reg.current(ENS) is None:
        v, _ = ensemble.create(reg, ENS, list(MEMBERS), promote=True)
        print(f"model: {ENS} {v} = mean of {', '.join(MEMBERS)}")


def body(symbol: str) -> bytes:
    import orjson
    from tests.builders import sample_arrays, window_matrix

    c = sample_arrays(1000)
    w = window_matrix(c, len(c) - 1, 100)
    rows = [[int(r[0]), *(repr(float(x)) for x in r[1:6]), int(r[0]) + 299_999, "0", 0, "0", "0", "0"] for r in w]
    return orjson.dumps({"symbol": symbol, "timeframe": "5m", "candles": rows, "indicators": {}, "meta": {}})


def in_process(home: Path, bodies: dict[str, bytes], rounds: int) -> None:
    from xylen.core.registry import Registry
    from xylen.core.settings import load_settings
    from xylen.serve.decode import decode_candles, decode_predict
    from xylen.serve.holder import ModelHolder
    from xylen.serve.metrics import Metrics
    from xylen.serve.predict import predict
    from xylen.serve.state import ServeState

    holder = ModelHolder(Registry(home / "models"), [ENS, SINGLE])
    holder.load_all()
    assert holder.not_ready_reason() is None, holder.problems
    state = ServeState(settings=load_settings({"home": home}, environ={}), holder=holder, metrics=Metrics(),
                       keys=None)  # type: ignore[arg-type]
    rows = {}
    for name, b in bodies.items():
        fs = holder.live[name].bundle.features
        assert fs is not None
        rows[name] = fs.last_row(decode_candles(decode_predict(b).candles, fs.min_candles).candles)
    took: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):  # alternating: a change in the machine's load hits both alike
        for name, b in bodies.items():
            live = holder.live[name]
            took.setdefault((name, "handler"), []).append(
                bp.per_call(lambda b=b: predict(state, b), 500))  # type: ignore[arg-type]
            took.setdefault((name, "model"), []).append(bp.per_call(lambda lv=live, x=rows[name]: lv.predict_row(x)))
    med = {k: float(np.median(v)) for k, v in took.items()}
    for name in bodies:
        print(f"in process, {name:<10} ({holder.live[name].predict_path}): handler {med[(name, 'handler')]:.1f} µs, "
              f"model part {med[(name, 'model')]:.1f} µs")
    print(f"in process, ensemble / single: handler x{med[(ENS, 'handler')] / med[(SINGLE, 'handler')]:.2f}, "
          f"model part x{med[(ENS, 'model')] / med[(SINGLE, 'model')]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "xylen-bench-ens")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    build(args.home)
    bodies = {SINGLE: body("ETHUSDT"), ENS: body("BTCUSDT")}
    in_process(args.home, bodies, args.rounds)
    port = bp.free_port()
    proc = bp.start_server(args.home, port, (ENS, SINGLE))
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for b in bodies.values():
            bp.python_load(port, b, 4, 1.0)  # warm-up
        for _ in range(args.rounds):
            for conns in (1, args.connections):
                for name, b in bodies.items():
                    r = bp.python_load(port, b, conns, args.duration)
                    assert r["errors"] == 0, r
                    runs.setdefault((name, conns), []).append(r)
        print(f"server RSS after load: {bp.rss_mb(proc.pid):.0f} MB")
    finally:
        proc.terminate()
        proc.wait(15)

    def med(name: str, conns: int, key: str) -> float:
        return float(np.median([r[key] for r in runs[(name, conns)]]))

    print(f"same run, {args.rounds} alternating rounds of {args.duration:.0f} s, medians:")
    for name in bodies:
        what = "3-member ensemble (mean)" if name == ENS else "single model"
        print(f"  {what:<25} c=1 p50 {med(name, 1, 'p50_ms'):.3f} ms  p99 {med(name, 1, 'p99_ms'):.3f} ms  "
              f"c={args.connections} {med(name, args.connections, 'rps'):,.0f} req/s")
    print(f"  ensemble / single: p50 x{med(ENS, 1, 'p50_ms') / med(SINGLE, 1, 'p50_ms'):.2f} (aim <= 2x), "
          f"req/s x{med(ENS, args.connections, 'rps') / med(SINGLE, args.connections, 'rps'):.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
