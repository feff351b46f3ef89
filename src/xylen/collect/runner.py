"""`xylen collect` as one Python call: check the options, backfill every series, then follow live or stop.

Everything here is callable without the CLI; time (``clock``, ``sleep``) and progress reporting are
arguments. Bad options raise ConfigError before anything touches the network or the store.

Binance is reached through python-binance and followed by websocket; the other exchanges
(:data:`xylen.core.markets.EXCHANGES`) through ccxt, followed by REST polling just after each candle closes. Both
feed the same backfill, into the exchange's own partition of the store.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from xylen.collect.backfill import Progress, SeriesResult, backfill_series
from xylen.collect.governor import Governor, StopRequested, wall_clock_ms
from xylen.collect.rest import Rest, make_client
from xylen.core.errors import ConfigError, ExchangeTemporaryError
from xylen.core.intervals import INTERVALS
from xylen.core.markets import DEFAULT_EXCHANGE, canonical_symbol
from xylen.core.settings import Settings
from xylen.core.store import Store, open_store


def parse_symbols(value: str | list[str]) -> list[str]:
    """--symbols: comma-separated, stripped; the exchange's spelling (XBTUSDT, BTC-USDT), ccxt's BTC/USDT or the
    canonical BTCUSDT. Which market each is, is the exchange's answer (``resolve``), before anything is stored."""
    items = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    out = [_symbol(s) for s in items if s.strip()]
    if not out:
        raise ConfigError("No symbol given.", hint="pass --symbols BTCUSDT,ETHUSDT.")
    return list(dict.fromkeys(out))


def _symbol(value: str) -> str:
    v = value.strip()
    canonical_symbol(v)  # the spelling rule (one separator at most, letters and digits): a ConfigError quoting it
    return v


def parse_intervals(value: str | list[str]) -> list[str]:
    """--intervals: comma-separated Binance intervals (case matters: 1m is a minute, 1M a month)."""
    items = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    out = [s.strip() for s in items if s.strip()]
    if not out:
        raise ConfigError("No interval given.", hint="pass --intervals 5m,1h.")
    for iv in out:
        if iv not in INTERVALS:
            raise ConfigError(
                f"Interval {iv!r} is not a Binance interval.",
                hint=f"use one of: {' '.join(INTERVALS)} (case matters: 1m is a minute, 1M a month).",
            )
    return list(dict.fromkeys(out))


def parse_time(value: str | None, option: str) -> int | None:
    """--since/--until: a date (2024-01-01), an ISO time (2024-01-01T12:00, UTC unless it says otherwise)
    or epoch milliseconds."""
    if value is None:
        return None
    v = value.strip()
    if v.isdigit():
        return int(v)
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{option} {value!r} is not a date.",
            hint=f"use YYYY-MM-DD (e.g. {option} 2024-01-01), an ISO time like 2024-01-01T12:00, "
            "or epoch milliseconds.",
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


@dataclass
class CollectOptions:
    symbols: list[str]
    intervals: list[str]
    since: int | None = None
    until: int | None = None
    once: bool = False
    exchange: str = DEFAULT_EXCHANGE

    @property
    def series(self) -> list[tuple[str, str]]:
        return [(s, i) for s in self.symbols for i in self.intervals]


@dataclass
class CollectResult:
    series: list[SeriesResult] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    waited_s: float = 0.0
    max_used_weight: int = 0
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def added(self) -> int:
        return sum(s.added for s in self.series)

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "requests": self.requests,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "waited_s": round(self.waited_s, 3),
            "max_used_weight": self.max_used_weight,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
            "series": [s.to_dict() for s in self.series],
        }

    def line(self) -> str:
        n = len(self.series)
        return (
            f"collect: {self.added} new candles in {n} series, {self.requests} requests "
            f"({self.retries} retries, {self.rate_limited} rate-limited), {self.seconds:.1f}s"
            + (", interrupted" if self.interrupted else "")
        )


def make_rest(
    settings: Settings,
    *,
    clock: Callable[[], int] = wall_clock_ms,
    sleep: Callable[[float], None] = time.sleep,
    timeout_s: float = 10.0,
    exchange: str = DEFAULT_EXCHANGE,
) -> Any:
    """The exchange's source: Binance's :class:`Rest` (python-binance, weight budget) or a ccxt source."""
    if exchange == DEFAULT_EXCHANGE:
        gov = Governor(settings.weight_budget_share, clock=clock, sleep=sleep)
        return Rest(make_client(settings.binance_base_url, timeout_s), gov)
    from xylen.collect.ccxt_source import make_source

    return make_source(exchange, base_url=settings.exchange_base_url, timeout_s=timeout_s, clock=clock, sleep=sleep)


# Seconds between attempts when the exchange cannot be reached before following live (the last one repeats).
RETRY_DELAYS_S = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def collect(
    settings: Settings,
    opts: CollectOptions,
    *,
    rest: Rest | None = None,
    clock: Callable[[], int] = wall_clock_ms,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_retry: Callable[[ExchangeTemporaryError, float], None] | None = None,
    retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
) -> CollectResult:
    """Backfill every series up to ``clock()`` (or ``until``). Follow live afterwards unless ``once``/``until``.

    Every series is compacted first (unreadable files move to quarantine, so the backfill fetches their
    candles again) and again at the end (the tails of small last pages fold into their month files).

    When following live (a service), a temporary exchange failure before the follow starts (unreachable network,
    5xx, a ban window) is reported to ``on_retry`` with the wait, and the backfill resumes from the last stored
    candle after ``retry_delays_s`` (growing, the last repeats) instead of ending the run: a service must not die
    because the network was down when it started. ``--once`` and ``--until`` runs (cron) still fail with it."""
    if opts.since is not None and opts.until is not None and opts.since >= opts.until:
        raise ConfigError(
            f"--since ({opts.since}) is not before --until ({opts.until}).", hint="swap them or pick a later --until."
        )
    started = time.monotonic()
    location = settings.data_location
    if not isinstance(location, str):  # S3: no store from before exchanges to move (a Store refuses one)
        migrate_if_needed(location)
    store = open_store(settings, opts.exchange)
    store.clean_temp()
    rest = rest or make_rest(settings, clock=clock, exchange=opts.exchange)
    rest.governor.should_stop = should_stop
    result = CollectResult()
    follows = not (opts.once or opts.until is not None)
    try:
        failures = 0
        while True:
            try:
                _backfill_all(rest, store, opts, result, clock, progress, should_stop)
                break
            except StopRequested:
                result.interrupted = True
                break
            except ExchangeTemporaryError as exc:
                if not follows:
                    raise
                delay = retry_delays_s[min(failures, len(retry_delays_s) - 1)]
                failures += 1
                if on_retry is not None:
                    on_retry(exc, delay)
                if _wait_unless_stopped(delay, should_stop):
                    result.interrupted = True
                    break
        if follows and not result.interrupted:
            if opts.exchange == DEFAULT_EXCHANGE:
                follow(settings, opts, rest, store, clock, should_stop)
            else:
                from xylen.collect.poll import Poller

                Poller(rest, store, opts.series, clock, should_stop).run()
            result.interrupted = should_stop()
        for symbol, interval in opts.series:
            store.compact(symbol, interval)
    finally:
        st = rest.governor.stats
        result.requests, result.retries, result.rate_limited = st.calls, st.retries, st.rate_limited + st.banned
        result.waited_s, result.max_used_weight = st.waited_s, st.max_used_weight
        result.seconds = time.monotonic() - started
        rest.close()
    return result


def _backfill_all(
    rest: Rest,
    store: Store,
    opts: CollectOptions,
    result: CollectResult,
    clock: Callable[[], int],
    progress: Progress | None,
    should_stop: Callable[[], bool],
) -> None:
    """Check the symbols and backfill each series not yet done (``result.series`` holds the done ones, so a
    retry after a temporary failure resumes where it stopped; the store resumes from its last candle)."""
    if not result.series:
        resolve(rest, store, opts)  # an unknown symbol or interval is refused before anything is stored
        for symbol, interval in opts.series:
            store.compact(symbol, interval)
    done = {(s.symbol, s.interval) for s in result.series}
    for symbol, interval in opts.series:
        if (symbol, interval) in done:
            continue
        if should_stop():
            result.interrupted = True
            return
        result.series.append(
            backfill_series(
                rest,
                store,
                symbol,
                interval,
                clock(),
                since=opts.since,
                until=opts.until,
                progress=progress,
                should_stop=should_stop,
            )
        )


def resolve(source: Any, store: Store, opts: CollectOptions) -> None:
    """Check the intervals and symbols with the exchange; ``opts.symbols`` become the canonical names (BTCUSDT),
    and each market's own spelling is kept in the store's metadata (``meta/exchange=.../<SYMBOL>.market.json``)."""
    source.check_intervals(opts.intervals)
    markets = source.resolve(opts.symbols)
    opts.symbols = list(dict.fromkeys(m.canonical for m in markets))
    for m in markets:
        if store.market(m.canonical) != m.to_dict():
            store.set_market(m.canonical, m.to_dict())


def migrate_if_needed(root: Any) -> None:
    """A store from before exchanges (``klines/symbol=...``) is moved in place to ``exchange=binance`` first."""
    import logging

    from xylen.core.store_migrate import migrate, needs_migration

    if needs_migration(root) is not None:
        done = migrate(root)
        logging.getLogger("xylen.collect").warning("store: moved the layout from before exchanges: %s", done)


def _wait_unless_stopped(seconds: float, should_stop: Callable[[], bool]) -> bool:
    """Sleep ``seconds`` in short steps; True as soon as a stop was asked for."""
    deadline = time.monotonic() + seconds
    while not should_stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(0.2, left))
    return True


def follow(
    settings: Settings,
    opts: CollectOptions,
    rest: Rest,
    store: Store,
    clock: Callable[[], int],
    should_stop: Callable[[], bool],
) -> None:
    from xylen.collect.follow import Follower

    follower = Follower(rest, store, opts.series, settings.binance_ws_url, clock)
    watcher = threading.Thread(target=_stop_when, args=(should_stop, follower), daemon=True)
    watcher.start()
    asyncio.run(follower.run())
    errors = [e for e in follower.errors if not isinstance(e, StopRequested)]  # a wait cut short by the stop
    if errors:
        raise errors[0]


def _stop_when(should_stop: Callable[[], bool], follower: Any) -> None:
    while not should_stop():
        time.sleep(0.2)
    follower.stop()


class StopRequest:
    """``should_stop`` for :func:`collect`: true once SIGTERM or SIGINT arrived; ``signum`` says which came first."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.event.is_set()


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGTERM/SIGINT ask for a clean stop (checked between pages); a second one interrupts at once.
    Store writes are atomic either way: nothing is left half-written."""
    stop = StopRequest()
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        if stop.event.is_set():
            raise KeyboardInterrupt
        stop.signum = signum
        stop.event.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
