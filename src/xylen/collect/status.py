"""`xylen collect status`: per series first and last candle, rows, gaps, known gaps, lag behind now."""

from __future__ import annotations

import logging
from typing import Any

from xylen.core import intervals
from xylen.core.candles import fmt_ts
from xylen.core.errors import ConfigError
from xylen.core.store import SeriesSummary, Store

log = logging.getLogger("xylen.collect")


def status(store: Store, now_ms: int, series: list[tuple[str, str]] | None = None) -> list[SeriesSummary]:
    """Summaries of the stored series (or of ``series``, missing ones as empty rows), sorted.

    Each series is compacted first: tails fold into their month files and unreadable files move to
    quarantine (listed in the summary with the command that fetches their candles again). A store this
    process may not write is summarised as it is."""
    wanted = series if series is not None else sorted({*store.series(), *store.quarantined_series()})
    out = []
    for s, i in sorted(wanted):
        try:
            store.compact(s, i)
        except ConfigError as exc:  # read-only store: report what is there
            log.warning("%s %s: not compacted: %s", s, i, exc.message)
        out.append(store.summary(s, i, now_ms))
    return out


def lag_text(ms: int | None) -> str:
    if ms is None:
        return "-"
    s = ms // 1000
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def rows_for_table(summaries: list[SeriesSummary]) -> list[dict[str, Any]]:
    out = []
    for s in summaries:
        known_missing = sum(intervals.slots(a, b, s.interval) for a, b in s.known_gaps)
        out.append(
            {
                "series": f"{s.exchange} {s.symbol} {s.interval}",
                "first": fmt_ts(s.first) if s.first is not None else "-",
                "last": fmt_ts(s.last) if s.last is not None else "-",
                "rows": f"{s.rows:,}",
                "gaps": f"{len(s.gaps)} ({s.missing} candles)" if s.gaps else "0",
                "known gaps": f"{len(s.known_gaps)} ({known_missing} candles)" if s.known_gaps else "0",
                "lag": lag_text(s.lag_ms),
            }
        )
    return out
