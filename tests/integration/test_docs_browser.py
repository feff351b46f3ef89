"""/docs and /redoc render in a real browser with no network, and load nothing from another origin.

A real `xylen serve` (no model: the docs need none) and Debian's Chromium, headless, cut off from the network: no
host name resolves but 127.0.0.1, and anything not on loopback is sent to a proxy port where nothing listens.
Chromium's net log records every URL request; the DOM after the scripts ran shows whether the page rendered.
FastAPI's default pages (scripts from cdn.jsdelivr.net) fail both checks: the DOM is the bare
`<div id="swagger-ui">` and the log holds the CDN's URLs.

Without Chromium the tests skip, unless XYLEN_BROWSER_TESTS=1 (CI's .ci/run installs it and sets that).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import free_port, wait_for
from xylen import __version__

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
CDN_SCRIPT = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"  # FastAPI's default


def chromium() -> str:
    found = shutil.which("chromium") or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if found is None:
        if os.environ.get("XYLEN_BROWSER_TESTS") == "1":
            pytest.fail("chromium not found; install Debian's chromium (apt-get install chromium)")
        pytest.skip("chromium not found (apt-get install chromium; XYLEN_BROWSER_TESTS=1 makes this a failure)")
    return found


def test_without_chromium_the_browser_tests_skip_unless_asked_to_run(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", str(tmp_path / "chromium"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("XYLEN_BROWSER_TESTS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium not found"):
        chromium()
    monkeypatch.setenv("XYLEN_BROWSER_TESTS", "1")
    with pytest.raises(pytest.fail.Exception, match="chromium not found; install Debian's chromium"):
        chromium()


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    origin: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("docs-browser-home")
    port = free_port()
    log = home / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XYLEN_")}
    env |= {"XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1"}  # no keys: loopback Hosts only
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    s = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_for(lambda: proc.poll() is not None or httpx.get(f"{s.origin}/health/live").status_code == 200,
                 timeout=120, what="xylen serve to answer")
        assert proc.poll() is None, f"xylen serve exited early:\n{s.output()}"
        yield s
    except BaseException:
        print(s.output())
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


HOSTILE = ["/static/docs/../docs.py", "/static/docs/%2e%2e/docs.py", "/static/docs/..%2fdocs.py",
           "/static/docs/%2e%2e%2f%2e%2e%2fserve%2fdocs.py", "/static/docs/swagger-ui/..%5c..%5cdocs.py",
           "/static/docs/../../../../../../etc/passwd", "/static/docs/%2fetc%2fpasswd", "/static/docs/a%00b"]


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_asset_paths_through_uvicorn_are_404(server: Server, path: str) -> None:
    conn = http.client.HTTPConnection(urlsplit(server.origin).netloc, timeout=60)
    try:
        conn.request("GET", path)  # sent as written: http.client neither decodes nor removes dot segments
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    assert r.status == 404, (path, r.status, body[:200])
    assert body == b'{"error":"No such route; see /docs."}'
    assert server.proc.poll() is None


@dataclass
class Visit:
    dom: str
    page_urls: list[str]  # every URL request the page caused (navigation, subresources, fetches, workers)
    browser_urls: list[str]  # Chromium's own background requests (update checks, accounts): not the page's
    csp_refusals: list[str]  # console lines where the page's Content-Security-Policy refused a load
    stderr: str


def _events(netlog: Path) -> tuple[dict[int, str], list[dict[str, Any]]]:
    text = netlog.read_text(errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # a log cut short (a crash) lacks its closing brackets
        data = json.loads(text.rstrip().rstrip(",") + "]}")
    names = {v: k for k, v in data["constants"]["logEventTypes"].items()}
    return names, data["events"]


def visit(url: str, tmp: Path) -> Visit:
    """Load ``url`` in headless Chromium without network; the DOM after 30 s of virtual time, and what it loaded."""
    tmp.mkdir(parents=True, exist_ok=True)
    netlog = tmp / "netlog.json"
    nowhere = free_port()  # nothing listens there: every request bound for another host fails at once
    cmd = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'profile'}",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions",
        # Chromium's own traffic about the page (autofill asks a Google server about its forms) and in general
        "--disable-features=AutofillServerCommunication,NetworkTimeServiceQuerying,Translate,OptimizationHints,"
        "MediaRouter",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--proxy-server=http://127.0.0.1:{nowhere}",  # loopback bypasses the proxy; everything else dies there
        f"--log-net-log={netlog}", "--net-log-capture-mode=Default",
        "--enable-logging=stderr", "--v=0",  # console messages (CSP refusals) on stderr
        "--virtual-time-budget=30000", "--dump-dom", url,
    ]
    env = {**os.environ, "HOME": str(tmp)}  # caches and crash reports stay in the temporary folder
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{done.stderr[-4000:]}"
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    site = f"{urlsplit(url).scheme}://{urlsplit(url).hostname}"
    names, events = _events(netlog)
    page, browser = [], []
    for e in events:
        p = e.get("params") or {}
        if names.get(e["type"]) != "URL_REQUEST_START_JOB" or "url" not in p:
            continue
        # the page's: the navigation, anything it initiated, anything in its network partition (top-frame site)
        mine = p["url"] == url or p.get("initiator") == origin or \
            str(p.get("network_isolation_key", "")).split(" ")[0] == site
        (page if mine else browser).append(p["url"])
    refusals = [ln for ln in done.stderr.splitlines() if "Content Security Policy" in ln]
    return Visit(done.stdout, page, browser, refusals, done.stderr)


def foreign(urls: list[str], origin: str) -> list[str]:
    """URLs that are neither on ``origin`` nor local to the browser (data:, blob:, about:)."""
    out = []
    for u in urls:
        parts = urlsplit(u)
        if parts.scheme in ("data", "blob", "about"):
            continue
        if f"{parts.scheme}://{parts.netloc}" != origin:
            out.append(u)
    return out


def check_offline(v: Visit, origin: str, path: str) -> None:
    context = f"page requests: {v.page_urls}\nChromium's own: {v.browser_urls}"
    assert foreign(v.page_urls, origin) == [], context
    assert f"{origin}{path}" in v.page_urls, context
    assert f"{origin}/openapi.json" in v.page_urls, context  # the script ran and was counted as the page's
    assert any("/static/docs/" in u for u in v.page_urls), context
    # a load the policy refused never reaches the network; only an image may be refused (ReDoc's logo from
    # cdn.redoc.ly), never a script, a style or a fetch the page needs
    assert [ln for ln in v.csp_refusals if "Loading the image '" not in ln] == [], v.csp_refusals


def test_swagger_ui_renders_offline_from_the_package(server: Server, tmp_path: Path) -> None:
    v = visit(f"{server.origin}/docs", tmp_path)
    check_offline(v, server.origin, "/docs")
    assert v.csp_refusals == [], v.csp_refusals
    # rendered: Swagger UI's operation blocks from our schema, not the bare <div id="swagger-ui"></div>
    assert re.search(r'class="opblock opblock-post[^"]*"', v.dom), v.dom[:3000]
    assert 'data-path="/predict"' in v.dom and 'data-path="/v2/models/{name}/infer"' in v.dom, v.dom[:3000]


def test_redoc_renders_offline_from_the_package(server: Server, tmp_path: Path) -> None:
    v = visit(f"{server.origin}/redoc", tmp_path)
    check_offline(v, server.origin, "/redoc")
    # rendered: the API's title and version, and the POST /predict operation
    assert re.search(rf"<h1[^>]*>xylen <span>\({re.escape(__version__)}\)</span></h1>", v.dom), v.dom[:3000]
    assert re.search(r'http-verb post">post</span><span[^>]*>/predict</span>', v.dom), v.dom[:3000]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_site(folder: Path) -> Iterator[str]:
    """A plain HTTP server for ``folder`` on loopback; yields its origin."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(60)


def test_the_check_sees_a_page_that_loads_from_a_cdn(tmp_path: Path) -> None:
    """The set-up itself, on a page shaped like FastAPI's default /docs: its CDN script does not load (the page
    stays blank offline), and the request is counted as the page's, so check_offline fails on it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "cdn.html").write_text(
        '<!DOCTYPE html><html><head><title>probe</title></head><body><div id="swagger-ui"></div>'
        f'<script src="{CDN_SCRIPT}" onerror="document.body.dataset.failed = 1"></script></body></html>'
    )
    with static_site(site) as origin:
        v = visit(f"{origin}/cdn.html", tmp_path / "browser")
    assert 'data-failed="1"' in v.dom, v.dom
    assert foreign(v.page_urls, origin) == [CDN_SCRIPT], (v.page_urls, v.browser_urls)
    with pytest.raises(AssertionError, match="cdn.jsdelivr.net"):
        check_offline(v, origin, "/cdn.html")
