"""Benchmark `xylen serve` POST /predict end to end, with the in-process cost as a same-run baseline.

    python bench/bench_predict.py [--home /tmp/xylen-bench] [--duration 10] [--connections 32]

1. Builds (or reuses) a 500-tree x 31-leaf LightGBM model on the full feature set of the bundled sample
   (fixed 500 rounds, no early stopping) and promotes it in <home>/models.
2. Baseline, in this process: the /predict handler on the same body (orjson decode + validation + features +
   predict) and features + predict alone, per call.
3. Starts `xylen serve` (one worker) as a subprocess, drives POST /predict with 100 candles over loopback:
   concurrency 1 (latency) and concurrency N (throughput) with wrk + a Lua body script when wrk is installed,
   else an asyncio raw-socket keep-alive client; prints p50/p99/requests/s/errors and RSS after load.
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
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.builders: the test bundle writer

ROOT = Path(__file__).resolve().parents[1]
MODEL = "btcusdt-5m"


def build(home: Path) -> None:
    from tests.builders import build_bundle

    from xylen.core import features
    from xylen.core.registry import Registry

    reg = Registry(home / "models")
    live = reg.current(MODEL)
    manifest = reg.manifest(MODEL, live.version) if live is not None else None
    if manifest is not None and manifest.params.get("num_boost_round") == 500 and (
            manifest.feature_set.version == features.VERSION):
        print(f"model: reusing {reg.current_path(MODEL)}")
        return
    t = time.perf_counter()
    v = build_bundle(reg, MODEL, rounds=500, leaves=31, rows=0)
    print(f"model: trained 500 trees x 31 leaves on the full sample in {time.perf_counter() - t:.1f} s -> {v}")


def request_body() -> bytes:
    from tests.builders import sample_arrays, window_matrix

    c = sample_arrays(500)
    w = window_matrix(c, len(c) - 1, 100)
    rows = [[int(r[0]), *(repr(float(x)) for x in r[1:6]), int(r[0]) + 299_999, "0", 0,
             "0", "0", "0"] for r in w]
    return orjson.dumps({"symbol": "BTCUSDT", "timeframe": "5m", "candles": rows, "indicators": {}, "meta": {}})


def baseline(home: Path, body: bytes) -> dict[str, float]:
    """µs per call in this process: the whole handler, and features + predict alone."""
    from xylen.core import features
    from xylen.core.registry import Registry
    from xylen.core.settings import load_settings
    from xylen.serve.decode import decode_candles, decode_predict
    from xylen.serve.holder import ModelHolder, load_live
    from xylen.serve.metrics import Metrics
    from xylen.serve.predict import predict
    from xylen.serve.state import ServeState

    live = load_live(MODEL, Registry(home / "models").current_path(MODEL))
    candles, _ = decode_candles(decode_predict(body).candles)
    holder = ModelHolder(None)  # no watcher: the one model, published as the watcher would
    holder.live, holder.served, holder.started = {MODEL: live}, (MODEL,), True
    state = ServeState(settings=load_settings({"home": home}, environ={}), holder=holder,
                       metrics=Metrics(), keys=None)  # type: ignore[arg-type]

    def per_call(fn, n: int = 3000) -> float:  # type: ignore[no-untyped-def]
        for _ in range(200):
            fn()
        best = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            best.append((time.perf_counter() - t) / n * 1e6)
        return float(np.median(best))

    row = features.last_row(candles)
    return {
        "handler_us": per_call(lambda: predict(state, body)),
        "features_predict_us": per_call(lambda: live.predict_row(features.last_row(candles))),
        "features_us": per_call(lambda: features.last_row(candles)),
        "predict_us": per_call(lambda: live.predict_row(row)),
        "booster_predict_us": per_call(lambda: live.bundle.predict(row.reshape(1, -1)), 1000),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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
    raise SystemExit(f"server did not become ready:\n{proc.stdout.read().decode() if proc.stdout else ''}")


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
    args = ap.parse_args()
    build(args.home)
    body = request_body()
    base = baseline(args.home, body)
    print("in-process baseline (µs/call): " + ", ".join(f"{k[:-3]} {v:.1f}" for k, v in base.items()))
    port = free_port()
    proc = start_server(args.home, port)
    try:
        use_wrk = args.client in ("auto", "wrk") and shutil.which("wrk")
        load = wrk_load if use_wrk else python_load
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


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
