"""xylen.client's stream bookkeeping without a server: messages filed by subscription, in order; errors tied to no
subscription reach whoever waits; a closed socket's error is raised by every later call."""

from __future__ import annotations

import orjson
import pytest

from xylen.client import ClientError
from xylen.client.http import check_url
from xylen.client.stream import _Router, closed_error, prediction, subscribe_message, ws_url

pytestmark = pytest.mark.unit


def msg(**kw: object) -> bytes:
    return orjson.dumps(kw)


def test_messages_are_filed_by_subscription_in_order() -> None:
    r = _Router()
    r.open("s1")
    r.open("p1")
    for raw in (msg(type="prediction", id="p1", open_time=1), msg(type="prediction", id="s1", open_time=5),
                msg(type="prediction", id="p1", open_time=2), msg(type="pong"),
                msg(type="prediction", id="gone", open_time=9)):  # fmt: skip
        r.file(raw)
    assert r.take("s1") == {"type": "prediction", "id": "s1", "open_time": 5}
    assert r.take("s1") is None
    assert [r.take("p1")["open_time"], r.take("p1")["open_time"]] == [1, 2]  # type: ignore[index]
    assert r.take(None) == {"type": "pong"}
    with pytest.raises(ValueError, match="'s1' is already in use"):
        r.open("s1")
    r.forget("s1")
    with pytest.raises(ClientError, match="no longer on this stream"):
        r.take("s1")


def test_an_error_for_no_subscription_reaches_the_waiter_and_a_bad_frame_is_one() -> None:
    r = _Router()
    r.open("s1")
    r.file(b"[1, 2]")
    got = r.take("s1")
    assert got is not None and got["type"] == "error" and "not a JSON object" in got["error"]
    with pytest.raises(ClientError) as err:
        prediction(got)
    assert err.value.status is None and "[1, 2]" in err.value.message


def test_a_closed_socket_is_raised_by_every_later_call_after_what_was_received() -> None:
    class Rcvd:
        code, reason = 1013, "consumer too slow"

    class Closed(Exception):
        rcvd = Rcvd()

    r = _Router()
    r.open("p1")
    r.file(msg(type="prediction", id="p1", open_time=1))
    r.closed = closed_error(Closed())
    assert r.take("p1") is not None  # what arrived before the close is still handed out
    for _ in range(2):
        with pytest.raises(ClientError) as err:
            r.take("p1")
        assert err.value.status == 1013 and "consumer too slow" in err.value.message
    assert closed_error(Exception()).status == 1006  # no close frame at all


def test_a_refused_candle_names_its_open_time() -> None:
    with pytest.raises(ClientError) as err:
        prediction({"type": "error", "id": "s1", "error": "duplicate", "open_time": 1704067200000})
    assert err.value.open_time == 1704067200000 and str(err.value) == "duplicate"


def test_subscribe_messages_and_urls() -> None:
    assert subscribe_message("s1", "BTCUSDT", "5m", None, True, None, None) == {
        "type": "subscribe", "id": "s1", "mode": "push", "symbol": "BTCUSDT", "timeframe": "5m"}  # fmt: skip
    with pytest.raises(ValueError, match="push=True takes no candles"):
        subscribe_message("s1", "BTCUSDT", "5m", [[1]], True, None, None)
    with pytest.raises(ValueError, match="send mode needs candles"):
        subscribe_message("s1", "BTCUSDT", "5m", None, False, None, None)
    assert ws_url(check_url("https://xylen.example/api/")) == "wss://xylen.example/api/ws/predict"
    assert ws_url(check_url("http://127.0.0.1:8000")) == "ws://127.0.0.1:8000/ws/predict"
