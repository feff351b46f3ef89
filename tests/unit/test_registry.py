"""Registry: publish, promote, rollback; interrupted writes; tampered artifacts."""

from __future__ import annotations

import contextlib
import os
import shutil

import orjson
import pytest

from tests.helpers import ETH_1H, train_small
from xylen.core import registry as registry_mod
from xylen.core.bundle import load_bundle, read_manifest, sha256_file
from xylen.core.errors import BundleError
from xylen.core.registry import Registry

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    first = train_small(home)
    second = train_small(home, data=ETH_1H, name=first.name)  # a second version of the same model
    return home, first, second


@pytest.fixture
def home(trained, tmp_path):
    src, _, _ = trained
    dst = tmp_path / "home"
    shutil.copytree(src, dst)
    return dst


def test_versions_pointer_and_history(home):
    reg = Registry(home / "models")
    assert reg.names() == ["btcusdt-1h"]
    assert reg.versions("btcusdt-1h") == ["v0001", "v0002"]
    ptr = reg.current("btcusdt-1h")
    assert ptr.version == "v0002" and ptr.history == ("v0001",)
    assert ptr.sha256 == sha256_file(reg.path("btcusdt-1h", "v0002") / "model.txt")
    m = read_manifest(reg.path("btcusdt-1h", "v0002"))
    assert m.version == "v0002" and m.backend == "lightgbm"
    assert m.feature_set.names and m.golden.window is not None
    assert {"auc_mean", "auc_volatility_mean", "auc_shuffled_mean", "backtest"} <= set(m.metrics)


def test_rollback_is_one_step_and_promote_back(home):
    reg = Registry(home / "models")
    assert reg.rollback("btcusdt-1h").version == "v0001"
    assert reg.current("btcusdt-1h").history == ()
    with pytest.raises(BundleError, match="no previous live version"):
        reg.rollback("btcusdt-1h")
    ptr = reg.promote("btcusdt-1h", "v0002")
    assert ptr.version == "v0002" and ptr.history == ("v0001",)
    with pytest.raises(BundleError, match="has no version 'v0009'"):
        reg.promote("btcusdt-1h", "v0009")


@pytest.mark.parametrize("how", ["flip", "truncate", "append"])
def test_tampered_artifact_is_refused(home, how):
    reg = Registry(home / "models")
    art = reg.path("btcusdt-1h", "v0001") / "model.txt"
    data = bytearray(art.read_bytes())
    if how == "flip":
        i = data.index(b"threshold=") + 12
        data[i] = ord("7") if data[i] != ord("7") else ord("3")
    elif how == "truncate":
        data = data[: len(data) // 2]
    else:
        data += b"\n"
    art.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256|bytes but its manifest"):
        load_bundle(art.parent)
    with pytest.raises(BundleError):
        reg.promote("btcusdt-1h", "v0001")
    assert reg.current("btcusdt-1h").version == "v0002"  # the live pointer did not move


def test_golden_predictions_catch_a_consistent_forgery(home):
    """Model and manifest hash both rewritten (a different model): the golden rows catch it."""
    reg = Registry(home / "models")
    folder = reg.path("btcusdt-1h", "v0001")
    other = reg.path("btcusdt-1h", "v0002") / "model.txt"
    shutil.copy(other, folder / "model.txt")
    raw = orjson.loads((folder / "manifest.json").read_bytes())
    raw["artifact"]["sha256"] = sha256_file(folder / "model.txt")
    raw["artifact"]["size"] = (folder / "model.txt").stat().st_size
    (folder / "manifest.json").write_bytes(orjson.dumps(raw))
    with pytest.raises(BundleError, match="golden"):
        load_bundle(folder)


class Crash(Exception):
    pass


def test_interrupted_writes_leave_current_complete(home, monkeypatch):
    """Crash at every filesystem step of publish + promote: CURRENT always names a complete, verified bundle."""
    reg = Registry(home / "models")
    name = "btcusdt-1h"
    before = reg.current(name)
    template = reg.path(name, "v0002")
    steps = 0
    real_replace, real_rename, real_fsync = os.replace, os.rename, os.fsync

    def counting(real):
        def wrapper(*a, **k):
            nonlocal steps
            steps += 1
            if steps == crash_at:
                raise Crash(f"crash at step {steps}")
            return real(*a, **k)

        return wrapper

    crash_at = 10**9
    monkeypatch.setattr(registry_mod.os, "replace", counting(real_replace))
    monkeypatch.setattr(registry_mod.os, "rename", counting(real_rename))
    monkeypatch.setattr(registry_mod.os, "fsync", counting(real_fsync))
    from xylen.core import bundle as bundle_mod

    monkeypatch.setattr(bundle_mod.os, "replace", counting(real_replace))
    monkeypatch.setattr(bundle_mod.os, "fsync", counting(real_fsync))

    def publish_and_promote():
        with reg.stage(name) as staging:
            for f in template.iterdir():
                if f.is_file():
                    shutil.copy(f, staging / f.name)
            version = reg.publish(name, staging)
        reg.promote(name, version)

    # count the steps of one clean run
    publish_and_promote()
    total = steps
    assert total > 4
    for crash_at in range(1, total + 1):  # noqa: B007 (read by the wrapper through the closure)
        steps = 0
        with contextlib.suppress(Crash):
            publish_and_promote()
        ptr = reg.current(name)
        assert ptr is not None
        bundle = load_bundle(reg.path(name, ptr.version))  # complete and hash-verified
        assert bundle.manifest.artifact.sha256 == ptr.sha256
        assert not [p for p in (home / "models" / name).iterdir() if p.name.startswith(".staging-")]
    assert before is not None


def test_unwritable_registry_is_a_config_error(tmp_path):
    from xylen.core.errors import ConfigError

    not_a_dir = tmp_path / "home-is-a-file"
    not_a_dir.write_text("oops")
    reg = Registry(not_a_dir / "models")
    with pytest.raises(ConfigError, match="Cannot write to the model registry") as exc, reg.stage("x"):
        pass
    assert "XYLEN_HOME" in exc.value.hint
