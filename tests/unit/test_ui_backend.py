"""The dashboard's server side in process (the gate + FastAPI app): login, cookie, CSRF, feeds, promote/rollback,
reports, --no-ui, the WebSocket cookie. The models are real: a trained 1h model (walk-forward, report) and a
retrain candidate the gate promoted (tests/helpers.retrain_home)."""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.builders import publish_corrupt
from tests.conftest import wait_for
from tests.helpers import retrain_home
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.serve import ui_auth
from xylen.serve.app import create_app
from xylen.serve.auth import KeyRing

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

KEY = "dashboard-test-key-0123"
OTHER = "another-key-4567"
NAME = "btcusdt-1h"
RING = KeyRing([hashlib.sha256(KEY.encode()).digest(), hashlib.sha256(OTHER.encode()).digest()])


@pytest.fixture(scope="module")
def base_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v0001 trained (walk-forward, report.html), v0002 a retrain candidate the gate promoted, WATCH.json."""
    from xylen.train.retrain import RetrainOptions, retrain

    home = tmp_path_factory.mktemp("ui") / "home"
    retrain_home(home, new_rows=1200)
    report = retrain(load_settings({"home": home, "retrain_holdout": 500}, environ={}), RetrainOptions())
    assert report.results[0].outcome == "promoted", report.results[0].message
    return home


@pytest.fixture
def home(base_home: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "home"
    shutil.copytree(base_home, dst)
    return dst


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    folder = tmp_path / "assets"
    folder.mkdir()
    page = '<!doctype html><title>dash</title><script src="/ui/assets/app.js?v=__ASSETS_V__"></script>'
    (folder / "index.html").write_text(page)
    (folder / "app.js").write_text("console.log('dash')")
    return folder


@contextmanager
def serving(home: Path, *, keys: KeyRing | None = RING, env: dict[str, str] | None = None,
            assets: Path | None = None, base_url: str = "http://127.0.0.1:8000") -> Iterator[Any]:
    from xylen.serve import ui

    with pytest.MonkeyPatch.context() as mp:
        if assets is not None:
            mp.setattr(ui, "ASSETS_DIR", assets)  # the page's folder is the frontend's: a stand-in page here
        app = create_app(load_settings({"home": home}, environ=env or {}), keys=keys)
    with TestClient(app, base_url=base_url) as c:
        probe = {"X-API-Key": KEY} if keys is not None and keys.enabled else {}
        wait_for(lambda: c.get("/health/ready", headers=probe).status_code == 200, timeout=60, what="readiness")
        yield c


def login(c: Any, key: str = KEY) -> str:
    r = c.post("/ui/login", data={"key": key}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return str(c.get("/ui/api/session").json()["csrf"])


def live(home: Path) -> str | None:
    ptr = Registry(home / "models").current(NAME)
    return ptr.version if ptr else None


# -- login, cookie, sessions --------------------------------------------------------------------------------------
def test_login_sets_an_httponly_strict_cookie_that_is_not_the_key(home: Path, assets: Path) -> None:
    with serving(home, assets=assets) as c:
        page = c.get("/ui")
        assert page.status_code == 200 and 'name="key"' in page.text and "<title>dash</title>" not in page.text
        assert c.get("/ui/api/models").status_code == 401
        wrong = c.post("/ui/login", data={"key": "not-it-xyz"}, follow_redirects=False)
        assert wrong.status_code == 401 and "not accepted" in wrong.text and "not-it-xyz" not in wrong.text
        assert "set-cookie" not in wrong.headers
        r = c.post("/ui/login", data={"key": KEY}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("xylen_ui=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Path=/" in cookie and "Secure" not in cookie  # plain http here
        token = cookie.split(";")[0].split("=", 1)[1]
        assert KEY not in cookie and KEY not in r.text and KEY not in r.headers["location"]
        assert hashlib.sha256(KEY.encode()).hexdigest() not in cookie
        assert ui_auth.verify(RING.session_secret, token, RING.digests) is not None
        page = c.get("/ui")  # now the dashboard itself, its asset URL carrying the folder's digest
        assert page.status_code == 200 and "<title>dash</title>" in page.text and "__ASSETS_V__" not in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        # a form posted from a no-referrer page carries "Origin: null" (refused): the pages send same-origin
        assert page.headers["referrer-policy"] == "same-origin"
        slash = c.get("/ui/", follow_redirects=False)
        assert slash.status_code == 308 and slash.headers["location"] == "/ui"
        r = c.post("/ui/logout", headers={"Origin": "null"}, follow_redirects=False)
        assert r.status_code == 403  # an opaque origin is never trusted

        session = c.get("/ui/api/session").json()
        assert session["auth"] == "cookie" and isinstance(session["csrf"], str) and session["ready"] is True
        for path in ("/ui", "/ui/api/session", "/ui/api/models", f"/ui/api/models/{NAME}", "/ui/api/server",
                     "/ui/api/data"):
            got = c.get(path)
            assert got.status_code == 200, (path, got.text)
            assert KEY not in got.text and KEY not in str(got.headers), path
        out = c.post("/ui/logout", follow_redirects=False)
        assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
        assert c.get("/ui/api/models").status_code == 401


def test_the_cookie_is_secure_behind_https(home: Path) -> None:
    with serving(home) as c:
        r = c.post("/ui/login", data={"key": KEY}, headers={"X-Forwarded-Proto": "https"}, follow_redirects=False)
        assert r.headers["set-cookie"].endswith("; Secure")
    with serving(home, base_url="https://127.0.0.1") as c:
        r = c.post("/ui/login", data={"key": KEY}, follow_redirects=False)
        assert r.headers["set-cookie"].endswith("; Secure")


def test_the_session_lasts_xylen_ui_session_max_age_default_12h(home: Path) -> None:
    """README: 'It expires after XYLEN_UI_SESSION_MAX_AGE (default 12h)'; durations as 7d; under a second is refused
    (the cookie's Max-Age is whole seconds: 0.5 made Max-Age=0, a login the browser dropped at once)."""
    from xylen.core.errors import ConfigError

    for env, seconds in (({}, 12 * 3600), ({"XYLEN_UI_SESSION_MAX_AGE": "7d"}, 7 * 86400),
                         ({"XYLEN_UI_SESSION_MAX_AGE": "90"}, 90)):
        with serving(home, env=env) as c:
            r = c.post("/ui/login", data={"key": KEY}, follow_redirects=False)
            assert f"Max-Age={seconds};" in r.headers["set-cookie"], (env, r.headers["set-cookie"])
            token = r.headers["set-cookie"].split(";")[0].split("=", 1)[1]
            expiry = int(token.split(".")[1])
            now = c.get("/ui/api/models").json()["now"] / 1000
            assert abs(expiry - (now + seconds)) < 60
            assert ui_auth.verify(RING.session_secret, token, RING.digests, now=expiry - 1) is not None
            assert ui_auth.verify(RING.session_secret, token, RING.digests, now=expiry) is None
    for bad, quoted in (("0.5", "0.5"), ("0", "0"), ("31d", "2678400"), ("12 hours", "12 hours")):
        with pytest.raises(ConfigError) as info:
            load_settings({"home": home}, environ={"XYLEN_UI_SESSION_MAX_AGE": bad})
        assert "XYLEN_UI_SESSION_MAX_AGE" in str(info.value) and quoted in str(info.value)


def test_a_tampered_expired_or_revoked_cookie_is_no_session(home: Path) -> None:
    digest = hashlib.sha256(KEY.encode()).digest()
    expired = ui_auth.issue(RING.session_secret, digest, 60, now=1_000_000)
    good = ui_auth.issue(RING.session_secret, digest, 3600)
    v, exp, nonce, mac = good.split(".")
    for bad in (expired, f"{v}.{int(exp) + 999}.{nonce}.{mac}", good[:-3] + "abc", "garbage"):
        with serving(home) as c:
            c.cookies.set("xylen_ui", bad)
            r = c.get("/ui/api/models")
            assert r.status_code == 401 and "log in" in r.json()["error"]
            page = c.get("/ui")
            assert page.status_code == 200 and 'name="key"' in page.text  # the login page
    revoked = KeyRing([hashlib.sha256(OTHER.encode()).digest()], RING.session_secret)  # KEY removed since
    with serving(home, keys=revoked) as c:
        c.cookies.set("xylen_ui", good)
        assert c.get("/ui/api/models").status_code == 401
    with serving(home) as c:
        c.cookies.set("xylen_ui", good)
        assert c.get("/ui/api/models").status_code == 200


def raw_request(c: Any, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """GET ``path`` with these exact header bytes (TestClient re-encodes header values as UTF-8)."""
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: Any) -> None:
        sent.append(msg)

    async def call() -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"127.0.0.1:8000"), *headers], "client": ("127.0.0.1", 5000),
                 "server": ("127.0.0.1", 8000)}
        await c.app(scope, receive, send)

    c.portal.call(call)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_a_hostile_cookie_is_no_session_and_never_a_500(home: Path) -> None:
    """Cookie bytes are anyone's: b'\\xb2' (superscript two in latin-1) passes str.isdigit() but not int(); it
    was a 500 on every /ui path and an exception in the WebSocket's cookie check."""
    from xylen.serve.stream_guard import session_allowed

    mac = ui_auth.issue(RING.session_secret, hashlib.sha256(KEY.encode()).digest(), 3600).split(".")[3]
    cookie = (b"cookie", b"xylen_ui=v1.\xb2.AAAA." + mac.encode())
    with serving(home) as c:
        status, body = raw_request(c, "/ui/api/models", [cookie])
        assert status == 401 and b"log in" in body
        status, body = raw_request(c, "/ui", [cookie])
        assert status == 200 and b'name="key"' in body  # the login page
        scope = {"type": "websocket", "headers": [(b"host", b"127.0.0.1:8000"),
                                                  (b"origin", b"http://127.0.0.1:8000"), cookie]}
        assert session_allowed(c.app.state, scope) is False  # c.app: the gate


def test_a_session_made_by_one_worker_is_accepted_by_another(home: Path) -> None:
    """Each --workers process has its own app and KeyRing of the same digests and session secret (the supervisor
    hands both to every worker): nothing else is shared."""
    with serving(home) as w1:
        login(w1)
        token = w1.cookies.get("xylen_ui")
    with serving(home, keys=KeyRing(list(RING.digests), RING.session_secret)) as w2:
        w2.cookies.set("xylen_ui", token)
        assert w2.get("/ui/api/session").json()["auth"] == "cookie"


def secret_env(folder: Path, secret_hex: str) -> dict[str, str]:
    """The settings of a keyed server whose dashboard sessions are signed with ``secret_hex`` (a mode-600 file)."""
    path = folder / f"ui-session-{secret_hex[:4]}.secret"
    path.write_text(secret_hex + "\n")
    path.chmod(0o600)
    return {"XYLEN_API_KEYS": KEY, "XYLEN_UI_SESSION_SECRET_FILE": str(path)}


def test_servers_with_one_session_secret_file_accept_each_others_sessions_and_csrf_tokens(
    home: Path, tmp_path: Path
) -> None:
    """Two replicas (two apps, each with its own KeyRing read from the settings; nothing shared but the file): a
    login made on one holds on the other, for the feeds and for a state-changing POST with the first's CSRF token.
    The same goes for a server restarted with the file: the second app is that server too."""
    env = secret_env(tmp_path, "5a" * 32)
    url = f"/ui/api/models/{NAME}/rollback"
    with serving(home, keys=None, env=env) as one, serving(home, keys=None, env=env) as two:
        csrf = login(one)
        two.cookies.set("xylen_ui", one.cookies.get("xylen_ui"))
        for c in (one, two):
            got = c.get("/ui/api/session").json()
            assert (got["auth"], got["csrf"]) == ("cookie", csrf)
        assert two.get("/ui/api/models").status_code == 200
        assert two.post(url, json={}, headers={"X-CSRF-Token": "wrong"}).status_code == 403
        r = two.post(url, json={}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        assert r.json()["live_version"] == "v0001"
    assert live(home) == "v0001"


def test_a_session_is_no_session_on_a_server_with_another_secret_file_or_none(home: Path, tmp_path: Path) -> None:
    url = f"/ui/api/models/{NAME}/rollback"
    with serving(home, keys=None, env=secret_env(tmp_path, "5a" * 32)) as one:
        csrf = login(one)
        token = one.cookies.get("xylen_ui")
    for env in (secret_env(tmp_path, "a5" * 32), {"XYLEN_API_KEYS": KEY}):
        with serving(home, keys=None, env=env) as other:
            other.cookies.set("xylen_ui", token)
            assert other.get("/ui/api/session").status_code == 401
            assert other.get("/ui/api/models").status_code == 401
            assert other.post(url, json={}, headers={"X-CSRF-Token": csrf}).status_code == 401
    assert live(home) == "v0002"


def test_the_api_key_header_works_for_the_feeds_and_without_keys_the_host_rule_applies(home: Path) -> None:
    with serving(home) as c:
        s = c.get("/ui/api/session", headers={"X-API-Key": KEY}).json()
        assert s["auth"] == "key" and s["csrf"] is None
        assert c.get("/ui/api/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    with serving(home, keys=KeyRing([])) as c:
        assert c.get("/ui/api/session").json()["auth"] == "none"
        assert c.get("/ui/api/models", headers={"Host": "evil.example"}).status_code == 421
        assert c.post("/ui/login", data={"key": "x"}, follow_redirects=False).status_code == 303  # nothing to log in


# -- CSRF and cross-origin ---------------------------------------------------------------------------------------
def test_state_changing_posts_need_json_and_the_session_csrf_token(home: Path) -> None:
    url = f"/ui/api/models/{NAME}/rollback"
    with serving(home) as c:
        csrf = login(c)
        assert c.post(url, json={}).status_code == 403  # no token
        r = c.post(url, json={}, headers={"X-CSRF-Token": "wrong"})
        assert r.status_code == 403 and "X-CSRF-Token" in r.json()["error"]
        r = c.post(url, data={"x": "1"}, headers={"X-CSRF-Token": csrf})  # a form, as a foreign page can send
        assert r.status_code == 415
        r = c.post(url, content=b"{}", headers={"X-CSRF-Token": csrf, "Content-Type": "text/plain"})
        assert r.status_code == 415
        r = c.post(url, json={}, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
        assert r.status_code == 403 and "evil.example" in r.json()["error"]
        r = c.post(url, json={}, headers={"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        assert live(home) == "v0002"  # nothing of the above changed anything
        r = c.post(url, json={}, headers={"X-CSRF-Token": csrf, "Origin": "http://127.0.0.1:8000"})
        assert r.status_code == 200, r.text
        assert r.json() == {"name": NAME, "live_version": "v0001", "previous_version": "v0002"}
    assert live(home) == "v0001"


def test_json_is_needed_without_a_key_header_even_without_a_body_and_with_a_key_only_for_a_body(home: Path) -> None:
    """README: with the cookie or without keys, JSON even without a body; with a key header, a rollback may send
    no body and no Content-Type, but a body must be JSON."""
    url = f"/ui/api/models/{NAME}/rollback"
    with serving(home) as c:
        csrf = login(c)
        r = c.post(url, headers={"X-CSRF-Token": csrf})  # the cookie, no body, no Content-Type
        assert r.status_code == 415 and "application/json" in r.json()["error"]
        key = {"X-API-Key": KEY}
        c.cookies.clear()
        r = c.post(url, content=b"{}", headers={**key, "Content-Type": "text/plain"})
        assert r.status_code == 415 and "text/plain" in r.json()["error"]
        assert live(home) == "v0002"
        r = c.post(url, headers=key)
        assert r.status_code == 200 and r.json()["live_version"] == "v0001"
    with serving(home, keys=KeyRing([])) as c:
        assert c.post(f"/ui/api/models/{NAME}/promote", content=b"").status_code == 415
        assert live(home) == "v0001"


def test_a_cross_origin_login_or_post_is_refused_also_without_keys(home: Path) -> None:
    with serving(home) as c:
        r = c.post("/ui/login", data={"key": KEY}, headers={"Origin": "http://evil.example"},
                   follow_redirects=False)
        assert r.status_code == 403 and "set-cookie" not in r.headers
    with serving(home, keys=KeyRing([])) as c:
        url = f"/ui/api/models/{NAME}/rollback"
        assert c.post(url, content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 415
        r = c.post(url, json={}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        assert live(home) == "v0002"


# -- promote and rollback ----------------------------------------------------------------------------------------
def test_a_corrupt_version_is_refused_with_the_reason_and_the_live_model_stays(home: Path) -> None:
    reg = Registry(home / "models")
    bad = publish_corrupt(reg, NAME, "wrong_sha", base="v0002")
    builders_point_back(reg, "v0002")
    with serving(home) as c:
        csrf = login(c)
        r = c.post(f"/ui/api/models/{NAME}/promote", json={"version": bad}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 409, r.text
        assert bad in r.json()["error"] and "sha256" in r.json()["error"]
        assert live(home) == "v0002"
        h = {"X-CSRF-Token": csrf}
        assert c.post(f"/ui/api/models/{NAME}/promote", json={"version": "v0099"}, headers=h).status_code == 404
        assert c.post("/ui/api/models/nosuch-1h/promote", json={"version": "v0001"}, headers=h).status_code == 404
        for body in ({}, {"version": 3}, {"version": "latest"}, {"version": "v0001", "x": 1}, [1]):
            r = c.post(f"/ui/api/models/{NAME}/promote", json=body, headers=h)
            assert r.status_code == 422, (body, r.text)
        r = c.post(f"/ui/api/models/{NAME}/promote", json={"version": "v0001"}, headers=h)
        assert r.status_code == 200 and r.json()["live_version"] == "v0001"
        assert live(home) == "v0001"


def builders_point_back(reg: Registry, version: str) -> None:
    """publish_corrupt points CURRENT at the bad copy; put the good version back through the registry."""
    reg.promote(NAME, version)


def test_rollback_through_the_dashboard_changes_what_predict_serves(home: Path) -> None:
    from tests.helpers import BTC_1H
    from xylen.core.candles import read_candles

    df = read_candles(BTC_1H).frame.tail(60)
    candles = [{"t": int(r["open_time"]), "o": r["open"], "h": r["high"], "l": r["low"], "c": r["close"],
                "v": r["volume"]} for r in df.iter_rows(named=True)]
    body = {"symbol": "BTCUSDT", "timeframe": "1h", "candles": candles}
    with serving(home) as c:
        auth = {"X-API-Key": KEY}
        assert c.post("/predict", json=body, headers=auth).json()["model_version"] == "v0002"
        csrf = login(c)
        r = c.post(f"/ui/api/models/{NAME}/rollback", json={}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200 and r.json()["live_version"] == "v0001"
        wait_for(lambda: c.post("/predict", json=body, headers=auth).json()["model_version"] == "v0001",
                 timeout=60, what="the swap to v0001")
        r = c.post(f"/ui/api/models/{NAME}/rollback", json={}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 409 and "no previous live version" in r.json()["error"]


# -- feeds -------------------------------------------------------------------------------------------------------
def test_models_feed_shape_on_a_trained_and_retrained_model(home: Path) -> None:
    reg = Registry(home / "models")
    from xylen.train import watch

    rec = watch.read(reg, NAME)
    assert rec is not None
    with serving(home, env={"XYLEN_MODEL_MAX_AGE": "1s"}) as c:
        login(c)
        feed = c.get("/ui/api/models").json()
        (row,) = feed["models"]
        m = reg.manifest(NAME, "v0002")
        assert row["name"] == NAME and row["live_version"] == "v0002" and row["loaded_version"] == "v0002"
        assert row["stale"] is True and row["max_age_s"] == 1.0 and row["age_s"] > 1  # XYLEN_MODEL_MAX_AGE
        assert row["label"].startswith("P(") and row["ok"] is True and row["error"] is None
        assert row["sentence"] == c.get("/models", headers={"X-API-Key": KEY}).json()[0]["summary"]
        assert row["edge"] == reg.summary(NAME)[-1]["edge"] and set(row["edge"]) == {"value", "low", "high",
                                                                                    "verdict"}
        assert row["live"]["rows"] == rec["rows"] and row["live"]["auc"] == (rec["model"] or {}).get("auc")
        assert row["live"]["since"] == int(watch.parse_iso(reg.current(NAME).promoted_at) * 1000)
        assert row["created_at"] == int(watch.parse_iso(m.created_at) * 1000)
        assert row["report_url"] is None or c.get(row["report_url"]).status_code == 200
    with serving(home) as c:
        login(c)
        assert c.get("/ui/api/models").json()["models"][0]["stale"] is False


def test_versions_feed_has_gate_decisions_both_scores_pins_and_history(home: Path) -> None:
    reg = Registry(home / "models")
    reg.pin(NAME, "v0001")
    gate = reg.manifest(NAME, "v0002").model_extra["gate"]
    with serving(home) as c:
        login(c)
        feed = c.get(f"/ui/api/models/{NAME}").json()
        assert feed["live_version"] == "v0002" and feed["previous_version"] == "v0001"
        v2, v1 = feed["versions"]  # newest first
        assert (v2["version"], v1["version"]) == ("v0002", "v0001")
        assert v2["live"] and not v1["live"] and v1["pinned"] is True and v2["pinned"] is False
        g = v2["gate"]
        assert g["decision"] == "promoted" and g["metric"] == "logloss" and g["compared_with"] == "live"
        assert g["candidate_score"] == gate["candidate"]["logloss"] and g["live_score"] == gate["live"]["logloss"]
        assert g["reason"] == gate["reason"] and v2["parent"] == "v0001"
        assert v1["gate"] is None and v1["report_url"] == f"/ui/report/{NAME}/v0001/report.html"
        report = c.get(v1["report_url"])
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        assert "script-src" not in report.headers["content-security-policy"]  # default-src 'none': no script
        events = [(e["event"], e["version"]) for e in feed["history"]]
        assert ("gate promoted", "v0002") in events and ("published", "v0001") in events
        assert ("live", "v0002") in events
        assert [e["at"] for e in feed["history"]] == sorted((e["at"] for e in feed["history"]), reverse=True)
        assert c.get("/ui/api/models/nosuch-1h").status_code == 404
        assert c.get("/ui/api/models/..%2F..").status_code == 404


def test_a_refused_candidate_shows_its_gate_refusal(home: Path) -> None:
    """A version whose manifest records a "keep" decision (what a refused retrain writes) reads "refused"."""
    from xylen.serve.ui import gate_of

    g = gate_of({"metric": "logloss", "decision": "keep", "candidate": {"logloss": 0.7}, "live": {"logloss": 0.6},
                 "compared_with": "live", "reason": "worse"}, 1_700_000_000.0)
    assert g == {"decision": "refused", "candidate_score": 0.7, "live_score": 0.6, "compared_with": "live",
                 "metric": "logloss", "reason": "worse", "at": 1_700_000_000_000}
    g = gate_of({"metric": "logloss", "decision": "promote", "candidate": {"logloss": 0.7}, "live": None,
                 "base_rate": {"logloss": 0.69}, "compared_with": "base_rate", "reason": "r"}, None)
    assert g is not None and g["live_score"] == 0.69 and g["at"] is None
    assert gate_of("not a record", None) is None


def test_data_feed_lists_gaps_and_known_gaps_from_the_store(tmp_path: Path) -> None:
    import polars as pl

    from tests.builders import build_bundle
    from xylen.core.candles import SCHEMA
    from xylen.core.store import Store

    home = tmp_path / "h"
    build_bundle(Registry(home / "models"), "btcusdt-5m", rounds=5, rows=800)
    step = 300_000
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % step
    times = [t0 + i * step for i in range(100) if not (10 <= i < 13) and not (50 <= i < 52)]
    n = len(times)
    df = pl.DataFrame({"open_time": times, "open": [1.0] * n, "high": [1.0] * n, "low": [1.0] * n,
                       "close": [1.0] * n, "volume": [1.0] * n, "close_time": [t + step - 1 for t in times],
                       "quote_volume": [1.0] * n, "trades": [1] * n, "taker_buy_base": [0.5] * n,
                       "taker_buy_quote": [0.5] * n}, schema=SCHEMA)
    store = Store(home / "data")
    store.append("BTCUSDT", "5m", df)
    store.add_known_gaps("BTCUSDT", "5m", [(t0 + 50 * step, t0 + 52 * step)])  # no trading there
    with serving(home, keys=KeyRing([])) as c:
        feed = c.get("/ui/api/data").json()
        (s,) = feed["series"]
        assert (s["exchange"], s["symbol"], s["interval"]) == ("binance", "BTCUSDT", "5m")
        assert s["first_open_time"] == t0 and s["last_open_time"] == t0 + 99 * step and s["candles"] == 95
        assert s["gaps"] == [[t0 + 10 * step, t0 + 13 * step]] and s["missing"] == 3 and s["gaps_total"] == 1
        assert s["known_gaps"] == [[t0 + 50 * step, t0 + 52 * step]]
        assert s["lag_s"] == pytest.approx(feed["now"] / 1000 - (t0 + 100 * step) / 1000, abs=2)
        assert s["error"] is None


def test_server_feed_shape_and_jobs(home: Path) -> None:
    jobs = home / "retrain" / "jobs"
    jobs.mkdir(parents=True)
    job = "ab" * 16
    (jobs / f"{job}.json").write_bytes(orjson.dumps({
        "job_id": job, "state": "succeeded", "models": [NAME], "started_at": "2024-07-01T00:00:00Z",
        "finished_at": "2024-07-01T00:01:00Z", "exit_code": 0, "result": None, "message": "btcusdt-1h: kept"}))
    with serving(home, keys=KeyRing([])) as c:
        c.get("/health")
        s = c.get("/ui/api/server").json()
        assert s["ready"] is True and s["reason"] is None and s["workers"] == 1 and s["pid"] == os.getpid()
        assert s["rss_bytes"] > 10_000_000
        assert s["history"]["interval_s"] == 10.0 and isinstance(s["history"]["t"], list)
        assert s["jobs"] == [{"id": job, "state": "succeeded", "started_at": 1719792000000,
                              "finished_at": 1719792060000, "models": [NAME], "result": "btcusdt-1h: kept"}]
        # the sampler runs in the background: with a short interval, /health appears as a charted route
        d = c.app.app.state.dashboard
        d.history.sample()
        c.get("/health")
        d.history.sample()
        d.cache.drop("server")
        h = c.get("/ui/api/server").json()["history"]
        assert "/health" in h["routes"] and len(h["t"]) >= 1 and h["rss_bytes"][-1] > 0


def test_reports_refuse_traversal_symlinks_and_other_files(home: Path, tmp_path: Path) -> None:
    folder = Registry(home / "models").path(NAME, "v0001")
    secret = tmp_path / "secret.html"
    secret.write_text("SECRET")
    (folder / "report" / "link.png").symlink_to(secret)
    plots = sorted(p.name for p in (folder / "report").glob("*.png") if not p.is_symlink())
    with serving(home) as c:
        login(c)
        base = f"/ui/report/{NAME}/v0001"
        assert c.get(f"{base}/report.html").status_code == 200
        assert plots and c.get(f"{base}/report/{plots[0]}").headers["content-type"] == "image/png"
        for bad in ("manifest.json", "model.txt", "report/link.png", "../v0002/report.html", "..%2F..%2Fsecret.html",
                    "report/../../../../secret.html", "report/.hidden", "report", "%2e%2e/%2e%2e/CURRENT.json"):
            r = c.get(f"{base}/{bad}")  # a client may normalise "..": then it is another route (401)
            assert r.status_code in (404, 401) and "SECRET" not in r.text, bad
        assert c.get(f"/ui/report/{NAME}/..%2F/report.html").status_code == 404
        assert c.get("/ui/report/..%2F..%2Fetc/v0001/report.html").status_code == 404
    with serving(home) as c:
        assert c.get(f"/ui/report/{NAME}/v0001/report.html").status_code == 401  # auth like the feeds


def test_no_ui_makes_every_ui_path_404(home: Path) -> None:
    with serving(home, env={"XYLEN_UI": "false"}) as c:
        for path in ("/ui", "/ui/", "/ui/api/session", "/ui/api/models", "/ui/assets/app.js",
                     f"/ui/report/{NAME}/v0001/report.html"):
            assert c.get(path, headers={"X-API-Key": KEY}).status_code == 404, path
            assert c.get(path).status_code == 404, path
        assert c.post("/ui/login", data={"key": KEY}).status_code == 404
        assert "/ui/api/models" not in c.get("/openapi.json", headers={"X-API-Key": KEY}).json()["paths"]


def test_serve_help_mentions_no_ui() -> None:
    from typer.testing import CliRunner

    from xylen.cli import app

    r = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert "--no-ui" in r.output


def test_openapi_documents_the_feeds_under_dashboard_and_not_the_pages(home: Path) -> None:
    with serving(home) as c:
        spec = c.get("/openapi.json", headers={"X-API-Key": KEY}).json()
        paths = spec["paths"]
        # the feeds' schemas keep the API's names: two models of one name get module-qualified names in OpenAPI
        # (the dashboard's ModelRow once renamed /models' ModelRow to xylen__serve__schemas__ModelRow)
        names = spec["components"]["schemas"]
        assert "ModelRow" in names and not [n for n in names if "__" in n], sorted(names)
        for p in ("/ui/api/session", "/ui/api/models", "/ui/api/models/{name}", "/ui/api/data", "/ui/api/server"):
            op = paths[p]["get"]
            assert op["tags"] == ["dashboard"] and "$ref" in str(op["responses"]["200"]), p
        for p in ("/ui/api/models/{name}/promote", "/ui/api/models/{name}/rollback"):
            assert paths[p]["post"]["tags"] == ["dashboard"]
        assert not [p for p in paths if p.startswith("/ui") and not p.startswith("/ui/api/")]


def test_assets_are_served_with_etag_and_a_long_cache_for_the_current_digest(home: Path, assets: Path) -> None:
    from xylen.serve.ui import assets_digest

    with serving(home, assets=assets) as c:
        r = c.get("/ui/assets/app.js")  # no key needed: no data in them
        assert r.status_code == 200 and r.headers["cache-control"] == "no-cache" and "etag" in r.headers
        assert c.get("/ui/assets/app.js", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
        r = c.get(f"/ui/assets/app.js?v={assets_digest(assets)}")
        assert "immutable" in r.headers["cache-control"]
        assert c.get("/ui/assets/%2e%2e/index.html").status_code == 404
        assert c.get("/ui/assets/%2e%2e/%2e%2e/secret").status_code == 404


# -- the WebSocket -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("origin", "admitted"), [("http://127.0.0.1:8000", True), ("http://dash.example", True),
                                                 ("http://evil.example", False), (None, False)])
def test_a_session_cookie_opens_the_websocket_only_from_an_allowed_origin(
    home: Path, origin: str | None, admitted: bool
) -> None:
    with serving(home, env={"XYLEN_ALLOWED_HOSTS": "dash.example"}) as c:
        login(c)
        headers = {"Cookie": f"xylen_ui={c.cookies.get('xylen_ui')}", **({"Origin": origin} if origin else {})}
        with c.websocket_connect("/ws/predict", headers=headers) as ws:
            ws.send_json({"type": "ping"})
            if admitted:
                assert orjson.loads(ws.receive_text()) == {"type": "pong"}
            else:  # the cookie did not count: the first message had to be the key
                with pytest.raises(WebSocketDisconnect) as info:
                    ws.receive_text()
                assert info.value.code == 1008


def test_the_data_feed_rereads_only_series_whose_files_changed(tmp_path: Path) -> None:
    import polars as pl

    from tests.builders import build_bundle
    from xylen.core.candles import SCHEMA
    from xylen.core.store import Store

    home = tmp_path / "h"
    build_bundle(Registry(home / "models"), "btcusdt-5m", rounds=5, rows=800)
    step = 300_000
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % step

    def frame(lo: int, hi: int) -> pl.DataFrame:
        t = [t0 + i * step for i in range(lo, hi)]
        n = len(t)
        return pl.DataFrame({"open_time": t, "open": [1.0] * n, "high": [1.0] * n, "low": [1.0] * n,
                             "close": [1.0] * n, "volume": [1.0] * n, "close_time": [x + step - 1 for x in t],
                             "quote_volume": [1.0] * n, "trades": [1] * n, "taker_buy_base": [0.5] * n,
                             "taker_buy_quote": [0.5] * n}, schema=SCHEMA)

    Store(home / "data").append("BTCUSDT", "5m", frame(0, 50))
    Store(home / "data").append("ETHUSDT", "5m", frame(0, 50))
    with serving(home, keys=KeyRing([])) as c:
        d = c.app.app.state.dashboard
        assert len(d.data_feed()["series"]) == 2
        reads: list[str] = []
        for store in d._stores.values():
            real = store.read
            store.read = lambda sym, iv, *a, _real=real, **k: reads.append(sym) or _real(sym, iv, *a, **k)
        assert d.data_feed()["series"][0]["candles"] == 50 and reads == []  # nothing changed: no read
        Store(home / "data").append("ETHUSDT", "5m", frame(50, 51))
        feed = d.data_feed()
        assert reads == ["ETHUSDT"] and [s["candles"] for s in feed["series"]] == [50, 51]
        first = c.get("/ui/api/data").json()
        Store(home / "data").append("BTCUSDT", "5m", frame(50, 52))
        assert c.get("/ui/api/data").json() == first  # within DATA_TTL: the same answer


@pytest.mark.parametrize("recorded", ["junk", ["a", "b"], {"members": "x"}, None])
def test_a_hand_edited_ensemble_record_is_no_members_not_a_500(home: Path, recorded: Any) -> None:
    from xylen.core.bundle import Manifest
    from xylen.serve.ui import describe

    reg = Registry(home / "models")
    m = reg.manifest(NAME, reg.versions(NAME)[0])
    edited = Manifest.model_validate({**m.model_dump(), "backend": "ensemble", "ensemble": recorded})
    assert describe(edited, 86400.0, 1.8e9)["members"] is None
