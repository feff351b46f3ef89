"""One retrain at a time per XYLEN_HOME, across processes: `xylen retrain` (once or --loop) and `POST /retrain`.

The lock is an ``flock`` on ``XYLEN_HOME/locks/retrain.lock``: the kernel releases it when its holder exits, however
it exits (kill -9 included), so a crashed trainer never blocks the next one. Beside it, ``retrain.holder.json`` says
who holds it (pid, job id, models, start time) so that a refused caller can name the running job; that file is
informative only: whether the lock is held is always asked of the kernel.

A server hands the lock to the child that runs a job: it takes the lock, writes the holder record with the job id,
and passes the open file to the child (``--lock-fd``); a ``flock`` belongs to the open file, which parent and child
then share, so there is no moment between the server's check and the child's start when a second job could slip in.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Any

import orjson

from xylen.core.errors import ConfigError
from xylen.core.storage import storage_error

LOCK_FILE = "retrain.lock"
HOLDER_FILE = "retrain.holder.json"
PROBE_RETRIES = 5
_FD_HINT = "--lock-fd is how `xylen serve` hands its lock to a retrain job; leave it out."


class RunLock:
    def __init__(self, home: Path) -> None:
        self.dir = Path(home) / "locks"
        self.path = self.dir / LOCK_FILE
        self.holder_path = self.dir / HOLDER_FILE
        self._fh: Any = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def _open(self) -> Any:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            return open(self.path, "a+b")  # noqa: SIM115  (kept open while the lock is held)
        except OSError as exc:
            raise storage_error(exc, self.dir) from None

    def try_acquire(self, **holder: Any) -> bool:
        """Take the lock without waiting; False if another process holds it. ``holder`` goes into the record."""
        if self._fh is not None:
            return True
        fh = self._open()
        for attempt in range(PROBE_RETRIES):
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == PROBE_RETRIES - 1:
                    fh.close()
                    return False
                time.sleep(0.01)  # perhaps only holder()'s probe, which holds it for microseconds
        self._fh = fh
        self._write_holder(holder)
        return True

    def acquire(self, timeout: float, **holder: Any) -> bool:
        """Wait up to ``timeout`` seconds for the lock (polling: flock has no timeout)."""
        deadline = time.monotonic() + timeout
        while not self.try_acquire(**holder):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def adopt(self, fd: int) -> None:
        """Hold the lock through ``fd``, an open file a parent passed us after taking the lock on it."""
        try:
            st, want = os.fstat(fd), os.stat(self.path)
        except OSError:
            raise ConfigError(f"--lock-fd {fd} is not an open file.", hint=_FD_HINT) from None
        if (st.st_dev, st.st_ino) != (want.st_dev, want.st_ino):
            raise ConfigError(f"--lock-fd {fd} is not {str(self.path)!r}.", hint=_FD_HINT)
        fh = os.fdopen(fd, "a+b")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # already ours (same open file): a no-op check
        except BlockingIOError:
            fh.close()
            raise ConfigError(
                f"--lock-fd {fd} does not hold the retrain lock.", hint="--lock-fd is for xylen serve only."
            ) from None
        self._fh = fh
        with contextlib.suppress(ConfigError):  # the record names the process doing the work from now on
            self._write_holder(self._read_holder() | {"pid": os.getpid()})

    def fileno(self) -> int:
        if self._fh is None:
            raise RuntimeError("the lock is not held")
        return int(self._fh.fileno())

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        with contextlib.suppress(OSError):
            self.holder_path.unlink()
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()

    def close_handle(self) -> None:
        """Close our handle without unlocking: a child that inherited the open file keeps the lock."""
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()

    def _write_holder(self, holder: dict[str, Any]) -> None:
        record = {"pid": os.getpid(), "started_at": time.time()} | holder
        tmp = self.holder_path.with_name(f"{HOLDER_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(orjson.dumps(record))
            os.replace(tmp, self.holder_path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise storage_error(exc, self.holder_path) from None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (None when nobody does); the record may be missing its details ({})."""
        if self._fh is not None:
            return self._read_holder()
        if not self.path.exists():
            return None
        fh = self._open()
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._read_holder()
        else:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return None
        finally:
            fh.close()

    def _read_holder(self) -> dict[str, Any]:
        try:
            got = orjson.loads(self.holder_path.read_bytes())
            return got if isinstance(got, dict) else {}
        except (OSError, orjson.JSONDecodeError):
            return {}

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def describe(holder: dict[str, Any] | None) -> str:
    """'job 3f2a... (pid 123, btcusdt-5m, running 12 s)' for messages that name the running retrain."""
    if not holder:
        return "another retrain"
    parts = [f"pid {holder['pid']}"] if "pid" in holder else []
    if holder.get("models"):
        parts.append(", ".join(map(str, holder["models"])))
    if isinstance(holder.get("started_at"), (int, float)):
        parts.append(f"running {max(0.0, time.time() - holder['started_at']):.0f} s")
    who = f"job {holder['job_id']}" if holder.get("job_id") else f"a {holder.get('by', 'retrain')} run"
    return f"{who} ({'; '.join(parts)})" if parts else who
