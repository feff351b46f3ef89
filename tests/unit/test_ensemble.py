"""Ensembles in the registry (core/ensemble.py): the aggregation math, creation and its refusals (a missing member or
version, members one row cannot feed, a cycle, bad weights or aggregation), verification through every member."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.builders import build_bundle
from tests.ensembles import build_members
from xylen.core import ensemble
from xylen.core.bundle import load_bundle
from xylen.core.ensemble import EnsembleBundle, aggregate, make_spec, row_aggregator
from xylen.core.errors import BundleError, ConfigError
from xylen.core.registry import Registry

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def members_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("ens-home")
    build_members(Registry(home / "models"))
    return home


@pytest.fixture
def reg(members_home: Path, tmp_path: Path) -> Registry:
    shutil.copytree(members_home, tmp_path / "home")
    return Registry(tmp_path / "home" / "models")


# -- the math ----------------------------------------------------------------------------------------------------
probs = st.lists(st.floats(0, 1), min_size=2, max_size=6)


@given(probs, st.lists(st.floats(0.01, 100), min_size=6, max_size=6))
def test_each_aggregation_is_its_formula_and_the_row_path_equals_the_batch_path(p: list[float], w: list[float]) -> None:
    n = len(p)
    cases = {
        "mean": (make_spec([f"m{i}" for i in range(n)], None, "mean"), sum(p) / n),
        "weighted": (make_spec([f"m{i}" for i in range(n)], w[:n], "weighted"),
                     sum(wi * pi for wi, pi in zip(w, p)) / sum(w[:n])),
        "vote": (make_spec([f"m{i}" for i in range(n)], w[:n], "vote"),
                 sum(wi for wi, pi in zip(w, p) if pi >= 0.5) / sum(w[:n])),
    }
    for how, (spec, want) in cases.items():
        got = aggregate(np.array(p)[:, None], spec.normalized(), how)[0]
        assert got == pytest.approx(want, abs=1e-12), how
        fns = [lambda _row, v=v: v for v in p]
        assert row_aggregator(fns, spec.normalized(), how)(np.zeros(1)) == pytest.approx(got, abs=1e-12), how
        assert 0.0 <= got <= 1.0 + 1e-12


def test_vote_counts_a_member_at_exactly_one_half_as_yes() -> None:
    spec = make_spec(["a", "b", "c"], [1, 1, 2], "vote")
    assert aggregate(np.array([[0.5], [0.49], [0.2]]), spec.normalized(), "vote")[0] == pytest.approx(0.25)


def test_weights_select_weighted_and_mean_ignores_none() -> None:
    assert make_spec(["a", "b"], [2, 1]).aggregation == "weighted"
    assert make_spec(["a", "b"]).aggregation == "mean"
    assert make_spec(["a", "b"], [3, 3], "mean").normalized() == (0.5, 0.5)
    assert make_spec(["a", "b@v0002"]).members[1] == ensemble.MemberRef("b", "v0002")


@pytest.mark.parametrize(
    ("members", "weights", "aggregation", "quoted"),
    [
        (["a", "b"], [0.0, 1.0], None, "0.0"),
        (["a", "b"], [-1.0, 1.0], None, "-1.0"),
        (["a", "b"], [math.nan, 1.0], None, "nan"),
        (["a", "b"], [math.inf, 1.0], None, "inf"),
        (["a", "b"], [1e308, 1e308], None, "1e+308"),  # each finite, their sum is not (an OverflowError before)
        (["a", "b"], [1.0], None, "1 weights for 2 members"),
        (["a", "b"], None, "median", "'median'"),
        (["a", "b"], [2.0, 1.0], "mean", "'mean'"),
        (["a"], None, None, "at least 2 members"),
        (["a", "Bad Name"], None, None, "'Bad Name'"),
        (["a", "b@7"], None, None, "'b@7'"),
    ],
)
def test_bad_specs_are_refused_quoting_the_value(members: list[str], weights: list[float] | None,
                                                 aggregation: str | None, quoted: str) -> None:
    with pytest.raises(ConfigError) as e:
        make_spec(members, weights, aggregation)
    assert quoted in e.value.message and e.value.hint and e.value.exit_code == 2


# -- creation ----------------------------------------------------------------------------------------------------
def test_create_resolves_versions_pins_them_and_its_golden_rows_go_through_the_whole_ensemble(reg: Registry) -> None:
    version, m = ensemble.create(reg, "btcusdt-5m", ["m-a", "m-b@v0001"], [2, 1])
    assert (version, m.backend, m.artifact.file) == ("v0001", "ensemble", "ensemble.json")
    members = m.model_extra["ensemble"]["members"]  # type: ignore[index]
    assert [(x["name"], x["version"], x["follows_live"]) for x in members] == [
        ("m-a", "v0001", True), ("m-b", "v0001", False)]
    assert "v0001" in reg.pins("m-a") and "v0001" in reg.pins("m-b")  # no prune may take what the golden rows need
    a = load_bundle(reg.path("m-a", "v0001"))
    b = load_bundle(reg.path("m-b", "v0001"))
    X = np.array(m.golden.rows, dtype=np.float64)
    assert np.allclose(m.golden.outputs, (2 * a.predict(X) + b.predict(X)) / 3, rtol=0, atol=1e-12)
    assert reg.current("btcusdt-5m") is None  # not live without --promote
    bundle = load_bundle(reg.path("btcusdt-5m", version))  # verifies every member and the golden rows
    assert isinstance(bundle, EnsembleBundle) and bundle.min_candles == a.min_candles
    reg.promote("btcusdt-5m", version)  # the child verifier, unchanged
    assert reg.current("btcusdt-5m").version == "v0001"  # type: ignore[union-attr]


def test_a_missing_member_version_or_live_version_is_refused_with_exit_4(reg: Registry) -> None:
    for members, quoted in ((["m-a", "m-zz"], "'m-zz'"), (["m-a", "m-b@v0009"], "v0009")):
        with pytest.raises(BundleError) as e:
            ensemble.create(reg, "e", members)
        assert quoted in e.value.message and e.value.exit_code == 4
    build_bundle(reg, "m-new", rounds=5, rows=800, promote=False)
    with pytest.raises(BundleError, match="no live version") as e:
        ensemble.create(reg, "e", ["m-a", "m-new"])
    assert "m-new@v0001" in (e.value.hint or "")
    assert reg.versions("e") == []


@pytest.mark.parametrize(("other", "said"), [("m-ctx", "feature set 'ohlcv-ctx-v1'"), ("m-dir", "another label"),
                                             ("m-h1", "another label"), ("m-1h", "1h candles"),
                                             ("m-kraken", "kraken's candles")])
def test_members_one_row_cannot_feed_are_refused(reg: Registry, other: str, said: str) -> None:
    with pytest.raises(ConfigError) as e:
        ensemble.create(reg, "e", ["m-a", other])
    assert said in e.value.message and other in e.value.message and e.value.exit_code == 2
    assert reg.versions("e") == []


def test_members_with_different_heads_are_refused(reg: Registry) -> None:
    with pytest.raises(ConfigError, match="answers probability, up_probability, move_probability"):
        ensemble.create(reg, "e", ["m-h1", "m-dir"])


def test_a_cycle_is_refused_at_creation(reg: Registry) -> None:
    ensemble.create(reg, "e1", ["m-a", "m-b"], promote=True)
    ensemble.create(reg, "e2", ["e1", "m-a"], promote=True)
    with pytest.raises(ConfigError) as e:
        ensemble.create(reg, "e1", ["e2", "m-b"])  # e1 -> e2 -> e1
    assert "e1 -> e2 -> e1" in e.value.message
    with pytest.raises(ConfigError, match="e3 -> e3"):
        ensemble.create(reg, "e3", ["e3", "m-a"])
    assert reg.versions("e1") == ["v0001"]


def test_a_cycle_made_by_promotions_is_refused_at_verification(reg: Registry) -> None:
    ensemble.create(reg, "e1", ["m-a", "m-b"], promote=True)
    ensemble.create(reg, "e2", ["m-a", "m-b"], promote=True)
    cyclic, _ = ensemble.create(reg, "e1", ["e2", "m-b"])  # fine while e2 v0001 holds no e1
    v2, _ = ensemble.create(reg, "e2", ["e1", "m-a"], promote=True)  # fine while e1 v0001 is live
    with pytest.raises(BundleError, match=r"e1 -> e2 -> e1"):
        reg.promote("e1", cyclic)  # e1 v0002 follows e2, whose live version follows e1
    assert reg.current("e1").version == "v0001" and v2 == "v0002"  # type: ignore[union-attr]


def test_a_nested_ensemble_combines_its_members_combination(reg: Registry) -> None:
    ensemble.create(reg, "e1", ["m-a", "m-b"], promote=True)
    v, m = ensemble.create(reg, "e2", ["e1", "m-a"], [1, 3], promote=True)
    a, b = load_bundle(reg.current_path("m-a")), load_bundle(reg.current_path("m-b"))
    X = np.array(m.golden.rows, dtype=np.float64)
    want = ((a.predict(X) + b.predict(X)) / 2 + 3 * a.predict(X)) / 4
    assert np.allclose(load_bundle(reg.path("e2", v)).predict(X), want, rtol=0, atol=1e-12)


def test_heads_are_combined_like_the_primary(reg: Registry) -> None:
    v, m = ensemble.create(reg, "e", ["m-h1", "m-h2"], [1, 3])
    bundle = load_bundle(reg.path("e", v))
    assert list(bundle.outputs()) == ["probability", "up_probability", "move_probability"]
    h1, h2 = load_bundle(reg.current_path("m-h1")), load_bundle(reg.current_path("m-h2"))
    X = np.array(m.golden.rows, dtype=np.float64)
    move = dict(bundle.heads)["move_probability"].predict(X)
    want = (dict(h1.heads)["move_probability"].predict(X) + 3 * dict(h2.heads)["move_probability"].predict(X)) / 4
    assert np.allclose(move, want, rtol=0, atol=1e-12)
    assert "up_probability" not in dict(bundle.heads)  # the primary's own field: its probability


def test_a_corrupt_member_version_is_refused_at_verify(reg: Registry) -> None:
    v, _ = ensemble.create(reg, "e", ["m-a", "m-b@v0001"])
    model = reg.path("m-b", "v0001") / "model.txt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated on disk
    with pytest.raises(BundleError) as e:
        reg.promote("e", v)
    assert "failed verification" in e.value.message and "m-b" in e.value.message
    assert reg.current("e") is None


def test_a_member_version_replaced_after_creation_is_refused(reg: Registry) -> None:
    v, _ = ensemble.create(reg, "e", ["m-a", "m-b@v0001"])
    shutil.rmtree(reg.path("m-b", "v0001"))
    shutil.copytree(reg.path("m-b", "v0002"), reg.path("m-b", "v0001"))  # a valid bundle, but not the one
    with pytest.raises(BundleError, match="was made with"):
        load_bundle(reg.path("e", v))
    shutil.rmtree(reg.path("m-b", "v0001"))
    with pytest.raises(BundleError, match="member m-b v0001 is missing"):
        load_bundle(reg.path("e", v))


def test_a_tampered_spec_is_refused(reg: Registry) -> None:
    v, _ = ensemble.create(reg, "e", ["m-a", "m-b"])
    spec = reg.path("e", v) / "ensemble.json"
    spec.write_bytes(spec.read_bytes().replace(b"1.0", b"9.0"))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(reg.path("e", v))


def test_describe_names_each_members_version(reg: Registry) -> None:
    ensemble.create(reg, "e", ["m-a", "m-b@v0001"], promote=True)
    reg.promote("m-a", "v0002")
    info = ensemble.describe(reg, "e")
    assert [(m["member"], m["created_with"], m["serves"]) for m in info["members"]] == [
        ("m-a", "v0001", "v0002"), ("m-b@v0001", "v0001", "v0001")]
    with pytest.raises(ConfigError, match="not an ensemble"):
        ensemble.describe(reg, "m-a")


def test_retrain_skips_an_ensemble_naming_its_members(reg: Registry) -> None:
    from xylen.train.retrain import not_retrainable

    v, m = ensemble.create(reg, "e", ["m-a", "m-b"])
    assert "it is an ensemble: retrain its members" in (not_retrainable(m) or "")


def test_a_served_ensemble_answers_every_output_combined(reg: Registry) -> None:
    """/predict's extra fields (Live.extra): move_probability combines the members' move heads, up_probability is
    the ensemble's own probability (a direction label), as for a single model."""
    from xylen.serve.holder import ModelHolder

    ensemble.create(reg, "e", ["m-h1", "m-h2"], [1, 3], promote=True)
    h = ModelHolder(reg, ["e"])
    h.load_all()
    assert h.not_ready_reason() is None, h.problems
    e, h1, h2 = h.live["e"], h.live["m-h1"], h.live["m-h2"]
    assert e.output_names == ("probability", "up_probability", "move_probability")
    extra = dict(e.extra)
    assert extra["up_probability"] is None  # answered with the probability itself
    row = np.array(reg.manifest("e", "v0001").golden.rows[2], dtype=np.float64)
    move = [dict(m.extra)["move_probability"] for m in (h1, h2)]
    assert extra["move_probability"](row) == pytest.approx((move[0](row) + 3 * move[1](row)) / 4, abs=1e-12)
    assert e.predict_row(row) == pytest.approx((h1.predict_row(row) + 3 * h2.predict_row(row)) / 4, abs=1e-12)
