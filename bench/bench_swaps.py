"""Hot-swap soak: N promotions (some deliberately corrupt) while `xylen serve` answers a steady request rate.

    python bench/bench_swaps.py [--promotions 100] [--corrupt 20] [--rate 250]

Corrupt candidates rotate through: truncated model file (hash rewritten to match), wrong sha256, and a model
with the wrong feature count. Each promotion waits until the server has either served or refused it, so every
corrupt one is really seen. Prints failed requests, whether model_version ever went backwards, and how many
candidates were refused, plus the promotion-to-served latency.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.builders: the test bundle writer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import free_port, request_body  # noqa: E402

MODEL = "btcusdt-5m"


def refused(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f'xylen_model_swaps_total{{model="{MODEL}",result="refused"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--promotions", type=int, default=100)
    ap.add_argument("--corrupt", type=int, default=20)
    ap.add_argument("--rate", type=float, default=250.0)
    args = ap.parse_args()
    from tests.builders import build_bundle, publish_corrupt, sample_arrays

    from xylen.core.registry import Registry

    home = Path(tempfile.mkdtemp(prefix="xylen-swaps-"))
    reg = Registry(home / "models")
    candles = sample_arrays(1200)
    build_bundle(reg, MODEL, rounds=5, candles=candles)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    body = request_body()
    versions: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client() as c:
            t_next = time.perf_counter()
            while not stop.is_set():
                try:
                    r = c.post(f"{url}/predict", content=body, headers={"content-type": "application/json"})
                    if r.status_code == 200:
                        versions.append(int(r.json()["model_version"][1:]))
                    else:
                        failures.append(f"{r.status_code} {r.text[:120]}")
                except httpx.TransportError as exc:
                    failures.append(repr(exc))
                t_next += 1.0 / args.rate
                time.sleep(max(0.0, t_next - time.perf_counter()))

    worker = threading.Thread(target=load)
    t0 = time.perf_counter()
    worker.start()
    kinds = ("truncated", "wrong_sha", "wrong_features")
    corrupt_at = set(np.linspace(1, args.promotions - 1, args.corrupt).astype(int).tolist())
    lat: list[float] = []
    seen_refusals = 0
    try:
        for i in range(args.promotions):
            before = refused(url)
            if i in corrupt_at:
                publish_corrupt(reg, MODEL, kinds[i % 3])  # type: ignore[arg-type]
                end = time.monotonic() + 10
                while refused(url) <= before and time.monotonic() < end:
                    time.sleep(0.02)
                seen_refusals += refused(url) > before
            else:
                v = int(build_bundle(reg, MODEL, rounds=5, candles=candles, seed=i)[1:])
                t = time.perf_counter()
                end = time.monotonic() + 10
                while (not versions or versions[-1] < v) and time.monotonic() < end:
                    time.sleep(0.005)
                lat.append(time.perf_counter() - t)
    finally:
        stop.set()
        worker.join()
        wall = time.perf_counter() - t0
        proc.terminate()
        proc.wait(15)
        shutil.rmtree(home, ignore_errors=True)
    backwards = sum(1 for a, b in zip(versions, versions[1:]) if b < a)
    la = np.array(lat)
    print(f"{args.promotions} promotions ({args.corrupt} corrupt) in {wall:.1f} s at ~{len(versions) / wall:.0f} req/s")
    print(f"requests ok {len(versions)}, failed {len(failures)}; model_version went backwards {backwards} time(s)")
    print(f"corrupt candidates refused: {seen_refusals}/{args.corrupt}")
    print(f"promotion -> served: p50 {np.percentile(la, 50):.2f} s, p99 {np.percentile(la, 99):.2f} s, "
          f"max {la.max():.2f} s; server exit code {proc.returncode}")
    if failures:
        print("first failures:", failures[:3])


if __name__ == "__main__":
    main()
