"""The network edges of a real `xylen serve` process (uvicorn + httptools parse the requests): raw requests with
exactly the Host header a DNS-rebinding page or a Kubernetes probe sends, an HTTP/1.0 request without one, and
the rollback a plain HTML form would post."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.builders import build_bundle
from tests.conftest import free_port, wait_for
from xylen.core.registry import POINTER, Registry

pytestmark = pytest.mark.integration
MODEL = "btcusdt-5m"
KEY = "edge-process-key-not-secret"


def _start(home: Path, log: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.upper().startswith("XYLEN_")}
    full.update({"XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1", **env})
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port)], env=full, stdout=out,
                                stderr=subprocess.STDOUT)
    headers = {"x-api-key": env["XYLEN_API_KEYS"]} if "XYLEN_API_KEYS" in env else {}
    wait_for(lambda: proc.poll() is not None or httpx.get(f"http://127.0.0.1:{port}/health", headers=headers)
             .status_code == 200, timeout=60, what="the server to become healthy")
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raw(port: int, request: bytes) -> tuple[int, bytes]:
    """Send one request byte for byte (no client library adds or fixes headers); (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def get(port: int, path: str, host: bytes | None, version: bytes = b"1.1", extra: bytes = b"") -> tuple[int, bytes]:
    host_line = b"Host: " + host + b"\r\n" if host is not None else b""
    return raw(port, b"GET " + path.encode() + b" HTTP/" + version + b"\r\n" + host_line + extra +
               b"Connection: close\r\n\r\n")


def post(port: int, path: str, host: bytes, content_type: bytes | None, body: bytes) -> tuple[int, bytes]:
    ct = b"Content-Type: " + content_type + b"\r\n" if content_type is not None else b""
    return raw(port, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + ct +
               b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


@pytest.fixture(scope="module")
def keyless(trained_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    home = tmp_path_factory.mktemp("edges") / "home"
    shutil.copytree(trained_home, home)
    assert build_bundle(Registry(home / "models"), MODEL, rounds=8, rows=1500, seed=11) == "v0002"
    port = free_port()
    log = home / "serve.log"
    proc = _start(home, log, port)
    try:
        yield port, home
    except BaseException:
        print(log.read_text()[-4000:])
        raise
    finally:
        _stop(proc)


def test_dns_rebinding_host_is_refused(keyless: tuple[int, Path]) -> None:
    port, _ = keyless
    for host in (b"evil.example", b"evil.example:" + str(port).encode(), b"127.evil.example", b"localhost.evil"):
        status, body = get(port, "/health", host)
        assert status == 421, (host, status, body)
        assert host.decode() in orjson.loads(body)["error"] and b"XYLEN_ALLOWED_HOSTS" in body
        status, body = get(port, "/metrics", host)
        assert status == 421
    for host in (b"localhost:" + str(port).encode(), b"127.0.0.1:" + str(port).encode(), b"[::1]:1", b"localhost"):
        status, body = get(port, "/health", host)
        assert status == 200, (host, status, body)


def test_http10_request_without_host_is_answered(keyless: tuple[int, Path]) -> None:
    port, _ = keyless
    status, body = get(port, "/health", None, version=b"1.0")
    assert status == 200, body


def test_probes_answer_a_foreign_host_without_model_names(keyless: tuple[int, Path]) -> None:
    port, _ = keyless
    for path in ("/health/live", "/livez", "/health/ready", "/readyz", "/v2/health/live", "/v2/health/ready"):
        status, body = get(port, path, b"10.1.2.3:8000")
        assert status == 200, (path, status, body)
        assert MODEL.encode() not in body and b"v000" not in body, (path, body)


def test_form_rollback_is_refused_and_json_rollback_works(keyless: tuple[int, Path]) -> None:
    port, home = keyless
    pointer = home / "models" / MODEL / POINTER
    wait_for(lambda: b'"v0002"' in get(port, "/health/ready", b"localhost")[1], timeout=60, what="v0002 live")
    before = pointer.read_bytes()
    path = f"/models/{MODEL}/rollback"
    local = b"localhost:" + str(port).encode()
    for content_type, body in ((None, b""), (b"text/plain", b"{}"), (b"application/x-www-form-urlencoded", b"a=1"),
                               (b"multipart/form-data; boundary=x", b"--x--\r\n")):
        status, answer = post(port, path, local, content_type, body)
        assert status == 415, (content_type, status, answer)
        assert pointer.read_bytes() == before
    status, answer = post(port, path, b"evil.example", b"application/json", b"{}")  # rebinding: same-origin JSON
    assert status == 421 and pointer.read_bytes() == before
    status, answer = post(port, path, local, b"application/json", b"")
    assert status == 200, answer
    assert orjson.loads(answer)["version"] == "v0001" and pointer.read_bytes() != before


def test_keyed_server_answers_pod_ip_hosts_and_opens_only_the_probes(trained_home: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = _start(trained_home, tmp_path / "serve.log", port, XYLEN_API_KEYS=KEY)
    try:
        key = b"X-API-Key: " + KEY.encode() + b"\r\n"
        for host in (b"10.1.2.3:8000", b"xylen-upstream", b"evil.example"):
            status, body = get(port, "/health", host, extra=key)
            assert status == 200, (host, status, body)
            status, body = get(port, "/health", host)
            assert status == 401, (host, status, body)
        for path in ("/health/live", "/health/ready", "/readyz", "/v2/health/ready"):
            status, body = get(port, path, b"10.1.2.3:8000")  # a Kubernetes probe: pod IP, no key
            assert status == 200 and MODEL.encode() not in body, (path, status, body)
        status, body = get(port, "/health/ready", b"10.1.2.3:8000", extra=key)
        assert status == 200 and MODEL.encode() in body
        assert KEY not in (tmp_path / "serve.log").read_text()
    finally:
        _stop(proc)
