"""`xylen retrain --loop`: the continuous trainer, one `xylen retrain --json` child process per run.

A child per run because it is the only way to keep three promises at once: the profile's memory cap (the parent
watches the child's RSS and stops a run that passes it, which no in-process check can do to LightGBM's own
allocations), a true peak RSS per run (the child's own maximum, not the loop's lifetime maximum), and a SIGTERM that
aborts a run in progress cleanly (the child unwinds its staging folder and its lock; the loop exits 0, a service's
normal stop). Runs never overlap: each child takes the XYLEN_HOME retrain lock, so a cron run or a server job at the
same moment is reported "busy" by one of them instead of training twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson
import psutil

from xylen.core.runlock import RunLock
from xylen.core.settings import Settings
from xylen.profiles import resolve

POLL_S = 0.1
LOG_FILE = "retrain.jsonl"


def child_args(names: Sequence[str], all_: bool, min_new: int | None, warm: bool) -> list[str]:
    args = list(names)
    if all_:
        args.append("--all")
    if min_new is not None:
        args += ["--min-new-samples", str(min_new)]
    if warm:
        args.append("--warm-start")
    return args


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Loop:
    def __init__(self, settings: Settings, args: list[str], *, echo: Callable[[str], None], as_json: bool) -> None:
        self.settings = settings
        self.args = args
        self.echo = echo
        self.as_json = as_json
        self.stop = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        prof = resolve(settings.profile, max_memory_gb=settings.lgbm_max_memory_gb)
        self.cap_bytes = int(prof.memory_gb * 2**30)
        self.runs = 0

    def request_stop(self, *_: object) -> None:
        self.stop.set()
        child = self.child
        if child is not None and child.poll() is None:
            with contextlib.suppress(OSError):
                child.send_signal(signal.SIGTERM)  # the run unwinds: no half-written bundle, lock released

    def run_once(self) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "xylen", "--home", str(self.settings.home), "retrain", *self.args, "--json"]
        t0 = time.monotonic()
        peak = 0
        over = False
        with tempfile.TemporaryFile() as stdout:
            # the child inherits the environment: it resolves the same settings as this loop
            self.child = child = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.DEVNULL)
            try:
                proc = psutil.Process(child.pid)
                while child.poll() is None:
                    with contextlib.suppress(psutil.Error):
                        rss = proc.memory_info().rss
                        peak = max(peak, rss)
                        if rss > self.cap_bytes and not over:
                            over = True
                            child.kill()  # LightGBM cannot be asked to stop; the staging folder is cleaned next run
                    time.sleep(POLL_S)
            finally:
                if child.poll() is None:
                    child.kill()
                child.wait()
                self.child = None
            stdout.seek(0)
            raw = stdout.read()
        report: dict[str, Any]
        try:
            report = orjson.loads(raw)
            if not isinstance(report, dict):
                raise ValueError
        except ValueError:
            report = {"status": "error", "results": [], "samples_used": 0}
            report["message"] = f"the retrain process ended with exit code {child.returncode} and no report"
        if over:
            report["status"] = "error"
            report["message"] = (
                f"stopped: the run used {peak / 2**20:.0f} MB, over the profile's memory cap of "
                f"{self.cap_bytes / 2**30:g} GB (LGBM_MAX_MEMORY_GB); nothing was promoted by it"
            )
        report["exit_code"] = child.returncode
        reported = float(report.get("peak_rss_mb") or 0.0)
        report["peak_rss_mb"] = round(max(reported, peak / 2**20), 1)
        report["seconds"] = round(time.monotonic() - t0, 2)
        report["at"] = _now()
        return report

    def log(self, report: dict[str, Any]) -> None:
        self.runs += 1
        line = dict(report) | {"run": self.runs}
        if self.as_json:
            self.echo(orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY).decode())
        else:
            parts = [f"{r['name']} {r['outcome']}" + _version(r) for r in report.get("results", [])]
            what = "; ".join(parts) or str(report.get("message", ""))[:300]
            self.echo(
                f"{report['at']} retrain run {self.runs}: {what}; {report['seconds']:.1f} s, "
                f"peak {report['peak_rss_mb']:.0f} MB, exit {report['exit_code']}"
            )
        logs = self.settings.home / "logs"
        with contextlib.suppress(OSError):  # the log file is a convenience; the line above is the record
            logs.mkdir(parents=True, exist_ok=True)
            with open(logs / LOG_FILE, "ab") as fh:
                fh.write(orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")

    def run(self, interval: float) -> int:
        while not self.stop.is_set():
            started = time.monotonic()
            self.log(self.run_once())
            if self.stop.is_set():
                break
            self.stop.wait(max(0.0, interval - (time.monotonic() - started)))
        return 0


def _version(r: dict[str, Any]) -> str:
    if r.get("outcome") == "promoted":
        return f" {r.get('candidate_version')}"
    if r.get("outcome") == "error" and r.get("error"):
        return f" ({str(r['error'].get('message', ''))[:200]})"
    return ""


def run_loop(settings: Settings, args: list[str], *, as_json: bool = False) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code (0: stopped as asked)."""
    RunLock(settings.home)._open().close()  # an unwritable XYLEN_HOME fails now (exit 2), not once per run
    loop = Loop(settings, args, echo=lambda s: print(s, flush=True), as_json=as_json)
    old_term = signal.signal(signal.SIGTERM, loop.request_stop)
    old_int = signal.signal(signal.SIGINT, loop.request_stop)
    try:
        if not as_json:
            print(
                f"{_now()} retrain loop started (pid {os.getpid()}): every {settings.training_interval:g} s, "
                f"memory cap {loop.cap_bytes / 2**30:g} GB",
                flush=True,
            )
        return loop.run(settings.training_interval)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
