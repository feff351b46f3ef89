"""POST /retrain's jobs: `xylen retrain --json` in a child process, one at a time per XYLEN_HOME, with records.

The server never trains: it takes core/runlock.RunLock (so a second job, or a `xylen retrain` run elsewhere, is
refused naming the running one), starts ``python -m xylen --home H retrain ... --json --lock-fd FD`` with the
locked file inherited, and closes its own handle. The child then holds the lock alone: the kernel releases it
when the child exits, however it exits (kill -9 included). The event loop only awaits the child's exit.

Each job has a record, ``XYLEN_HOME/retrain/jobs/<id>.json`` (replaced atomically), so that every worker of
`xylen serve --workers N` answers GET /retrain/<id> for any job and a restart keeps them; the child's stdout (its
one JSON object) and stderr go to ``<id>.out`` / ``<id>.err`` beside it, not to pipes, so a child outlives a
server that dies without losing its answer. A "running" record whose child and server are both gone reads as
"lost" (the server of a finished child, perhaps another worker, may be writing the end that moment).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil

from xylen.core.bundle import now_iso, write_durably
from xylen.core.errors import XylenError
from xylen.core.runlock import RunLock, describe
from xylen.core.storage import storage_error

log = logging.getLogger("xylen.serve")

KEEP_RECORDS = 100
JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex: nothing else is ever joined to a path
STATES = ("running", "succeeded", "failed", "aborted", "lost")
_ENV_DROPPED = ("XYLEN_API_KEYS", "XYLEN_API_KEYS_FILE", "PROMETHEUS_MULTIPROC_DIR")  # the child needs neither
_TAIL = 4096

# child exit code -> HTTP status of a failed job (codes: core/errors.EXIT_CODES; 12 = busy under --strict-exit)
_HTTP_OF_EXIT = {4: 409, 12: 409, 2: 422, 3: 422, 5: 422}

Command = Callable[[Path, "list[str] | None", int], "list[str]"]


def retrain_command(home: Path, names: list[str] | None, lock_fd: int) -> list[str]:
    """The child's argv: the same pipeline as `xylen retrain` (cron, --loop), one JSON object on stdout."""
    which = list(names) if names else ["--all"]
    return [sys.executable, "-m", "xylen", "--home", str(home), "retrain", *which, "--json", "--lock-fd", str(lock_fd)]


def _alive(pid: object, created: object, *, unknown_ok: bool) -> bool:
    """Whether process ``pid`` runs and started at ``created`` (a reused pid is another process: its start time
    differs). ``unknown_ok``: a record without the start time trusts the pid alone. Values come from a file."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        started = psutil.Process(pid).create_time()
    except (psutil.Error, OverflowError):
        return False
    if created is None:
        return unknown_ok
    return isinstance(created, (int, float)) and not isinstance(created, bool) and abs(started - created) < 1.0


def _own_start() -> float | None:
    try:
        return float(psutil.Process().create_time())
    except psutil.Error:
        return None


class Busy(Exception):
    """Another retrain holds the lock; the message names it."""


def well_formed(job_id: str) -> bool:
    return bool(JOB_ID.fullmatch(job_id))


def http_answer(record: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The alpha's shape {status, message, samples_used} (+ job_id, results) for a finished job, and its status:
    200 on success; 409 for a model or registry problem, 422 for bad settings/data/training, 503 when the child
    failed internally, was killed or was aborted. Never 500."""
    got = record.get("result")
    result: dict[str, Any] = got if isinstance(got, dict) else {}
    body: dict[str, Any] = {
        "status": "success" if record["state"] == "succeeded" else "error",
        "message": record.get("message") or "",
        "samples_used": int(result.get("samples_used") or 0),
        "job_id": record["job_id"],
        "results": result.get("results") if isinstance(result.get("results"), list) else [],
    }
    if record["state"] == "succeeded":
        return 200, body
    code = record.get("exit_code")
    status = 503 if record["state"] != "failed" or not isinstance(code, int) else _HTTP_OF_EXIT.get(code, 503)
    return status, {"error": body["message"], "exit_code": code, **body}


class RetrainJobs:
    """The jobs of one server process; records are shared through files with every other process."""

    def __init__(
        self,
        home: Path,
        *,
        command: Command = retrain_command,
        draining: Callable[[], bool] = lambda: False,
        finished: Callable[[str], None] = lambda state: None,
        term_grace: float = 20.0,
    ) -> None:
        self.home = Path(home)
        self.dir = self.home / "retrain" / "jobs"
        self.command = command
        self.draining = draining  # polled while a child runs: SIGTERM drain aborts the job
        self.finished = finished  # metrics: called with the final state
        self.term_grace = term_grace  # SIGTERM -> this long -> SIGKILL
        self._tasks: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._aborting: set[str] = set()

    # -- starting ----------------------------------------------------------------------------------------
    async def start(self, names: list[str] | None, models: list[str]) -> str:
        """Start a job retraining ``names`` (None: every live model, ``models`` for the holder record); returns
        its id. Raises Busy (409) when a retrain runs anywhere on this XYLEN_HOME, XylenError when the home is
        not writable or the child cannot start."""
        job_id = uuid.uuid4().hex
        lock = RunLock(self.home)
        if not await asyncio.to_thread(lock.try_acquire, job_id=job_id, by="server", models=models):
            holder = await asyncio.to_thread(lock.holder)
            self.finished("busy")
            raise Busy(
                f"A retrain is already running: {describe(holder)}. hint: wait for it (GET /retrain/<id> when it "
                "was started here) and try again; one retrain runs at a time per XYLEN_HOME."
            )
        try:
            record = {"job_id": job_id, "state": "running", "models": models, "started_at": now_iso(),
                      "finished_at": None, "exit_code": None, "result": None, "message": "running",
                      "pid": None, "pid_created": None, "server_pid": os.getpid(), "server_created": _own_start()}
            await asyncio.to_thread(self._write, record)
            proc = await self._spawn(job_id, names, lock.fileno())
        except BaseException:
            lock.release()
            raise
        lock.close_handle()  # the child holds the lock now (the same open file); it ends when the child does
        record["pid"] = proc.pid
        with contextlib.suppress(psutil.Error):
            record["pid_created"] = psutil.Process(proc.pid).create_time()
        try:
            await asyncio.to_thread(self._write, record)
        except XylenError as exc:  # the child runs (and may promote) whatever happens: watch it all the same
            log.error("retrain job %s: its record could not be updated: %s", job_id, exc.message)
        log.info("retrain job %s started (pid %d, %s)", job_id, proc.pid, ", ".join(models) or "all models")
        self._procs[job_id] = proc
        self._tasks[job_id] = asyncio.get_running_loop().create_task(self._watch(record, proc))
        return job_id

    async def _spawn(self, job_id: str, names: list[str] | None, fd: int) -> asyncio.subprocess.Process:
        argv = self.command(self.home, names, fd)
        env = {k: v for k, v in os.environ.items() if k.upper() not in _ENV_DROPPED}
        try:
            with open(self._path(job_id, ".out"), "wb") as out, open(self._path(job_id, ".err"), "wb") as err:
                # its own session: a Ctrl-C at the server's terminal reaches the child through our SIGTERM
                # (recorded as "aborted"), not directly
                return await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=(fd,), env=env,
                    start_new_session=True,
                )
        except OSError as exc:
            await asyncio.to_thread(self._finish_unstarted, job_id, exc)
            raise XylenError(
                f"Could not start the retrain child {argv[0]!r}: {exc.strerror or exc}.",
                hint="check that xylen is installed in the server's Python environment.",
            ) from None

    def _finish_unstarted(self, job_id: str, exc: OSError) -> None:
        with contextlib.suppress(OSError, XylenError):
            self._write({**self._read_file(job_id), "state": "failed", "finished_at": now_iso(),
                         "message": f"the retrain child could not start: {exc.strerror or exc}"})
        self.finished("failed")

    # -- running -----------------------------------------------------------------------------------------
    async def _watch(self, record: dict[str, Any], proc: asyncio.subprocess.Process) -> dict[str, Any]:
        job_id = record["job_id"]
        waiter = asyncio.ensure_future(proc.wait())
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=0.25)
                if done:
                    break
                if self.draining() and job_id not in self._aborting:
                    self._abort(job_id, proc)
            final = await asyncio.to_thread(self._conclude, record, proc.returncode)
        finally:
            self._procs.pop(job_id, None)
        self.finished(final["state"])
        return final

    def _abort(self, job_id: str, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM (the retrain aborts cleanly, leaving nothing half-written), SIGKILL after ``term_grace``."""
        self._aborting.add(job_id)
        log.warning("server shutting down: aborting retrain job %s (pid %d)", job_id, proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)

        def kill() -> None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

        asyncio.get_running_loop().call_later(self.term_grace, kill)

    def _conclude(self, record: dict[str, Any], code: int | None) -> dict[str, Any]:
        job_id = record["job_id"]
        result = self._child_json(job_id)
        if job_id in self._aborting and not (code == 0 and result is not None):  # it finished despite the signal
            state = "aborted"
            message = "aborted: the server was shutting down; the retrain was stopped before it finished"
            if result is not None and result.get("results") and result.get("message"):
                # what it settled before the signal (a promotion among it) is true: its message says what
                message = f"aborted: the server was shutting down: {str(result['message'])[:2000]}"
        elif code == 0 and result is not None:
            state, message = "succeeded", str(result.get("message") or "retrain finished")
        elif code == 0:
            state, message = "failed", "the retrain child exited 0 but printed no JSON result (a bug: please report it)"
        else:
            state, message = "failed", self._failure(job_id, code, result)
        final = {**record, "state": state, "finished_at": now_iso(), "exit_code": code, "result": result,
                 "message": message}
        try:
            self._write(final)
        except XylenError as exc:
            log.error("retrain job %s: its record could not be written: %s", job_id, exc.message)
        with contextlib.suppress(OSError):
            self._path(job_id, ".out").unlink()  # in the record now
        log.info("retrain job %s %s (exit %s): %s", job_id, state, code, message)
        self._prune()
        return final

    def _failure(self, job_id: str, code: int | None, result: dict[str, Any] | None) -> str:
        """One sentence for a failed child: its JSON message (+ the first error's hint), else its last stderr
        line, else how it ended."""
        if result is not None:
            msg = str(result.get("message") or "")
            listed = result.get("results")
            results: list[Any] = listed if isinstance(listed, list) else []
            for r in [result, *results]:
                err = r.get("error") if isinstance(r, dict) else None
                if isinstance(err, dict) and err.get("message"):
                    msg = msg or str(err["message"])
                    if err.get("hint"):
                        msg = f"{msg} hint: {err['hint']}"
                    break
            if msg:
                return msg
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return (f"the retrain child was killed by {signal.Signals(-code).name} before it finished; a promotion "
                        "is all or nothing, so the live model is unchanged or fully replaced. hint: run it again "
                        "(POST /retrain or `xylen retrain`).")
        last = self._last_line(job_id)
        return last or (f"the retrain child exited with code {code} without a result. hint: see its log, "
                        f"{self._path(job_id, '.err')}.")

    # -- reading -----------------------------------------------------------------------------------------
    async def wait(self, job_id: str) -> dict[str, Any]:
        """The final record of a job started by this process (shielded: a client that goes away does not stop it)."""
        return await asyncio.shield(self._tasks[job_id])

    def read(self, job_id: str) -> dict[str, Any] | None:
        """A job's record (any process's), None when there is none; "running" with its child and its server gone
        reads "lost"."""
        if not well_formed(job_id):
            return None
        try:
            record = self._read_file(job_id)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            return {"job_id": job_id, "state": "lost", "started_at": None, "finished_at": None, "exit_code": None,
                    "result": None, "message": f"the job's record is unreadable ({str(exc)[:120]})"}
        if record.get("state") == "running" and job_id not in self._tasks and not self._child_alive(record):
            owner = record.get("server_pid")
            if owner != os.getpid() and _alive(owner, record.get("server_created"), unknown_ok=False):
                return record  # its server (another worker) is recording the end right now: not lost
            result = self._child_json(job_id)
            record = {**record, "state": "lost", "result": result,
                      "message": "lost: the server process that ran this job stopped before recording its end"
                      + ("; the child's own result is attached" if result else "")}
        return record

    def _child_alive(self, record: dict[str, Any]) -> bool:
        if _alive(record.get("pid"), record.get("pid_created"), unknown_ok=True):
            return True
        holder = RunLock(self.home).holder()  # the moment between the record and the spawn: the lock says
        return holder is not None and holder.get("job_id") == record.get("job_id")

    def running(self) -> list[str]:
        return list(self._procs)

    # -- shutdown ----------------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Abort every child of this process and record it (lifespan end, when the drain did not already)."""
        for job_id, proc in list(self._procs.items()):
            if job_id not in self._aborting:
                self._abort(job_id, proc)
        tasks = [t for t in self._tasks.values() if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=self.term_grace + 5)

    # -- files -------------------------------------------------------------------------------------------
    def _path(self, job_id: str, suffix: str = ".json") -> Path:
        assert well_formed(job_id)  # every caller checked; this is the one place an id meets the file system
        return self.dir / f"{job_id}{suffix}"

    def _write(self, record: dict[str, Any]) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_durably(self._path(record["job_id"]), orjson.dumps(record, option=orjson.OPT_INDENT_2))
        except OSError as exc:
            raise storage_error(exc, self.dir) from None

    def _read_file(self, job_id: str) -> dict[str, Any]:
        got = orjson.loads(self._path(job_id).read_bytes())
        if not isinstance(got, dict) or got.get("job_id") != job_id or got.get("state") not in STATES:
            raise ValueError("not a job record")
        return got

    def _child_json(self, job_id: str) -> dict[str, Any] | None:
        try:
            got = orjson.loads(self._path(job_id, ".out").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return got if isinstance(got, dict) else None

    def _last_line(self, job_id: str) -> str:
        try:
            with open(self._path(job_id, ".err"), "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - _TAIL))
                tail = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [ln.strip() for ln in tail.splitlines() if ln.strip() and not ln.startswith((" ", "\t"))]
        # the CLI prints "error: ..." then "hint: ..."; a traceback (XYLEN_DEBUG=1) is never passed on
        errors = [ln for ln in lines if ln.startswith(("error:", "hint:"))]
        return " ".join(errors[-2:])[:600] if errors else ""

    def _prune(self) -> None:
        """Keep the newest KEEP_RECORDS records (and their output files)."""
        try:
            records = sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return
        for old in records[: max(0, len(records) - KEEP_RECORDS)]:
            job_id = old.stem
            if not well_formed(job_id) or job_id in self._procs:
                continue
            for suffix in (".json", ".out", ".err"):
                with contextlib.suppress(OSError):
                    self._path(job_id, suffix).unlink()
            self._tasks.pop(job_id, None)
