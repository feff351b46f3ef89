"""`xylen train --cluster ADDR --distributed`: one model over a Dask LocalCluster on loopback with lightgbm.dask, on
real candles (BTCUSDT 1h, tests/data) in the store (month files and tails)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.helpers import BTC_1H
from tests.integration.test_train_cluster import FAST, cluster, xylen  # noqa: F401 -- cluster: the fixture
from xylen.core.candles import read_candles
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.core.store import Store

distributed = pytest.importorskip("distributed")
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def fill(home: Path) -> Path:
    """BTCUSDT 1h in the store: month files, and the last 40 candles as two small appends (tail files)."""
    df = read_candles(BTC_1H).frame
    store = Store(home / "data")
    store.append("BTCUSDT", "1h", df.head(df.height - 40))
    store.append("BTCUSDT", "1h", df.slice(df.height - 40, 20))
    store.append("BTCUSDT", "1h", df.tail(20))
    assert any(p.name.startswith("tail-") for p in store.files("BTCUSDT", "1h"))
    return home


class GatherSpy:
    """Counts what this machine receives through client.gather: the feature rows (2-D arrays as wide as the
    feature set) and the narrow blocks (which must carry no features)."""

    def __init__(self, client, width: int) -> None:
        self.gather, self.width, self.feature_rows, self.blocks = client.gather, width, 0, 0
        client.gather = self

    def __call__(self, futures, *args, **kwargs):
        got = self.gather(futures, *args, **kwargs)
        self.count(got)
        return got

    def count(self, x) -> None:
        from xylen.train.distributed import Block

        if isinstance(x, Block):
            assert x.X is None, "a block came back with its features"
            self.blocks += 1
        elif isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == self.width:
            self.feature_rows += len(x)
        elif isinstance(x, list | tuple):
            for v in x:
                self.count(v)
        elif isinstance(x, dict):
            for v in x.values():
                self.count(v)


def settings_of(home: Path, **extra: object):
    return load_settings({"home": home, "folds": 2, "profile": "8gb", "lgbm_num_threads": 1} | extra, environ={})


def gapped(home: Path) -> Path:
    """BTCUSDT 1h with a gap across the February/March boundary and one inside April (real candles, some left out)."""
    import polars as pl

    df = read_candles(BTC_1H).frame
    t = pl.col("open_time")
    feb_end, apr = 1709251200000, 1712707200000  # 2024-03-01 00:00 and 2024-04-10 00:00 UTC
    keep = ~(t.is_between(feb_end - 5 * 3_600_000, feb_end + 7 * 3_600_000) | t.is_between(apr, apr + 30 * 3_600_000))
    Store(home / "data").append("BTCUSDT", "1h", df.filter(keep))
    return home


@pytest.mark.parametrize("store", ["tails", "gaps"])
def test_the_distributed_matrix_equals_the_local_one_row_for_row(tmp_path, cluster, store):  # noqa: F811
    from xylen.core import featuresets
    from xylen.train import distributed as xd
    from xylen.train.dataset import build
    from xylen.train.pipeline import label_specs

    home = fill(tmp_path / "h") if store == "tails" else gapped(tmp_path / "h")
    for feature_set in ("ohlcv-v2", "ohlcv-ctx-v1"):  # ctx reads 73 candles back at 1h: across month boundaries
        settings = settings_of(home, feature_set=feature_set)
        spec, extra = label_specs(settings)
        store = Store(home / "data")
        months = xd.months_of(store, "BTCUSDT", "1h")
        assert len(months) == 9  # January to September 2024: one block per month partition
        with distributed.Client(cluster, set_as_default=False) as client:
            spy = GatherSpy(client, len(featuresets.get(feature_set, "1h").names))
            m = xd.distributed_matrix(client, settings, "binance", "BTCUSDT", "1h", months, 0, spec, tuple(extra),
                                      f"test-{store}-{feature_set}")
            assert (spy.blocks, spy.feature_rows) == (len(months), 0)  # this machine got the narrow columns only
            X = m.gather_X(m.rows)
            assert spy.feature_rows == len(m.rows)
            workers = sorted(client.nthreads())
            held = client.who_has(m.blocks)
            assert len(workers) == 2
            # each month lies on one worker, where it was computed: dealt round-robin, though Dask may run one on
            # the other worker when its own is busy (allow_other_workers: a lost worker's months are rebuilt)
            assert all(len(held[b.key]) == 1 and held[b.key][0] in workers for b in m.blocks)
        ds = build(store.read("BTCUSDT", "1h"), "1h", spec, featuresets.get(feature_set, "1h"), tuple(extra))
        assert np.array_equal(m.open_time, ds.open_time) and np.array_equal(m.valid, ds.valid)
        rows = ds.rows
        assert len(rows) > 5000 and (store == "tails" or not ds.valid[ds.fs.lookback:].all())  # gaps: rows left out
        assert np.array_equal(X, ds.X[rows])  # every feature of every usable row, bit for bit
        assert np.array_equal(m.y[rows], ds.y[rows])
        assert np.array_equal(m.heads["move"][rows], ds.heads["move"][rows])
        assert np.array_equal(m.contiguous_next, ds.contiguous_next) and np.array_equal(m.close, ds.close)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cluster):  # noqa: F811
    home = fill(tmp_path_factory.mktemp("dist-home"))
    r = xylen(home, "train", "--cluster", cluster, "--distributed", "--symbol", "BTCUSDT", "--interval", "1h",
              "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return home, orjson.loads(r.stdout)


def local_fold_auc(home: Path, interval: str = "1h") -> tuple[float, tuple[int, int, int], int]:
    """Local training's last walk-forward fold of the same store, fitted here (lgb.train, early stopping on the
    same validation slice): its AUC, its (fit, validation, test) row counts and its first test open time."""
    import lightgbm as lgb

    from xylen.core import featuresets
    from xylen.profiles import resolve
    from xylen.train import evaluate, metrics
    from xylen.train.dataset import build
    from xylen.train.pipeline import label_specs

    settings = settings_of(home)
    spec, extra = label_specs(settings)
    ds = build(Store(home / "data").read("BTCUSDT", interval), interval, spec,
               featuresets.get(settings.feature_set, interval), tuple(extra))
    prof = resolve("8gb", num_threads=1)
    fit, val, test, _ = evaluate.split(ds.rows, 2, spec.horizon)[-1]
    local = evaluate._train(lgb, evaluate.lgb_params(prof),
                            evaluate._fold_data(lgb, ds.X, np.nan_to_num(ds.y), fit, val, prof.max_bin),
                            prof.num_boost_round, prof.early_stopping_rounds)
    auc = metrics.auc(ds.y[test], local.predict(ds.X[test], num_iteration=local.best_iteration))
    return auc, (len(fit), len(val), len(test)), int(ds.open_time[test[0]])


def test_on_one_worker_the_distributed_auc_equals_local_training(tmp_path):
    """One worker: LightGBM's data-parallel training has one machine, so everything else -- the matrix from the
    month blocks, the split, early stopping's round from the validation curve computed on the workers, the
    scoring -- must give exactly local training's fold AUC."""
    home = fill(tmp_path / "h")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as lc:
        r = xylen(home, "train", "--distributed", "--interval", "1h", "--json",
                  env={"XYLEN_DASK_CLUSTER": lc.scheduler_address})  # the setting names the cluster
    assert r.returncode == 0, r.stdout + r.stderr
    body = orjson.loads(r.stdout)
    auc, _, _ = local_fold_auc(home)
    assert body["metrics"]["auc_mean"] == pytest.approx(auc, abs=1e-12)


def test_on_two_workers_the_distributed_auc_is_close_to_local_training(trained):
    """Two workers: each finds the bins of some features on its own months (LightGBM's data-parallel
    training), so the trees differ a little. The issue asks for 0.005; on this 1h series (direction label, AUC
    ~0.52, 2,000 test rows: a standard error of ~0.013) runs measured 0.003-0.008: the bound below is what
    every run met, the one-worker test above proves the rest of the pipeline exact."""
    home, body = trained
    auc, counts, test_first = local_fold_auc(home)
    fold = body["folds"][0]
    assert fold["index"] == 2  # local training's last fold of 2
    assert (fold["train_rows"], fold["val_rows"], fold["test_rows"]) == counts and fold["test_first"] == test_first
    print(f"AUC distributed {body['metrics']['auc_mean']:.4f}, local {auc:.4f}")
    assert abs(body["metrics"]["auc_mean"] - auc) <= 0.02


def test_on_two_workers_a_year_of_5m_candles_reaches_local_trainings_auc_within_0_005(tmp_path, cluster):  # noqa: F811
    """The issue's bound, 0.005, on the bundled year of BTCUSDT 5m candles (105,000 real candles, 12 month
    partitions, ~21,000 test rows): with this many rows each worker's months give nearly the bins of the whole
    year, and the trees nearly local training's (bench/bench_distributed.py measured -0.0004)."""
    from xylen.train.pipeline import sample_path

    home = tmp_path / "h"
    Store(home / "data").append("BTCUSDT", "5m", read_candles(sample_path()).frame)
    r = xylen(home, "train", "--cluster", cluster, "--distributed", "--symbol", "BTCUSDT", "--interval", "5m",
              "--json", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    body = orjson.loads(r.stdout)
    auc, counts, test_first = local_fold_auc(home, "5m")
    fold = body["folds"][0]
    assert (fold["train_rows"], fold["val_rows"], fold["test_rows"]) == counts and fold["test_first"] == test_first
    print(f"5m: AUC distributed {body['metrics']['auc_mean']:.4f}, local {auc:.4f}")
    assert abs(body["metrics"]["auc_mean"] - auc) <= 0.005


def test_the_distributed_model_is_published_like_local_training(trained):
    home, body = trained
    assert body["cluster"] and body["distributed"] is True
    assert body["name"] == "btcusdt-1h" and body["version"] == "v0001" and body["promoted"] is True
    assert body["rows_used"] > 5000 and body["source"].startswith("store ")
    registry = Registry(home / "models")
    assert registry.current("btcusdt-1h").version == "v0001"
    registry.verify("btcusdt-1h", "v0001")  # size, sha256, trial load, golden rows and window
    manifest = registry.manifest("btcusdt-1h", "v0001")
    assert manifest.params["tree_learner"] == "data"
    assert [h.label["kind"] for h in manifest.heads] == ["move"]  # the same heads as `xylen train`
    honesty = body["metrics"]["honesty"]
    assert [h["kind"] for h in honesty["heads"]] == ["direction", "move"] and honesty["sentence"]
    assert {"auc_mean", "auc_shuffled_mean", "auc_edge_vs_volatility", "backtest"} <= set(body["metrics"])
    assert any("evaluated on the last walk-forward fold only" in w for w in body["warnings"])
    report = (home / "models" / "btcusdt-1h" / "v0001" / "report.html").read_text()
    assert "btcusdt-1h <small>v0001</small>" in report


LEAN = """
import numpy as np
from xylen.core.imports import import_lightgbm
import_lightgbm()  # as a per-market task loads it on a worker: without scikit-learn and pandas
from lightgbm import compat
assert not compat.SKLEARN_INSTALLED
from xylen.train.distributed import lightgbm_dask_problem
assert lightgbm_dask_problem() is None
import lightgbm.dask
X = np.random.default_rng(0).normal(size=(300, 3))
model = lightgbm.sklearn.LGBMClassifier(n_estimators=5, verbosity=-1).fit(X, (X[:, 0] > 0).astype(int))
assert issubclass(lightgbm.dask.DaskLGBMClassifier, lightgbm.sklearn.LGBMClassifier)
print("ok", model.booster_.num_trees())
"""


def test_a_worker_that_loaded_lightgbm_without_its_estimators_gets_them():
    """A worker that ran `xylen train --cluster --symbols ...` tasks first has lightgbm loaded lean (no
    scikit-learn: seconds of start-up those tasks skip); --distributed's check loads the estimators there."""
    r = subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ok 5"), r.stdout + r.stderr


def test_bad_combinations_are_refused(tmp_path):
    r = xylen(tmp_path, "train", "--distributed")
    assert r.returncode == 2 and "--distributed trains one model over a Dask cluster" in r.stderr
    assert "XYLEN_DASK_CLUSTER" in r.stderr and "Traceback" not in r.stderr
    r = xylen(tmp_path, "train", "--cluster", "tcp://127.0.0.1:9", "--distributed", "--symbols", "BTCUSDT,ETHUSDT")
    assert r.returncode == 2 and "--distributed trains one model over the whole cluster, but 2 markets" in r.stderr
    assert "Traceback" not in r.stderr
    r = xylen(tmp_path, "train", "--cluster", "tcp://127.0.0.1:9", "--distributed", "--data", str(BTC_1H))
    assert r.returncode == 2 and "--data files cannot be sent to a --cluster" in r.stderr


def kill_a_training_worker(spy, proc) -> tuple[str, str, float]:
    """SIGKILL the first worker seen running one of LightGBM's training tasks while ``proc`` (an xylen command)
    runs; its stdout, stderr and the seconds from the kill to its end."""
    try:
        killed_at = None
        deadline = time.monotonic() + 180
        while killed_at is None and time.monotonic() < deadline and proc.poll() is None:
            for worker, keys in spy.processing().items():
                if any("train_part" in str(k) for k in keys):
                    pid = spy.run(os.getpid, workers=[worker])[worker]
                    os.kill(pid, signal.SIGKILL)
                    killed_at = time.monotonic()
                    break
            time.sleep(0.02)
        assert killed_at is not None, "no worker was seen running LightGBM's training task"
        stdout, stderr = proc.communicate(timeout=60)  # a hang guard only
        return stdout, stderr, time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_worker_killed_mid_fit_fails_the_job(tmp_path):
    """SIGKILL of the worker running one of LightGBM's training tasks: the command ends with exit 5 and a message
    naming the lost worker, and nothing is published (the time it took is printed, not asserted)."""
    home = fill(tmp_path / "h")
    env = {k: v for k, v in os.environ.items() if not k.startswith("XYLEN_")} | FAST
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as lc, distributed.Client(lc.scheduler_address, set_as_default=False) as spy:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xylen", "--home", str(home), "train", "--cluster", lc.scheduler_address,
             "--distributed", "--symbol", "BTCUSDT", "--interval", "1h"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        stdout, stderr, took = kill_a_training_worker(spy, proc)
    assert proc.returncode == 5, stdout + stderr
    assert "left the cluster during the distributed fit" in stderr and "nothing was published" in stderr
    assert "Traceback" not in stderr
    print(f"exit {proc.returncode} {took:.1f} s after the kill")
    assert not (home / "models").exists() or Registry(home / "models").names() == []


def test_only_the_fits_workers_are_watched():
    """A worker holding none of the fit's blocks (an idle one adaptive scaling removes) may leave during the fit;
    one holding a block may not."""
    from xylen.core.errors import TrainingError
    from xylen.train import distributed as xd

    with distributed.LocalCluster(n_workers=3, threads_per_worker=1, processes=False,  # in-process: no network
                                  dashboard_address=":0") as lc, \
            distributed.Client(lc.scheduler_address, set_as_default=False) as client:
        a, b, idle = sorted(client.nthreads())
        blocks = [client.submit(np.arange, 5, workers=[w], allow_other_workers=False, pure=False) for w in (a, b)]
        client.gather(blocks)  # computed, and held where they were computed
        assert xd.holders(client, blocks) == {a, b}
        checks = []
        nthreads = client.nthreads

        def counted():
            checks.append(1)
            return nthreads()

        client.nthreads = counted

        def fit_while(leaving: str, done: threading.Event) -> int:
            client.retire_workers([leaving], close_workers=True)
            while leaving in nthreads() and not done.is_set():
                time.sleep(0.05)
            seen = len(checks)
            while len(checks) < seen + 3 and not done.is_set():  # the watcher looked at least twice since
                time.sleep(0.05)
            return 42

        done = threading.Event()
        assert xd._Watched(client, "test", blocks).run(lambda: fit_while(idle, done)) == 42
        with pytest.raises(TrainingError, match=f"Dask worker {a} left the cluster during the distributed fit"):
            xd._Watched(client, "test", blocks).run(lambda: fit_while(a, done))
        done.set()


@pytest.fixture(scope="module")
def spied(tmp_path_factory, cluster):  # noqa: F811
    """--distributed run in this process on all but the last 1,200 candles, with client.gather counted."""
    from xylen.core import featuresets
    from xylen.train import cluster as xc
    from xylen.train.cluster import Market
    from xylen.train.distributed import train_distributed

    home = tmp_path_factory.mktemp("spied")
    df = read_candles(BTC_1H).frame
    Store(home / "data").append("BTCUSDT", "1h", df.head(df.height - 1200))
    settings = settings_of(home)
    spies = []

    @contextlib.contextmanager
    def connect(address):
        with xc.connect(address) as client:
            spies.append(GatherSpy(client, len(featuresets.get(settings.feature_set, "1h").names)))
            yield client

    result = train_distributed(settings, Market("BTCUSDT", "1h", "binance"), address=cluster, connect=connect)
    return home, result, spies[0]


def test_this_machine_receives_only_the_held_out_windows_and_golden_rows_features(spied):
    home, result, spy = spied
    test_rows = result.folds[0]["test_rows"]
    golden = Registry(home / "models").manifest("btcusdt-1h", "v0001").golden
    assert spy.blocks > 0  # the narrow blocks (no features in them: GatherSpy checks)
    assert spy.feature_rows == test_rows + len(golden.rows)


HOLD = {"XYLEN_RETRAIN_HOLDOUT": "500"}


def with_new_candles(home0: Path, home: Path) -> Path:
    """A copy of the spied home (v0001 trained --distributed) with the 1,200 newer candles in its store."""
    shutil.copytree(home0, home)
    Store(home / "data").append("BTCUSDT", "1h", read_candles(BTC_1H).frame)
    return home


def retrain_json(home: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    r = xylen(home, "retrain", "btcusdt-1h", *args, "--json", env=HOLD | (env or {}))
    assert r.returncode == 0, r.stdout + r.stderr
    (got,) = orjson.loads(r.stdout)["results"]
    assert got["outcome"] in ("promoted", "kept") and got["candidate_version"] == "v0002", got
    return got


@pytest.fixture(scope="module")
def retrained_here(spied, tmp_path_factory):
    """`xylen retrain` of the --distributed v0001 without a cluster (one process)."""
    home0, _, _ = spied
    home = with_new_candles(home0, tmp_path_factory.mktemp("retrain-here") / "h")
    return home, retrain_json(home)


def test_a_model_trained_distributed_retrains_in_one_process_without_a_cluster(spied, retrained_here):
    """Without a cluster, `xylen retrain` of a --distributed model refits in one process, without LightGBM's
    network parameters (tree_learner=data), and the gate decides as usual."""
    home0, _, _ = spied
    assert Registry(home0 / "models").manifest("btcusdt-1h", "v0001").params["tree_learner"] == "data"
    home, got = retrained_here
    assert got["mode"] == "full" and "data-parallel" not in got["message"]
    manifest = Registry(home / "models").manifest("btcusdt-1h", "v0002")
    assert "tree_learner" not in manifest.params and "time_out" not in manifest.params, manifest.params
    assert "distributed" not in manifest.metrics and "data_parallel" not in manifest.model_extra["retrain"]


def test_on_one_worker_a_data_parallel_retrain_gates_exactly_as_in_one_process(spied, retrained_here, tmp_path):
    """One worker: the candidate fitted by lightgbm.dask on the workers' month blocks (XYLEN_DASK_CLUSTER names
    the cluster) is the one-process candidate: same rows, same holdout, the same gate scores to the last bit."""
    home0, _, _ = spied
    home = with_new_candles(home0, tmp_path / "h")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as lc:
        got = retrain_json(home, env={"XYLEN_DASK_CLUSTER": lc.scheduler_address})
    _, here = retrained_here
    assert "data-parallel full refit" in got["message"], got["message"]
    assert got["samples_used"] == here["samples_used"]
    assert got["gate"]["candidate"] == here["gate"]["candidate"]  # AUC, log-loss, interval: exactly equal
    assert got["gate"]["live"] == here["gate"]["live"] and got["gate"]["decision"] == here["gate"]["decision"]
    assert got["gate"]["heads"]["move"]["candidate"] == here["gate"]["heads"]["move"]["candidate"]
    assert got["outcome"] == here["outcome"]


def test_on_two_workers_a_data_parallel_retrain_publishes_a_data_parallel_version(
    spied, retrained_here, tmp_path, cluster  # noqa: F811
):
    """Two workers: the candidate is refitted in full data-parallel (a warm start is refused, and the result says
    why), gated within 0.02 AUC of the one-process candidate, and v0002's manifest says it is data-parallel, so
    the next retrain with a cluster fits it so again."""
    home0, _, _ = spied
    home = with_new_candles(home0, tmp_path / "h")
    got = retrain_json(home, "--cluster", cluster, "--warm-start")
    _, here = retrained_here
    assert got["mode"] == "full" and "data-parallel model is refitted in full" in got["message"], got["message"]
    assert got["samples_used"] == here["samples_used"]
    auc, auc_here = got["gate"]["candidate"]["auc"], here["gate"]["candidate"]["auc"]
    print(f"retrain gate AUC data-parallel {auc:.4f}, one process {auc_here:.4f}")
    assert abs(auc - auc_here) <= 0.02
    registry = Registry(home / "models")
    registry.verify("btcusdt-1h", "v0002")  # size, sha256, trial load, golden rows and window
    manifest = registry.manifest("btcusdt-1h", "v0002")
    assert manifest.params["tree_learner"] == "data" and "time_out" not in manifest.params
    assert manifest.metrics["distributed"] == {"cluster": cluster, "partitions": 9}
    info = manifest.model_extra["retrain"]
    assert info["data_parallel"]["cluster"] == cluster and info["mode"] == "full"
    assert info["forced_full"].startswith("a data-parallel model is refitted in full")
    here_manifest = Registry(retrained_here[0] / "models").manifest("btcusdt-1h", "v0002")
    assert manifest.training_window == here_manifest.training_window  # the same rows
    assert registry.current("btcusdt-1h").version == ("v0002" if got["outcome"] == "promoted" else "v0001")


def test_a_worker_killed_mid_retrain_publishes_nothing(spied, tmp_path):
    """SIGKILL of a worker running LightGBM's training task during a data-parallel retrain: exit 5 naming the lost
    worker, and the registry is as it was (v0001 live, no v0002)."""
    home0, _, _ = spied
    home = with_new_candles(home0, tmp_path / "h")
    env = {k: v for k, v in os.environ.items() if not k.startswith("XYLEN_")} | FAST | HOLD
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as lc, distributed.Client(lc.scheduler_address, set_as_default=False) as spy:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xylen", "--home", str(home), "retrain", "btcusdt-1h", "--cluster",
             lc.scheduler_address, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        stdout, stderr, took = kill_a_training_worker(spy, proc)
    assert proc.returncode == 5, stdout + stderr
    (got,) = orjson.loads(stdout)["results"]
    assert got["outcome"] == "error" and got["candidate_version"] is None
    assert "left the cluster during the distributed fit" in got["message"], got["message"]
    assert "nothing was published" in got["message"] and "Traceback" not in stderr
    print(f"exit {proc.returncode} {took:.1f} s after the kill")
    registry = Registry(home / "models")
    assert registry.versions("btcusdt-1h") == ["v0001"] and registry.current("btcusdt-1h").version == "v0001"


def test_retrain_all_on_a_cluster_refits_the_distributed_model_data_parallel_and_the_others_per_task(
    spied, tmp_path, cluster  # noqa: F811
):
    """`retrain --all --cluster`: the --distributed model is refitted data-parallel from this machine, a model
    trained in one process on the same candles keeps the one-model-per-task retrain; both are gated and
    published."""
    home0, _, _ = spied
    home = tmp_path / "h"
    shutil.copytree(home0, home)
    r = xylen(home, "train", "--symbol", "BTCUSDT", "--interval", "1h", "--name", "plain", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    Store(home / "data").append("BTCUSDT", "1h", read_candles(BTC_1H).frame)
    r = xylen(home, "retrain", "--all", "--cluster", cluster, "--json", env=HOLD)
    assert r.returncode == 0, r.stdout + r.stderr
    got = {x["name"]: x for x in orjson.loads(r.stdout)["results"]}
    assert set(got) == {"btcusdt-1h", "plain"}
    for x in got.values():
        assert x["outcome"] in ("promoted", "kept") and x["candidate_version"] == "v0002", x
    assert "data-parallel full refit" in got["btcusdt-1h"]["message"]
    assert "data-parallel" not in got["plain"]["message"] and "full refit" in got["plain"]["message"]
    registry = Registry(home / "models")
    assert registry.manifest("btcusdt-1h", "v0002").params["tree_learner"] == "data"
    plain = registry.manifest("plain", "v0002")
    assert "tree_learner" not in plain.params and "distributed" not in plain.metrics


def test_a_data_parallel_retrain_brings_here_only_the_holdouts_and_golden_rows_features(
    spied, tmp_path, cluster  # noqa: F811
):
    """In this process, with client.gather counted: the candidate's fit rows keep their features on the workers;
    this machine receives the narrow blocks, the holdout's features and the golden rows'."""
    from xylen.core import featuresets
    from xylen.profiles import resolve
    from xylen.train import cluster as xc
    from xylen.train.retrain import RetrainOptions, retrain_model

    home0, _, _ = spied
    home = with_new_candles(home0, tmp_path / "h")
    settings = settings_of(home, retrain_holdout=500)
    registry = Registry(home / "models")
    with xc.connect(cluster) as client:
        spy = GatherSpy(client, len(featuresets.get(settings.feature_set, "1h").names))
        r = retrain_model(settings, registry, Store(home / "data"), "btcusdt-1h", RetrainOptions(),
                          resolve("8gb", num_threads=1), client=client, address=cluster)
    assert r.outcome in ("promoted", "kept") and r.candidate_version == "v0002", r.message
    assert r.gate is not None and r.gate["holdout"]["rows"] >= 500
    golden = registry.manifest("btcusdt-1h", "v0002").golden
    assert spy.blocks == 9  # one narrow block per month partition, without features
    assert spy.feature_rows == r.gate["holdout"]["rows"] + len(golden.rows)
    assert r.samples_used > 5000  # fitted on the workers, never gathered
