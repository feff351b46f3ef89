"""Benchmark /ws/predict against POST /predict on the same `xylen serve`, same model, same run.

    python bench/bench_stream.py [--home /tmp/xylen-bench-stream] [--duration 5] [--rounds 2] [--sockets 32]

1. Builds (or reuses) bench_predict.py's one-head 500-tree x 31-leaf model btcusdt-5m on the whole bundled sample.
2. In this process, the per-candle cost of the stream's code path (``Subscription.candle``: decode and check the
   candle, the ring buffer, ``FeatureSet.last_row``, the model, the answer dict) and its parts, next to the
   /predict handler on a 100-candle body.
3. Starts `xylen serve --model btcusdt-5m` (one worker) and alternates, ``--rounds`` times, ``--duration`` s each:
   - stream, 1 socket: subscribe with 100 real candles, then send the following candles pipelined (``--pipeline``
     messages in flight: send them, read their answers), resubscribing further on when the sample runs out;
   - stream, ``--sockets`` sockets at once, the same way (each from its own place in the sample);
   - HTTP: POST /predict with 100 candles, wrk (else an asyncio keep-alive client), 1 and ``--sockets`` connections.
   For each: predictions/s, the server process's CPU seconds (psutil) and so predictions per server CPU-second
   ("per core"), errors; for the stream also the server-side p50/p99 per candle message from the
   ``xylen_ws_message_duration_seconds{type="candle"}`` histogram (interpolated inside its bucket).
4. Prints medians over the rounds and the ratios stream / HTTP (aim: >= 5x per core, server p50 <= 100 µs).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.builders
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_predict

import bench_predict as bp  # noqa: E402

MODEL = bp.MODEL
WINDOW = 100
METRIC = 'xylen_ws_message_duration_seconds_bucket{le="'


def kline_rows() -> list[list[Any]]:
    from tests.builders import sample_arrays, window_matrix
    from tests.conftest import binance_rows

    c = sample_arrays()
    return binance_rows(window_matrix(c, len(c) - 1, len(c)))


def segments(rows: list[list[Any]]) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive 5m candles (the real sample has a gap: a stream must not send across it)."""
    t = np.array([r[0] for r in rows], dtype=np.int64)
    breaks = np.flatnonzero(np.diff(t) != 300_000) + 1
    return [(int(a), int(b)) for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(t)]) if b - a > 2 * WINDOW]


# -- in process ---------------------------------------------------------------------------------------------------
def in_process(home: Path, rows: list[list[Any]]) -> dict[str, float]:
    from xylen.core.features import CandleArrays
    from xylen.serve.decode import series_fields
    from xylen.serve.predict import closed_candles, predict
    from xylen.serve.stream_subs import Ring, Subscription, one_candle

    state: Any = bp.state_of(home)
    live = state.holder.live[MODEL]
    fs = live.bundle.features
    req = series_fields({"symbol": "BTCUSDT", "timeframe": "5m"})
    notes: list[str] = []
    start = max(segments(rows), key=lambda ab: ab[1] - ab[0])[0] + 1000
    window = rows[start - WINDOW : start]
    c = closed_candles(fs, window, "5m", time.time() * 1000, 2000.0, live.who, notes)

    def fresh() -> Subscription:
        sub = Subscription("b", "send", req, None, "5m", "BTCUSDT", "binance", Ring(fs.min_candles),
                           (live.name, live.version))
        sub.first(state, live, fs, c, [])
        return sub

    sub = fresh()
    k = [start]

    def step() -> None:
        if k[0] >= len(rows):
            raise RuntimeError("sample exhausted")
        sub.candle(state, rows[k[0]])
        k[0] += 1

    out = {"stream candle (all)": bp.per_call(step, 5000)}
    raw = rows[start]
    out["  decode + check one candle"] = bp.per_call(lambda: one_candle(raw, live.who), 5000)
    ring = sub.ring
    m = np.ascontiguousarray(ring.buf[ring.end - fs.min_candles : ring.end])
    cw = CandleArrays.from_matrix(m)
    out["  FeatureSet.last_row (49 candles)"] = bp.per_call(lambda: fs.last_row(cw), 5000)
    row = fs.last_row(cw)
    out["  model (C API single row)"] = bp.per_call(lambda: live.predict_row(row), 5000)
    msg = {"type": "prediction", "id": "b", "open_time": 1, "prediction": 0, "confidence": 0.5, "model": MODEL,
           "model_version": "v0001", "probability": 0.5, "feature_set": "ohlcv-v2", "notes": []}
    out["  orjson.dumps(answer).decode()"] = bp.per_call(lambda: orjson.dumps(msg).decode(), 5000)
    text = orjson.dumps({"type": "candle", "id": "b", "candle": raw}).decode()
    out["  orjson.loads(candle message)"] = bp.per_call(lambda: orjson.loads(text), 5000)
    body = orjson.dumps({"symbol": "BTCUSDT", "timeframe": "5m", "candles": window})
    out["/predict handler, 100 candles"] = bp.per_call(lambda: predict(state, body), 3000)
    return out


# -- over the network ---------------------------------------------------------------------------------------------
async def _socket(url: str, rows: list[list[Any]], offset: int, pipeline: int, stop_at: float,
                  counts: list[int], errors: list[int], sid: str) -> None:
    from websockets.asyncio.client import connect

    runs = segments(rows)
    async with connect(url, max_size=None, compression=None) as ws:
        k = offset
        sub = 0
        while time.perf_counter() < stop_at:
            sub += 1
            name = f"{sid}-{sub}"
            run = next(((a, b) for a, b in runs if a + WINDOW <= k and k + pipeline < b), None)
            if run is None:  # past the end of a run: the next one (or the first) from its start
                run = next(((a, b) for a, b in runs if a >= k), runs[0])
                k = run[0] + WINDOW
            end = run[1]
            await ws.send(orjson.dumps({"type": "subscribe", "id": name, "symbol": "BTCUSDT", "timeframe": "5m",
                                        "candles": rows[k - WINDOW : k]}).decode())
            for _ in range(2):  # subscribed, the first prediction
                if orjson.loads(await ws.recv())["type"] == "error":
                    errors.append(1)
            while time.perf_counter() < stop_at and k + pipeline < end:
                for j in range(pipeline):
                    await ws.send(orjson.dumps({"type": "candle", "id": name, "candle": rows[k + j]}).decode())
                for _ in range(pipeline):
                    if orjson.loads(await ws.recv())["type"] != "prediction":
                        errors.append(1)
                k += pipeline
                counts.append(pipeline)
            await ws.send(orjson.dumps({"type": "unsubscribe", "id": name}).decode())
            await ws.recv()


def stream_load(port: int, rows: list[list[Any]], sockets: int, pipeline: int, seconds: float) -> dict[str, float]:
    url = f"ws://127.0.0.1:{port}/ws/predict"
    counts: list[int] = []
    errors: list[int] = []
    step = (len(rows) - 2 * WINDOW) // max(sockets, 1)

    async def main() -> None:
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(_socket(url, rows, WINDOW + i * step, pipeline, stop_at, counts, errors, f"s{i}")
                               for i in range(sockets)))

    t = time.perf_counter()
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    wall = time.perf_counter() - t
    return {"rps": sum(counts) / wall, "errors": float(len(errors)), "requests": float(sum(counts))}


def histogram(port: int) -> dict[float, float]:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(METRIC) and 'type="candle"' in line:
            le = line[len(METRIC) :].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile of the observations between two cumulative histograms, interpolated in its bucket (s)."""
    edges = sorted(after)
    cum = [after[e] - before.get(e, 0.0) for e in edges]
    total = cum[-1]
    if total <= 0:
        return float("nan")
    want = q * total
    lo, prev = 0.0, 0.0
    for e, c in zip(edges, cum):
        if c >= want:
            if e == float("inf"):
                return lo
            return lo + (e - lo) * (want - prev) / max(c - prev, 1e-12)
        lo, prev = e, c
    return edges[-2]


def cpu_s(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def phase(name: str, pid: int, port: int, run: Any) -> dict[str, float]:
    h0, c0 = histogram(port), cpu_s(pid)
    r = run()
    c1, h1 = cpu_s(pid), histogram(port)
    r["server_cpu_s"] = c1 - c0
    r["per_cpu_s"] = r["requests"] / max(c1 - c0, 1e-9)
    if name.startswith("stream"):
        r["server_p50_us"] = quantile(h0, h1, 0.5) * 1e6
        r["server_p99_us"] = quantile(h0, h1, 0.99) * 1e6
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=Path("/tmp/xylen-bench-stream"))
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sockets", type=int, default=32)
    ap.add_argument("--pipeline", type=int, default=32, help="candle messages in flight per socket")
    args = ap.parse_args()
    args.home.mkdir(parents=True, exist_ok=True)
    bp.SPECS = {MODEL: bp.SPECS[MODEL]}  # build only the one-head model
    bp.build(args.home)
    rows = kline_rows()
    print(f"sample: {len(rows)} real BTCUSDT 5m candles")

    print("\nin process (per call, min of repeats):")
    for k, v in in_process(args.home, rows).items():
        print(f"  {k:<36} {v:8.1f} µs")

    port = bp.free_port()
    proc = bp.start_server(args.home, port, (MODEL,))
    body = orjson.dumps({"symbol": "BTCUSDT", "timeframe": "5m", "candles": rows[-WINDOW:]})
    n = args.sockets

    def http(c: int) -> dict[str, float]:
        return bp.wrk_load(port, body, c, args.duration) or bp.python_load(port, body, c, args.duration)

    phases = {
        "stream, 1 socket": lambda: stream_load(port, rows, 1, args.pipeline, args.duration),
        f"stream, {n} sockets": lambda: stream_load(port, rows, n, args.pipeline, args.duration),
        "HTTP /predict 100 candles, c=1": lambda: http(1),
        f"HTTP /predict 100 candles, c={n}": lambda: http(n),
    }
    results: dict[str, list[dict[str, float]]] = {k: [] for k in phases}
    try:
        stream_load(port, rows, 1, args.pipeline, 1.0)  # warm up
        for r in range(args.rounds):
            for name, run in phases.items():
                results[name].append(phase(name, proc.pid, port, run))
                x = results[name][-1]
                print(f"round {r + 1}: {name:<34} {x['rps']:9.0f}/s  {x['per_cpu_s']:9.0f} per server CPU-s"
                      + (f"  server p50 {x['server_p50_us']:.0f} µs p99 {x['server_p99_us']:.0f} µs"
                         if "server_p50_us" in x else "") + f"  errors {x['errors']:.0f}")
        rss = bp.rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)

    med = {name: {k: statistics.median(x[k] for x in xs) for k in xs[0]} for name, xs in results.items()}
    print(f"\nmedians over {args.rounds} rounds of {args.duration:g} s (server RSS after load {rss:.0f} MB):")
    print(f"  {'':<34} {'pred/s':>9} {'per CPU-s':>10} {'server p50':>11} {'p99':>8}")
    for name, m in med.items():
        extra = (f" {m['server_p50_us']:8.0f} µs {m['server_p99_us']:5.0f} µs" if "server_p50_us" in m else "")
        print(f"  {name:<34} {m['rps']:9.0f} {m['per_cpu_s']:10.0f}{extra}")
    h1 = med["HTTP /predict 100 candles, c=1"]
    hn = med[f"HTTP /predict 100 candles, c={n}"]
    for name, base in (("stream, 1 socket", h1), (f"stream, {n} sockets", hn)):
        s = med[name]
        print(f"  {name} / HTTP same concurrency: x{s['rps'] / base['rps']:.2f} pred/s, "
              f"x{s['per_cpu_s'] / base['per_cpu_s']:.2f} per server CPU-second (aim >= 5x)")


if __name__ == "__main__":
    main()
