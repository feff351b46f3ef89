"""Two real `xylen serve` replicas sharing one registry behind Debian's nginx, configured by the packaged
packaging/nginx/xylen.conf (only its listen, upstream server and access_log lines rewritten to loopback ports and
temporary paths): load through nginx, a promotion by `xylen models promote` reaching both replicas with 0 failed
requests (the time printed next to the issue's aim, poll interval + 5 s), the body limit, the WebSocket upgrade,
and a replica killed (-9) under load with 0 failed requests (nginx retries, then marks it down).

Skipped when nginx is not installed, unless XYLEN_NGINX_TESTS=1 (.ci/run installs Debian's nginx and sets it)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from tests.builders import build_bundle
from tests.conftest import binance_rows, free_port, wait_for
from xylen.core.registry import Registry

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]
PACKAGED = ROOT / "packaging" / "nginx" / "xylen.conf"
KEY = "nginx-test-key-not-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "btcusdt-5m"
UI_SECRET = "9e" * 32  # XYLEN_UI_SESSION_SECRET_FILE's content (64 hex characters)
POLL_S = 0.25  # the replicas' poll of CURRENT.json (README, "Hot swap"; serve/app.py watch_interval)
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def render(conf: str, replicas: list[int], listen: int, access_log: Path) -> str:
    """The packaged file with its upstream servers, listen port and access log moved; everything else as shipped."""
    blocks = re.findall(r"(?:^ *server 127\.0\.0\.1:\d+ .*;\n)+", conf, flags=re.M)
    assert len(blocks) == 2, "packaging/nginx/xylen.conf: the upstreams xylen and xylen_ui list the replicas"
    for block in blocks:
        [options] = set(re.findall(r"server 127\.0\.0\.1:\d+ (.*);", block))
        conf = conf.replace(block, "".join(f"    server 127.0.0.1:{p} {options};\n" for p in replicas), 1)
    conf, m = re.subn(r"^( *)listen 127\.0\.0\.1:\d+;", rf"\g<1>listen 127.0.0.1:{listen};", conf, flags=re.M)
    conf, k = re.subn(r"^( *)access_log \S+ xylen_upstream;", rf"\g<1>access_log {access_log} xylen_upstream;",
                      conf, flags=re.M)  # fmt: skip
    assert (m, k) == (1, 1), (m, k)
    return conf


def main_conf(prefix: Path) -> str:
    """A minimal nginx.conf around the packaged file (Debian's /etc/nginx/nginx.conf does the same with conf.d)."""
    # as root, the workers would run as nobody, who cannot enter pytest's private temporary folder
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temps = "".join(f"    {kind}_temp_path {prefix / kind};\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                              "uwsgi", "scgi"))  # fmt: skip
    return (f"{user}worker_processes 2;\npid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'} info;\n"
            f"events {{ worker_connections 256; }}\nhttp {{\n{temps}    include {prefix / 'xylen.conf'};\n}}\n")


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def live_version(self) -> str | None:
        r = httpx.get(f"{self.url}/models", headers=AUTH, timeout=10)
        return next((m["version"] for m in r.json() if m["name"] == MODEL), None) if r.status_code == 200 else None


@dataclass
class Front:
    url: str
    home: Path
    replicas: list[Replica]
    access_log: Path
    error_log: Path

    def log_lines(self) -> list[str]:
        return self.access_log.read_text(errors="replace").splitlines() if self.access_log.exists() else []


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_nginx(prefix: Path, ports: list[int]) -> tuple[subprocess.Popen[bytes], str]:
    """nginx (not a daemon) in ``prefix``, running the packaged file in front of ``ports``; its URL, once it answers."""
    assert NGINX is not None
    listen = free_port()
    (prefix / "xylen.conf").write_text(render(PACKAGED.read_text(), ports, listen, prefix / "access.log"))
    (prefix / "nginx.conf").write_text(main_conf(prefix))
    cmd = [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
    check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    with open(prefix / "nginx.out", "wb") as out:
        nginx = subprocess.Popen([*cmd, "-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{listen}"
    try:
        # a TCP connect, not a request: a request would reach (and could mark down) an upstream
        wait_for(lambda: nginx.poll() is not None or socket.create_connection(("127.0.0.1", listen), timeout=5).close()
                 is None, timeout=60, what="nginx to listen")  # fmt: skip
        assert nginx.poll() is None, (prefix / "error.log").read_text()
    except BaseException:
        stop(nginx)
        raise
    return nginx, url


def need_nginx() -> None:
    if NGINX is None:
        if os.environ.get("XYLEN_NGINX_TESTS") == "1":
            pytest.fail("XYLEN_NGINX_TESTS=1 but nginx is not installed (apt-get install nginx)")
        pytest.skip("nginx is not installed (apt-get install nginx; XYLEN_NGINX_TESTS=1 makes this a failure)")


@pytest.fixture(scope="module")
def front(trained_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    need_nginx()
    base = tmp_path_factory.mktemp("nginx-replicas")
    home = base / "home"  # one XYLEN_HOME, so one registry, for both replicas
    shutil.copytree(trained_home, home)
    secret = base / "ui-session.secret"  # one dashboard session secret for both, as the README says
    secret.write_text(f"{UI_SECRET}\n")
    secret.chmod(0o600)
    env = {**os.environ, "XYLEN_HOME": str(home), "XYLEN_API_KEYS": KEY, "OMP_NUM_THREADS": "1",
           "XYLEN_UI_SESSION_SECRET_FILE": str(secret)}  # fmt: skip
    replicas: list[Replica] = []
    nginx: subprocess.Popen[bytes] | None = None
    prefix = base / "nginx"
    prefix.mkdir()
    try:
        for i in range(2):
            port = free_port()
            log = base / f"replica{i}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port)], env=env,
                                        stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
            replicas.append(Replica(proc, f"http://127.0.0.1:{port}", port, log))
        for r in replicas:
            wait_for(lambda r=r: r.proc.poll() is not None or httpx.get(f"{r.url}/health/ready").status_code == 200,
                     timeout=120, what=f"replica {r.url} to become ready")  # fmt: skip
            assert r.proc.poll() is None, f"xylen serve exited early:\n{r.output()}"
        nginx, url = start_nginx(prefix, [r.port for r in replicas])
        front = Front(url, home, replicas, prefix / "access.log", prefix / "error.log")
        yield front
    except BaseException:
        for r in replicas:
            print(r.output())
        if (prefix / "error.log").exists():
            print((prefix / "error.log").read_text()[-3000:])
        raise
    finally:
        if nginx is not None:
            stop(nginx)
        for r in replicas:
            stop(r.proc)


@pytest.fixture(scope="module")
def body(candle_window: np.ndarray) -> dict[str, Any]:
    return {"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_rows(candle_window)}


@dataclass
class Load:
    """A few client threads posting /predict through nginx until stopped, each pausing ``pause`` s between
    requests; every non-200 answer or transport error is a failure."""

    url: str
    body: dict[str, Any]
    threads: int = 3
    pause: float = 0.05  # ~50 requests/s in all: load that leaves the replicas' hot swap some CPU on 2 cores
    versions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    workers: list[threading.Thread] = field(default_factory=list)

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
                self.stop.wait(self.pause)

    def __enter__(self) -> Load:
        self.workers = [threading.Thread(target=self.run) for _ in range(self.threads)]
        for w in self.workers:
            w.start()
        wait_for(lambda: len(self.versions) >= 10 or self.failures, what="load through nginx")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for w in self.workers:
            w.join(60)

    def more(self, n: int) -> None:
        start = len(self.versions)
        wait_for(lambda: len(self.versions) >= start + n, what=f"{n} more answers through nginx")


def upstreams(line: str) -> list[str]:
    m = re.search(r"upstream=(.*?) upstream_status=", line)
    return [a.strip() for a in re.split(r"[,:]\s", m.group(1))] if m else []


def test_the_packaged_file_as_the_readme_describes_it() -> None:
    conf = PACKAGED.read_text()
    assert re.findall(r"^ *listen (\S+);", conf, flags=re.M) == ["127.0.0.1:8080"]
    assert re.findall(r"^ *server (127\.0\.0\.1:\d+) max_fails=1 fail_timeout=10s;", conf, flags=re.M) == [
        "127.0.0.1:8001", "127.0.0.1:8002"] * 2  # fmt: skip
    assert re.search(r"^ *keepalive \d+;", conf, flags=re.M)
    limit = re.search(r"^ *client_max_body_size (\d+);", conf, flags=re.M)
    from xylen.core.settings import Settings

    assert limit and int(limit.group(1)) == Settings.model_fields["max_body_bytes"].default == 1_000_000


def time_waits(port: int) -> int:
    """Closed TCP connections to 127.0.0.1:``port`` still in TIME_WAIT (IPv4, /proc/net/tcp)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for r in rows if r.split()[2] == f"0100007F:{port:04X}" and r.split()[3] == "06")


def test_load_is_spread_over_both_replicas(front: Front, body: dict[str, Any]) -> None:
    linux = Path("/proc/net/tcp").exists()
    closed = [time_waits(r.port) for r in front.replicas] if linux else []
    with Load(front.url, body) as load:
        load.more(60)
    assert not load.failures, load.failures[:3]
    if linux:  # keep-alive: nginx reuses its connections to the replicas instead of one connection a request
        closed = [time_waits(r.port) - before for r, before in zip(front.replicas, closed)]
        assert sum(closed) < len(load.versions) / 4, (closed, len(load.versions))
    # the README's request, with a key and a public Host name (a keyed replica answers any Host nginx passes on)
    example = (ROOT / "examples" / "predict-request.json").read_bytes()
    r = httpx.post(f"{front.url}/predict", content=example, timeout=60,
                   headers={**AUTH, "Content-Type": "application/json", "Host": "xylen.example.com"})  # fmt: skip
    assert r.status_code == 200 and r.json()["model"] == MODEL, r.text
    r = httpx.post(f"{front.url}/predict", content=example, timeout=60,
                   headers={"X-API-Key": KEY, "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert httpx.post(f"{front.url}/predict", content=example, headers={"Content-Type": "application/json"},
                      timeout=60).status_code == 401  # the key is the replicas' check, passed through  # fmt: skip
    posts = [upstreams(line) for line in front.log_lines() if '"POST /predict ' in line]
    used = {addr for attempt in posts for addr in attempt}
    assert used == {f"127.0.0.1:{r.port}" for r in front.replicas}, used


def test_a_promotion_reaches_both_replicas_with_no_failed_request(front: Front, body: dict[str, Any]) -> None:
    reg = Registry(front.home / "models")
    before = {r.live_version() for r in front.replicas}
    assert len(before) == 1 and None not in before, before
    version = build_bundle(reg, MODEL, rounds=8, rows=1500, seed=7, promote=False)
    env = {**os.environ, "XYLEN_HOME": str(front.home)}
    with Load(front.url, body) as load:
        done = subprocess.run([sys.executable, "-m", "xylen", "models", "promote", MODEL, version], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        promoted = time.monotonic()  # CURRENT.json is written just before the command ends
        assert done.returncode == 0, done.stdout + done.stderr
        took: dict[str, float] = {}

        def arrived() -> bool:
            for r in front.replicas:
                if r.url not in took and r.live_version() == version:
                    took[r.url] = time.monotonic() - promoted
            return len(took) == len(front.replicas)

        wait_for(arrived, timeout=120, interval=0.05, what=f"{version} on both replicas")
        load.more(20)
        n = len(load.versions)
        load.more(20)
    # the issue's figure (poll interval + 5 s) is printed, not asserted: the time is mostly the replicas' verify
    # children, which a busy machine slows (tests never depend on load); the 120 s wait above catches a hang
    print(f"promotion live on the replicas after {sorted(round(t, 2) for t in took.values())} s "
          f"(aim: {POLL_S + 5} s)")
    assert not load.failures, load.failures[:3]
    assert set(load.versions[n:]) == {version}, set(load.versions[n:])
    nums = [int(v[1:]) for v in load.versions]
    assert version in load.versions and min(nums) < int(version[1:])


class Unavailable(BaseHTTPRequestHandler):
    """An upstream that answers every request 503 and records it (a replica still loading, or a broken one)."""

    protocol_version = "HTTP/1.1"
    seen: list[str]

    def answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append(f"{self.command} {self.path}")
        data = b'{"error":"not ready"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("method", "path", "tries"), [
    ("POST", "/predict", 2), ("POST", "/v2/models/btcusdt-5m/infer", 2), ("GET", "/health/ready", 2),
    ("GET", "/models", 2), ("POST", "/retrain", 1), ("POST", "/models/btcusdt-5m/rollback", 1),
])  # fmt: skip
def test_a_503_is_tried_on_the_next_replica_unless_the_post_changes_state(
    tmp_path: Path, method: str, path: str, tries: int
) -> None:
    """Two upstreams that answer 503: nginx sends a prediction, v2 infer or a GET to the second one too, but never
    sends a retrain or a rollback twice (the first replica may have acted on it)."""
    need_nginx()
    seen: list[str] = []
    handler = type("Handler", (Unavailable,), {"seen": seen})
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
    threads = [threading.Thread(target=srv.serve_forever, daemon=True) for srv in servers]
    for t in threads:
        t.start()
    nginx, url = start_nginx(tmp_path, [srv.server_address[1] for srv in servers])
    try:
        r = httpx.request(method, f"{url}{path}", headers={**AUTH, "Content-Type": "application/json"},
                          content=b"{}" if method == "POST" else None, timeout=60)  # fmt: skip
    finally:
        stop(nginx)
        for srv in servers:
            srv.shutdown()
            srv.server_close()
    assert r.status_code == 503, r.text
    assert seen == [f"{method} {path}"] * tries


def test_a_dashboard_login_holds_through_nginx(front: Front) -> None:
    """A login on /ui stays valid: every request of the client goes to the replica that issued its cookie. Behind a
    public name, the login form's Origin matches the Host nginx passes on (port included)."""
    site = "xylen.example.com:8443"
    with httpx.Client(base_url=front.url, headers={"Host": site}, timeout=60) as c:
        r = c.post("/ui/login", data={"key": KEY}, headers={"Origin": f"https://{site}"})
        assert r.status_code == 303, r.text
        pids = set()
        for _ in range(20):
            got = c.get("/ui/api/server")
            assert got.status_code == 200, got.text
            pids.add(got.json()["pid"])
        assert len(pids) == 1 and pids <= {r.proc.pid for r in front.replicas}, pids
        # another site's page is still refused
        assert c.post("/ui/logout", headers={"Origin": "https://evil.example"}).status_code == 403


def test_with_one_session_secret_file_a_dashboard_login_holds_on_every_replica(front: Front) -> None:
    """With XYLEN_UI_SESSION_SECRET_FILE the same on both replicas, the cookie and CSRF token of a login made through
    nginx are accepted by each replica directly (a GET and a state-changing POST): /ui needs no stickiness, and a
    client moved to another replica (its own died) stays logged in. Neither replica logs the secret."""
    site = "xylen.example.com:8443"
    with httpx.Client(base_url=front.url, headers={"Host": site}, timeout=60) as c:
        assert c.post("/ui/login", data={"key": KEY}, headers={"Origin": f"https://{site}"}).status_code == 303
        cookies = {"xylen_ui": c.cookies["xylen_ui"]}
        csrf = c.get("/ui/api/session").json()["csrf"]
    for r in front.replicas:
        got = httpx.get(f"{r.url}/ui/api/server", cookies=cookies, timeout=60)
        assert got.status_code == 200 and got.json()["pid"] == r.proc.pid, got.text
        live = r.live_version()
        url = f"{r.url}/ui/api/models/{MODEL}/promote"
        answer = httpx.post(url, json={"version": live}, cookies=cookies, headers={"X-CSRF-Token": csrf}, timeout=60)
        assert answer.status_code == 200 and answer.json()["live_version"] == live, answer.text  # the live one again
        assert UI_SECRET not in r.log.read_text(errors="replace")


def test_the_body_limit_is_the_servers(front: Front, body: dict[str, Any], sample_candles: Any) -> None:
    from tests.builders import window_matrix

    klines = {**body, "candles": binance_rows(window_matrix(sample_candles, len(sample_candles) - 1, 1000))}
    r = httpx.post(f"{front.url}/predict", json=klines, headers=AUTH, timeout=60)  # 1,000 klines pass
    assert r.status_code == 200, r.text
    # JSON may end in any amount of white space: bodies of exact sizes
    raw = orjson.dumps(body)
    json_ct = {**AUTH, "Content-Type": "application/json"}
    r = httpx.post(f"{front.url}/predict", content=raw + b" " * (1_000_001 - len(raw)), headers=json_ct, timeout=60)
    assert r.status_code == 413, r.text
    assert "over the limit of 1000000 bytes" in r.json()["error"]  # nginx's answer, in xylen's shape
    # nginx logs a request once it has read and dropped the rest of its body: after it answered
    refused = wait_for(lambda: [line for line in front.log_lines() if '"POST /predict ' in line and " 413 " in line],
                       what="the 413 in nginx's access log")  # fmt: skip
    assert all("upstream=- " in line for line in refused), refused  # no replica saw it
    # the same limit in nginx and in the replicas: a body nginx lets through is one the replica takes
    r = httpx.post(f"{front.url}/predict", content=raw + b" " * (1_000_000 - len(raw)), headers=json_ct, timeout=60)
    assert r.status_code == 200, r.text


def test_the_websocket_goes_through(front: Front, body: dict[str, Any]) -> None:
    from websockets.sync.client import connect

    ws_url = front.url.replace("http://", "ws://") + "/ws/predict"
    with connect(ws_url, additional_headers=AUTH) as ws:
        ws.send(orjson.dumps({"type": "subscribe", "id": "s1", **body}).decode())
        got = [orjson.loads(ws.recv(timeout=60)) for _ in range(2)]
    assert [g["type"] for g in got] == ["subscribed", "prediction"], got
    assert got[1]["model_version"] == front.replicas[0].live_version()


def test_a_killed_replica_costs_no_failed_request_nor_a_dashboard_login(front: Front, body: dict[str, Any]) -> None:
    """The replica killed is the one the dashboard client is held to: with the shared session secret file, the
    client stays logged in on the other one."""
    site = "xylen.example.com:8443"
    dashboard = httpx.Client(base_url=front.url, headers={"Host": site}, timeout=60)
    with dashboard:
        assert dashboard.post("/ui/login", data={"key": KEY}, headers={"Origin": f"https://{site}"}).status_code == 303
        pid = dashboard.get("/ui/api/server").json()["pid"]
        [killed] = [r for r in front.replicas if r.proc.pid == pid]
        [alive] = [r for r in front.replicas if r is not killed]
        _kill_under_load(front, body, killed, alive)
        got = dashboard.get("/ui/api/server")
        assert got.status_code == 200 and got.json()["pid"] == alive.proc.pid, got.text


def _kill_under_load(front: Front, body: dict[str, Any], killed: Replica, alive: Replica) -> None:
    with Load(front.url, body) as load:
        load.more(20)
        mark = len(front.log_lines())
        killed.proc.send_signal(signal.SIGKILL)
        killed.proc.wait(60)
        load.more(60)
    assert not load.failures, load.failures[:3]
    after = [upstreams(line) for line in front.log_lines()[mark:] if '"POST /predict ' in line]
    dead, live = f"127.0.0.1:{killed.port}", f"127.0.0.1:{alive.port}"
    # nginx sent some requests to the dead replica, then to the live one (the retry), and then marked it down:
    # the last answers all came from the live replica in one attempt
    assert any(a[:1] == [dead] and a[-1] == live for a in after), after[:10]
    assert all(a == [live] for a in after[-20:]), after[-20:]
