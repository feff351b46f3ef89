"""/health's stale flag and /metrics' per-model age, stale and watch gauges, in process."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import wait_for
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.serve.app import create_app
from xylen.serve.model_health import ModelHealth

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.unit
MODEL = "btcusdt-5m"


@pytest.fixture
def serve(home_copy: Path) -> Iterator[Any]:
    clients: list[Any] = []

    def build(**overrides: Any) -> Any:
        c = TestClient(create_app(load_settings({"home": home_copy, **overrides}, environ={})),
                       base_url="http://localhost")
        c.__enter__()
        clients.append(c)
        wait_for(lambda: c.get("/health/ready").status_code == 200, what="readiness")
        return c

    yield build
    for c in clients:
        c.__exit__(None, None, None)


def age_model(home: Path, created_at: str) -> None:
    path = home / "models" / MODEL / "v0001" / "manifest.json"
    manifest = orjson.loads(path.read_bytes())
    manifest["created_at"] = created_at  # not covered by the artifact's sha256: the bundle still verifies
    path.write_bytes(orjson.dumps(manifest))


def write_watch(home: Path, **fields: Any) -> None:
    ptr = Registry(home / "models").current(MODEL)
    assert ptr is not None
    rec = {"name": MODEL, "version": ptr.version, "promoted_at": ptr.promoted_at, "rows": 812,
           "computed_at": "2026-12-01T00:00:00Z", "first_open_time": 1, "last_open_time": 2, "base_rate": 0.3,
           "auc_edge_vs_volatility": 0.01, "entry_threshold": 0.5, "note": None,
           "model": {"auc": 0.61, "logloss": 0.66, "hit_rate": 0.42, "signals": 90},
           "volatility_baseline": {"auc": 0.6, "logloss": 0.67, "hit_rate": 0.4, "signals": 80}} | fields
    (home / "models" / MODEL / "WATCH.json").write_bytes(orjson.dumps(rec))


def series(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name):]] = float(value)
    return out


def test_a_fresh_model_is_not_stale(serve: Any) -> None:
    body = serve().get("/health").json()
    assert body["status"] == "healthy" and body["stale"] is False and body["stale_models"] == []


def test_an_old_model_is_stale_but_still_healthy_and_serving(serve: Any, home_copy: Path) -> None:
    age_model(home_copy, "2020-01-01T00:00:00Z")
    c = serve()
    r = c.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "healthy"
    assert r.json()["stale"] is True and r.json()["stale_models"] == [MODEL]
    assert c.get("/health/ready").status_code == 200
    text = c.get("/metrics").text
    assert series(text, "xylen_model_stale") == {f'{{model="{MODEL}"}}': 1.0}
    assert series(text, "xylen_model_age_seconds")[f'{{model="{MODEL}"}}'] > 6 * 365 * 86400


def test_model_max_age_decides(serve: Any, home_copy: Path) -> None:
    age_model(home_copy, "2020-01-01T00:00:00Z")
    c = serve(model_max_age="100000d")
    assert c.get("/health").json()["stale"] is False
    assert series(c.get("/metrics").text, "xylen_model_stale") == {f'{{model="{MODEL}"}}': 0.0}


def test_a_manifest_without_a_readable_age_is_not_called_stale(serve: Any, home_copy: Path) -> None:
    age_model(home_copy, "not a time")
    c = serve()
    assert c.get("/health").json()["stale"] is False
    text = c.get("/metrics").text
    assert series(text, "xylen_model_stale") == {} and series(text, "xylen_model_age_seconds") == {}


def test_metrics_show_the_watch_record_of_the_live_version(serve: Any, home_copy: Path) -> None:
    write_watch(home_copy)
    text = serve().get("/metrics").text
    m = f'{{model="{MODEL}"}}'
    assert series(text, "xylen_live_auc") == {m: 0.61}
    assert series(text, "xylen_live_hit_rate") == {m: 0.42}
    assert series(text, "xylen_live_rows") == {m: 812.0}
    assert series(text, "xylen_live_baseline_auc") == {m: 0.6}
    assert series(text, "xylen_live_baseline_hit_rate") == {m: 0.4}
    assert series(text, "xylen_model_stale") == {m: 0.0}


def test_uncomputed_watch_metrics_are_absent_not_zero(serve: Any, home_copy: Path) -> None:
    write_watch(home_copy, model=None, volatility_baseline=None, rows=12, note="12 candles; metrics need 50")
    text = serve().get("/metrics").text
    assert series(text, "xylen_live_rows") == {f'{{model="{MODEL}"}}': 12.0}
    for name in ("xylen_live_auc", "xylen_live_hit_rate", "xylen_live_baseline_auc", "xylen_live_baseline_hit_rate"):
        assert series(text, name) == {}


@pytest.mark.parametrize("damage", [b"{not json", b"[]", b'{"name": "btcusdt-5m", "version": "v0009"}'])
def test_a_damaged_or_foreign_watch_record_shows_nothing_and_never_fails_a_scrape(
    serve: Any, home_copy: Path, damage: bytes
) -> None:
    (home_copy / "models" / MODEL / "WATCH.json").write_bytes(damage)
    r = serve().get("/metrics")
    assert r.status_code == 200 and series(r.text, "xylen_live_auc") == {}
    assert series(r.text, "xylen_model_stale") == {f'{{model="{MODEL}"}}': 0.0}


def test_watch_reads_are_cached_for_the_ttl_and_follow_the_live_version(serve: Any, home_copy: Path) -> None:
    c = serve()
    holder = c.app.state.holder
    now = [100.0]
    health = ModelHealth(holder, 7 * 86400.0, ttl=5.0, clock=lambda: now[0])
    live = holder.live[MODEL]
    assert health.watch_record(live) is None
    write_watch(home_copy)
    assert health.watch_record(live) is None  # cached
    now[0] += 5.0
    assert health.watch_record(live)["rows"] == 812
    write_watch(home_copy, version="v0002")  # describes a version this worker does not serve
    now[0] += 5.0
    assert health.watch_record(live) is None


def test_openapi_health_schema_has_the_stale_fields(serve: Any) -> None:
    props = serve().get("/openapi.json").json()["components"]["schemas"]["HealthResponse"]["properties"]
    assert {"stale", "stale_models"} <= set(props)
    assert "still serves" in props["stale"]["description"]
