"""Exchanges and markets as xylen names them: one rule for the store, the registry, the CLI and /predict.

xylen collects from ``binance`` (python-binance, websocket follow) and, through ccxt, from ``binanceus``, ``bybit``,
``okx``, ``kraken`` and ``coinbase`` (REST polling). A market is stored and named in one *canonical* form per
exchange: base and quote in upper case without a separator (``BTCUSDT``; Kraken's ``XBT/USD`` is ``BTCUSD``, as
ccxt's unified ``BTC/USD`` says), with the exchange's own spelling kept in the store's metadata. A model is named
per (exchange, symbol, interval): Binance's keep the names they always had (``btcusdt-5m``), the others carry the
exchange in front (``kraken-btcusd-1h``). Nothing here imports ccxt: serving never loads it.
"""

from __future__ import annotations

import re
from typing import Any

from xylen.core.errors import ConfigError

DEFAULT_EXCHANGE = "binance"
EXCHANGES = ("binance", "binanceus", "bybit", "okx", "kraken", "coinbase")
_SEPARATORS = re.compile(r"[/_-]")


def check_exchange(value: object) -> str:
    """The exchange's xylen name (stripped, lower case), or a ConfigError quoting the value and the list."""
    name = str(value).strip().lower()
    if name not in EXCHANGES:
        from difflib import get_close_matches

        close = get_close_matches(name, EXCHANGES, n=2)
        raise ConfigError(
            f"Exchange {str(value)[:40]!r} is not one xylen collects from"
            + (f" (did you mean {' or '.join(close)}?)" if close else "")
            + ".",
            hint=f"use one of: {', '.join(EXCHANGES)}.",
        )
    return name


def canonical_symbol(value: object) -> str:
    """A symbol in any common spelling (BTCUSDT, btc/usdt, BTC-USDT, BTC_USDT: one separator at most) in the
    canonical form: BTCUSDT.

    Which market it is on an exchange (Kraken's XBTUSD, OKX's BTC-USDT) is the collector's business: it resolves the
    exchange's own spelling through the exchange's market list. Anything that is not letters and digits once the
    separators are gone is refused, so no symbol ever becomes a path."""
    raw = str(value).strip()
    sym = _SEPARATORS.sub("", raw, count=1).upper()  # a pair has one separator at most
    if not re.fullmatch(r"[A-Z0-9]{2,20}", sym):
        raise ConfigError(
            f"Symbol {raw[:40]!r} is not a trading pair.",
            hint="use the exchange's spelling (BTCUSDT, BTC-USDT, XBTUSD) or ccxt's BASE/QUOTE (BTC/USDT).",
        )
    return sym


def model_name(symbol: str, interval: str, exchange: str = DEFAULT_EXCHANGE) -> str:
    """The registry name of a market's model: ``btcusdt-5m`` on Binance, ``kraken-btcusd-1h`` elsewhere. Names are
    lower case, so the calendar month ``1M`` is spelled ``1mo`` (``1m`` is the minute)."""
    base = f"{symbol.lower()}-{'1mo' if interval == '1M' else interval}"
    return base if exchange == DEFAULT_EXCHANGE else f"{exchange}-{base}"


def market_label(exchange: str, symbol: str) -> str:
    """A market as messages name it: ``BTCUSDT`` on binance (as before exchanges), ``kraken BTCUSD`` elsewhere."""
    return symbol if exchange == DEFAULT_EXCHANGE else f"{exchange} {symbol}"


def exchange_flag(exchange: str) -> str:
    """The ``--exchange`` option a printed command needs ('' for binance, the default)."""
    return "" if exchange == DEFAULT_EXCHANGE else f" --exchange {exchange}"


def store_of(store: Any, exchange: str) -> Any:
    """``store`` (an ``xylen.core.store.Store``) if it holds ``exchange``'s candles, else the same root's store of
    that exchange."""
    return store if store.exchange == exchange else store.for_exchange(exchange)
