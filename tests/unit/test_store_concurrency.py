"""Concurrent writers never lose or mix candles: several series into the same month (follow mode with
--intervals 5m,1h closes both on the hour), and several writers of one series with no lock at all."""

from __future__ import annotations

import multiprocessing as mp
import threading
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from tests import s3moto
from xylen.core.candles import SCHEMA
from xylen.core.store import Store

pytestmark = pytest.mark.unit
moto_endpoint, s3_env = s3moto.moto_endpoint, s3moto.s3_env  # fixtures


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store's root: a local folder, or s3://<fresh bucket>/data on moto (its endpoint in the environment,
    which spawned writer processes inherit)."""
    if request.param == "local":
        return str(tmp_path)
    return f"s3://{s3moto.make_bucket(request.getfixturevalue('s3_env'))}/data"

JAN = 1704067200000  # 2024-01-01
STEP = {"5m": 300_000, "1h": 3_600_000}
SERIES = [("BTCUSDT", "5m"), ("BTCUSDT", "1h"), ("ETHUSDT", "5m"), ("SOLUSDT", "1h")]


def frame(times: list[int] | np.ndarray, marker: float, step: int) -> pl.DataFrame:
    """Candles whose prices say who wrote them (``marker``) and whose volume says which version."""
    t = np.asarray(times, dtype=np.int64)
    n = len(t)
    p = np.full(n, marker)
    return pl.DataFrame(
        {
            "open_time": t,
            "open": p,
            "high": p + 1,
            "low": p - 0.5,
            "close": p,
            "volume": np.ones(n),
            "close_time": t + step - 1,
            "quote_volume": np.zeros(n),
            "trades": np.zeros(n, dtype=np.int64),
            "taker_buy_base": np.zeros(n),
            "taker_buy_quote": np.zeros(n),
        }
    ).cast(SCHEMA)  # type: ignore[arg-type]


def write_series(root: str, k: int, shared: Store | None = None, start: Any = None) -> None:
    """Series k: a page (month merge), 40 closed candles one by one (tails), a small page, and a correction."""
    store = shared or Store(root)
    if start is not None:
        start.wait(120)  # every writer imported and ready: they really overlap
    sym, iv = SERIES[k]
    step = STEP[iv]
    t = JAN + step * np.arange(200)
    store.append(sym, iv, frame(t[:100], k, step))
    for i in range(100, 140):
        store.append(sym, iv, frame(t[i : i + 1], k, step))
    store.append(sym, iv, frame(t[140:200], k, step))
    store.append(sym, iv, frame(t[150:155], k, step).with_columns(pl.lit(2.0).alias("volume")))  # new values win


def check_series(store: Store) -> None:
    assert store.series() == sorted(SERIES)
    for k, (sym, iv) in enumerate(SERIES):
        df = store.read(sym, iv)
        assert df["open_time"].to_list() == (JAN + STEP[iv] * np.arange(200)).tolist(), (sym, iv)
        assert (df["open"] == k).all(), f"{sym} {iv} holds another series' rows"
        assert df["volume"].to_list() == [2.0 if 150 <= i < 155 else 1.0 for i in range(200)]
    lf = pl.scan_parquet(store.klines, hive_partitioning=True)  # a direct reader sees the same
    assert lf.select(pl.len()).collect().item() >= 200 * len(SERIES)


@pytest.mark.parametrize("shared", [False, True], ids=["own-store", "one-store"])
def test_series_appended_from_threads_keep_their_own_rows(tmp_path: Path, shared: bool) -> None:
    one = Store(tmp_path) if shared else None
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            write_series(str(tmp_path), k, one)
        except BaseException as exc:  # reported below: a thread's exception would vanish
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(SERIES))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert errors == []
    check_series(Store(tmp_path))
    assert list((tmp_path / ".tmp").glob("*")) == []  # no temp file left behind


def test_series_appended_from_processes_keep_their_own_rows(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(len(SERIES))
    procs = [ctx.Process(target=write_series, args=(str(tmp_path), k, None, start)) for k in range(len(SERIES))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0] * len(SERIES)
    check_series(Store(tmp_path))


def write_share(root: str, k: int, writers: int, start: Any) -> None:
    """Writer k of one series, no lock: every ``writers``-th candle, alone (tails) and in pages (merges)."""
    store = Store(root, serialize_writers=False)
    start.wait(120)
    mine = JAN + STEP["5m"] * np.arange(k, 800, writers)
    for i in range(0, 60):
        store.append("BTCUSDT", "5m", frame(mine[i : i + 1], k, STEP["5m"]))
        if i % 3 == 2:
            store.compact("BTCUSDT", "5m")
    store.append("BTCUSDT", "5m", frame(mine[60:], k, STEP["5m"]))  # > 64 rows: a month merge


def test_writers_of_one_series_lose_nothing_without_any_lock(root: str) -> None:
    """Correctness comes from the compare-and-swap alone (an object store has no file lock): on disk and on S3."""
    writers = 4
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(writers)
    procs = [ctx.Process(target=write_share, args=(root, k, writers, start)) for k in (0, 1)]
    threads = [threading.Thread(target=write_share, args=(root, k, writers, start)) for k in (2, 3)]
    for w in (*procs, *threads):
        w.start()
    for w in (*procs, *threads):
        w.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    store = Store(root)
    df = store.read("BTCUSDT", "5m")
    assert df["open_time"].to_list() == (JAN + STEP["5m"] * np.arange(800)).tolist()
    assert df["open"].to_list() == [float(i % writers) for i in range(800)]  # each candle from its writer
    store.compact("BTCUSDT", "5m")
    assert [k.rsplit("/", 1)[1] for k in store.keys("BTCUSDT", "5m")] == ["data.parquet"]
    assert store.read("BTCUSDT", "5m").equals(df)


def add_gaps(root: str, k: int, start: Any) -> None:
    store = Store(root)
    start.wait(120)
    for i in range(25):
        a = (k * 100 + i * 2) * 3_600_000
        store.add_known_gaps("BTCUSDT", "1h", [(a, a + 3_600_000)])


def test_concurrent_collectors_keep_each_others_known_gaps(root: str) -> None:
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=add_gaps, args=(root, k, start)) for k in (0, 1)]
    threads = [threading.Thread(target=add_gaps, args=(root, k, start)) for k in (2, 3)]
    for w in (*procs, *threads):
        w.start()
    for w in (*procs, *threads):
        w.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    want = sorted(
        ((k * 100 + i * 2) * 3_600_000, (k * 100 + i * 2 + 1) * 3_600_000) for k in range(4) for i in range(25)
    )
    assert Store(root).known_gaps("BTCUSDT", "1h") == want
