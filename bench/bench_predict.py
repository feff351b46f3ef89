"""Benchmark `xylen serve` POST /predict end to end, with the in-process cost as a same-run baseline.

    python bench/bench_predict.py [--home /tmp/xylen-bench] [--duration 10] [--connections 32] [--rounds 3]

1. Builds (or reuses) three 500-tree x 31-leaf LightGBM models on the whole bundled sample (fixed 500 rounds,
   no early stopping) and promotes them in <home>/models:
   - btcusdt-5m: one head, a threshold label (the alpha's response: no extra field);
   - ethusdt-5m: two heads, a direction label + a move head (xylen train's default: up_probability and
     move_probability in every answer), feature set ohlcv-v2;
   - xrpusdt-5m: the same two heads on feature set ohlcv-ctx-v1 (daily context: a request sends 865 candles).
2. Baseline, in this process: the /predict handler on the same body (orjson decode + validation + features +
   predict) and its parts, per call, for each model.
3. Starts `xylen serve` (one worker) as a subprocess, drives POST /predict with 100 candles over loopback:
   concurrency 1 (latency) and concurrency N (throughput) with wrk + a Lua body script when wrk is installed,
   else an asyncio raw-socket keep-alive client; prints p50/p99/requests/s/errors and RSS after load.
4. Same run, same server, alternating ``--rounds`` times: two heads vs one head on the same 100-candle window
   (the issue's aim: p50 within 10%), the context model's 865-candle request vs the two-head ohlcv-v2 model's
   100 candles, and the one-head model sent a whole klines page (500 and 1,000 candles, of which it reads the last
   50) vs 100 candles (aim: 1,000 within 2x); medians and their ratios. With ``--against``, a second server runs
   another checkout on the 100- and 1,000-candle bodies in the same alternation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.builders: the test bundle writer

ROOT = Path(__file__).resolve().parents[1]
MODEL, HEADS, CTX = "btcusdt-5m", "ethusdt-5m", "xrpusdt-5m"
# name: (symbol, label kind, extra heads, feature set version, candles a request sends)
SPECS = {
    MODEL: ("BTCUSDT", "threshold", (), "ohlcv-v2", 100),
    HEADS: ("ETHUSDT", "direction", ("move",), "ohlcv-v2", 100),
    CTX: ("XRPUSDT", "direction", ("move",), "ohlcv-ctx-v1", 865),
}


def build(home: Path) -> None:
    from tests.builders import build_bundle

    from xylen.core import labels
    from xylen.core.registry import Registry

    reg = Registry(home / "models")
    for name, (symbol, kind, heads, fs, _) in SPECS.items():
        live = reg.current(name)
        m = reg.manifest(name, live.version) if live is not None else None
        if m is not None and m.params.get("num_boost_round") == 500 and m.feature_set.version == fs and (
                m.label.get("kind") == kind and tuple(h.label["kind"] for h in m.heads) == heads):
            print(f"model: reusing {reg.current_path(name)}")
            continue
        t = time.perf_counter()
        v = build_bundle(reg, name, rounds=500, leaves=31, rows=0, symbol=symbol, label=labels.LabelSpec(kind=kind),
                         heads=heads, feature_set=fs)
        print(f"model: {name} ({kind}{' + ' + ', '.join(heads) if heads else ''}, {fs}): trained "
              f"{1 + len(heads)} x 500 trees x 31 leaves on the full sample in {time.perf_counter() - t:.1f} s -> {v}")


def request_body(name: str = MODEL, candles: int | None = None) -> bytes:
    """A bot's body for model ``name``: its SPECS candle count, or ``candles`` (a whole klines page: 1,000)."""
    from tests.builders import sample_arrays, window_matrix

    symbol, _, _, _, n = SPECS[name]
    n = candles or n
    c = sample_arrays(max(1000, n))
    w = window_matrix(c, len(c) - 1, n)
    rows = [[int(r[0]), *(repr(float(x)) for x in r[1:6]), int(r[0]) + 299_999, "0", 0,
             "0", "0", "0"] for r in w]
    return orjson.dumps({"symbol": symbol, "timeframe": "5m", "candles": rows, "indicators": {}, "meta": {}})


def state_of(home: Path) -> object:
    """The server's state with every bench model live, published as the watcher would (no watcher)."""
    from xylen.core.registry import Registry
    from xylen.core.settings import load_settings
    from xylen.serve.holder import ModelHolder, load_live
    from xylen.serve.metrics import Metrics
    from xylen.serve.state import ServeState

    reg = Registry(home / "models")
    holder = ModelHolder(None)
    holder.live = {name: load_live(name, reg.current_path(name)) for name in SPECS}
    holder.served, holder.started = tuple(SPECS), True
    return ServeState(settings=load_settings({"home": home}, environ={}), holder=holder,
                      metrics=Metrics(), keys=None)  # type: ignore[arg-type]


def per_call(fn, n: int = 3000) -> float:  # type: ignore[no-untyped-def]
    """µs per call: median of 5 timed batches after a warm-up."""
    for _ in range(200):
        fn()
    best = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - t) / n * 1e6)
    return float(np.median(best))


def baseline_models(state: object) -> dict[str, dict[str, float]]:
    """µs per call in this process, per model: the handler, decoding the candles, features, all heads' predicts."""
    from xylen.serve.decode import decode_candles, decode_predict
    from xylen.serve.predict import predict

    out = {}
    for name in SPECS:
        body = request_body(name)
        live = state.holder.live[name]  # type: ignore[attr-defined]
        fs = live.bundle.features
        raw = decode_predict(body).candles
        candles = decode_candles(raw, fs.min_candles).candles
        row = fs.last_row(candles)
        heads = [fn for _, fn in live.extra if fn is not None]
        out[name] = {
            "handler_us": per_call(lambda b=body: predict(state, b), 1000),  # type: ignore[arg-type]
            "decode_us": per_call(lambda r=raw, k=fs.min_candles: decode_candles(r, k), 1000),
            "features_us": per_call(lambda f=fs, c=candles: f.last_row(c), 1000),
            "predict_us": per_call(lambda lv=live, x=row, hs=heads: [lv.predict_row(x), *(h(x) for h in hs)]),
        }
    return out


def baseline(state: object, body: bytes) -> dict[str, float]:
    """µs per call in this process for the one-head model: the whole handler, and features + predict alone."""
    from xylen.core import features
    from xylen.serve.decode import decode_candles, decode_predict
    from xylen.serve.predict import predict

    live = state.holder.live[MODEL]  # type: ignore[attr-defined]
    candles = decode_candles(decode_predict(body).candles).candles

    row = features.last_row(candles)
    return {
        "handler_us": per_call(lambda: predict(state, body)),  # type: ignore[arg-type]
        "features_predict_us": per_call(lambda: live.predict_row(features.last_row(candles))),
        "features_us": per_call(lambda: features.last_row(candles)),
        "predict_us": per_call(lambda: live.predict_row(row)),
        "booster_predict_us": per_call(lambda: live.bundle.predict(row.reshape(1, -1)), 1000),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, port: int, models: tuple[str, ...] = (MODEL,),
                 src: Path | None = None) -> subprocess.Popen[bytes]:
    """``xylen serve`` of ``models``; ``src``: the xylen package of another checkout's src/ folder instead."""
    env = {**os.environ, "XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    t = time.perf_counter()
    only = [x for m in models for x in ("--model", m)]
    proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port), *only], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200:
                print(f"server: ready {time.perf_counter() - t:.2f} s after start")
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"server did not become ready (exit code {proc.poll()}); run `xylen serve` by hand to see why")


async def _client(port: int, raw: bytes, stop_at: float, lat: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(1)
    finally:
        writer.close()


def python_load(port: int, body: bytes, connections: int, seconds: float) -> dict[str, float]:
    raw = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    lat: list[float] = []
    errors: list[int] = []

    async def main() -> None:
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(_client(port, raw, stop_at, lat, errors) for _ in range(connections)))

    t = time.perf_counter()
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    wall = time.perf_counter() - t
    a = np.array(lat) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "rps": len(a) / wall, "errors": float(len(errors)), "requests": float(len(a))}


def wrk_load(port: int, body: bytes, connections: int, seconds: float,
             path: str = "/predict") -> dict[str, float] | None:
    wrk = shutil.which("wrk")
    if not wrk:
        return None
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "body.json").write_bytes(body)
        script = Path(d) / "post.lua"
        script.write_text(f"""
local f = io.open("{d}/body.json", "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("XY %f %f %d %d %f\\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout, summary.duration / 1e6))
end
""")
        out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "-s", str(script),
                              f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("XY "))
    p50, p99, n, err, dur = line.split()[1:]
    return {"p50_ms": float(p50), "p99_ms": float(p99), "rps": int(n) / float(dur), "errors": float(err),
            "requests": float(n)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "xylen-bench")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of each comparison (medians reported)")
    ap.add_argument("--compare-duration", type=float, default=5.0, help="seconds per comparison run")
    ap.add_argument("--against", type=Path, help=(
        "another checkout's src/ folder (e.g. the code before a change): a second server running it answers the "
        "one-head model in the same alternating runs"))
    args = ap.parse_args()
    build(args.home)
    body = request_body()
    state = state_of(args.home)
    base = baseline(state, body)
    print("in-process baseline (µs/call): " + ", ".join(f"{k[:-3]} {v:.1f}" for k, v in base.items()))
    for name, parts in baseline_models(state).items():
        print(f"in-process {name} ({SPECS[name][4]} candles, {1 + len(SPECS[name][2])} head(s), {SPECS[name][3]}): "
              + ", ".join(f"{k[:-3]} {v:.1f}" for k, v in parts.items()))
    use_wrk = bool(args.client in ("auto", "wrk") and shutil.which("wrk"))
    load = wrk_load if use_wrk else python_load
    port = free_port()
    proc = start_server(args.home, port)
    try:
        print(f"client: {'wrk -t1' if use_wrk else 'python asyncio raw keep-alive'}; body {len(body)} bytes, "
              "100 candles")
        python_load(port, body, 4, 2.0)  # warm-up
        for conns in (1, args.connections):
            r = load(port, body, conns, args.duration)
            assert r is not None
            p50_us = r["p50_ms"] * 1e3
            print(f"c={conns:<3} p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  {r['rps']:,.0f} req/s  "
                  f"errors {r['errors']:.0f}/{r['requests']:.0f}  | p50 = {p50_us / base['handler_us']:.1f}x the "
                  f"in-process handler, {p50_us / base['features_predict_us']:.1f}x features+predict")
        print(f"server RSS after load: {rss_mb(proc.pid):.0f} MB")
    finally:
        proc.terminate()
        proc.wait(15)
        print(f"server exit code after SIGTERM: {proc.returncode}")
    compare(args, load)  # type: ignore[arg-type]


def compare(args: argparse.Namespace, load: Callable[[int, bytes, int, float], dict[str, float] | None]) -> None:
    """Two heads vs one head (same 100-candle window), and the context model's 865 candles vs 100: one server with
    the three models, runs alternating so that a change in the machine's load hits both sides alike."""
    port = free_port()
    proc = start_server(args.home, port, tuple(SPECS))
    other = start_server(args.home, other_port := free_port(), (MODEL,), args.against) if args.against else None
    bodies = {name: request_body(name) for name in SPECS}
    pages = {f"{n} candles": request_body(MODEL, n) for n in (500, 1000)}  # a klines page as bots forward it
    bodies |= pages | {"against 1000": pages["1000 candles"]}
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    targets = [(name, port) for name in (*SPECS, *pages)]
    if other:
        targets += [("against", other_port), ("against 1000", other_port)]
    try:
        for name, at in targets:
            python_load(at, bodies.get(name, bodies[MODEL]), 4, 1.0)  # warm-up
        for _ in range(args.rounds):
            for conns in (1, args.connections):
                for name, at in targets:
                    r = load(at, bodies.get(name, bodies[MODEL]), conns, args.compare_duration)
                    assert r is not None and r["errors"] == 0, r
                    runs.setdefault((name, conns), []).append(r)
        print(f"server RSS with the three models after load: {rss_mb(proc.pid):.0f} MB")
    finally:
        for p in (proc, other):
            if p is not None:
                p.terminate()
                p.wait(15)

    def med(name: str, conns: int, key: str) -> float:
        return float(np.median([r[key] for r in runs[(name, conns)]]))

    print(f"same run, {args.rounds} alternating rounds of {args.compare_duration:.0f} s, medians:")
    for name, (_, kind, heads, fs, n) in SPECS.items():
        print(f"  {name:<11} {kind}{' + ' + ', '.join(heads) if heads else '':<8} {fs:<13} {n:>4} candles "
              f"({len(bodies[name]):>7,} bytes): c=1 p50 {med(name, 1, 'p50_ms'):.3f} ms  "
              f"c={args.connections} {med(name, args.connections, 'rps'):,.0f} req/s")
    for label in pages:
        size = len(bodies[label])
        print(f"  {MODEL:<11} {SPECS[MODEL][1]:<16} {SPECS[MODEL][3]:<13} {label:>12} ({size:>7,} bytes): "
              f"c=1 p50 {med(label, 1, 'p50_ms'):.3f} ms  c={args.connections} "
              f"{med(label, args.connections, 'rps'):,.0f} req/s")
    pairs = [(HEADS, MODEL, "two heads / one head (100 candles; aim: p50 within 10%)"),
             (CTX, HEADS, "ohlcv-ctx-v1 865 candles / ohlcv-v2 100 candles (two heads each)"),
             ("500 candles", MODEL, "one head, 500 candles / 100 candles"),
             ("1000 candles", MODEL, "one head, 1,000 candles / 100 candles (aim: p50 within 2x)")]
    if other is not None:
        print(f"  {MODEL} served by {args.against}: c=1 p50 {med('against', 1, 'p50_ms'):.3f} ms  "
              f"c={args.connections} {med('against', args.connections, 'rps'):,.0f} req/s")
        print(f"  {MODEL} served by {args.against}, 1,000 candles: c=1 p50 {med('against 1000', 1, 'p50_ms'):.3f} ms"
              f"  c={args.connections} {med('against 1000', args.connections, 'rps'):,.0f} req/s")
        pairs += [(MODEL, "against", f"one head, this code / {args.against}"),
                  ("against 1000", "against", f"{args.against}: 1,000 candles / 100 candles")]
    for a, b, what in pairs:
        print(f"  {what}: p50 x{med(a, 1, 'p50_ms') / med(b, 1, 'p50_ms'):.2f}, "
              f"req/s x{med(a, args.connections, 'rps') / med(b, args.connections, 'rps'):.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
