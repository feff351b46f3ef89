"""Fuzz the server's OpenAPI schema in process with schemathesis: no input may cause a 5xx."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from xylen.core.settings import load_settings  # noqa: E402
from xylen.serve.app import create_app  # noqa: E402

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def api_schema(trained_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("fuzz") / "home"
    shutil.copytree(trained_home, home)  # the fuzzer may call the rollback route
    # schemathesis' ASGI client sends Host: testserver, which a keyless server answers only when it is allowed
    # POST /retrain runs a stand-in child that adopts the lock and answers at once (the real one: test_serve_retrain)
    fake = [sys.executable, str(Path(__file__).resolve().parents[1] / "fakes" / "retrain_child.py")]
    app = create_app(load_settings({"home": home, "allowed_hosts": "testserver"}, environ={}),
                     retrain_command=lambda h, names, fd: [*fake, str(h), str(fd), "ok"])
    app.state.holder.load_all()  # synchronously: the fuzzer's client does not run the lifespan
    assert app.state.holder.not_ready_reason() is None
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_server_errors(api_schema: Any) -> None:
    """Every operation of the OpenAPI schema, 50 generated cases each (schemathesis strategies, driven by
    Hypothesis directly rather than through schemathesis' pytest plugin, which tracks pytest internals)."""
    from hypothesis import given

    checked = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case: Any) -> None:
            response = case.call()
            assert response.status_code < 500, (
                case.method,
                case.path,
                response.status_code,
                response.text[:300],
            )
            if response.status_code >= 400:
                assert "error" in response.json(), response.text[:300]

        check()
        checked += 1
    assert checked >= 15  # every documented route was fuzzed
