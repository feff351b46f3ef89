"""Ensembles on an S3 registry (moto's server on loopback, XYLEN_MODELS_URL=s3://...): `xylen models ensemble
create|show` download every member version into the local cache (checked like any S3 version), a server with an
empty cache serves the ensemble with the same answers as the same ensemble in a local registry, and it picks up a
member's promotion on S3."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests import s3moto
from tests.conftest import binance_rows, wait_for
from tests.ensembles import build_members
from xylen.cli import app
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.serve.app import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration
moto_endpoint = s3moto.moto_endpoint  # fixture
runner = CliRunner()
ENS = "btcusdt-5m"
CREATE = ("models", "ensemble", "create", ENS, "--member", "m-a", "--member", "m-b@v0001", "--weight", "2",
          "--weight", "1", "--promote")


def s3_vars(endpoint: str, url: str) -> dict[str, str]:
    return {"XYLEN_MODELS_URL": url, "XYLEN_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "moto-key",
            "AWS_SECRET_ACCESS_KEY": "moto-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def xylen(home: Path, env: dict[str, str], *args: str) -> Any:
    return runner.invoke(app, ["--home", str(home), *args], env={"COLUMNS": "400", **env})


@pytest.fixture(scope="module")
def regs(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The members m-a (v0001 live, v0002) and m-b (v0001, v0002 live) on S3, and the same bundles (copied from S3)
    in a local registry; no ensemble yet."""
    base = tmp_path_factory.mktemp("ens-s3")
    url = f"s3://{s3moto.make_bucket(moto_endpoint)}/prod/models"
    env = s3_vars(moto_endpoint, url)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            if k.startswith("AWS_"):
                mp.setenv(k, v)
        s3 = Registry(url, endpoint_url=moto_endpoint, cache=base / "writer-cache", verify=lambda f: None)
        build_members(s3, others=False)
        local = Registry(base / "local" / "models", verify=lambda f: None)
        for name in ("m-a", "m-b"):
            for v in s3.versions(name):
                shutil.copytree(s3.path(name, v), local.root / name / v, ignore=shutil.ignore_patterns(".manifest-*"))
            ptr = s3.current(name)
            assert ptr is not None
            local.promote(name, ptr.version)
        yield {"s3": s3, "local": local, "env": env, "base": base}


@pytest.fixture
def aws(regs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's own process talks to moto too (the registry objects, the verification children)."""
    for k, v in regs["env"].items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)


def test_create_show_and_serve_an_ensemble_from_s3(regs: dict[str, Any], tmp_path: Path, sample_candles: Any,
                                                   aws: None) -> None:
    from tests.builders import window_matrix

    s3, env = regs["s3"], regs["env"]
    # created on a machine whose cache is empty: the members are downloaded, verified and pinned on S3
    r = xylen(tmp_path / "creator", env, *CREATE)
    assert r.exit_code == 0, r.output
    assert "btcusdt-5m v0001: ensemble (weighted) of m-a, m-b@v0001 (live)" in r.output
    assert s3.versions(ENS) == ["v0001"] and s3.current(ENS).version == "v0001"
    assert s3.pins("m-a") == {"v0001"} and s3.pins("m-b") == {"v0001"}
    local_home = regs["base"] / "local"
    r = runner.invoke(app, ["--home", str(local_home), *CREATE], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output

    r = xylen(tmp_path / "viewer", env, "models", "ensemble", "show", ENS, "--json")  # another empty cache
    assert r.exit_code == 0, r.output
    assert '"created_with": "v0001"' in r.output and '"serves": "v0001"' in r.output

    # a replica with an empty cache: the ensemble's verification child finds its members in the cache
    settings = load_settings({"home": tmp_path / "replica"}, environ=env)
    w = binance_rows(window_matrix(sample_candles, 2500, 100))
    body = {"symbol": "BTCUSDT", "timeframe": "5m", "candles": w}
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c, \
            TestClient(create_app(load_settings({"home": local_home}, environ={})), base_url="http://127.0.0.1") as lc:
        for client in (c, lc):
            wait_for(lambda client=client: client.get("/health/ready").status_code == 200, timeout=120,
                     what="readiness")
        got, want = c.post("/predict", json=body), lc.post("/predict", json=body)
        assert got.status_code == 200, got.text
        assert (got.json()["model"], got.json()["model_version"]) == (ENS, "v0001")
        assert got.json()["probability"] == want.json()["probability"]
        row = next(m for m in c.get("/models").json() if m["name"] == ENS)
        assert row["members"] == [{"name": "m-a", "version": "v0001"}, {"name": "m-b", "version": "v0001"}]
        assert list((tmp_path / "replica" / "cache").glob("registry-*/bundles/m-b/v0001/model.txt"))

        # a promotion of the member it follows, on S3: the replica re-builds the ensemble over m-a v0002
        s3.promote("m-a", "v0002")
        regs["local"].promote("m-a", "v0002")

        def members() -> list[dict[str, str]]:
            return next(m for m in c.get("/models").json() if m["name"] == ENS)["members"]

        wait_for(lambda: members()[0] == {"name": "m-a", "version": "v0002"}, timeout=120,
                 what="the ensemble to follow m-a v0002")
        wait_for(lambda: next(m for m in lc.get("/models").json() if m["name"] == ENS)["members"][0]["version"]
                 == "v0002", timeout=120, what="the local ensemble to follow m-a v0002")
        got, want = c.post("/predict", json=body).json(), lc.post("/predict", json=body).json()
        assert got["probability"] == want["probability"] and got["model_version"] == "v0001"


def test_a_member_missing_from_s3_is_refused_with_its_name(regs: dict[str, Any], tmp_path: Path,
                                                           aws: None) -> None:
    s3, env = regs["s3"], regs["env"]
    r = xylen(tmp_path / "h", env, "models", "ensemble", "create", "e-miss", "--member", "m-a",
              "--member", "m-nope")
    assert r.exit_code == 4 and "m-nope" in r.output and "Traceback" not in r.output
    assert s3.versions("e-miss") == []


def test_a_nested_ensemble_brings_its_members_members_into_an_empty_cache(regs: dict[str, Any], tmp_path: Path,
                                                                          aws: None) -> None:
    from xylen.core.bundle import load_bundle
    from xylen.core.ensemble import EnsembleBundle

    env = regs["env"]
    for args in (("e-flat", "--member", "m-a@v0001", "--member", "m-b@v0001"),
                 ("e-nest", "--member", "e-flat@v0001", "--member", "m-b@v0002", "--promote")):
        r = xylen(tmp_path / "creator", env, "models", "ensemble", "create", *args)
        assert r.exit_code == 0, r.output
    fresh = Registry(env["XYLEN_MODELS_URL"], endpoint_url=env["XYLEN_S3_ENDPOINT_URL"], cache=tmp_path / "fresh")
    fresh.verify("e-nest", "v0001")  # in a child process, from the cache
    bundle = load_bundle(fresh.path("e-nest", "v0001"))
    assert isinstance(bundle, EnsembleBundle) and isinstance(bundle.members[0], EnsembleBundle)
    cached = {p.parent.parent.name + "/" + p.parent.name for p in (tmp_path / "fresh").glob("registry-*/bundles/*/*/"
                                                                                             "manifest.json")}
    assert cached == {"e-nest/v0001", "e-flat/v0001", "m-a/v0001", "m-b/v0001", "m-b/v0002"}
