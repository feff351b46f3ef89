"""`xylen serve --workers 2`: two uvicorn worker processes on one socket. Every worker answers (a new connection
per request; /health names the pid), no worker's environment holds the API key, /metrics counts the requests of
both whichever answers and shows the live version across a killed worker and a hot swap, and SIGTERM with
--drain-seconds makes every worker fail readiness while it keeps serving."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from tests.builders import build_bundle
from tests.conftest import binance_rows, free_port, wait_for
from xylen.core.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEY = "workers-key-4b1d-not-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "btcusdt-5m"


def _sample(text: str, series: str) -> float:
    """The value of one exposition line, e.g. 'xylen_http_requests_total{route="/health",status="200"}'."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in /metrics:\n{text[:3000]}")


def test_two_workers_answer_keep_keys_out_of_env_sum_metrics_and_drain(
    home_copy: Path, candle_window: np.ndarray, tmp_path: Path
) -> None:
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs Linux /proc")
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "XYLEN_HOME": str(home_copy), "XYLEN_API_KEYS": KEY, "OMP_NUM_THREADS": "1",
           "TMPDIR": str(tmp_path)}  # the metrics folder: under pytest's tmp_path even if the test kills the server
    argv = [sys.executable, "-m", "xylen", "serve", "--port", str(port), "--workers", "2", "--drain-seconds", "600"]
    with open(log, "wb") as out:  # a session of its own: on failure the whole group is killed, workers too
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        # each worker loads its models after it starts accepting (readiness says 503 meanwhile): wait for both
        wait_for(
            lambda: proc.poll() is not None or log.read_text().count(f"{MODEL}: now serving v0001") == 2,
            timeout=60,
            what="both workers to load the model",
        )
        assert proc.poll() is None, log.read_text()

        # every worker answers: a new connection per request, the pid in /health tells them apart
        served_health: Counter[int] = Counter()

        def answering(version: str = "v0001") -> set[int]:
            """Poll /health on new connections until two worker pids have answered with ``version`` live."""
            seen: set[int] = set()

            def check() -> bool:
                r = httpx.get(f"{url}/health", headers=AUTH)  # a new connection each time
                if r.status_code == 200:
                    served_health[r.json()["pid"]] += 1
                    if r.json()["model_version"] == version:
                        seen.add(r.json()["pid"])
                return len(seen) == 2

            wait_for(check, timeout=60, interval=0.001, what=f"a reply with {version} from each worker")
            return seen

        workers = answering()
        family = {p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)}
        assert workers <= set(family), (workers, family)

        # no process of the server holds the key in its environment (/proc/<pid>/environ is readable by the
        # same user); the parent got it from its caller, which is the caller's choice
        metrics_dirs = set()
        for pid in family:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                continue  # a short-lived verify child that has finished
            assert KEY.encode() not in environ, f"the API key is in the environment of pid {pid}"
            if pid in workers:
                found = re.search(rb"(?:^|\0)PROMETHEUS_MULTIPROC_DIR=([^\0]+)", environ)
                assert found, "the workers run without prometheus_client's multiprocess directory"
                metrics_dirs.add(found.group(1).decode())
        (metrics_dir,) = metrics_dirs
        assert Path(metrics_dir).is_dir() and Path(metrics_dir).stat().st_mode & 0o077 == 0  # private

        body = {"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_rows(candle_window)}
        replies = [httpx.post(f"{url}/predict", json=body, headers=AUTH) for _ in range(12)]
        assert [r.status_code for r in replies] == [200] * 12, [r.text for r in replies if r.status_code != 200]
        assert len({r.json()["probability"] for r in replies}) == 1  # every worker serves the same live model

        # /metrics sums the workers: both answered /health, and whichever renders counts every one of them. A worker
        # counts a request after sending its answer, so wait until the last ones are counted, then check each render
        def counted() -> bool:
            text = httpx.get(f"{url}/metrics", headers=AUTH).text
            health = _sample(text, 'xylen_http_requests_total{route="/health",status="200"}')
            return health == sum(served_health.values()) and _sample(
                text, 'xylen_http_requests_total{route="/predict",status="200"}'
            ) == 12

        wait_for(counted, timeout=60, what="both workers' counts in /metrics")
        for _ in range(4):
            text = httpx.get(f"{url}/metrics", headers=AUTH).text
            assert _sample(text, 'xylen_http_requests_total{route="/health",status="200"}') == sum(
                served_health.values()
            ), served_health
            assert _sample(text, 'xylen_http_requests_total{route="/predict",status="200"}') == 12
            predictions = [ln for ln in text.splitlines() if ln.startswith(f'xylen_predictions_total{{model="{MODEL}"')]
            assert sum(float(ln.rsplit(" ", 1)[1]) for ln in predictions) == 12, predictions
            assert _sample(text, f'xylen_model_swaps_total{{model="{MODEL}",result="accepted"}}') == 2
            assert _sample(text, f'xylen_model_info{{model="{MODEL}",version="v0001"}}') == 1
            assert _sample(text, f'xylen_model_version{{model="{MODEL}"}}') == 1
            assert _sample(text, f'xylen_model_loaded_age_seconds{{model="{MODEL}"}}') >= 0
        assert log.read_text().count("Started server process") == 2

        # a killed worker is replaced; its gauges stop counting (the parent marks it dead), its counters stay
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        workers = wait_for(lambda: (lambda w: killed not in w and w)(answering()), timeout=60, what="a replacement")
        version = build_bundle(Registry(home_copy / "models"), MODEL, rounds=8, rows=1500, seed=3)
        assert version == "v0002"
        assert answering(version) == workers  # both swapped
        wait_for(
            lambda: _sample(httpx.get(f"{url}/metrics", headers=AUTH).text,
                            'xylen_http_requests_total{route="/health",status="200"}') == sum(served_health.values()),
            timeout=60, what="the last /health answers counted",
        )
        text = httpx.get(f"{url}/metrics", headers=AUTH).text
        assert _sample(text, f'xylen_model_info{{model="{MODEL}",version="v0002"}}') == 1
        assert 'version="v0001"' not in text, "a version no live worker serves is still shown"
        assert _sample(text, f'xylen_model_version{{model="{MODEL}"}}') == 2
        # 2 first loads + the replacement's + 2 swaps, the killed worker's included
        assert _sample(text, f'xylen_model_swaps_total{{model="{MODEL}",result="accepted"}}') == 5
        assert _sample(text, 'xylen_http_requests_total{route="/health",status="200"}') == sum(
            served_health.values()
        )

        # SIGTERM with --drain-seconds: every worker fails readiness and still serves
        proc.send_signal(signal.SIGTERM)
        draining: set[int] = set()

        def every_worker_draining() -> bool:
            r = httpx.get(f"{url}/health", headers=AUTH)
            if r.status_code == 503 and r.json()["reason"] == "shutting down":
                draining.add(r.json()["pid"])
            return draining == workers

        wait_for(every_worker_draining, timeout=60, interval=0.001, what="readiness to fail in both workers")
        assert httpx.get(f"{url}/health/ready").status_code == 503  # a keyless probe sees it too
        assert httpx.post(f"{url}/predict", json=body, headers=AUTH).status_code == 200  # still serving
        assert proc.poll() is None  # 600 s of drain to go
        # a second SIGTERM ends the drain at once; the parent exits 0 and removes the metrics directory
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
        assert not Path(metrics_dir).exists()
        assert KEY not in log.read_text()
    except BaseException:
        print(log.read_text()[-4000:])
        raise
    finally:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited; reaping is init's business
    except psutil.NoSuchProcess:
        return True


def test_workers_stop_when_the_supervisor_is_killed(home_copy: Path, tmp_path: Path) -> None:
    """kill -9 of the parent (OOM killer, a stuck deploy): the workers must not serve on unsupervised."""
    port = free_port()
    log = tmp_path / "serve.log"
    # TMPDIR: the metrics folder a killed parent cannot remove lands in pytest's tmp_path
    env = {**os.environ, "XYLEN_HOME": str(home_copy), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    argv = [sys.executable, "-m", "xylen", "serve", "--port", str(port), "--workers", "2"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(
            lambda: proc.poll() is not None or log.read_text().count(f"{MODEL}: now serving v0001") == 2,
            timeout=60,
            what="both workers to load the model",
        )
        workers = [c.pid for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2, workers
        proc.kill()
        proc.wait()
        wait_for(lambda: all(_gone(pid) for pid in workers), timeout=60, what="the orphaned workers to stop")
        assert "is gone: stopping this worker" in log.read_text()
    except BaseException:
        print(log.read_text()[-4000:])
        raise
    finally:
        _kill_group(proc)
