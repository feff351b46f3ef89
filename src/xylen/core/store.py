"""The market-data store: hive-partitioned Parquet, per series and month one ``data.parquet`` plus small tails.

    XYLEN_HOME/data/klines/exchange=binance/symbol=BTCUSDT/interval=5m/year=2024/month=01/data.parquet
                                                                            .../month=01/tail-<first>-<last>-<hash>.parquet

Key columns (exchange, symbol, interval, year, month) live in the path, not in the files, so polars, DuckDB and
dask read the tree with hive partitioning and no conversion; every file under ``klines`` is Parquet with the same
columns. A candle belongs to the month of its open_time (a weekly candle too). One ``Store`` reads and writes one
exchange's series; ``Store.exchanges(root)`` lists the exchanges a root holds.

Every write goes through the storage seam (:mod:`xylen.core.storage`), which offers no rename, append or lock
(an object store can stand behind it):

* a small append (at most ``SMALL_APPEND`` candles, none of them stored yet: a closed candle in follow mode)
  is one new immutable *tail* object (``put_new``): its cost does not grow with the month. Its bytes are
  fsynced, its folder entry is not: a killed collector loses nothing, and a power cut can at worst forget the
  newest tails (never tear one), which the next `xylen collect` fetches again by REST;
* anything else is merged into the month's ``data.parquet`` by a compare-and-swap on the version the writer
  read (``swap``); on a conflict the writer re-reads, re-merges and retries, so concurrent writers (threads,
  processes, hosts) never lose each other's candles. The per-series file lock only spares them retries;
* *compaction* folds a month's tails into its ``data.parquet`` (the same swap), then deletes the folded tails:
  when a month holds more than ``MAX_TAILS`` tails, when the series moves on to the next month, and on
  ``xylen collect`` (before and after its backfill) and ``xylen collect status``.

Readers list and read a month's tails *before* its ``data.parquet`` and keep one row per open_time, so a
compaction between the two reads yields a candle twice, never loses one. Which copy wins
(:func:`xylen.core.store_files.view`): the ``data.parquet`` copy, then the tail whose name sorts last. A direct
reader (polars, DuckDB, dask) sees every candle; between a compaction's swap and the deletion of the folded
tails (or after a crash in between, until the next compaction) it sees those candles twice, with the same
values: keep one row per open_time.

Nothing is ever deleted: a file that cannot be read (torn by a foreign tool, a bad disk) is copied to
``data/quarantine/<its path>.<UTC time>`` (``quarantine/klines/exchange=E/...``) with a logged warning before its
month is rewritten without it, and ``xylen collect status`` lists it with the command that fetches its candles
again. ``read`` and ``last_open_time`` refuse a series with an unreadable file (DataError naming it), never
returning fewer rows.

Known gaps (ranges the exchange answered twice with no candles: no trading) live in
``data/meta/exchange=E/<SYMBOL>-<interval>.known_gaps.json``, merged by compare-and-swap; never re-fetched.
Market metadata (the exchange's spelling of a symbol...) lives beside them in ``<SYMBOL>.market.json``
(:mod:`xylen.core.store_meta`).

The root may be ``s3://bucket/prefix`` (``XYLEN_DATA_URL``, :func:`open_store`): the same keys under the prefix,
through :class:`xylen.core.storage_s3.S3Storage` (put_new is ``If-None-Match: *``, swap ``If-Match`` on the ETag).
There is no per-series lock there and no folder stamp: a writer lists the month before each append (one request;
the month file's ETag in that listing says whether its cached open times are current), so a follow-mode append
is a LIST and a PUT. A listing is no snapshot (keys come in order, a page at a time), so a reader lists the
series again after reading the tails and takes each month file as that second listing shows it. Tails are named
by the hash of their bytes, so two writers storing the same candles (a second collector, a re-sync after a crash)
make one object: the second ``put_new`` is a no-op.

A root written before exchanges (``klines/symbol=...``, no exchange level) is refused with a DataError naming
the command that moves it in place, ``xylen collect migrate`` (:mod:`xylen.core.store_migrate`). The check runs
once per Store; only a clean answer is remembered, so the per-candle append path pays nothing for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from xylen.core import intervals
from xylen.core import store_files as sf
from xylen.core import store_meta as meta
from xylen.core.candles import COLUMNS, SCHEMA, empty_frame
from xylen.core.errors import ConfigError, DataError
from xylen.core.storage import TMP_DIR, Conflict, LocalStorage, Missing, Storage
from xylen.core.storage_s3 import is_s3_url
from xylen.core.store_files import DEFAULT_EXCHANGE, FILE_NAME, KLINES, META, QUARANTINE, Month, Unreadable
from xylen.core.store_migrate import needs_migration, old_layout_key, refusal
from xylen.core.store_records import AppendResult, Quarantined, SeriesSummary

log = logging.getLogger("xylen.store")

SMALL_APPEND = 64  # candles: at most this many (all new) become a tail instead of rewriting the month
MAX_TAILS = 256  # a month with more tails than this is compacted by the append that makes it so
MAX_ATTEMPTS = 1000  # compare-and-swap retries: each conflict means another writer made progress
READERS = 8  # on S3: tails read at once by a reader or a compaction
CACHE_BYTES = 128 << 20  # open times of month files kept in memory per Store (follow mode: the current months)

_SCHEMA = pl.Schema(SCHEMA)

__all__ = ["FILE_NAME", "AppendResult", "Quarantined", "SeriesSummary", "Store", "needs_migration", "open_store"]


def open_store(settings: Any, exchange: str | None = None, *, serialize_writers: bool = True) -> Store:
    """The store the settings name (XYLEN_DATA_URL: s3:// or a folder, else XYLEN_HOME/data) for ``exchange``
    (default: the exchange setting)."""
    return Store(settings.data_location, exchange or settings.exchange, serialize_writers=serialize_writers,
                 endpoint_url=settings.s3_endpoint_url, cache=settings.home / "cache")


class Store:
    """The candles of one exchange in the store under ``root`` (``XYLEN_HOME/data``, or ``s3://bucket/prefix``).

    ``exchange`` is a name of lower-case letters and digits (``Binance`` reads as ``binance``; anything else is a
    ConfigError before it can name a folder). ``serialize_writers`` takes a per-series file lock around writes: it
    spares concurrent writers of one series their compare-and-swap retries; correctness never depends on it.

    On S3 (:class:`xylen.core.storage_s3.S3Storage`, the same keys under the prefix) ``endpoint_url`` (else
    XYLEN_S3_ENDPOINT_URL, else AWS) is the endpoint; there is no file lock (writers rely on the compare-and-swap
    alone), no folder stamp (a writer lists the month, one request, before each append) and no temp files.
    """

    def __init__(self, root: str | Path, exchange: str = DEFAULT_EXCHANGE, *, serialize_writers: bool = True,
                 endpoint_url: str | None = None, cache: Path | None = None) -> None:
        self.exchange = sf.check_exchange(exchange)
        self.remote = is_s3_url(root)
        self.endpoint_url = endpoint_url
        self.cache_dir = cache
        if self.remote:
            from xylen.core.storage_s3 import S3Storage

            url = str(root).rstrip("/")
            self.location = url
            endpoint = endpoint_url or os.environ.get("XYLEN_S3_ENDPOINT_URL") or None
            cache = cache or Path(os.environ.get("XYLEN_HOME") or "~/.xylen").expanduser() / "cache"
            self.root = cache / f"store-{hashlib.sha256(url.encode()).hexdigest()[:12]}"  # scratch only
            self.storage: Storage = S3Storage(url, scratch=self.root, endpoint_url=endpoint, setting="XYLEN_DATA_URL")
        else:
            self.root = Path(root)
            self.location = str(self.root)
            self.storage = LocalStorage(self.root)
        self.klines: Path | str = self.where(KLINES) if self.remote else self.root / KLINES
        self.meta = self.root / META
        self.quarantine: Path | str = self.where(QUARANTINE) if self.remote else self.root / QUARANTINE
        self.tmp = self.root / TMP_DIR
        self.serialize_writers = serialize_writers
        self._times: dict[str, tuple[tuple[Any, ...], np.ndarray]] = {}  # month key -> (file identity, open times)
        self._times_lock = threading.Lock()  # follow mode appends several series from worker threads
        self._listings: dict[str, tuple[tuple[int, ...], Month]] = {}  # month prefix -> (folder stamp, listing)
        self._layout_ok = False  # no file from before exchanges under root (remembered once seen)
        # S3 readers: tails (key -> ("", bytes, size)) and month files (key -> (ETag, frame, size)) already fetched
        self._blobs: dict[str, tuple[str, Any, int]] = {}
        self._blob_bytes = 0

    def where(self, key: str) -> str:
        """The path (or s3:// URL) of a key, for messages."""
        return f"{self.location}/{key}" if self.remote else str(self.root / key)

    def for_exchange(self, exchange: str) -> Store:
        """A Store of another exchange at the same location."""
        root = self.location if self.remote else self.root
        return Store(root, exchange, serialize_writers=self.serialize_writers, endpoint_url=self.endpoint_url,
                     cache=self.cache_dir)

    @staticmethod
    def exchanges(root: str | Path, *, endpoint_url: str | None = None, cache: Path | None = None) -> list[str]:
        """Every exchange with a series (stored or quarantined) under ``root``, sorted."""
        return Store(root, endpoint_url=endpoint_url, cache=cache).exchanges_here()

    def exchanges_here(self) -> list[str]:
        """Every exchange with a series (stored or quarantined) at this store's location, sorted."""
        probe = self
        probe._check_layout()
        names = {  # one delimited listing per area (not every object of the store)
            name[len("exchange=") :]
            for base in (KLINES, f"{QUARANTINE}/{KLINES}")
            for name in sf.folders_of(probe.storage, base)
            if name.startswith("exchange=")
        }
        found = []
        for name in sorted(names):
            try:
                store = probe.for_exchange(name)
            except ConfigError:
                continue  # a folder someone else made
            if store.exchange == name and (store.series() or store.quarantined_series()):
                found.append(name)
        return found

    def _check_layout(self) -> None:
        """Refuse a root that still holds files from before exchanges (a DataError naming one and the fix)."""
        if self._layout_ok:
            return
        old = old_layout_key(self.storage)
        if old is not None:
            raise refusal(self.location, old)  # checked again next time: `xylen collect migrate` may run meanwhile
        self._layout_ok = True

    # ---------------------------------------------------------------- layout
    def series_prefix(self, symbol: str, interval: str) -> str:
        """The storage key of a series' folder. The symbol is normalised (btcusdt -> BTCUSDT); anything that is
        not a symbol (letters and digits, 2-20) or not a Binance interval is refused with a ConfigError."""
        sym, iv = sf.check_series(symbol, interval)
        return f"{KLINES}/exchange={self.exchange}/symbol={sym}/interval={iv}"

    def series_location(self, symbol: str, interval: str) -> str:
        """Where a series lives (a folder, or an s3:// URL), for messages and reports."""
        return self.where(self.series_prefix(symbol, interval))

    def series_dir(self, symbol: str, interval: str) -> Path:
        return self.root / self.series_prefix(symbol, interval)

    def partition_path(self, symbol: str, interval: str, year: int, month: int) -> Path:
        return self.root / self._month(symbol, interval, year, month).data_key

    def series(self) -> list[tuple[str, str]]:
        """Every (symbol, interval) of this exchange with at least one file under ``klines``, sorted."""
        self._check_layout()
        return sf.series_of(self.storage.list(f"{KLINES}/exchange={self.exchange}"), depth=2)

    def files(self, symbol: str, interval: str) -> list[Path]:
        """Every Parquet file of a series (month files and tails), sorted by path."""
        return [self.root / k for m in self._months(symbol, interval) for k in m.object_keys()]

    def keys(self, symbol: str, interval: str) -> list[str]:
        """The storage keys of every Parquet file of a series (month files and tails), sorted."""
        return [k for m in self._months(symbol, interval) for k in m.object_keys()]

    def fingerprint(self, symbol: str, interval: str) -> tuple[Any, ...]:
        """What changes when a series' candles or known gaps do: each file's identity (local: inode, size and
        times; S3: its ETag, all from one listing of the series and one of the exchange's meta folder)."""
        gaps = meta.gaps_key(self.exchange, symbol, interval)
        if self.remote:
            tokens = self._tokens(self.series_prefix(symbol, interval))
            gap_token = self._tokens(f"{META}/exchange={self.exchange}").get(gaps)
            return (*sorted(tokens.items()), (gaps, gap_token))
        return tuple((k, self._identity(k)) for k in [*self.keys(symbol, interval), gaps])

    def months(self, symbol: str, interval: str) -> int:
        """How many month partitions the series has (one listing; no file is read)."""
        return len(self._months(symbol, interval))

    def _month(self, symbol: str, interval: str, year: int, month: int) -> Month:
        return Month(year, month, f"{self.series_prefix(symbol, interval)}/year={year}/month={month:02d}")

    def _months(self, symbol: str, interval: str) -> list[Month]:
        prefix = self.series_prefix(symbol, interval)
        self._check_layout()
        if not self.remote:
            return sf.months_of(prefix, self.storage.list(prefix))
        tokens = self._tokens(prefix)  # one listing gives the keys and the ETags (a cached month file needs no GET)
        months = sf.months_of(prefix, list(tokens))
        for m in months:
            m.data_token = tokens.get(m.data_key)
        return months

    def _tokens(self, prefix: str) -> dict[str, str]:
        from xylen.core.storage_s3 import S3Storage

        assert isinstance(self.storage, S3Storage)
        return self.storage.list_tokens(prefix)

    def _listed(self, m: Month) -> Month:
        """The month as it is now: a listing of its folder, reused while the folder's stamp is unchanged.

        A folder's stamp (local disks: its inode and mtime) changes whenever an entry is added or removed. Within
        one clock tick another writer's new tail can go unseen; that costs at most a candle written twice (kept
        once by every reader) or a compaction one append later, never a lost candle: a fold deletes only the tails it
        read and folded."""
        stamp = self._stamp(m.prefix)
        if stamp is not None:
            with self._times_lock:
                hit = self._listings.get(m.prefix)
            if hit is not None and hit[0] == stamp:
                return Month(m.year, m.month, m.prefix, hit[1].data, list(hit[1].tails), hit[1].data_token)
        fresh = self._list_month(m)
        if stamp is not None:
            self._remember_listing(fresh, stamp)
        return Month(fresh.year, fresh.month, fresh.prefix, fresh.data, list(fresh.tails), fresh.data_token)

    def _stamp(self, prefix: str) -> tuple[int, ...] | None:
        stamp = getattr(self.storage, "stamp", None)
        return stamp(prefix) if stamp is not None else None

    def _remember_listing(self, m: Month, stamp: tuple[int, ...]) -> None:
        with self._times_lock:
            if len(self._listings) >= 64 and m.prefix not in self._listings:
                self._listings.pop(next(iter(self._listings)))
            self._listings[m.prefix] = (stamp, m)

    def _list_month(self, m: Month) -> Month:
        fresh = Month(m.year, m.month, m.prefix)
        skip = len(m.prefix) + 1
        tokens = self._tokens(m.prefix) if self.remote else dict.fromkeys(self.storage.list(m.prefix), "")
        for key, token in tokens.items():
            name = key[skip:]
            if name == FILE_NAME:
                fresh.data = True
                fresh.data_token = token or None
            elif name.startswith("tail-") and sf.TAIL.match(name):
                fresh.tails.append(name)
        fresh.tails.sort()
        return fresh

    # ---------------------------------------------------------------- reading
    def read(self, symbol: str, interval: str, start: int | None = None, end: int | None = None) -> pl.DataFrame:
        """All stored candles of a series (optionally open_time in [start, end)), sorted, one per open_time.

        Raises DataError naming the file if a file of the series cannot be read: never silently fewer rows.
        """

        def wanted(m: Month) -> bool:
            lo, hi = m.bounds()
            return not ((end is not None and lo >= end) or (start is not None and hi <= start))

        months = [m for m in self._months(symbol, interval) if wanted(m)]
        try:
            if self.remote:
                frames = self._read_remote(symbol, interval, months, wanted)
            else:  # each month's tails before its month file: see the module docstring
                frames = [sf.view(self._read_tails(m, m.tails)[0], self._read_data(m)) for m in months]
        except Unreadable as exc:
            raise self._refusal(exc) from None
        if not frames:
            return empty_frame()
        df = pl.concat(frames)
        if start is not None:
            df = df.filter(pl.col("open_time") >= start)
        if end is not None:
            df = df.filter(pl.col("open_time") < end)
        return df

    def _read_remote(
        self, symbol: str, interval: str, months: list[Month], wanted: Callable[[Month], bool]
    ) -> list[pl.DataFrame]:
        """On S3: the listed tails first, then each month file as a second listing shows it.

        A listing is no snapshot: keys come in order (a month's data.parquet before its tails), 1000 to a page. A
        compaction while it runs (swap the month file, then delete the folded tails) can leave it showing the old
        month file, or none, or no month at all, without the folded tails. So the month files are looked at only
        after the tails were read, as on a local disk: a second listing of the series (one request for all its
        months, ETags included) names each current month file; a copy kept under that ETag needs no GET."""
        tails = {m.prefix: self._read_tails(m, m.tails)[0] for m in months}
        after = {m.prefix: m for m in self._months(symbol, interval) if wanted(m)}  # after every tail was read
        frames = []
        for prefix in sorted(tails.keys() | after.keys()):  # year=YYYY/month=MM: in time order
            now = after.get(prefix)
            month = self._read_data(now, kept=True) if now is not None and now.data else None
            frames.append(sf.view(tails.get(prefix, empty_frame()), month))
        return frames

    def _read_tails(self, m: Month, names: list[str]) -> tuple[pl.DataFrame, list[tuple[str, bytes]]]:
        """The tails still there, as one frame in name order, and their raw bytes (key, data)."""
        keys = [f"{m.prefix}/{name}" for name in names]
        found = self._kept_tails(keys) if self.remote else {}  # S3: a tail never changes, kept copies will do
        todo = [k for k in keys if k not in found]
        if self.remote and len(todo) > 1:  # one request each: several at a time (boto3's client is thread-safe)
            with ThreadPoolExecutor(READERS) as pool:
                fetched = dict(zip(todo, pool.map(self._read_or_none, todo), strict=True))
        else:
            fetched = {k: self._read_or_none(k) for k in todo}
        if self.remote:
            self._keep({k: ("", d, len(d)) for k, d in fetched.items() if d is not None})
        found.update(fetched)
        # a tail gone meanwhile was folded by a compaction: its candles are in the data.parquet read after this
        got = [(k, d) for k in keys if (d := found.get(k)) is not None]
        return sf.decode_many(got), got

    def _kept_tails(self, keys: list[str]) -> dict[str, bytes | None]:
        with self._times_lock:
            return {k: hit[1] for k in keys if (hit := self._blobs.get(k)) is not None}

    def _keep(self, entries: dict[str, tuple[str, Any, int]]) -> None:
        """Remember S3 objects a reader fetched: tails by key (immutable), month files as decoded frames under
        their ETag; bounded by CACHE_BYTES, oldest first out."""
        with self._times_lock:
            for key, entry in entries.items():
                old = self._blobs.pop(key, None)
                self._blob_bytes += entry[2] - (old[2] if old else 0)
                self._blobs[key] = entry
            while self._blobs and self._blob_bytes > CACHE_BYTES:
                self._blob_bytes -= self._blobs.pop(next(iter(self._blobs)))[2]

    def _read_or_none(self, key: str) -> bytes | None:
        try:
            return self.storage.read(key)
        except Missing:
            return None

    def _delete(self, keys: list[str]) -> None:
        delete_many = getattr(self.storage, "delete_many", None)
        if delete_many is not None and len(keys) > 1:
            delete_many(keys)  # S3: one request per 1000 keys
            return
        for key in keys:
            self.storage.delete(key)

    def _read_data(self, m: Month, *, kept: bool = False) -> pl.DataFrame | None:
        """The month's data.parquet (None: none). ``kept`` (S3): ``m`` comes from a listing made after the tails
        were read, so a decoded copy kept under the ETag it names is that version: no GET."""
        if not self.remote:
            try:
                return sf.decode(self.storage.read(m.data_key), m.data_key)
            except Missing:
                return None
        if kept and m.data_token is not None:
            with self._times_lock:
                hit = self._blobs.get(m.data_key)
            if hit is not None and hit[0] == m.data_token:
                return hit[1].clone()  # type: ignore[no-any-return]  # a caller may change its frame in place
        got = self.storage.read_versioned(m.data_key)
        if got is None:
            return None
        df = sf.decode(got.data, m.data_key)
        self._keep({m.data_key: (got.token, df, int(df.estimated_size()))})
        return df.clone()

    def last_open_time(self, symbol: str, interval: str) -> int | None:
        """The newest stored open time: tails by their names, the month file by its open_time column."""
        for m in reversed(self._months(symbol, interval)):
            best = max((last for _, last in m.tail_ranges()), default=None)
            try:
                times = self._month_times(m)
            except Unreadable as exc:
                raise self._refusal(exc) from None
            if len(times):
                best = max(best or 0, int(times[-1]))
            if best is not None:
                return best
        return None

    def _refusal(self, exc: Unreadable) -> DataError:
        return DataError(
            f"Store file {self.where(exc.key)!r} is unreadable: {exc.reason}",
            hint="run `xylen collect status`: it moves the file to "
            f"{str(self.quarantine)!r} (nothing is deleted) and prints the command that fetches its candles again.",
        )

    def _month_times(self, m: Month) -> np.ndarray:
        """Sorted open times of the month's data.parquet (empty if it has none); cached per file version."""
        key = m.data_key
        if self.remote:
            return self._remote_times(m)
        ident = self._identity(key)
        if ident == ():
            return np.empty(0, np.int64)
        with self._times_lock:
            hit = self._times.get(key)
        if hit is not None and hit[0] == ident:
            return hit[1]
        try:
            times = sf.decode_times(self.storage.read(key), key)
        except Missing:
            return np.empty(0, np.int64)
        if ident is not None:  # identity taken before the read: a replacement in between only misses the cache
            self._cache(key, ident, times)
        return times

    def _remote_times(self, m: Month) -> np.ndarray:
        """On S3: the month file's open times, cached under its ETag (the listing's token: no GET while current)."""
        key = m.data_key
        if not m.data:
            return np.empty(0, np.int64)
        with self._times_lock:
            hit = self._times.get(key)
        if hit is not None and m.data_token is not None and hit[0] == (m.data_token,):
            return hit[1]
        got = self.storage.read_versioned(key)
        if got is None:
            return np.empty(0, np.int64)
        times = sf.decode_times(got.data, key)
        self._cache(key, (got.token,), times)  # the version actually read, whatever the listing said
        return times

    def _cache(self, key: str, ident: tuple[Any, ...], times: np.ndarray) -> None:
        with self._times_lock:
            self._times.pop(key, None)
            self._times[key] = (ident, times)
            # bounded: a month of 1s candles is 21 MB of open times; evict the oldest entries first
            while len(self._times) > 1 and (
                len(self._times) > 64 or sum(v[1].nbytes for v in self._times.values()) > CACHE_BYTES
            ):
                self._times.pop(next(iter(self._times)))

    def _remember(self, key: str, times: np.ndarray, token: str) -> None:
        """Cache the open times of the month file this writer just swapped in, if it is still that version:
        the next append then needs no read (after a compaction it was the slowest append of all)."""
        if self.remote:  # the ETag the swap returned: the next listing shows it while this version is current
            self._cache(key, (token,), times)
            return
        ident = self._identity(key)
        if not ident or self.storage.token(key) != token or self._identity(key) != ident:
            return  # not local, or replaced meanwhile: the next reader fills the cache
        self._cache(key, ident, times)

    def _identity(self, key: str) -> tuple[int, ...] | None:
        """A local file's identity (a replaced file has a new inode and times); () if absent; None if not local."""
        path = self.storage.local_path(key)
        if path is None:
            return None
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return ()
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    # ---------------------------------------------------------------- writing
    def append(self, symbol: str, interval: str, df: pl.DataFrame) -> AppendResult:
        """Store candles (one per open_time: new rows win over stored ones). Small all-new appends are tails."""
        result = AppendResult()
        self.series_prefix(symbol, interval)
        self._check_layout()
        if df.height == 0:
            return result
        if df.schema != _SCHEMA:  # already conforming (a decoded candle): skip two polars calls
            df = df.select(list(COLUMNS)).cast(SCHEMA)  # type: ignore[arg-type]
        t = df["open_time"].to_numpy()
        if (t < 0).any():  # a time before 1970 is a unit or parsing mistake upstream, and no tail name could hold it
            raise DataError(
                f"Candles for {symbol} {interval} open before 1970 (open_time {int(t.min())}).",
                hint="open_time is epoch milliseconds, like 1704067200000.",
            )
        off = ~intervals.aligned(t, interval)
        if off.any():
            raise DataError(
                f"Candles for {symbol} {interval} are off the {interval} grid (open_time {int(t[off.argmax()])}).",
                hint="check the interval of the data being stored.",
            )
        if len(t) > 1 and not (np.diff(t) > 0).all():
            df = df.unique(subset="open_time", keep="last", maintain_order=True).sort("open_time")
            t = df["open_time"].to_numpy()
        # one part per calendar month of open_time (plain numpy: this is the per-candle path of follow mode)
        months = np.asarray(t, dtype="datetime64[ms]").astype("datetime64[M]")
        cuts = [0, *(np.flatnonzero(months[1:] != months[:-1]) + 1).tolist(), len(t)]
        with self._writing(symbol, interval):
            for a, b in itertools.pairwise(cuts):
                m = self._listed(self._month(symbol, interval, *sf.year_month(int(t[a]))))
                self._append_month(symbol, interval, m, df.slice(a, b - a), result)
        return result

    def _append_month(self, symbol: str, interval: str, m: Month, new: pl.DataFrame, result: AppendResult) -> None:
        was_empty = not (m.data or m.tails)
        if new.height <= SMALL_APPEND and self._all_new(m, new["open_time"].to_numpy()):
            t = new["open_time"]
            data = sf.encode(new, small=True)
            # named by its content: the same candles written again (a second collector, a re-sync after a crash)
            # give the same key, and put_new's create-if-absent makes that second write a no-op, not a duplicate.
            # The folder entry is not fsynced (half the cost of a closed candle): a power cut may forget the newest
            # tails, never tear one, and `xylen collect` backfills them on its next start
            key = f"{m.prefix}/{sf.tail_name(int(t[0]), int(t[-1]), data)}"
            if not self.storage.put_new(key, data, sync_folder=False):
                result.duplicates += new.height  # these very candles are stored already
                return
            stamp = self._stamp(m.prefix)
            if stamp is not None:  # our own tail: the next append need not list the folder again
                self._remember_listing(
                    Month(m.year, m.month, m.prefix, m.data, sorted([*m.tails, key.rsplit("/", 1)[1]])), stamp
                )
            result.added += new.height
            result.files.append(self.where(key))
            if len(m.tails) + 1 > MAX_TAILS:
                self._merge_month(m, None, None)
        else:
            self._merge_month(m, new, result)
        if was_empty:  # the series moved on to a new month: the one before is complete, fold its tails
            prev = intervals.floor(m.bounds()[0] - 1, intervals.MONTH)
            before = self._listed(self._month(symbol, interval, *sf.year_month(prev)))
            if before.tails:
                self._merge_month(before, None, None)

    def _all_new(self, m: Month, t: np.ndarray) -> bool:
        """True when none of the open times ``t`` is stored in the month (an unreadable file: False)."""
        lo, hi = int(t.min()), int(t.max())
        try:
            for name, (first, last) in zip(m.tails, m.tail_ranges(), strict=True):
                if first <= hi and lo <= last:  # only tails whose range overlaps are read
                    key = f"{m.prefix}/{name}"
                    try:
                        if sf.any_in(t, sf.decode_times(self.storage.read(key), key)):
                            return False
                    except Missing:
                        continue  # folded: its candles are in the month file read next
            return not sf.any_in(t, self._month_times(m))
        except Unreadable:
            return False  # the merge path moves the unreadable file aside

    def compact(self, symbol: str, interval: str) -> int:
        """Fold every month's tails into its data.parquet and move unreadable files to quarantine (logged).

        Returns how many tails were folded. Safe while other writers append (compare-and-swap)."""
        folded = 0
        self.series_prefix(symbol, interval)
        self._check_layout()  # before the lock: a refused root gets no lock file either
        with self._writing(symbol, interval):
            for m in self._months(symbol, interval):
                if not m.tails:
                    try:  # a readable month without tails has nothing to fold
                        self._read_data(m)
                        continue
                    except Unreadable:
                        pass
                folded += self._merge_month(m, None, None)
        return folded

    def _merge_month(self, m: Month, new: pl.DataFrame | None, result: AppendResult | None) -> int:
        """Rewrite a month as data.parquet + its tails (+ ``new``, whose rows win) by compare-and-swap, then
        delete the folded tails. Returns how many tails were folded."""
        moved: set[tuple[str, int]] = set()
        for _ in range(MAX_ATTEMPTS):
            names = self._listed(m).tails
            try:
                tails, got_tails = self._read_tails(m, names)  # before the month file, like every reader
            except Unreadable:
                tails, got_tails = self._tails_without_bad(m, names, moved)
            got = self.storage.read_versioned(m.data_key)
            month = None
            if got is not None:
                try:
                    month = sf.decode(got.data, m.data_key)
                except Unreadable as exc:
                    self._quarantine(exc, got.data, moved)
            view = sf.view(tails, month)
            merged = view if new is None else sf.newer_wins(view, new)
            gone = [k for k, _ in got_tails]
            if gone or (got is not None and month is None) or (new is not None and not merged.equals(view)):
                try:
                    token = self.storage.swap(m.data_key, sf.encode(merged), got.token if got else None)
                except Conflict:
                    continue  # another writer got there first: re-read, re-merge
                self._delete(gone)  # immutable and folded (or quarantined): deleting loses nothing
                self._remember(m.data_key, merged["open_time"].to_numpy(), token)
            if result is not None and new is not None:
                added = merged.height - view.height
                result.added += added
                result.duplicates += new.height - added
                result.files.append(self.where(m.data_key))
            return len(gone)
        raise DataError(
            f"Gave up writing {self.where(m.data_key)!r}: {MAX_ATTEMPTS} conflicting writers in a row.",
            hint="stop the other processes writing this series and run it again.",
        )

    def _tails_without_bad(
        self, m: Month, names: list[str], moved: set[tuple[str, int]]
    ) -> tuple[pl.DataFrame, list[tuple[str, bytes]]]:
        """The readable tails in name order; unreadable ones are quarantined (and deleted with the others)."""
        frames, got = [], []
        for name in names:
            key = f"{m.prefix}/{name}"
            try:
                data = self.storage.read(key)
            except Missing:
                continue
            got.append((key, data))
            try:
                frames.append(sf.decode(data, key))
            except Unreadable as exc:
                self._quarantine(exc, data, moved)
        return (pl.concat(frames) if frames else empty_frame()), got

    def _quarantine(self, exc: Unreadable, data: bytes, moved: set[tuple[str, int]]) -> None:
        """Copy an unreadable file to quarantine/ (once per version) before its month is rewritten without it."""
        tag = (exc.key, hash(data))
        if tag in moved:
            return
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target, n = f"{QUARANTINE}/{exc.key}.{stamp}", 0
        while not self.storage.put_new(target, data):  # the same microsecond twice: a suffix
            n += 1
            target = f"{QUARANTINE}/{exc.key}.{stamp}-{n}"
        moved.add(tag)
        log.warning(
            "store: %s is unreadable (%s); moved it to %s (nothing deleted): %s",
            self.where(exc.key),
            exc.reason,
            self.where(target),
            sf.fix_for(exc.key),
        )

    def quarantined(self, symbol: str, interval: str) -> list[Quarantined]:
        """The series' files moved to quarantine/, each with the command that fetches its candles again."""
        prefix = f"{QUARANTINE}/{self.series_prefix(symbol, interval)}"
        self._check_layout()
        skip = len(QUARANTINE) + 1
        return [Quarantined(self.where(k), sf.fix_for(k[skip:])) for k in self.storage.list(prefix)]

    def quarantined_series(self) -> list[tuple[str, str]]:
        """Every (symbol, interval) of this exchange with a file in quarantine/, sorted."""
        self._check_layout()
        return sf.series_of(self.storage.list(f"{QUARANTINE}/{KLINES}/exchange={self.exchange}"), depth=3)

    def _writing(self, symbol: str, interval: str) -> contextlib.AbstractContextManager[None]:
        return self.lock(symbol, interval) if self.serialize_writers else contextlib.nullcontext()

    def lock(self, symbol: str, interval: str) -> contextlib.AbstractContextManager[None]:
        """An exclusive lock on one series across local processes: spares concurrent writers their retries."""
        prefix = self.series_prefix(symbol, interval)
        return self.storage.lock(prefix) if isinstance(self.storage, LocalStorage) else contextlib.nullcontext()

    def clean_temp(self) -> int:
        """Remove temp files left by killed writers (their renames never happened: the data files are intact)."""
        return self.storage.clean_temp() if isinstance(self.storage, LocalStorage) else 0

    # ---------------------------------------------------------------- known gaps, market metadata, summary
    def known_gaps(self, symbol: str, interval: str) -> list[tuple[int, int]]:
        """Ranges [start, end) of open_time in which the exchange answered no candles (no trading)."""
        key = meta.gaps_key(self.exchange, symbol, interval)
        self._check_layout()
        return meta.read_gaps(self.storage, key)

    def add_known_gaps(self, symbol: str, interval: str, gaps: list[tuple[int, int]]) -> None:
        """Merge ranges into the known gaps by compare-and-swap: two collectors never lose each other's gaps."""
        key = meta.gaps_key(self.exchange, symbol, interval)
        self._check_layout()
        meta.add_gaps(self.storage, key, gaps)

    def market(self, symbol: str) -> dict[str, Any] | None:
        """The market metadata stored for ``symbol`` (e.g. the exchange's own spelling), or None."""
        key = meta.market_key(self.exchange, symbol)
        self._check_layout()
        return meta.read_market(self.storage, key)

    def set_market(self, symbol: str, info: dict[str, Any]) -> None:
        """Store ``info`` (a JSON object) as the market metadata of ``symbol``, replacing what was there."""
        key = meta.market_key(self.exchange, symbol)
        self._check_layout()
        meta.write_market(self.storage, key, info)

    def summary(self, symbol: str, interval: str, now_ms: int | None = None) -> SeriesSummary:
        """First/last candle, rows, gaps (not counting known ones), lag behind ``now_ms``, quarantined files."""
        df = self.read(symbol, interval)
        known = self.known_gaps(symbol, interval)
        moved = self.quarantined(symbol, interval)
        if df.height == 0:
            return SeriesSummary(symbol, interval, 0, None, None, [], None, known, moved, self.exchange)
        t = df["open_time"].to_numpy()
        gaps = [
            gap
            for gap, (a, b) in zip(intervals.gaps(t, interval), intervals.holes(t, interval), strict=True)
            if not sf.covered(a, b, known)
        ]
        now_ms = now_ms if now_ms is not None else int(datetime.now(timezone.utc).timestamp() * 1000)
        lag = max(0, now_ms - intervals.next_open(int(t[-1]), interval))  # since the last stored candle closed
        return SeriesSummary(symbol, interval, df.height, int(t[0]), int(t[-1]), gaps, lag, known, moved, self.exchange)
