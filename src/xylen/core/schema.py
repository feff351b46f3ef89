"""The candle schema as plain constants (no polars): what a server needs without the readers.

``xylen.core.candles`` re-exports these; the serving process imports this module alone so polars stays unloaded.
"""

from __future__ import annotations

INTERVAL_MS: dict[str, int] = {
    "1s": 1_000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
    "12h": 43_200_000, "1d": 86_400_000, "3d": 259_200_000, "1w": 604_800_000,
}
"""Fixed-length Binance intervals. ``1M`` (calendar month) is not supported: its length varies."""

PRICE_COLUMNS = ("open", "high", "low", "close")
OHLCV = ("open", "high", "low", "close", "volume")
EXTRA_COLUMNS = ("close_time", "quote_volume", "trades", "taker_buy_base", "taker_buy_quote")
COLUMNS = ("open_time", *OHLCV, *EXTRA_COLUMNS)

# Object candles: every accepted spelling of each field (Binance websocket letters, long names, freqtrade).
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "open_time": ("open_time", "t", "timestamp", "time", "date"),
    "open": ("open", "o"), "high": ("high", "h"), "low": ("low", "l"), "close": ("close", "c"),
    "volume": ("volume", "v"), "close_time": ("close_time", "T"), "quote_volume": ("quote_volume", "q"),
    "trades": ("trades", "n"), "taker_buy_base": ("taker_buy_base", "V"), "taker_buy_quote": ("taker_buy_quote", "Q"),
}
