"""The dashboard on a real `xylen serve`: the login form over HTTP, the Data view loading polars only when opened,
--no-ui, and sessions shared by servers with one XYLEN_UI_SESSION_SECRET_FILE."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.test_client import KEY, serving, stored_home
from xylen.core.features import CandleArrays

pytestmark = pytest.mark.integration


def test_login_then_the_data_view_loads_polars_only_when_opened(
    trained_home: Path, sample_candles: CandleArrays, tmp_path: Path
) -> None:
    home = stored_home(trained_home, sample_candles, tmp_path)
    with serving(home) as s, httpx.Client(base_url=s.url) as c:
        maps = Path(f"/proc/{s.proc.pid}/maps")
        if not maps.exists():
            pytest.skip("needs Linux /proc")
        assert c.get("/ui/api/data").status_code == 401
        r = c.post("/ui/login", data={"key": KEY})
        assert r.status_code == 303 and "HttpOnly" in r.headers["set-cookie"]
        assert c.get("/ui/api/models").json()["models"][0]["name"] == "btcusdt-5m"
        assert c.get("/ui/api/server").json()["ready"] is True
        assert "polars" not in maps.read_text()  # polars >= 1.3x maps _polars_runtime*/, not polars/
        (series,) = c.get("/ui/api/data").json()["series"]
        assert (series["symbol"], series["interval"], series["error"]) == ("BTCUSDT", "5m", None)
        assert "polars" in maps.read_text()
        assert KEY not in s.output()


def test_no_ui_serves_no_dashboard(trained_home: Path, tmp_path: Path) -> None:
    import shutil

    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    with serving(home, "--no-ui") as s:
        for path in ("/ui", "/ui/api/models"):
            assert httpx.get(f"{s.url}{path}", headers={"X-API-Key": KEY}).status_code == 404


def test_a_login_holds_in_every_worker_of_workers_2(trained_home: Path, tmp_path: Path) -> None:
    """The supervisor hands each worker the same session secret: a cookie one worker set is accepted by the other
    (each request on a new connection, so either worker may answer; /ui/api/server names the pid that did)."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    with serving(home, "--workers", "2") as s:
        r = httpx.post(f"{s.url}/ui/login", data={"key": KEY})
        assert r.status_code == 303
        cookie = r.cookies["xylen_ui"]
        pids: set[int] = set()
        for _ in range(400):  # stops as soon as both workers have answered
            got = httpx.get(f"{s.url}/ui/api/server", cookies={"xylen_ui": cookie})
            assert got.status_code == 200, got.text
            pids.add(got.json()["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2, "one worker answered every connection"


SECRET_HEX = "c0ffee00" * 8  # 64 hex characters


def secret_file(folder: Path, text: str, mode: int = 0o600) -> Path:
    path = folder / "ui-session.secret"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_two_servers_with_one_secret_file_share_dashboard_sessions_and_never_log_the_secret(
    trained_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two real `xylen serve` processes (two replicas on one registry, or a server and its restart): a cookie and
    CSRF token issued by one are accepted by the other, for a GET and a state-changing POST."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    monkeypatch.setenv("XYLEN_UI_SESSION_SECRET_FILE", str(secret_file(tmp_path, f"{SECRET_HEX}\n")))
    with serving(home) as one, serving(home, "--log-format", "json", "--workers", "2") as two:
        r = httpx.post(f"{one.url}/ui/login", data={"key": KEY})
        assert r.status_code == 303
        cookies = {"xylen_ui": r.cookies["xylen_ui"]}
        csrf = httpx.get(f"{one.url}/ui/api/session", cookies=cookies).json()["csrf"]
        got = httpx.get(f"{two.url}/ui/api/server", cookies=cookies)
        assert got.status_code == 200, got.text
        assert got.json()["pid"] != one.proc.pid
        assert httpx.get(f"{two.url}/ui/api/session", cookies=cookies).json()["csrf"] == csrf
        url = f"{two.url}/ui/api/models/btcusdt-5m/promote"
        wrong = httpx.post(url, json={"version": "v0001"}, cookies=cookies, headers={"X-CSRF-Token": "x" + csrf})
        assert wrong.status_code == 403, wrong.text
        r = httpx.post(url, json={"version": "v0001"}, cookies=cookies, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        assert r.json()["live_version"] == "v0001"
    for served in (one, two):
        out = served.output()
        assert SECRET_HEX not in out.lower() and bytes.fromhex(SECRET_HEX).hex() not in out, out[-2000:]


def test_a_restart_with_the_file_keeps_a_session_and_one_without_it_ends_it(
    trained_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    monkeypatch.setenv("XYLEN_UI_SESSION_SECRET_FILE", str(secret_file(tmp_path, f"{SECRET_HEX}\n")))
    with serving(home) as one:
        cookies = {"xylen_ui": httpx.post(f"{one.url}/ui/login", data={"key": KEY}).cookies["xylen_ui"]}
        assert httpx.get(f"{one.url}/ui/api/server", cookies=cookies).status_code == 200
    with serving(home) as restarted:
        assert httpx.get(f"{restarted.url}/ui/api/server", cookies=cookies).status_code == 200
    monkeypatch.delenv("XYLEN_UI_SESSION_SECRET_FILE")
    with serving(home) as restarted:
        assert httpx.get(f"{restarted.url}/ui/api/server", cookies=cookies).status_code == 401


@pytest.mark.parametrize(
    ("content", "mode", "expect"),
    [
        (None, 0o600, "Cannot read the dashboard session secret file"),
        (SECRET_HEX, 0o644, "is readable by other users (mode 0644)"),
        (SECRET_HEX[:32], 0o600, "holds 32 hex characters; at least 64"),
    ],
)
def test_serve_exits_2_on_a_bad_secret_file_quoting_the_path_and_the_fix(
    tmp_path: Path, content: str | None, mode: int, expect: str
) -> None:
    import os
    import subprocess
    import sys

    path = tmp_path / "missing.secret" if content is None else secret_file(tmp_path, content + "\n", mode)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XYLEN_")}
    env |= {"XYLEN_HOME": str(tmp_path / "home"), "XYLEN_API_KEYS": KEY, "XYLEN_UI_SESSION_SECRET_FILE": str(path)}
    r = subprocess.run([sys.executable, "-m", "xylen", "serve", "--port", "1"], env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    out = " ".join((r.stdout + r.stderr).split())  # rich wraps long lines
    assert r.returncode == 2, out
    assert expect in out and str(path) in out, out
    assert "openssl rand -hex 32" in out or "chmod 600" in out, out
    assert "Traceback" not in out and (content is None or content not in out)
