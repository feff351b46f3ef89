"""Push latency and the store feed's cost: a candle stored -> its prediction pushed (issue #11: p99 <= 1 s).

    python bench/bench_push.py [--candles 250] [--series 100] [--looks 200] [--skip-serve]

1. Poll cost (serve/store_feed.py): ``--series`` listened series of one month of 5m candles each, nothing new.
   One look at a series that did not change (a few ``stat`` calls) next to, in the same run, what a look costs
   when it must ask the store (``Store.last_open_time``: while a folder changed in the last RACY_NS, and every
   FULL_EVERY_S) and what a read of the new rows costs when there are some (``Store.read(start=...)``), per series,
   and the share of one core the poll thread takes at the default 0.2 s.
2. Feed latency, in process: ``Store.append`` of one closed candle -> the listener's callback on the event loop,
   at the server's poll_s (0.2 s), over ``--candles`` candles, each after a random pause (0-0.3 s) so the
   append lands anywhere in the poll cycle. Baseline in the same run: the append alone.
3. End to end: a real `xylen serve` (one worker, a small LightGBM model on the bundled BTCUSDT 5m sample) with a
   push subscriber (xylen.client over /ws/predict); the store gets one candle at a time, as `xylen collect`
   stores it; from the append's start to the prediction received, p50/p99 over ``--candles`` candles.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.builders: the test bundle writer
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import free_port  # noqa: E402

from xylen.core.candles import read_candles  # noqa: E402
from xylen.core.store import Store  # noqa: E402
from xylen.serve import store_feed  # noqa: E402
from xylen.serve.store_feed import StoreFeed  # noqa: E402
from xylen.train.pipeline import sample_path  # noqa: E402

STEP = 300_000


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def ms(x: float) -> str:
    return f"{x * 1e3:.1f} ms"


def us(x: float) -> str:
    return f"{x * 1e6:.1f} µs"


def age(root: Path) -> None:
    past = time.time_ns() - 3600 * 10**9  # as a store looks between two candles: folders older than RACY_NS
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(d, ns=(past, past))


def poll_cost(series: int, looks: int) -> None:
    frame = read_candles(sample_path()).frame.head(8640)  # one month of 5m candles per series
    root = Path(tempfile.mkdtemp(prefix="xylen-push-cost-"))
    try:
        store = Store(root)
        names = [f"S{i:03d}USDT" for i in range(series)]
        for name in names:
            store.append(name, "5m", frame)
        age(root)
        loop = asyncio.new_event_loop()
        feed = StoreFeed(root, thread=False)
        feed.start(loop)
        for name in names:
            feed.listen("binance", name, "5m", lambda rows: None)
        feed.poll_once()
        feed.poll_once()
        t0 = time.perf_counter()
        for _ in range(looks):
            feed.poll_once()
        quiet = (time.perf_counter() - t0) / looks / series
        reader = Store(root)
        t0 = time.perf_counter()
        for _ in range(max(1, looks // 10)):
            for name in names:
                reader.last_open_time(name, "5m")
        full = (time.perf_counter() - t0) / max(1, looks // 10) / series
        last = int(frame["open_time"][-1])
        t0 = time.perf_counter()
        for name in names[:20]:
            reader.read(name, "5m", start=last)
        read = (time.perf_counter() - t0) / min(20, series)
        feed.stop()
        loop.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n1. poll cost, {series} listened series of 8,640 candles each, {looks} looks at each")
    print(f"   a look at an unchanged series (stat only)           {us(quiet):>12}")
    print(f"   the same-run baseline: Store.last_open_time         {us(full):>12}   x{full / quiet:.0f}")
    print(f"   a read of the new rows (Store.read(start=newest))   {us(read):>12}")
    print(
        f"   poll thread at poll_s 0.2 s: {quiet * series / 0.2 * 100:.2f}% of a core for {series} quiet series "
        f"({full * series / 0.2 * 100:.1f}% if every look asked the store)"
    )


def feed_latency(candles: int) -> None:
    df = read_candles(sample_path()).frame
    base = df.height - candles
    root = Path(tempfile.mkdtemp(prefix="xylen-push-feed-"))
    try:
        store = Store(root)
        store.append("BTCUSDT", "5m", df.head(base))
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        feed = StoreFeed(root)  # the server's default poll_s
        feed.start(loop)
        arrived: dict[int, float] = {}
        got = threading.Event()

        def on_rows(rows: np.ndarray) -> None:
            now = time.perf_counter()
            for t in rows[:, 0]:
                arrived[int(t)] = now
            got.set()

        asyncio.run_coroutine_threadsafe(_listen(feed, on_rows), loop).result(30)
        while feed.polls < 2:
            time.sleep(0.01)
        lat, appends = [], []
        rng = random.Random(0)
        for i in range(base, base + candles):
            time.sleep(rng.uniform(0, 0.3))
            got.clear()
            t0 = time.perf_counter()
            store.append("BTCUSDT", "5m", df.slice(i, 1))
            appends.append(time.perf_counter() - t0)
            t = int(df["open_time"][i])
            while t not in arrived:
                got.wait(30)
                got.clear()
            lat.append(arrived[t] - t0)
        feed.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n2. feed latency, in process: Store.append -> listener callback on the loop ({candles} candles, poll_s 0.2)"
    )
    print(f"   p50 {ms(pct(lat, 50))}, p99 {ms(pct(lat, 99))}, max {ms(max(lat))}")
    print(f"   baseline, the append alone: p50 {ms(pct(appends, 50))}, p99 {ms(pct(appends, 99))}")


async def _listen(feed: StoreFeed, on_rows: object) -> None:
    feed.listen("binance", "BTCUSDT", "5m", on_rows)  # type: ignore[arg-type]


def end_to_end(candles: int) -> None:
    from tests.builders import build_bundle, sample_arrays

    from xylen.client import Client
    from xylen.core.registry import Registry

    df = read_candles(sample_path()).frame
    base = df.height - candles
    home = Path(tempfile.mkdtemp(prefix="xylen-push-e2e-"))
    proc = None
    try:
        build_bundle(Registry(home / "models"), "btcusdt-5m", rounds=40, candles=sample_arrays(4000))
        store = Store(home / "data")
        store.append("BTCUSDT", "5m", df.head(base))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
        with Client(url) as xy:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if xy.ready()["status"] == "ready":
                        break
                except Exception:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not become ready")
                time.sleep(0.1)
            lat, rng = [], random.Random(1)
            with xy.stream() as stream:
                sub = stream.subscribe("BTCUSDT", "5m", push=True)
                for i in range(base, base + candles):
                    time.sleep(rng.uniform(0, 0.3))
                    t0 = time.perf_counter()
                    store.append("BTCUSDT", "5m", df.slice(i, 1))
                    p = sub.receive(timeout=60)
                    lat.append(time.perf_counter() - t0)
                    assert p["open_time"] == int(df["open_time"][i]), p
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        shutil.rmtree(home, ignore_errors=True)
    print(f"\n3. end to end: Store.append -> prediction received by a /ws/predict push subscriber ({candles} candles)")
    print(f"   p50 {ms(pct(lat, 50))}, p99 {ms(pct(lat, 99))}, max {ms(max(lat))}   (aim: p99 <= 1 s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--candles", type=int, default=250)
    ap.add_argument("--series", type=int, default=100)
    ap.add_argument("--looks", type=int, default=200)
    ap.add_argument("--skip-serve", action="store_true", help="parts 1 and 2 only")
    args = ap.parse_args()
    print(f"store_feed: RACY_NS {store_feed.RACY_NS / 1e9:g} s, FULL_EVERY_S {store_feed.FULL_EVERY_S:g} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    poll_cost(args.series, args.looks)
    feed_latency(args.candles)
    if not args.skip_serve:
        end_to_end(args.candles)


if __name__ == "__main__":
    main()
