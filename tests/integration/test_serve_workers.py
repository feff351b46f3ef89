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
        wait_for(
            lambda: proc.poll() is not None or httpx.get(f"{url}/health/ready").status_code == 200,
            timeout=30,
            what="two workers to become ready",
        )
        assert proc.poll() is None, log.read_text()
        body = {"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_rows(candle_window)}
        with httpx.Client() as client:
            answers = {client.post(f"{url}/predict", json=body).json()["probability"] for _ in range(40)}
        assert len(answers) == 1  # every worker serves the same live model
        text = log.read_text()
        assert text.count("Started server process") == 2
        assert text.count("btcusdt-5m: now serving v0001") == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
