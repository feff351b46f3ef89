"""Shared fixtures: a real small model trained once per session, candle windows from the bundled sample,
polling with a deadline, and free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import settings as hypothesis_settings

# CI replays the same generated examples on every run (a landing must not hinge on a lucky draw); locally
# Hypothesis explores new ones each run and keeps failures in .hypothesis/ to replay them.
# No per-example deadline anywhere: time lives in benchmarks, and a busy machine must not fail a test.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
hypothesis_settings.register_profile("local", deadline=None)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "local")

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 60.0, what: str = "condition", interval: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds. Never a blind sleep."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # e.g. connection refused while a server starts
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def free_port() -> int:
    """A port the OS says is free on 127.0.0.1 (bind to port 0), never a random guess."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def sample_candles() -> Any:
    """The last 3000 candles of the bundled BTCUSDT 5m sample as CandleArrays."""
    from tests.builders import sample_arrays

    return sample_arrays(3000)


def binance_rows(m: np.ndarray) -> list[list[Any]]:
    """An (n, 6) candle matrix as Binance 12-field kline arrays (prices as strings, like the REST API)."""
    return [[int(r[0]), repr(float(r[1])), repr(float(r[2])), repr(float(r[3])), repr(float(r[4])),
             repr(float(r[5])), int(r[0]) + 299_999, "0", 0, "0", "0", "0"] for r in m]


@pytest.fixture(scope="session")
def candle_window(sample_candles: Any) -> np.ndarray:
    """100 consecutive real candles (open_time, o, h, l, c, v) ending at the sample's last candle."""
    from tests.builders import window_matrix

    return window_matrix(sample_candles, len(sample_candles) - 1, 100)


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An XYLEN_HOME whose registry holds one small real LightGBM model, btcusdt-5m v0001 (live).

    Read-only for tests: copy it (``home_copy``) before promoting anything.
    """
    from tests.builders import build_bundle
    from xylen.core.registry import Registry

    home = tmp_path_factory.mktemp("xylen-home")
    build_bundle(Registry(home / "models"), "btcusdt-5m", rounds=40, rows=4000)
    return home


@pytest.fixture
def home_copy(trained_home: Path, tmp_path: Path) -> Path:
    """A private, writable copy of ``trained_home``."""
    dst = tmp_path / "home"
    shutil.copytree(trained_home, dst)
    return dst


@pytest.fixture(scope="module")
def served_client(trained_home: Path) -> Any:
    """An in-process client (the gate + FastAPI app, loopback Host) of ``trained_home``'s server, once ready."""
    import warnings

    from xylen.core.settings import load_settings
    from xylen.serve.app import create_app

    with warnings.catch_warnings():  # starlette warns at import that httpx2 would be preferred
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    app = create_app(load_settings({"home": trained_home}, environ={}))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
        yield c
