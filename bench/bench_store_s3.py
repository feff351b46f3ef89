"""The candle store on S3 (moto's server on loopback, its own process) against a local store, in one run: S3
requests and time per follow-mode append (one closed candle), per re-sync of a month already stored, and per read
of a series.

    python bench/bench_store_s3.py [--candles 200]

Each backend: a month of 1m candles stored as one page (the backfill), then --candles closed candles appended one
by one (follow mode), then the same month appended again (a re-sync: nothing new), then a full read. Prints the
requests per operation (S3 only: counted on the client) and the median times, with the S3/local ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.unit.test_store_concurrency: candle frames
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _moto import moto_s3  # noqa: E402

JAN = 1704067200000
MIN = 60_000


def run(location: str, endpoint: str | None, cache: Path, candles: int) -> dict[str, object]:
    from tests.unit.test_store_concurrency import frame

    from xylen.core.store import Store

    store = Store(location, endpoint_url=endpoint, cache=cache)
    ops: list[str] = []
    if store.remote:
        store.storage.client.meta.events.register(  # type: ignore[attr-defined]
            "before-call.s3", lambda model, **kw: ops.append(model.name)
        )
    month = frame(JAN + MIN * np.arange(20_000), 1.0, MIN)
    t0 = time.perf_counter()
    store.append("BTCUSDT", "1m", month)
    backfill = time.perf_counter() - t0
    appends = []
    ops.clear()
    for i in range(20_000, 20_000 + candles):
        t0 = time.perf_counter()
        store.append("BTCUSDT", "1m", frame(JAN + MIN * np.arange(i, i + 1), 1.0, MIN))
        appends.append(time.perf_counter() - t0)
    per_append = len(ops) / candles
    ops.clear()
    t0 = time.perf_counter()
    store.append("BTCUSDT", "1m", month)  # a re-sync: every candle is stored already
    resync = time.perf_counter() - t0
    resync_ops = len(ops)
    ops.clear()
    t0 = time.perf_counter()
    n = store.read("BTCUSDT", "1m").height
    read = time.perf_counter() - t0
    return {"backfill_s": backfill, "append_ms": statistics.median(appends) * 1000, "append_p99_ms":
            sorted(appends)[int(0.99 * (len(appends) - 1))] * 1000, "requests_per_append": per_append,
            "resync_s": resync, "resync_requests": resync_ops, "read_s": read, "read_requests": len(ops), "rows": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candles", type=int, default=200)
    args = ap.parse_args()
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="store-s3-", dir=out))
    with moto_s3("xylen-bench") as endpoint:
        local = run(str(base / "data"), None, base / "cache", args.candles)
        s3 = run("s3://xylen-bench/data", endpoint, base / "cache", args.candles)
    print(f"{'':24}{'local':>12}{'s3 (moto)':>12}{'s3/local':>10}")
    for key in ("backfill_s", "append_ms", "append_p99_ms", "resync_s", "read_s"):
        a, b = float(local[key]), float(s3[key])  # type: ignore[arg-type]
        print(f"{key:24}{a:12.3f}{b:12.3f}{b / a:10.1f}")
    for key in ("requests_per_append", "resync_requests", "read_requests", "rows"):
        print(f"{key:24}{'-':>12}{s3[key]!s:>12}")


if __name__ == "__main__":
    main()
