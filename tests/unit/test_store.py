"""The candle store: dedupe, atomic replacement, known gaps, readable by polars and DuckDB as is."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from xylen.core.candles import read_candles
from xylen.core.store import Store

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data"
BTC_1H = DATA / "spot_klines_12col" / "sadunalpdag_batmayacagiz__BTCUSDT-1h-2022-01.csv.gz"
HOUR = 3_600_000


@pytest.fixture(scope="module")
def btc() -> pl.DataFrame:
    return read_candles(BTC_1H, interval="1h").frame  # 744 real candles, January 2022


def test_append_dedupes_and_new_rows_win(tmp_path: Path, btc: pl.DataFrame) -> None:
    store = Store(tmp_path)
    first = store.append("BTCUSDT", "1h", btc.head(500))
    assert (first.added, first.duplicates) == (500, 0)
    changed = btc.slice(400, 344).with_columns(pl.col("volume") + 1)
    again = store.append("BTCUSDT", "1h", pl.concat([changed, changed.head(10)]))
    assert (again.added, again.duplicates) == (244, 100)
    df = store.read("BTCUSDT", "1h")
    assert df.height == 744 and df["open_time"].is_unique().all()
    assert df["volume"][450] == btc["volume"][450] + 1
    assert store.last_open_time("BTCUSDT", "1h") == btc["open_time"][-1]


def test_partitions_span_months_and_are_hive_readable(tmp_path: Path, btc: pl.DataFrame) -> None:
    store = Store(tmp_path)
    shifted = btc.with_columns(pl.col("open_time") + 600 * HOUR, pl.col("close_time") + 600 * HOUR)
    store.append("BTCUSDT", "1h", pl.concat([btc, shifted]).unique("open_time").sort("open_time"))
    store.append("ETHUSDT", "1h", btc.head(5))
    store.add_known_gaps("BTCUSDT", "1h", [(0, HOUR)])
    files = store.files("BTCUSDT", "1h")
    assert [f.relative_to(store.klines).as_posix() for f in files] == [
        "exchange=binance/symbol=BTCUSDT/interval=1h/year=2022/month=01/data.parquet",
        "exchange=binance/symbol=BTCUSDT/interval=1h/year=2022/month=02/data.parquet",
    ]
    assert "symbol" not in pl.read_parquet(files[0]).columns  # key columns live in the path only
    # the whole tree, no glob, no conversion: only parquet files live under klines/
    lf = pl.scan_parquet(store.klines, hive_partitioning=True)
    got = lf.filter(pl.col("symbol") == "BTCUSDT").select(pl.len()).collect().item()
    assert got == 744 + 600
    assert sorted(lf.select("month").unique().collect()["month"].to_list()) == [1, 2]
    assert store.series() == [("BTCUSDT", "1h"), ("ETHUSDT", "1h")]


def test_duckdb_reads_the_store(tmp_path: Path, btc: pl.DataFrame) -> None:
    duckdb = pytest.importorskip("duckdb")
    store = Store(tmp_path)
    store.append("BTCUSDT", "1h", btc)
    q = (f"select symbol, interval, count(*), min(open_time) from read_parquet('{store.klines}/**/*.parquet', "
         "hive_partitioning=true) group by all")
    assert duckdb.sql(q).fetchall() == [("BTCUSDT", "1h", 744, btc["open_time"][0])]


def test_dask_reads_the_store(tmp_path: Path, btc: pl.DataFrame) -> None:
    dd = pytest.importorskip("dask.dataframe")
    store = Store(tmp_path)
    store.append("BTCUSDT", "1h", btc)
    store.append("ETHUSDT", "1h", btc.head(10))
    df = dd.read_parquet(str(store.klines), dataset={"partitioning": "hive"}).compute()
    counts = df.groupby(df["symbol"].astype(str))["open_time"].count().to_dict()
    assert counts == {"BTCUSDT": 744, "ETHUSDT": 10}
    assert {"interval", "year", "month"} <= set(df.columns)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, btc: pl.DataFrame,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "1h", btc.head(100))
    path = store.files("BTCUSDT", "1h")[0]
    before = path.read_bytes()

    def boom(*a: object, **k: object) -> None:
        raise KeyboardInterrupt  # e.g. Ctrl-C between write and rename

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        store.append("BTCUSDT", "1h", btc)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert list(store.tmp.glob("*")) == []


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.tmp.mkdir(parents=True)
    dead = store.tmp / "999999999-year=2024-month=01.parquet.tmp"
    mine = store.tmp / f"{os.getpid()}-year=2024-month=01.parquet.tmp"
    dead.write_bytes(b"half")
    mine.write_bytes(b"busy")
    assert store.clean_temp() == 1
    assert not dead.exists() and mine.exists()


def test_known_gaps_merge_and_are_not_reported_as_gaps(tmp_path: Path, btc: pl.DataFrame) -> None:
    store = Store(tmp_path)
    t = btc["open_time"]
    store.append("BTCUSDT", "1h", btc.filter((pl.col("open_time") < t[10]) | (pl.col("open_time") >= t[15])))
    assert store.summary("BTCUSDT", "1h", int(t[-1]) + 2 * HOUR).gaps == [(int(t[9]), 5)]
    store.add_known_gaps("BTCUSDT", "1h", [(int(t[10]), int(t[12]))])
    store.add_known_gaps("BTCUSDT", "1h", [(int(t[12]), int(t[15]))])
    assert store.known_gaps("BTCUSDT", "1h") == [(int(t[10]), int(t[15]))]
    s = store.summary("BTCUSDT", "1h", int(t[-1]) + 2 * HOUR)
    assert (s.gaps, s.rows, s.lag_ms) == ([], 739, HOUR)
    assert s.to_dict()["known_gaps"] == [[int(t[10]), int(t[15])]]


def test_off_grid_candles_are_refused(tmp_path: Path, btc: pl.DataFrame) -> None:
    from xylen.core.errors import DataError

    with pytest.raises(DataError, match="off the 1h grid"):
        Store(tmp_path).append("BTCUSDT", "1h", btc.with_columns(pl.col("open_time") + 1))
    assert Store(tmp_path).series() == []


def test_a_candle_before_1970_is_refused_not_stored_unreadable(tmp_path):
    """A negative open_time would be reported as stored while no tail name could hold it: refuse it instead."""
    import polars as pl

    from xylen.core.candles import SCHEMA
    from xylen.core.errors import DataError
    from xylen.core.store import Store

    row = {c: [None] for c in SCHEMA} | {"open_time": [-3_600_000], "open": [1.0], "high": [1.0], "low": [1.0],
                                         "close": [1.0], "volume": [1.0]}
    store = Store(tmp_path)
    with pytest.raises(DataError, match="before 1970"):
        store.append("BTCUSDT", "1h", pl.DataFrame(row, schema=SCHEMA))
    assert store.read("BTCUSDT", "1h").height == 0 and store.series() == []
