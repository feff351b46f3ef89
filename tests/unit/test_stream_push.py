"""/ws/predict push mode in process: a feed driven by the test (the StoreFeed interface) delivers candles on the
server's event loop; the pushed predictions equal POST /predict's, a gap is an error, a consumer that does not read
is closed 1013 with the queue bounded, and the real StoreFeed's empty store is an error naming `xylen collect`."""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.builders import window_matrix
from tests.conftest import binance_rows, wait_for
from xylen.core.settings import load_settings
from xylen.serve.app import create_app
from xylen.serve.decode import RequestError
from xylen.serve.stream import PUSH_QUEUE

with warnings.catch_warnings():  # starlette warns at import that httpx2 would be preferred
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

pytestmark = pytest.mark.unit
WS = "ws://127.0.0.1/ws/predict"
END = 2000
PUSH = {"type": "subscribe", "id": "p1", "symbol": "BTCUSDT", "timeframe": "5m", "mode": "push"}


class FakeFeed:
    """StoreFeed's interface over an in-memory matrix; ``deliver`` hands rows to the listeners on their loop."""

    def __init__(self, m: np.ndarray) -> None:
        self.m = m  # the "stored" candles, oldest first
        self.listeners: dict[int, tuple[Callable[[np.ndarray], None], asyncio.AbstractEventLoop, Any]] = {}
        self.asked: list[tuple[str, str, str, int]] = []
        self._ids = 0
        self.lock = threading.Lock()
        self.refuse = False

    def history(self, exchange: str, symbol: str, interval: str, n: int) -> np.ndarray:
        self.asked.append((exchange, symbol, interval, n))
        if symbol != "BTCUSDT":
            raise RequestError(404, f"No {symbol} {interval} candles are stored; run `xylen collect --symbols "
                                    f"{symbol} --intervals {interval}`.")
        return self.m[-n:].copy()

    def listen(self, exchange: str, symbol: str, interval: str, callback: Callable[[np.ndarray], None], *,
               on_error: Any = None, since: int | None = None) -> Callable[[], None]:
        if self.refuse:
            raise RequestError(503, "The store cannot be read (a test's refusal).")
        self._ids += 1
        token = self._ids
        self.listeners[token] = (callback, asyncio.get_running_loop(), on_error)

        def unlisten() -> None:
            self.listeners.pop(token, None)

        return unlisten

    def deliver(self, rows: np.ndarray) -> None:
        for callback, loop, _ in list(self.listeners.values()):
            loop.call_soon_threadsafe(callback, rows)

    def stop(self) -> None:
        self.listeners.clear()


@pytest.fixture(scope="module")
def matrix(sample_candles: Any) -> np.ndarray:
    return window_matrix(sample_candles, len(sample_candles) - 1, len(sample_candles))


@pytest.fixture
def served(trained_home: Path, matrix: np.ndarray) -> Iterator[tuple[Any, FakeFeed]]:
    app = create_app(load_settings({"home": trained_home}, environ={}))
    feed = FakeFeed(matrix[: END + 1])
    app.app.state.streams.set_feed(feed)  # type: ignore[attr-defined]
    with TestClient(app, base_url="http://127.0.0.1") as c:
        wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
        yield c, feed


def recv(ws: Any) -> dict[str, Any]:
    return orjson.loads(ws.receive_text())  # type: ignore[no-any-return]


def http(client: Any, m: np.ndarray) -> dict[str, Any]:
    r = client.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_rows(m)})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def signal(msg: dict[str, Any]) -> dict[str, Any]:
    assert msg["type"] == "prediction", msg
    return {k: v for k, v in msg.items() if k not in ("type", "id", "open_time")}


def test_pushed_predictions_equal_post_predict_for_each_stored_candle(served: tuple[Any, FakeFeed],
                                                                      matrix: np.ndarray) -> None:
    client, feed = served
    with client.websocket_connect(WS) as ws:
        ws.send_json(PUSH)
        sub = recv(ws)
        assert sub["type"] == "subscribed" and sub["mode"] == "push" and sub["last_open_time"] == int(matrix[END, 0])
        assert feed.asked == [("binance", "BTCUSDT", "5m", 49)]
        feed.deliver(matrix[END + 1 : END + 4])  # a batch of three
        feed.deliver(matrix[END + 4 : END + 5])
        for k in range(END + 1, END + 5):
            got = recv(ws)
            assert got["id"] == "p1" and got["open_time"] == int(matrix[k, 0])
            assert signal(got) == http(client, matrix[k - 99 : k + 1]), k
        feed.deliver(matrix[END + 2 : END + 5])  # already delivered: never pushed twice
        ws.send_json({"type": "ping"})
        assert recv(ws) == {"type": "pong"}
        ws.send_json({"type": "candle", "id": "p1", "candle": binance_rows(matrix[END + 5 : END + 6])[0]})
        assert "push mode" in recv(ws)["error"]
        ws.send_json({"type": "unsubscribe", "id": "p1"})
        assert recv(ws) == {"type": "unsubscribed", "id": "p1"}
        assert not feed.listeners


def test_a_gap_in_the_store_is_an_error_and_predictions_resume_after_a_full_window(served: tuple[Any, FakeFeed],
                                                                                   matrix: np.ndarray) -> None:
    client, feed = served
    with client.websocket_connect(WS) as ws:
        ws.send_json(PUSH)
        recv(ws)
        feed.deliver(matrix[END + 3 : END + 3 + 60])  # END+1 and END+2 are missing
        err = recv(ws)
        assert err["type"] == "error" and err["id"] == "p1" and "gap" in err["error"]
        assert err["open_time"] == int(matrix[END + 3, 0])
        first = recv(ws)  # the 49th candle from the gap on is the first predicted again
        k = END + 3 + 48
        assert first["open_time"] == int(matrix[k, 0])
        assert signal(first) == http(client, matrix[k - 48 : k + 1])


def test_unknown_series_is_an_error_and_the_connection_goes_on(served: tuple[Any, FakeFeed]) -> None:
    client, _ = served
    with client.websocket_connect(WS) as ws:
        ws.send_json({**PUSH, "symbol": "ETHUSDT", "model": "btcusdt-5m"})  # the model may answer; nothing stored
        err = recv(ws)
        assert err["type"] == "error" and err["id"] == "p1" and "xylen collect" in err["error"]
        ws.send_json({**PUSH, "candles": []})
        assert "Push mode takes no 'candles'" in recv(ws)["error"]
        ws.send_json(PUSH)
        assert recv(ws)["type"] == "subscribed"


def test_a_subscription_whose_feed_refuses_to_listen_does_not_exist(served: tuple[Any, FakeFeed]) -> None:
    client, feed = served
    feed.refuse = True
    with client.websocket_connect(WS) as ws:
        ws.send_json(PUSH)
        err = recv(ws)
        assert err["type"] == "error" and err["id"] == "p1" and "cannot be read" in err["error"]
        feed.refuse = False
        ws.send_json(PUSH)  # the id is free: the failed subscription was never made
        assert recv(ws)["type"] == "subscribed"


def test_a_consumer_that_does_not_read_is_closed_1013_and_the_queue_stays_bounded(
    served: tuple[Any, FakeFeed], matrix: np.ndarray
) -> None:
    """Pushes are queued per connection; one batch larger than the queue (delivered in one callback, so the writer
    cannot empty it in between) overflows it: the connection stops listening, drops the queue and closes 1013."""
    client, feed = served
    hub = client.app.app.state.streams
    hub.push_queue = 8
    with client.websocket_connect(WS) as ws, client.websocket_connect(WS) as other:
        ws.send_json(PUSH)
        recv(ws)
        conn = next(c for c in hub.connections if c.subs)
        feed.deliver(matrix[END + 1 : END + 1 + 40])
        def drain() -> None:
            for _ in range(100):
                recv(ws)  # at most the 8 queued before the overflow come first

        with pytest.raises(WebSocketDisconnect) as info:
            drain()
        assert info.value.code == 1013 and "Consumer too slow: 8 pushed predictions" in info.value.reason
        assert conn.overflowed and conn.queue.maxsize == 8 and conn.queue.qsize() == 0
        assert not feed.listeners  # it stopped listening: nothing more is computed for it
        other.send_json({"type": "ping"})
        assert recv(other) == {"type": "pong"}
    assert PUSH_QUEUE == 1000  # the documented bound


def test_the_real_store_feed_with_nothing_stored_names_xylen_collect(tmp_path: Path, trained_home: Path) -> None:
    import shutil

    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    app = create_app(load_settings({"home": home}, environ={}))
    with TestClient(app, base_url="http://127.0.0.1") as c, c.websocket_connect(WS) as ws:
        wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
        ws.send_json(PUSH)
        err = recv(ws)
        assert err["type"] == "error" and "xylen collect --symbols BTCUSDT --intervals 5m" in err["error"], err
        ws.send_json({"type": "ping"})
        assert recv(ws) == {"type": "pong"}


# --- the stream's one-candle shortcut agrees with decode.py ---------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from xylen.serve.decode import decode_candles  # noqa: E402
from xylen.serve.stream_subs import CandleError, one_candle  # noqa: E402

_T = 1_704_067_200_000
_hostile = st.sampled_from([0, -1, 1e20, 1e-20, 1e21, 1e-21, 1e24, 1e25, "1e400", "nan", "inf", "-0", " 1", "1_0",
                            "abc", "", True, None, [1], {}, float("nan"), float("inf"), _T / 1000, _T * 1000,
                            _T * 1_000_000, _T + 0.5, "1704067200000", 10**20, -(10**20)])


@st.composite
def _candles(draw: Any) -> list[Any]:
    """A well-formed candle (numbers or strings, as Binance sends them) with, often, one field made hostile."""
    lo = draw(st.floats(min_value=1e-20, max_value=1e19))
    o, c = (lo * (1 + draw(st.floats(0, 1))) for _ in range(2))
    hi = max(o, c) * (1 + draw(st.floats(0, 1)))
    vol = draw(st.floats(0, 1e24))
    fields: list[Any] = [_T + draw(st.integers(-10**9, 10**9)) + draw(st.sampled_from([0, 0, 0.5])), o, hi, lo, c,
                         vol]
    if draw(st.booleans()):
        fields[1:] = [repr(float(x)) for x in fields[1:]]
    extra = draw(st.sampled_from([[], [fields[0] + 299_999], [fields[0] + 299_999, "0", 0, "0", "0", "0"],
                                  [None], ["x"], [fields[0] - 1]]))
    raw = [*fields, *extra]
    if draw(st.integers(0, 2)):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(_hostile)
    return raw[: draw(st.integers(4, len(raw)))] if draw(st.integers(0, 9)) == 0 else raw


@settings(max_examples=400)
@given(raw=_candles())
def test_one_candle_accepts_exactly_what_decode_accepts_with_the_same_values(raw: list[Any]) -> None:
    try:
        want = decode_candles([raw], 1, "m")
    except RequestError as exc:
        refused = exc.message
    else:
        refused = None
    if refused is not None:
        with pytest.raises(CandleError) as info:
            one_candle(raw, "m")
        assert refused.replace("candles[0]", "the candle") in info.value.message
        return
    try:
        got, close_time = one_candle(raw, "m")
    except CandleError as exc:  # pragma: no cover - a failure to report
        raise AssertionError(f"decode accepts {raw!r} but the stream refuses it: {exc.message}") from None
    c = want.candles
    assert got.tolist() == [float(c.open_time[0]), c.open[0], c.high[0], c.low[0], c.close[0], c.volume[0]]
    assert close_time == want.close_time
