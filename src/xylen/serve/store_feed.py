"""The push feed: new closed candles that ``xylen collect`` stores, handed to listeners on the event loop.

The server never asks the exchange: it reads the candle store through core (``Store.last_open_time`` and
``Store.read``), which another process (``xylen collect``) writes at the same time. Store's reading contract makes
that safe: every file is written whole before it becomes visible and readers keep one row per open_time, so a read
never returns a partial or duplicated candle.

One polling thread per process looks, every ``poll_s``, only at the series someone listens to. A look is cheap
while nothing changed: a few ``stat`` calls on the folders a new candle would land in (the series folder, the year
and month of the newest candle delivered, and the month after it). Only when one of them changed (or changed so
recently that a second change in the same clock tick could hide behind it, or every ``FULL_EVERY_S`` as a safety net)
does it ask the store for the newest open time, and only when that moved does it read, from the cursor on, the new
rows alone. ``bench/bench_push.py`` measures both costs.

Guarantees to a listener: each batch is in open_time order, starts after the previous one ended, and no candle comes
twice. A batch that does not follow on from the previous one (a hole) is read a second time before it is delivered,
because a folder listing taken while a writer adds files may show a newer tail without an older one; a hole that is
still there is a real gap in the store and is delivered as it is (the listener sees the jump in open_time). A candle
stored *later* with an open time before the newest one delivered (a REST backfill landing after the live candle) is
not delivered: it would be out of order; ``history`` reads it.

A store error (an unreadable file, a store from before exchanges) goes to the listeners' ``on_error`` once per
distinct message, on the event loop; the thread carries on and delivers again once the store reads.

Only this module reads the store for the server. The server keeps polars out of its process (memory, see
core/imports.py); the feed lets it in on first use (~35 MB RSS), so a server whose clients never ask for pushed
candles never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xylen.core import intervals
from xylen.core.errors import ConfigError, DataError, XylenError
from xylen.core.imports import allow_heavy_import
from xylen.core.markets import exchange_flag, market_label
from xylen.core.storage_s3 import is_s3_url
from xylen.serve.decode import RequestError

if TYPE_CHECKING:
    from xylen.core.store import Store

log = logging.getLogger("xylen.serve.feed")

COLUMNS = ("open_time", "open", "high", "low", "close", "volume")
"""The columns of every array the feed hands out, as ``CandleArrays.from_matrix`` and decode.py's arrays have them."""

RACY_NS = 2_000_000_000  # a folder changed less than this ago may change again unseen within one timestamp tick
REMOTE_LOOK_S = 1.0  # a store on S3 (no folder to stat): how often a listened series is looked at
FULL_EVERY_S = 10.0  # ask the store anyway this often: a writer stalled between making a folder and filling it

_monotonic = time.monotonic  # the safety-net clock (tests move it on)

Rows = Callable[[np.ndarray], None]
OnError = Callable[[XylenError], None]
Stamp = tuple[int, int, int] | None


@dataclass(eq=False)
class _Listener:
    callback: Rows
    on_error: OnError | None
    cursor: int | None  # the newest open time delivered to it; None until the thread first looks
    loop: asyncio.AbstractEventLoop
    error: str | None = None  # the last error reported to it (reported once until the store reads again)


@dataclass(eq=False)
class _Series:
    exchange: str
    symbol: str
    interval: str
    listeners: dict[int, _Listener] = field(default_factory=dict)
    stamps: tuple[Stamp, ...] = ()
    watched: int | None = None  # the open time whose folders ``stamps`` describe
    recheck_until_ns: int = 0  # a stamp is too recent to trust until then
    next_full: float = 0.0  # monotonic time of the next safety-net look
    folders: list[Path] = field(default_factory=list)  # what ``stamps`` stat, for ...
    folders_for: int | None = None  # ... this cursor
    error: str | None = None  # the store error last logged for the series (logged once while it lasts)


class StoreFeed:
    """Closed candles from the store under ``home_data_dir`` (``Settings.data_dir``): history, and pushes.

    ``history`` is synchronous (it reads files: call it from a worker thread on a busy loop). ``listen`` and the
    ``unlisten`` it returns are meant for the event loop's thread; callbacks run there, never on the poll thread.
    """

    def __init__(self, home_data_dir: str | Path, *, poll_s: float = 0.2, thread: bool = True,
                 endpoint_url: str | None = None, cache: Path | None = None) -> None:
        """``thread=False``: nothing polls by itself; ``poll_once()`` does one round (tests, benches).
        ``home_data_dir`` may be ``s3://bucket/prefix`` (``Settings.data_location``; ``endpoint_url`` and
        ``cache`` as for ``Store``): with no folders to stat, a listened series is then looked at every
        ``REMOTE_LOOK_S`` (a read: two listings of the series, and a GET only for what changed)."""
        if not poll_s > 0:
            raise ConfigError(f"StoreFeed poll_s {poll_s!r} is not a positive number of seconds.", hint="use e.g. 0.2.")
        self.root: str | Path = home_data_dir if is_s3_url(home_data_dir) else Path(home_data_dir)
        self.endpoint_url, self.cache = endpoint_url, cache
        self.poll_s = poll_s
        self._stores: dict[str, Store] = {}
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._lock = threading.Lock()  # guards _series and _stores: the loop adds listeners while the thread polls
        self._ids = itertools.count(1)
        self._wake = threading.Event()
        self._stopped = False
        self._autostart = thread
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.polls = 0  # looks at the listened series so far (tests and the bench read it)

    # ---------------------------------------------------------------- reading
    def store(self, exchange: str) -> Store:
        """The core Store of one exchange under the root (one per exchange, reused: it caches listings)."""
        with self._lock:
            got = self._stores.get(exchange)
            if got is None:
                # polars: only once someone reads the store. The server blocks it (memory); pushing needs it
                allow_heavy_import("polars")
                from xylen.core.store import Store

                got = self._stores[exchange] = Store(self.root, exchange, serialize_writers=False,
                                                     endpoint_url=self.endpoint_url, cache=self.cache)
            return got

    def history(self, exchange: str, symbol: str, interval: str, n: int) -> np.ndarray:
        """The last ``n`` stored candles (fewer if fewer are stored), oldest first: a float64 (rows, 6) array of
        open_time, open, high, low, close, volume. RequestError 404 naming the series and the ``xylen collect``
        command when none is stored, 422 for a name that is not a series, 503 for an unreadable store."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"history() wants n >= 1 candles, got {n!r}")
        try:
            store = self.store(exchange)
            last = store.last_open_time(symbol, interval)
            if last is None:
                raise self._nothing_stored(exchange, symbol, interval)
            span = (n + 1) * intervals.approx_ms(interval)
            df = store.read(symbol, interval, start=max(0, last - span))
            if df.height < n:  # gaps: n intervals hold fewer than n candles. Widen once, then read it all
                df = store.read(symbol, interval, start=max(0, last - 16 * span))
                if df.height < n:
                    df = store.read(symbol, interval)
        except XylenError as exc:
            raise _request_error(exc) from None
        except RequestError:
            raise
        except Exception as exc:  # a file polars cannot parse in a way core does not name: still the store's (503)
            raise RequestError(503, f"Reading the candle store failed: {exc!r:.300}. Fix: see `xylen collect "
                                    "status`.") from None
        return _matrix(df.tail(n))

    def _nothing_stored(self, exchange: str, symbol: str, interval: str) -> RequestError:
        return RequestError(
            404,
            f"No {market_label(exchange, symbol)} {interval} candles are stored in {str(self.root)!r}, so the server "
            f"has nothing to push for them; run `xylen collect{exchange_flag(exchange)} --symbols {symbol} "
            f"--intervals {interval}` (it backfills, then stores each closed candle), or send candles yourself.",
        )

    # ---------------------------------------------------------------- listening
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on ``loop``. The polling thread itself starts with the first listener."""
        self._loop = loop

    def listen(
        self,
        exchange: str,
        symbol: str,
        interval: str,
        callback: Rows,
        *,
        on_error: OnError | None = None,
        since: int | None = None,
    ) -> Callable[[], None]:
        """Call ``callback(rows)`` on the event loop with every batch of candles stored from now on (after open
        time ``since`` if given: pass the last candle ``history`` returned to miss nothing in between; otherwise
        after the newest stored when the poll thread first looks). ``rows`` is laid out like ``history``'s.
        ``on_error(exc)`` gets store errors (a XylenError), once per distinct message. Returns ``unlisten()``: after
        it returns (on the loop's thread), neither callback runs again."""
        loop = self._loop or asyncio.get_running_loop()
        try:
            store = self.store(exchange)
            from xylen.core.store_files import check_series

            symbol, interval = check_series(symbol, interval)  # a bad name fails here, not on the thread
        except XylenError as exc:
            raise _request_error(exc) from None
        token = next(self._ids)
        key = (store.exchange, symbol, interval)
        with self._lock:
            if self._stopped:
                raise RuntimeError("StoreFeed.listen() after stop()")
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(*key)
            series.listeners[token] = _Listener(callback, on_error, since, loop)
            series.next_full = 0.0  # look at once: a new listener may need rows the stamps do not show
            if self._thread is None and self._autostart:
                self._thread = threading.Thread(target=self._run, name="xylen-store-feed", daemon=True)
                self._thread.start()
        self._wake.set()

        def unlisten() -> None:
            with self._lock:
                series.listeners.pop(token, None)
                if not series.listeners and self._series.get(key) is series:
                    del self._series[key]

        return unlisten

    def stop(self) -> None:
        """Stop the polling thread (waits for it); nothing is delivered afterwards."""
        with self._lock:
            self._stopped = True
            for series in self._series.values():
                series.listeners.clear()
            self._series.clear()
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    @property
    def listened(self) -> list[tuple[str, str, str]]:
        """The (exchange, symbol, interval) series someone listens to now."""
        with self._lock:
            return sorted(self._series)

    # ---------------------------------------------------------------- the poll thread
    def _run(self) -> None:
        while not self._stopped:
            busy = self.poll_once()
            self._wake.wait(self.poll_s if busy else None)
            self._wake.clear()

    def poll_once(self) -> int:
        """One look at every listened series (the thread's round); returns how many series it looked at."""
        with self._lock:
            todo = [] if self._stopped else list(self._series.values())
        for series in todo:
            try:
                self.poll(series)
            except Exception:  # a bug must not end every push: log it, keep polling
                log.exception("store feed: polling %s %s failed", series.symbol, series.interval)
        self.polls += 1
        return len(todo)

    def poll(self, series: _Series) -> None:
        """One look at one series: deliver what is new to each of its listeners."""
        with self._lock:
            listeners = list(series.listeners.items())
        if not listeners:
            return
        try:
            store = self.store(series.exchange)
            if any(li.cursor is None for _, li in listeners):
                newest = store.last_open_time(series.symbol, series.interval)
                for _, li in listeners:
                    if li.cursor is None:
                        li.cursor = -1 if newest is None else newest  # -1: deliver everything, nothing was stored
                series.next_full = 0.0
            low = min(li.cursor for _, li in listeners if li.cursor is not None)
            if not self._changed(store, series, low):
                return
            newest = store.last_open_time(series.symbol, series.interval)
            if newest is None or newest <= low:
                self._recovered(series, listeners)
                return
            rows = self._read_after(store, series, low)
        except XylenError as exc:
            self._report(series, listeners, exc)
            return
        except Exception as exc:  # e.g. a file polars cannot parse in a way core does not name: still the store's
            self._report(series, listeners, DataError(f"Reading the candle store failed: {exc!r:.300}"))
            return
        self._recovered(series, listeners)
        for token, li in listeners:
            assert li.cursor is not None
            mine = rows[rows[:, 0] > li.cursor] if li.cursor > low else rows
            if len(mine):
                li.cursor = int(mine[-1, 0])
                self._deliver(series, token, li, mine)

    def _read_after(self, store: Store, series: _Series, after: int) -> np.ndarray:
        rows = _matrix(store.read(series.symbol, series.interval, start=after + 1))
        if len(rows) and after >= 0 and not _follows(after, rows[:, 0], series.interval):
            # a listing taken while a writer adds tails can show a newer one without an older one: a second read
            # (a fresh listing) shows both. A hole that is still there is a real gap in the store.
            rows = _matrix(store.read(series.symbol, series.interval, start=after + 1))
        return rows

    def _changed(self, store: Store, series: _Series, cursor: int) -> bool:
        """Whether the store may hold a candle after ``cursor``: a folder it would land in changed, or changed
        too recently to be sure, or the safety-net look is due."""
        now = _monotonic()
        if store.remote:  # no folder stamps on S3: look (a read: two listings) every REMOTE_LOOK_S
            if series.watched != cursor or now >= series.next_full:
                series.watched, series.next_full = cursor, now + REMOTE_LOOK_S
                return True
            return False
        stamps = self._stamps(store, series, cursor)
        changed = stamps != series.stamps or series.watched != cursor
        series.stamps, series.watched = stamps, cursor
        newest_ns = max((s[1] for s in stamps if s is not None), default=0)
        # a timestamp tick is coarse (ms on Linux, s or 2 s elsewhere): a second change within the tick of the
        # stamp we keep would look like no change. Until the stamp is older than RACY_NS, look every time.
        if changed:
            series.recheck_until_ns = newest_ns + RACY_NS
        if changed or time.time_ns() < series.recheck_until_ns or now >= series.next_full:
            series.next_full = now + FULL_EVERY_S
            return True
        return False

    @staticmethod
    def _stamps(store: Store, series: _Series, cursor: int) -> tuple[Stamp, ...]:
        """Stamps of the folders a candle after ``cursor`` lands in: the series, and the year and month folders of
        the cursor's month and of the month after it (a new month's folder is an entry of the year folder)."""
        if series.folders_for != cursor:
            folders = [store.series_dir(series.symbol, series.interval)]
            if cursor >= 0:
                this = intervals.floor(cursor, intervals.MONTH)
                for t in (this, intervals.next_open(this, intervals.MONTH)):
                    y, m = _year_month(t)
                    month = store.partition_path(series.symbol, series.interval, y, m).parent
                    folders += [month.parent, month]
            series.folders, series.folders_for = list(dict.fromkeys(folders)), cursor
        return tuple(_stat(p) for p in series.folders)

    def _deliver(self, series: _Series, token: int, li: _Listener, rows: np.ndarray) -> None:
        def run() -> None:
            if series.listeners.get(token) is not li:
                return  # unlistened after this batch was scheduled
            try:
                li.callback(rows)
            except Exception:
                log.exception("store feed: a listener of %s %s failed", series.symbol, series.interval)

        self._call(li.loop, run)

    def _report(self, series: _Series, listeners: list[tuple[int, _Listener]], exc: XylenError) -> None:
        text = exc.message
        if series.error != text:  # once, not every poll_s while it lasts
            series.error = text
            log.warning("store feed: %s %s: %s", series.symbol, series.interval, text)
        for token, li in listeners:
            if li.error == text or li.on_error is None:
                continue
            li.error = text
            on_error = li.on_error

            def run(token: int = token, li: _Listener = li, on_error: OnError = on_error) -> None:
                if series.listeners.get(token) is li:
                    try:
                        on_error(exc)
                    except Exception:
                        log.exception("store feed: an error listener of %s %s failed", series.symbol, series.interval)

            self._call(li.loop, run)

    @staticmethod
    def _recovered(series: _Series, listeners: list[tuple[int, _Listener]]) -> None:
        if series.error is not None:
            log.info("store feed: %s %s reads again", series.symbol, series.interval)
            series.error = None
        for _, li in listeners:
            li.error = None

    @staticmethod
    def _call(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed (server shutting down): nobody to tell
            loop.call_soon_threadsafe(fn)


def _matrix(df: Any) -> np.ndarray:
    """A candle frame -> float64 (rows, 6); open times (< 2**53) are exact in float64."""
    if df.height == 0:
        return np.empty((0, len(COLUMNS)), np.float64)
    return np.ascontiguousarray(df.select(list(COLUMNS)).to_numpy().astype(np.float64, copy=False))


def _follows(after: int, times: np.ndarray, interval: str) -> bool:
    """Whether ``times`` continue the series after open time ``after`` without a hole."""
    t = np.concatenate(([after], times.astype(np.int64)))
    return bool(intervals.consecutive(t, interval).all())


def _year_month(t: int) -> tuple[int, int]:
    d = np.datetime64(t, "ms").astype("datetime64[M]").astype(int)
    return 1970 + int(d) // 12, int(d) % 12 + 1


def _stat(path: Path) -> Stamp:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _request_error(exc: XylenError) -> RequestError:
    """A store error as the stream answers it: a bad name is the client's (422); an unreadable store is not (503)."""
    status = 503 if isinstance(exc, DataError) else 422
    return RequestError(status, exc.message + (f" Fix: {exc.hint}" if exc.hint else ""))
