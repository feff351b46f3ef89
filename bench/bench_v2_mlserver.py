"""xylen serve vs MLServer 1.7.1 on the Open Inference Protocol v2 infer endpoint, same model, same client.

    python bench/bench_v2_mlserver.py                 # builds everything on first run (~1-2 min), then 10 s each
    python bench/bench_v2_mlserver.py --only mlserver # the MLServer half alone
    python bench/bench_v2_mlserver.py --seconds 20 --concurrency 32 --json out.json

Model: LightGBM, 500 trees x 31 leaves (fixed 500 rounds, no early stopping) on xylen's full feature set of the
bundled BTCUSDT 5m sample. Written once as a xylen bundle (registry under bench/out/v2-mlserver/home) and as an MLServer
model folder (a COPY of model.txt: MLServer does not follow a symlinked folder). MLServer runs from its own venv
(bench/.venv-mlserver: mlserver==1.7.1 mlserver-lightgbm==1.7.1 uvloop==0.21.0 -- uvloop 0.23 crashes its
workers) with parallel_workers 0; both servers get OMP_NUM_THREADS=1 and ports bound from 127.0.0.1:0. One
precomputed FP32 row is POSTed to /v2/models/<name>/infer by one asyncio+aiohttp client at fixed concurrency;
requests/s, p50, p99, errors and the peak RSS of each server's process tree (psutil) are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.builders: the test bundle writer

HERE = Path(__file__).resolve().parent
WORK = HERE / "out" / "v2-mlserver"  # bench/out/ is git-ignored
VENV = HERE / ".venv-mlserver"
NAME = "bench-v2"
MLSERVER_PINS = ["mlserver==1.7.1", "mlserver-lightgbm==1.7.1", "uvloop==0.21.0"]
ROUNDS, LEAVES = 500, 31


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_model(rebuild: bool) -> tuple[Path, list[float]]:
    """Train (or reuse) the 500-tree model; write the xylen bundle and the MLServer folder. Returns (home, row)."""
    from xylen.core import features

    home, ml = WORK / "home", WORK / "mlserver"
    row_file = WORK / f"row-{features.VERSION}.json"  # a new feature set rebuilds the model
    if not rebuild and row_file.exists() and (ml / NAME / "model.txt").exists() and (home / "models" / NAME).exists():
        return home, json.loads(row_file.read_text())
    shutil.rmtree(WORK, ignore_errors=True)
    from tests.builders import build_bundle, sample_arrays, window_matrix

    from xylen.core.registry import Registry

    reg = Registry(home / "models")
    t0 = time.perf_counter()
    version = build_bundle(reg, NAME, rounds=ROUNDS, leaves=LEAVES, rows=0)  # the whole sample, promoted
    print(f"trained {ROUNDS} trees x {LEAVES} leaves on the full sample in {time.perf_counter() - t0:.1f} s")
    c = sample_arrays()
    last = features.last_row(features.CandleArrays.from_matrix(window_matrix(c, len(c) - 1, features.MIN_CANDLES)))
    folder = ml / NAME
    folder.mkdir(parents=True)
    shutil.copyfile(reg.path(NAME, version) / "model.txt", folder / "model.txt")  # a copy: symlinks are ignored
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "name": NAME,
                "implementation": "mlserver_lightgbm.LightGBMModel",
                "parameters": {"uri": "./model.txt", "version": version},
            },
            indent=2,
        )
    )
    row = [float(v) for v in last.astype(np.float32)]
    row_file.write_text(json.dumps(row))
    return home, row


def ensure_mlserver_venv() -> Path:
    exe = VENV / "bin" / "mlserver"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, *MLSERVER_PINS], check=True)
    return exe


class Server:
    def __init__(self, label: str, cmd: list[str], env: dict[str, str], port: int, ready_path: str, cwd: Path):
        self.label, self.port, self.ready_path = label, port, ready_path
        self.log = open(WORK / f"{label}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        import psutil

        p = psutil.Process(self.proc.pid)
        while not self._stop.is_set():
            try:
                procs = [p, *p.children(recursive=True)]
                self.peak_rss = max(self.peak_rss, sum(q.memory_info().rss for q in procs if q.is_running()))
            except psutil.Error:
                pass
            self._stop.wait(0.05)

    def wait_ready(self, timeout: float = 120.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        tail = (WORK / f"{self.label}.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"{self.label} did not become ready (exit {self.proc.returncode}). Log tail:\n{tail}")

    def stop(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_mlserver(exe: Path, env: dict[str, str]) -> Server:
    http, grpc, metrics = free_port(), free_port(), free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": metrics,
        "parallel_workers": 0,
        "debug": False,
    }
    (WORK / "mlserver" / "settings.json").write_text(json.dumps(settings, indent=2))
    return Server("mlserver", [str(exe), "start", "."], env, http, f"/v2/models/{NAME}/ready", WORK / "mlserver")


def start_xylen(home: Path, env: dict[str, str]) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "xylen", "serve", "--host", "127.0.0.1", "--port", str(port), "--model", NAME]
    return Server("xylen", cmd, env | {"XYLEN_HOME": str(home)}, port, "/v2/health/ready", HERE.parent)


async def drive(port: int, body: bytes, seconds: float, concurrency: int, warmup: int) -> dict[str, Any]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v2/models/{NAME}/infer"
    headers = {"content-type": "application/json"}
    lat: list[float] = []
    errors = 0
    first: Any = None
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(record: bool) -> None:
            nonlocal errors, first
            t = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    payload = await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok, payload = False, b""
            if record:
                lat.append(time.perf_counter() - t)
                errors += not ok
            if first is None and ok:
                first = json.loads(payload)

        await asyncio.gather(*(one(False) for _ in range(warmup)))
        end = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < end:
                await one(True)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {
        "requests": len(lat),
        "rps": len(lat) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
        "first_response": first,
    }


def drive_wrk(port: int, body: bytes, seconds: float, concurrency: int) -> dict[str, Any]:
    """The same load with wrk (one thread): a first request for the answer, a warm-up second, then the run."""
    import urllib.request

    from bench_predict import wrk_load  # same folder: python puts bench/ first on sys.path

    url = f"http://127.0.0.1:{port}/v2/models/{NAME}/infer"
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        first = json.loads(r.read())
    wrk_load(port, body, concurrency, 1, path=f"/v2/models/{NAME}/infer")
    res = wrk_load(port, body, concurrency, seconds, path=f"/v2/models/{NAME}/infer")
    assert res is not None
    return res | {"errors": int(res["errors"]), "requests": int(res["requests"]), "first_response": first}


def output_value(resp: Any) -> float | None:
    try:
        data = resp["outputs"][0]["data"]
        while isinstance(data, list):
            data = data[-1] if len(data) == 2 and resp["outputs"][0].get("shape", [0])[-1] == 2 else data[0]
        return float(data)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--only", choices=["mlserver", "xylen"])
    ap.add_argument("--rebuild", action="store_true", help="retrain the model and rewrite both folders")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--client", choices=["wrk", "aiohttp"], default="wrk" if shutil.which("wrk") else "aiohttp",
                    help="load generator (default: wrk when installed: C, so the client does not steal the CPU "
                         "the servers need; aiohttp otherwise)")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    home, row = build_model(args.rebuild)
    body = json.dumps(
        {"inputs": [{"name": "features", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
    ).encode()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XYLEN_", "MLSERVER_"))} | {"OMP_NUM_THREADS": "1"}
    results: dict[str, dict[str, Any]] = {}
    for label in ("mlserver", "xylen"):
        if args.only and label != args.only:
            continue
        srv = start_mlserver(ensure_mlserver_venv(), env) if label == "mlserver" else start_xylen(home, env)
        try:
            t0 = time.perf_counter()
            srv.wait_ready()
            ready_s = time.perf_counter() - t0
            if args.client == "wrk":
                res = drive_wrk(srv.port, body, args.seconds, args.concurrency)
            else:
                res = asyncio.run(drive(srv.port, body, args.seconds, args.concurrency, args.warmup))
        finally:
            srv.stop()
        res |= {
            "ready_s": ready_s,
            "peak_rss_mb": srv.peak_rss / 2**20,
            "probability": output_value(res.pop("first_response")),
        }
        results[label] = res
    print(
        f"\nPOST /v2/models/{NAME}/infer, 1 FP32 row x {len(row)} features, {ROUNDS} trees x {LEAVES} leaves, "
        f"concurrency {args.concurrency}, {args.seconds:g} s, {os.cpu_count()} CPUs, client {args.client}"
    )
    print(
        f"{'server':10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'peak RSS MB':>12} {'ready s':>8}"
        f"  probability"
    )
    for label, r in results.items():
        print(
            f"{label:10} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['errors']:7d} "
            f"{r['peak_rss_mb']:12.0f} {r['ready_s']:8.1f}  {r['probability']}"
        )
    if len(results) == 2:
        print(
            f"ratio xylen/mlserver: {results['xylen']['rps'] / results['mlserver']['rps']:.2f}x requests/s, "
            f"{results['mlserver']['p99_ms'] / results['xylen']['p99_ms']:.2f}x lower p99"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
