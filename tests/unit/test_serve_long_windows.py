"""/predict on what bots really send: Binance's whole klines page (up to 1,000 candles), of which a model reads only
its last min_candles (+1 in case the last is still open). The whole body must be well-formed JSON; the candles before
the window are counted, not converted."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from tests.builders import window_matrix
from tests.conftest import binance_rows
from xylen.core import features
from xylen.serve import decode

pytestmark = pytest.mark.unit
N = 1000
WINDOW = features.MIN_CANDLES + 1  # the candles a request's answer reads: 49 + the one that may still be open


@pytest.fixture(scope="module")
def client(served_client: Any) -> Any:
    return served_client


@pytest.fixture(scope="module")
def page(sample_candles: Any) -> list[list[Any]]:
    """A Binance klines page: 1,000 consecutive 5m candles as 12-field arrays."""
    return binance_rows(window_matrix(sample_candles, len(sample_candles) - 1, N))


def post(client: Any, body: bytes) -> Any:
    return client.post("/predict", content=body, headers={"content-type": "application/json"})


def answer(client: Any, candles: list[Any], **extra: Any) -> Any:
    r = post(client, orjson.dumps({"symbol": "BTCUSDT", "timeframe": "5m", "candles": candles} | extra))
    assert r.status_code == 200, r.text
    return r.json()


def test_a_whole_klines_page_answers_like_its_last_candles(client: Any, page: list[list[Any]]) -> None:
    want = answer(client, page[-WINDOW:])
    assert answer(client, page) == want
    assert answer(client, page[-100:]) == want
    # objects and a non-ASCII body (which orjson reads in full) read the same tail
    objects = [{"t": r[0], "o": r[1], "h": r[2], "l": r[3], "c": r[4], "v": r[5], "T": r[6]} for r in page]
    assert answer(client, objects) == want
    assert answer(client, page, meta={"bot": "Zürich-1"}) == want


def test_candles_before_the_window_are_counted_not_read(client: Any, page: list[list[Any]]) -> None:
    want = answer(client, page[-WINDOW:])
    junk: list[Any] = [list(r) for r in page]
    junk[0] = "not a candle"
    junk[1] = None
    junk[2] = [1, 2]  # a short array
    junk[3][2] = "abc"
    junk[10:20] = junk[10:20][::-1]  # unsorted
    junk[N - WINDOW - 1][4] = "-5"  # the last candle before the window
    assert answer(client, junk) == want


def test_the_whole_body_must_still_be_json(client: Any, page: list[list[Any]]) -> None:
    body = orjson.dumps({"candles": page})
    for label, bad in (
        ("a missing comma in candle 0", body.replace(b"],[", b"] [", 1)),
        ("a trailing comma in candle 0", body.replace(b'"0"],[', b'"0",],[', 1)),
        ("a bare word in candle 5", body.replace(orjson.dumps(page[5][1]), b"abc", 1)),
        ("a NaN literal in candle 7", body.replace(orjson.dumps(page[7][1]), b"NaN", 1)),
        ("a control character in a string", body.replace(b'"0"', b'"\x01"', 1)),
        ("trailing bytes", body + b" x"),
    ):
        r = post(client, bad)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"], (label, r.text)


def test_faults_inside_the_window_name_the_candle_by_its_index_in_the_request(client: Any,
                                                                               page: list[list[Any]]) -> None:
    for i, field, value, needle in (
        (N - 1, 4, "NaN", f"candles[{N - 1}].close is not finite"),
        (N - 3, 2, "1e300", f"candles[{N - 3}].high is 1e+300, outside the prices"),
        (N - WINDOW, 5, "-1", f"candles[{N - WINDOW}].volume is -1.0"),
        (N - 20, 2, "x", f"candles[{N - 20}]: field 'high' value 'x'"),
    ):
        bad = [list(r) for r in page]
        bad[i][field] = value
        r = post(client, orjson.dumps({"candles": bad}))
        assert r.status_code == 422 and needle in r.json()["error"], (needle, r.text)
    gap = page[: N - 10] + page[N - 9 :]
    r = post(client, orjson.dumps({"timeframe": "5m", "symbol": "BTCUSDT", "candles": gap}))
    assert r.status_code == 422 and f"candles[{N - 10}] opens at" in r.json()["error"], r.text
    dup = page[: N - 5] + [page[N - 6]] + page[N - 5 :]
    r = post(client, orjson.dumps({"candles": dup}))
    assert r.status_code == 422 and f"candles[{N - 5}].open_time repeats" in r.json()["error"], r.text
    big = [list(r) for r in page]
    big[N - 2][5] = "marker"
    raw = orjson.dumps({"candles": big}).replace(b'"marker"', b"1e999")
    r = post(client, raw)
    assert r.status_code == 422 and f"candles[{N - 2}] " in r.json()["error"], r.text
    assert "no 64-bit float can hold" in r.json()["error"]


def test_decode_converts_only_the_tail(page: list[list[Any]]) -> None:
    """The unit under the behaviour above: what decode_candles builds is the last need + 1 candles, with their
    offset; too few candles are counted over the whole list."""
    req = decode.decode_predict(orjson.dumps({"candles": page}))
    w = decode.decode_candles(req.candles, features.MIN_CANDLES)
    assert len(w.candles) == WINDOW and w.first == N - WINDOW
    assert w.candles.open_time[-1] == page[-1][0] and w.close_time == page[-1][6]
    short = decode.decode_predict(orjson.dumps({"candles": page[:48]}))
    with pytest.raises(decode.RequestError, match="has 48 candle"):
        decode.decode_candles(short.candles, features.MIN_CANDLES)
    np.testing.assert_array_equal(
        decode.decode_candles(page[-WINDOW:], features.MIN_CANDLES).candles.close, w.candles.close)


def test_deep_nesting_is_refused_as_orjson_refused_it_and_never_a_500(client: Any, page: list[list[Any]]) -> None:
    """msgspec's decoder recurses on the interpreter's stack: nesting it cannot follow (here 1,000-3,000 levels, in
    a skipped candle, in ``meta`` or in ``features``) is read by orjson instead, which refuses beyond 1,024 levels
    and reads what is shallower, as before the fast decoder."""
    body = orjson.dumps({"symbol": "BTCUSDT", "timeframe": "5m", "candles": page})
    want = answer(client, page)
    for d in (1000, 3000):
        nest = b"[" * d + b"]" * d
        for label, deep, shallow in (
            ("a nested candle before the window", body.replace(b"[[", b"[" + nest + b",[", 1), 200),
            ("nested meta", body[:-1] + b',"meta":{"x":' + nest + b"}}", 200),
            ("nested features", b'{"features":' + nest + b"}", 422),
        ):
            r = post(client, deep)
            if d > 1024:
                assert r.status_code == 400 and "not valid JSON" in r.json()["error"], (label, r.text)
            else:
                assert r.status_code == shallow, (label, r.text)
                assert r.json() == want if shallow == 200 else "has 1 value(s)" in r.json()["error"], (label, r.text)


def test_a_candle_off_the_grid_by_less_than_a_second_is_told_in_milliseconds(client: Any,
                                                                               page: list[list[Any]]) -> None:
    off = [list(r) for r in page]
    off[-5][0] += 250  # 250 ms late: the message must not say it opens when it should
    r = post(client, orjson.dumps({"symbol": "BTCUSDT", "timeframe": "5m", "candles": off}))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert f"candles[{N - 5}] opens at {decode.iso(page[-5][0] + 250)}" in err and ".250Z" in err, err
    assert f"opens at {decode.iso(page[-5][0])}" in err
    assert decode.iso(1_704_067_200_000) == "2024-01-01T00:00:00Z"
