"""Dashboard sessions (serve/ui_auth.py) and the server history sampler (serve/ui_history.py): pure functions,
fake clocks, no server."""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

import pytest

from xylen.serve import ui_auth
from xylen.serve.gate import route_of
from xylen.serve.metrics import BUCKETS, Metrics
from xylen.serve.ui_history import History, Totals, metrics_totals, quantile

A = hashlib.sha256(b"key-a").digest()
B = hashlib.sha256(b"key-b").digest()
NOW = 1_800_000_000.0
S = b"s" * 32  # the server's session secret


def test_a_token_is_valid_until_its_expiry_for_the_key_that_made_it_only() -> None:
    t = ui_auth.issue(S, A, 3600, NOW)
    assert ui_auth.verify(S, t, [B, A], NOW) == A
    assert ui_auth.verify(S, t, [B, A], NOW + 3599) == A
    assert ui_auth.verify(S, t, [B, A], NOW + 3600) is None  # expired
    assert ui_auth.verify(S, t, [B], NOW) is None  # its key removed from the ring: the session is gone
    assert ui_auth.issue(S, A, 3600, NOW) != t  # a fresh nonce each login


def test_a_token_names_no_key_and_reveals_no_digest() -> None:
    t = ui_auth.issue(S, A, 3600, NOW)
    for secret in (b"key-a", A, A.hex().encode()):
        assert secret.decode("latin-1") not in t
    assert A.hex() not in ui_auth.csrf_token(S, A, t)


@pytest.mark.parametrize("change", ["expiry", "nonce", "mac", "version", "truncate", "junk"])
def test_a_tampered_token_is_not_a_session(change: str) -> None:
    t = ui_auth.issue(S, A, 3600, NOW)
    v, exp, nonce, mac = t.split(".")
    forged = {
        "expiry": f"{v}.{int(exp) + 86400}.{nonce}.{mac}",  # a longer session
        "nonce": f"{v}.{exp}.{nonce[:-1] + ('A' if nonce[-1] != 'A' else 'B')}.{mac}",
        "mac": f"{v}.{exp}.{nonce}.{mac[:-2] + ('AA' if mac[-2:] != 'AA' else 'BB')}",
        "version": f"v2.{exp}.{nonce}.{mac}",
        "truncate": t[:-5],
        "junk": "not a token at all",
    }[change]
    assert ui_auth.verify(S, forged, [A, B], NOW) is None


@pytest.mark.parametrize("expiry", ["\u00b2", "\u00b9\u00b3", "\u0663\u0663", "9" * 190])
def test_a_token_whose_expiry_is_not_ascii_digits_is_not_a_session_and_never_raises(expiry: str) -> None:
    """A cookie is latin-1 text from anyone: '\u00b2' passes str.isdigit() but int() refuses it (ValueError, a 500
    on every /ui path before the fix)."""
    mac = ui_auth.issue(S, A, 3600, NOW).split(".")[3]
    assert ui_auth.verify(S, f"v1.{expiry}.AAAA.{mac}", [A], NOW) is None


def test_a_token_forged_with_another_secret_or_expiring_beyond_the_setting_is_refused() -> None:
    other = ui_auth.issue(S, hashlib.sha256(b"not a key of ours").digest(), 3600, NOW)
    assert ui_auth.verify(S, other, [A, B], NOW) is None
    long = ui_auth.issue(S, A, 30 * 86400, NOW)
    assert ui_auth.verify(S, long, [A], NOW) == A
    assert ui_auth.verify(S, long, [A], NOW, max_age_s=12 * 3600) is None  # the setting was lowered since


def test_any_worker_accepts_a_session_another_made() -> None:
    """Stateless: two processes with the same digests (what --workers gives each worker) agree."""
    from xylen.serve.auth import KeyRing

    w1, w2 = KeyRing([A, B], S), KeyRing([A, B], S)  # the supervisor hands every worker its secret
    t = ui_auth.issue(w1.session_secret, w1.digests[1], 3600, NOW)
    assert ui_auth.verify(w2.session_secret, t, w2.digests, NOW) == B
    assert ui_auth.csrf_ok(S, B, t, ui_auth.csrf_token(S, B, t))
    assert not ui_auth.csrf_ok(S, B, t, ui_auth.csrf_token(S, B, ui_auth.issue(S, B, 3600, NOW)))  # another session's
    assert not ui_auth.csrf_ok(S, A, t, ui_auth.csrf_token(S, B, t))
    assert not ui_auth.csrf_ok(S, B, t, "")


def test_the_digests_alone_make_no_session_and_a_restart_ends_every_session() -> None:
    """Whoever reads XYLEN_API_KEYS_FILE (digests) cannot sign a session: the server's secret is needed too, and a
    server started again draws a new one."""
    from xylen.serve.auth import KeyRing

    first, restarted = KeyRing([A]), KeyRing([A])
    assert first.session_secret != restarted.session_secret and len(first.session_secret) == 32
    t = ui_auth.issue(first.session_secret, A, 3600, NOW)
    assert ui_auth.verify(first.session_secret, t, [A], NOW) == A
    assert ui_auth.verify(restarted.session_secret, t, [A], NOW) is None
    for guess in (A, b"", hashlib.sha256(A).digest()):  # a forger who knows the digest, not the secret
        assert ui_auth.verify(first.session_secret, ui_auth.issue(guess, A, 3600, NOW), [A], NOW) is None


def test_cookie_flags_and_parsing() -> None:
    c = ui_auth.set_cookie("v1.1.x.y", 43200, secure=False)
    assert c == "xylen_ui=v1.1.x.y; Max-Age=43200; Path=/; HttpOnly; SameSite=Strict"
    assert ui_auth.set_cookie("t", 60, secure=True).endswith("; Secure")
    assert "Max-Age=0" in ui_auth.clear_cookie(False)
    headers = [(b"cookie", b"other=1; xylen_ui=abc.def; x=2")]
    assert ui_auth.cookie_value(headers) == "abc.def"
    assert ui_auth.cookie_value([(b"cookie", b"xylen_uix=1")]) is None
    assert ui_auth.cookie_value([]) is None


@pytest.mark.parametrize(("origin", "host", "allowed", "ok"), [
    ("http://dash.example:8000", "dash.example:8000", (), True),  # the page's own origin
    ("https://dash.example", "dash.example", (), True),
    ("http://evil.example", "dash.example:8000", (), False),
    ("http://dash.example:9999", "dash.example:8000", (), False),  # another port is another origin
    ("http://127.0.0.1:3000", "dash.example", (), True),  # loopback
    ("http://localhost", "dash.example", (), True),
    ("http://[::1]:8000", "dash.example", (), True),
    ("http://127.evil.example", "dash.example", (), False),
    ("http://trusted.example", "dash.example", ("trusted.example",), True),
    ("http://evil.example", "dash.example", ("*",), False),  # "*" is about Hosts, never every web page
    ("null", "dash.example", (), False),
    ("file://", "dash.example", (), False),
    ("http://user@dash.example", "dash.example", (), False),
])
def test_which_origins_may_act_with_a_session(origin: str, host: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert ui_auth.origin_ok(origin.encode(), host.encode(), allowed) is ok


def test_dashboard_routes_get_bounded_metric_labels() -> None:
    assert route_of("/ui") == "/ui"
    assert route_of("/ui/") == "/ui"
    assert route_of("/ui/login") == "/ui/login"
    assert route_of("/ui/logout") == "/ui/logout"
    for feed in ("session", "models", "models/btcusdt-5m", "models/x/promote", "data", "server", "a" * 500):
        assert route_of(f"/ui/api/{feed}") == "/ui/api/{feed}"
    assert route_of("/ui/assets/app.js") == "/ui/assets/{file}"
    assert route_of("/ui/report/m/v0001/report.html") == "/ui/report/{file}"
    assert route_of("/ui/whatever") == "other"
    assert route_of("/uix") == "other"
    assert route_of("/predict") == "/predict"


# -- the history sampler ---------------------------------------------------------------------------------------
def test_quantile_interpolates_within_the_bucket_as_prometheus_does() -> None:
    cum = {0.001: 50.0, 0.01: 90.0, 0.1: 100.0, math.inf: 100.0}
    assert quantile(0.5, cum) == pytest.approx(0.001)
    assert quantile(0.7, cum) == pytest.approx(0.001 + 0.009 * 20 / 40)
    assert quantile(0.99, cum) == pytest.approx(0.01 + 0.09 * 9 / 10)
    assert quantile(0.5, {0.001: 0.0, math.inf: 0.0}) is None
    assert quantile(0.99, {0.001: 0.0, 1.0: 0.0, math.inf: 5.0}) == 1.0  # beyond the last bound: that bound


class FakeClock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


def test_the_sampler_charts_rate_latency_errors_from_the_metrics_counters() -> None:
    m = Metrics()
    clock = FakeClock()
    h = History(metrics_totals(m), clock=clock, pids=lambda: [])
    assert h.sample() is None  # the baseline
    for _ in range(100):
        m.observe("/predict", 200, 0.0004)  # in the (0.00025, 0.0005] bucket
    for _ in range(10):
        m.observe("/predict", 422, 0.002)
    m.observe("/retrain", 503, 0.2)
    clock.t += 10
    s = h.sample()
    assert s is not None
    rate, p50, p99 = s.routes["/predict"]
    assert rate == pytest.approx(11.0)  # 110 requests in 10 s
    assert 0.25 < p50 <= 0.5  # ms
    assert 1.0 < p99 <= 2.5
    assert s.errors_per_s == pytest.approx(0.1) and s.client_errors_per_s == pytest.approx(1.0)
    clock.t += 10  # nothing happened: rate 0, no latency
    s2 = h.sample()
    assert s2 is not None and s2.routes["/predict"] == (0.0, None, None) and s2.errors_per_s == 0
    out = h.to_json()
    assert out["t"] == [int((NOW + 10) * 1000), int((NOW + 20) * 1000)]
    assert out["routes"]["/predict"]["rate"] == [11.0, 0.0]
    assert out["routes"]["/predict"]["p50_ms"][1] is None
    assert set(out) >= {"t", "rss_bytes", "errors_per_s", "client_errors_per_s", "routes"}


def test_the_ring_keeps_the_last_360_samples_and_survives_a_counter_reset() -> None:
    counts: dict[str, Any] = {"n": 0.0}

    def collect() -> Totals:
        return Totals(count={"/predict": counts["n"]}, buckets={"/predict": {BUCKETS[0]: counts["n"],
                                                                            math.inf: counts["n"]}})

    clock = FakeClock()
    h = History(collect, clock=clock, pids=lambda: [])
    h.sample()
    for _ in range(400):
        counts["n"] += 5
        clock.t += 10
        h.sample()
    out = h.to_json()
    assert len(out["t"]) == 360 and out["t"][-1] == int(clock.t * 1000)
    assert out["routes"]["/predict"]["rate"][-1] == 0.5
    counts["n"] = 1.0  # a worker's counters went away (restart): never a negative rate
    clock.t += 10
    s = h.sample()
    assert s is not None and s.routes["/predict"][0] == 0.0


# -- XYLEN_UI_SESSION_SECRET_FILE (serve/auth.py read_session_secret) ---------------------------------------------
SECRET_HEX = "0f1e2d3c4b5a69788796a5b4c3d2e1f0" * 2  # 64 hex characters: `openssl rand -hex 32`


def secret_file(folder: Any, text: str | bytes, mode: int = 0o600) -> Any:
    path = folder / "ui-session.secret"
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440])
def test_the_session_secret_file_is_one_hex_line_of_at_least_64_characters_comments_allowed(
    tmp_path: Any, mode: int
) -> None:
    from xylen.serve.auth import read_session_secret

    path = secret_file(tmp_path, f"# openssl rand -hex 32\n\n  {SECRET_HEX.upper()}  \n", mode)
    assert read_session_secret(path) == bytes.fromhex(SECRET_HEX)  # group read: Kubernetes' 0440 with fsGroup
    path.chmod(0o600)
    path.write_text("ab" * 48 + "\n")
    assert read_session_secret(path) == b"\xab" * 48


@pytest.mark.parametrize(
    ("content", "mode", "expect"),
    [
        (None, 0o600, "Cannot read the dashboard session secret file"),  # missing
        ("dir", 0o700, "is a folder, not a regular file"),
        ("fifo", 0o600, "is a FIFO, not a regular file"),  # opened without waiting for a writer: never blocks
        (SECRET_HEX, 0o644, "is readable by other users (mode 0644)"),
        (SECRET_HEX, 0o604, "is readable by other users (mode 0604)"),
        (SECRET_HEX, 0o660, "is writable by other users (mode 0660)"),
        (SECRET_HEX, 0o602, "is writable by other users (mode 0602)"),
        ("", 0o600, "is empty"),
        ("# just a comment\n\n", 0o600, "is empty"),
        (SECRET_HEX[:62], 0o600, "holds 62 hex characters; at least 64 (32 random bytes) are needed"),
        (f"{SECRET_HEX}\n{SECRET_HEX[::-1]}\n", 0o600, "holds 2 lines besides comments"),
        ("z" + SECRET_HEX[1:], 0o600, "is not one line of hex characters"),
        (SECRET_HEX + "a", 0o600, "is not one line of hex characters"),  # an odd count is no whole bytes
        (SECRET_HEX[:40] + " " + SECRET_HEX[40:], 0o600, "is not one line of hex characters"),
        ("\u00e9" * 40 + SECRET_HEX, 0o600, "is not one line of hex characters"),
        ("ab" * 3000, 0o600, "is over 4096 bytes"),
    ],
)
def test_a_bad_session_secret_file_is_refused_quoting_the_path_and_the_fix_never_the_content(
    tmp_path: Any, content: str | None, mode: int, expect: str
) -> None:
    from xylen.core.errors import ConfigError
    from xylen.serve.auth import read_session_secret

    if content is None:
        path = tmp_path / "missing.secret"
    elif content == "dir":
        path = tmp_path / "a-folder"
        path.mkdir(mode=mode)
    elif content == "fifo":
        path = tmp_path / "a-fifo"
        os.mkfifo(path, mode)
    else:
        path = secret_file(tmp_path, content, mode)
    with pytest.raises(ConfigError) as raised:
        read_session_secret(path)
    assert expect in raised.value.message and repr(str(path)) in raised.value.message, raised.value.message
    assert raised.value.hint and ("openssl rand -hex 32" in raised.value.hint or "chmod 600" in raised.value.hint)
    for secret in (SECRET_HEX, SECRET_HEX[:62], SECRET_HEX[:40]):  # not even part of the file is in the message
        assert secret.lower() not in str(raised.value).lower()
