"""The alpha's configuration, unchanged: a models.env with MODEL_PATH naming a bare LightGBM text file and
MODEL_TYPE=lightgbm. `xylen serve` starts on it (it used to end in "internal error ... NotADirectoryError"),
answers the alpha's body with the features it sends by name, and stops cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.integration
TOBIAS = Path(__file__).parents[1] / "data" / "models" / "TobiasSaile_ai-trading-bot__lightgbm_model.txt"
NAMES = ["close", "volume", "sma_5", "sma_10", "sma_15", "return", "rsi_14", "bb_middle", "bb_upper", "bb_lower",
         "bb_width", "macd", "momentum"]
ROW = [43000.0, 512.5, 42950.0, 42900.0, 42800.0, 0.0012, 55.2, 42850.0, 43400.0, 42300.0, 0.025, 12.5, 0.8]


def test_the_alphas_models_env_serves_its_model_file(tmp_path: Path) -> None:
    import lightgbm as lgb

    model = tmp_path / "opt" / "trading_model" / "models" / "trading_model.txt"
    model.parent.mkdir(parents=True)
    shutil.copyfile(TOBIAS, model)
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    (home / "models.env").write_text(f"MODEL_PATH={model}\nMODEL_TYPE=lightgbm\nPORT={port}\n")
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XYLEN_") and k not in ("MODEL_PATH", "MODEL_TYPE")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xylen", "--home", str(home), "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or httpx.get(f"{url}/health/ready").status_code == 200, timeout=60,
                 what="the server to load trading_model.txt")
        assert proc.poll() is None, log.read_text()
        body = {"symbol": "BTCUSDT", "timeframe": "5m", "candles": [], "indicators": dict(zip(NAMES, ROW)), "meta": {}}
        r = httpx.post(f"{url}/predict", json=body)
        assert r.status_code == 200, r.text
        want = float(lgb.Booster(model_file=str(model)).predict(np.array([ROW]), num_threads=1)[0])
        assert r.json()["probability"] == want and r.json()["model"] == "trading_model"
        health = httpx.get(f"{url}/health").json()
        assert (health["status"], health["model_type"]) == ("healthy", "lightgbm")
        del body["indicators"]["macd"]
        r = httpx.post(f"{url}/predict", json=body)
        assert r.status_code == 422 and "'macd'" in r.json()["error"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
        assert "internal error" not in log.read_text() and "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
