"""The dashboard on a real `xylen serve`: the login form over HTTP, the Data view loading polars only when opened,
and --no-ui."""

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
