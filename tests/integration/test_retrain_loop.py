"""`xylen retrain --loop` as a service runs it: TRAINING_INTERVAL, one line per run, SIGTERM, the memory cap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from tests.conftest import wait_for
from tests.helpers import retrain_home
from xylen.core.registry import Registry
from xylen.core.runlock import RunLock

pytestmark = pytest.mark.integration
NAME = "btcusdt-1h"


class Proc:
    """A loop subprocess whose stdout lines are collected by a thread (so a test can wait for the Nth line)."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.p = subprocess.Popen(
            [sys.executable, "-m", "xylen", "--home", str(home), "retrain", "--loop", *args],
            env=os.environ | {"XYLEN_RETRAIN_HOLDOUT": "500"} | (env or {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def runs(self) -> list[dict]:
        return [orjson.loads(x) for x in self.lines if x.startswith("{")]

    def stop(self) -> int:
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout=60)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    retrain_home(h, new_rows=1200)
    return h


def test_the_loop_honours_training_interval_logs_each_run_and_stops_on_sigterm(home: Path) -> None:
    loop = Proc(home, "--json", env={"TRAINING_INTERVAL": "1"})
    try:
        wait_for(lambda: len(loop.runs()) >= 2, timeout=120, what="two runs of the loop")
    finally:
        code = loop.stop()
    assert code == 0
    first, second = loop.runs()[:2]
    assert first["results"][0]["outcome"] == "promoted" and first["peak_rss_mb"] > 50
    assert second["results"][0]["outcome"] == "nothing_new"
    assert first["run"] == 1 and second["run"] == 2
    logged = (home / "logs" / "retrain.jsonl").read_text().splitlines()
    assert len(logged) >= 2 and orjson.loads(logged[0])["results"][0]["outcome"] == "promoted"
    assert Registry(home / "models").current(NAME).version == "v0002"  # type: ignore[union-attr]


def test_a_text_log_line_per_run(home: Path) -> None:
    loop = Proc(home, "--interval", "1h")
    try:
        wait_for(lambda: any("retrain run 1:" in x for x in loop.lines), timeout=120, what="a log line")
    finally:
        assert loop.stop() == 0
    (line,) = [x for x in loop.lines if "retrain run 1:" in x]
    assert f"{NAME} promoted v0002" in line and "peak" in line and "MB" in line
    assert any("every 3600 s" in x for x in loop.lines)


def test_sigterm_during_a_run_aborts_it_without_leaving_anything_half_written(home: Path) -> None:
    loop = Proc(home, "--json", env={"TRAINING_INTERVAL": "3600"})
    try:
        # the run holds the retrain lock while it works: stop it then
        wait_for(lambda: RunLock(home).holder() is not None or loop.runs(), timeout=120, what="a run to start")
    finally:
        code = loop.stop()
    assert code == 0
    assert [r["exit_code"] for r in loop.runs()] in ([130], [0])  # aborted (or, rarely, done before the signal)
    reg = Registry(home / "models")
    ptr = reg.current(NAME)
    assert ptr is not None
    reg.verify(NAME, ptr.version)
    for v in reg.versions(NAME):
        reg.verify(NAME, v)  # every visible version is whole
    wait_for(lambda: RunLock(home).holder() is None, what="the lock to be released")
    tmp = home / "models" / ".tmp"
    assert not tmp.exists() or not any(tmp.iterdir())


def test_a_run_over_the_memory_cap_is_stopped_and_the_loop_goes_on(home: Path) -> None:
    loop = Proc(home, "--json", env={"TRAINING_INTERVAL": "1", "LGBM_MAX_MEMORY_GB": "0.06"})
    try:
        wait_for(lambda: len(loop.runs()) >= 2, timeout=120, what="two runs")
    finally:
        assert loop.stop() == 0
    run = loop.runs()[0]
    assert run["status"] == "error" and "memory cap of 0.06 GB" in run["message"]
    assert Registry(home / "models").current(NAME).version == "v0001"  # type: ignore[union-attr]


def test_an_unwritable_home_stops_the_loop_at_once(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("not a folder")
    p = subprocess.run(
        [sys.executable, "-m", "xylen", "--home", str(f), "retrain", "--loop"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "Cannot write to" in p.stderr and "Traceback" not in p.stderr
