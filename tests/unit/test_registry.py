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
from xylen.core.registry import POINTER, Registry

pytestmark = pytest.mark.unit


def verify_here(folder):
    """The child-process verifier's checks, in this process (fast; these tests are about the registry's writes)."""
    try:
        load_bundle(folder)
    except BundleError as exc:
        return exc.message
    return None


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
    reg = Registry(home / "models", verify=verify_here)
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
    from xylen.core import bundle as bundle_mod
    from xylen.core import storage as storage_mod

    monkeypatch.setattr(storage_mod.os, "replace", counting(real_replace))
    monkeypatch.setattr(storage_mod.os, "rename", counting(real_rename))
    monkeypatch.setattr(storage_mod.os, "link", counting(os.link))
    monkeypatch.setattr(storage_mod.os, "fsync", counting(real_fsync))

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
        assert not [p for p in (home / "models" / name).iterdir() if not p.name.startswith("v") and p.name != POINTER]
        assert reg.versions(name) == sorted(reg.versions(name))
        for v in reg.versions(name):  # every visible version is complete
            load_bundle(reg.path(name, v))
    assert not list((home / "models" / ".tmp").iterdir())  # staging folders of failed writes are removed
    assert before is not None


def test_unwritable_registry_is_a_config_error(tmp_path):
    from xylen.core.errors import ConfigError

    not_a_dir = tmp_path / "home-is-a-file"
    not_a_dir.write_text("oops")
    reg = Registry(not_a_dir / "models")
    with pytest.raises(ConfigError, match="Cannot write to") as exc, reg.stage("x"):
        pass
    assert "XYLEN_HOME" in exc.value.hint


@pytest.mark.parametrize("bad", ["../other/v0001", "v0001/../../x", "V0001", "v1", "latest", "", "v0001 ",
                                 "v\u0663\u0663\u0663\u0663", "v\uff10\uff10\uff10\uff11"])  # other digits
def test_only_versions_of_that_model_can_be_promoted(home, bad):
    reg = Registry(home / "models", verify=verify_here)
    before = (home / "models" / "btcusdt-1h" / POINTER).read_bytes()
    with pytest.raises(BundleError, match="is not a version of model"):
        reg.promote("btcusdt-1h", bad)
    assert (home / "models" / "btcusdt-1h" / POINTER).read_bytes() == before


def test_promote_cli_refuses_a_path_as_version(home):
    from typer.testing import CliRunner

    from xylen.cli import app

    before = (home / "models" / "btcusdt-1h" / POINTER).read_bytes()
    res = CliRunner().invoke(app, ["--home", str(home), "models", "promote", "btcusdt-1h", "../other/v0001"])
    assert res.exit_code == 4, res.output
    assert "is not a version of model" in res.output
    assert (home / "models" / "btcusdt-1h" / POINTER).read_bytes() == before


def test_promote_verifies_in_a_child_process(home):
    """A truncated model whose manifest hash matches the damage passes the hash check; only loading it tells.
    Registry.promote runs that check itself (the CLI, HTTP rollback and trainers share it)."""
    from tests.builders import publish_corrupt

    reg = Registry(home / "models")  # the real child-process verifier
    before = reg.current("btcusdt-1h")
    bad = publish_corrupt(reg, "btcusdt-1h", "truncated")  # publishes and points CURRENT at it behind our back
    (home / "models" / "btcusdt-1h" / POINTER).write_bytes(before.to_json())  # undo the pointer
    with pytest.raises(BundleError, match="failed verification"):
        reg.promote("btcusdt-1h", bad)
    assert reg.current("btcusdt-1h") == before
    assert reg.promote("btcusdt-1h", "v0001").version == "v0001"  # a good one goes through the same check


def test_conditional_promotion_refuses_when_live_changed(home):
    reg = Registry(home / "models", verify=verify_here)
    assert reg.current("btcusdt-1h").version == "v0002"
    with pytest.raises(registry_mod.PromotionConflict, match="v0002 is live now, not v0001"):
        reg.promote("btcusdt-1h", "v0001", expect_live="v0001")
    assert reg.promote("btcusdt-1h", "v0001", expect_live="v0002").version == "v0001"


def test_publish_reports_a_full_disk_as_such(home, monkeypatch):
    import errno

    from xylen.core import storage as storage_mod
    from xylen.core.errors import ConfigError

    reg = Registry(home / "models", verify=verify_here)
    real = storage_mod.os.rename

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with reg.stage("btcusdt-1h") as staging:
        for f in reg.path("btcusdt-1h", "v0001").iterdir():
            if f.is_file():
                shutil.copy(f, staging / f.name)
        monkeypatch.setattr(storage_mod.os, "rename", full)
        with pytest.raises(ConfigError, match="the disk is full"):
            reg.publish("btcusdt-1h", staging)
        monkeypatch.setattr(storage_mod.os, "rename", real)
    assert reg.versions("btcusdt-1h") == ["v0001", "v0002"]


def _copies(reg: Registry, name: str, n: int) -> list[str]:
    out = []
    for _ in range(n):
        with reg.stage(name) as staging:
            for f in reg.path(name, "v0001").iterdir():
                if f.is_file():
                    shutil.copy(f, staging / f.name)
            out.append(reg.publish(name, staging))
    return out


def _promote_each(root: str, versions: list[str]) -> None:
    reg = Registry(root, verify=verify_here)
    for v in versions:
        reg.promote("btcusdt-1h", v)


def _rollback_n(root: str, n: int) -> None:
    reg = Registry(root, verify=verify_here)
    for _ in range(n):
        reg.rollback("btcusdt-1h")


def _run_both(target, args_a, args_b) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=args) for args in (args_a, args_b)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0, 0]


def test_two_processes_promoting_and_rolling_back_keep_the_whole_history(home):
    """Without a compare-and-swap on CURRENT, two writers kept 22 of 41 history entries."""
    root = str(home / "models")
    reg = Registry(root, verify=verify_here)
    new = _copies(reg, "btcusdt-1h", 40)
    before = reg.current("btcusdt-1h")
    _run_both(_promote_each, (root, new[:20]), (root, new[20:]))
    ptr = reg.current("btcusdt-1h")
    assert len(ptr.history) == 40 + len(before.history)  # one entry per promotion: the version it replaced
    assert set(ptr.history) | {ptr.version} == set(new) | {before.version, *before.history}
    _run_both(_rollback_n, (root, 10), (root, 10))
    after = reg.current("btcusdt-1h")
    assert after.version == ptr.history[19] and after.history == ptr.history[20:]


@pytest.mark.parametrize("damage", [b'{"version": "v00', b"[1]", b'{"version": "../../x", "sha256": "0"}',
                                    b'{"version": "v0001", "sha256": "0", "history": 5}', b"\xff\xfe"])
def test_a_damaged_pointer_is_listed_and_repaired_by_the_promotion_its_message_recommends(home, damage):
    from typer.testing import CliRunner

    from xylen.cli import app

    pointer = home / "models" / "btcusdt-1h" / POINTER
    pointer.write_bytes(damage)
    runner = CliRunner()
    res = runner.invoke(app, ["--home", str(home), "models", "list", "--json"])
    assert res.exit_code == 0, res.output
    assert any(r["version"] == POINTER and not r["ok"] for r in orjson.loads(res.stdout))
    res = runner.invoke(app, ["--home", str(home), "models", "rollback", "btcusdt-1h"])
    assert res.exit_code == 4 and "xylen models promote btcusdt-1h" in res.output
    reg = Registry(home / "models", verify=verify_here)
    assert reg.promote("btcusdt-1h", "v0002").version == "v0002"
    assert reg.current("btcusdt-1h").history == ()
    (kept,) = pointer.parent.glob("CURRENT.json.damaged-*")
    assert kept.read_bytes() == damage  # the damaged bytes are kept, never silently lost


def test_a_trailing_newline_is_neither_a_name_nor_a_version() -> None:
    from xylen.core.errors import XylenError
    from xylen.core.registry import check_name, check_version

    with pytest.raises(XylenError):
        check_name("btcusdt-5m\n")
    with pytest.raises(XylenError):
        check_version("btcusdt-5m", "v0001\n")
