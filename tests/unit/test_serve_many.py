"""Many markets in one server: one verifier child for many bundles, a poll that batches every changed pointer, and
a server that loads exactly the bytes its child verified."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.builders import build_bundle, point, publish_copies
from xylen.core.bundle import artifact_info, load_bundle, read_manifest, write_manifest
from xylen.core.errors import BundleError
from xylen.core.registry import POINTER, Registry
from xylen.core.verify import MANY_CHILD, Verdict, verify_many_in_children
from xylen.serve.holder import ModelHolder, SwapEvents

pytestmark = pytest.mark.unit

SOURCE = "btcusdt-5m"


def symbols(n: int, prefix: str = "C") -> list[str]:
    return [f"{prefix}{i:03d}USDT" for i in range(n)]


def abort_on_load(folder: Path) -> None:
    """Cut the first tree's thresholds to one value, the manifest updated to match: size and sha256 pass, the file
    still looks complete, and LightGBM aborts the process that predicts with it (SIGABRT: checked below)."""
    art = folder / "model.txt"
    art.write_text(re.sub(r"threshold=[^\n]*", "threshold=1", art.read_text(), count=1))
    m = read_manifest(folder)
    m.artifact = artifact_info(art)
    write_manifest(folder, m)


def truncate(folder: Path) -> None:
    """Half the model file, the manifest updated to match: only a load can tell."""
    art = folder / "model.txt"
    text = art.read_text()
    art.write_text(text[: len(text) // 2])
    m = read_manifest(folder)
    m.artifact = artifact_info(art)
    write_manifest(folder, m)


def tamper(folder: Path) -> None:
    """One leaf value edited after publication, the manifest left as it was: the sha256 no longer matches."""
    art = folder / "model.txt"
    text = art.read_text()
    at = text.index("leaf_value=") + len("leaf_value=")
    art.write_text(text[:at] + ("9" if text[at] != "9" else "8") + text[at + 1 :])


@pytest.fixture
def many(home_copy: Path) -> tuple[Registry, list[str]]:
    """trained_home's real model plus 7 copies of it under other markets' names, every one live."""
    reg = Registry(home_copy / "models")
    names = publish_copies(reg, reg.current_path(SOURCE), symbols(7))
    return reg, [SOURCE, *names]


def folders_of(reg: Registry, names: list[str]) -> list[Path]:
    return [reg.current_path(n) for n in names]


def test_the_crashing_file_really_kills_a_process_that_loads_it(many: tuple[Registry, list[str]]) -> None:
    """The premise of the tests below: loading this bundle in-process would take the server down."""
    reg, names = many
    folder = reg.current_path(names[1])
    abort_on_load(folder)
    code = f"from xylen.core.bundle import load_bundle; load_bundle({str(folder)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=False)
    assert proc.returncode < 0, proc.stderr[-500:]


@pytest.mark.parametrize("children", [1, 2])
def test_one_child_batch_names_the_culprit_and_verifies_the_rest(many: tuple[Registry, list[str]],
                                                                 children: int) -> None:
    reg, names = many
    folders = folders_of(reg, names)
    abort_on_load(folders[2])
    truncate(folders[5])
    tamper(folders[6])
    got = verify_many_in_children(folders, children=children)

    assert list(got) == folders
    assert "killed the verifier with signal" in (got[folders[2]].reason or "")
    assert str(folders[2]) in (got[folders[2]].reason or "")
    assert "not a complete LightGBM text model" in (got[folders[5]].reason or "")
    assert "sha256" in (got[folders[6]].reason or "") and "manifest says" in (got[folders[6]].reason or "")
    good = [f for i, f in enumerate(folders) if i not in (2, 5, 6)]
    for f in good:  # the ones after the crash too: a fresh child took them over
        assert got[f].reason is None, got[f]
        assert got[f].manifest_sha256 == hashlib.sha256((f / "manifest.json").read_bytes()).hexdigest()


def test_the_batch_child_reproduces_the_golden_predictions(many: tuple[Registry, list[str]]) -> None:
    """A manifest whose golden outputs the model does not reproduce (sha256 and size intact) is refused."""
    reg, names = many
    folders = folders_of(reg, names[:3])
    m = read_manifest(folders[1])
    m.golden.outputs[0] += 0.1
    write_manifest(folders[1], m)
    got = verify_many_in_children(folders)
    assert "golden predictions differ" in (got[folders[1]].reason or "")
    assert got[folders[0]].reason is None and got[folders[2]].reason is None


def test_two_crashes_in_one_child_cost_one_bundle_each(many: tuple[Registry, list[str]]) -> None:
    reg, names = many
    folders = folders_of(reg, names)
    abort_on_load(folders[0])
    abort_on_load(folders[-1])
    got = verify_many_in_children(folders, children=1)
    assert [f for f in folders if got[f].reason is not None] == [folders[0], folders[-1]]


@pytest.mark.parametrize(("cores", "children"), [(1, 1), (2, 2), (16, 4)])
def test_a_batch_is_split_over_one_child_per_core_at_most_four(many: tuple[Registry, list[str]],
                                                               monkeypatch: pytest.MonkeyPatch, cores: int,
                                                               children: int) -> None:
    import xylen.core.verify as verify

    reg, names = many
    started: list[list[Path]] = []
    real = verify._many_child

    def counted(folders, timeout):  # type: ignore[no-untyped-def]
        started.append(list(folders))
        return real(folders, timeout)

    monkeypatch.setattr("xylen.core.cgroup.usable_cores", lambda limits=None: cores)
    monkeypatch.setattr(verify, "_many_child", counted)
    folders = folders_of(reg, names)
    got = verify_many_in_children(folders)
    assert len(started) == children and sorted(f for part in started for f in part) == sorted(folders)
    assert all(v.reason is None for v in got.values())


def test_a_batch_of_nothing_starts_no_child() -> None:
    assert verify_many_in_children([]) == {}


def test_a_child_that_hangs_is_refused_by_the_timeout(many: tuple[Registry, list[str]], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that never answers (here: one that sleeps after announcing the first folder) is killed after the
    timeout, its folder refused with the time, and the others are not verified by a hung process forever."""
    reg, names = many
    script = tmp_path / "hang.py"
    script.write_text("import sys, time\nsys.stdin.read()\nprint('start 0', flush=True)\ntime.sleep(600)\n")
    monkeypatch.setattr("xylen.core.verify.MANY_CHILD", (sys.executable, str(script)))
    folders = folders_of(reg, names[:1])
    got = verify_many_in_children(folders, timeout=2)
    assert "took longer than 2 s" in (got[folders[0]].reason or "")


def test_a_child_that_dies_before_any_bundle_refuses_the_batch_with_its_reason(
        many: tuple[Registry, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    reg, names = many
    monkeypatch.setattr("xylen.core.verify.MANY_CHILD",
                        (sys.executable, "-c", "import sys; print('no xylen here', file=sys.stderr); sys.exit(3)"))
    folders = folders_of(reg, names[:3])
    got = verify_many_in_children(folders, children=1)
    assert all("exited with code 3" in (v.reason or "") and "no xylen here" in (v.reason or "")
               for v in got.values())


@pytest.mark.parametrize("stdin", [b"nope", b'{"a": 1}', b'[1, 2]', b""])
def test_the_many_child_refuses_bad_input_with_exit_2(stdin: bytes) -> None:
    proc = subprocess.run([*MANY_CHILD], input=stdin, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert b"JSON list of bundle folders" in proc.stderr and b"Traceback" not in proc.stderr


# -- the holder -------------------------------------------------------------------------------------------------
class Recorder(SwapEvents):
    def __init__(self) -> None:
        self.accepted_names: list[str] = []
        self.refusals: list[tuple[str, str, str]] = []
        super().__init__(accepted=lambda live: self.accepted_names.append(live.name),
                         refused=lambda n, v, r: self.refusals.append((n, v, r)))


def spy(calls: list[list[Path]]):  # type: ignore[no-untyped-def]
    def verify_many(folders):  # type: ignore[no-untyped-def]
        calls.append(list(folders))
        return verify_many_in_children(folders)
    return verify_many


def test_start_up_verifies_every_model_in_one_batch_and_refuses_only_the_bad_ones(
        many: tuple[Registry, list[str]], caplog: pytest.LogCaptureFixture) -> None:
    reg, names = many
    folders = folders_of(reg, names)
    abort_on_load(folders[1])
    tamper(folders[3])
    calls: list[list[Path]] = []
    events = Recorder()
    holder = ModelHolder(reg, verify_many=spy(calls), events=events)
    with caplog.at_level("INFO", logger="xylen.serve"):
        holder.load_all()

    assert len(calls) == 1 and sorted(calls[0]) == sorted(folders)
    said = [r.getMessage() for r in caplog.records]
    for i, n in enumerate(names):  # one log line each: served, or refused with the reason
        mine = [line for line in said if line.startswith((f"{n}: now serving", f"refused {n} "))]
        assert len(mine) == 1 and mine[0].startswith("refused" if i in (1, 3) else n), (n, mine)
    good = [n for i, n in enumerate(names) if i not in (1, 3)]
    assert sorted(holder.live) == sorted(good) == sorted(events.accepted_names)
    assert {n for n, _, _ in events.refusals} == {names[1], names[3]}
    assert "killed the verifier with signal" in holder.problems[names[1]]
    assert "sha256" in holder.problems[names[3]]
    for n in good:
        live = holder.live[n]
        assert 0 <= live.predict_row(np.zeros(live.bundle.num_feature())) <= 1
    # a refused model is named by readiness, as a single one always was
    assert names[1] in (holder.not_ready_reason() or "")


def test_the_default_verifier_is_the_batch_one() -> None:
    assert ModelHolder(None).verify_many is verify_many_in_children
    assert ModelHolder(None, verify=lambda p: None).verify_many is None  # an injected one-folder check is kept


def test_a_poll_batches_every_changed_pointer_and_keeps_the_old_version_of_a_refused_one(
        many: tuple[Registry, list[str]]) -> None:
    reg, names = many
    calls: list[list[Path]] = []
    holder = ModelHolder(reg, verify_many=spy(calls))
    holder.load_all()
    assert len(holder.live) == len(names)
    calls.clear()
    reads: list[str] = []
    current = reg.current
    reg.current = lambda name: reads.append(name) or current(name)  # type: ignore[method-assign]
    holder.poll()
    assert calls == [] and reads == []  # nothing changed: no child, not one pointer read
    stats: list[str] = []
    real_stat = os.stat
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "stat", lambda path, *a, **k: stats.append(str(path)) or real_stat(path, *a, **k))
        holder.poll()
    assert len(stats) == 2 * len(names) and all(s.endswith(POINTER) for s in stats)  # README: two stats a model

    v2 = [publish_copies(reg, reg.current_path(SOURCE), [s])[0] for s in ("C000USDT", "C001USDT", "C002USDT")]
    abort_on_load(reg.current_path(v2[1]))  # the new v0002 of c001usdt-5m crashes a loader
    holder.poll()
    assert len(calls) == 1 and len(calls[0]) == 3
    assert holder.live[v2[0]].version == "v0002" and holder.live[v2[2]].version == "v0002"
    assert holder.live[v2[1]].version == "v0001"  # refused: the old version keeps serving
    assert v2[1] not in holder.problems  # it still has a live version: nothing is missing


def test_a_bundle_changed_after_its_child_verified_it_is_refused_never_loaded(
        many: tuple[Registry, list[str]]) -> None:
    """The server loads the bytes its child verified or nothing: a bundle rewritten between the child's answer
    and the server's load (here: another model's trees, with a manifest consistent with them) is refused."""
    reg, names = many
    other = build_bundle(reg, "ethusdt-5m", rounds=3, rows=800, seed=1)
    swapped_in = reg.path("ethusdt-5m", other)

    def verify_then_rewrite(folders):  # type: ignore[no-untyped-def]
        got = verify_many_in_children(folders)
        target = reg.current_path(names[4])
        (target / "model.txt").write_bytes((swapped_in / "model.txt").read_bytes())
        m = read_manifest(swapped_in)
        m.name, m.version = names[4], target.name
        write_manifest(target, m)
        return got

    events = Recorder()
    holder = ModelHolder(reg, verify_many=verify_then_rewrite, events=events)
    holder.load_all()
    assert names[4] not in holder.live
    assert "changed after it was verified" in holder.problems[names[4]]
    assert len(holder.live) == len(names)  # every other one, and ethusdt-5m


def test_a_model_file_replaced_between_its_hash_and_its_parse_is_refused(many: tuple[Registry, list[str]]) -> None:
    """LightGBM parses the very bytes it hashed: a manifest's sha256 that the file no longer has is refused even
    when the size still matches (the read that hashes is the read that parses)."""
    from xylen.core.backends.lightgbm import LightGBMPredictor

    reg, names = many
    art = reg.current_path(names[0]) / "model.txt"
    with pytest.raises(BundleError, match="changed while it was loaded"):
        LightGBMPredictor(art, sha256="0" * 64)
    assert LightGBMPredictor(art, sha256=hashlib.sha256(art.read_bytes()).hexdigest()).num_feature() > 0


def test_a_manifest_digest_that_does_not_match_is_refused_before_any_artifact_is_read(
        many: tuple[Registry, list[str]]) -> None:
    reg, names = many
    folder = reg.current_path(names[0])
    (folder / "model.txt").write_text("tree\nnot a model, and loading it would fail loudly\nend of trees\n")
    with pytest.raises(BundleError, match="changed after it was verified"):
        load_bundle(folder, manifest_sha256="0" * 64)


def test_live_names_lists_exactly_the_models_with_a_pointer(many: tuple[Registry, list[str]]) -> None:
    """The cheap listing a poll makes (one scandir, one stat each) names what names() + a pointer check did."""
    reg, names = many
    build_bundle(reg, "never-promoted-5m", rounds=2, rows=800, promote=False)
    (reg.root / "Not-A-Name").mkdir()
    (reg.root / "Not-A-Name" / POINTER).write_text("{}")
    (reg.root / "a-file").write_text("x")
    os.symlink(reg.root / names[1], reg.root / "linked-5m")
    os.remove(reg.root / names[2] / POINTER)
    want = [n for n in reg.names() if (reg.root / n / POINTER).exists()]
    assert reg.live_names() == want
    assert names[2] not in want and "never-promoted-5m" not in want and "linked-5m" in want
    assert Registry(reg.root / "missing").live_names() == []


def test_a_swap_of_one_model_still_leaves_requests_their_dict(many: tuple[Registry, list[str]]) -> None:
    """The per-model swap contract with a batch: the live dict is replaced, never mutated."""
    reg, names = many
    holder = ModelHolder(reg)
    holder.load_all()
    before = holder.live
    snapshot = dict(before)
    publish_copies(reg, reg.current_path(SOURCE), ["C003USDT"])
    holder.poll()
    assert before == snapshot and holder.live is not before
    assert holder.live["c003usdt-5m"].version == "v0002" and before["c003usdt-5m"].version == "v0001"


def test_verdicts_carry_no_digest_from_a_one_folder_verifier(many: tuple[Registry, list[str]]) -> None:
    """An injected one-folder verifier (tests, MODEL_PATH) says nothing about the bytes: the server then loads with
    the golden check, as before."""
    reg, names = many
    seen: list[Path] = []

    def verify(folder: Path) -> str | None:
        seen.append(folder)
        return None

    holder = ModelHolder(reg, verify=verify)
    holder.load_all()
    assert sorted(seen) == sorted(folders_of(reg, names)) and len(holder.live) == len(names)
    assert Verdict(None).manifest_sha256 is None


def test_pointer_naming_another_sha_than_its_bundle_is_refused(many: tuple[Registry, list[str]]) -> None:
    reg, names = many
    point(reg, names[5], reg.current_path(names[5]).name)
    ptr_file = reg.root / names[5] / POINTER
    ptr_file.write_bytes(ptr_file.read_bytes().replace(b'"sha256": "', b'"sha256": "f00d', 1))
    holder = ModelHolder(reg)
    holder.load_all()
    assert names[5] not in holder.live and "CURRENT.json names sha256" in holder.problems[names[5]]
    assert len(holder.live) == len(names) - 1
