"""The readiness board of `xylen serve --workers N` with fake pids: ready only when every one of the N live workers
is; a dead or replaced worker stops counting at once; files are never read half-written; the folder is re-read only
when it changed; and the routes answer from it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from xylen.serve.readyboard import ReadyBoard, forget, process_alive, start_time

pytestmark = pytest.mark.unit
MODEL = "btcusdt-5m"
LOADING = "model 'btcusdt-5m' is not loaded: loading"


class Pids:
    """Which fake pids are alive, with the start time each was started at."""

    def __init__(self) -> None:
        self.running: dict[int, float] = {}

    def alive(self, pid: int, started: float) -> bool:
        return self.running.get(pid) == started


def board(folder: Path, pids: Pids, pid: int, workers: int = 2, started: float = 1.0) -> ReadyBoard:
    pids.running[pid] = started
    return ReadyBoard(folder, workers, pid=pid, started=started, alive=pids.alive, clock_ns=lambda: 10**30)


def test_ready_only_when_every_live_worker_is(tmp_path: Path) -> None:
    pids = Pids()
    a = board(tmp_path, pids, 101)
    a.publish(None, ("btcusdt-5m",))
    # the other worker has not started (no file): not ready, and the reason says how many run
    assert a.reason(None, ("btcusdt-5m",)) == (
        "1 of 2 worker processes are running; waiting for the others to start and load their models (a killed "
        "worker's replacement included)"
    )
    b = board(tmp_path, pids, 102)
    b.publish(LOADING, ())
    assert a.reason(None, ("btcusdt-5m",)) == f"worker 102 is not ready: {LOADING}"  # names the worker still loading
    assert b.reason(LOADING, ()) == LOADING  # its own reason first
    assert a.missing("btcusdt-5m") == 102 and b.missing("btcusdt-5m") is None
    b.publish(None, ("btcusdt-5m",))
    assert a.reason(None, ("btcusdt-5m",)) is None and b.reason(None, ("btcusdt-5m",)) is None
    assert a.missing("btcusdt-5m") is None
    assert a.reason("shutting down", ("btcusdt-5m",)) == "shutting down"  # this worker's own state always counts


def test_a_worker_says_ready_to_the_others_before_it_answers_ready(tmp_path: Path) -> None:
    """Readiness never flaps: a worker that has just loaded answers a probe before its publishing thread has run;
    the others must agree with it from then on."""
    pids = Pids()
    a, b = board(tmp_path, pids, 101), board(tmp_path, pids, 102)
    a.publish("loading models", ())
    b.publish(None, ("m",))
    assert b.reason(None, ("m",)) == "worker 101 is not ready: loading models"
    assert a.reason(None, ("m",)) is None  # a's holder is ready now: a probe reaches a first
    assert b.reason(None, ("m",)) is None  # and b agrees at once
    assert a.reason("shutting down", ("m",)) == "shutting down"
    assert b.reason(None, ("m",)) == "worker 101 is not ready: shutting down"


def test_a_killed_worker_stops_counting_at_once_and_its_replacement_holds_readiness(tmp_path: Path) -> None:
    pids = Pids()
    a, b = board(tmp_path, pids, 101), board(tmp_path, pids, 102)
    a.publish(None, ("m",))
    b.publish(None, ("m",))
    assert a.reason(None, ("m",)) is None
    del pids.running[102]  # killed: its file still says ready, nobody has removed it yet
    assert a.reason(None, ("m",)) is not None and "1 of 2 worker processes are running" in a.reason(None, ("m",))  # type: ignore[operator]
    c = board(tmp_path, pids, 103)  # the supervisor's replacement, loading
    c.publish("loading models", ())
    assert a.reason(None, ("m",)) == "worker 103 is not ready: loading models"
    c.publish(None, ("m",))
    assert a.reason(None, ("m",)) is None
    forget(tmp_path, 102)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["101.json", "103.json"]
    forget(tmp_path, 102)  # twice: nothing to do


def test_a_reused_pid_is_not_the_worker_that_wrote_the_file(tmp_path: Path) -> None:
    pids = Pids()
    a, b = board(tmp_path, pids, 101), board(tmp_path, pids, 102, started=5.0)
    a.publish(None, ("m",))
    b.publish(None, ("m",))
    pids.running[102] = 9.0  # pid 102 died and the number now belongs to another process
    assert "1 of 2" in (a.reason(None, ("m",)) or "")


def test_more_workers_than_asked_for_do_not_make_up_for_one_not_ready(tmp_path: Path) -> None:
    pids = Pids()
    boards = [board(tmp_path, pids, p, workers=2) for p in (101, 102, 103)]
    for x in boards[:2]:
        x.publish(None, ("m",))
    boards[2].publish("loading models", ())
    assert boards[0].reason(None, ("m",)) == "worker 103 is not ready: loading models"


def test_files_a_worker_did_not_write_are_ignored(tmp_path: Path) -> None:
    pids = Pids()
    a = board(tmp_path, pids, 101, workers=1)
    a.publish(None, ("m",))
    pids.running[102] = 1.0
    (tmp_path / "102.json").write_bytes(b'{"pid": 102, "started": 1.0, "reason": "x", ')  # torn, by hand
    (tmp_path / "103.json").write_bytes(b'{"pid": 102, "started": 1.0, "reason": "x", "models": []}')  # wrong name
    (tmp_path / "104.json").write_bytes(b"[]")
    (tmp_path / ".105.tmp").write_bytes(b'{"pid": 105, "started": 1.0, "reason": "x", "models": []}')
    assert a.reason(None, ("m",)) is None
    assert set(a.entries()) == {101}


def test_the_folder_is_reread_only_when_it_changed_or_changed_too_recently_to_trust(tmp_path: Path) -> None:
    pids = Pids()
    now = [0]
    a = ReadyBoard(tmp_path, 2, pid=101, started=1.0, alive=lambda p, s: True, clock_ns=lambda: now[0])
    b = board(tmp_path, pids, 102)
    a.publish(None, ("m",))
    b.publish(LOADING, ())
    mtime = os.stat(tmp_path).st_mtime_ns
    now[0] = mtime + 10**9  # 1 s after the last change: too recent to trust, re-read every time
    assert a.reason(None, ("m",)) == f"worker 102 is not ready: {LOADING}"
    b.publish(None, ("m",))
    os.utime(tmp_path, ns=(mtime, mtime))  # a rename within the same timestamp tick
    assert a.reason(None, ("m",)) is None  # seen: the folder changed less than 2 s ago
    now[0] = mtime + 3 * 10**9
    assert a.reason(None, ("m",)) is None  # cached now
    b._published = None
    b.publish(LOADING, ())
    os.utime(tmp_path, ns=(mtime, mtime))  # the same mtime, long ago: the cache holds (what the cache is for)
    assert a.reason(None, ("m",)) is None
    os.utime(tmp_path, ns=(mtime + 1, mtime + 1))  # any change of the folder's mtime: read again
    assert a.reason(None, ("m",)) == f"worker 102 is not ready: {LOADING}"


def test_publishing_writes_only_on_change(tmp_path: Path) -> None:
    pids = Pids()
    a = board(tmp_path, pids, 101)
    a.publish("loading models", ())
    inode = os.stat(tmp_path / "101.json").st_ino
    a.publish("loading models", ())
    assert os.stat(tmp_path / "101.json").st_ino == inode  # not rewritten
    a.publish(None, ("m",))
    assert os.stat(tmp_path / "101.json").st_ino != inode


def test_readers_never_see_a_half_written_file(tmp_path: Path) -> None:
    """One worker flips between long states while another reads: every read sees one whole state."""
    writer = ReadyBoard(tmp_path, 2, pid=101, started=1.0, alive=lambda p, s: True)
    reader = ReadyBoard(tmp_path, 2, pid=102, started=1.0, alive=lambda p, s: True)  # the real clock
    reader.publish(None, ("m",))
    writer.publish(None, ("m",))
    assert reader.reason(None, ("m",)) is None
    long = "x" * 200_000
    stop = threading.Event()

    def flip() -> None:
        i = 0
        while not stop.is_set():
            writer.publish(f"{long}{i % 2}" if i % 3 else None, ("m",) if i % 3 == 0 else ())
            i += 1

    t = threading.Thread(target=flip)
    t.start()
    try:
        for _ in range(2000):
            got = reader.reason(None, ("m",))
            assert got is None or got in (f"worker 101 is not ready: {long}0", f"worker 101 is not ready: {long}1")
    finally:
        stop.set()
        t.join(60)


@pytest.mark.skipif(not hasattr(os, "waitid"), reason="needs os.waitid")
def test_real_processes_alive_dead_and_zombie() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        started = start_time(child.pid)
        assert process_alive(child.pid, started)
        assert not process_alive(child.pid, started + 100)  # another process under the same pid
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped yet: a zombie
        assert not process_alive(child.pid, started)
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid, started)


def test_the_routes_answer_from_the_board(served_client: Any, tmp_path: Path) -> None:
    """In process: a server whose board shows another worker still loading says 503 on every readiness route,
    naming it, while /health describes this worker; ready once the other is."""
    st = served_client.app.state
    pids = Pids()
    other = board(tmp_path, pids, 4_000_001)
    st.board = ReadyBoard(tmp_path, 2, pid=os.getpid(), started=start_time(os.getpid()), alive=pids.alive)
    try:
        other.publish("loading models", ())
        r = served_client.get("/health/ready")
        assert r.status_code == 503 and r.json()["error"] == "not ready: worker 4000001 is not ready: loading models"
        assert served_client.get("/readyz").status_code == 503
        assert served_client.get("/v2/health/ready").status_code == 503
        assert served_client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": False}
        assert served_client.get(f"/v2/models/{MODEL}/versions/v0001/ready").status_code == 503
        assert served_client.get("/health").status_code == 200  # this worker's own health
        other.publish(None, (MODEL,))
        assert served_client.get("/health/ready").status_code == 200
        assert served_client.get("/v2/health/ready").status_code == 200
        assert served_client.get(f"/v2/models/{MODEL}/ready").status_code == 200
        assert served_client.get(f"/v2/models/{MODEL}/versions/v0001/ready").json()["ready"] is True
        del pids.running[4_000_001]  # killed
        assert "1 of 2 worker processes" in served_client.get("/health/ready").json()["error"]
    finally:
        st.board = None
    assert served_client.get("/health/ready").status_code == 200  # one process: its own readiness, as before
