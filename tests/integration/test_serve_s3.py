"""A real `xylen serve` whose registry is on S3 (moto's server on loopback, XYLEN_MODELS_URL=s3://...): it serves
the live version, picks up a promotion by polling the pointer's ETag (verified, loaded, warmed and swapped as on
one machine) with 0 failed requests under load, and refuses a tampered version while it keeps serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests import s3moto
from tests.builders import build_bundle
from tests.conftest import binance_rows, free_port, wait_for
from xylen.core.registry import Registry

moto_endpoint = s3moto.moto_endpoint  # fixture
KEY = "s3-test-key-not-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "btcusdt-5m"
SECRET = "moto-secret-never-logged"


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    registry: Registry

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def live_version(self) -> str | None:
        r = httpx.get(f"{self.url}/models", headers=AUTH, timeout=10)
        return next((m["version"] for m in r.json() if m["name"] == MODEL), None) if r.status_code == 200 else None


def s3_environ(endpoint: str, url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return env | {"XYLEN_HOME": str(home), "XYLEN_MODELS_URL": url, "XYLEN_S3_ENDPOINT_URL": endpoint,
                  "AWS_ACCESS_KEY_ID": "moto-key", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                  "XYLEN_API_KEYS": KEY, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def server(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("serve-s3")
    url = f"s3://{s3moto.make_bucket(moto_endpoint)}/prod/models"
    env = s3_environ(moto_endpoint, url, base / "home")
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({k: env[k] for k in old})
    writer = Registry(url, endpoint_url=moto_endpoint, cache=base / "writer-cache")
    build_bundle(writer, MODEL, rounds=40, rows=4000)  # v0001, live
    port = free_port()
    log = base / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    srv = Server(proc, f"http://127.0.0.1:{port}", log, writer)
    try:
        wait_for(lambda: proc.poll() is not None or httpx.get(f"{srv.url}/health/ready").status_code == 200,
                 timeout=120, what="xylen serve on an S3 registry to become ready")  # fmt: skip
        assert proc.poll() is None, f"xylen serve exited early:\n{srv.output()}"
        yield srv
    except BaseException:
        print(srv.output())
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Load:
    """Client threads posting /predict until stopped; any non-200 answer or transport error is a failure."""

    def __init__(self, url: str, body: dict, threads: int = 2) -> None:
        self.url, self.body = url, body
        self.versions: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.workers = [threading.Thread(target=self.run) for _ in range(threads)]

    def run(self) -> None:
        with httpx.Client(headers=AUTH, timeout=60) as c:
            while not self.stop.is_set():
                try:
                    r = c.post(f"{self.url}/predict", json=self.body)
                except httpx.TransportError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    self.versions.append(r.json()["model_version"])
                self.stop.wait(0.02)

    def __enter__(self) -> Load:
        for w in self.workers:
            w.start()
        wait_for(lambda: len(self.versions) >= 5 or self.failures, what="requests answered")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for w in self.workers:
            w.join(60)


def test_serves_an_s3_registry_and_picks_up_a_promotion_under_load(server: Server, candle_window: np.ndarray) -> None:
    assert server.live_version() == "v0001"
    body = {"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_rows(candle_window)}
    with Load(server.url, body) as load:
        build_bundle(server.registry, MODEL, rounds=40, rows=4000, seed=7)  # v0002, promoted on S3
        t0 = time.monotonic()
        wait_for(lambda: server.live_version() == "v0002", timeout=120, what="the replica to serve v0002")
        pickup = time.monotonic() - t0
        n = len(load.versions)
        wait_for(lambda: len(load.versions) >= n + 5, what="requests after the swap")
    assert load.failures == [], load.failures[:5]
    assert load.versions[-1] == "v0002" and "v0001" in load.versions
    first_new = load.versions.index("v0002")
    assert "v0001" not in load.versions[first_new + 2 * len(load.workers):]  # never back to the old version
    print(f"pickup of a promotion on S3: {pickup:.2f} s")
    assert SECRET not in server.log.read_text(errors="replace")


def test_a_tampered_version_on_s3_is_refused_and_the_live_one_kept(server: Server) -> None:
    from xylen.core.bundle import now_iso
    from xylen.core.registry import POINTER, Pointer

    reg = server.registry
    version = build_bundle(reg, MODEL, rounds=40, rows=4000, seed=9, promote=False)
    c, bucket, pre = reg.storage.client, reg.storage.bucket, reg.storage.prefix
    key = f"{pre}/{MODEL}/{version}/model.txt"
    data = c.get_object(Bucket=bucket, Key=key)["Body"].read()
    c.put_object(Bucket=bucket, Key=key, Body=data[: len(data) // 2])  # replaced on S3 after publication
    live = server.live_version()
    # CURRENT written straight to S3, naming it (a writer that skipped verification)
    got = reg.storage.read_versioned(f"{MODEL}/{POINTER}")
    assert got is not None
    sha = reg.manifest(MODEL, version).artifact.sha256
    reg.storage.swap(f"{MODEL}/{POINTER}", Pointer(MODEL, version, sha, now_iso(), (live,)).to_json(), got.token)
    wait_for(lambda: f"refused {MODEL} {version}" in server.output(), timeout=120,
             what="the replica to refuse the tampered version")  # fmt: skip
    assert server.live_version() == live
    assert httpx.get(f"{server.url}/health/ready").status_code == 200
