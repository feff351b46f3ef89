"""Moving a store written before exchanges in place to ``exchange=binance`` (`xylen collect migrate`).

Before exchanges the store had no ``exchange=`` level; every series in it came from Binance:

    klines/symbol=S/interval=I/year=Y/month=M/<file>  ->  klines/exchange=binance/symbol=S/interval=I/...
    meta/S-I.known_gaps.json                          ->  meta/exchange=binance/S-I.known_gaps.json
    quarantine/klines/symbol=S/...                    ->  quarantine/klines/exchange=binance/symbol=S/...

Each file moves on its own and atomically: a hard link at the new place (which fails if the name is taken, so
nothing is ever overwritten; ``os.replace`` would overwrite silently), an fsync of that folder, then the old name is
removed and its folder fsynced. A kill at any moment leaves every file whole at its old place, its new one, or
both (one file under two names); running the migration again finishes the job and ends in the same store as a
migration never interrupted. Where the new place already holds a file of that name the two are merged: candles
by the store's rule (the copy already at the new place wins a candle both hold; the old file adds the candles it
lacks), known gaps by merging their ranges, a tail or quarantined file with other bytes kept beside it under a
name of its own. An unreadable file is set aside in ``quarantine/`` (nothing is ever dropped).

A collector of the old version still running since the upgrade may replace an old month or known-gaps file
meanwhile: the old name is removed under the lock that version's writes take, and only while it still holds what
reached the new place (a newer version is merged in too). Files it writes after a run listed the store stay in the
old layout; every Store keeps refusing the root until the next run moves them.

Files that are not the store's (a README in klines/, a folder someone made) stay where they are and are reported.
Until no old file is left, :class:`xylen.core.store.Store` refuses the root (a DataError naming the file and this
command), so no reader ever sees a store half moved. One migration runs at a time per store: a second waits for
the first (an ``flock`` in ``.locks``, released by the kernel when its holder dies, ``kill -9`` included).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import orjson

from xylen.core import store_files as sf
from xylen.core.errors import ConfigError, DataError
from xylen.core.storage import LOCK_DIR, Conflict, LocalStorage, Storage, fsync_dir, storage_error

log = logging.getLogger("xylen.store")

EXCHANGE = sf.DEFAULT_EXCHANGE  # the old layout held Binance candles only
LOCK_NAME = "store-migrate.lock"
GAPS = ".known_gaps.json"
AREAS = (sf.KLINES, sf.META, f"{sf.QUARANTINE}/{sf.KLINES}")  # where the old layout kept its files
MAX_ATTEMPTS = 1000
_YEAR, _MONTH = re.compile(r"year=(\d{4})"), re.compile(r"month=(\d{2})")


@dataclass
class MigrationResult:
    """What one run of :func:`migrate` did. Keys are relative to the store's root."""

    root: str
    moved: list[str] = field(default_factory=list)  # new keys of the files this run moved (merges included)
    merged: list[str] = field(default_factory=list)  # of those, the ones whose new place held a file already
    quarantined: list[str] = field(default_factory=list)  # unreadable copies set aside while merging
    left: list[str] = field(default_factory=list)  # files that are not the store's, left where they are
    series: list[tuple[str, str]] = field(default_factory=list)  # (symbol, interval) of the files moved

    def to_dict(self) -> dict[str, object]:
        return {
            "root": self.root,
            "exchange": EXCHANGE,
            "moved": self.moved,
            "merged": self.merged,
            "quarantined": self.quarantined,
            "left": self.left,
            "series": [list(s) for s in self.series],
        }

    def line(self) -> str:
        if self.moved:
            names = ", ".join(f"{s} {i}" for s, i in self.series)
            text = f"Moved {_n(len(self.moved), 'file')} of {len(self.series)} series ({names}) to exchange={EXCHANGE}"
            if self.merged:
                text += f"; {len(self.merged)} merged into a file already at the new place"
            if self.quarantined:
                aside = _n(len(self.quarantined), "unreadable copy", "unreadable copies")
                text += f"; {aside} set aside in quarantine/"
            text += f" (store {self.root})."
        else:
            text = f"Nothing to migrate: the store {self.root} holds no files from before exchanges."
        if self.left:
            shown = ", ".join(self.left[:10]) + (f" and {len(self.left) - 10} more" if len(self.left) > 10 else "")
            text += f" Left {_n(len(self.left), 'file')} that {'is' if len(self.left) == 1 else 'are'} not the store's "
            text += f"where {'it is' if len(self.left) == 1 else 'they are'}: {shown}."
        return text


def _n(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


# ------------------------------------------------------------------------------------------ the old layout
def target(key: str) -> str | None:
    """The new key of a store file in the old layout; None for anything else (not the store's: left alone)."""
    parts = key.split("/")
    if parts[0] == sf.KLINES and len(parts) == 6:
        ours = parts[5] == sf.FILE_NAME or sf.TAIL.match(parts[5])
        if ours and _series(parts[1], parts[2]) and _month(parts[3], parts[4]):
            return "/".join([sf.KLINES, f"exchange={EXCHANGE}", *parts[1:]])
    elif parts[0] == sf.META and len(parts) == 2 and parts[1].endswith(GAPS):
        sym, dash, iv = parts[1][: -len(GAPS)].partition("-")
        if dash and _valid(sym, iv):
            return f"{sf.META}/exchange={EXCHANGE}/{parts[1]}"
    elif parts[:2] == [sf.QUARANTINE, sf.KLINES] and len(parts) >= 5 and _series(parts[2], parts[3]):
        return "/".join([sf.QUARANTINE, sf.KLINES, f"exchange={EXCHANGE}", *parts[2:]])
    return None


def _valid(symbol: str, interval: str) -> bool:
    try:
        return sf.check_series(symbol, interval) == (symbol, interval)
    except ConfigError:
        return False


def _series(sym_part: str, iv_part: str) -> bool:
    return sym_part.startswith("symbol=") and iv_part.startswith("interval=") and _valid(sym_part[7:], iv_part[9:])


def _month(year_part: str, month_part: str) -> bool:
    m = _MONTH.fullmatch(month_part)
    return bool(_YEAR.fullmatch(year_part) and m and 1 <= int(m[1]) <= 12)


def _series_of(key: str) -> tuple[str, str]:
    name = key.rsplit("/", 1)[-1]
    if key.startswith(sf.META + "/"):
        sym, _, iv = name[: -len(GAPS)].partition("-")
        return sym, iv
    part = dict(p.split("=", 1) for p in key.split("/")[:-1] if "=" in p)
    return part["symbol"], part["interval"]


def old_keys(root: Path) -> Iterator[str]:
    """Every file where the old layout kept its files (outside ``exchange=`` folders), sorted, lazily: finding the
    first one of a big store reads a few folders, not the whole tree."""
    for area in AREAS:
        try:
            entries = sorted(os.scandir(root / area), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                yield f"{area}/{entry.name}"
            elif not entry.name.startswith("exchange="):
                for dirpath, dirnames, filenames in os.walk(entry.path):
                    dirnames.sort()
                    rel = Path(dirpath).relative_to(root).as_posix()
                    yield from (f"{rel}/{f}" for f in sorted(filenames))


def old_layout_key(storage: Storage) -> str | None:
    """The first store file of ``storage`` in the layout from before exchanges, or None."""
    if isinstance(storage, LocalStorage):
        keys: Iterator[str] = old_keys(storage.root)
    else:  # no folders to walk: a delimited listing of each klines area (only folders other than exchange= are
        # listed further: never every object of the store), and the few bookkeeping files of meta/
        keys = itertools.chain(
            (k for a in AREAS if a != sf.META for n in sf.folders_of(storage, a) if not n.startswith("exchange=")
             for k in storage.list(f"{a}/{n}")),
            (k for k in storage.list(sf.META) if k.count("/") == 1),
        )
    return next((k for k in keys if target(k) is not None), None)


def needs_migration(root: str | Path) -> str | None:
    """The path of the first file under ``root`` in the layout from before exchanges, or None: nothing to migrate."""
    key = old_layout_key(LocalStorage(root))
    return None if key is None else str(Path(root) / key)


def refusal(root: Path | str, key: str) -> DataError:
    """What a Store says about a root that still holds old-layout files."""
    if isinstance(root, str) and root.startswith("s3://"):
        return DataError(
            f"The store {root!r} holds {root + '/' + key!r}, in the layout from before exchanges (no exchange= "
            "level).",
            hint="`xylen collect migrate` works on a local store only: copy the store to a local folder, run "
            "`XYLEN_DATA_URL=<folder> xylen collect migrate` there, and copy the result back.",
        )
    root = Path(root)
    return DataError(
        f"The store {str(root)!r} still holds {str(root / key)!r}, in the layout from before exchanges "
        "(no exchange= level).",
        hint="run `xylen collect migrate`: it moves the files in place to exchange=binance, one at a time, "
        "and can be run again to finish after an interruption.",
    )


# ------------------------------------------------------------------------------------------ the migration
def migrate(
    root: str | Path,
    *,
    on_moved: Callable[[Path], object] | None = None,
    on_wait: Callable[[], object] | None = None,
) -> MigrationResult:
    """Move every old-layout file under ``root`` to ``exchange=binance`` (see the module docstring).

    ``on_moved(path)`` is called with each file's new path once it is moved; ``on_wait()`` once if another
    migration of this store is running (this one then waits for it). Safe to run again at any time: on a store
    with nothing to migrate it takes no lock and writes nothing (it removes the empty old folders a run killed
    after its last move left, if it may)."""
    root = Path(root)
    storage = LocalStorage(root)
    result = MigrationResult(str(root))
    if old_layout_key(storage) is None:
        result.left = list(old_keys(root))
        _prune(root)  # rmdir removes only empty folders: no lock needed, and a read-only store stays as it is
        return result
    with _exclusive(root, on_wait):
        storage.clean_temp()  # a killed run's temp files (their renames never happened)
        series = set()
        for key in list(old_keys(root)):
            new = target(key)
            if new is None:
                result.left.append(key)
                continue
            if _move(storage, key, new, result):
                result.moved.append(new)
                series.add(_series_of(new))
                if on_moved is not None:
                    on_moved(root / new)
        _prune(root)
        result.series = sorted(series)
    return result


@contextlib.contextmanager
def _exclusive(root: Path, on_wait: Callable[[], object] | None) -> Iterator[None]:
    folder = root / LOCK_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fh = open(folder / LOCK_NAME, "a+b")  # noqa: SIM115  (held open while the lock is held)
    except OSError as exc:
        raise storage_error(exc, folder) from None
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("store: another migration of %s is running; waiting for it to finish", root)
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _move(storage: LocalStorage, old: str, new: str, result: MigrationResult) -> bool:
    """Move one file (or merge it into the file already at ``new``); False if it was gone already."""
    src, dst = storage.local_path(old), storage.local_path(new)
    try:
        _makedirs(dst.parent)
        moved: bytes | None = None  # None: linked (src and dst are one file); else the bytes of src merged into dst
        try:
            os.link(src, dst)  # create-if-absent: a taken name is never overwritten
        except FileExistsError:
            moved = _merge(storage, old, new, result)
        except FileNotFoundError:
            if not os.path.lexists(src):
                return False
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            # a file system without hard links: nobody else creates ``dst`` meanwhile (this run holds the
            # migration lock, and every Store refuses the root until no old file is left)
            if os.path.lexists(dst):
                moved = _merge(storage, old, new, result)
            else:
                os.replace(src, dst)
        fsync_dir(dst.parent)  # the new name survives a power cut before the old one is removed
        while True:
            # xylen from before exchanges (a collector still running since the upgrade) replaces a month file or a
            # known-gaps file under this lock: remove the old name only while it holds what reached the new place
            replaceable = old.endswith((f"/{sf.FILE_NAME}", GAPS))  # tails and quarantined files are never replaced
            with storage.lock(old) if replaceable else contextlib.nullcontext():
                try:
                    done = os.path.samefile(src, dst) if moved is None else src.read_bytes() == moved
                    if done:
                        os.unlink(src)
                except FileNotFoundError:
                    done = True
            if done:
                break
            moved = _merge(storage, old, new, result)  # a newer version of the old file: its candles join too
        fsync_dir(src.parent)
    except OSError as exc:
        raise storage_error(exc, dst) from None
    return True


def _makedirs(folder: Path) -> None:
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        fsync_dir(d.parent)


def _merge(storage: LocalStorage, old: str, new: str, result: MigrationResult) -> bytes | None:
    """Put what the old file holds into the file already at ``new``, and return the bytes it merged (None: the two
    names are one file). The caller then removes the old name."""
    src, dst = storage.local_path(old), storage.local_path(new)
    with contextlib.suppress(FileNotFoundError):
        if os.path.samefile(src, dst):
            return None  # a move interrupted between its link and its unlink: only the unlink is left
    data = src.read_bytes()
    stamp = _stamp(src)
    for _ in range(MAX_ATTEMPTS):
        got = storage.read_versioned(new)
        if got is None:  # removed meanwhile: an ordinary move after all
            if storage.put_new(new, data):
                return data
            continue
        if got.data == data:
            return data  # the same bytes (a copy made earlier): nothing to add
        if new not in result.merged:
            result.merged.append(new)
        name = new.rsplit("/", 1)[1]
        if new.startswith(sf.QUARANTINE + "/") or sf.TAIL.match(name):
            _beside(storage, new, data)  # immutable files with unique names: keep both
            return data
        if new.endswith(GAPS):
            merged = _merge_gaps(storage, new, data, stamp, got.data, _stamp(dst), result)
        else:
            merged = _merge_month(storage, new, data, stamp, got.data, _stamp(dst), result)
        if merged is None:
            return data
        try:
            storage.swap(new, merged, got.token)
            return data
        except Conflict:
            continue
    raise DataError(f"Gave up merging {str(src)!r} into {str(dst)!r}: it kept changing.", hint="run it again.")


def _merge_month(
    storage: Storage, key: str, old: bytes, old_stamp: str, cur: bytes, cur_stamp: str, result: MigrationResult
) -> bytes | None:
    """The month file that holds both copies' candles (None: keep the current one as it is)."""
    try:
        old_df = sf.decode(old, key)
    except sf.Unreadable:
        _set_aside(storage, key, old, old_stamp, result)
        return None
    try:
        cur_df = sf.decode(cur, key)
    except sf.Unreadable:
        _set_aside(storage, key, cur, cur_stamp, result)
        return old
    merged = sf.newer_wins(old_df, cur_df)  # the copy already at the new place wins a candle both hold
    return None if merged.equals(cur_df) else sf.encode(merged)


def _merge_gaps(
    storage: Storage, key: str, old: bytes, old_stamp: str, cur: bytes, cur_stamp: str, result: MigrationResult
) -> bytes | None:
    old_gaps, cur_gaps = _gaps(old), _gaps(cur)
    if old_gaps is None:
        _set_aside(storage, key, old, old_stamp, result)
        return None
    if cur_gaps is None:  # replaced below by the old file's ranges: its bytes are kept first
        _set_aside(storage, key, cur, cur_stamp, result)
        return orjson.dumps(sf.merge_ranges(old_gaps))
    merged = sf.merge_ranges([*cur_gaps, *old_gaps])
    return None if merged == cur_gaps else orjson.dumps(merged)


def _gaps(data: bytes) -> list[tuple[int, int]] | None:
    """The ranges of a known-gaps file; None if it is not one (the store would read it as no gaps)."""
    try:
        ranges = orjson.loads(data)
        return [(int(a), int(b)) for a, b in ranges] if isinstance(ranges, list) else None
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return None


def _beside(storage: Storage, key: str, data: bytes) -> None:
    """Store ``data`` beside the file at ``key`` under a name derived from its content: a resumed run finds it."""
    tag = hashlib.sha256(data).hexdigest()[:32]
    folder, name = key.rsplit("/", 1)
    tail = sf.TAIL.match(name)
    other = f"{folder}/tail-{tail[1]}-{tail[2]}-{tag}.parquet" if tail else f"{key}-{tag[:8]}"
    if not storage.put_new(other, data) and storage.read(other) != data:
        raise DataError(
            f"Cannot keep {key!r} beside a different file of the same name: {other!r} is taken.",
            hint="move one of them out of the store by hand and run `xylen collect migrate` again.",
        )


def _set_aside(storage: Storage, key: str, data: bytes, stamp: str, result: MigrationResult) -> None:
    """An unreadable copy to quarantine/ under the time of its last change: a resumed run names it the same."""
    target_key, n = f"{sf.QUARANTINE}/{key}.{stamp}", 0
    while not storage.put_new(target_key, data):
        if storage.read(target_key) == data:
            break  # set aside by an interrupted run
        n += 1
        target_key = f"{sf.QUARANTINE}/{key}.{stamp}-{n}"
    if target_key not in result.quarantined:
        result.quarantined.append(target_key)
    log.warning("store: a copy of %s is unreadable; moved it to %s (nothing deleted)", key, target_key)


def _stamp(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _prune(root: Path) -> None:
    """Remove the old layout's folders that the moves emptied (a folder with a foreign file in it stays)."""
    for area in AREAS:
        try:
            entries = [e for e in os.scandir(root / area) if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.name.startswith("exchange="):
                continue
            for dirpath, _, _ in os.walk(entry.path, topdown=False):
                with contextlib.suppress(OSError):  # not empty: something that is not the store's is in it
                    os.rmdir(dirpath)
                    fsync_dir(Path(dirpath).parent)
