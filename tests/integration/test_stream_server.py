"""/ws/predict on a real `xylen serve` subprocess (uvicorn, loopback, no keys) with the `websockets` client: the
Origin check at the handshake, many connections at once, uvicorn's frame-size limit, and SIGTERM: streams work
through the drain, then close with 1001 (last: it stops the server)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.builders import window_matrix
from tests.conftest import binance_rows, free_port, wait_for

pytestmark = pytest.mark.integration
END = 2000
MAX_BYTES = 32768  # a 100-candle subscribe is ~12 kB


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    ws: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def served(trained_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("stream") / "home"
    shutil.copytree(trained_home, home)
    port = free_port()
    log = home / "serve.log"
    env = {**os.environ, "XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1",
           "XYLEN_WS_MAX_MESSAGE_BYTES": str(MAX_BYTES)}
    env.pop("XYLEN_API_KEYS", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port), "--drain-seconds",
                                 "600"], env=env, stdout=out, stderr=subprocess.STDOUT)
    s = Served(proc, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws/predict", log)
    try:
        wait_for(lambda: proc.poll() is not None or httpx.get(f"{s.url}/health/ready").status_code == 200,
                 timeout=60, what="the server to become ready")
        assert proc.poll() is None, f"xylen serve exited early:\n{s.output()}"
        yield s
    except BaseException:
        print(s.output())
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def rows(sample_candles: Any) -> list[list[Any]]:
    return binance_rows(window_matrix(sample_candles, len(sample_candles) - 1, len(sample_candles)))


def recv(ws: ClientConnection) -> dict[str, Any]:
    return orjson.loads(ws.recv(timeout=60))  # type: ignore[no-any-return]


def send(ws: ClientConnection, obj: dict[str, Any]) -> None:
    ws.send(orjson.dumps(obj).decode())


def subscribe(ws: ClientConnection, rows: list[Any], sid: str = "s1") -> None:
    send(ws, {"type": "subscribe", "id": sid, "symbol": "BTCUSDT", "timeframe": "5m",
              "candles": rows[END - 99 : END + 1]})
    assert recv(ws)["type"] == "subscribed"
    assert recv(ws)["type"] == "prediction"


def http(served: Served, window: list[Any]) -> dict[str, Any]:
    r = httpx.post(f"{served.url}/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "candles": window})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_a_foreign_origin_is_refused_at_the_handshake_loopback_and_none_are_not(served: Served) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(served.ws, origin="http://evil.example")  # type: ignore[arg-type]
    assert info.value.response.status_code == 403
    assert "may not open a WebSocket" in orjson.loads(info.value.response.body or b"{}")["error"]
    for origin in ("http://127.0.0.1:3000", "http://localhost", None):
        with connect(served.ws, origin=origin) as ws:  # type: ignore[arg-type]
            send(ws, {"type": "ping"})
            assert recv(ws) == {"type": "pong"}


def test_many_connections_at_once_each_get_post_predicts_answers(served: Served, rows: list[Any]) -> None:
    n, candles = 12, 15

    def stream(i: int) -> list[dict[str, Any]]:
        with connect(served.ws) as ws:
            subscribe(ws, rows, f"c{i}")
            out = []
            for k in range(END + 1, END + 1 + candles):
                send(ws, {"type": "candle", "id": f"c{i}", "candle": rows[k]})
                out.append(recv(ws))
            return out

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(stream, range(n)))
    want = [http(served, rows[k - 99 : k + 1]) for k in range(END + 1, END + 1 + candles)]
    for i, got in enumerate(results):
        assert [{k: v for k, v in g.items() if k not in ("type", "id", "open_time")} for g in got] == want, i


def test_a_frame_over_the_limit_is_closed_1009_by_the_server(served: Served) -> None:
    with connect(served.ws) as ws:
        ws.send("{\"type\": \"ping\", \"pad\": \"" + "x" * (2 * MAX_BYTES) + "\"}")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=60)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    with connect(served.ws) as ws:  # and the server goes on
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}


def test_a_client_that_sends_without_reading_is_held_back_by_tcp(served: Served) -> None:
    """The server answers one message at a time and awaits each answer: a client that never reads fills the
    socket buffers, the server stops reading it, and the client's sends block (here: no progress for 5 s) long before
    200 MB; the server keeps serving everyone else."""
    import base64
    import select
    import socket

    sock = socket.create_connection(("127.0.0.1", int(served.url.rsplit(":", 1)[1])))
    try:
        key = base64.b64encode(os.urandom(16))
        sock.sendall(b"GET /ws/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        ping = b'{"type":"ping"}'
        frame = bytes([0x81, 0x80 | len(ping)]) + b"\0\0\0\0" + ping  # a masked text frame (mask 0: as is)
        chunk = frame * 4096
        sock.setblocking(False)
        sent = 0
        while sent < 200_000_000:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                _, writable, _ = select.select([], [sock], [], 5.0)
                if not writable:
                    break  # the server stopped reading: it waits for us to read its answers
        else:
            pytest.fail(f"sent {sent} bytes without being held back")
        with connect(served.ws) as other:  # everyone else is still served
            send(other, {"type": "ping"})
            assert recv(other) == {"type": "pong"}
    finally:
        sock.close()


def test_sigterm_streams_through_the_drain_then_closes_1001(served: Served, rows: list[Any]) -> None:
    with connect(served.ws) as ws:
        subscribe(ws, rows)
        served.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(f"{served.url}/health/ready").status_code == 503, timeout=60, what="the drain")
        send(ws, {"type": "candle", "id": "s1", "candle": rows[END + 1]})  # still streaming while draining
        assert recv(ws)["open_time"] == rows[END + 1][0]
        served.proc.send_signal(signal.SIGTERM)  # a second SIGTERM ends the drain wait
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=60)
    assert info.value.rcvd is not None, "no close frame from the server"
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1001, "server shutting down")
    assert served.proc.wait(60) == 0
    assert "1011" not in served.output() and "Traceback" not in served.output(), served.output()


def test_with_workers_sigterm_closes_streams_1001_after_the_drain(trained_home: Path, tmp_path: Path,
                                                                   rows: list[Any]) -> None:
    """--workers N: each worker process closes its sockets with 1001 when the supervisor stops it."""
    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("XYLEN_API_KEYS", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port), "--workers", "2",
                                 "--drain-seconds", "600"], env=env, stdout=out, stderr=subprocess.STDOUT)
    s = Served(proc, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws/predict", log)
    try:
        wait_for(lambda: proc.poll() is not None or httpx.get(f"{s.url}/health/ready").status_code == 200,
                 timeout=60, what="the server to become ready")
        with connect(s.ws) as ws:
            subscribe(ws, rows)
            proc.send_signal(signal.SIGTERM)
            wait_for(lambda: httpx.get(f"{s.url}/health/ready").status_code == 503, timeout=60, what="the drain")
            send(ws, {"type": "candle", "id": "s1", "candle": rows[END + 1]})
            assert recv(ws)["open_time"] == rows[END + 1][0]
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=60)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001, s.output()
        assert proc.wait(60) == 0
    except BaseException:
        print(s.output())
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
