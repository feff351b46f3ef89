"""Write ``data/`` here with the store code from before exchanges, and ``expected.json`` with what that code read.

    PYTHONPATH=<old checkout>/src python tests/data/store_v0/make_store_v0.py [SHARED_DATA]

Run it with the OLD source first on PYTHONPATH (see README.md here): it refuses to run on a store that knows
exchanges. SHARED_DATA holds ``spot_ohlcv_feather/daisybum_cryptoTradingBot_2023/{BTC,ETH}_USDT-{1h,5m}.feather``
(default /work/shared/data). Every candle is real Binance data from those files; nothing is made up.
"""

from __future__ import annotations

import hashlib
import inspect
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import orjson
import polars as pl

HERE = Path(__file__).resolve().parent
NOW = 1680652800000  # 2023-04-05 00:00 UTC: the lag in expected.json is measured from here
HOUR, FIVE = 3_600_000, 300_000


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


def digest(df: pl.DataFrame) -> str:
    """A fingerprint of a frame's values (the test computes the same on the migrated store)."""
    return hashlib.sha256(orjson.dumps(df.sort("open_time").to_dicts())).hexdigest()


def main() -> None:
    from xylen.core import store as store_mod
    from xylen.core.candles import read_candles
    from xylen.core.store import Store

    if "exchange" in inspect.signature(Store).parameters:
        sys.exit("run this with the store code from before exchanges first on PYTHONPATH (see README.md)")
    shared = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data")
    src = shared / "spot_ohlcv_feather" / "daisybum_cryptoTradingBot_2023"
    root = HERE / "data"
    shutil.rmtree(root, ignore_errors=True)
    store = Store(root)

    def candles(sym: str, iv: str, start: int, end: int) -> pl.DataFrame:
        df = read_candles(src / f"{sym[:3]}_USDT-{iv}.feather", interval=iv).frame
        return df.filter((pl.col("open_time") >= start) & (pl.col("open_time") < end))

    def singles(sym: str, iv: str, df: pl.DataFrame) -> None:
        for i in range(df.height):  # follow mode: one closed candle at a time, each a tail
            store.append(sym, iv, df.slice(i, 1))

    # BTCUSDT 1h: February and March month files, March tails, April tails only (one of 24 candles)
    btc1h = candles("BTCUSDT", "1h", ms(2023, 2, 20), ms(2023, 4, 2, 3))
    store.append("BTCUSDT", "1h", btc1h.filter(pl.col("open_time") < ms(2023, 3, 31, 20)))
    store.append("BTCUSDT", "1h", btc1h.filter(pl.col("open_time").is_between(ms(2023, 4, 1), ms(2023, 4, 1, 23))))
    singles("BTCUSDT", "1h", btc1h.filter(pl.col("open_time").is_between(ms(2023, 3, 31, 20), ms(2023, 3, 31, 23))))
    singles("BTCUSDT", "1h", btc1h.filter(pl.col("open_time") >= ms(2023, 4, 2)))
    store.add_known_gaps("BTCUSDT", "1h", [(ms(2023, 3, 24, 13), ms(2023, 3, 24, 14))])  # the real halt

    # BTCUSDT 5m: two days of March around the halt (16 candles missing), then three tails
    btc5m = candles("BTCUSDT", "5m", ms(2023, 3, 23), ms(2023, 3, 25, 0, 15))
    store.append("BTCUSDT", "5m", btc5m.filter(pl.col("open_time") < ms(2023, 3, 25)))
    singles("BTCUSDT", "5m", btc5m.filter(pl.col("open_time") >= ms(2023, 3, 25)))
    store.add_known_gaps("BTCUSDT", "5m", [(ms(2023, 3, 24, 12, 40), ms(2023, 3, 24, 14))])

    # ETHUSDT 1h: three weeks over March and April, then three tails; the middle tail is torn (a bad disk) and
    # compaction moves it to quarantine/: its candle is gone from the store, its bytes kept
    eth1h = candles("ETHUSDT", "1h", ms(2023, 3, 15), ms(2023, 4, 4, 3))
    store.append("ETHUSDT", "1h", eth1h.filter(pl.col("open_time") < ms(2023, 4, 4)))
    singles("ETHUSDT", "1h", eth1h.filter(pl.col("open_time") >= ms(2023, 4, 4)))
    torn = next(f for f in store.files("ETHUSDT", "1h") if f.name.startswith(f"tail-{ms(2023, 4, 4, 1)}-"))
    torn.write_bytes(torn.read_bytes()[:-40])
    store.compact("ETHUSDT", "1h")
    store.add_known_gaps("ETHUSDT", "1h", [(ms(2023, 3, 24, 13), ms(2023, 3, 24, 14))])

    # ETHUSDT 5m: the turn of the month, a month file on each side, tails in April
    eth5m = candles("ETHUSDT", "5m", ms(2023, 3, 31, 18), ms(2023, 4, 1, 6, 15))
    store.append("ETHUSDT", "5m", eth5m.filter(pl.col("open_time") < ms(2023, 4, 1, 6)))
    singles("ETHUSDT", "5m", eth5m.filter(pl.col("open_time") >= ms(2023, 4, 1, 6)))

    shutil.rmtree(root / ".locks", ignore_errors=True)  # the writers' lock files: not data
    shutil.rmtree(root / ".tmp", ignore_errors=True)
    expected = []
    for sym, iv in store.series():
        df = store.read(sym, iv)
        summary = store.summary(sym, iv, NOW).to_dict()
        for q in summary["quarantined"]:  # type: ignore[attr-defined]
            q["file"] = Path(q["file"]).relative_to(root).as_posix()
        expected.append(
            {
                "symbol": sym,
                "interval": iv,
                "digest": digest(df),
                "files": [f.relative_to(root).as_posix() for f in store.files(sym, iv)],
                "summary": summary,
            }
        )
    (HERE / "expected.json").write_bytes(orjson.dumps(expected, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {root} with {store_mod.__file__}")


if __name__ == "__main__":
    main()
