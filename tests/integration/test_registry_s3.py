"""The model registry on S3 (moto's server on loopback): publish, promote (verified in a child from the local cache),
rollback, pins, prune, summary and the CLI, with XYLEN_MODELS_URL=s3://...; a stale pointer write refused; a
version without commit marker invisible; a tampered artifact on S3 refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import s3moto
from tests.helpers import ETH_1H, train_small
from xylen.core.errors import BundleError
from xylen.core.registry import POINTER, PromotionConflict, Registry

moto_endpoint, s3_env, s3_url = s3moto.moto_endpoint, s3moto.s3_env, s3moto.s3_url  # fixtures


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    first = train_small(home, promote=False)
    train_small(home, data=ETH_1H, name=first.name, promote=False)
    return home / "models" / first.name


def _upload(reg: Registry, local_model: Path) -> list[str]:
    """Publish each local version through the registry's seam (what `xylen train` does with its staged bundle)."""
    out = []
    for v in sorted(p for p in local_model.iterdir() if p.is_dir()):
        with reg.stage(local_model.name) as staging:
            shutil.copytree(v, staging, dirs_exist_ok=True)
            out.append(reg.publish(local_model.name, staging))
    return out


def test_registry_operations_on_s3(trained: Path, s3_url: str, tmp_path: Path) -> None:
    name = trained.name
    reg = Registry(s3_url, cache=tmp_path / "cache")
    assert reg.remote and reg.names() == [] and reg.current(name) is None
    assert _upload(reg, trained) == ["v0001", "v0002"]
    assert reg.names() == [name] and reg.versions(name) == ["v0001", "v0002"]
    assert reg.live_names() == []  # nothing promoted yet

    p1 = reg.promote(name, "v0001")  # verified in a child process, from the local cache
    cached = tmp_path / "cache"
    assert list(cached.glob(f"registry-*/bundles/{name}/v0001/model.txt"))
    p2 = reg.promote(name, "v0002")
    assert (p2.version, p2.history) == ("v0002", ("v0001",)) and p1.sha256 != p2.sha256
    other = Registry(s3_url, cache=tmp_path / "other-cache")  # another machine reading the same bucket
    assert other.current(name) == p2 and other.live_names() == [name]
    assert other.rollback(name).version == "v0001"
    assert reg.current(name).version == "v0001"

    assert reg.pin(name, "v0002") and reg.pins(name) == {"v0002"}
    rows = {r["version"]: r for r in reg.summary(name)}
    assert rows["v0001"]["live"] and rows["v0002"]["pinned"] and rows["v0002"]["auc"] > 0.5
    assert reg.unpin(name, "v0002") and reg.pins(name) == set()
    reg.promote(name, "v0002")  # live v0002, rollback target v0001: a prune keeping 1 removes nothing
    assert reg.prune(name, keep=1) == []
    assert _upload(reg, trained) == ["v0003", "v0004"]
    reg.promote(name, "v0003")  # live v0003, target v0002, newest v0004: v0001 may go
    assert reg.prune(name, keep=1) == ["v0001"]
    assert reg.versions(name) == ["v0002", "v0003", "v0004"] and reg.storage.list(f"{name}/v0001") == []
    with pytest.raises(BundleError, match="no version 'v0001'"):
        reg.promote(name, "v0001")


def test_a_stale_pointer_write_is_refused_between_two_writers(trained: Path, s3_url: str, tmp_path: Path) -> None:
    name = trained.name
    a = Registry(s3_url, cache=tmp_path / "a", verify=lambda f: None)
    b = Registry(s3_url, cache=tmp_path / "b", verify=lambda f: None)
    _upload(a, trained)
    a.promote(name, "v0001")
    # a trainer gated its candidate against v0001; meanwhile another writer promoted v0002
    b.promote(name, "v0002", expect_live="v0001")
    with pytest.raises(PromotionConflict, match="v0002 is live now, not v0001"):
        a.promote(name, "v0001", expect_live="v0001")
    # the raw compare-and-swap: a writer holding the old ETag is refused, the newer pointer stays
    from xylen.core.storage import Conflict

    old = a.storage.read_versioned(f"{name}/{POINTER}")
    b.rollback(name)
    with pytest.raises(Conflict):
        a.storage.swap(f"{name}/{POINTER}", b"{}", old.token)
    assert a.current(name).version == "v0001" and a.current(name).history == ()  # b's rollback, intact


def test_a_version_without_commit_marker_and_a_tampered_one_never_go_live(
    trained: Path, s3_url: str, tmp_path: Path
) -> None:
    name = trained.name
    reg = Registry(s3_url, cache=tmp_path / "cache")
    _upload(reg, trained)
    c, bucket, pre = reg.storage.client, reg.storage.bucket, reg.storage.prefix
    # a crafted (or half-uploaded) version: every file, but no commit marker
    for f in (trained / "v0001").rglob("*"):
        if f.is_file():
            rel = f.relative_to(trained / "v0001").as_posix()
            c.put_object(Bucket=bucket, Key=f"{pre}/{name}/v0009/{rel}", Body=f.read_bytes())
    assert reg.versions(name) == ["v0001", "v0002"] and not reg.has_version(name, "v0009")
    with pytest.raises(BundleError, match="no version 'v0009'"):
        reg.promote(name, "v0009")
    # a published version whose model.txt is replaced on S3: the download's sha256 check refuses it
    body = c.get_object(Bucket=bucket, Key=f"{pre}/{name}/v0002/model.txt")["Body"].read()
    c.put_object(Bucket=bucket, Key=f"{pre}/{name}/v0002/model.txt", Body=body.replace(b"tree", b"tRee", 1))
    with pytest.raises(BundleError):
        reg.promote(name, "v0002")
    assert reg.current(name) is None


def test_cli_models_commands_on_an_s3_registry(trained: Path, s3_url: str, s3_env: str, tmp_path: Path) -> None:
    reg = Registry(s3_url, cache=tmp_path / "cache")
    _upload(reg, trained)
    env = {**os.environ, "XYLEN_HOME": str(tmp_path / "home"), "XYLEN_MODELS_URL": s3_url}

    def xylen(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "xylen", *args], env=env, capture_output=True, text=True,
                              timeout=300)

    r = xylen("models", "promote", trained.name, "v0002")
    assert r.returncode == 0, r.stderr
    assert reg.current(trained.name).version == "v0002"
    r = xylen("models", "list", "--json")
    assert r.returncode == 0, r.stderr
    assert "v0002" in r.stdout and json.loads(r.stdout)
    assert list((tmp_path / "home" / "cache").glob(f"registry-*/bundles/{trained.name}/v0002/model.txt"))
    assert "testing-secret" not in r.stdout + r.stderr
    env["XYLEN_MODELS_URL"] = "s3:///nobucket"
    r = xylen("models", "list")
    assert r.returncode == 2 and "s3:///nobucket" in r.stderr and "Traceback" not in r.stderr
    from tests.conftest import free_port

    env["XYLEN_MODELS_URL"], env["XYLEN_S3_ENDPOINT_URL"] = s3_url, f"http://127.0.0.1:{free_port()}"  # nothing there
    r = xylen("models", "list")
    assert r.returncode == 2 and env["XYLEN_S3_ENDPOINT_URL"] in r.stderr and "Traceback" not in r.stderr


def test_training_publishes_and_promotes_into_an_s3_registry(s3_url: str, s3_env: str, tmp_path: Path) -> None:
    """`xylen train` with XYLEN_MODELS_URL=s3://...: the bundle goes to S3 (nothing under XYLEN_HOME/models)."""
    result = train_small(tmp_path / "home", models_url=s3_url, s3_endpoint_url=s3_env)
    reg = Registry(s3_url, cache=tmp_path / "reader")
    assert reg.versions(result.name) == ["v0001"] and reg.current(result.name).version == "v0001"
    assert reg.manifest(result.name, "v0001").metrics["auc_mean"] > 0.5
    assert not (tmp_path / "home" / "models").exists()


def test_a_replica_poll_costs_one_listing_and_one_head_per_model(trained: Path, s3_url: str, tmp_path: Path) -> None:
    from xylen.serve.holder import ModelHolder

    writer = Registry(s3_url, cache=tmp_path / "w", verify=lambda f: None)
    _upload(writer, trained)
    writer.promote(trained.name, "v0001")
    reg = Registry(s3_url, cache=tmp_path / "replica")
    holder = ModelHolder(reg, verify=lambda f: None)
    holder.poll()
    assert holder.live[trained.name].version == "v0001"
    from botocore import xform_name

    calls: list[str] = []

    def counting(model: Any, **kw: object) -> None:  # every S3 request the client makes, listings' pages too
        calls.append(xform_name(model.name))

    reg.storage.client.meta.events.register("before-call.s3", counting)
    holder.poll()  # nothing changed
    assert calls == ["list_objects_v2", "head_object"]
    writer.promote(trained.name, "v0002")
    calls.clear()
    holder.poll()  # the ETag changed: the pointer is read, the version fetched, verified and swapped in
    assert calls[:3] == ["list_objects_v2", "head_object", "get_object"] and "put_object" not in calls
    assert holder.live[trained.name].version == "v0002"
    assert list((tmp_path / "replica").glob(f"registry-*/bundles/{trained.name}/v0002/model.txt"))


def test_prune_removes_an_abandoned_upload_and_the_next_publish_takes_its_number(
    trained: Path, s3_url: str, s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publisher killed after its claim and half its files: `xylen models prune` leaves it while it is fresh, removes
    it (objects, then claim) once past the grace period, and keeps every committed version."""
    from typer.testing import CliRunner

    from xylen.cli import app
    from xylen.core import storage_s3

    name = trained.name
    reg = Registry(s3_url, cache=tmp_path / "cache", verify=lambda f: None)
    _upload(reg, trained)
    reg.promote(name, "v0002")
    st = reg.storage
    assert st.put_new(f".claim/{name}/v0003", storage_s3._claim_body("killed", "uploading"))
    st.client.put_object(Bucket=st.bucket, Key=f"{st.prefix}/{name}/v0003/model.txt", Body=b"half a model")
    env = {"XYLEN_MODELS_URL": s3_url, "COLUMNS": "400"}

    def prune(*args: str) -> dict:
        r = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "models", "prune", name, "--json", *args],
                               env=env)
        assert r.exit_code == 0, r.output
        return json.loads(r.output)["results"][0]

    assert storage_s3.CLAIM_GRACE_S == 24 * 3600  # what README and `xylen models prune --help` say
    assert prune()["abandoned"] == []  # fresh: its publisher may still be uploading
    assert st.list(f"{name}/v0003") == [f"{name}/v0003/model.txt"]
    monkeypatch.setattr(storage_s3, "CLAIM_GRACE_S", -1.0)  # every age is past it
    assert prune("--dry-run")["abandoned"] == ["v0003"] and st.list(f"{name}/v0003")
    r = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "models", "prune", name, "--dry-run"], env=env)
    assert r.exit_code == 0 and "would remove abandoned uploads v0003 (claimed, never committed)" in r.output
    row = prune()
    assert row["abandoned"] == ["v0003"] and row["removed"] == [] and row["kept"] == ["v0001", "v0002"]
    assert st.list(f"{name}/v0003") == [] and st.token(f".claim/{name}/v0003") is None
    assert reg.versions(name) == ["v0001", "v0002"] and reg.current(name).version == "v0002"
    r = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "models", "prune", name], env=env)
    assert r.exit_code == 0 and "abandoned" not in r.output  # nothing left to clean
    assert _upload(reg, trained)[0] == "v0003"  # the number is free again
    reg.promote(name, "v0003")
    assert reg.current(name).version == "v0003"
    # the prune `xylen train` and `xylen retrain` run after they publish cleans them too
    assert st.put_new(f".claim/{name}/v0005", storage_s3._claim_body("killed", "uploading"))
    assert reg.prune(name, keep=10) == [] and st.token(f".claim/{name}/v0005") is None
