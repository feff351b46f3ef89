"""Readers against the real files in tests/data (one per format), µs/ms normalisation, validation errors."""

from __future__ import annotations

import gzip
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from xylen.core.candles import COLUMNS, infer_interval, read_candles, record_to_row, validate
from xylen.core.errors import DataError

pytestmark = pytest.mark.unit
DATA = Path(__file__).parent.parent / "data"
CSV_1H = DATA / "spot_klines_12col" / "sadunalpdag_batmayacagiz__BTCUSDT-1h-2022-01.csv.gz"
FEATHER = DATA / "spot_ohlcv_feather" / "imsatoshi_GeneTrader_2024" / "BTC_USDT-1h.feather"
REST_JSON = DATA / "api_fixtures" / "rest_api_v3_klines__ADAUSDT_1m_limit500_2024-11-16.json"
WS_ETH = DATA / "api_fixtures" / "ws_kline_stream__ethusdt_kline_5m_2021-04-25.jsonl"


def _csv_lines(header: bool) -> list[str]:
    lines = gzip.decompress(CSV_1H.read_bytes()).decode().splitlines()
    return lines if header else lines[1:]


def test_binance_csv_with_header_gz():
    r = read_candles(CSV_1H)
    assert (r.symbol, r.interval) == ("BTCUSDT", "1h")
    assert r.frame.height == 744
    assert r.frame.columns == list(COLUMNS)
    assert r.frame["open_time"][0] == 1640995200000  # 2022-01-01 00:00 UTC
    assert r.frame["trades"].null_count() == 0
    rep = validate(r.frame, "1h", r.source)
    assert rep.gaps == [] and rep.rows == 744


def test_binance_zip_without_header_and_checksum(tmp_path):
    csv = "\n".join(_csv_lines(header=False)) + "\n"
    z = tmp_path / "BTCUSDT-1h-2022-01.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("BTCUSDT-1h-2022-01.csv", csv)
    (tmp_path / "BTCUSDT-1h-2022-01.zip.CHECKSUM").write_text(
        f"{hashlib.sha256(z.read_bytes()).hexdigest()}  BTCUSDT-1h-2022-01.zip\n"
    )
    r = read_candles(z)
    assert r.frame.height == 744 and r.interval == "1h"
    assert any("sha256 verified" in n for n in r.notes)
    (tmp_path / "BTCUSDT-1h-2022-01.zip.CHECKSUM").write_text("0" * 64 + "  BTCUSDT-1h-2022-01.zip\n")
    with pytest.raises(DataError, match="does not match its checksum"):
        read_candles(z)


def test_microsecond_timestamps_are_normalised_per_row(tmp_path):
    """data.binance.vision switched spot archives to microseconds on 2025-01-01: a file may mix both."""
    lines = _csv_lines(header=False)
    mixed = []
    for i, line in enumerate(lines):
        f = line.split(",")
        if i >= 400:  # second half in microseconds, like an archive spanning the switch
            f[0], f[6] = str(int(f[0]) * 1000), str(int(f[6]) * 1000 + 999)
        mixed.append(",".join(f))
    p = tmp_path / "BTCUSDT-1h-mixed.csv"
    p.write_text("\n".join(mixed) + "\n")
    r = read_candles(p)
    ref = read_candles(CSV_1H).frame
    assert r.frame["open_time"].to_list() == ref["open_time"].to_list()
    assert r.frame["close_time"].to_list() == ref["close_time"].to_list()
    assert any("344 timestamps were in microseconds" in n for n in r.notes)


def test_second_timestamps_are_read_by_the_rule_the_server_uses(tmp_path):
    """Epoch seconds are converted by magnitude (schema.to_epoch_ms, shared with /predict), and a time before
    1970 is refused naming the file and row, never read as a 1970 millisecond."""
    lines = _csv_lines(header=False)
    f = lines[0].split(",")
    f[0], f[6] = str(int(f[0]) // 1000), str(int(f[6]) // 1000)
    p = tmp_path / "BTCUSDT-1h-seconds.csv"
    p.write_text("\n".join([",".join(f), *lines[1:]]) + "\n")
    r = read_candles(p)
    assert r.frame["open_time"].to_list() == read_candles(CSV_1H).frame["open_time"].to_list()
    assert any("1 timestamps were in seconds" in n for n in r.notes)
    f[0] = "-5"
    p.write_text("\n".join([",".join(f), *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"row 1: time -5 is before 1970"):
        read_candles(p)


def test_freqtrade_feather():
    r = read_candles(FEATHER)
    assert (r.symbol, r.interval) == ("BTCUSDT", "1h")
    assert r.frame.height == 5980
    assert r.frame["open_time"][0] == 1704067200000  # 2024-01-01
    assert r.frame["close_time"][0] == 1704067200000 + 3_600_000 - 1
    assert r.frame["quote_volume"].null_count() == r.frame.height  # unknown in freqtrade files


def test_parquet_roundtrip(tmp_path):
    df = read_candles(FEATHER).frame
    p = tmp_path / "BTCUSDT-1h.parquet"
    df.write_parquet(p)
    assert read_candles(p).frame.equals(df)


def test_rest_json_and_websocket_jsonl():
    r = read_candles(REST_JSON, symbol="ADAUSDT", interval="1m")
    assert r.frame.height == 500
    ref = pl.read_csv(REST_JSON.with_name(REST_JSON.name.replace(".json", ".normalized.csv")))
    assert r.frame["close"].to_list() == ref["close"].to_list()
    ws = read_candles(WS_ETH, interval="5m")
    assert ws.frame.height == 1  # only the one closed (x: true) message is a candle
    assert ws.frame["open_time"][0] == 1619385900000


def test_alpha_jsonl_objects(tmp_path):
    df = read_candles(CSV_1H).frame.head(60)
    lines = [
        f'{{"timestamp": {t}, "open": {o}, "high": {h}, "low": {lo}, "close": {c}, "volume": {v}}}'
        for t, o, h, lo, c, v in df.select("open_time", "open", "high", "low", "close", "volume").iter_rows()
    ]
    p = tmp_path / "btcusdt_1h.jsonl"
    p.write_text("\n".join(lines) + "\n")
    r = read_candles(p)
    assert r.frame["close"].to_list() == df["close"].to_list()
    assert infer_interval(r.frame) == "1h"


def test_record_spellings_agree():
    arr = [1704067200000, "42283.58", "42554.57", "42261.02", "42475.23", "1271.68", 1704070799999]
    obj = {
        "t": 1704067200000,
        "o": "42283.58",
        "h": "42554.57",
        "l": "42261.02",
        "c": "42475.23",
        "v": "1271.68",
        "T": 1704070799999,
    }
    long = {
        "open_time": 1704067200000,
        "open": 42283.58,
        "high": 42554.57,
        "low": 42261.02,
        "close": 42475.23,
        "volume": 1271.68,
        "close_time": 1704070799999,
    }
    a, b, c = record_to_row(arr), record_to_row(obj), record_to_row(long)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    with pytest.raises(DataError, match="'close' value 'abc' is not a number"):
        record_to_row({**long, "close": "abc"})
    with pytest.raises(DataError, match="lacks 'volume'"):
        record_to_row({k: v for k, v in long.items() if k != "volume"})


# ----- bad input: each names the file, the row or value, and the fix ----------------------------------
def _write_csv(tmp_path: Path, lines: list[str], name: str = "BTCUSDT-1h-bad.csv") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def _validate(p: Path) -> None:
    r = read_candles(p)
    validate(r.frame, r.interval or "1h", r.source)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda L: L[:10] + [L[9]] + L[10:], "duplicate candle"),
        (lambda L: L[:10] + [L[11], L[10]] + L[12:], "not sorted"),
        (lambda L: [*L[:5], L[5].replace(L[5].split(",")[4], "nan", 1), *L[6:]], "has close = nan"),
        (lambda L: [*L[:5], L[5].replace(L[5].split(",")[2], "1.0", 1), *L[6:]], "breaks OHLC sanity"),
        (
            lambda L: [*L[:5], ",".join([str(int(L[5].split(",")[0]) + 17), *L[5].split(",")[1:]]), *L[6:]],
            "not on the 1h grid",
        ),
        (lambda L: [*L[:5], L[5].replace(L[5].split(",")[1], "abc", 1), *L[6:]], "is not a number"),
        (lambda L: [",".join(x.split(",")[:4]) for x in L], "has 4 columns"),
    ],
)
def test_bad_files_are_refused_with_the_row(tmp_path, mutate, message):
    p = _write_csv(tmp_path, mutate(_csv_lines(header=False)))
    with pytest.raises(DataError, match=message) as exc:
        _validate(p)
    assert str(p) in exc.value.message and exc.value.hint


def test_truncated_and_missing_files(tmp_path):
    gz = tmp_path / "BTCUSDT-1h-2022-01.csv.gz"
    gz.write_bytes(CSV_1H.read_bytes()[:5000])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_candles(gz)
    z = tmp_path / "BTCUSDT-1h-2022-02.zip"
    z.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="Cannot read"):
        read_candles(z)
    with pytest.raises(DataError, match="does not exist"):
        read_candles(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="Unknown candle file type"):
        read_candles(_write_csv(tmp_path, ["x"], name="candles.txt"))
    bad_feather = tmp_path / "BTC_USDT-1h.feather"
    bad_feather.write_bytes(FEATHER.read_bytes()[:3000])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_candles(bad_feather)


def test_gaps_are_reported_not_filled():
    df = read_candles(FEATHER).frame
    holed = pl.concat([df.head(100), df.slice(103)])
    rep = validate(holed, "1h", "x")
    assert rep.gaps == [(int(df["open_time"][99]), 3)]
    assert rep.rows == df.height - 3


def test_binance_archive_names_spell_the_month_1mo(tmp_path):
    """data.binance.vision names monthly klines BTCUSDT-1mo-2024-01.zip; 1m stays the minute."""
    from xylen.core.candles import infer_series

    assert infer_series(Path("BTCUSDT-1mo-2024-01.zip")) == ("BTCUSDT", "1M")
    assert infer_series(Path("BTCUSDT-1m-2024-01.zip")) == ("BTCUSDT", "1m")
    assert infer_series(Path("BTCUSDT-1M.parquet")) == ("BTCUSDT", "1M")
