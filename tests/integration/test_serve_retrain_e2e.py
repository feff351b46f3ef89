"""POST /retrain end to end: a real `xylen serve --workers 2` on a registry whose store holds 1,200 candles the
live model never saw; POST /retrain runs the real `xylen retrain` in a child, the candidate is promoted, and every
worker's /predict answers with the new version through the hot swap. Also: any worker answers for the job, and
/metrics shows the per-model gauges once and counts the job once across workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, wait_for
from tests.helpers import BTC_1H, retrain_home

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "btcusdt-1h"


def predict_body(rows: int = 100) -> dict[str, Any]:
    from xylen.core.candles import read_candles

    frame = read_candles(BTC_1H).frame.tail(rows)
    candles = [[int(r["open_time"]), r["open"], r["high"], r["low"], r["close"], r["volume"]]
               for r in frame.iter_rows(named=True)]
    return {"symbol": "BTCUSDT", "timeframe": "1h", "candles": candles}


def samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]


def test_post_retrain_promotes_and_every_worker_swaps_to_the_new_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    retrain_home(home)
    port = free_port()
    log = tmp_path / "serve.log"
    # the child reads its settings as `xylen retrain` does: this holdout fits the 1,200 new 1h candles
    env = {**os.environ, "XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path),
           "XYLEN_RETRAIN_HOLDOUT": "500"}
    argv = [sys.executable, "-m", "xylen", "serve", "--port", str(port), "--workers", "2"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    body = predict_body()
    try:
        wait_for(lambda: proc.poll() is not None or log.read_text().count(f"{MODEL}: now serving v0001") == 2,
                 timeout=90, what="both workers to load v0001")
        assert proc.poll() is None, log.read_text()
        assert httpx.post(f"{url}/predict", json=body).json()["model_version"] == "v0001"

        r = httpx.post(f"{url}/retrain", headers={"content-type": "application/json"}, timeout=300)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["status"] == "success" and answer["samples_used"] > 1000, answer
        (res,) = answer["results"]
        assert res["name"] == MODEL and res["outcome"] == "promoted" and res["candidate_version"] == "v0002"

        # every worker swaps it in: 20 answers in a row (new connections, either worker) from v0002
        def all_new() -> bool:
            return all(httpx.post(f"{url}/predict", json=body).json()["model_version"] == "v0002" for _ in range(20))

        wait_for(all_new, timeout=60, what="every worker to serve v0002")
        for _ in range(10):  # whichever worker answers knows the job (records are files)
            job = httpx.get(f"{url}/retrain/{answer['job_id']}").json()
            assert job["state"] == "succeeded" and job["exit_code"] == 0 and job["result"]["results"][0]["outcome"]

        text = httpx.get(f"{url}/metrics").text
        assert samples(text, "xylen_model_stale") == [f'xylen_model_stale{{model="{MODEL}"}} 0.0']
        assert len(samples(text, "xylen_model_age_seconds")) == 1
        assert samples(text, "xylen_retrain_jobs_total") == ['xylen_retrain_jobs_total{outcome="succeeded"} 1.0']
        health = httpx.get(f"{url}/health").json()
        assert health["stale"] is False and health["stale_models"] == [] and health["model_version"] == "v0002"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_sigterm_aborts_a_running_retrain_and_the_waiting_post_gets_its_answer(tmp_path: Path) -> None:
    import threading

    from xylen.core.registry import Registry
    from xylen.core.runlock import RunLock

    home = tmp_path / "home"
    retrain_home(home)
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1", "XYLEN_RETRAIN_HOLDOUT": "500"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    answers: list[httpx.Response] = []
    try:
        wait_for(lambda: httpx.get(f"{url}/health/ready").status_code == 200, timeout=90, what="readiness")
        post = threading.Thread(target=lambda: answers.append(
            httpx.post(f"{url}/retrain", headers={"content-type": "application/json"}, timeout=300)))
        post.start()
        jobs = home / "retrain" / "jobs"
        wait_for(lambda: any(orjson_pid(p) for p in jobs.glob("*.json")) if jobs.exists() else False,
                 what="the retrain child to start")
        os.killpg(proc.pid, signal.SIGTERM)  # the server's group only: the child has a session of its own
        post.join(timeout=120)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    (r,) = answers
    (record,) = [orjson_load(p) for p in (home / "retrain" / "jobs").glob("*.json")]
    if r.status_code == 200:  # the retrain had finished its last step when the signal came: nothing to abort
        assert record["state"] == "succeeded"
    else:
        assert r.status_code == 503 and "aborted" in r.json()["error"], r.text
        # 130: the retrain unwound on SIGTERM; -15: the signal came while the child was still starting
        assert record["state"] == "aborted" and record["exit_code"] in (130, -signal.SIGTERM), record
        assert Registry(home / "models").current(MODEL).version == "v0001"  # type: ignore[union-attr]
    assert RunLock(home).holder() is None  # the child is gone and so is its lock


def orjson_load(path: Path) -> dict[str, Any]:
    import orjson

    return orjson.loads(path.read_bytes())  # type: ignore[no-any-return]


def orjson_pid(path: Path) -> int | None:
    try:
        return orjson_load(path).get("pid")
    except ValueError:
        return None  # being replaced
