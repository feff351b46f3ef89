"""The retrain lock: one holder per XYLEN_HOME, released by the kernel, handed to a child by file descriptor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from xylen.core.errors import ConfigError
from xylen.core.runlock import RunLock, describe

pytestmark = pytest.mark.unit


def test_one_holder_at_a_time_and_the_record_names_it(tmp_path: Path) -> None:
    a, b = RunLock(tmp_path), RunLock(tmp_path)
    assert a.try_acquire(by="cli", job_id="j1", models=["btcusdt-5m"])
    assert not b.try_acquire(by="cli")
    held = b.holder()
    assert held is not None and held["pid"] == os.getpid() and held["job_id"] == "j1"
    assert describe(held).startswith("job j1 (pid ")
    a.release()
    assert b.holder() is None and b.try_acquire(by="cli")
    b.release()


def test_a_child_adopting_the_lock_holds_it_after_the_parent_lets_go_and_is_named_in_the_record(
    tmp_path: Path,
) -> None:
    lock = RunLock(tmp_path)
    assert lock.try_acquire(by="server", job_id="j2")
    code = (
        "import sys, time; from pathlib import Path; from xylen.core.runlock import RunLock; "
        "l = RunLock(Path(sys.argv[1])); l.adopt(int(sys.argv[2])); print('adopted', flush=True); "
        "sys.stdin.readline()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path), str(lock.fileno())],
        pass_fds=(lock.fileno(),),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"adopted"
        lock.close_handle()  # the parent's handle goes; the child's inherited one keeps the lock
        other = RunLock(tmp_path)
        assert not other.try_acquire(by="cli")
        record = orjson.loads((tmp_path / "locks" / "retrain.holder.json").read_bytes())
        assert record["pid"] == child.pid and record["job_id"] == "j2"
    finally:
        child.kill()
        child.wait()
    assert RunLock(tmp_path).holder() is None  # the kernel released it with the child


@pytest.mark.parametrize("fd", [9999, 0])
def test_adopt_refuses_a_descriptor_that_is_not_the_held_lock(tmp_path: Path, fd: int) -> None:
    RunLock(tmp_path)._open().close()
    with pytest.raises(ConfigError, match=f"--lock-fd {fd}"):
        RunLock(tmp_path).adopt(fd)
