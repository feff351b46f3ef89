"""Issue #12: one year of 1h candles from each exchange's loopback fake, backfilled by the real ``collect``.

    python bench/bench_exchanges.py [--exchanges bybit,okx,kraken,coinbase,binanceus] [--repeat N] [--json]

Each run is the real configuration: ``xylen.collect.runner.collect(settings, CollectOptions(..., once=True,
exchange=E))`` into a fresh temporary XYLEN_HOME, through ``make_rest`` (ccxt with its own rate limiter on for the
ccxt exchanges; python-binance and the weight governor for Binance), against a fake that ENFORCES the exchange's
documented rate limit (tests/fakes/venues.py; tests/fakes/binance.py: 6,000 weight a minute). Binance runs in
every repetition as the baseline, whatever ``--exchanges`` says.

The candles are real: the bundled BTCUSDT 5m 2023 sample aggregated to 1h (8,735 hourly candles: 364 days, less the
hour of Binance's 2023-03-24 trading halt), shifted so that the last one opens in the current hour of the market's
clock, as the still-open candle. The market's clock runs at real speed and reads HH:30 when a run starts (within
30 minutes of ccxt's own clock, which picks OKX's endpoint), so no candle closes during a run. Kraken serves only
its 720 most recent candles (719 closed ones); the rest of the year is recorded as out of its reach.

Figures per exchange (medians over ``--repeat``): the documented page size and rate limit; candles stored (checked
against the fake's candles, value by value); OHLCV and market-list requests and OHLCV requests per 1,000 candles
next to the ideal 1000 / page; wall time of ``collect`` and per 1,000 candles; the least time the enforced limits
allow for the requests made (every request as early as the fake's rolling windows accept it) and wall / least;
the seconds spent in rate limiters (ccxt's throttle, the governor's waits); refusals met and retries; each
exchange's time per 1,000 candles over Binance's in the same repetition.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402
from tests.fakes import FakeBinance  # noqa: E402
from tests.fakes.klines import normalize_rows  # noqa: E402
from tests.fakes.venue_api import RateRule  # noqa: E402
from tests.fakes.venues import FakeVenue  # noqa: E402

from xylen.collect import CollectOptions, collect, make_rest  # noqa: E402
from xylen.collect.governor import WEIGHT_LIMIT_1M  # noqa: E402
from xylen.collect.rest import EXCHANGE_INFO_WEIGHT, KLINES_WEIGHT, PAGE_LIMIT  # noqa: E402
from xylen.collect.venues import VENUES  # noqa: E402
from xylen.core.settings import load_settings  # noqa: E402
from xylen.core.store import Store  # noqa: E402
from xylen.train.pipeline import sample_path  # noqa: E402

HOUR = 3_600_000
OUT = ROOT / "bench" / "out"
BASELINE = "binance"
CCXT = ("bybit", "okx", "kraken", "coinbase", "binanceus")
SYMBOL = {"binance": "BTCUSDT", "bybit": "BTCUSDT", "okx": "BTCUSDT", "kraken": "BTCUSD", "coinbase": "BTCUSD",
          "binanceus": "BTCUSDT"}  # fmt: skip
# Binance's documented limit and weights, as rest.py and governor.py know them (the governor itself keeps to
# XYLEN_WEIGHT_BUDGET_SHARE of it).
BINANCE_RULE = RateRule(
    "weight", ("*",), WEIGHT_LIMIT_1M, 60.0,
    weights=(("/api/v3/klines", KLINES_WEIGHT), ("/api/v3/exchangeInfo", EXCHANGE_INFO_WEIGHT)),
)  # fmt: skip


def hourly_year() -> list[list[Any]]:
    """The bundled 5m sample as 1h candles ``[open_time, open, high, low, close, volume]`` (an hour with any 5m
    candle is a candle: the halt's hour 13:00 has none, 12:00 has its first 8)."""
    df = pl.read_parquet(sample_path()).sort("open_time")
    hourly = (
        df.with_columns((pl.col("open_time") // HOUR * HOUR).alias("hour"))
        .group_by("hour", maintain_order=True)
        .agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
        )  # fmt: skip
        .sort("hour")
    )
    return [list(r) for r in hourly.rows()]


class MarketClock:
    """Epoch ms at real speed, reading HH:30:00 of the current real hour when created."""

    def __init__(self) -> None:
        self.start = int(time.time() * 1000) // HOUR * HOUR + HOUR // 2
        self._t0 = time.monotonic()

    def __call__(self) -> int:
        return self.start + int((time.monotonic() - self._t0) * 1000)


def least_seconds(requests: Sequence[tuple[str, str | None]], rules: Sequence[RateRule]) -> float:
    """The least time from the first to the last of ``requests`` (route, symbol), in their order, that keeps within
    every rule: each request as early as the rules' rolling windows accept it (an entry leaves a window ``per_s``
    after it was counted, as the fakes count). Earliest-first is optimal for in-order window constraints."""
    logs: dict[tuple[int, str | None], collections.deque[tuple[float, int]]] = collections.defaultdict(
        collections.deque
    )
    t = 0.0
    for route, symbol in requests:
        counted = [(i, r, r.weight(route)) for i, r in enumerate(rules) if r.counts(route)]
        moved = True
        while moved:
            moved = False
            for i, rule, w in counted:
                q = logs[(i, symbol if rule.per_symbol else None)]
                window = [(s, ws) for s, ws in q if s > t - rule.per_s]
                excess = sum(ws for _, ws in window) + w - rule.requests
                for s, ws in window:  # wait until enough of the oldest have left the window
                    if excess <= 0:
                        break
                    excess -= ws
                    t, moved = max(t, s + rule.per_s), True
        for i, rule, w in counted:
            logs[(i, symbol if rule.per_symbol else None)].append((t, w))
    return t


@dataclass
class Run:
    exchange: str
    page: int
    rate: str
    expected: int
    stored: int
    values_match: bool
    ohlcv: int
    markets: int
    other: int
    page_asked: str
    wall_s: float
    limiter_s: float
    least_s: float
    refused: int  # answered by the fake's rate limit (429, Bybit's 403, Kraken's "Too many requests", 418)
    rate_limited: int  # refusals the governor met (429/418 and each exchange's own words for them)
    retries: int
    governor_calls: int
    served: int  # requests the fake saw (the governor's calls should be as many)
    by_route: dict[str, int] = field(default_factory=dict)  # OHLCV requests per endpoint (OKX has two)
    known_gaps: list[tuple[int, int]] = field(default_factory=list)
    unreachable: list[tuple[int, int]] = field(default_factory=list)

    @property
    def per_1k_req(self) -> float:
        return 1000 * self.ohlcv / self.stored

    @property
    def per_1k_s(self) -> float:
        return 1000 * self.wall_s / self.stored


def _asked(name: str, params: Sequence[dict[str, str]]) -> str:
    """The page size the requests asked for (most common), from their query parameters."""
    if name == "kraken":
        return "-"  # OHLC has no size parameter: the answer is the last 720 entries from `since`
    if name == "coinbase":
        sizes = [(int(p["end"]) - int(p["start"])) // 3600 for p in params if "end" in p and "start" in p]
    else:
        sizes = [int(p["limit"]) for p in params if p.get("limit", "").isdigit()]
    return str(collections.Counter(sizes).most_common(1)[0][0]) if sizes else "?"


def _timed_throttle(client: Any) -> Callable[[], float]:
    """Wrap the ccxt instance's limiter to add up the seconds it sleeps; returns the running total."""
    spent = [0.0]
    inner = client.throttle

    def throttle(cost: Any = None) -> None:
        t = time.perf_counter()
        inner(cost)
        spent[0] += time.perf_counter() - t

    client.throttle = throttle
    return lambda: spent[0]


def run_one(name: str, hourly: list[list[Any]]) -> Run:
    clock = MarketClock()
    last_open = clock.start // HOUR * HOUR  # the still-open candle
    shift = last_open - hourly[-1][0]
    rows = [[r[0] + shift, *r[1:]] for r in hourly]
    sym = SYMBOL[name]
    first = rows[0][0]
    if name == "kraken":  # what its reach allows: the 720 most recent, the open one included
        first = last_open - (VENUES["kraken"].reach - 1) * HOUR  # type: ignore[operator]
    # the values as the fakes serve them (8 decimals, tests.fakes.klines), which is what must be stored
    expected = [[r[0], *map(float, r[1:6])] for r in normalize_rows(rows, "1h") if first <= r[0] < last_open]
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT) as home:
        if name == BASELINE:
            fake: Any = FakeBinance({(sym, "1h"): rows}, now_ms=clock)  # 6,000 weight a minute, 429 then 418
        else:
            fake = FakeVenue(name, {(sym, "1h"): rows}, now_ms=clock)  # enforce_rate=True: the documented limits
        url_setting = "binance_base_url" if name == BASELINE else "exchange_base_url"
        with fake:
            settings = load_settings({"home": home, url_setting: fake.base_url}, environ={})
            rest = make_rest(settings, clock=clock, exchange=name)
            ccxt_waits = _timed_throttle(rest.client) if name != BASELINE else (lambda: 0.0)
            opts = CollectOptions([sym], ["1h"], since=rows[0][0], once=True, exchange=name)
            t = time.perf_counter()
            res = collect(settings, opts, rest=rest, clock=clock)
            wall = time.perf_counter() - t
            served = fake.requests
        store = Store(settings.data_dir, exchange=name)
        got = store.read(sym, "1h")
        gaps = store.known_gaps(sym, "1h")
    if name == BASELINE:
        reqs = [(r.path, None, r.params, r.status in (418, 429)) for r in served]
        ohlcv_route, market_route, rules = "/api/v3/klines", "/api/v3/exchangeInfo", [BINANCE_RULE]
        page, rate = PAGE_LIMIT, f"{WEIGHT_LIMIT_1M}w/60s"
    else:
        v = VENUES[name]
        reqs = [(r.route or r.path, r.symbol, r.params, r.refused is not None) for r in served]
        ohlcv_route, market_route, rules = fake.api.ohlcv_route, fake.api.routes[0], fake.rate_rules
        page = v.page_limit
        weighted = any(rule.weights for rule in rules)
        rate = f"{v.rate.requests}{'w' if weighted else ''}/{v.rate.per_s:g}s"
        if not any((rule.requests, rule.per_s) == (v.rate.requests, v.rate.per_s) for rule in rules):
            print(f"warning: {name}: venues.py's limit {rate} is not one the fake enforces", file=sys.stderr)
    is_ohlcv = [route.startswith(ohlcv_route) for route, *_ in reqs]
    want = pl.DataFrame(expected, schema=["open_time", "open", "high", "low", "close", "volume"], orient="row")
    cols = ["open_time", "open", "high", "low", "close", "volume"]
    values_match = got.height == want.height and got.select(cols).equals(want.select(cols))
    series = res.series[0] if res.series else None
    return Run(
        exchange=name,
        page=page,
        rate=rate,
        expected=len(expected),
        stored=got.height,
        values_match=values_match,
        ohlcv=sum(is_ohlcv),
        markets=sum(route == market_route for route, *_ in reqs),
        other=sum(not o and route != market_route for o, (route, *_) in zip(is_ohlcv, reqs, strict=True)),
        page_asked=_asked(name, [p for o, (_, _, p, _) in zip(is_ohlcv, reqs, strict=True) if o]),
        wall_s=wall,
        limiter_s=ccxt_waits() + rest.governor.stats.waited_s,
        least_s=least_seconds([(route, s) for route, s, *_ in reqs], rules),
        refused=sum(r[3] for r in reqs),
        rate_limited=res.rate_limited,
        retries=res.retries,
        governor_calls=res.requests,
        served=len(reqs),
        by_route=dict(collections.Counter(route for o, (route, *_) in zip(is_ohlcv, reqs, strict=True) if o)),
        known_gaps=gaps,
        unreachable=list(series.unreachable) if series else [],
    )


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def summarize(runs: dict[str, list[Run]], ratios: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for name, rs in runs.items():
        last = rs[-1]
        counts = {(r.stored, r.ohlcv, r.markets, r.other) for r in rs}
        least = med([r.least_s for r in rs])
        wall = med([r.wall_s for r in rs])
        rows.append(
            {
                "exchange": name,
                "page": last.page,
                "page_asked": last.page_asked,
                "rate": last.rate,
                "stored": last.stored,
                "expected": last.expected,
                "values_match": all(r.values_match for r in rs),
                "ohlcv_requests": last.ohlcv,
                "market_requests": last.markets,
                "other_requests": last.other,
                "counts_vary": len(counts) > 1,
                "requests_per_1k": last.per_1k_req,
                "ideal_per_1k": 1000 / last.page,
                "extra_ohlcv": last.ohlcv - math.ceil(last.stored / last.page),
                "wall_s": wall,
                "s_per_1k": med([r.per_1k_s for r in rs]),
                "least_s": least,
                "wall_over_least": wall / least if least > 0 else None,
                "limiter_s": med([r.limiter_s for r in rs]),
                "work_s": med([r.wall_s - r.limiter_s for r in rs]),
                "refused": sum(r.refused for r in rs),
                "rate_limited": sum(r.rate_limited for r in rs),
                "retries": sum(r.retries for r in rs),
                "vs_binance": med(ratios[name]),
                "runs": [asdict(r) for r in rs],
            }
        )
    return rows


def _cells(r: dict[str, Any]) -> list[str]:
    ok = r["values_match"] and r["stored"] == r["expected"]
    return [
        r["exchange"],
        f"{r['page']}/{r['page_asked']}",
        r["rate"],
        f"{r['stored']}{'' if ok else '!'}",
        str(r["ohlcv_requests"]),
        str(r["market_requests"]),
        f"{r['requests_per_1k']:.2f}",
        f"{r['ideal_per_1k']:.2f}",
        f"{r['wall_s']:.2f}",
        f"{r['s_per_1k']:.3f}",
        f"{r['least_s']:.2f}",
        "-" if r["wall_over_least"] is None else f"x{r['wall_over_least']:.2f}",
        f"{r['limiter_s']:.2f}",
        f"{r['work_s']:.2f}",
        str(r["refused"]),
        str(r["retries"]),
        f"x{r['vs_binance']:.2f}",
    ]


# page: documented / asked by the requests; limit: documented (w: request weight); req/1k: OHLCV requests per 1,000
# candles stored, ideal 1000 / page; least: what the enforced limits allow for these requests; waits: seconds in
# rate limiters; work: wall - waits; 429s: answers of the fake's rate limit; vs bin: s/1k over Binance's
TITLES = ["exchange", "page", "limit", "candles", "OHLCV", "mkt", "req/1k", "ideal", "wall s", "s/1k", "least s",
          "/least", "waits", "work", "429s", "retry", "vs bin"]  # fmt: skip


def table(rows: list[dict[str, Any]]) -> list[str]:
    cells = [TITLES, *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(TITLES))]
    return [" ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cs, widths))) for cs in cells]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exchanges", default=",".join(CCXT), help="comma-separated subset (binance always runs)")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions; figures are medians")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = parser.parse_args(argv)
    chosen = [e.strip().lower() for e in args.exchanges.split(",") if e.strip()]
    unknown = [e for e in chosen if e not in (*CCXT, BASELINE)]
    if unknown or args.repeat < 1:
        parser.error(f"unknown exchange(s) {unknown}; use {','.join(CCXT)}" if unknown else "--repeat must be >= 1")
    names = [BASELINE, *dict.fromkeys(e for e in chosen if e != BASELINE)]
    logging.getLogger("xylen.collect").setLevel(logging.ERROR)  # Kraken's reach warning: reported below instead
    hourly = hourly_year()
    runs: dict[str, list[Run]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    started = time.perf_counter()
    for rep in range(args.repeat):
        order = names if rep % 2 == 0 else [BASELINE, *reversed(names[1:])]
        done = {n: run_one(n, hourly) for n in order}
        for n, r in done.items():
            runs[n].append(r)
            ratios[n].append(r.per_1k_s / done[BASELINE].per_1k_s)
    rows = summarize(runs, ratios)
    total = time.perf_counter() - started
    bad = [r["exchange"] for r in rows if not r["values_match"] or r["stored"] != r["expected"]]
    if args.json:
        print(json.dumps({"hourly_candles": len(hourly), "repeat": args.repeat, "seconds": total, "rows": rows}))
        return 1 if bad else 0
    print(
        f"one year of 1h candles ({len(hourly)} in the sample, the last one still open) per exchange, "
        f"{args.repeat} repetition(s), medians; {total:.0f} s in all"
    )
    print("\n".join(table(rows)))
    for r in rows:
        notes = []
        if r["extra_ohlcv"]:
            notes.append(f"{r['extra_ohlcv']} OHLCV request(s) beyond ceil(candles / page)")
        if r["other_requests"]:
            notes.append(f"{r['other_requests']} other request(s)")
        if len(r["runs"][-1]["by_route"]) > 1:
            notes.append(", ".join(f"{n} {route.rsplit('/', 1)[-1]}" for route, n in r["runs"][-1]["by_route"].items()))
        if any(x["governor_calls"] != x["served"] for x in r["runs"]):
            notes.append("the governor's call count differs from what the fake saw")
        if r["counts_vary"]:
            notes.append("counts varied between repetitions: " + str([(x["stored"], x["ohlcv"]) for x in r["runs"]]))
        gaps = r["runs"][-1]["known_gaps"]
        if gaps:
            notes.append("known gaps " + ", ".join(f"{(b - a) // HOUR} h" for a, b in gaps))
        if r["exchange"] in bad:
            notes.append(f"STORED {r['stored']} != EXPECTED {r['expected']} or values differ")
        if notes:
            print(f"  {r['exchange']}: " + "; ".join(notes))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
