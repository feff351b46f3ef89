"""What may become a path in the store: normalised symbols only, Binance intervals only (weeks and months
included, on their real calendar grids)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.unit.test_store_concurrency import frame
from xylen.cli import app
from xylen.core.errors import ConfigError, DataError
from xylen.core.schema import normalize_symbol
from xylen.core.store import Store

pytestmark = pytest.mark.unit

DAY = 86_400_000
WEEK = 7 * DAY


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


@pytest.mark.parametrize("bad", ["../../evil", "BTC/USDT", "", " ", "B", "A" * 21, "btc-usdt", "BTC\x00USDT", ".."])
def test_a_symbol_that_is_not_letters_and_digits_never_becomes_a_path(tmp_path: Path, bad: str) -> None:
    store = Store(tmp_path)
    for call in (
        lambda: store.series_dir(bad, "1h"),
        lambda: store.append(bad, "1h", frame([0], 1.0, 3_600_000)),
        lambda: store.read(bad, "1h"),
        lambda: store.add_known_gaps(bad, "1h", [(0, 1)]),
    ):
        with pytest.raises(ConfigError) as info:
            call()
        assert repr(bad)[:30] in info.value.message or repr(bad[:40]) in info.value.message
    assert not any(tmp_path.rglob("*"))


@pytest.mark.parametrize("bad", ["7m", "1W", "1min", "", "../x", "1mo"])
def test_an_interval_that_binance_does_not_have_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match=repr(bad)):
        Store(tmp_path).series_dir("BTCUSDT", bad)


def test_symbols_are_normalised_so_lower_case_finds_the_stored_series(tmp_path: Path) -> None:
    assert normalize_symbol(" btcusdt ") == "BTCUSDT"
    store = Store(tmp_path)
    store.append("btcusdt", "1h", frame([0, 3_600_000], 1.0, 3_600_000))
    assert store.series() == [("BTCUSDT", "1h")]
    assert store.read("BTCUSDT", "1h").height == 2 and store.read(" btcUSDT", "1h").height == 2
    assert store.series_dir("btcusdt", "1h") == store.klines / "exchange=binance" / "symbol=BTCUSDT" / "interval=1h"


def test_weekly_candles_open_on_mondays_and_monthly_on_the_first(tmp_path: Path) -> None:
    store = Store(tmp_path)
    mondays = ms(2024, 1, 1) + WEEK * np.arange(10)  # 2024-01-01 was a Monday
    store.append("BTCUSDT", "1w", frame(mondays, 1.0, WEEK))
    with pytest.raises(DataError, match="off the 1w grid"):  # epoch-modulo-a-week: Thursdays
        store.append("BTCUSDT", "1w", frame([ms(2024, 1, 4)], 1.0, WEEK))
    files = [f.relative_to(store.klines).as_posix().rsplit("/", 1)[0] for f in store.files("BTCUSDT", "1w")]
    assert files == [  # a weekly candle belongs to the month of its open time
        "exchange=binance/symbol=BTCUSDT/interval=1w/year=2024/month=01",
        "exchange=binance/symbol=BTCUSDT/interval=1w/year=2024/month=02",
        "exchange=binance/symbol=BTCUSDT/interval=1w/year=2024/month=03",
    ]
    months = [ms(2023, m, 1) for m in (10, 11, 12)] + [ms(2024, m, 1) for m in (1, 4, 5)]
    store.append("BTCUSDT", "1M", frame(months, 1.0, 30 * DAY))
    with pytest.raises(DataError, match="off the 1M grid"):
        store.append("BTCUSDT", "1M", frame([ms(2024, 2, 2)], 1.0, 30 * DAY))
    s = store.summary("BTCUSDT", "1M", now_ms=ms(2024, 6, 15))
    assert (s.rows, s.gaps, s.missing) == (6, [(ms(2024, 1, 1), 2)], 2)  # February and March
    assert s.lag_ms == ms(2024, 6, 15) - ms(2024, 6, 1)  # since May closed
    store.add_known_gaps("BTCUSDT", "1M", [(ms(2024, 2, 1), ms(2024, 4, 1))])
    assert store.summary("BTCUSDT", "1M", now_ms=ms(2024, 6, 15)).gaps == []
    assert store.summary("BTCUSDT", "1w", now_ms=ms(2024, 3, 12)).gaps == []


def test_import_refuses_a_path_as_a_symbol_and_normalises_lower_case(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rows = frame(ms(2024, 1, 1) + 3_600_000 * np.arange(48), 1.0, 3_600_000)
    csv = tmp_path / "candles.csv"
    rows.write_csv(csv, include_header=False)  # Binance's column order, no symbol in the name
    runner = CliRunner()
    r = runner.invoke(app, ["--home", str(home), "collect", "import", str(csv), "--symbol", "../../evil"])
    assert r.exit_code == 2, r.output
    assert "'../../evil'" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.output
    assert not [p for p in tmp_path.rglob("*") if "evil" in p.name]
    assert not (home / "data" / "klines").exists()
    r = runner.invoke(app, ["--home", str(home), "collect", "import", str(csv), "--symbol", "btcusdt",
                            "--interval", "1h"])
    assert r.exit_code == 0, r.output
    assert Store(home / "data").series() == [("BTCUSDT", "1h")]
    r = runner.invoke(app, ["--home", str(home), "collect", "export", "--symbol", "btcusdt", "--interval", "1h"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 48
    r = runner.invoke(app, ["--home", str(home), "collect", "--symbols", "../x", "--once"])
    assert r.exit_code == 2 and "'../x'" in r.stderr


def test_import_weekly_and_monthly_files_on_their_calendar(tmp_path: Path) -> None:
    home = tmp_path / "home"
    months = [ms(2023, m, 1) for m in range(1, 13)]
    monthly = tmp_path / "BTCUSDT-1M-2023.csv"  # 6 columns: close_time comes from the calendar
    monthly.write_text("\n".join(f"{t},100,110,90,105,1000" for t in months))
    mondays = ms(2024, 1, 1) + WEEK * np.arange(8)
    weekly = tmp_path / "ethusdt.csv"  # neither symbol nor interval in the name
    weekly.write_text("\n".join(f"{t},100,110,90,105,1000" for t in mondays))
    runner = CliRunner()
    r = runner.invoke(app, ["--home", str(home), "collect", "import", str(monthly), "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["--home", str(home), "collect", "import", str(weekly), "--symbol", "ethusdt"])
    assert r.exit_code == 0, r.output
    store = Store(home / "data")
    assert store.series() == [("BTCUSDT", "1M"), ("ETHUSDT", "1w")]  # 1w told by the candles' spacing
    m = store.read("BTCUSDT", "1M")
    assert m["open_time"].to_list() == months
    assert m["close_time"].to_list()[1] == ms(2023, 3, 1) - 1  # February 2023: 28 days
    assert store.read("ETHUSDT", "1w")["close_time"].to_list()[0] == ms(2024, 1, 8) - 1
    thursdays = tmp_path / "XRPUSDT-1w.csv"
    thursdays.write_text("\n".join(f"{t},100,110,90,105,1000" for t in mondays + 3 * DAY))
    r = runner.invoke(app, ["--home", str(home), "collect", "import", str(thursdays)])
    assert r.exit_code == 3 and "not on the 1w grid" in r.stderr
