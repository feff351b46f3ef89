"""xylen.client against a real `xylen serve` (uvicorn on a loopback port, API keys on): /predict, /models and
readiness, sync and asyncio, the server's sentences as ClientError, and the /ws/predict stream in send and push
mode; plus the README's example, run as written."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest

from tests.conftest import binance_rows, free_port, wait_for
from xylen.client import AsyncClient, Client, ClientError
from xylen.core.candles import SCHEMA
from xylen.core.features import CandleArrays
from xylen.core.store import Store

pytestmark = pytest.mark.integration
KEY = "client-test-key-not-secret"
ROOT = Path(__file__).parents[2]
STORED = 300  # candles of the sample in the served home's store (push mode reads them)


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    home: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def frame_of(c: CandleArrays, rows: slice) -> pl.DataFrame:
    t = c.open_time[rows].astype(np.int64)
    n = len(t)
    cols = {"open_time": t, "open": c.open[rows], "high": c.high[rows], "low": c.low[rows], "close": c.close[rows],
            "volume": c.volume[rows], "close_time": t + 299_999, "quote_volume": np.zeros(n),
            "trades": np.zeros(n, dtype=np.int64), "taker_buy_base": np.zeros(n),
            "taker_buy_quote": np.zeros(n)}  # fmt: skip
    return pl.DataFrame(cols).cast(SCHEMA)  # type: ignore[arg-type]


def matrix(c: CandleArrays, rows: slice) -> np.ndarray:
    return np.column_stack([c.open_time[rows].astype(np.float64), c.open[rows], c.high[rows], c.low[rows],
                            c.close[rows], c.volume[rows]])  # fmt: skip


@contextlib.contextmanager
def serving(home: Path, *options: str) -> Iterator[Served]:
    """A real `xylen serve` of ``home`` (API key KEY) on a free loopback port, until the block ends (SIGTERM)."""
    port = free_port()
    log = home / "serve.log"
    env = {**os.environ, "XYLEN_HOME": str(home), "XYLEN_API_KEYS": KEY, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port), *options], env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    s = Served(proc, f"http://127.0.0.1:{port}", home, log)
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        wait_for(lambda: proc.poll() is not None or httpx.get(f"{s.url}/health/ready", headers=auth).status_code == 200,
                 timeout=120, what="the server to become ready")  # fmt: skip
        assert proc.poll() is None, f"xylen serve exited early:\n{s.output()}"
        yield s
    except BaseException:
        print(s.output())
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stored_home(trained_home: Path, sample_candles: CandleArrays, where: Path) -> Path:
    """A copy of the trained home whose store holds STORED sample candles, ending 100 before the sample's end."""
    home = where / "home"
    shutil.copytree(trained_home, home)
    n = len(sample_candles)
    Store(home / "data").append("BTCUSDT", "5m", frame_of(sample_candles, slice(n - 100 - STORED, n - 100)))
    return home


@pytest.fixture(scope="module")
def served(
    trained_home: Path, sample_candles: CandleArrays, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    with serving(stored_home(trained_home, sample_candles, tmp_path_factory.mktemp("client"))) as s:
        yield s


def direct(served: Served, body: dict[str, Any]) -> dict[str, Any]:
    """POST /predict by hand, the answer the client must give back unchanged."""
    r = httpx.post(f"{served.url}/predict", json=body, headers={"X-API-Key": KEY})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


# ---------------------------------------------------------------- HTTP
def test_predict_models_ready_sync(served: Served, candle_window: np.ndarray) -> None:
    rows = binance_rows(candle_window)
    want = direct(served, {"symbol": "BTCUSDT", "timeframe": "5m", "candles": rows})
    with Client(served.url, key=KEY) as xy:
        assert xy.predict(rows, symbol="BTCUSDT", timeframe="5m") == want
        assert xy.predict(candle_window, "BTCUSDT", "5m") == want  # a numpy matrix is sent as lists
        assert xy.predict(rows) == want  # the only live model answers without a series
        [model] = xy.models()
        assert model["name"] == "btcusdt-5m" and model["version"] == want["model_version"]
        assert xy.ready()["status"] == "ready"


def test_predict_models_ready_async(served: Served, candle_window: np.ndarray) -> None:
    rows = binance_rows(candle_window)
    want = direct(served, {"symbol": "BTCUSDT", "timeframe": "5m", "candles": rows})

    async def main() -> list[Any]:
        async with AsyncClient(served.url, key=KEY) as xy:
            many = await asyncio.gather(*(xy.predict(rows, "BTCUSDT", "5m") for _ in range(8)))  # one pool
            return [many, await xy.models(), await xy.ready()]

    many, models, ready = asyncio.run(main())
    assert many == [want] * 8
    assert [m["name"] for m in models] == ["btcusdt-5m"] and ready["status"] == "ready"


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_a_missing_or_wrong_key_raises_the_servers_sentence(
    served: Served, candle_window: np.ndarray, key: Any
) -> None:
    with Client(served.url, key=key) as xy, pytest.raises(ClientError) as err:
        xy.predict(binance_rows(candle_window), "BTCUSDT", "5m")
    assert err.value.status == 401 and "Missing or wrong API key" in err.value.message

    async def main() -> None:
        async with AsyncClient(served.url, key=key) as xy:
            await xy.models()

    with pytest.raises(ClientError) as err:
        asyncio.run(main())
    assert err.value.status == 401 and "Missing or wrong API key" in err.value.message


def test_a_4xx_carries_the_servers_sentence(served: Served, candle_window: np.ndarray) -> None:
    rows = binance_rows(candle_window)
    with Client(served.url, key=KEY) as xy:
        with pytest.raises(ClientError) as err:
            xy.predict(rows[:10], "BTCUSDT", "5m")
        assert (
            err.value.status == 422 and "has 10 candle(s)" in err.value.message and "min_candles" in err.value.message
        )
        assert str(err.value).startswith("422: Field 'candles' has 10")
        bad = [list(r) for r in rows]
        bad[-1][4] = "NaN"
        with pytest.raises(ClientError) as err:
            xy.predict(bad, "BTCUSDT", "5m")
        assert err.value.status == 422 and "not finite" in err.value.message
        with pytest.raises(ClientError) as err:
            xy.predict(rows, "DOGEUSDT", "1h")
        assert err.value.status == 404 and "DOGEUSDT" in err.value.message
        assert xy.predict(rows, "BTCUSDT", "5m")["prediction"] in (0, 1)  # the pool is still fine


def test_an_unreachable_server_is_a_client_error_naming_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    with Client(url, timeout=5) as xy, pytest.raises(ClientError) as err:
        xy.ready()
    assert err.value.status is None and url in err.value.message and "xylen serve" in err.value.message


@pytest.mark.parametrize(
    ("kwargs", "quoted"),
    [({"url": "127.0.0.1:8000"}, "'127.0.0.1:8000'"), ({"url": "ftp://x"}, "'ftp://x'"),
     ({"timeout": 0}, "timeout 0"), ({"timeout": float("nan")}, "timeout nan"), ({"key": ""}, "key must be")],
)  # fmt: skip
def test_bad_arguments_are_refused_quoting_them(kwargs: dict[str, Any], quoted: str) -> None:
    for cls in (Client, AsyncClient):
        with pytest.raises(ValueError, match=re.escape(quoted)):
            cls(**kwargs)


def test_importing_the_client_loads_nothing_heavy() -> None:
    code = (
        "import sys, xylen.client\n"
        "print(sorted(m for m in ('numpy', 'polars', 'lightgbm', 'pandas', 'sklearn', 'torch', 'fastapi') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- the stream
def test_stream_send_mode_gives_what_predict_gives(served: Served, sample_candles: CandleArrays) -> None:
    n = len(sample_candles)
    m = matrix(sample_candles, slice(n - 130, n))  # a window of 100, then 30 candles one by one
    rows = binance_rows(m)
    with Client(served.url, key=KEY) as xy, xy.stream() as stream:
        sub = stream.subscribe("BTCUSDT", "5m", candles=rows[:100])
        assert sub.info["model"] == "btcusdt-5m" and sub.info["min_candles"] <= 100
        assert sub.prediction is not None and sub.prediction["open_time"] == int(m[99, 0])
        got = [sub.prediction] + [sub.send(r) for r in rows[100:]]
        for i, p in enumerate(got):  # parity: the stream's probability is /predict's for the same window
            want = xy.predict(rows[i : i + 100], "BTCUSDT", "5m")
            assert p["probability"] == want["probability"] and p["prediction"] == want["prediction"]
            assert p["open_time"] == int(m[i + 99, 0]) and p["model_version"] == want["model_version"]


def test_stream_errors_name_the_candle_and_the_subscription_goes_on(
    served: Served, sample_candles: CandleArrays
) -> None:
    n = len(sample_candles)
    rows = binance_rows(matrix(sample_candles, slice(n - 103, n)))
    with Client(served.url, key=KEY) as xy, xy.stream() as stream:
        with pytest.raises(ClientError) as err:
            stream.subscribe("DOGEUSDT", "1h", candles=rows[:100])
        assert err.value.status is None and "DOGEUSDT" in err.value.message
        sub = stream.subscribe("BTCUSDT", "5m", candles=rows[:100])
        for bad in (rows[99], rows[102]):  # a duplicate, then a gap
            with pytest.raises(ClientError) as err:
                sub.send(bad)
            assert err.value.open_time == bad[0] and err.value.status is None
        assert sub.send(rows[100])["open_time"] == rows[100][0]  # still usable, window unchanged
        with pytest.raises(TypeError, match="push subscriptions"):
            sub.receive()
        stream.ping()
        sub.unsubscribe()
        with pytest.raises(ClientError, match="no longer on this stream"):
            sub.send(rows[101])


def test_stream_push_mode_pushes_each_stored_candle(served: Served, sample_candles: CandleArrays) -> None:
    n = len(sample_candles)
    store = Store(served.home / "data")
    with Client(served.url, key=KEY) as xy, xy.stream() as stream:
        sub = stream.subscribe("BTCUSDT", "5m", push=True)
        last = int(store.last_open_time("BTCUSDT", "5m") or 0)
        assert sub.info["last_open_time"] == last and sub.mode == "push"
        start = int(np.searchsorted(sample_candles.open_time, last)) + 1
        for k in range(start, start + 3):
            store.append("BTCUSDT", "5m", frame_of(sample_candles, slice(k, k + 1)))
            p = sub.receive(timeout=60)
            assert p["open_time"] == int(sample_candles.open_time[k])
            want = xy.predict(binance_rows(matrix(sample_candles, slice(k - 99, k + 1))), "BTCUSDT", "5m")
            assert p["probability"] == want["probability"]
        with pytest.raises(TypeError, match="send-mode"):
            sub.send([])
        assert k + 1 < n


def test_async_stream_send_and_push(served: Served, sample_candles: CandleArrays) -> None:
    n = len(sample_candles)
    rows = binance_rows(matrix(sample_candles, slice(n - 110, n)))
    store = Store(served.home / "data")

    async def main() -> tuple[list[int], list[int]]:
        async with AsyncClient(served.url, key=KEY) as xy, xy.stream() as stream:
            send = await stream.subscribe("BTCUSDT", "5m", candles=rows[:100])
            push = await stream.subscribe("BTCUSDT", "5m", push=True)
            last = push.info["last_open_time"]
            k = int(np.searchsorted(sample_candles.open_time, last)) + 1
            await asyncio.to_thread(store.append, "BTCUSDT", "5m", frame_of(sample_candles, slice(k, k + 2)))
            sent = [(await send.send(r))["open_time"] for r in rows[100:105]]  # pushes arriving meanwhile wait
            pushed = []
            async for p in push:
                pushed.append(p["open_time"])
                if len(pushed) == 2:
                    break
            assert pushed == [int(t) for t in sample_candles.open_time[k : k + 2]]
            await push.unsubscribe()
            return sent, pushed

    sent, _ = asyncio.run(main())
    assert sent == [r[0] for r in rows[100:105]]


@pytest.mark.parametrize("key", [None, "wrong"])
def test_stream_without_the_key_is_closed_1008_for_good(served: Served, candle_window: np.ndarray, key: Any) -> None:
    with Client(served.url, key=key) as xy, xy.stream() as stream:
        with pytest.raises(ClientError) as err:
            stream.subscribe("BTCUSDT", "5m", candles=binance_rows(candle_window))
        assert err.value.status == 1008 and "API key" in err.value.message
        assert "does not reconnect" in err.value.message
        with pytest.raises(ClientError) as again:  # no reconnection: every later call says the same
            stream.ping()
        assert again.value is err.value


def test_http_requests_share_one_keep_alive_connection(served: Served) -> None:
    with Client(served.url, key=KEY) as xy:
        for _ in range(5):
            xy.models()
        assert len(xy._http._transport._pool.connections) == 1  # type: ignore[attr-defined]


def test_the_server_loads_polars_only_once_a_client_asks_for_pushes(
    trained_home: Path, sample_candles: CandleArrays, tmp_path: Path, candle_window: np.ndarray
) -> None:
    home = stored_home(trained_home, sample_candles, tmp_path)
    with serving(home) as s, Client(s.url, key=KEY) as xy:
        maps = Path(f"/proc/{s.proc.pid}/maps")
        if not maps.exists():
            pytest.skip("needs Linux /proc")
        rows = binance_rows(candle_window)
        xy.predict(rows, "BTCUSDT", "5m")
        with xy.stream() as stream:
            stream.subscribe("BTCUSDT", "5m", candles=rows)
            assert "polars" not in maps.read_text()  # polars >= 1.3x maps _polars_runtime*/..., not polars/
            stream.subscribe("BTCUSDT", "5m", push=True)
            assert "polars" in maps.read_text()


def test_a_server_stopping_ends_the_stream_with_1001_and_no_reconnect(
    trained_home: Path, sample_candles: CandleArrays, tmp_path: Path, candle_window: np.ndarray
) -> None:
    home = stored_home(trained_home, sample_candles, tmp_path)
    with serving(home, "--drain-seconds", "0") as s, Client(s.url, key=KEY) as xy, xy.stream() as stream:
        push = stream.subscribe("BTCUSDT", "5m", push=True)
        send = stream.subscribe("BTCUSDT", "5m", candles=binance_rows(candle_window))
        s.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ClientError) as err:
            push.receive(timeout=60)
        assert err.value.status == 1001 and "does not reconnect" in err.value.message
        assert s.proc.wait(60) == 0
        with pytest.raises(ClientError) as again:
            send.send(binance_rows(candle_window)[-1])
        assert again.value.status == 1001


README = ROOT / "README.md"


def readme_example() -> str:
    section = README.read_text().split("### Python client", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_the_readme_example_runs_as_written(served: Served, sample_candles: CandleArrays) -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) <= 10
    assert code.count('"http://127.0.0.1:8000"') == 1 and code.count("key=None") == 1
    code = code.replace('"http://127.0.0.1:8000"', repr(served.url)).replace("key=None", f"key={KEY!r}")
    n = len(sample_candles)
    rows = binance_rows(matrix(sample_candles, slice(n - 101, n)))
    store = Store(served.home / "data")
    first = int(store.last_open_time("BTCUSDT", "5m") or 0)
    stop = threading.Event()

    def collect() -> None:
        """`xylen collect` storing a closed candle now and then, until the example has had its push."""
        k = int(np.searchsorted(sample_candles.open_time, first)) + 1
        for i in range(k, min(k + 60, n)):
            if stop.wait(0.5):
                return
            store.append("BTCUSDT", "5m", frame_of(sample_candles, slice(i, i + 1)))

    printed: list[tuple[Any, ...]] = []
    collector = threading.Thread(target=collect)
    collector.start()
    try:
        exec(compile(code, "README.md", "exec"), {"candles": rows[:100], "next_candle": rows[100],
                                                  "print": lambda *a: printed.append(a)})  # fmt: skip
    finally:
        stop.set()
        collector.join(60)
    with Client(served.url, key=KEY) as xy:
        assert printed[0] == (xy.predict(rows[:100], "BTCUSDT", "5m"),)
        assert printed[1] == (xy.predict(rows[1:], "BTCUSDT", "5m")["probability"],)
    open_time, prediction, confidence = printed[2]
    assert open_time > first and prediction in (0, 1) and 0.5 <= confidence <= 1
    assert len(printed) == 3
