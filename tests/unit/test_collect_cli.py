"""`xylen collect` as the user sees it: import/export/status, and every bad input refused cleanly."""

from __future__ import annotations

import gzip
import hashlib
import zipfile
from pathlib import Path

import orjson
import polars as pl
import pytest
from typer.testing import CliRunner

from xylen.cli import app
from xylen.core.store import Store

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data"
BTC_1H = DATA / "spot_klines_12col" / "sadunalpdag_batmayacagiz__BTCUSDT-1h-2022-01.csv.gz"
ETH_FEATHER = DATA / "spot_ohlcv_feather" / "imsatoshi_GeneTrader_2024" / "ETH_USDT-1h.feather"
ADA_JSON = DATA / "api_fixtures" / "rest_api_v3_klines__ADAUSDT_1m_limit500_2024-11-16.json"

runner = CliRunner()


def cli(home: Path, *args: str) -> object:
    return runner.invoke(app, ["--home", str(home), "collect", *args])


def csv_lines(micro: bool = False) -> list[str]:
    lines = gzip.decompress(BTC_1H.read_bytes()).decode().splitlines()[1:]  # drop the header
    if micro:  # data.binance.vision spot archives since 2025: microseconds
        lines = [",".join([f"{p[0]}000", *p[1:6], f"{p[6]}000", *p[7:]]) for p in (ln.split(",") for ln in lines)]
    return lines


def make_zip(folder: Path, name: str, lines: list[str], checksum: bool = True) -> Path:
    z = folder / f"{name}.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"{name}.csv", "\n".join(lines) + "\n")
    if checksum:
        (folder / f"{name}.zip.CHECKSUM").write_text(f"{hashlib.sha256(z.read_bytes()).hexdigest()}  {name}.zip\n")
    return z


def test_import_archives_feather_and_jsonl_then_export(tmp_path: Path) -> None:
    z = make_zip(tmp_path, "BTCUSDT-1h-2022-01", csv_lines())
    z_us = make_zip(tmp_path, "BTCUSDT-1h-2022-01b", csv_lines(micro=True))  # same candles in µs: all dupes
    r = cli(tmp_path / "home", "import", str(z), str(z_us), str(ETH_FEATHER), "--json")
    assert r.exit_code == 0, r.output
    summary = orjson.loads(r.stdout)
    assert (summary["added"], summary["duplicates"]) == (744 + 5980, 744)
    assert "sha256 verified" in summary["files"][0]["notes"][0]
    store = Store(tmp_path / "home" / "data")
    assert store.series() == [("BTCUSDT", "1h"), ("ETHUSDT", "1h")]
    # JSONL with an explicit series, rows duplicated inside the file
    rows = orjson.loads(ADA_JSON.read_bytes())
    jl = tmp_path / "ada.jsonl"
    jl.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in rows + rows[:10]))
    r = cli(tmp_path / "home", "import", str(jl), "--symbol", "ADAUSDT", "--interval", "1m")
    assert r.exit_code == 0, r.output
    assert store.read("ADAUSDT", "1m").height == 500
    # export round trip in every format
    for fmt in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"btc.{fmt}"
        r = cli(
            tmp_path / "home", "export", "--symbol", "BTCUSDT", "--interval", "1h", "--format", fmt, "--out", str(out)
        )
        assert r.exit_code == 0, r.output
        back = {"jsonl": pl.read_ndjson, "csv": pl.read_csv, "parquet": pl.read_parquet}[fmt](out)
        assert back.height == 744 and back["open_time"].to_list() == store.read("BTCUSDT", "1h")["open_time"].to_list()
    r = cli(tmp_path / "home", "export", "--symbol", "BTCUSDT", "--interval", "1h")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 744


def test_status_json_and_table(tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = cli(home, "status", "--json")
    assert (r.exit_code, orjson.loads(r.stdout)) == (0, [])
    cli(home, "import", str(make_zip(tmp_path, "BTCUSDT-1h-2022-01", csv_lines())))
    [s] = orjson.loads(cli(home, "status", "--json").stdout)
    assert (s["symbol"], s["interval"], s["rows"], s["gaps"], s["first"]) == ("BTCUSDT", "1h", 744, [], 1640995200000)
    assert s["lag_ms"] > 0
    r = cli(home, "status")
    assert r.exit_code == 0 and "BTCUSDT" in r.stdout and "744" in r.stdout and "2022-01-31" in r.stdout
    assert s["exchange"] == "binance" and "binance" in r.stdout
    # the same pair on another exchange is another series, in its own partition, listed with its exchange
    (tmp_path / "kraken").mkdir()
    zipped = make_zip(tmp_path / "kraken", "BTCUSDT-1h-2022-01", csv_lines()[:100])
    assert cli(home, "import", "--exchange", "kraken", str(zipped)).exit_code == 0
    listed = orjson.loads(cli(home, "status", "--json").stdout)
    assert [(x["exchange"], x["symbol"], x["rows"]) for x in listed] == [("binance", "BTCUSDT", 744),
                                                                         ("kraken", "BTCUSDT", 100)]
    assert "kraken" in cli(home, "status").stdout
    assert (home / "data" / "klines" / "exchange=kraken" / "symbol=BTCUSDT").is_dir()
    r = cli(home, "export", "--exchange", "kraken", "--symbol", "BTCUSDT", "--interval", "1h", "--format", "csv")
    assert r.exit_code == 0 and len(r.stdout.strip().splitlines()) == 101  # a header and kraken's 100 candles


@pytest.mark.parametrize(
    ("args", "code", "quoted"),
    [
        (["--symbols", "BTC//USDT", "--once"], 2, "'BTC//USDT'"),
        (["--symbols", "BTCUSDT", "--exchange", "ftx", "--once"], 2, "'ftx'"),
        (["--symbols", "BTCUSDT", "--exchange", "krakn", "--once"], 2, "did you mean kraken"),
        (["export", "--symbol", "BTCUSDT", "--interval", "1h", "--exchange", "mtgox"], 2, "'mtgox'"),
        (["--symbols", "BTCUSDT", "--intervals", "7m", "--once"], 2, "'7m'"),
        (["--symbols", "BTCUSDT", "--since", "2024-13-45", "--once"], 2, "'2024-13-45'"),
        (["--symbols", "BTCUSDT", "--since", "2024-02-01", "--until", "2024-01-01"], 2, "--since"),
        (["import", "/nope/BTCUSDT-1h.zip"], 3, "'/nope/BTCUSDT-1h.zip'"),
        (["export", "--symbol", "BTCUSDT", "--interval", "1h"], 3, "BTCUSDT 1h"),
        (["export", "--symbol", "BTCUSDT", "--interval", "1h", "--format", "xml"], 2, "'xml'"),
    ],
)
def test_bad_input_is_one_clear_message_and_no_traceback(
    tmp_path: Path, args: list[str], code: int, quoted: str
) -> None:
    r = cli(tmp_path / "home", *args)
    assert r.exit_code == code, r.output
    assert quoted in r.stderr and "hint:" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "home" / "data" / "klines").exists()


def test_a_bad_file_among_good_ones_leaves_the_store_untouched(tmp_path: Path) -> None:
    good = make_zip(tmp_path, "BTCUSDT-1h-2022-01", csv_lines())
    lines = csv_lines()
    bad_zip = make_zip(tmp_path, "BTCUSDT-1h-2022-02", lines)
    (tmp_path / "BTCUSDT-1h-2022-02.zip.CHECKSUM").write_text("0" * 64 + "  BTCUSDT-1h-2022-02.zip\n")
    r = cli(tmp_path / "home", "import", str(good), str(bad_zip))
    assert r.exit_code == 3 and "checksum" in r.stderr
    broken = lines[:5] + [lines[5].replace(lines[5].split(",")[2], "-1", 1)] + lines[6:]
    bad_csv = tmp_path / "BTCUSDT-1h-2022-03.csv"
    bad_csv.write_text("\n".join(broken))
    r = cli(tmp_path / "home", "import", str(good), str(bad_csv))
    assert r.exit_code == 3 and "row 6" in r.stderr, r.stderr
    assert Store(tmp_path / "home" / "data").series() == []


def test_files_that_disagree_about_a_candle_are_refused_naming_both(tmp_path: Path) -> None:
    lines = csv_lines()
    a = tmp_path / "BTCUSDT-1h-2022-01.csv"
    a.write_text("\n".join(lines[:100]))
    changed = lines[50].split(",")
    changed[4] = str(float(changed[4]) + 1)  # another close for the same open_time
    b = tmp_path / "BTCUSDT-1h-2022-01b.csv"
    b.write_text("\n".join([*lines[40:50], ",".join(changed), *lines[51:60]]))
    r = cli(tmp_path / "home", "import", str(a), str(b))
    assert r.exit_code == 3, r.output
    err = " ".join(r.stderr.split())
    assert f"{a} row 51" in err and f"{b} row 11" in err and "hint:" in err
    assert Store(tmp_path / "home" / "data").series() == []
    # the same candles twice, inside and across the files: kept once
    c = tmp_path / "BTCUSDT-1h-2022-01c.csv"
    c.write_text("\n".join(lines[90:120] + lines[95:100]))
    r = cli(tmp_path / "home", "import", str(a), str(c), "--json")
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.stdout)["added"] == 120
    assert Store(tmp_path / "home" / "data").read("BTCUSDT", "1h").height == 120
