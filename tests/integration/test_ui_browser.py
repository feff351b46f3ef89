"""/ui in a real browser (issue #14): Debian's Chromium, headless, driven by Playwright, against real `xylen serve`
processes on a registry with a trained model.

Playwright for Python drives /usr/bin/chromium (never `playwright install`: its own browser download is not
reachable here). The browser is cut off from the network as in test_docs_browser.py: no host name resolves but
127.0.0.1. Every request the pages make is recorded (Playwright's request events), so a page that loaded anything
from another origin fails the tests. Screenshots of each view go to $XYLEN_TEST_ARTIFACTS (else the test's
tmp_path); the paths are printed.

The registry: btcusdt-1h trained on real 1h candles (v0001, with its report), retrained and promoted by the gate
(v0002, live), and v0003, a copy of v0002 whose manifest names another sha256 (corrupt, never promoted). The store
holds BTCUSDT 1h and ETHUSDT 1h with a gap and a known gap.

Without Chromium or Playwright the tests skip, unless XYLEN_BROWSER_TESTS=1 (CI's .ci/run sets it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from tests.conftest import free_port, wait_for
from tests.integration.test_docs_browser import chromium, static_site
from xylen.core.registry import Registry

pytestmark = pytest.mark.integration
MODEL = "btcusdt-1h"
KEY = "ui-browser-test-key-4f1c9a"  # distinctive, so finding it anywhere is a real find
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT_MS = 60_000  # Playwright waits: hangs only
ASSETS = Path(__file__).resolve().parents[2] / "src" / "xylen" / "serve" / "ui_assets"
BROWSER_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions",
    "--disable-features=AutofillServerCommunication,NetworkTimeServiceQuerying,Translate,OptimizationHints,"
    "MediaRouter",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


def sync_playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        if os.environ.get("XYLEN_BROWSER_TESTS") == "1":
            pytest.fail("playwright is not installed; pip install -e '.[dev]' brings it")
        pytest.skip("playwright is not installed (pip install -e '.[dev]'; XYLEN_BROWSER_TESTS=1 makes this a failure)")
    return start()


# --- the registry and the store ----------------------------------------------------------------------------------
def publish_bad_sha(registry: Registry, name: str, base: str) -> str:
    """Publish a copy of ``base`` whose manifest names another sha256 for the model file; CURRENT is untouched."""
    from xylen.core.bundle import read_manifest, write_manifest

    src = registry.path(name, base)
    with registry.stage(name) as staging:
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, staging / f.name)
        m = read_manifest(staging)
        m.artifact.sha256 = ("0" if m.artifact.sha256[0] != "0" else "1") + m.artifact.sha256[1:]
        write_manifest(staging, m)
        return registry.publish(name, staging)


@pytest.fixture(scope="module")
def ui_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers import ETH_1H, retrain_home
    from xylen.core.candles import read_candles
    from xylen.core.settings import load_settings
    from xylen.core.store import Store
    from xylen.train.retrain import RetrainOptions, retrain

    home = tmp_path_factory.mktemp("ui-browser") / "home"
    home.mkdir()
    retrain_home(home, new_rows=3000)  # v0001 on the older candles, all of them in the store
    settings = load_settings({"home": home, "folds": 2, "retrain_tolerance": 0.5}, environ={})
    (res,) = retrain(settings, RetrainOptions(min_new_samples=0)).results
    assert res.outcome == "promoted" and res.candidate_version == "v0002", res.to_dict()
    registry = Registry(home / "models")
    assert publish_bad_sha(registry, MODEL, "v0002") == "v0003"
    assert registry.current(MODEL).version == "v0002"  # type: ignore[union-attr]
    # ETHUSDT 1h: rows 100..104 missing (a gap), rows 200..202 missing and known to the exchange
    frame = read_candles(ETH_1H).frame.head(1000)
    t = frame["open_time"].to_list()
    keep = [i for i in range(len(t)) if not (100 <= i < 105 or 200 <= i < 203)]
    store = Store(home / "data")
    store.append("ETHUSDT", "1h", frame[keep])
    store.add_known_gaps("ETHUSDT", "1h", [(t[200], t[203])])
    return home


# --- servers -----------------------------------------------------------------------------------------------------
@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    origin: str
    home: Path
    log: Path
    headers: dict[str, str] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def live(self) -> str | None:
        ptr = Registry(self.home / "models").current(MODEL)
        return ptr.version if ptr else None

    def predict_version(self) -> str:
        r = httpx.post(f"{self.origin}/predict", json=predict_body(), headers=self.headers, timeout=60)
        assert r.status_code == 200, r.text
        return str(r.json()["model_version"])


@contextlib.contextmanager
def serving(ui_home: Path, tmp: Path, keys: str | None) -> Iterator[Server]:
    home = tmp / "home"
    shutil.copytree(ui_home, home)
    port = free_port()
    log = tmp / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XYLEN_")}
    env |= {"XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1", "XYLEN_UI_SAMPLE_S": "1"}  # a history within seconds
    if keys:
        env["XYLEN_API_KEYS"] = keys
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    s = Server(proc, f"http://127.0.0.1:{port}", home, log, AUTH if keys else {})
    try:
        wait_for(lambda: proc.poll() is not None or
                 httpx.get(f"{s.origin}/health/ready", headers=s.headers).status_code == 200,
                 timeout=120, what="xylen serve to become ready")
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


@pytest.fixture(scope="module")
def open_server(ui_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No API keys: loopback Hosts only, no login."""
    with serving(ui_home, tmp_path_factory.mktemp("ui-open"), None) as s:
        yield s


@pytest.fixture(scope="module")
def keyed_server(ui_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(ui_home, tmp_path_factory.mktemp("ui-keyed"), KEY) as s:
        yield s


def predict_body() -> dict[str, Any]:
    """The last 100 stored BTCUSDT 1h candles as Binance kline rows."""
    from tests.helpers import BTC_1H
    from xylen.core.candles import read_candles

    f = read_candles(BTC_1H).frame.tail(100)
    rows = [[int(r["open_time"]), str(r["open"]), str(r["high"]), str(r["low"]), str(r["close"]), str(r["volume"]),
             int(r["open_time"]) + 3_599_999, "0", 0, "0", "0", "0"] for r in f.iter_rows(named=True)]
    return {"symbol": "BTCUSDT", "timeframe": "1h", "candles": rows}


# --- the browser -------------------------------------------------------------------------------------------------
@dataclass
class Log:
    """What a browser context did: every request URL, console errors, page errors, CSP refusals."""
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text} at {m.location}")
                if m.type == "error" and "status of 409" not in m.text else None)

    def foreign(self, origin: str) -> list[str]:
        return [u for u in self.requests if urlsplit(u).scheme not in ("data", "blob", "about")
                and "{0.scheme}://{0.netloc}".format(urlsplit(u)) != origin]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    exe = chromium()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=BROWSER_ARGS, timeout=TIMEOUT_MS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page_log() -> Log:
    return Log()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, color_scheme="light")
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    root = os.environ.get("XYLEN_TEST_ARTIFACTS")
    folder = Path(root) / "ui" if root else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shot(page: Any, folder: Path, name: str) -> Path:
    path = folder / f"ui-{name}.png"
    bottom = "(document.querySelector('main') || document.body).getBoundingClientRect().bottom"
    height = page.evaluate(f"Math.ceil({bottom}) + 8")  # the page's content, not the empty viewport below it
    page.screenshot(path=str(path), full_page=True, clip={"x": 0, "y": 0, "width": 1400, "height": height})
    print(f"screenshot: {path}")
    return path


def open_view(page: Any, url: str, ready: str) -> None:
    page.goto(url)
    page.wait_for_selector(ready)


def wait_until(check: Callable[[], Any], what: str) -> Any:
    return wait_for(check, timeout=60, what=what, interval=0.1)


# --- keys off ----------------------------------------------------------------------------------------------------
def test_every_view_renders_without_keys_and_loads_nothing_from_another_origin(
        open_server: Server, context: Any, page_log: Log, artifacts: Path) -> None:
    page = context.new_page()
    page_log.attach(page)
    csp: list[str] = []
    page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
    base = f"{open_server.origin}/ui"

    first = page.goto(base)
    assert first is not None and first.status == 200
    policy = dict(d.strip().split(" ", 1) for d in first.headers["content-security-policy"].split(";") if d.strip())
    assert policy["script-src"] == "'self'", policy  # scripts from the server only: no inline, no eval
    page.wait_for_selector("#models tbody tr[data-model]")
    assert page.locator("input[name=key]").count() == 0  # no login without keys
    row = page.locator(f"#models tr[data-model='{MODEL}']")
    cells = row.locator("td").all_inner_texts()
    assert cells[0].strip() == MODEL and cells[1].strip() == "v0002", cells
    assert "rises more than" in cells[3], cells  # what the probability means
    assert re.search(r"AUC 0\.\d+ \[0\.\d+, 0\.\d+\]", cells[4]) and "edge" in cells[4], cells  # with its interval
    assert "since" in cells[5], cells  # live performance since promotion (too few outcomes yet: the count)
    assert page.locator("html[data-interactive='1']").count() == 1
    shot(page, artifacts, "models")

    row.locator("a", has_text=MODEL).click()
    page.wait_for_selector("#versions tbody tr[data-version='v0001']")
    assert page.url.endswith(f"#/models/{MODEL}")
    live = page.locator("#versions tr[data-version='v0002']")
    assert "live" in live.inner_text() and live.locator("button", has_text="Promote").count() == 0
    gate = live.locator("td").all_inner_texts()
    assert gate[3].startswith("promoted") and gate[6] == "logloss", gate
    assert 0 < float(gate[4]) < 1 and 0 < float(gate[5]) < 1, gate  # both scores (log-loss of each)
    v1_report = page.locator("#versions tr[data-version='v0001'] a", has_text="report")
    href = v1_report.get_attribute("href")
    assert href and href.startswith(f"/ui/report/{MODEL}/v0001/"), href
    assert httpx.get(open_server.origin + href).status_code == 200
    assert page.locator("#history tbody tr").count() >= 2
    shot(page, artifacts, "versions")

    page.locator("nav a", has_text="Data").click()
    page.wait_for_selector("#data tr[data-series='binance/ETHUSDT/1h']")
    eth = page.locator("#data tr[data-series='binance/ETHUSDT/1h'] td").all_inner_texts()
    assert eth[5] == "992", eth  # 1,000 candles less the 8 removed
    assert eth[7].startswith("1 gap, 5 candles missing"), eth  # the known gap is not counted as one
    assert eth[8].startswith("1 known gap"), eth
    page.locator("#data tr[data-series='binance/ETHUSDT/1h'] summary").first.click()
    (gap,) = page.locator("#data tr[data-series='binance/ETHUSDT/1h'] details[open] li").all_inner_texts()
    assert gap.endswith("(5 candles)"), gap
    shot(page, artifacts, "data")

    for _ in range(20):  # traffic for the charts: /predict appears among the routes of the server's own history
        open_server.predict_version()

    def history() -> dict[str, Any]:
        return httpx.get(f"{open_server.origin}/ui/api/server").json()["history"]  # type: ignore[no-any-return]

    wait_until(lambda: "/predict" in history()["routes"] and len(history()["t"]) >= 3, "samples with /predict")
    page.locator("nav a", has_text="Server").click()
    page.wait_for_selector(".charts .uplot")
    assert page.locator(".chart .uplot").count() == 5
    for chart in ("rate", "p50", "p99"):  # one series per route, /predict among them
        legend = page.locator(f".chart[data-chart='{chart}'] .u-legend").inner_text()
        assert "/predict" in legend, (chart, legend)
    assert "samples from the server's own counters" in page.locator("main").inner_text()
    assert page.locator("#readiness").inner_text().strip() == "ready"
    assert page.locator("#jobs").count() == 1
    shot(page, artifacts, "server")

    assert page_log.foreign(open_server.origin) == [], page_log.requests
    assert f"{base}" in page_log.requests and f"{base}/api/server" in page_log.requests, page_log.requests
    assert any("/ui/assets/vendor/uPlot.iife.min.js" in u for u in page_log.requests), page_log.requests
    assert csp == [], csp  # the strict policy refused nothing the page needs
    assert page_log.errors == [], page_log.errors


def test_promoting_a_corrupt_version_is_refused_in_the_page_with_the_reason(
        open_server: Server, context: Any, page_log: Log, artifacts: Path) -> None:
    page = context.new_page()
    page_log.attach(page)
    before = open_server.predict_version()
    assert open_server.live() == before
    open_view(page, f"{open_server.origin}/ui#/models/{MODEL}", "#versions tr[data-version='v0003']")
    page.locator("#versions tr[data-version='v0003'] button", has_text="Promote").click()
    dialog = page.locator("dialog#confirm[open]")
    dialog.wait_for()
    assert "v0003" in dialog.inner_text()
    dialog.locator("button", has_text="Promote v0003").click()
    page.wait_for_selector("#notice.err")
    text = page.locator("#notice-text").inner_text()
    assert text.startswith("Promotion refused: ") and "v0003" in text and "sha256" in text, text
    shot(page, artifacts, "refused")
    assert open_server.live() == before and open_server.predict_version() == before
    assert page.locator("#live-version").inner_text() == before


def test_a_rollback_through_the_page_changes_what_predict_serves(
        open_server: Server, context: Any, page_log: Log) -> None:
    page = context.new_page()
    page_log.attach(page)
    assert open_server.live() == "v0002" and open_server.predict_version() == "v0002"
    try:
        open_view(page, f"{open_server.origin}/ui#/models/{MODEL}", "#versions tr[data-version='v0001']")
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        # cancelled: nothing is sent, nothing changes
        page.locator("#rollback").click()
        page.locator("dialog#confirm[open] button", has_text="Cancel").click()
        page.wait_for_selector("dialog#confirm:not([open])", state="attached")
        assert posts == [] and open_server.live() == "v0002"
        # confirmed
        page.locator("#rollback").click()
        dialog = page.locator("dialog#confirm[open]")
        assert "back to v0001" in dialog.inner_text()
        dialog.locator("button", has_text="Roll back").click()
        page.wait_for_selector("#notice.ok")
        assert posts == [f"{open_server.origin}/ui/api/models/{MODEL}/rollback"], posts
        assert "now serves v0001" in page.locator("#notice-text").inner_text()
        assert open_server.live() == "v0001"
        wait_until(lambda: open_server.predict_version() == "v0001", "/predict to answer with v0001")
        wait_until(lambda: page.locator("#live-version").inner_text() == "v0001", "the page to show v0001 live")
        assert page_log.errors == [], page_log.errors
    finally:  # the next test starts from v0002 again
        r = httpx.post(f"{open_server.origin}/ui/api/models/{MODEL}/promote", json={"version": "v0002"})
        assert r.status_code == 200, r.text
        wait_until(lambda: open_server.predict_version() == "v0002", "/predict to answer with v0002 again")


HIDE = """(hidden) => {
    Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
    Object.defineProperty(document, "visibilityState", {configurable: true, get: () => hidden ? "hidden" : "visible"});
    document.dispatchEvent(new Event("visibilitychange"));
}"""


def test_the_page_polls_its_view_and_stops_while_the_tab_is_hidden(open_server: Server, context: Any) -> None:
    page = context.new_page()
    feeds: list[float] = []
    page.on("request", lambda r: feeds.append(time.monotonic()) if "/ui/api/server" in r.url else None)
    server_feed = f"{open_server.origin}/ui/api/server"
    open_view(page, f"{open_server.origin}/ui#/server", ".charts .uplot")
    with page.expect_request(server_feed):  # the view polls its feed (every 3 s)
        pass
    page.evaluate(HIDE, True)
    # a poll the page sent just before it was hidden may reach this process late on a loaded machine: count from
    # one polling interval later, then watch more than two intervals (a poll then is a failure, not a flake)
    page.wait_for_timeout(3_500)
    settled = len(feeds)
    page.wait_for_timeout(7_000)
    assert feeds[settled:] == []
    with page.expect_request(server_feed):  # polling again once the tab is visible
        page.evaluate(HIDE, False)


# --- keys on -----------------------------------------------------------------------------------------------------
def login(page: Any, server: Server, key: str) -> Any:
    page.goto(f"{server.origin}/ui")
    page.wait_for_selector("input[name=key]")
    page.fill("input[name=key]", key)
    with page.expect_navigation():
        page.locator("form button[type=submit]").click()


def test_with_keys_the_login_form_leads_to_the_dashboard_and_the_key_is_never_shown(
        keyed_server: Server, context: Any, page_log: Log, artifacts: Path) -> None:
    page = context.new_page()
    page_log.attach(page)
    responses: list[tuple[Any, bytes]] = []

    def keep(r: Any) -> None:  # the body now: a document's is gone once the page navigates away
        redirect = 300 <= r.status < 400
        responses.append((r, b"" if redirect else r.body()))

    page.on("response", keep)

    first = page.goto(f"{keyed_server.origin}/ui")
    assert first is not None and first.status == 200
    page.wait_for_selector("input[name=key][type=password]")
    assert page.locator("#models").count() == 0
    shot(page, artifacts, "login")

    login(page, keyed_server, "not-the-" + KEY)  # a wrong key: refused, and not echoed
    assert page.locator("input[name=key]").count() == 1
    assert "not accepted" in page.content() and "not-the-" not in page.content()
    page_log.errors.clear()  # the 401 of that login (and its page's favicon request): expected

    login(page, keyed_server, KEY)
    page.wait_for_selector(f"#models tr[data-model='{MODEL}']")
    page.wait_for_selector("#logout:not([hidden])")
    page.locator("nav a", has_text="Server").click()
    page.wait_for_selector(".charts .uplot")
    page.locator("nav a", has_text="Models").click()
    page.wait_for_selector(f"#models tr[data-model='{MODEL}']")

    # nowhere: the DOM, any page source the browser received, any URL, any header, cookies a script can read
    assert KEY not in page.content()
    assert len(responses) > 10 and any(r.url.endswith("/ui/api/models") for r, _ in responses)
    for r, body in responses:
        assert KEY not in r.url, r.url
        assert KEY not in str(r.all_headers()), (r.url, r.all_headers())
        assert KEY.encode() not in body, r.url
    assert all(KEY not in u for u in page_log.requests), page_log.requests
    assert KEY not in page.url
    assert page.evaluate("document.cookie") == ""  # the session cookie is HttpOnly
    assert KEY not in page.evaluate("JSON.stringify([localStorage, sessionStorage, history.state])")
    (cookie,) = [c for c in context.cookies() if c["name"] == "xylen_ui"]
    assert KEY not in cookie["value"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page_log.foreign(keyed_server.origin) == [], page_log.requests
    assert page_log.errors == [], page_log.errors

    with page.expect_navigation():
        page.locator("#logout button").click()
    page.wait_for_selector("input[name=key]")
    assert [c for c in context.cookies() if c["name"] == "xylen_ui"] == []


def test_a_session_that_ends_while_the_page_is_open_asks_to_log_in_again(
        keyed_server: Server, context: Any) -> None:
    page = context.new_page()
    login(page, keyed_server, KEY)
    page.wait_for_selector(f"#models tr[data-model='{MODEL}']")
    context.clear_cookies()  # as an expired session, or a server restarted with a new secret
    link = page.wait_for_selector("#banner:not([hidden]) a")  # the next poll answers 401
    assert link is not None and link.get_attribute("href") == "/ui" and link.inner_text() == "Log in again"
    assert page.locator(f"#models tr[data-model='{MODEL}']").count() == 1  # what it showed stays readable
    with page.expect_navigation():
        link.click()
    page.wait_for_selector("input[name=key]")


EVIL = """<!doctype html><html><body>
<form id="f" method="post" enctype="text/plain" action="{target}">
<input name="{{&quot;x&quot;:1, &quot;y" value="&quot;:2}}">
<button id="go">go</button></form>
<script>
window.sent = fetch("{target}", {{method: "POST", mode: "no-cors", credentials: "include",
  headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}}).then(() => "sent", (e) => "failed: " + e);
window.json = fetch("{target}", {{method: "POST", credentials: "include",
  headers: {{"Content-Type": "application/json"}}, body: "{{}}"}}).then((r) => "status " + r.status,
  (e) => "blocked: " + e);
</script></body></html>"""


def test_a_cross_origin_post_without_the_token_is_refused(
        keyed_server: Server, context: Any, page_log: Log, tmp_path: Path) -> None:
    """A page on another loopback port (same site: the SameSite=Strict cookie goes along) posts to the rollback
    feed from the logged-in browser: a form (text/plain), a no-cors fetch and a JSON fetch; then the same JSON POST
    with the browser's cookies but no X-CSRF-Token, as that page's origin and as the dashboard's own. None rolls
    back; the token from /ui/api/session is what a POST riding on the cookie needs."""
    page = context.new_page()
    page_log.attach(page)
    login(page, keyed_server, KEY)
    page.wait_for_selector(f"#models tr[data-model='{MODEL}']")
    assert keyed_server.live() == "v0002"
    target = f"{keyed_server.origin}/ui/api/models/{MODEL}/rollback"
    site = tmp_path / "evil"
    site.mkdir()
    (site / "evil.html").write_text(EVIL.format(target=target))
    seen: list[tuple[int, str | None]] = []
    page.on("response", lambda r: seen.append((r.status, r.request.header_value("cookie")))
            if r.url == target else None)
    with static_site(site) as evil:
        page.goto(f"{evil}/evil.html")
        assert page.evaluate("window.sent") == "sent"
        # JSON from another origin needs a CORS preflight, which xylen never approves: the POST is never sent
        assert page.evaluate("window.json").startswith("blocked"), page.evaluate("window.json")
        with page.expect_navigation() as nav:
            page.locator("#go").click()
        refused = nav.value
        assert refused is not None and refused.status in (403, 415), refused and refused.text()
        assert "error" in orjson.loads(refused.body())
        # both simple requests reached the server and were refused; the form's carried the session cookie (same
        # site), so a login was there and it is the request's shape that was refused
        assert len(seen) == 2 and all(status in (403, 415) for status, _ in seen), seen
        assert "xylen_ui=" in (refused.request.header_value("cookie") or ""), refused.request.all_headers()
        # the JSON POST the preflight stopped, sent anyway with the browser's cookie jar: refused for the token
        for origin in (evil, keyed_server.origin):
            r = context.request.post(target, data="{}", headers={"Content-Type": "application/json",
                                                                 "Origin": origin}, fail_on_status_code=False)
            assert r.status == 403, (origin, r.status, r.text())
            assert "error" in r.json(), r.text()
    assert keyed_server.live() == "v0002"
    assert keyed_server.predict_version() == "v0002"
    # the same POST with the session's token is accepted (what the dashboard's own buttons send)
    csrf = page.context.request.get(f"{keyed_server.origin}/ui/api/session").json()["csrf"]
    r = context.request.post(target, data="{}", fail_on_status_code=False, headers={
        "Content-Type": "application/json", "Origin": keyed_server.origin, "X-CSRF-Token": csrf})
    assert r.status == 200 and r.json()["live_version"] == "v0001", r.text()
    wait_until(lambda: keyed_server.predict_version() == "v0001", "/predict to answer with v0001")


# --- the vendored files ------------------------------------------------------------------------------------------
def test_the_assets_readme_lists_every_vendored_file_with_its_sha256() -> None:
    import hashlib

    readme = (ASSETS / "README.md").read_text()
    listed = dict(re.findall(r"\| `(vendor/[^`]+)` \| `[^`]+` \| `([0-9a-f]{64})` \|", readme))
    files = {p.relative_to(ASSETS).as_posix() for p in (ASSETS / "vendor").iterdir() if p.is_file()}
    assert set(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == digest, name
    assert "MIT" in (ASSETS / "vendor" / "LICENSE").read_text()


def test_the_page_has_no_inline_script_or_style_and_no_other_origin() -> None:
    """What lets the strict Content-Security-Policy hold: scripts and styles are files of this origin."""
    index = (ASSETS / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)", index) == []
    assert "<style" not in index and " style=" not in index and re.search(r"\son[a-z]+=", index) is None
    assert re.findall(r"(?:src|href)=\"(?:https?:)?//", index) == []
    css = (ASSETS / "app.css").read_text()
    assert re.search(r"@import|@font-face|url\(", css) is None  # system fonts, nothing fetched by the styles
    js = (ASSETS / "app.js").read_text()
    assert re.findall(r"\.(?:inner|outer)HTML\b|insertAdjacentHTML|document\.write|\beval\(|new Function", js) == []
    assert re.search(r"https?://", js) is None


def test_the_package_ships_every_dashboard_file() -> None:
    """pyproject's package data names every file of ui_assets/ (what the wheel and `pip install` carry)."""
    import fnmatch

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    root = ASSETS.parents[1]  # src/xylen
    pyproject = tomllib.loads((ASSETS.parents[3] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["xylen"]
    files = [p.relative_to(root).as_posix() for p in ASSETS.rglob("*") if p.is_file()]
    assert {"serve/ui_assets/index.html", "serve/ui_assets/app.js", "serve/ui_assets/vendor/uPlot.iife.min.js"} <= \
        set(files)
    # setuptools' globs: "*" stays within one folder
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/")
                                           for pat in patterns)]
    assert missing == [], missing


def test_the_readme_shows_the_models_view() -> None:
    readme = (ASSETS.parents[3] / "README.md").read_text()
    (path,) = re.findall(r"!\[The dashboard's Models view[^]]*\]\(([^)]+)\)", readme)
    shot = ASSETS.parents[3] / path
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size < 100_000
