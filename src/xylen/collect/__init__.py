"""Binance candles into the store: REST backfill behind a rate-limit governor, websocket follow with a
watchdog, archive import/export, status. ``xylen collect`` is a thin adapter over :func:`collect`."""

from xylen.collect.archive import export_series, import_files
from xylen.collect.backfill import backfill_series, plan
from xylen.collect.governor import Governor
from xylen.collect.runner import CollectOptions, CollectResult, collect, make_rest
from xylen.collect.status import status

__all__ = [
    "CollectOptions",
    "CollectResult",
    "Governor",
    "backfill_series",
    "collect",
    "export_series",
    "import_files",
    "make_rest",
    "plan",
    "status",
]
