"""Benchmark the dashboard's cost to /predict, and the time until /ui is interactive (issue #14).

    python bench/bench_ui.py [--home /tmp/xylen-bench-ui] [--duration 5] [--rounds 3] [--loads 7]

1. Builds (or reuses) bench_predict's one-head 500-tree x 31-leaf model btcusdt-5m on the bundled sample and puts
   the sample's candles in the store (so the Data feed reads a real series).
2. Starts `xylen serve` (one worker) and alternates ``--rounds`` times: /predict at concurrency 1 for
   ``--duration`` s with bench_predict's keep-alive client, without a dashboard, then with one: a separate process
   that fetches every feed of the page (session, models, the model's versions, data, server) once a second, as
   a page refreshing every second would (the real page polls every 3-5 s). Prints the median p50 of each and
   their ratio (aim: within 10%), and how many feed requests the dashboard made (all must be 200).
3. Time to interactive of /ui on loopback in Debian's Chromium (headless, Playwright): ``--loads`` page loads,
   each in a fresh browser context (empty cache), timed from navigation start to the page's own
   ``performance.mark("xylen:interactive")`` (its first view rendered with data from the feeds); also
   DOMContentLoaded and the load event. Aim: < 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.builders
sys.path.insert(0, str(ROOT / "bench"))  # bench_predict: the server starter and the load client

import bench_predict as bp  # noqa: E402

MODEL = bp.MODEL
FEEDS = ("/ui/api/session", "/ui/api/models", f"/ui/api/models/{MODEL}", "/ui/api/data", "/ui/api/server")
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


def build(home: Path) -> None:
    from tests.builders import build_bundle

    from xylen.core import labels
    from xylen.core.registry import Registry
    from xylen.core.store import Store

    reg = Registry(home / "models")
    live = reg.current(MODEL)
    if live is not None and reg.manifest(MODEL, live.version).params.get("num_boost_round") == 500:
        print(f"model: reusing {reg.current_path(MODEL)}")
    else:
        t = time.perf_counter()
        v = build_bundle(reg, MODEL, rounds=500, leaves=31, rows=0, label=labels.LabelSpec(kind="threshold"),
                         feature_set="ohlcv-v2")
        print(f"model: {MODEL} 500 trees x 31 leaves on the full sample in {time.perf_counter() - t:.1f} s -> {v}")
    store = Store(home / "data")
    if not store.series():
        import polars as pl

        from xylen.core.candles import read_candles
        from xylen.train.pipeline import sample_path

        frame: pl.DataFrame = read_candles(sample_path()).frame
        store.append("BTCUSDT", "5m", frame)
        print(f"store: {frame.height:,} BTCUSDT 5m candles")


def dashboard(port: int) -> None:
    """The dashboard client (run as its own process): every feed once a second until killed; prints counts."""
    import signal

    import httpx

    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    ok = bad = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        next_at = time.monotonic()
        while not stop:
            for path in FEEDS:
                if c.get(path).status_code == 200:
                    ok += 1
                else:
                    bad += 1
            next_at += 1.0
            time.sleep(max(0.0, next_at - time.monotonic()))
    print(f"{ok} {bad}", flush=True)


def with_dashboard(port: int, body: bytes, seconds: float) -> tuple[dict[str, float], tuple[int, int]]:
    client = subprocess.Popen([sys.executable, __file__, "--dashboard-client", str(port)], stdout=subprocess.PIPE,
                              text=True)
    time.sleep(1.5)  # its first refresh (the data feed's first read of the store) before the measurement
    try:
        r = bp.python_load(port, body, 1, seconds)
    finally:
        client.terminate()
        out, _ = client.communicate(timeout=30)
    ok, bad = (int(x) for x in out.split())
    return r, (ok, bad)


def time_to_interactive(port: int, loads: int) -> list[dict[str, float]]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for _ in range(loads + 1):  # the first load warms Chromium itself (its first context), not counted
                ctx = browser.new_context()
                page = ctx.new_page()
                page.goto(f"http://127.0.0.1:{port}/ui#/models")
                page.wait_for_selector("html[data-interactive='1']", timeout=60_000)
                page.wait_for_load_state("load")
                t = page.evaluate("""() => {
                    const nav = performance.getEntriesByType("navigation")[0];
                    return {interactive: performance.getEntriesByName("xylen:interactive")[0].startTime,
                            dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
                            bytes: performance.getEntriesByType("resource").reduce((a, r) => a + r.transferSize,
                                                                                   nav.transferSize)};
                }""")
                out.append(t)
                ctx.close()
        finally:
            browser.close()
    return out[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "xylen-bench-ui")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loads", type=int, default=7)
    ap.add_argument("--dashboard-client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dashboard_client:
        dashboard(args.dashboard_client)
        return
    build(args.home)
    body = bp.request_body(MODEL)
    port = bp.free_port()
    proc = bp.start_server(args.home, port, (MODEL,))
    without: list[dict[str, float]] = []
    under: list[dict[str, float]] = []
    fetched = [0, 0]
    try:
        bp.python_load(port, body, 1, 1.0)  # warm-up
        for _ in range(args.rounds):
            r = bp.python_load(port, body, 1, args.duration)
            assert r["errors"] == 0, r
            without.append(r)
            r, (ok, bad) = with_dashboard(port, body, args.duration)
            assert r["errors"] == 0, r
            under.append(r)
            fetched[0] += ok
            fetched[1] += bad
        tti = time_to_interactive(port, args.loads)
        print(f"server RSS after the run: {bp.rss_mb(proc.pid):.0f} MB")
    finally:
        proc.terminate()
        proc.wait(15)

    def med(runs: list[dict[str, float]], key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    def each(runs: list[dict[str, float]]) -> str:
        return "rounds: " + ", ".join(f"{r['p50_ms']:.3f}" for r in runs)

    print(f"/predict c=1, {args.rounds} alternating rounds of {args.duration:.0f} s, medians:")
    print(f"  without a dashboard: p50 {med(without, 'p50_ms'):.3f} ms  p99 {med(without, 'p99_ms'):.3f} ms  "
          f"({each(without)})")
    print(f"  with a dashboard:    p50 {med(under, 'p50_ms'):.3f} ms  p99 {med(under, 'p99_ms'):.3f} ms  "
          f"({each(under)})")
    print(f"  dashboard feed requests: {fetched[0]} answered 200, {fetched[1]} not (every feed once a second)")
    print(f"  with / without: p50 x{med(under, 'p50_ms') / med(without, 'p50_ms'):.3f} (aim <= x1.10), "
          f"p99 x{med(under, 'p99_ms') / med(without, 'p99_ms'):.3f}")
    ti = sorted(t["interactive"] for t in tti)
    print(f"/ui time to interactive, {len(tti)} loads in fresh contexts (empty cache): median "
          f"{statistics.median(ti):.0f} ms, max {ti[-1]:.0f} ms (aim < 1000 ms); DOMContentLoaded "
          f"{statistics.median(t['dcl'] for t in tti):.0f} ms, load {statistics.median(t['load'] for t in tti):.0f} "
          f"ms; {statistics.median(t['bytes'] for t in tti) / 1024:.0f} KiB transferred")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
