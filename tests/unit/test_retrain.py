"""`xylen retrain`, once: the gate's decisions, warm starts, what it refuses, and its exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from tests.builders import build_bundle
from tests.helpers import BTC_1H, retrain_home, train_small
from xylen.cli import app
from xylen.core import labels
from xylen.core.candles import read_candles
from xylen.core.registry import Registry
from xylen.core.runlock import RunLock
from xylen.core.settings import Settings, load_settings
from xylen.core.store import Store
from xylen.train import gate
from xylen.train.dataset import build
from xylen.train.retrain import RetrainOptions, retrain

pytestmark = pytest.mark.unit
runner = CliRunner()
NAME = "btcusdt-1h"
ENV = {"XYLEN_RETRAIN_HOLDOUT": "500"}


@pytest.fixture(scope="module")
def base_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("retrain") / "home"
    retrain_home(home, new_rows=1200)
    return home


@pytest.fixture
def home(base_home: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(base_home, copy)
    return copy


def settings(home: Path, **kw: Any) -> Settings:
    return load_settings({"home": home, "retrain_holdout": 500, **kw}, environ={})


def cli(home: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, ["--home", str(home), "retrain", *args], env=ENV | (env or {}))


def as_json(result: Any) -> dict[str, Any]:
    return orjson.loads(result.stdout)  # type: ignore[no-any-return]


def live(home: Path) -> str | None:
    ptr = Registry(home / "models").current(NAME)
    return ptr.version if ptr else None


def test_promotes_a_candidate_that_passes_the_gate_and_records_the_gate_in_its_manifest(home: Path) -> None:
    r = cli(home, "--json")
    assert r.exit_code == 0, r.output
    body = as_json(r)
    assert body["status"] == "success" and body["samples_used"] > 1000 and isinstance(body["message"], str)
    (res,) = body["results"]
    assert res["outcome"] == "promoted" and res["live_version"] == "v0001" and res["candidate_version"] == "v0002"
    assert live(home) == "v0002"
    from xylen.train import watch

    # after the run, the live model's watch record is written and reported
    assert res["watch"] is not None and res["watch"] == watch.read(Registry(home / "models"), NAME)
    assert res["watch"]["version"] == "v0002"
    m = Registry(home / "models").manifest(NAME, "v0002")
    g = m.model_extra["gate"]
    assert g["decision"] == "promote" and g["metric"] == "logloss"
    assert g["candidate"]["logloss"] <= g["live"]["logloss"] + g["tolerance"]
    lo, hi = g["interval"]
    assert lo <= g["difference"] <= hi and g["holdout"]["days"] >= 20
    assert g["holdout"]["rows"] >= 500 and g["holdout"]["purged"] == 6
    # the candidate never trained on the holdout, nor on labels reaching into it
    assert m.training_window.last_open_time < g["holdout"]["first_open_time"] - 6 * 3_600_000 + 1
    assert m.feature_set == Registry(home / "models").manifest(NAME, "v0001").feature_set
    assert m.label == Registry(home / "models").manifest(NAME, "v0001").label


def test_a_planted_worse_candidate_trained_on_shuffled_labels_is_refused(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_train = lightgbm.train

    def shuffled(params: dict[str, Any], data: lightgbm.Dataset, *a: Any, **kw: Any) -> Any:
        y = np.asarray(data.get_label()).copy()
        np.random.default_rng(0).shuffle(y)
        data.set_label(y)
        return real_train(params, data, *a, **kw)

    monkeypatch.setattr(lightgbm, "train", shuffled)
    report = retrain(settings(home), RetrainOptions())
    (res,) = report.results
    assert res.outcome == "kept", res.message
    assert live(home) == "v0001"
    assert res.candidate_version == "v0002" and "refused" in res.message
    g = Registry(home / "models").manifest(NAME, "v0002").model_extra["gate"]
    assert g["decision"] == "keep" and g["difference"] > g["tolerance"]
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 10


def test_a_candidate_trained_on_the_same_data_as_live_is_promoted(tmp_path: Path) -> None:
    """The live model is fitted (by `xylen train`, same parameters) on exactly the rows the candidate will fit on:
    the two models are the same, their difference is 0 and the tolerance lets it through."""
    home = tmp_path / "home"
    frame = read_candles(BTC_1H).frame
    ds = build(frame, "1h", labels.LabelSpec())
    rows = ds.rows
    holdout0 = int(gate.split(rows, 6, gate.holdout_size(len(rows), 500)).holdout[0])
    old = tmp_path / "old.parquet"
    frame.head(holdout0).write_parquet(old)  # the live model's labels end where the candidate's purge begins
    result = train_small(home, old, symbol="BTCUSDT", interval="1h")
    Store(home / "data").append("BTCUSDT", "1h", frame)
    (res,) = retrain(settings(home), RetrainOptions()).results
    assert res.outcome == "promoted", res.message
    assert res.gate is not None and res.gate["difference"] == pytest.approx(0.0, abs=1e-9)
    assert res.samples_used == result.rows_used


def test_nothing_new_below_min_new_samples_and_after_a_run(home: Path) -> None:
    r = cli(home, "--min-new-samples", "5000", "--json")
    assert r.exit_code == 0 and as_json(r)["results"][0]["outcome"] == "nothing_new"
    assert "1200 of 5000" in as_json(r)["results"][0]["message"]
    assert cli(home, "--strict-exit", "--min-new-samples", "5000").exit_code == 11
    assert cli(home).exit_code == 0 and live(home) == "v0002"
    # the run that made v0002 read every candle there is: a second run has nothing new, publishes nothing
    r = cli(home, "--json", "--min-new-samples", "1")
    assert as_json(r)["results"][0]["outcome"] == "nothing_new"
    assert Registry(home / "models").versions(NAME) == ["v0001", "v0002"]


def test_waits_while_the_live_model_trained_on_part_of_the_holdout(tmp_path: Path) -> None:
    home = tmp_path / "home"
    retrain_home(home, new_rows=300)
    r = cli(home, "--json")
    assert r.exit_code == 0
    res = as_json(r)["results"][0]
    assert res["outcome"] == "nothing_new" and "fair gate needs about" in res["message"]
    assert live(home) == "v0001" and Registry(home / "models").versions(NAME) == ["v0001"]


def test_a_kept_candidate_is_not_made_again_until_new_candles_arrive(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings(home, retrain_tolerance=0.0)
    report = retrain(s, RetrainOptions(min_new_samples=1, before_promote=None))
    assert report.results[0].outcome in ("promoted", "kept")
    first = report.results[0]
    again = retrain(s, RetrainOptions(min_new_samples=1)).results[0]
    assert again.outcome == "nothing_new", again.message
    if first.outcome == "kept":
        assert f"candidate {first.candidate_version} was refused" in again.message


def test_warm_start_continues_the_live_model_and_a_full_refit_is_forced_after_the_limit(home: Path) -> None:
    s = settings(home, retrain_max_warm_starts=1, retrain_tolerance=0.5)
    first = retrain(s, RetrainOptions(mode="warm")).results[0]
    assert first.outcome == "promoted" and first.mode == "warm", first.message
    reg = Registry(home / "models")
    parent = lightgbm.Booster(model_file=str(reg.path(NAME, "v0001") / "model.txt"))
    child = lightgbm.Booster(model_file=str(reg.path(NAME, "v0002") / "model.txt"))
    assert child.num_trees() == parent.num_trees() + s.retrain_warm_rounds
    info = reg.manifest(NAME, "v0002").model_extra["retrain"]
    assert info["mode"] == "warm" and info["warm_starts_in_row"] == 1 and info["parent"] == "v0001"
    # new candles: the holdout moves on; the next warm start is refused by the limit and becomes a full refit
    frame = read_candles(BTC_1H).frame
    step = 3_600_000
    last = frame.tail(1)
    more = [last.with_columns(open_time=last["open_time"] + step * (i + 1)) for i in range(150)]
    import polars as pl

    Store(home / "data").append("BTCUSDT", "1h", pl.concat(more))
    second = retrain(s, RetrainOptions(mode="warm", min_new_samples=100)).results[0]
    assert second.mode == "full" and "full refit forced" in second.message, second.message


def test_an_imported_model_is_skipped_under_all_and_refused_by_name(home: Path) -> None:
    model = Path(__file__).parents[1] / "data" / "models" / "TobiasSaile_ai-trading-bot__lightgbm_model.txt"
    imported = runner.invoke(
        app,
        ["--home", str(home), "models", "import", str(model), "--backend", "lightgbm", "--name", "tobias", "--promote"],
    )
    assert imported.exit_code == 0, imported.output
    body = as_json(cli(home, "--all", "--json"))
    outcomes = {r["name"]: r for r in body["results"]}
    assert outcomes["tobias"]["outcome"] == "skipped" and "imported lightgbm model" in outcomes["tobias"]["message"]
    assert outcomes[NAME]["outcome"] == "promoted"
    assert body["exit_code"] == 0
    r = cli(home, "tobias")
    assert r.exit_code == 4 and "imported lightgbm model" in r.output


@pytest.mark.parametrize(
    ("args", "env", "code", "words"),
    [
        (["nosuch"], {}, 4, "No model named 'nosuch'"),
        (["--all", NAME], {}, 2, "--all"),
        (["--min-new-samples", "0"], {}, 2, "--min-new-samples 0"),
        (["--loop", "--interval", "soon"], {}, 2, "soon"),
        (["--interval", "60"], {}, 2, "--interval 60 only applies to --loop"),
        (["--loop"], {"TRAINING_INTERVAL": "-5"}, 2, "TRAINING_INTERVAL"),
        (["--loop"], {"TRAINING_INTERVAL": "0"}, 2, "TRAINING_INTERVAL"),
    ],
)
def test_bad_options_exit_with_a_message_and_change_nothing(
    home: Path, args: list[str], env: dict[str, str], code: int, words: str
) -> None:
    r = cli(home, *args, env=env)
    assert r.exit_code == code, r.output
    assert words in r.output and "Traceback" not in r.output
    assert live(home) == "v0001" and Registry(home / "models").versions(NAME) == ["v0001"]


@pytest.mark.parametrize(
    ("args", "env", "code", "words"),
    [
        (["--min-new-samples", "0"], {}, 2, "--min-new-samples 0"),
        ([], {"XYLEN_RETRAIN_HOLDOUT": "50"}, 2, "XYLEN_RETRAIN_HOLDOUT"),
        (["--all", NAME], {}, 2, "--all"),
        (["nosuch"], {}, 4, "nosuch"),
        (["--loop", "--interval", "soon"], {}, 2, "soon"),
        (["--interval", "60"], {}, 2, "--interval 60 only applies to --loop"),
    ],
)
def test_with_json_a_run_that_cannot_start_prints_one_json_object(
    home: Path, args: list[str], env: dict[str, str], code: int, words: str
) -> None:
    r = runner.invoke(app, ["--home", str(home), "retrain", "--json", *args], env=ENV | env)
    assert r.exit_code == code, r.output
    body = orjson.loads(r.stdout)
    assert body["status"] == "error" and body["exit_code"] == code and body["samples_used"] == 0
    assert words in body["message"] and "hint" in body["error"] and body["results"] == []
    assert "--training-interval" not in body["message"]  # the option is --interval


def test_no_data_in_the_store_is_a_data_error(home: Path) -> None:
    shutil.rmtree(home / "data")
    r = cli(home, "--json")
    assert r.exit_code == 3
    res = as_json(r)["results"][0]
    assert res["outcome"] == "error" and "No BTCUSDT 1h candles in the store" in res["error"]["message"]
    assert "xylen collect" in res["error"]["hint"] and live(home) == "v0001"


def test_a_series_too_short_for_the_holdout_is_a_data_error(home: Path) -> None:
    r = cli(home, env={"XYLEN_RETRAIN_HOLDOUT": "5500"})
    assert r.exit_code == 3 and "too few for a 5500-candle holdout" in r.output
    assert "XYLEN_RETRAIN_HOLDOUT" in r.output and live(home) == "v0001"


def test_a_corrupt_live_bundle_is_replaced_by_a_verified_candidate_and_the_exit_says_so(home: Path) -> None:
    reg = Registry(home / "models")
    art = reg.path(NAME, "v0001") / "model.txt"
    os.chmod(art, 0o644)
    art.write_bytes(art.read_bytes()[:-200])
    r = cli(home, "--json")
    res = as_json(r)["results"][0]
    assert r.exit_code == 4, r.output
    assert res["outcome"] == "promoted" and live(home) == "v0002"
    assert "v0001 was unreadable" in res["error"]["message"] and "without a comparison" in res["error"]["message"]
    assert res["gate"]["compared_with"] == "base_rate"


def test_an_unreadable_live_manifest_changes_nothing(home: Path) -> None:
    (Registry(home / "models").path(NAME, "v0001") / "manifest.json").write_text("{not json")
    r = cli(home)
    assert r.exit_code == 4 and "manifest.json" in r.output
    assert Registry(home / "models").versions(NAME) == ["v0001"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_an_unwritable_home_is_a_config_error(home: Path) -> None:  # pragma: no cover - CI runs as root
    os.chmod(home, 0o500)
    try:
        assert cli(home).exit_code == 2
    finally:
        os.chmod(home, 0o700)


def test_a_home_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "home"
    f.write_text("x")
    r = runner.invoke(app, ["--home", str(f), "retrain", "--all"])
    assert r.exit_code == 2 and "Cannot write to" in r.output and "Traceback" not in r.output


def test_a_home_where_nothing_can_be_written_is_a_config_error_and_changes_nothing(home: Path) -> None:
    (home / "locks").mkdir(exist_ok=True)
    shutil.rmtree(home / "locks")
    (home / "locks").write_text("a file where xylen keeps its locks")  # as root, the one way to refuse a write
    r = cli(home, "--json")
    assert r.exit_code == 2
    assert "Cannot write to" in as_json(r)["message"] and "XYLEN_HOME" in as_json(r)["error"]["hint"]
    assert live(home) == "v0001" and Registry(home / "models").versions(NAME) == ["v0001"]


def test_busy_when_another_process_holds_the_retrain_lock(home: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from xylen.core.runlock import RunLock; "
            "l = RunLock(Path(sys.argv[1])); assert l.try_acquire(by='test', job_id='job-42'); "
            "print('held', flush=True); time.sleep(60)",
            str(home),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        r = cli(home, "--json")
        assert r.exit_code == 0
        res = as_json(r)["results"][0]
        assert res["outcome"] == "busy" and "job job-42" in res["message"]
        assert cli(home, "--strict-exit").exit_code == 12
    finally:
        holder.kill()
        holder.wait()
    assert RunLock(home).holder() is None  # released by the kernel when its holder died
    assert cli(home).exit_code == 0 and live(home) == "v0002"


def test_a_promotion_made_meanwhile_wins_and_the_run_reports_the_conflict(home: Path) -> None:
    reg = Registry(home / "models")
    other = {}

    def someone_promotes(name: str, version: str) -> None:
        other["v"] = build_bundle(reg, name, rounds=3, rows=500, promote=True)

    (res,) = retrain(settings(home), RetrainOptions(before_promote=someone_promotes)).results
    assert res.outcome == "conflict" and other["v"] in res.message
    ptr = reg.current(NAME)
    assert ptr is not None and ptr.version == other["v"] and ptr.history[0] == "v0001"


def test_a_sigterm_aborts_a_run_cleanly_with_exit_130(home: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "xylen", "--home", str(home), "retrain", "--json"],
        env=os.environ | ENV | {"XYLEN_DEBUG": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # wait until it holds the lock (it is working), then stop it
    from tests.conftest import wait_for

    wait_for(lambda: RunLock(home).holder() is not None or proc.poll() is not None, what="the run to start")
    proc.terminate()
    out, _err = proc.communicate(timeout=60)
    if proc.returncode == 130:
        assert orjson.loads(out)["exit_code"] == 130
    else:  # it finished before the signal arrived
        assert proc.returncode == 0
    assert not any((home / "models" / ".tmp").glob("*")) if (home / "models" / ".tmp").exists() else True
    ptr = Registry(home / "models").current(NAME)
    assert ptr is not None
    Registry(home / "models").verify(NAME, ptr.version)


@pytest.mark.parametrize("during", ["promotion", "watch"])
def test_a_sigterm_after_the_promotion_reports_the_promotion_with_exit_130(
    home: Path, monkeypatch: pytest.MonkeyPatch, during: str
) -> None:
    """The promotion happened: the output must say so, not only that the run was aborted (a server's job record
    and the loop's log line are made from it)."""
    import signal

    from xylen.train import watch

    def sigterm() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at the next bytecode, in this function

    if during == "promotion":
        real = Registry.promote

        def promote(self: Registry, *a: Any, **kw: Any) -> Any:
            done = real(self, *a, **kw)
            sigterm()
            return done

        monkeypatch.setattr(Registry, "promote", promote)
    else:
        monkeypatch.setattr(watch, "record", lambda *a, **kw: sigterm())
    r = cli(home, "--json")
    assert r.exit_code == 130, r.output
    body = as_json(r)
    assert body["exit_code"] == 130 and body["status"] == "error"
    (res,) = body["results"]
    assert res["outcome"] == "promoted" and res["candidate_version"] == "v0002" and live(home) == "v0002"
    assert body["message"].startswith(f"{NAME}: promoted v0002") and "SIGTERM" in body["message"]
    assert body["samples_used"] == res["samples_used"] > 1000
    assert RunLock(home).holder() is None
    monkeypatch.undo()
    human = cli(home, env={"XYLEN_RETRAIN_MIN_NEW_SAMPLES": "1"})  # no SIGTERM held over: a normal run
    assert human.exit_code == 0 and "nothing new" in human.output


def test_a_warm_start_scores_the_same_holdout_as_features_of_the_whole_window_would(home: Path) -> None:
    """A warm start computes features only for the newest rows; its gate must equal one computed on every row."""
    s = settings(home, retrain_tolerance=0.5)
    (res,) = retrain(s, RetrainOptions(mode="warm")).results
    assert res.outcome == "promoted" and res.gate is not None
    reg = Registry(home / "models")
    frame = Store(home / "data").read("BTCUSDT", "1h")
    ds = build(frame, "1h", labels.LabelSpec())
    hold = gate.split(ds.rows, 6, gate.holdout_size(len(ds.rows), 500)).holdout
    cand = lightgbm.Booster(model_file=str(reg.path(NAME, "v0002") / "model.txt"))
    p = cand.predict(ds.X[hold])
    from xylen.train import metrics

    assert res.gate["holdout"]["first_open_time"] == ds.open_time[hold[0]]
    assert res.gate["candidate"]["logloss"] == pytest.approx(metrics.logloss(ds.y[hold], p), abs=1e-12)


def test_lightgbm_is_imported_without_scikit_learn_and_sklearn_still_imports_afterwards() -> None:
    code = (
        "import sys; from xylen.core.imports import import_lightgbm; lgb = import_lightgbm(); "
        "assert 'sklearn' not in sys.modules and 'pandas' not in sys.modules, sorted(sys.modules); "
        "assert lgb.Booster; import sklearn; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_models_show_prints_how_a_retrained_version_was_made_and_its_gate(home: Path) -> None:
    assert cli(home).exit_code == 0
    shown = runner.invoke(app, ["--home", str(home), "models", "show", NAME, "v0002"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert "retrained from v0001 (full); gate: promote: candidate log-loss" in shown.output
    assert "day-block interval" in shown.output


def test_after_a_promotion_retention_prunes_old_versions_but_never_the_rollback_target(home: Path) -> None:
    reg = Registry(home / "models")
    extra = [build_bundle(reg, NAME, rounds=3, rows=500, promote=False) for _ in range(3)]
    assert extra == ["v0002", "v0003", "v0004"]
    (res,) = retrain(settings(home, keep_versions=1), RetrainOptions()).results
    assert res.outcome == "promoted" and res.candidate_version == "v0005", res.message
    assert res.pruned == extra
    assert reg.versions(NAME) == ["v0001", "v0005"]  # live, and v0001: the rollback target
    assert reg.rollback(NAME).version == "v0001"


def test_exit_codes_of_several_models_the_most_severe_error_wins_then_the_highest_strict_code() -> None:
    from xylen.train.retrain import ModelResult, RunReport

    def r(outcome: str, code: int = 0) -> ModelResult:
        err = {"exit_code": code, "message": "x", "hint": None} if code else None
        return ModelResult("m", outcome, "x", error=err)  # type: ignore[arg-type]

    assert RunReport([r("kept"), r("nothing_new"), r("promoted")]).exit_code() == 0
    assert RunReport([r("kept"), r("nothing_new"), r("promoted")]).exit_code(strict=True) == 11
    assert RunReport([r("busy"), r("kept")]).exit_code(strict=True) == 12
    assert RunReport([r("promoted")]).exit_code(strict=True) == 0
    assert RunReport([r("error", 2), r("error", 3), r("kept")]).exit_code(strict=True) == 3
    assert RunReport([r("error", 5), r("error", 4)]).exit_code() == 4
    assert RunReport([r("error", 4), r("error", 1)]).exit_code() == 1


def test_a_model_path_outside_the_registry_is_skipped_with_the_reason(home: Path, tmp_path: Path) -> None:
    bare = Path(__file__).parents[1] / "data" / "models" / "TobiasSaile_ai-trading-bot__lightgbm_model.txt"
    body = as_json(cli(home, "--all", "--json", env={"MODEL_PATH": str(bare)}))
    outcomes = {r["name"]: r for r in body["results"]}
    assert outcomes[bare.name]["outcome"] == "skipped" and "outside the registry" in outcomes[bare.name]["message"]
    assert outcomes[NAME]["outcome"] == "promoted" and body["exit_code"] == 0
    # with nothing in the registry, the skip is the whole answer (exit 0: nothing went wrong)
    empty = tmp_path / "empty"
    r = cli(empty, "--json", env={"MODEL_PATH": str(bare)})
    assert r.exit_code == 0 and [x["outcome"] for x in as_json(r)["results"]] == ["skipped"]
    # a version folder of the registry as MODEL_PATH is a registry model: nothing extra is reported
    inside = str(Registry(home / "models").path(NAME, "v0002"))
    names = [x["name"] for x in as_json(cli(home, "--all", "--json", env={"MODEL_PATH": inside}))["results"]]
    assert names == [NAME]
