"""An unreadable store file is never silently replaced or skipped: it is moved to quarantine/ with a warning
and listed by `xylen collect status` with its fix, and readers refuse the series naming the file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest
from typer.testing import CliRunner

from tests.unit.test_store_concurrency import frame
from xylen.cli import app
from xylen.core.errors import DataError
from xylen.core.store import Store

pytestmark = pytest.mark.unit

JAN = 1704067200000  # 2024-01-01
FEB = 1706745600000  # 2024-02-01
HOUR = 3_600_000


def hours(t0: int, n: int) -> pl.DataFrame:
    return frame(t0 + HOUR * np.arange(n), 1.0, HOUR)


def tear(path: Path) -> bytes:
    """Cut the footer off, as a crashed foreign tool or a bad disk would."""
    torn = path.read_bytes()[:-40]
    path.write_bytes(torn)
    return torn


def test_an_append_to_a_torn_month_moves_it_to_quarantine(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "1h", hours(JAN, 100))
    month = store.partition_path("BTCUSDT", "1h", 2024, 1)
    torn = tear(month)
    with caplog.at_level(logging.WARNING, logger="xylen.store"):
        store.append("BTCUSDT", "1h", hours(JAN + 100 * HOUR, 1))
    [moved] = list(store.quarantine.rglob("*"))[-1:]
    assert moved.relative_to(store.quarantine).as_posix().startswith(
        "klines/exchange=binance/symbol=BTCUSDT/interval=1h/year=2024/month=01/data.parquet."
    )
    assert moved.read_bytes() == torn  # nothing deleted: the 100 candles' bytes are kept
    assert str(month) in caplog.text and str(moved) in caplog.text and "unreadable" in caplog.text
    assert store.read("BTCUSDT", "1h")["open_time"].to_list() == [JAN + 100 * HOUR]
    [q] = store.summary("BTCUSDT", "1h").quarantined
    assert q.file == str(moved)
    assert "xylen collect --symbols BTCUSDT --intervals 1h --since 2024-01-01 --until 2024-02-01 --once" in q.fix
    # the klines tree holds only readable Parquet again: a direct reader scans it
    assert pl.scan_parquet(store.klines, hive_partitioning=True).select(pl.len()).collect().item() == 1


def test_readers_refuse_a_series_with_an_unreadable_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "1h", hours(JAN, 24 * 31 + 100))  # January and 100 hours of February
    feb = store.partition_path("BTCUSDT", "1h", 2024, 2)
    tear(feb)
    for call in (lambda: store.read("BTCUSDT", "1h"), lambda: store.last_open_time("BTCUSDT", "1h")):
        with pytest.raises(DataError) as info:
            call()
        assert str(feb) in info.value.message and "collect status" in (info.value.hint or "")
    assert store.read("BTCUSDT", "1h", end=FEB).height == 24 * 31  # months outside the range are not read
    store.append("BTCUSDT", "1h", hours(JAN + 50 * HOUR, 1))  # a January write does not touch February
    assert feb.exists() and not store.quarantine.exists()


def test_a_torn_tail_is_quarantined_by_compaction(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "1h", hours(JAN, 100))
    store.append("BTCUSDT", "1h", hours(JAN + 100 * HOUR, 1))
    store.append("BTCUSDT", "1h", hours(JAN + 101 * HOUR, 1))
    tail = next(f for f in store.files("BTCUSDT", "1h") if f.name.startswith(f"tail-{JAN + 100 * HOUR}-"))
    tear(tail)
    with pytest.raises(DataError, match="tail-"):
        store.read("BTCUSDT", "1h")
    with caplog.at_level(logging.WARNING, logger="xylen.store"):
        store.compact("BTCUSDT", "1h")
    assert [f.name for f in store.files("BTCUSDT", "1h")] == ["data.parquet"]
    assert store.read("BTCUSDT", "1h").height == 101
    [q] = store.quarantined("BTCUSDT", "1h")
    assert Path(q.file).name.startswith(tail.name + ".")
    assert f"--since {JAN + 100 * HOUR} --until {JAN + 100 * HOUR + 1}" in q.fix
    assert tail.name in caplog.text


def test_status_lists_quarantined_files_with_their_fix(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Store(home / "data")
    store.append("BTCUSDT", "1h", hours(JAN, 24 * 31 + 5))
    store.append("ETHUSDT", "1h", hours(JAN, 100))
    tear(store.partition_path("ETHUSDT", "1h", 2024, 1))  # the series' only file
    runner = CliRunner()
    r = runner.invoke(app, ["--home", str(home), "collect", "status", "--json"])
    assert r.exit_code == 0, r.output
    by = {s["symbol"]: s for s in orjson.loads(r.stdout)}
    assert by["BTCUSDT"]["quarantined"] == [] and by["BTCUSDT"]["rows"] == 24 * 31 + 5
    [q] = by["ETHUSDT"]["quarantined"]
    assert by["ETHUSDT"]["rows"] == 0 and "/quarantine/klines/exchange=binance/symbol=ETHUSDT/" in q["file"]
    assert "--symbols ETHUSDT --intervals 1h --since 2024-01-01 --until 2024-02-01 --once" in q["fix"]
    assert [f.name for f in store.files("BTCUSDT", "1h")] == ["data.parquet"] * 2  # status folded February's tail
    r = runner.invoke(app, ["--home", str(home), "collect", "status"])
    assert r.exit_code == 0 and "Traceback" not in r.output
    text = " ".join(r.stdout.split())
    assert "quarantined (binance ETHUSDT 1h, unreadable)" in text and "fix: fetch its candles again" in text
    where = "/quarantine/klines/exchange=binance/symbol=ETHUSDT/interval=1h/year=2024/month=01/data.parquet."
    assert where in r.stdout.replace("\n", "")


def test_exporting_a_series_with_an_unreadable_file_exits_3_naming_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Store(home / "data")
    store.append("BTCUSDT", "1h", hours(JAN, 100))
    month = store.partition_path("BTCUSDT", "1h", 2024, 1)
    tear(month)
    r = CliRunner().invoke(app, ["--home", str(home), "collect", "export", "--symbol", "BTCUSDT", "--interval", "1h"])
    assert r.exit_code == 3 and "Traceback" not in r.output
    assert str(month) in r.stderr.replace("\n", "") and "hint:" in r.stderr
    assert not store.quarantine.exists()  # a reader never writes
