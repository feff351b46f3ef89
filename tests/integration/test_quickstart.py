"""`xylen serve --train-if-missing` (the README's first command): trains once when nothing is live, then serves."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from xylen.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_trains_only_when_no_model_is_live(tmp_path, monkeypatch):
    served = []
    import xylen.serve.server as server

    monkeypatch.setattr(server, "serve", lambda settings, opts: served.append((settings.home, opts.names)))
    runner = CliRunner()
    env = {"XYLEN_FOLDS": "2", "XYLEN_PROFILE": "8gb"}
    r = runner.invoke(app, ["--home", str(tmp_path), "serve", "--train-if-missing"], env=env)
    assert r.exit_code == 0, r.output
    assert "training one first" in r.output and "what it knows (95% day-block bootstrap intervals)" in r.output
    ptr = orjson.loads((tmp_path / "models" / "btcusdt-5m" / "CURRENT.json").read_bytes())
    assert ptr["version"] == "v0001"
    r = runner.invoke(app, ["--home", str(tmp_path), "serve", "--train-if-missing"], env=env)
    assert r.exit_code == 0 and "training one first" not in r.output
    assert [v.name for v in (tmp_path / "models" / "btcusdt-5m").iterdir() if v.name.startswith("v")] == ["v0001"]
    assert served == [(tmp_path, []), (tmp_path, [])]
