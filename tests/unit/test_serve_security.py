"""The server's network edges, in process: Host names a keyless server answers (DNS rebinding), probes that
work without a key but reveal no model, state-changing POSTs a web page cannot forge (CSRF), the loopback test
of the bind address, and the SIGTERM drain logic."""

from __future__ import annotations

import multiprocessing
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.builders import build_bundle
from tests.conftest import binance_rows, wait_for
from xylen.cli import app as cli_app
from xylen.core.errors import ConfigError
from xylen.core.registry import POINTER, Registry
from xylen.core.settings import load_settings
from xylen.serve.app import create_app
from xylen.serve.auth import HostCheck, KeyRing, check_bind, is_loopback

with warnings.catch_warnings():  # starlette warns at import that httpx2 would be preferred
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.unit
MODEL = "btcusdt-5m"
KEY = "edge-test-key-not-secret"
LOOPBACK_HOSTS = ["localhost", "localhost:8000", "LOCALHOST:1", "127.0.0.1", "127.0.0.1:8000", "127.3.4.5:80",
                  "[::1]", "[::1]:8000", "[::ffff:127.0.0.1]:80", "localhost:"]
FOREIGN_HOSTS = ["evil.example", "evil.example:8000", "127.evil.example", "127.0.0.1.nip.io:8000",
                 "localhost.evil.example", "localhost.", "[::2]:8000", "10.0.0.5", "0.0.0.0:8000", "127.1",
                 "localhost:abc", "localhost:80:80", "[::1]x", "[::1", "", "ex\u00e4mple.com", "127.0.0.1\u00b9"]
PROBES = ["/health/live", "/livez", "/v2/health/live", "/health/ready", "/readyz", "/v2/health/ready"]


def client(home: Path, base_url: str = "http://localhost", **overrides: Any) -> Any:
    return TestClient(create_app(load_settings({"home": home, **overrides}, environ={})), base_url=base_url)


@pytest.fixture(scope="module")
def keyless(trained_home: Path) -> Iterator[Any]:
    with client(trained_home) as c:
        wait_for(lambda: c.get("/health/ready").status_code == 200, what="readiness")
        yield c


@pytest.fixture(scope="module")
def keyed(trained_home: Path) -> Iterator[Any]:
    with client(trained_home, api_keys=KEY) as c:
        wait_for(lambda: c.get("/health/ready").status_code == 200, what="readiness")
        yield c


@pytest.fixture(scope="module")
def body(candle_window: np.ndarray) -> dict[str, Any]:
    return {"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_rows(candle_window)}


def _raw_host(value: str) -> dict[str, bytes]:
    return {"host": value.encode()}  # bytes: httpx sends them as they are (UTF-8 here for the non-ASCII cases)


# --- 4. what counts as loopback -----------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["localhost", "LocalHost", "127.0.0.1", "127.255.0.9", "::1", "[::1]",
                                  "::ffff:127.0.0.1", " 127.0.0.1 "])
def test_loopback_literals_and_localhost(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["127.evil.example", "127.0.0.1.nip.io", "localhost.evil.example", "localhost.",
                                  "0.0.0.0", "::", "", "10.0.0.1", "evil.example", "127.1", "[::1", "::2",
                                  "::ffff:10.0.0.1", "127.0.0.1:8000"])
def test_names_that_only_look_like_loopback_are_not(host: str) -> None:
    assert not is_loopback(host)


def test_check_bind_refuses_a_name_that_starts_with_127_without_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        check_bind("127.evil.example", KeyRing([]), allow_unauthenticated=False)
    assert "'127.evil.example'" in exc.value.message and exc.value.exit_code == 2
    for ok in ("127.0.0.2", "::1", "localhost"):
        check_bind(ok, KeyRing([]), allow_unauthenticated=False)
    check_bind("127.evil.example", KeyRing.from_settings(load_settings({"api_keys": KEY}, environ={})), False)
    check_bind("0.0.0.0", KeyRing([]), allow_unauthenticated=True)


def test_cli_serve_on_a_lookalike_host_exits_2(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli_app, ["--home", str(tmp_path), "serve", "--host", "127.evil.example"], env={})
    assert r.exit_code == 2, r.output
    assert "'127.evil.example'" in r.output and "Traceback" not in r.output


# --- 1. Host names a keyless server answers -----------------------------------------------------------------
@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_keyless_server_refuses_foreign_host_names(keyless: Any, body: dict[str, Any], host: str) -> None:
    for path in ("/health", "/metrics", "/models", "/openapi.json", "/docs", f"/v2/models/{MODEL}"):
        r = keyless.get(path, headers=_raw_host(host))
        assert r.status_code == 421, (host, path, r.status_code, r.text[:200])
        error = r.json()["error"]
        assert "is not allowed" in error and "XYLEN_ALLOWED_HOSTS" in error and "hint:" in error
    for path, payload in (("/predict", body), (f"/models/{MODEL}/rollback", {})):
        r = keyless.post(path, json=payload, headers=_raw_host(host))
        assert r.status_code == 421, (host, path, r.status_code, r.text[:200])


def test_the_refusal_quotes_the_host(keyless: Any) -> None:
    r = keyless.get("/health", headers=_raw_host("evil.example:8000"))
    assert "Host 'evil.example:8000' is not allowed" in r.json()["error"]


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_keyless_server_answers_loopback_host_names(keyless: Any, body: dict[str, Any], host: str) -> None:
    assert keyless.get("/health", headers=_raw_host(host)).status_code == 200
    r = keyless.post("/predict", json=body, headers=_raw_host(host))
    assert r.status_code == 200, r.text


def test_probes_answer_any_host_but_name_no_model(keyless: Any) -> None:
    for path in PROBES:
        r = keyless.get(path, headers=_raw_host("evil.example"))
        assert r.status_code == 200, (path, r.text)
        assert MODEL not in r.text and "v0001" not in r.text, (path, r.text)
    assert keyless.get("/health/ready").json()["models"] == {MODEL: "v0001"}  # from loopback: the details


def test_allowed_hosts_setting_adds_names(trained_home: Path) -> None:
    with client(trained_home, allowed_hosts="Xylen.Internal, 10.0.0.5,fd00::1") as c:
        for host in ("xylen.internal", "xylen.internal:8000", "10.0.0.5:80", "[fd00::1]:8000", "localhost",
                     "xylen.internal.", "[fd00:0::1]", "[FD00::0001]:8000"):  # spelled as the entries are
            assert c.get("/models", headers=_raw_host(host)).status_code == 200, host
        for host in ("evil.example", "xylen.internal.evil.example", "10.0.0.6", "xylen.internal..", "[fd00::2]"):
            assert c.get("/models", headers=_raw_host(host)).status_code == 421, host
    with client(trained_home, allowed_hosts="*") as c:
        assert c.get("/models", headers=_raw_host("anything.example")).status_code == 200


def test_host_verdicts_are_cached_but_bounded() -> None:
    check = HostCheck(["xylen.internal"])
    for i in range(HostCheck.CACHE * 3):
        assert not check.allows(f"h{i}.evil.example".encode())
    assert len(check._verdicts) == HostCheck.CACHE
    assert check.allows(b"xylen.internal:1") and check.allows(b"127.0.0.1")  # judged fresh once the cache is full


def test_bad_allowed_hosts_setting_is_exit_2_quoting_it(tmp_path: Path) -> None:
    for bad in ("http://xylen.internal", "xylen.internal:8000", "a b", "x/y", "user@host"):
        with pytest.raises(ConfigError) as exc:
            load_settings({"home": tmp_path}, environ={"XYLEN_ALLOWED_HOSTS": bad})
        assert "XYLEN_ALLOWED_HOSTS" in exc.value.message and repr(bad) in exc.value.message
        assert exc.value.exit_code == 2
    r = CliRunner().invoke(cli_app, ["--home", str(tmp_path), "config"], env={"XYLEN_ALLOWED_HOSTS": "http://x"})
    assert r.exit_code == 2 and "XYLEN_ALLOWED_HOSTS" in r.output and "Traceback" not in r.output


def test_refused_hosts_leave_no_label_in_metrics(keyless: Any) -> None:
    keyless.get("/health", headers=_raw_host("rebind-probe.example"))
    text = keyless.get("/metrics").text
    assert "rebind-probe" not in text
    assert 'xylen_http_requests_total{route="/health",status="421"}' in text


# --- 2. probes on a keyed server ----------------------------------------------------------------------------
def test_keyed_server_takes_any_host_with_the_key(keyed: Any, body: dict[str, Any]) -> None:
    for host in ("xylen-upstream", "10.1.2.3:8000", "evil.example"):
        r = keyed.post("/predict", json=body, headers={"host": host, "authorization": f"Bearer {KEY}"})
        assert r.status_code == 200, (host, r.text)


def test_keyed_probes_need_no_key_and_reveal_no_model(keyed: Any) -> None:
    for path in PROBES:
        r = keyed.get(path, headers={"host": "10.1.2.3:8000"})  # a Kubernetes probe by pod IP, no key
        assert r.status_code == 200, (path, r.text)
        assert MODEL not in r.text and "v0001" not in r.text, (path, r.text)
    for path in ("/health", "/metrics", "/models", "/v2/models", f"/v2/models/{MODEL}"):
        assert keyed.get(path).status_code == 401, path
    assert keyed.get("/health/ready", headers={"x-api-key": "wrong"}).json() == {"status": "ready"}
    full = keyed.get("/health/ready", headers={"x-api-key": KEY}).json()
    assert full["models"] == {MODEL: "v0001"}


def test_keyed_not_ready_probe_hides_the_reason_without_the_key(tmp_path: Path) -> None:
    with client(tmp_path, api_keys=KEY) as c:  # no models: the reason names the registry folder
        wait_for(lambda: c.get("/health/ready", headers={"x-api-key": KEY}).status_code == 503, what="a 503")
        r = c.get("/health/ready")
        assert r.status_code == 503 and r.json()["error"].startswith("not ready")
        assert str(tmp_path) not in r.text and "no models" not in r.text
        with_key = c.get("/health/ready", headers={"authorization": f"Bearer {KEY}"})
        assert with_key.status_code == 503 and "no models" in with_key.json()["error"]
        assert c.get("/v2/health/ready").status_code == 503


# --- 3. CSRF: state-changing POSTs ----------------------------------------------------------------------------
@pytest.fixture
def two_versions(home_copy: Path) -> Path:
    """v0001 and v0002 of the model, v0002 live: a rollback has somewhere to go."""
    version = build_bundle(Registry(home_copy / "models"), MODEL, rounds=8, rows=1500, seed=7)
    assert version == "v0002"
    return home_copy


def _current(home: Path) -> bytes:
    return (home / "models" / MODEL / POINTER).read_bytes()


FORGEABLE = [  # what a plain HTML form or a no-preflight fetch() from another origin can send
    ({}, b""),
    ({"content-type": "text/plain"}, b"{}"),
    ({"content-type": "text/plain;charset=UTF-8"}, b'{"a": 1}'),
    ({"content-type": "application/x-www-form-urlencoded"}, b"x=1"),
    ({"content-type": "multipart/form-data; boundary=b"}, b"--b--\r\n"),
    ({"content-type": "text/plain; application/json"}, b"{}"),
]


def test_rollback_a_web_page_could_send_is_refused(two_versions: Path) -> None:
    home = two_versions
    with client(home) as c:
        wait_for(lambda: c.get("/health/ready").json().get("models") == {MODEL: "v0002"}, timeout=60,
                 what="v0002 live")
        before = _current(home)
        for headers, raw in FORGEABLE:
            r = c.post(f"/models/{MODEL}/rollback", content=raw, headers=headers)
            assert r.status_code == 415, (headers, r.status_code, r.text)
            assert "application/json" in r.json()["error"] and "hint:" in r.json()["error"]
            assert _current(home) == before, headers
        r = c.post("/retrain", content=b"x=1", headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415
        # after DNS rebinding the page is same-origin and may send JSON, but its Host gives it away
        r = c.post(f"/models/{MODEL}/rollback", json={}, headers=_raw_host("evil.example"))
        assert r.status_code == 421 and _current(home) == before
        # no CORS: a preflight is never approved
        pre = c.options(f"/models/{MODEL}/rollback", headers={"origin": "http://evil.example",
                                                              "access-control-request-method": "POST",
                                                              "access-control-request-headers": "content-type"})
        assert "access-control-allow-origin" not in pre.headers
        r = c.post(f"/models/{MODEL}/rollback", headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == "v0001" and _current(home) != before


def test_keyed_rollback_needs_the_key_and_then_no_content_type(two_versions: Path) -> None:
    home = two_versions
    with client(home, api_keys=KEY) as c:
        auth = {"x-api-key": KEY}
        wait_for(lambda: c.get("/health/ready", headers=auth).json().get("models") == {MODEL: "v0002"}, timeout=60,
                 what="v0002 live")
        before = _current(home)
        for headers, raw in FORGEABLE:
            r = c.post(f"/models/{MODEL}/rollback", content=raw, headers=headers)
            assert r.status_code == 401 and _current(home) == before
        r = c.post(f"/models/{MODEL}/rollback", headers=auth)  # curl -X POST -H 'X-API-Key: ...'
        assert r.status_code == 200, r.text
        assert _current(home) != before


def test_predict_and_infer_stay_plain_posts(keyless: Any, body: dict[str, Any]) -> None:
    """They change nothing: no stricter rule than before (a JSON body without a content type is answered)."""
    import orjson

    r = keyless.post("/predict", content=orjson.dumps(body))
    assert r.status_code == 200, r.text


# --- 5. SIGTERM drain logic -----------------------------------------------------------------------------------
def test_workers_supervisor_drains_then_stops_and_a_second_sigterm_stops_now() -> None:
    from xylen.serve.server import _Supervisor

    def supervisor(drain_seconds: float) -> tuple[Any, Any]:
        sup = _Supervisor.__new__(_Supervisor)  # the signal logic alone (its __init__ installs process handlers)
        worker_end, sup._drain = multiprocessing.Pipe(duplex=False)
        sup._drain_seconds, sup.should_exit = drain_seconds, threading.Event()
        return sup, worker_end

    sup, worker_end = supervisor(600.0)
    assert not worker_end.poll(0)
    sup.handle_term()
    assert worker_end.poll(60) and not sup.should_exit.is_set()  # told (EOF); 600 s to go: still serving
    with pytest.raises(EOFError):
        worker_end.recv()
    sup.handle_term()
    assert sup.should_exit.is_set()
    sup, worker_end = supervisor(0.01)
    sup.handle_term()
    wait_for(sup.should_exit.is_set, timeout=60, what="the stop after the drain time")
    sup, worker_end = supervisor(0.0)
    sup.handle_term()
    assert sup.should_exit.is_set() and not worker_end.poll(0)  # no drain time: stop, nothing to tell
    sup, worker_end = supervisor(600.0)
    sup.handle_term()
    sup.handle_int()  # Ctrl-C while draining
    assert sup.should_exit.is_set()


def test_single_worker_drain_and_second_sigterm() -> None:
    import uvicorn

    from xylen.serve.server import _DrainingServer

    holder = SimpleNamespace(draining=False)
    server = _DrainingServer(uvicorn.Config(lambda: None), holder, 600.0)
    server.handle_exit(signal.SIGTERM, None)
    assert holder.draining and not server.should_exit
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit
    server = _DrainingServer(uvicorn.Config(lambda: None), SimpleNamespace(draining=False), 600.0)
    server.handle_exit(signal.SIGTERM, None)
    server.handle_exit(signal.SIGINT, None)  # Ctrl-C while draining
    assert server.should_exit
    server = _DrainingServer(uvicorn.Config(lambda: None), SimpleNamespace(draining=False), 0.01)
    server.handle_exit(signal.SIGTERM, None)
    wait_for(lambda: server.should_exit, timeout=60, what="the stop after the drain time")


def test_openapi_documents_the_edges(keyless: Any) -> None:
    spec = keyless.get("/openapi.json").json()
    rollback = spec["paths"]["/models/{name}/rollback"]["post"]
    assert {"415", "421"} <= set(rollback["responses"]) and "application/json" in rollback["description"]
    assert "pid" in spec["components"]["schemas"]["HealthResponse"]["properties"]
    assert "XYLEN_ALLOWED_HOSTS" in spec["info"]["description"]
