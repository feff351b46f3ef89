"""/ws/predict in process (TestClient over the gate + FastAPI app) on a small real model: parity with POST /predict,
refused candles, hot swap, the close codes, limits, and who may connect."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.builders import build_bundle, window_matrix
from tests.conftest import binance_rows, wait_for
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.serve.app import create_app
from xylen.serve.auth import KeyRing

with warnings.catch_warnings():  # starlette warns at import that httpx2 would be preferred
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient, WebSocketDenialResponse
    from starlette.websockets import WebSocketDisconnect

pytestmark = pytest.mark.unit
MODEL = "btcusdt-5m"
WS = "ws://127.0.0.1/ws/predict"  # a loopback Host (the test client says "testserver" otherwise)
END = 2000  # the sample index of the first window's last candle; candles after it are streamed


def open_client(home: Path, env: dict[str, str] | None = None, base_url: str = "http://127.0.0.1",
                **kwargs: Any) -> Any:
    settings = load_settings({"home": home}, environ=env or {})
    return TestClient(create_app(settings, **kwargs), base_url=base_url)


def ready(c: Any) -> Any:
    wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
    return c


@pytest.fixture(scope="module")
def client(trained_home: Path) -> Iterator[Any]:
    with open_client(trained_home) as c:
        yield ready(c)


@pytest.fixture(scope="module")
def rows(sample_candles: Any) -> list[list[Any]]:
    """The sample as Binance kline arrays (prices as strings, as the REST API sends them)."""
    return binance_rows(window_matrix(sample_candles, len(sample_candles) - 1, len(sample_candles)))


def subscribe(sid: str, candles: list[Any], **kw: Any) -> dict[str, Any]:
    return {"type": "subscribe", "id": sid, "symbol": "BTCUSDT", "timeframe": "5m", "candles": candles, **kw}


def recv(ws: Any) -> dict[str, Any]:
    return orjson.loads(ws.receive_text())  # type: ignore[no-any-return]


def http(client: Any, window: list[Any]) -> dict[str, Any]:
    r = client.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "candles": window})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def signal(msg: dict[str, Any]) -> dict[str, Any]:
    """A prediction message less the stream's own fields: what POST /predict answers."""
    assert msg["type"] == "prediction", msg
    return {k: v for k, v in msg.items() if k not in ("type", "id", "open_time")}


def closed_with(ws: Any) -> tuple[int, str]:
    with pytest.raises(WebSocketDisconnect) as info:
        ws.receive_text()
    return info.value.code, info.value.reason


def test_streamed_candles_give_bit_identical_predictions_to_post_predict(client: Any, rows: list[Any]) -> None:
    """A window + candles one by one (and a batch) give exactly the floats /predict gives for the same windows."""
    with client.websocket_connect(WS) as ws:
        ws.send_json(subscribe("s1", rows[END - 99 : END + 1]))
        sub = recv(ws)
        assert sub == {"type": "subscribed", "id": "s1", "mode": "send", "model": MODEL, "model_version": "v0001",
                       "min_candles": 49, "symbol": "BTCUSDT", "timeframe": "5m", "exchange": "binance",
                       "last_open_time": rows[END][0]}
        first = recv(ws)
        assert first["open_time"] == rows[END][0] and first["id"] == "s1"
        assert signal(first) == http(client, rows[END - 99 : END + 1])
        for k in range(END + 1, END + 41):
            ws.send_json({"type": "candle", "id": "s1", "candle": rows[k]})
            got = recv(ws)
            assert got["open_time"] == rows[k][0]
            assert signal(got) == http(client, rows[k - 99 : k + 1]), k
        ws.send_json({"type": "candles", "id": "s1", "candles": rows[END + 41 : END + 61]})
        for k in range(END + 41, END + 61):
            got = recv(ws)
            assert got["open_time"] == rows[k][0]
            assert signal(got) == http(client, rows[k - 99 : k + 1]), k


def test_object_candles_and_a_long_first_window(client: Any, rows: list[Any]) -> None:
    """Candles as objects (the slow decode path) and a 500-candle first window: the same answers as /predict."""
    objects = [{"open_time": r[0], "open": r[1], "high": r[2], "low": r[3], "close": r[4], "volume": r[5]}
               for r in rows]
    with client.websocket_connect(WS) as ws:
        ws.send_json(subscribe("obj", objects[END - 499 : END + 1]))
        assert recv(ws)["type"] == "subscribed"
        assert signal(recv(ws)) == http(client, rows[END - 99 : END + 1])
        for k in range(END + 1, END + 4):
            ws.send_json({"type": "candle", "id": "obj", "candle": objects[k]})
            assert signal(recv(ws)) == http(client, rows[k - 99 : k + 1])


def _with(row: list[Any], **change: Any) -> list[Any]:
    out = list(row)
    for i, name in enumerate(("open_time", "open", "high", "low", "close", "volume")):
        if name in change:
            out[i] = change[name]
    return out


def test_refused_candles_name_the_candle_and_leave_the_window_as_it_was(client: Any, rows: list[Any]) -> None:
    nxt = rows[END + 1]
    t = nxt[0]
    bad = [
        (rows[END], "repeats", rows[END][0]),  # a duplicate of the last candle
        (rows[END - 5], "is older than", rows[END - 5][0]),
        (rows[END + 2], "skips past", rows[END + 2][0]),  # a gap
        (_with(nxt, open_time=t + 3_600_000), "skips past", t + 3_600_000),  # an hour on: the wrong interval
        (_with(nxt, open_time=t + 60_000), "skips past", t + 60_000),  # a 1m candle's time: off the 5m grid
        (_with(nxt, close="NaN"), "not finite", t),
        (_with(nxt, high="1e400"), "not finite", t),
        (_with(nxt, volume="-1"), "volume must be 0 or more", t),
        (_with(nxt, high=str(float(nxt[3]) / 2)), "outside its open and close", t),
        (_with(nxt, open="0"), "greater than 0", t),
        (nxt[:4], "candle", t),  # too few fields
        ("not a candle", "candle", None),
        (_with(nxt, open_time=(t + 300_000) * 1_000_000), "nanoseconds", None),
    ]
    with client.websocket_connect(WS) as ws:
        ws.send_json(subscribe("s1", rows[END - 99 : END + 1]))
        recv(ws), recv(ws)
        for candle, words, open_time in bad:
            ws.send_json({"type": "candle", "id": "s1", "candle": candle})
            err = recv(ws)
            assert err["type"] == "error" and err["id"] == "s1", (candle, err)
            assert words in err["error"], (candle, err)
            if open_time is not None:
                assert err["open_time"] == open_time, (candle, err)
            if words in ("repeats", "is older than", "skips past"):
                assert str(t) in err["error"]  # the expected open time
        # the window is unchanged: the next good candle is answered as /predict answers it
        ws.send_json({"type": "candle", "id": "s1", "candle": nxt})
        assert signal(recv(ws)) == http(client, rows[END - 98 : END + 2])


@pytest.mark.parametrize("open_time", ["1e30", "-1e30", "100000000000000000000000000000", "1.8e19"])
def test_an_open_time_beyond_64_bits_is_an_error_and_the_connection_goes_on(client: Any, rows: list[Any],
                                                                             open_time: str) -> None:
    # the error message's open_time must still be JSON orjson can write (it failed: TypeError, the socket dropped)
    with client.websocket_connect(WS) as ws:
        ws.send_json(subscribe("s1", rows[END - 99 : END + 1]))
        recv(ws), recv(ws)
        ws.send_text('{"type": "candle", "id": "s1", "candle": [' + open_time + ', "1", "1", "1", "1", "1"]}')
        err = recv(ws)
        assert err["type"] == "error" and err["id"] == "s1" and err["open_time"] is None, err
        assert "open_time" in err["error"] and "a bug" not in err["error"], err
        ws.send_json({"type": "candle", "id": "s1", "candle": rows[END + 1]})
        assert signal(recv(ws)) == http(client, rows[END - 98 : END + 2])


def test_a_still_open_candle_is_refused_until_it_closes(trained_home: Path, rows: list[Any]) -> None:
    nxt = rows[END + 1]
    now = [(nxt[0] + 100_000) / 1000]  # 100 s into the next candle's 5 minutes
    with open_client(trained_home, clock=lambda: now[0]) as c, c.websocket_connect(WS) as ws:
        ready(c)
        ws.send_json(subscribe("s1", rows[END - 99 : END + 1]))
        recv(ws), recv(ws)
        ws.send_json({"type": "candle", "id": "s1", "candle": nxt})
        err = recv(ws)
        assert err["type"] == "error" and "still open" in err["error"] and err["open_time"] == nxt[0]
        now[0] = (nxt[0] + 300_000) / 1000
        ws.send_json({"type": "candle", "id": "s1", "candle": nxt})
        assert recv(ws)["type"] == "prediction"


def test_subscribe_drops_a_still_open_last_candle_as_predict_does(trained_home: Path, rows: list[Any]) -> None:
    now = (rows[END][0] + 10_000) / 1000  # the window's last candle opened 10 s ago
    with open_client(trained_home, clock=lambda: now) as c, c.websocket_connect(WS) as ws:
        ready(c)
        ws.send_json(subscribe("s1", rows[END - 99 : END + 1]))
        assert recv(ws)["last_open_time"] == rows[END - 1][0]
        first = recv(ws)
        assert first["open_time"] == rows[END - 1][0]
        assert any("still-open" in n for n in first["notes"])
        ws.send_json({"type": "candle", "id": "s1", "candle": rows[END]})  # still open by this clock
        assert "still open" in recv(ws)["error"]


def test_unknown_series_and_bad_subscriptions_are_errors_and_the_connection_goes_on(client: Any,
                                                                                     rows: list[Any]) -> None:
    window = rows[END - 99 : END + 1]
    cases = [
        ({**subscribe("e1", window), "symbol": "ETHUSDT"}, "No model for ETHUSDT 5m"),
        ({**subscribe("e2", window), "timeframe": "1h"}, "No model for BTCUSDT 1h"),
        ({**subscribe("e3", window), "model": "nope"}, "No live model 'nope'"),
        (subscribe("e4", window[:10]), "needs at least 49"),
        ({**subscribe("e5", window), "mode": "fast"}, "Field 'mode'"),
        ({**subscribe("e6", window), "timeframe": "7m"}, "not a Binance interval"),
        ({k: v for k, v in subscribe("e7", window).items() if k != "candles"}, "Field 'candles' is missing"),
        # a named model is still checked against the timeframe asked for (it was ignored: 5m predictions for "1h")
        ({**subscribe("e8", window), "model": MODEL, "timeframe": "1h"}, "subscribe with timeframe '5m'"),
        (subscribe("bad id!", window), "Field 'id'"),
        (subscribe("x" * 65, window), "Field 'id'"),
    ]
    with client.websocket_connect(WS) as ws:
        for msg, words in cases:
            ws.send_json(msg)
            err = recv(ws)
            assert err["type"] == "error" and words in err["error"], (msg.get("id"), err)
            assert err["id"] == (msg["id"] if msg["id"] in ("e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8") else None)
        for msg, words in [({"type": "candle", "id": "zz", "candle": window[-1]}, "No subscription 'zz'"),
                           ({"type": "unsubscribe", "id": "zz"}, "No subscription 'zz'"),
                           ({"type": "hello"}, "has an unknown type 'hello'"),
                           ({"id": "s1"}, "has no 'type'")]:
            ws.send_json(msg)
            err = recv(ws)
            assert err["type"] == "error" and words in err["error"], err
        ws.send_json({"type": "ping"})
        assert recv(ws) == {"type": "pong"}
        ws.send_json(subscribe("ok", window))  # the connection is still good for a real subscription
        assert recv(ws)["type"] == "subscribed" and recv(ws)["type"] == "prediction"
        ws.send_json(subscribe("ok", window))
        assert "exists" in recv(ws)["error"]
        ws.send_json({"type": "unsubscribe", "id": "ok"})
        assert recv(ws) == {"type": "unsubscribed", "id": "ok"}
        ws.send_json({"type": "candle", "id": "ok", "candle": rows[END + 1]})
        assert "No subscription 'ok'" in recv(ws)["error"]


def test_too_many_subscriptions_is_an_error_and_the_others_keep_working(trained_home: Path,
                                                                         rows: list[Any]) -> None:
    window = rows[END - 99 : END + 1]
    with open_client(trained_home, {"XYLEN_WS_MAX_SUBSCRIPTIONS": "2"}) as c, c.websocket_connect(WS) as ws:
        ready(c)
        for sid in ("a", "b"):
            ws.send_json(subscribe(sid, window))
            recv(ws), recv(ws)
        ws.send_json(subscribe("c", window))
        err = recv(ws)
        assert err["type"] == "error" and err["id"] == "c" and "XYLEN_WS_MAX_SUBSCRIPTIONS=2" in err["error"]
        for sid in ("a", "b"):
            ws.send_json({"type": "candle", "id": sid, "candle": rows[END + 1]})
            assert signal(recv(ws)) == http(c, rows[END - 98 : END + 2])
        ws.send_json({"type": "unsubscribe", "id": "a"})
        recv(ws)
        ws.send_json(subscribe("c", window))
        assert recv(ws)["type"] == "subscribed"


def test_the_documented_default_limits_64_subscriptions_and_1_mib_frames(trained_home: Path,
                                                                          rows: list[Any]) -> None:
    window = rows[END - 99 : END + 1]
    with open_client(trained_home) as c:
        ready(c)
        with c.websocket_connect(WS) as ws:
            for i in range(64):
                ws.send_json(subscribe(f"s{i}", window))
                assert recv(ws)["type"] == "subscribed" and recv(ws)["type"] == "prediction"
            ws.send_json(subscribe("s64", window))
            err = recv(ws)
            assert err["type"] == "error" and "XYLEN_WS_MAX_SUBSCRIPTIONS=64" in err["error"], err
            pad = 1_048_576 - len('{"type": "ping", "pad": ""}')
            ws.send_text('{"type": "ping", "pad": "' + "x" * pad + '"}')  # exactly 1 MiB: answered
            assert recv(ws) == {"type": "pong"}
            ws.send_text('{"type": "ping", "pad": "' + "x" * (pad + 1) + '"}')  # one byte more: closed
            code, reason = closed_with(ws)
            assert code == 1009 and "limit of 1048576 bytes" in reason, reason


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        ("not json", 1007, "Not JSON"),
        ("[1, 2]", 1007, "A JSON array, not an object"),
        ('"ping"', 1007, "A JSON string, not an object"),
        ("{\"type\": ", 1007, "Not JSON"),
        (b"\x00\x01", 1003, "Binary frames are not accepted"),
        ("{\"type\": \"ping\", \"pad\": \"" + "x" * 5000 + "\"}", 1009, "over the limit of 2048 bytes"),
        (b"x" * 5000, 1009, "over the limit of 2048 bytes"),
    ],
)
def test_malformed_frames_close_with_the_documented_code_and_others_are_served(
    trained_home: Path, frame: str | bytes, code: int, words: str
) -> None:
    with open_client(trained_home, {"XYLEN_WS_MAX_MESSAGE_BYTES": "2048"}) as c:
        with c.websocket_connect(WS) as other, c.websocket_connect(WS) as ws:
            if isinstance(frame, bytes):
                ws.send_bytes(frame)
            else:
                ws.send_text(frame)
            got, reason = closed_with(ws)
            assert (got, words in reason) == (code, True), reason
            assert len(reason.encode()) <= 123
            other.send_json({"type": "ping"})
            assert recv(other) == {"type": "pong"}
        with c.websocket_connect(WS) as again:
            again.send_json({"type": "ping"})
            assert recv(again) == {"type": "pong"}


def test_hot_swap_mid_stream_reaches_the_next_candle_and_says_so(home_copy: Path, rows: list[Any]) -> None:
    with open_client(home_copy, watch_interval=0.05) as c, c.websocket_connect(WS) as ws:
        ready(c)
        ws.send_json(subscribe("s1", rows[END - 99 : END + 1]))
        recv(ws), recv(ws)
        ws.send_json({"type": "candle", "id": "s1", "candle": rows[END + 1]})
        assert recv(ws)["model_version"] == "v0001"
        build_bundle(Registry(home_copy / "models"), MODEL, rounds=20, rows=2000, seed=3, heads=("move",))
        wait_for(lambda: c.get("/models").json()[0]["version"] == "v0002", timeout=60, what="the swap")
        ws.send_json({"type": "candle", "id": "s1", "candle": rows[END + 2]})
        got = recv(ws)
        assert got["model_version"] == "v0002" and "model swapped: v0001 -> v0002" in got["notes"]
        want = http(c, rows[END - 97 : END + 3])
        assert "move_probability" in want  # the new version's head is streamed as /predict answers it
        assert {**signal(got), "notes": []} == {**want, "notes": []}
        ws.send_json({"type": "candle", "id": "s1", "candle": rows[END + 3]})
        later = recv(ws)
        assert later["model_version"] == "v0002" and not any("swapped" in n for n in later["notes"])
        assert signal(later) == http(c, rows[END - 96 : END + 4])


KEY = "stream-test-key"


@pytest.fixture(scope="module")
def keyed(trained_home: Path) -> Iterator[Any]:
    import hashlib

    with open_client(trained_home, keys=KeyRing([hashlib.sha256(KEY.encode()).digest()]),
                     base_url="http://xylen.example") as c:  # with keys any Host is fine
        wait_for(lambda: c.get("/health/ready", headers={"X-API-Key": KEY}).status_code == 200, timeout=60,
                 what="readiness")
        yield c


def test_keys_in_the_headers_or_the_first_message(keyed: Any, rows: list[Any]) -> None:
    window = rows[END - 99 : END + 1]
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
        with keyed.websocket_connect(WS, headers=headers) as ws:
            ws.send_json(subscribe("s1", window))
            assert recv(ws)["type"] == "subscribed"
    with keyed.websocket_connect(WS) as ws:
        ws.send_json({"type": "auth", "key": KEY})
        assert recv(ws) == {"type": "authenticated"}
        ws.send_json(subscribe("s1", window))
        assert recv(ws)["type"] == "subscribed" and recv(ws)["type"] == "prediction"


@pytest.mark.parametrize(
    ("headers", "first"),
    [
        ({"X-API-Key": "wrong"}, None),  # a wrong key in the headers: closed at once
        ({}, {"type": "auth", "key": "wrong"}),
        ({}, {"type": "auth"}),
        ({}, {"type": "auth", "key": 12}),
        ({}, {"type": "ping"}),  # anything before the auth message
        ({}, {"type": "subscribe", "id": "s1", "candles": []}),
    ],
)
def test_a_missing_or_wrong_key_closes_1008(keyed: Any, headers: dict[str, str], first: Any) -> None:
    with keyed.websocket_connect(WS, headers=headers) as ws:
        if first is not None:
            ws.send_json(first)
        code, reason = closed_with(ws)
        assert code == 1008 and reason.startswith("Missing or wrong API key"), reason


@pytest.mark.parametrize(
    "origin", ["http://127.0.0.1:8000", "http://localhost", "https://localhost:3000", "http://[::1]:9", None]
)
def test_no_keys_loopback_origins_and_no_origin_are_accepted(client: Any, origin: str | None) -> None:
    with client.websocket_connect(WS, headers={"Origin": origin} if origin else {}) as ws:
        ws.send_json({"type": "ping"})
        assert recv(ws) == {"type": "pong"}


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "https://127.0.0.1.evil.example", "null", "file://", "http://localhost@evil.x",
               "chrome-extension://abc", "http://xylen.internal.evil.example"]
)
def test_no_keys_a_foreign_origin_is_refused_before_the_handshake(client: Any, origin: str) -> None:
    with pytest.raises(WebSocketDenialResponse) as info, client.websocket_connect(WS, headers={"Origin": origin}):
        pass
    assert info.value.status_code == 403
    assert "may not open a WebSocket" in info.value.json()["error"]


def test_no_keys_allowed_hosts_cover_origins_and_a_foreign_host_is_refused(trained_home: Path) -> None:
    with open_client(trained_home, {"XYLEN_ALLOWED_HOSTS": "xylen.internal"}) as c:
        with c.websocket_connect(WS, headers={"Origin": "https://xylen.internal"}) as ws:
            ws.send_json({"type": "ping"})
            assert recv(ws) == {"type": "pong"}
        with pytest.raises(WebSocketDenialResponse) as info, c.websocket_connect("ws://evil.example/ws/predict"):
            pass
        assert info.value.status_code == 421 and "Host 'evil.example' is not allowed" in info.value.json()["error"]


def test_metrics_count_connections_messages_and_time(client: Any, rows: list[Any]) -> None:
    with client.websocket_connect(WS) as ws:
        ws.send_json(subscribe("m", rows[END - 99 : END + 1]))
        recv(ws), recv(ws)
        ws.send_json({"type": "candle", "id": "m", "candle": rows[END + 1]})
        recv(ws)
        text = client.get("/metrics").text
        assert "xylen_ws_connections 1.0" in text
    assert 'xylen_ws_messages_total{type="candle"}' in text
    assert 'xylen_ws_message_duration_seconds_bucket{le="5e-05",type="candle"}' in text
    wait_for(lambda: "xylen_ws_connections 0.0" in client.get("/metrics").text, timeout=60, what="the gauge")


def test_openapi_description_points_at_the_stream(client: Any) -> None:
    assert "/ws/predict" in client.get("/openapi.json").json()["info"]["description"]


def test_a_connection_that_never_authenticates_is_closed_1008(keyed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unauthenticated socket is not held open for ever (30 s for the auth message; shortened here)."""
    import xylen.serve.stream as stream

    monkeypatch.setattr(stream, "AUTH_TIMEOUT_S", 0.05)
    with keyed.websocket_connect(WS) as ws:
        code, reason = closed_with(ws)  # nothing sent
    assert code == 1008 and reason.startswith("No API key within"), reason
