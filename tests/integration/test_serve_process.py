"""One real `xylen serve` subprocess for the session: start-up, memory, auth, hot swap under load, corrupt
candidates, and SIGTERM (last: it stops the server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.builders import build_bundle, publish_corrupt
from tests.conftest import binance_rows, free_port, wait_for
from xylen.core.registry import Registry

pytestmark = pytest.mark.integration
KEY = "test-key-not-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "btcusdt-5m"


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    home: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def served(trained_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import shutil

    home = tmp_path_factory.mktemp("served") / "home"
    shutil.copytree(trained_home, home)
    port = free_port()
    log = home / "serve.log"
    env = {**os.environ, "XYLEN_HOME": str(home), "XYLEN_API_KEYS": KEY, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port), "--drain-seconds",
                                 "600"], env=env, stdout=out, stderr=subprocess.STDOUT)
    s = Served(proc, f"http://127.0.0.1:{port}", home, log)
    try:
        wait_for(lambda: proc.poll() is not None or httpx.get(f"{s.url}/health/ready", headers=AUTH).status_code
                 == 200, timeout=60, what="the server to become ready")
        assert proc.poll() is None, f"xylen serve exited early:\n{s.output()}"
        yield s
    except BaseException:
        print(s.output())
        raise
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def body(candle_window: np.ndarray) -> dict[str, Any]:
    return {"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_rows(candle_window)}


def test_ready_fast_and_lean(served: Served) -> None:
    maps = Path(f"/proc/{served.proc.pid}/maps")
    if not maps.exists():
        pytest.skip("needs Linux /proc")
    loaded = maps.read_text()
    for lib in ("polars", "sklearn", "pandas", "torch", "onnxruntime", "matplotlib"):
        assert f"/{lib}/" not in loaded, f"{lib} is loaded in the server"
    assert "/_polars_runtime" not in loaded, "polars is loaded in the server"  # polars >= 1.3x: its library lives there
    rss_kb = int(next(line for line in Path(f"/proc/{served.proc.pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS")).split()[1])
    assert rss_kb / 1024 < 150, f"RSS {rss_kb / 1024:.0f} MB"


def test_auth(served: Served, body: dict[str, Any]) -> None:
    assert httpx.post(f"{served.url}/predict", json=body).status_code == 401
    assert httpx.post(f"{served.url}/predict", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert httpx.post(f"{served.url}/predict", json=body, headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.post(f"{served.url}/predict", json=body, headers=AUTH).status_code == 200
    assert httpx.get(f"{served.url}/health/live").status_code == 200  # liveness stays open
    assert httpx.get(f"{served.url}/metrics").status_code == 401
    assert KEY not in served.output()


def test_standard_v2_client_library(served: Served) -> None:
    """tritonclient, a standard Open Inference Protocol v2 client, calls /v2 unchanged (JSON tensors)."""
    httpclient = pytest.importorskip("tritonclient.http")
    from xylen.core.bundle import load_bundle

    bundle = load_bundle(Registry(served.home / "models").current_path(MODEL))
    X = np.array(bundle.manifest.golden.rows, dtype=np.float64)
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready(headers=AUTH)
        assert client.is_model_ready(MODEL, headers=AUTH)
        meta = client.get_model_metadata(MODEL, headers=AUTH)
        assert meta["inputs"][0]["shape"] == [-1, bundle.num_feature()]
        inp = httpclient.InferInput("features", list(X.shape), "FP64")
        inp.set_data_from_numpy(X, binary_data=False)
        out = httpclient.InferRequestedOutput("probability", binary_data=False)
        result = client.infer(MODEL, [inp], outputs=[out], headers=AUTH)
        np.testing.assert_allclose(result.as_numpy("probability"), bundle.manifest.golden.outputs, rtol=0, atol=1e-12)
    finally:
        client.close()


@dataclass
class Load:
    url: str
    body: dict[str, Any]
    versions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    closed: str | None = None  # why the connection ended (expected only after SIGTERM)
    fields: dict[str, frozenset[str]] = field(default_factory=dict)  # version -> the response fields it answered

    def run(self) -> None:
        with httpx.Client(headers=AUTH) as c:
            while not self.stop.is_set():
                try:
                    r = c.post(f"{self.url}/predict", json=self.body)
                except httpx.TransportError as exc:
                    self.closed = f"{type(exc).__name__}: {exc}"
                    return
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    got = r.json()
                    self.versions.append(got["model_version"])
                    self.fields.setdefault(got["model_version"], frozenset(got))


def _swaps(served: Served, result: str) -> float:
    text = httpx.get(f"{served.url}/metrics", headers=AUTH).text
    for line in text.splitlines():
        if line.startswith(f'xylen_model_swaps_total{{model="{MODEL}",result="{result}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_hot_swap_under_load_refuses_corrupt_candidates(served: Served, body: dict[str, Any]) -> None:
    reg = Registry(served.home / "models")
    load = Load(served.url, body)
    worker = threading.Thread(target=load.run)
    worker.start()
    try:
        # "heads": a good version with a move head; then its head file damaged (tests/builders.py) twice
        plan = ["good", "truncated", "good", "wrong_sha", "wrong_features", "heads", "head_tampered",
                "head_truncated", "good"]
        heads_version = ""
        for step in plan:
            refused_before = _swaps(served, "refused")
            if step in ("good", "heads"):
                version = build_bundle(reg, MODEL, rounds=8, rows=1500, seed=len(load.versions),
                                       heads=("move",) if step == "heads" else ())
                heads_version = version if step == "heads" else heads_version
                # ~1.2 s on an idle machine (poll + child verify + load; bench/bench_swaps.py measures it):
                # the timeout only catches a swap that never happens, a busy CI box is slower
                wait_for(lambda v=version: load.versions and load.versions[-1] == v, timeout=60,
                         what=f"{version} to be served")
            else:
                bad = publish_corrupt(reg, MODEL, step)  # type: ignore[arg-type]
                wait_for(lambda b=refused_before: _swaps(served, "refused") > b, timeout=60,
                         what=f"{bad} ({step}) to be refused")
        n = len(load.versions)
        wait_for(lambda: len(load.versions) > n + 5, what="requests after the last swap")
    finally:
        load.stop.set()
        worker.join()
    assert not load.failures and load.closed is None, (load.failures[:3], load.closed)
    nums = [int(v[1:]) for v in load.versions]
    assert nums == sorted(nums), "model_version went backwards"
    assert _swaps(served, "refused") == 5
    # the version with a head answered move_probability; no other did (the damaged ones never served)
    assert [v for v, f in load.fields.items() if "move_probability" in f] == [heads_version]
    assert "refused" in served.output()


def test_sigterm_fails_readiness_first_then_exits_0(served: Served, body: dict[str, Any]) -> None:
    load = Load(served.url, body)
    worker = threading.Thread(target=load.run)
    worker.start()
    wait_for(lambda: len(load.versions) > 3, what="load before SIGTERM")
    served.proc.send_signal(signal.SIGTERM)
    # the drain (--drain-seconds 600) keeps the listener open however busy the machine; a second SIGTERM ends it
    wait_for(lambda: httpx.get(f"{served.url}/health/ready", headers=AUTH).status_code == 503, timeout=60,
             what="readiness to fail after SIGTERM")
    assert httpx.get(f"{served.url}/health/live").status_code == 200  # still serving while it drains
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(60) == 0, served.output()
    load.stop.set()
    worker.join()
    assert not load.failures, load.failures[:3]  # every answered request succeeded; then the socket closed
