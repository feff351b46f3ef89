"""Ensembles in the model holder (serve/ensemble_live.py): members loaded though --model does not name them, a follower
swap re-builds the ensemble in the same ``live`` assignment, a pinned member stays, a member version the ensemble
cannot feed leaves it on its members."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.builders import build_bundle
from tests.ensembles import build_members
from xylen.core import ensemble
from xylen.core.registry import POINTER, Registry
from xylen.serve.holder import ModelHolder, load_live

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def members_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("ens-holder")
    reg = Registry(home / "models")
    build_members(reg, others=False)
    ensemble.create(reg, "e1", ["m-a", "m-b@v0001"], promote=True)
    ensemble.create(reg, "e2", ["e1", "m-a"], [1, 3], promote=True)  # m-a twice: directly and through e1
    return home


@pytest.fixture
def reg(members_home: Path, tmp_path: Path) -> Registry:
    shutil.copytree(members_home, tmp_path / "home")
    return Registry(tmp_path / "home" / "models")


def row_of(reg: Registry) -> np.ndarray:
    return np.array(reg.manifest("e1", "v0001").golden.rows[3], dtype=np.float64)


def loaded(reg: Registry, names: list[str]) -> ModelHolder:
    h = ModelHolder(reg, names)
    h.load_all()
    assert h.not_ready_reason() is None, h.problems
    return h


def test_an_ensemble_named_alone_is_served_with_its_members(reg: Registry) -> None:
    h = loaded(reg, ["e2"])
    assert set(h.served) == {"e2", "e1", "m-a"}  # its followers are loaded and watched; m-b@v0001 is held inside
    e2 = h.live["e2"]
    assert [(m.name, m.version) for m in e2.members] == [("e1", "v0001"), ("m-a", "v0001")]
    assert [(m.name, m.version) for m in h.live["e1"].members] == [("m-a", "v0001"), ("m-b", "v0001")]
    golden = reg.manifest("e2", "v0001").golden
    got = [e2.predict_row(np.array(r, dtype=np.float64)) for r in golden.rows]
    assert np.allclose(got, golden.outputs, rtol=0, atol=1e-12)
    assert e2.members[0] is h.live["e1"] and e2.members[1] is h.live["m-a"]  # one m-a in the whole map


def test_a_follower_swap_rebuilds_every_ensemble_on_it_and_a_pinned_member_stays(reg: Registry) -> None:
    h = loaded(reg, ["e2"])
    reg.promote("m-a", "v0002")
    h.poll()
    a2, e1, e2 = h.live["m-a"], h.live["e1"], h.live["e2"]
    assert a2.version == "v0002" and (e1.version, e2.version) == ("v0001", "v0001")  # the ensembles' own versions
    assert [m.version for m in e1.members] == ["v0002", "v0001"]  # m-b stays v0001 though v0002 is its live one
    row = row_of(reg)
    b1 = e1.members[1].predict_row(row)
    assert e1.predict_row(row) == pytest.approx((a2.predict_row(row) + b1) / 2, abs=1e-12)
    assert e2.predict_row(row) == pytest.approx((e1.predict_row(row) + 3 * a2.predict_row(row)) / 4, abs=1e-12)


def test_a_member_swap_never_shows_a_request_half_an_ensemble(reg: Registry) -> None:
    """Each snapshot of ``holder.live`` a request reads holds ensembles built on exactly the members it holds."""
    h = loaded(reg, ["e2"])
    a1, a2 = h.live["m-a"], load_live("m-a", reg.path("m-a", "v0002"))
    row = row_of(reg)
    b1 = h.live["e1"].members[1].predict_row(row)
    assert a1.predict_row(row) != a2.predict_row(row)  # distinguishable member versions
    done, bad, reads = threading.Event(), [], [0]

    def reader() -> None:  # one thread: a LightGBM fast row predictor is called by one thread at a time
        while not done.is_set():
            m = h.live  # what a request does: read the map once
            a = m["m-a"].predict_row(row)
            e1, e2 = m["e1"].predict_row(row), m["e2"].predict_row(row)
            want1 = (a + b1) / 2
            if abs(e1 - want1) > 1e-12 or abs(e2 - (want1 + 3 * a) / 4) > 1e-12:
                bad.append((m["m-a"].version, [x.version for x in m["e1"].members]))
            reads[0] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(400):
            h._publish(a2 if i % 2 == 0 else a1)  # what a swap publishes after verify + load
    finally:
        done.set()
        t.join(60)
    assert reads[0] > 0 and not bad, bad[:5]


def test_a_member_version_the_ensemble_cannot_feed_leaves_it_on_its_members(reg: Registry) -> None:
    h = loaded(reg, ["e1"])
    build_bundle(reg, "m-a", rounds=6, rows=3000, seed=9, feature_set="ohlcv-ctx-v1")  # promoted: a good model
    h.poll()
    assert h.live["m-a"].version == "v0003"  # served by its own name
    assert [m.version for m in h.live["e1"].members] == ["v0001", "v0001"]  # the ensemble keeps what it can feed
    assert "feature set 'ohlcv-ctx-v1'" in h.problems["e1"]
    assert h.not_ready_reason() is None


def test_an_ensemble_waits_for_a_member_without_a_live_version(reg: Registry) -> None:
    (reg.root / "m-a" / POINTER).unlink()
    h = ModelHolder(reg, ["e1"])
    h.load_all()
    assert "e1" not in h.live
    assert "waiting for its member 'm-a'" in (h.not_ready_reason() or "")
    reg.promote("m-a", "v0002")
    h.poll()
    assert [m.version for m in h.live["e1"].members] == ["v0002", "v0001"]
    assert h.not_ready_reason() is None


def test_model_path_serves_an_ensemble_at_its_manifest_versions(reg: Registry) -> None:
    reg.promote("m-a", "v0002")
    h = ModelHolder(None, model_path=reg.path("e1", "v0001"))
    h.load_all()
    assert h.not_ready_reason() is None, h.problems
    assert [m.version for m in h.live["e1"].members] == ["v0001", "v0001"]  # no registry is watched: as verified


def test_a_name_that_goes_from_ensemble_to_single_model_and_back(reg: Registry) -> None:
    """e1's next version is a plain LightGBM model: e2 (which follows e1) is re-built on it; a rollback returns."""
    h = loaded(reg, ["e2"])
    build_bundle(reg, "e1", rounds=6, rows=1500, seed=11)  # v0002, promoted
    h.poll()
    e1, e2, row = h.live["e1"], h.live["e2"], row_of(reg)
    assert (e1.version, e1.bundle.backend, e1.members) == ("v0002", "lightgbm", ())
    assert e2.members[0] is e1
    assert e2.predict_row(row) == pytest.approx((e1.predict_row(row) + 3 * h.live["m-a"].predict_row(row)) / 4,
                                                abs=1e-12)
    reg.rollback("e1")
    h.poll()
    assert h.live["e1"].version == "v0001" and h.live["e1"].bundle.backend == "ensemble"
    assert h.live["e2"].members[0] is h.live["e1"] and h.not_ready_reason() is None
