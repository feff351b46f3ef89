"""The store's exchange= partition: one Store per exchange under one root, names checked before they become paths,
hive readers get an exchange column, market metadata per symbol, and fixes that name --exchange."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest

from tests.unit.test_store_concurrency import frame
from xylen.core import store_files as sf
from xylen.core.errors import ConfigError, DataError
from xylen.core.store import Store

pytestmark = pytest.mark.unit

JAN = 1704067200000  # 2024-01-01
HOUR = 3_600_000


def hours(n: int, marker: float = 1.0, t0: int = JAN) -> pl.DataFrame:
    return frame(t0 + HOUR * np.arange(n), marker, HOUR)


def test_each_exchange_has_its_own_series_gaps_and_quarantine(tmp_path: Path) -> None:
    binance, okx = Store(tmp_path), Store(tmp_path, "okx")
    assert (binance.exchange, okx.exchange) == ("binance", "okx")
    binance.append("BTCUSDT", "1h", hours(30, 1.0))
    okx.append("BTCUSDT", "1h", hours(100, 2.0))  # more than a tail: month files
    okx.append("ETHUSDT", "1h", hours(70, 2.0))
    okx.add_known_gaps("BTCUSDT", "1h", [(0, HOUR)])
    assert binance.series() == [("BTCUSDT", "1h")]
    assert okx.series() == [("BTCUSDT", "1h"), ("ETHUSDT", "1h")]
    mine, theirs = binance.read("BTCUSDT", "1h"), okx.read("BTCUSDT", "1h")
    assert (mine["open"].unique().to_list(), mine.height) == ([1.0], 30)
    assert (theirs["open"].unique().to_list(), theirs.height) == ([2.0], 100)
    assert (binance.known_gaps("BTCUSDT", "1h"), okx.known_gaps("BTCUSDT", "1h")) == ([], [(0, HOUR)])
    assert okx.files("BTCUSDT", "1h")[0].relative_to(tmp_path).as_posix() == (
        "klines/exchange=okx/symbol=BTCUSDT/interval=1h/year=2024/month=01/data.parquet"
    )
    assert (tmp_path / "meta" / "exchange=okx" / "BTCUSDT-1h.known_gaps.json").exists()
    assert okx.summary("BTCUSDT", "1h").to_dict()["exchange"] == "okx"
    # an unreadable okx month goes to quarantine/klines/exchange=okx/... and its fix names --exchange okx
    month = okx.partition_path("ETHUSDT", "1h", 2024, 1)
    month.write_bytes(month.read_bytes()[:-40])
    okx.compact("ETHUSDT", "1h")
    [q] = okx.quarantined("ETHUSDT", "1h")
    assert "/quarantine/klines/exchange=okx/symbol=ETHUSDT/interval=1h/year=2024/month=01/data.parquet." in q.file
    assert "`xylen collect --exchange okx --symbols ETHUSDT --intervals 1h --since 2024-01-01 --until 2024-02-01 " \
        "--once`" in q.fix
    assert okx.quarantined_series() == [("ETHUSDT", "1h")] and binance.quarantined_series() == []
    Store(tmp_path, "kraken").add_known_gaps("BTCUSD", "1h", [(0, HOUR)])  # gaps alone are not a series
    Store(tmp_path, "bybit")  # constructing a Store writes nothing
    assert Store.exchanges(tmp_path) == ["binance", "okx"]
    Store(tmp_path, "coinbase").storage.put_new(
        "quarantine/klines/exchange=coinbase/symbol=BTCUSD/interval=1h/year=2024/month=01/data.parquet.x", b"torn"
    )
    assert Store.exchanges(tmp_path) == ["binance", "coinbase", "okx"]  # a quarantined file alone: status lists it
    assert Store.exchanges(tmp_path / "nothing") == []


def test_the_binance_fix_has_no_exchange_option() -> None:
    fix = sf.fix_for("klines/exchange=binance/symbol=BTCUSDT/interval=5m/year=2024/month=02/data.parquet.20240301Z")
    assert "`xylen collect --symbols BTCUSDT --intervals 5m --since 2024-02-01 --until 2024-03-01 --once`" in fix
    tail = sf.fix_for(f"klines/exchange=kraken/symbol=BTCUSD/interval=1h/year=2024/month=01/tail-{JAN}-{JAN}-x.parquet")
    want = f"`xylen collect --exchange kraken --symbols BTCUSD --intervals 1h --since {JAN} --until {JAN + 1} --once`"
    assert want in tail
    odd = sf.fix_for("klines/exchange=okx/symbol=BTCUSDT/interval=1h/stray.parquet.20240301Z")  # put there by hand
    assert "`xylen collect --exchange okx --symbols BTCUSDT --intervals 1h --once`" in odd


@pytest.mark.parametrize("bad", ["../x", "okx/../binance", "", " ", "b", "x" * 21, "bin ance", "exchange=okx",
                                 "bin_ance", "okx\x00", "ökx", "..", "binance.us"])
def test_an_exchange_that_is_not_a_name_never_becomes_a_path(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        Store(tmp_path, bad)
    assert repr(bad[:40]) in info.value.message
    hint = info.value.hint or ""
    assert "lower-case letters and digits" in hint and "binance, binanceus, bybit, okx, kraken, coinbase" in hint
    assert not any(tmp_path.iterdir())


def test_an_exchange_name_is_normalised_and_any_well_formed_one_is_accepted(tmp_path: Path) -> None:
    Store(tmp_path, " OKX ").append("BTCUSDT", "1h", hours(3))
    assert Store(tmp_path, "okx").read("BTCUSDT", "1h").height == 3
    Store(tmp_path, "gateio2").append("BTCUSDT", "1h", hours(2))  # not one xylen collects from: still a name
    assert Store.exchanges(tmp_path) == ["gateio2", "okx"]


def test_hive_readers_get_an_exchange_column(tmp_path: Path) -> None:
    Store(tmp_path).append("BTCUSDT", "1h", hours(30))
    Store(tmp_path).append("BTCUSDT", "1h", hours(1, t0=JAN + 30 * HOUR))  # a tail
    Store(tmp_path, "bybit").append("BTCUSDT", "1h", hours(12))
    for source in (tmp_path / "klines", tmp_path / "klines" / "**" / "*.parquet"):  # the README's scan, and a glob
        lf = pl.scan_parquet(source, hive_partitioning=True)
        got = lf.group_by("exchange", "symbol").agg(pl.len()).sort("exchange").collect().rows()
        assert got == [("binance", "BTCUSDT", 31), ("bybit", "BTCUSDT", 12)]
    duckdb = pytest.importorskip("duckdb")
    q = (f"select exchange, count(*) from read_parquet('{tmp_path}/klines/**/*.parquet', hive_partitioning=true) "
         "group by all order by 1")
    assert duckdb.sql(q).fetchall() == [("binance", 31), ("bybit", 12)]


def test_market_metadata_per_symbol(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    okx = Store(tmp_path, "okx")
    assert okx.market("BTCUSDT") is None
    info = {"unified": "BTC/USDT", "id": "BTC-USDT", "limits": {"amount": {"min": 1e-05}}, "active": True}
    okx.set_market("btcusdt", info)
    assert okx.market("BTCUSDT") == info and Store(tmp_path).market("BTCUSDT") is None
    path = tmp_path / "meta" / "exchange=okx" / "BTCUSDT.market.json"
    assert orjson.loads(path.read_bytes()) == info
    okx.set_market("BTCUSDT", {"unified": "BTC/USDT", "id": "BTCUSDT"})  # replaced whole
    assert okx.market("BTCUSDT") == {"unified": "BTC/USDT", "id": "BTCUSDT"}
    with pytest.raises(ConfigError, match="'BTC/USDT'"):
        okx.set_market("BTC/USDT", info)
    with pytest.raises(DataError, match="must be a JSON object, not list"):
        okx.set_market("ETHUSDT", ["BTC/USDT"])  # type: ignore[arg-type]
    with pytest.raises(DataError, match="cannot be stored as JSON"):
        okx.set_market("ETHUSDT", {"when": object()})
    assert okx.market("ETHUSDT") is None
    path.write_bytes(b'{"unified": "BTC/US')  # torn by another tool: bookkeeping the collector rewrites
    with caplog.at_level(logging.WARNING, logger="xylen.store"):
        assert okx.market("BTCUSDT") is None
    assert "BTCUSDT.market.json" in caplog.text
    okx.set_market("BTCUSDT", info)
    assert okx.market("BTCUSDT") == info


def test_concurrent_market_writers_never_tear_the_file(tmp_path: Path) -> None:
    infos = [{"id": f"BTC-USDT-{k}", "pad": "x" * 5000 * k} for k in range(4)]
    seen: list[object] = []
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            store = Store(tmp_path, "okx")
            for _ in range(25):
                store.set_market("BTCUSDT", infos[k])
                seen.append(store.market("BTCUSDT"))
        except BaseException as exc:  # reported below: a thread's exception would vanish
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert errors == []
    assert all(s in infos for s in seen) and Store(tmp_path, "okx").market("BTCUSDT") in infos
