"""Retention and pins: prune keeps the newest N + live + rollback target + pinned; races with promote, rollback and
pin never leave CURRENT or PINS naming a missing version; damaged files prune nothing; the CLI."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import threading

import orjson
import pytest
from typer.testing import CliRunner

from tests.builders import build_bundle
from xylen.cli import app
from xylen.core import retention
from xylen.core.bundle import load_bundle
from xylen.core.errors import BundleError, ConfigError
from xylen.core.registry import POINTER, Registry
from xylen.core.storage import TMP_DIR

pytestmark = pytest.mark.unit
NAME = "btcusdt-5m"
runner = CliRunner()


def verify_here(folder):
    """The child-process verifier's checks, in this process (fast; these tests are about the registry's writes)."""
    try:
        load_bundle(folder)
    except BundleError as exc:
        return exc.message
    return None


def copies(reg: Registry, n: int, name: str = NAME) -> list[str]:
    """Publish ``n`` more versions (copies of v0001's files: cheap, and each verifies)."""
    out = []
    for _ in range(n):
        with reg.stage(name) as staging:
            for f in reg.path(name, "v0001").iterdir():
                if f.is_file():
                    shutil.copy(f, staging / f.name)
            out.append(reg.publish(name, staging))
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    home = tmp_path_factory.mktemp("retention")
    reg = Registry(home / "models", verify=verify_here)
    build_bundle(reg, NAME, rounds=5, rows=800, promote=False)
    copies(reg, 7)  # v0001..v0008, nothing live
    return home


@pytest.fixture
def home(template, tmp_path):
    dst = tmp_path / "home"
    shutil.copytree(template, dst)
    return dst


@pytest.fixture
def reg(home):
    r = Registry(home / "models", verify=verify_here)
    r.promote(NAME, "v0002")
    r.promote(NAME, "v0003")  # live v0003, rollback target v0002
    return r


def snapshot(home):
    """Every file of the registry (path -> bytes), to prove that nothing changed."""
    root = home / "models"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def no_trash(reg: Registry) -> bool:
    tmp = reg.root / TMP_DIR
    return not tmp.exists() or not any(p.name.endswith(".d") for p in tmp.iterdir())


# -- what a prune keeps -----------------------------------------------------------------------------------------
def test_prune_keeps_newest_live_rollback_target_and_pinned(reg, home):
    assert reg.pin(NAME, "v0005") is True
    before = snapshot(home)
    assert reg.prune(NAME, 2, dry_run=True) == ["v0001", "v0004", "v0006"]
    assert snapshot(home) == before  # a dry run changes nothing
    assert reg.prune(NAME, 2) == ["v0001", "v0004", "v0006"]
    assert reg.versions(NAME) == ["v0002", "v0003", "v0005", "v0007", "v0008"]
    assert reg.current(NAME).version == "v0003" and reg.current(NAME).history[0] == "v0002"
    assert reg.pins(NAME) == {"v0005"}
    assert no_trash(reg)
    assert reg.prune(NAME, 2) == []  # nothing left to remove
    for v in reg.versions(NAME):
        load_bundle(reg.path(NAME, v))  # what is kept is whole


def test_rollback_goes_to_a_version_that_still_exists(reg):
    reg.promote(NAME, "v0004")  # history v0003, v0002
    reg.pin(NAME, "v0001")
    assert reg.prune(NAME, 1) == ["v0002", "v0005", "v0006", "v0007"]  # v0002 was history[1], not the target
    ptr = reg.rollback(NAME)
    assert ptr.version == "v0003" and ptr.history == ()  # the pruned v0002 is no rollback target
    with pytest.raises(BundleError, match="no previous live version"):
        reg.rollback(NAME)


def test_a_model_without_a_live_version_keeps_the_newest(home):
    reg = Registry(home / "models", verify=verify_here)
    assert reg.prune(NAME, 3) == ["v0001", "v0002", "v0003", "v0004", "v0005"]
    assert reg.versions(NAME) == ["v0006", "v0007", "v0008"]


@pytest.mark.parametrize("keep", [0, -1, True, 2.5, "3"])
def test_keep_below_one_is_refused(reg, home, keep):
    before = snapshot(home)
    with pytest.raises(ConfigError, match=f"--keep {keep!r}") as exc:
        reg.prune(NAME, keep)
    assert "keep at least 1" in exc.value.hint
    assert snapshot(home) == before


# -- pins ---------------------------------------------------------------------------------------------------------
def test_pin_and_unpin(reg, home):
    assert reg.pins(NAME) == set()
    assert reg.pin(NAME, "v0001") is True
    assert reg.pin(NAME, "v0001") is False  # already pinned: nothing written
    assert reg.pin(NAME, "v0004") is True
    raw = orjson.loads((home / "models" / NAME / "PINS.json").read_bytes())
    assert raw["pinned"] == ["v0001", "v0004"]
    assert reg.unpin(NAME, "v0001") is True
    assert reg.unpin(NAME, "v0001") is False  # not pinned any more: a no-op
    assert reg.pins(NAME) == {"v0004"}


@pytest.mark.parametrize("bad", ["v0009", "../other/v0001", "latest", "v1", ""])
def test_pinning_a_version_that_does_not_exist_names_the_known_ones(reg, home, bad):
    before = snapshot(home)
    with pytest.raises(BundleError, match="has no version|is not a version") as exc:
        reg.pin(NAME, bad)
    if bad == "v0009":
        assert "known: v0001, v0002" in exc.value.message
    with pytest.raises(BundleError):
        reg.unpin(NAME, bad)  # neither pinned nor a version: a typo, not a silent no-op
    assert snapshot(home) == before


DAMAGED = [b'{"pinned": ["v00', b"[1]", b'{"pinned": "v0001"}', b'{"pinned": ["../x"]}', b"{}", b"\xff\xfe", b""]


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_pins_file_prunes_nothing_and_says_how_to_fix_it(reg, home, damage):
    pins = home / "models" / NAME / "PINS.json"
    pins.write_bytes(damage)
    before = snapshot(home)
    for call in (lambda: reg.prune(NAME, 1), lambda: reg.pins(NAME), lambda: reg.pin(NAME, "v0001")):
        with pytest.raises(BundleError, match="PINS.json' is unreadable") as exc:
            call()
        assert "nothing of model 'btcusdt-5m' is pruned" in exc.value.message
        assert "xylen models pin btcusdt-5m" in exc.value.hint
    assert snapshot(home) == before  # never "no pins": nothing deleted, the file is not overwritten
    rows = reg.summary(NAME)
    assert any(r["version"] == "PINS.json" and not r["ok"] for r in rows)
    assert all(r["pinned"] is None for r in rows if r["version"].startswith("v"))  # unknown, not False


def test_a_damaged_current_prunes_nothing(reg, home):
    (home / "models" / NAME / POINTER).write_bytes(b'{"version": "v00')
    before = snapshot(home)
    with pytest.raises(BundleError, match="Nothing of model 'btcusdt-5m' is pruned") as exc:
        reg.prune(NAME, 1)
    assert "xylen models promote btcusdt-5m" in exc.value.hint
    assert snapshot(home) == before


# -- races ----------------------------------------------------------------------------------------------------------
def test_a_promotion_just_before_the_removal_keeps_the_version(reg, monkeypatch):
    """The prune planned to remove v0001; a promotion of v0001 lands before its removal: v0001 stays."""
    real = reg.storage.retire
    promoted = []

    def promote_first(prefix, **kw):
        if prefix == f"{NAME}/v0001" and not promoted:
            promoted.append(reg.promote(NAME, "v0001"))
        return real(prefix, **kw)

    monkeypatch.setattr(reg.storage, "retire", promote_first)
    removed = reg.prune(NAME, 1)
    assert promoted and "v0001" not in removed
    assert reg.current(NAME).version == "v0001"
    assert reg.current(NAME).history[0] == "v0003"  # the new rollback target was kept too
    assert set(reg.versions(NAME)) == {"v0001", "v0002", "v0003", "v0008"}  # v0002 was the target when planned
    load_bundle(reg.path(NAME, "v0001"))


def test_a_removal_between_the_check_and_the_swap_refuses_the_promotion(reg, monkeypatch):
    """promote checked v0001 (it existed), then a prune removed it before CURRENT's swap: the swap must refuse,
    since CURRENT would name a missing folder."""
    real = reg.storage.swap
    pruned = []

    def prune_first(key, data, expect, **kw):
        if key == f"{NAME}/{POINTER}" and not pruned:
            pruned.append(retention.prune(Registry(reg.root, verify=verify_here), NAME, 1))
        return real(key, data, expect, **kw)

    monkeypatch.setattr(reg.storage, "swap", prune_first)
    with pytest.raises(BundleError, match="v0001 was removed by a prune while it was being promoted"):
        reg.promote(NAME, "v0001")
    assert "v0001" in pruned[0]
    ptr = reg.current(NAME)
    assert ptr.version == "v0003" and reg.path(NAME, ptr.version).is_dir()


def test_a_removal_during_verification_refuses_the_promotion(home):
    """The prune lands while promote verifies v0001 (in the child process, in real use)."""
    other = Registry(home / "models", verify=verify_here)
    other.promote(NAME, "v0003")

    def verify_then_prune(folder):
        if folder.name == "v0001":
            assert retention.prune(other, NAME, 1) == ["v0001", "v0002", "v0004", "v0005", "v0006", "v0007"]
        return None  # as if the child had read the files before they went

    reg = Registry(home / "models", verify=verify_then_prune)
    with pytest.raises(BundleError, match="removed by a prune"):
        reg.promote(NAME, "v0001")
    assert reg.current(NAME).version == "v0003"


@pytest.mark.parametrize("first", ["rollback", "prune"])
def test_a_rollback_racing_a_prune_never_names_a_removed_version(home, monkeypatch, first):
    """v0001 is history[1] when the prune plans; a rollback makes it the rollback target. Rollback first: the prune
    keeps it. Prune first (between the rollback's look and its swap): the rollback goes on without it."""
    reg = Registry(home / "models", verify=verify_here)
    for v in ("v0001", "v0002", "v0003"):
        reg.promote(NAME, v)  # live v0003, history v0002, v0001
    other = Registry(home / "models", verify=verify_here)
    done: list[object] = []
    if first == "rollback":
        real_retire = other.storage.retire

        def rollback_first(prefix, **kw):
            if prefix == f"{NAME}/v0001" and not done:
                done.append(reg.rollback(NAME))
            return real_retire(prefix, **kw)

        monkeypatch.setattr(other.storage, "retire", rollback_first)
        removed = other.prune(NAME, 1)
        assert done and "v0001" not in removed
        assert reg.current(NAME).version == "v0002" and reg.current(NAME).history == ("v0001",)
    else:
        real_swap = reg.storage.swap

        def prune_first(key, data, expect, **kw):
            if key.endswith(POINTER) and not done:
                done.append(other.prune(NAME, 1))
            return real_swap(key, data, expect, **kw)

        monkeypatch.setattr(reg.storage, "swap", prune_first)
        ptr = reg.rollback(NAME)
        assert "v0001" in done[0]
        assert ptr.version == "v0002" and ptr.history == ()  # not the removed v0001
    ptr = reg.current(NAME)
    assert all(reg.path(NAME, v).is_dir() for v in (ptr.version, *ptr.history))


def test_a_pin_racing_a_prune_is_kept_or_refused(reg, monkeypatch, home):
    real = reg.storage.swap
    calls = []

    def prune_first(key, data, expect, **kw):
        if key.endswith("PINS.json") and not calls:
            calls.append(retention.prune(Registry(reg.root, verify=verify_here), NAME, 1))
        return real(key, data, expect, **kw)

    monkeypatch.setattr(reg.storage, "swap", prune_first)
    with pytest.raises(BundleError, match="has no version 'v0001'"):
        reg.pin(NAME, "v0001")
    assert "v0001" in calls[0]
    assert reg.pins(NAME) == set()  # PINS never names a removed version
    # and the other order: the pin lands first, the prune sees it
    monkeypatch.setattr(reg.storage, "swap", real)
    assert reg.pin(NAME, "v0008") is True


def test_a_swap_in_progress_holds_the_prune_off(reg):
    """A promotion holding CURRENT's lock (between its compare and its rename) makes the prune wait, then the
    prune sees the new live version and keeps it: threads, the lock is the real one."""
    in_swap, release = threading.Event(), threading.Event()
    real_lock = reg.storage.lock

    @contextlib.contextmanager
    def slow_lock(key):
        with real_lock(key):
            if key == f"{NAME}/{POINTER}" and threading.current_thread().name == "promoter":
                in_swap.set()
                assert release.wait(60)
            yield

    reg.storage.lock = slow_lock  # this registry's storage only: the prune below uses its own
    errors: list[BaseException] = []

    def promoter():
        try:
            reg.promote(NAME, "v0001")
        except BaseException as exc:  # pragma: no cover (reported below)
            errors.append(exc)

    t = threading.Thread(target=promoter, name="promoter")
    t.start()
    assert in_swap.wait(60)
    pruner = Registry(reg.root, verify=verify_here)
    planned, waiting = [], threading.Event()
    real_retire = pruner.storage.retire

    def retire(prefix, **kw):  # the plan is made (v0001 not live then): now it waits for CURRENT's lock
        planned.append(prefix)
        waiting.set()
        return real_retire(prefix, **kw)

    pruner.storage.retire = retire
    result: list[list[str]] = []
    p = threading.Thread(target=lambda: result.append(pruner.prune(NAME, 1)))
    p.start()
    assert waiting.wait(60)
    release.set()
    t.join(60)
    p.join(60)
    assert not errors and result
    assert planned[0] == f"{NAME}/v0001" and "v0001" not in result[0]
    ptr = pruner.current(NAME)
    assert ptr.version == "v0001" and pruner.path(NAME, "v0001").is_dir()
    assert pruner.path(NAME, ptr.history[0]).is_dir()


def _pin_each(root: str, versions: list[str], start) -> None:
    reg = Registry(root, verify=verify_here)
    start.wait(120)  # both at once: process start-up alone would otherwise keep them apart
    for v in versions:
        assert reg.pin(NAME, v) is True


def _promote_and_prune(root: str, versions: list[str], seed: int, start) -> None:
    import random

    rnd = random.Random(seed)
    reg = Registry(root, verify=verify_here)
    start.wait(120)
    for _ in range(60):
        if rnd.random() < 0.5:
            with contextlib.suppress(BundleError):  # refused: the version was pruned first
                reg.promote(NAME, rnd.choice(versions))
        else:
            reg.prune(NAME, 1)
        ptr = reg.current(NAME)  # never dangling, at any moment (a moved pointer's old version may go)
        if not reg.path(NAME, ptr.version).is_dir():
            assert reg.current(NAME).version != ptr.version, f"CURRENT names the missing {ptr.version}"


def _run(target, *arg_sets) -> None:
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(len(arg_sets))
    procs = [ctx.Process(target=target, args=(*args, start)) for args in arg_sets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0] * len(procs)


def test_two_processes_pinning_keep_every_pin(reg):
    new = copies(reg, 60)  # v0009..v0068
    _run(_pin_each, (str(reg.root), new[::2]), (str(reg.root), new[1::2]))
    assert reg.pins(NAME) == set(new)
    assert reg.prune(NAME, 1) == ["v0001", "v0004", "v0005", "v0006", "v0007", "v0008"]


def test_processes_promoting_and_pruning_never_leave_current_dangling(reg):
    new = copies(reg, 12)
    root = str(reg.root)
    _run(_promote_and_prune, (root, new, 1), (root, new, 2), (root, new, 3))
    ptr = reg.current(NAME)
    assert reg.path(NAME, ptr.version).is_dir()
    if ptr.history:
        assert reg.path(NAME, ptr.history[0]).is_dir()
    assert no_trash(reg)


def _retire_and_die(root: str, version: str, _start) -> None:
    reg = Registry(root, verify=verify_here)
    assert reg.storage.retire(f"{NAME}/{version}", guards=[], allowed=lambda: True) is not None
    os._exit(0)  # killed before the purge


def test_a_killed_prune_leaves_nothing_visible_and_the_next_writer_cleans_up(reg):
    _run(_retire_and_die, (str(reg.root), "v0001"))
    assert "v0001" not in reg.versions(NAME)
    assert not no_trash(reg)  # the retired folder waits in the temp area...
    with reg.stage(NAME):
        pass
    assert no_trash(reg)  # ...until the next writer's clean_temp


# -- CLI ------------------------------------------------------------------------------------------------------------
def xylen(home, *args, env=None):
    return runner.invoke(app, ["--home", str(home), "models", *args], env=env)


def test_cli_pin_unpin_list(reg, home):
    r = xylen(home, "pin", NAME, "v0004")
    assert r.exit_code == 0 and "v0004 pinned (pinned: v0004)" in r.output
    rows = orjson.loads(xylen(home, "list", "--json").stdout)
    assert {r["version"]: r["pinned"] for r in rows} == {f"v{i:04d}": i == 4 for i in range(1, 9)}
    table = xylen(home, "list", env={"COLUMNS": "200"}).output
    assert "pinned" in table and [ln for ln in table.splitlines() if "v0004" in ln and "pin" in ln]
    r = xylen(home, "unpin", NAME, "v0004")
    assert r.exit_code == 0 and "v0004 unpinned (pinned: none)" in r.output


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["pin", NAME, "v0042"], 4, "has no version 'v0042' (known: v0001"),
        (["pin", "nope", "v0001"], 4, "No model named 'nope'"),
        (["unpin", NAME, "v0042"], 4, "has no version 'v0042'"),
        (["pin", NAME, "../x"], 4, "'../x' is not a version"),
        (["prune", "--keep", "0"], 2, "--keep 0 would keep no version"),
        (["prune", "nope"], 4, "No model named 'nope'"),
        (["prune", NAME, "--all"], 2, "Both --all and model names (btcusdt-5m)"),
    ],
)
def test_cli_bad_input(reg, home, args, code, says):
    before = snapshot(home)
    r = xylen(home, *args)
    assert r.exit_code == code, r.output
    assert says in r.output and "hint:" in r.output
    assert "Traceback" not in r.output
    assert snapshot(home) == before


def test_cli_prune_json_and_dry_run(reg, home):
    reg.pin(NAME, "v0001")
    before = snapshot(home)
    r = xylen(home, "prune", NAME, "--keep", "3", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    report = orjson.loads(r.stdout)
    assert report["dry_run"] is True and report["keep"] == 3 and report["exit_code"] == 0
    (row,) = report["results"]
    assert row["removed"] == ["v0004", "v0005"] and row["error"] is None
    assert row["live"] == "v0003" and row["rollback_target"] == "v0002" and row["pinned"] == ["v0001"]
    assert snapshot(home) == before  # --dry-run deletes nothing
    r = xylen(home, "prune", "--keep", "3")  # the only model, without its name
    assert r.exit_code == 0 and "removed v0004, v0005" in r.output
    assert reg.versions(NAME) == ["v0001", "v0002", "v0003", "v0006", "v0007", "v0008"]


def test_cli_prune_keep_defaults_to_the_setting(reg, home):
    r = xylen(home, "prune", "--json", env={"XYLEN_KEEP_VERSIONS": "4"})
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.stdout)["keep"] == 4
    assert reg.versions(NAME) == ["v0002", "v0003", "v0005", "v0006", "v0007", "v0008"]


def test_cli_prune_all_goes_on_past_a_damaged_model_and_exits_4(reg, home):
    other = Registry(home / "models", verify=verify_here)
    build_bundle(other, "ethusdt-5m", rounds=5, rows=800)
    copies(other, 2, "ethusdt-5m")
    (home / "models" / NAME / "PINS.json").write_bytes(b"not json")
    before = {k: v for k, v in snapshot(home).items() if k.startswith(NAME)}
    r = xylen(home, "prune", "--all", "--keep", "1", "--json")
    assert r.exit_code == 4, r.output
    report = orjson.loads(r.stdout)
    assert report["exit_code"] == 4
    rows = {row["name"]: row for row in report["results"]}
    assert rows[NAME]["error"]["exit_code"] == 4 and "PINS.json" in rows[NAME]["error"]["message"]
    assert rows["ethusdt-5m"]["removed"] == ["v0002"] and rows["ethusdt-5m"]["error"] is None
    assert {k: v for k, v in snapshot(home).items() if k.startswith(NAME)} == before
    r = xylen(home, "prune", "--all", "--keep", "1")
    assert r.exit_code == 4 and "btcusdt-5m: error:" in r.output and "hint:" in r.output


def test_cli_prune_json_reports_a_bad_keep_as_json(reg, home):
    r = xylen(home, "prune", "--keep", "0", "--json")
    assert r.exit_code == 2
    report = orjson.loads(r.stdout)
    assert report["exit_code"] == 2 and "--keep 0" in report["error"]["message"] and report["results"] == []


# -- xylen train ------------------------------------------------------------------------------------------------------
def test_train_prunes_after_it_publishes(tmp_path):
    from tests.helpers import train_small

    results = [train_small(tmp_path, keep_versions=1) for _ in range(3)]
    assert [r.pruned for r in results] == [[], [], ["v0001"]]  # v0002 is the rollback target of v0003
    assert results[-1].to_dict()["pruned"] == ["v0001"]
    reg = Registry(tmp_path / "models")
    assert reg.versions(results[-1].name) == ["v0002", "v0003"]
    (tmp_path / "models" / results[-1].name / "PINS.json").write_bytes(b"{")
    damaged = train_small(tmp_path, keep_versions=1)  # published and live; only the clean-up is skipped
    assert damaged.version == "v0004" and damaged.pruned == []
    assert any("old versions were not pruned" in w and "PINS.json" in w for w in damaged.warnings)
    assert reg.versions(damaged.name) == ["v0002", "v0003", "v0004"]


def test_keep_defaults_to_ten(reg, home):
    r = xylen(home, "prune", "--dry-run", "--json", env={"XYLEN_KEEP_VERSIONS": None})
    assert r.exit_code == 0 and orjson.loads(r.stdout)["keep"] == 10


def test_a_failing_abandoned_upload_cleanup_never_stops_the_prune(reg, home, monkeypatch, caplog):
    """The cleanup of abandoned S3 uploads runs after the prune and apart from it: its error (here what an S3-compatible
    server without conditional deletes answers) is a warning after train/retrain, `abandoned_error` in `models prune`,
    and old versions are removed all the same."""
    import logging

    def refuses(self, name, **kw):
        raise ConfigError("S3 request delete_object on 's3://b/x' failed: NotImplemented.", hint="check the bucket.")

    monkeypatch.setattr(Registry, "clean_abandoned", refuses)
    with caplog.at_level(logging.WARNING, logger="xylen.registry"):
        assert reg.prune(NAME, 6) == ["v0001"]  # what train and retrain call after they publish
    assert "abandoned uploads were not cleaned" in caplog.text and "NotImplemented" in caplog.text
    r = xylen(home, "prune", NAME, "--keep", "4", "--json")
    assert r.exit_code == 2, r.output
    (row,) = orjson.loads(r.stdout)["results"]
    assert row["removed"] == ["v0004"] and row["error"] is None and row["abandoned"] == []
    assert "NotImplemented" in row["abandoned_error"]["message"] and row["abandoned_error"]["exit_code"] == 2
    r = xylen(home, "prune", NAME, "--keep", "3")
    assert r.exit_code == 2 and "removed v0005" in r.output and "Traceback" not in r.output
    assert "abandoned uploads were not cleaned: S3 request delete_object" in r.output and "hint:" in r.output
    assert reg.versions(NAME) == ["v0002", "v0003", "v0006", "v0007", "v0008"]
