"""What every fake exchange of ``venues.py`` knows, whatever its format: recorded candles per (canonical symbol,
interval), the markets it lists, and how each exchange spells a market.

Candles are Binance 12-field rows (``tests.fakes.klines.load_series``); each exchange's answer formats them its own
way (``venue_api.py``). A candle exists once it has opened: the one containing "now" is served as the still-open
candle with the recorded values, as the real exchanges serve theirs; later ones do not exist yet.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from tests.fakes.klines import Row, normalize_rows

# Quote assets, longest first so that BTCUSDT is BTC/USDT and not BTCU/SDT.
QUOTES = ("FDUSD", "USDT", "USDC", "TUSD", "BUSD", "DAI", "USD", "EUR", "GBP", "JPY", "CAD", "AUD", "BTC", "ETH")

# Kraken's legacy asset ids (X for crypto, Z for fiat) and the altnames it spells pairs with: XBT is BTC, XDG DOGE.
KRAKEN_LEGACY = {
    "BTC": "XXBT", "ETH": "XETH", "LTC": "XLTC", "XRP": "XXRP", "XLM": "XXLM", "ETC": "XETC", "ZEC": "XZEC",
    "XMR": "XXMR", "DOGE": "XXDG", "MLN": "XMLN", "REP": "XREP",
    "USD": "ZUSD", "EUR": "ZEUR", "GBP": "ZGBP", "JPY": "ZJPY", "CAD": "ZCAD", "AUD": "ZAUD",
}  # fmt: skip
KRAKEN_ALTNAME = {"BTC": "XBT", "DOGE": "XDG"}

# Markets a fake lists besides the ones it has candles for: a plausible spot list, for close-match hints.
DEFAULT_EXTRA = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BTCUSDC", "ETHBTC", "BTCUSD", "ETHUSD", "BTCEUR")


def split(symbol: str) -> tuple[str, str]:
    """``BTCUSDT`` -> (``BTC``, ``USDT``); ValueError when no known quote asset ends it."""
    s = symbol.upper()
    for q in QUOTES:
        if s.endswith(q) and len(s) > len(q):
            return s[: -len(q)], q
    raise ValueError(f"cannot tell base from quote in {symbol!r}; quotes known: {', '.join(QUOTES)}")


def exchange_id(exchange: str, symbol: str) -> str:
    """How ``exchange`` spells the market ``symbol`` (canonical): OKX BTC-USDT, Coinbase BTC-USD, Kraken XXBTZUSD
    (both assets legacy) or XBTUSDT, Bybit and Binance.US BTCUSDT."""
    base, quote = split(symbol)
    if exchange in ("okx", "coinbase"):
        return f"{base}-{quote}"
    if exchange == "kraken":
        if base in KRAKEN_LEGACY and quote in KRAKEN_LEGACY:
            return KRAKEN_LEGACY[base] + KRAKEN_LEGACY[quote]
        return kraken_altname(symbol)
    return f"{base}{quote}"


def kraken_altname(symbol: str) -> str:
    base, quote = split(symbol)
    return KRAKEN_ALTNAME.get(base, base) + KRAKEN_ALTNAME.get(quote, quote)


def kraken_asset(code: str) -> str:
    """Kraken's id of an asset in an AssetPairs entry: the legacy one where there is one (XXBT, ZUSD)."""
    return KRAKEN_LEGACY.get(code, code)


def plain(value: str) -> str:
    """A decimal string without trailing zeros, as most exchanges print numbers ("42283.58000000" -> "42283.58")."""
    try:
        d = Decimal(value)
    except InvalidOperation:
        return value
    text = format(d.normalize(), "f")
    return "0" if text in ("-0", "") else text


@dataclass
class Series:
    times: list[int]
    rows: list[Row]


class Book:
    """Recorded candles per (canonical symbol, interval), the listed markets, and maintenance gaps."""

    def __init__(
        self,
        series: dict[tuple[str, str], Sequence[Sequence[Any]] | np.ndarray] | None = None,
        markets: Iterable[str] = DEFAULT_EXTRA,
        missing: Iterable[tuple[int, int]] = (),
    ) -> None:
        self._series: dict[tuple[str, str], Series] = {}
        self.listed: set[str] = {m.upper() for m in markets}
        for (symbol, interval), rows in (series or {}).items():
            self.set_series(symbol, interval, rows)
        self.missing: list[tuple[int, int]] = [(int(a), int(b)) for a, b in missing]

    def set_series(self, symbol: str, interval: str, rows: Sequence[Sequence[Any]] | np.ndarray) -> None:
        symbol = symbol.upper()
        split(symbol)  # a fake market must have a base and a quote
        normalized = normalize_rows(rows, interval)
        self._series[(symbol, interval)] = Series([r[0] for r in normalized], normalized)
        self.listed.add(symbol)

    def delist(self, symbol: str) -> None:
        """The exchange forgets the market (its candles stay recorded, unreachable): a delisting."""
        self.listed.discard(symbol.upper())

    def markets(self) -> list[str]:
        return sorted(self.listed)

    def rows(self, symbol: str, interval: str) -> list[Row]:
        return list(self._series[(symbol.upper(), interval)].rows)

    def has(self, symbol: str, interval: str) -> bool:
        return (symbol.upper(), interval) in self._series

    def visible(self, symbol: str, interval: str, now: int) -> tuple[list[int], list[Row]]:
        """(open times, rows) of the candles that have opened by ``now`` and lie in no maintenance gap, oldest
        first; the last one is still open when its close_time >= now."""
        s = self._series.get((symbol.upper(), interval))
        if s is None or symbol.upper() not in self.listed:
            return [], []
        hi = bisect.bisect_right(s.times, now)
        if not self.missing:
            return s.times[:hi], s.rows[:hi]
        keep = [i for i in range(hi) if not any(a <= s.times[i] < b for a, b in self.missing)]
        return [s.times[i] for i in keep], [s.rows[i] for i in keep]

    @staticmethod
    def is_open(row: Row, now: int) -> bool:
        return int(row[6]) >= now
