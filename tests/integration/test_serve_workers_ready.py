"""`xylen serve --workers 2` answers readiness for all its workers: while one worker is still loading, the other
(ready) one says 503 naming it, on /health/ready, /readyz, /v2/health/ready and the model's v2 ready route; and a
killed worker's replacement holds readiness at 503 until it has loaded. One worker is held back before it loads by
tests/fakes/held_serve.py (a patch in the test's own entry script, none in xylen)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEY = "ready-board-key-not-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "btcusdt-5m"
HELD = Path(__file__).resolve().parents[1] / "fakes" / "held_serve.py"
PROBES = ("/health/ready", "/readyz", "/v2/health/ready", f"/v2/models/{MODEL}/ready",
          f"/v2/models/{MODEL}/versions/v0001/ready")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_readiness_waits_for_every_worker_and_for_a_killed_workers_replacement(home_copy: Path,
                                                                                tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "hold-0").touch()  # the first worker to arrive waits before loading
    env = {**os.environ, "XYLEN_HOME": str(home_copy), "XYLEN_API_KEYS": KEY, "OMP_NUM_THREADS": "1",
           "XYLEN_TEST_HOLD_DIR": str(hold), "TMPDIR": str(tmp_path)}
    argv = [sys.executable, str(HELD), "serve", "--port", str(port), "--workers", "2"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    answers: Counter[tuple[str, int]] = Counter()

    def probe(path: str = "/health/ready") -> httpx.Response:
        r = httpx.get(f"{url}{path}", headers=AUTH)  # a new connection each time: either worker may answer
        answers[(path, r.status_code)] += 1
        return r

    def up() -> bool:
        try:
            return proc.poll() is not None or probe().status_code in (200, 503)
        except httpx.TransportError:
            return False

    try:
        wait_for(up, timeout=60, what="the server to answer")
        wait_for(lambda: proc.poll() is not None or (log.read_text().count(f"{MODEL}: now serving v0001") == 1
                                                     and (hold / "arrived-1").exists()),
                 timeout=60, what="the second worker to load while the first is held")
        assert proc.poll() is None, log.read_text()
        held = int((hold / "arrived-0").read_text())
        loaded = int((hold / "arrived-1").read_text())

        # the ready worker answers 503 naming the one still loading; no probe anywhere says ready
        named: set[str] = set()
        ready: list[str] = []  # any probe answered ready (wait_for retries on exceptions, so no assert inside)

        def the_ready_worker_names_the_held_one() -> bool:
            for path in PROBES:
                r = probe(path)
                if r.status_code != 503:
                    ready.append(f"{path}: {r.status_code} {r.text}")
                    return True
                if path == "/health/ready":
                    named.add(r.json()["error"])
            return f"not ready: worker {held} is not ready: loading models" in named

        wait_for(the_ready_worker_names_the_held_one, timeout=60, interval=0.001,
                 what=f"worker {loaded} to say that worker {held} is still loading")
        assert not ready, f"ready while worker {held} was still loading: {ready}"
        assert named <= {f"not ready: worker {held} is not ready: loading models", "not ready: loading models"}, named
        assert answers[("/health/ready", 200)] == 0

        # released: both load, every probe says ready
        (hold / "hold-0").unlink()
        wait_for(lambda: probe().status_code == 200, timeout=60, what="readiness once both workers loaded")
        assert log.read_text().count(f"{MODEL}: now serving v0001") == 2
        for _ in range(10):
            for path in PROBES:
                r = probe(path)
                assert r.status_code == 200, (path, r.text)

        # kill one: 503 from the moment it is dead until its replacement has loaded
        (hold / "hold-2").touch()  # the replacement is the third worker to arrive
        os.kill(loaded, signal.SIGKILL)
        wait_for(lambda: _gone(loaded), timeout=60, what="the killed worker to die")
        before = answers[("/health/ready", 200)]

        def replacement_named() -> bool:
            r = probe()
            if r.status_code != 503:
                ready.append(f"{r.status_code} {r.text}")
                return True
            arrived = hold / "arrived-2"
            return arrived.exists() and f"worker {int(arrived.read_text() or 0)} is not ready" in r.text

        wait_for(replacement_named, timeout=60, interval=0.001, what="the survivor to name the loading replacement")
        assert not ready, f"ready after worker {loaded} was killed, before its replacement loaded: {ready}"
        replacement = int((hold / "arrived-2").read_text())
        assert replacement not in (held, loaded)
        for _ in range(10):
            for path in PROBES:
                r = probe(path)
                assert r.status_code == 503, (path, r.text)
        assert answers[("/health/ready", 200)] == before
        (hold / "hold-2").unlink()
        wait_for(lambda: probe().status_code == 200, timeout=60, what="readiness once the replacement loaded")
        assert log.read_text().count(f"{MODEL}: now serving v0001") == 3
    except BaseException:
        print(log.read_text()[-4000:])
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
