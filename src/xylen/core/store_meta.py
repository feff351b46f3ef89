"""The store's bookkeeping under ``meta/exchange=<exchange>/``: known gaps and market metadata, one JSON object each.

    meta/exchange=binance/BTCUSDT-5m.known_gaps.json   [[start, end), ...] the exchange answered no candles in
    meta/exchange=okx/BTCUSDT.market.json              {"unified": "BTC/USDT", "id": "BTC-USDT", ...}

Both are written by compare-and-swap on the version the writer read (the storage seam's ``swap``), so two
collectors never lose each other's gaps and a market file is never torn.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from xylen.core import store_files as sf
from xylen.core.errors import DataError
from xylen.core.schema import normalize_symbol
from xylen.core.storage import Conflict, Storage

log = logging.getLogger("xylen.store")

MAX_ATTEMPTS = 1000  # each conflict means another writer made progress


def gaps_key(exchange: str, symbol: str, interval: str) -> str:
    sym, iv = sf.check_series(symbol, interval)
    return f"{sf.META}/exchange={exchange}/{sym}-{iv}.known_gaps.json"


def market_key(exchange: str, symbol: str) -> str:
    return f"{sf.META}/exchange={exchange}/{normalize_symbol(symbol)}.market.json"


def read_gaps(storage: Storage, key: str) -> list[tuple[int, int]]:
    got = storage.read_versioned(key)
    return [] if got is None else sf.parse_gaps(got.data)


def add_gaps(storage: Storage, key: str, gaps: list[tuple[int, int]]) -> None:
    """Merge ranges into the known gaps at ``key``."""
    if not gaps:
        return
    for _ in range(MAX_ATTEMPTS):
        got = storage.read_versioned(key)
        old = [] if got is None else sf.parse_gaps(got.data)
        merged = sf.merge_ranges([*old, *gaps])
        if got is not None and merged == old:
            return
        try:
            storage.swap(key, orjson.dumps(merged), got.token if got else None)
            return
        except Conflict:
            continue
    raise DataError(f"Gave up writing {key!r}: too many conflicting writers.", hint="run it again.")


def read_market(storage: Storage, key: str) -> dict[str, Any] | None:
    got = storage.read_versioned(key)
    if got is None:
        return None
    try:
        info = orjson.loads(got.data)
    except orjson.JSONDecodeError:
        info = None
    if not isinstance(info, dict):
        # bookkeeping only: the collector asks the exchange again and rewrites it
        log.warning("store: %s is not a JSON object; ignoring it", key)
        return None
    return info


def write_market(storage: Storage, key: str, info: dict[str, Any]) -> None:
    """Replace the market metadata at ``key`` (the last writer's copy stays; never a torn file)."""
    if not isinstance(info, dict):
        raise DataError(
            f"Market metadata for {key!r} must be a JSON object, not {type(info).__name__}.",
            hint="pass a dict such as {'unified': 'BTC/USDT', 'id': 'BTC-USDT'}.",
        )
    try:
        data = orjson.dumps(info, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise DataError(
            f"Market metadata for {key!r} cannot be stored as JSON: {exc}.",
            hint="keep to strings, numbers, booleans, None, lists and dicts.",
        ) from None
    for _ in range(MAX_ATTEMPTS):
        got = storage.read_versioned(key)
        if got is not None and got.data == data:
            return
        try:
            storage.swap(key, data, got.token if got else None)
            return
        except Conflict:
            continue
    raise DataError(f"Gave up writing {key!r}: too many conflicting writers.", hint="run it again.")
