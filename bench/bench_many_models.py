"""Many markets in one server: `xylen serve` of a registry with N live models, N = 1, 20, 100, 1000.

    python bench/bench_many_models.py [--counts 1,20,100,1000] [--against /tmp/before] [--against-max 1000]
                                      [--rounds 40] [--requests 1000] [--json]

One small real model is trained on the bundled sample (tests/builders.build_bundle: --rounds trees of 15 leaves),
then published through the Registry as N copies under distinct markets' names (C0000USDT -> c0000usdt-5m), each a
complete bundle that the verifier child accepts (checked once for the largest N before any server starts). For
each N, a fresh `xylen serve` process: seconds from its start to /health/ready 200, its RSS once ready, its CPU
while idle for --idle s (the watcher polling every CURRENT.json), and the client-side p50/p99 of --requests
sequential POST /predict calls for one model (c0000usdt-5m, 100 candles). ``--against DIR``: the same figures for
the xylen in DIR/src (a `git worktree` of the code before), run alternately in the same run, up to --against-max
models (the code before needs ~0.4 s per model). ``--poll-only``: instead, the in-process cost of one watcher poll
that finds nothing changed (best of 20, after every model is loaded without a child), for each tree, at each N.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.builders: the test bundle writer
sys.path.insert(0, str(ROOT / "bench"))
from bench_predict import free_port  # noqa: E402

OUT = ROOT / "bench" / "out" / "many"
SOURCE = "btcusdt-5m"


def symbols(n: int) -> list[str]:
    return [f"C{i:04d}USDT" for i in range(n)]


def build_homes(counts: list[int], rounds: int, out: Path) -> dict[int, Path]:
    """One XYLEN_HOME per count, each holding that many live copies of one trained bundle."""
    from tests.builders import build_bundle, publish_copies

    from xylen.core.registry import Registry
    from xylen.core.verify import verify_many_in_children

    shutil.rmtree(out, ignore_errors=True)
    src = Registry(out / "source" / "models")
    build_bundle(src, SOURCE, rounds=rounds, rows=4000)
    folder = src.current_path(SOURCE)
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"source bundle: {rounds} trees x 15 leaves, {size / 1024:.0f} KiB on disk (model.txt + manifest.json)")
    homes = {}
    for n in counts:
        t = time.perf_counter()
        home = out / f"home-{n}"
        reg = Registry(home / "models")
        publish_copies(reg, folder, symbols(n))
        homes[n] = home
        print(f"published {n} copies in {time.perf_counter() - t:.1f} s")
    biggest = Registry(homes[max(counts)] / "models")
    folders = [biggest.current_path(name) for name in biggest.live_names()]
    t = time.perf_counter()
    verdicts = verify_many_in_children(folders)
    bad = {f: v.reason for f, v in verdicts.items() if v.reason is not None}
    if bad:
        raise SystemExit(f"copies that do not verify: {bad}")
    print(f"all {len(folders)} copies verified in {time.perf_counter() - t:.1f} s (verify_many_in_children)")
    return homes


def body() -> bytes:
    from tests.builders import sample_arrays, window_matrix

    c = sample_arrays(1000)
    w = window_matrix(c, len(c) - 1, 100)
    rows = [[int(r[0]), *(repr(float(x)) for x in r[1:6]), int(r[0]) + 299_999, "0", 0, "0", "0", "0"] for r in w]
    return orjson.dumps({"symbol": symbols(1)[0], "timeframe": "5m", "candles": rows})


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(home: Path, src: Path, requests: int, idle: float, payload: bytes, limit: float) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(src)}
    log = open(home / "serve.log", "wb")  # noqa: SIM115 (closed below)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(timeout=30) as c:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"server exited: {(home / 'serve.log').read_text()[-2000:]}")
                if time.perf_counter() - t0 > limit:
                    raise SystemExit(f"not ready after {limit:.0f} s")
                try:
                    if c.get(f"{url}/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
            ready = time.perf_counter() - t0
            rss = rss_mb(proc.pid)
            cpu0, w0 = cpu_s(proc.pid), time.perf_counter()
            time.sleep(idle)  # a benchmark: the watcher's idle cost is what is measured here
            idle_cpu = (cpu_s(proc.pid) - cpu0) / (time.perf_counter() - w0)
            headers = {"content-type": "application/json"}
            for _ in range(50):
                assert c.post(f"{url}/predict", content=payload, headers=headers).status_code == 200
            lat = []
            for _ in range(requests):
                t = time.perf_counter()
                r = c.post(f"{url}/predict", content=payload, headers=headers)
                lat.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            lat.sort()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return {"ready_s": ready, "rss_mb": rss, "idle_cpu_pct": 100 * idle_cpu,
            "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))]}


POLL_SNIPPET = """
import sys, time
from pathlib import Path
from xylen.core.registry import Registry
from xylen.serve.holder import ModelHolder
holder = ModelHolder(Registry(Path(sys.argv[1])), verify=lambda folder: None)
holder.load_all()
assert len(holder.live) == int(sys.argv[2]), len(holder.live)
best = float("inf")
for _ in range(20):
    t = time.perf_counter()
    holder.poll()
    best = min(best, time.perf_counter() - t)
print(best * 1000)
"""


def poll_ms(home: Path, src: Path, n: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", POLL_SNIPPET, str(home / "models"), str(n)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,20,100,1000")
    ap.add_argument("--against", type=Path, help="a checkout of the code before (its src/ is served)")
    ap.add_argument("--against-max", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--poll-only", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT, help="scratch folder (emptied first)")
    args = ap.parse_args()
    counts = sorted({int(x) for x in args.counts.split(",")})
    homes = build_homes(counts, args.rounds, args.out)
    if args.poll_only:
        for n in counts:
            trees = [("this", ROOT / "src")] + ([("before", args.against / "src")] if args.against else [])
            said = ", ".join(f"{label} {poll_ms(homes[n], src, n):.2f} ms" for label, src in trees)
            print(f"{n:>5} models, one poll with nothing changed: {said}", flush=True)
        return
    payload = body()
    rows = []
    for i, n in enumerate(counts):
        trees = [("this", ROOT / "src")]
        if args.against is not None and n <= args.against_max:
            trees.append(("before", args.against / "src"))
        # alternate who goes first, this code first at the largest count (the code before may take many minutes)
        for label, src in trees if (len(counts) - 1 - i) % 2 == 0 else trees[::-1]:
            limit = 60 + 2.0 * n if label == "before" else 60 + 0.1 * n
            fig = measure(homes[n], src, args.requests, args.idle, payload, limit)
            rows.append({"code": label, "models": n, **fig})
            print(f"{label:>6} {n:>5} models: ready {fig['ready_s']:.2f} s, RSS {fig['rss_mb']:.0f} MB, idle CPU "
                  f"{fig['idle_cpu_pct']:.1f}%, /predict p50 {fig['p50_ms']:.3f} ms p99 {fig['p99_ms']:.3f} ms",
                  flush=True)
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    print("\n| code | models | ready s | RSS MB | idle CPU % | /predict p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['code']} | {r['models']:,} | {r['ready_s']:.2f} | {r['rss_mb']:.0f} | {r['idle_cpu_pct']:.1f} | "
              f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} |")


if __name__ == "__main__":
    main()
