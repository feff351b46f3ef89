"""Collective readiness for `xylen serve --workers N`: any worker answers ready only when all N live workers are.

Behind one socket a probe reaches whichever worker accepts it, so a worker answering from its own models alone
would say ready while another is still loading (or a killed one's replacement is). Each worker publishes its own
state (its not-ready reason or none, and its live models) as one small file named after its pid in a private
folder the supervisor creates, written to a temporary name and renamed over, so a reader never sees half a file.
A reader re-reads the folder only when its mtime changed (or is too recent to trust: two renames within the
filesystem's timestamp granularity leave the same mtime), and checks on every probe that each worker on the board
is still alive and still the process that wrote its file (pid and start time): a killed worker stops counting at
once, before the supervisor has noticed it, and a reused pid never counts. Fewer live workers than N (one being
restarted, or not yet started) is not ready either.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil

SUFFIX = ".json"
_RACY_NS = 2_000_000_000  # coarse filesystem clocks (1 s on some): a folder changed this recently is re-read


@dataclass(frozen=True)
class Entry:
    pid: int
    started: float  # the process's start time: tells a reused pid apart
    reason: str | None  # None: ready
    models: tuple[str, ...]


def process_alive(pid: int, started: float) -> bool:
    """Is ``pid`` running and the process that started at ``started``? A zombie (killed, not yet reaped) is not."""
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - started) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # gone, or another user's process (not one of ours)
        return False


def start_time(pid: int) -> float:
    return float(psutil.Process(pid).create_time())


class ReadyBoard:
    """One worker's view of the board in ``folder``, shared by ``workers`` worker processes."""

    def __init__(
        self,
        folder: Path,
        workers: int,
        *,
        pid: int | None = None,
        started: float | None = None,
        alive: Callable[[int, float], bool] = process_alive,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.folder = folder
        self.workers = workers
        self.pid = os.getpid() if pid is None else pid
        self.started = start_time(self.pid) if started is None else started
        self._alive = alive
        self._clock_ns = clock_ns
        self._published: tuple[str | None, tuple[str, ...]] | None = None
        self._lock = threading.Lock()
        self._mtime_ns = -1
        self._entries: dict[int, Entry] = {}
        self._known: set[int] = set()  # the pids whose files the last read found

    # -- this worker -----------------------------------------------------------------------------------------
    def publish(self, reason: str | None, models: tuple[str, ...]) -> None:
        """Write this worker's state when it changed (atomically: a temporary file renamed over its file)."""
        state = (reason, models)
        if state == self._published:
            return
        data = orjson.dumps({"pid": self.pid, "started": self.started, "reason": reason, "models": list(models)})
        tmp = self.folder / f".{self.pid}.tmp"
        with self._lock:  # the publishing thread and a probe: one temporary file, one writer at a time
            tmp.write_bytes(data)
            os.replace(tmp, self.folder / f"{self.pid}{SUFFIX}")
            self._published = state

    def publish_every(self, interval: float, state: Callable[[], tuple[str | None, tuple[str, ...]]]) -> None:
        """Publish ``state()`` now and every ``interval`` s from a daemon thread, for the life of the process."""

        def run() -> None:
            while True:
                with contextlib.suppress(OSError):  # the folder is gone: the supervisor is shutting down
                    self.publish(*state())
                time.sleep(interval)

        threading.Thread(target=run, name="xylen-ready-board", daemon=True).start()

    # -- every worker --------------------------------------------------------------------------------------------
    def entries(self) -> dict[int, Entry]:
        """Each worker's last published state, by pid (live or not), re-read only when the folder changed."""
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except OSError:
            return {}
        if mtime == self._mtime_ns and self._clock_ns() - mtime > _RACY_NS:
            return self._entries
        # a listing can miss a file renamed over while it runs (readdir is not atomic with rename): a worker seen
        # before is looked up by name, which is atomic, and a board short of workers is listed again (one that is
        # really gone has no file after forget(), and is not alive before)
        entries: dict[int, Entry] = {}
        for _ in range(3):
            entries.update(self._listed())
            for pid in self._known - entries.keys():
                entry = _read(self.folder / f"{pid}{SUFFIX}")
                if entry is not None:
                    entries[pid] = entry
            if len(entries.keys() | {self.pid}) >= self.workers:
                break
        self._entries, self._mtime_ns, self._known = entries, mtime, set(entries)
        return entries

    def _listed(self) -> dict[int, Entry]:
        entries = {}
        with os.scandir(self.folder) as it:
            for f in it:
                if f.name.endswith(SUFFIX) and not f.name.startswith("."):
                    entry = _read(Path(f.path))
                    if entry is not None:
                        entries[entry.pid] = entry
        return entries

    def live(self) -> list[Entry]:
        """The entries of the workers running now (this one always counts: it is answering)."""
        return sorted(
            (e for e in self.entries().values() if e.pid == self.pid or self._alive(e.pid, e.started)),
            key=lambda e: e.pid,
        )

    def reason(self, own: str | None, models: tuple[str, ...]) -> str | None:
        """Why the server is not ready (``own``: this worker's reason first), naming the worker; None: every one
        of the ``workers`` live workers is ready. This worker's state (``own``, its live ``models``) is published
        first: a worker that answers ready has said so to the others, so once any worker has answered ready,
        every other one answers ready too (the publishing thread alone would lag up to its interval)."""
        with contextlib.suppress(OSError):  # the folder is gone: the supervisor is shutting down
            self.publish(own, models)
        if own is not None:
            return own
        live = self.live()
        for e in live:
            if e.pid != self.pid and e.reason is not None:
                return f"worker {e.pid} is not ready: {e.reason}"
        running = len({e.pid for e in live} | {self.pid})
        if running < self.workers:
            return (
                f"{running} of {self.workers} worker processes are running; waiting for the others to start and "
                "load their models (a killed worker's replacement included)"
            )
        return None

    def missing(self, model: str) -> int | None:
        """A live worker (other than this one) that does not serve ``model`` yet; None when every one does."""
        for e in self.live():
            if e.pid != self.pid and model not in e.models:
                return e.pid
        return None


def forget(folder: Path, pid: int) -> None:
    """Remove a dead worker's file (the supervisor, when it sees the worker gone; readers skip it anyway)."""
    with contextlib.suppress(FileNotFoundError):
        (folder / f"{pid}{SUFFIX}").unlink()


def _read(path: Path) -> Entry | None:
    """An entry, or None for a file that is gone or not one a worker wrote (never a reason to fail a probe)."""
    try:
        obj = orjson.loads(path.read_bytes())
        reason = obj["reason"]
        entry = Entry(
            int(obj["pid"]),
            float(obj["started"]),
            None if reason is None else str(reason),
            tuple(str(m) for m in obj["models"]),
        )
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return entry if path.name == f"{entry.pid}{SUFFIX}" else None
