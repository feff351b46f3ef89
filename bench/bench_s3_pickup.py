"""A replica's pickup of a promotion when the registry is on S3 (moto's server on loopback, its own process),
against the same replica setup on a local registry, in one run, with steady /predict load and every failed request
counted.

    python bench/bench_s3_pickup.py [--promotions 10] [--threads 2]

For each backend: one `xylen serve` (poll interval 0.25 s, the server's default), two versions of btcusdt-5m, and
--promotions promotions alternating between them (`Registry.promote`: verified by the writer first). Pickup = from
the promotion's return to the replica's /models naming the new version (checked every 20 ms). Prints p50/p99/max
for both, the S3/local ratio, and failed requests (aim: p99 <= poll + 2 s, 0 failures).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.builders: the test bundle writer
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _moto import moto_s3  # noqa: E402
from bench_predict import free_port, request_body  # noqa: E402

MODEL = "btcusdt-5m"
POLL_S = 0.25
KEY = "bench-key"


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def run(label: str, location: str, env: dict[str, str], promotions: int, threads: int) -> tuple[list[float], int, int]:
    from tests.builders import build_bundle, sample_arrays

    from xylen.core.registry import Registry

    reg = Registry(location, endpoint_url=env.get("XYLEN_S3_ENDPOINT_URL"), cache=Path(env["XYLEN_HOME"]) / "w")
    candles = sample_arrays(1200)
    build_bundle(reg, MODEL, rounds=40, candles=candles, seed=0, promote=False)
    build_bundle(reg, MODEL, rounds=40, candles=candles, seed=1)  # v0002 live
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(Path(env["XYLEN_HOME"]) / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    auth = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    body = request_body()
    ok = [0]
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(headers=auth, timeout=60) as c:
            while not stop.is_set():
                try:
                    r = c.post(f"{url}/predict", content=body)
                    if r.status_code == 200:
                        ok[0] += 1
                    else:
                        failures.append(f"{r.status_code} {r.text[:120]}")
                except httpx.TransportError as exc:
                    failures.append(type(exc).__name__)
                stop.wait(0.02)

    def live() -> str | None:
        r = httpx.get(f"{url}/models", headers=auth, timeout=10)
        return next((m["version"] for m in r.json() if m["name"] == MODEL), None) if r.status_code == 200 else None

    pickups: list[float] = []
    workers = [threading.Thread(target=load) for _ in range(threads)]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            raise SystemExit(f"{label}: the server never became ready; see {log.name}")
        for w in workers:
            w.start()
        for i in range(promotions):
            target = "v0001" if i % 2 == 0 else "v0002"
            reg.promote(MODEL, target)
            t0 = time.monotonic()
            while live() != target:
                if time.monotonic() - t0 > 120:
                    raise SystemExit(f"{label}: {target} not picked up in 120 s")
                time.sleep(0.02)
            pickups.append(time.monotonic() - t0)
            print(f"  {label} promotion {i + 1}: picked up in {pickups[-1]:.2f} s", flush=True)
    finally:
        stop.set()
        for w in workers:
            if w.is_alive():
                w.join(60)
        proc.terminate()
        proc.wait(60)
        log.close()
    return pickups, ok[0], len(failures)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--promotions", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    # moto in its own process, like a real object store: not sharing this process's GIL with the load threads
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="s3-pickup-", dir=out))
    results = {}
    with moto_s3("xylen-bench") as endpoint:
        common = {**os.environ, "XYLEN_API_KEYS": KEY, "OMP_NUM_THREADS": "1"}  # with the credentials moto_s3 set
        for label, location, extra in (
            ("local", str(base / "local" / "models"), {}),
            ("s3", "s3://xylen-bench/models", {"XYLEN_MODELS_URL": "s3://xylen-bench/models",
                                                "XYLEN_S3_ENDPOINT_URL": endpoint}),
        ):
            home = base / label
            home.mkdir(parents=True, exist_ok=True)
            env = {**common, "XYLEN_HOME": str(home), **extra}
            results[label] = run(label, location, env, args.promotions, args.threads)
    print(f"\npoll interval {POLL_S} s, {args.promotions} promotions each, {args.threads} client threads")
    print("| registry | pickup p50 | p99 | max | requests ok | failed |")
    print("|---|---|---|---|---|---|")
    for label, (p, ok, failed) in results.items():
        p50, p99 = statistics.median(p), quantile(p, 0.99)
        print(f"| {label} | {p50:.2f} s | {p99:.2f} s | {max(p):.2f} s | {ok} | {failed} |")
    s3p99, lp99 = quantile(results["s3"][0], 0.99), quantile(results["local"][0], 0.99)
    print(f"S3/local p99 ratio: x{s3p99 / lp99:.2f}; S3 p99 {s3p99:.2f} s vs aim poll + 2 s = {POLL_S + 2:.2f} s")


if __name__ == "__main__":
    main()
