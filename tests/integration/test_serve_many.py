"""A real `xylen serve` of many markets' models, one of whose files aborts any process that loads it: the server
survives, serves every other model, and names the bad one with the reason in /predict's 503 and readiness."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from tests.builders import publish_copies, window_matrix
from tests.conftest import free_port, wait_for
from tests.unit.test_serve_many import abort_on_load, symbols
from xylen.core.registry import Registry

pytestmark = pytest.mark.integration


def test_a_crashing_model_among_many_is_refused_and_the_rest_are_served(home_copy: Path, sample_candles: object,
                                                                         tmp_path: Path) -> None:
    reg = Registry(home_copy / "models")
    names = publish_copies(reg, reg.current_path("btcusdt-5m"), symbols(6))
    bad = names[3]
    abort_on_load(reg.current_path(bad))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("XYLEN_")}
    env.update({"XYLEN_HOME": str(home_copy), "OMP_NUM_THREADS": "1"})
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or log.read_text().count("now serving") == 6, timeout=120,
                 what="every good model to be served")
        assert proc.poll() is None, log.read_text()[-3000:]
        w = window_matrix(sample_candles, len(sample_candles.open_time) - 1, 100)  # type: ignore[attr-defined]
        candles = [[int(r[0]), *map(float, r[1:6])] for r in w]
        for symbol, name in zip(["BTCUSDT", *symbols(6)], ["btcusdt-5m", *names]):
            r = httpx.post(f"{url}/predict", content=orjson.dumps({"symbol": symbol, "timeframe": "5m",
                                                                   "candles": candles}),
                           headers={"content-type": "application/json"})
            if name == bad:
                assert r.status_code == 503 and "killed the verifier with signal" in r.json()["error"], r.text
            else:
                assert r.status_code == 200 and r.json()["model"] == name, r.text
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 503 and bad in ready.text
        assert f"refused {bad} v0001" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
