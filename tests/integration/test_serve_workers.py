"""`xylen serve --workers 2`: several uvicorn worker processes on one socket, each serving the live model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import binance_rows, free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_workers_serve_and_stop_on_sigterm(home_copy: Path, candle_window: np.ndarray, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "XYLEN_HOME": str(home_copy), "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xylen", "serve", "--port", str(port), "--workers", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        # each worker loads its models after it starts accepting (readiness says 503 meanwhile): wait for both
        wait_for(
            lambda: proc.poll() is not None or log.read_text().count("btcusdt-5m: now serving v0001") == 2,
            timeout=30,
            what="both workers to load the model",
        )
        assert proc.poll() is None, log.read_text()
        body = {"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_rows(candle_window)}
        with httpx.Client() as client:
            replies = [client.post(f"{url}/predict", json=body) for _ in range(40)]
        assert [r.status_code for r in replies] == [200] * 40, [r.text for r in replies if r.status_code != 200]
        answers = {r.json()["probability"] for r in replies}
        assert len(answers) == 1  # every worker serves the same live model
        assert log.read_text().count("Started server process") == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
