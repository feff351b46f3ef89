"""Labels: each definition by hand, no look-ahead beyond the horizon, and the manifest round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xylen.core import labels
from xylen.core.errors import BundleError, ConfigError
from xylen.core.labels import LabelSpec

pytestmark = pytest.mark.unit

CLOSE = np.array([100.0, 101.0, 100.0, 99.0, 103.0, 103.0])


def test_direction_threshold_and_move_by_hand():
    # log returns over 2 candles: 0, log(99/101)=-0.0200, log(103/100)=+0.0296, log(103/99)=+0.0396, none, none
    assert labels.make(CLOSE, LabelSpec(2, 0.0, "direction"))[:4].tolist() == [0, 0, 1, 1]
    assert labels.make(CLOSE, LabelSpec(2, 0.035, "threshold"))[:4].tolist() == [0, 0, 0, 1]
    assert labels.make(CLOSE, LabelSpec(2, 0.015, "move"))[:4].tolist() == [0, 1, 1, 1]
    for kind in labels.KINDS:
        y = labels.make(CLOSE, LabelSpec(2, 0.01, kind), CLOSE * 1.001, CLOSE * 0.999)
        assert np.isnan(y[4:]).all() and not np.isnan(y[:4]).any()


def test_triple_barrier_by_hand():
    """Upper first -> 1; lower first -> 0; both in one candle -> 0 (order unknown); neither -> 0."""
    close = np.full(8, 100.0)
    high = close.copy()
    low = close.copy()
    spec = LabelSpec(horizon=3, threshold=math.log(1.02), kind="triple-barrier", lower=math.log(1 / 0.98))
    high[1] = 102.5  # row 0: the upper barrier in the first candle ahead
    low[3] = 97.0  # rows 0..2 see this lower touch; row 0 touched the upper one first
    high[5], low[5] = 103.0, 97.0  # rows 2..4: both barriers inside candle 5
    y = labels.make(close, spec, high, low)
    assert y[:5].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert np.isnan(y[5:]).all()
    with pytest.raises(ValueError, match="highs and lows"):
        labels.make(close, spec)


@given(t=st.integers(10, 150), seed=st.integers(0, 1000), kind=st.sampled_from(labels.KINDS))
def test_no_label_reads_beyond_its_horizon(t, seed, kind):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 200)))
    high, low = close * 1.004, close * 0.996
    spec = LabelSpec(horizon=6, threshold=0.004, kind=kind)
    y0 = labels.make(close, spec, high, low)
    c1, h1, l1 = close.copy(), high.copy(), low.copy()
    for a in (c1, h1, l1):
        a[t + 1 :] *= rng.uniform(0.5, 1.5)
    y1 = labels.make(c1, spec, h1, l1)
    np.testing.assert_array_equal(y0[: t + 1 - 6], y1[: t + 1 - 6])


@pytest.mark.parametrize(
    "spec",
    [LabelSpec(6, 0.002, "direction"), LabelSpec(12, 0.003, "threshold"), LabelSpec(3, 0.01, "move"),
     LabelSpec(6, 0.004, "triple-barrier"), LabelSpec(6, 0.004, "triple-barrier", lower=0.002)],
)
def test_every_label_round_trips_through_the_manifest(spec):
    d = spec.to_dict()
    back = LabelSpec.from_dict(d)
    assert labels.make(CLOSE, back, CLOSE, CLOSE).tolist() == pytest.approx(
        labels.make(CLOSE, spec, CLOSE, CLOSE).tolist(), nan_ok=True
    )
    assert (back.kind, back.horizon) == (spec.kind, spec.horizon)
    assert back.to_dict() == d
    assert d["description"] and d["predicts"].startswith("P(")


def test_an_old_manifest_label_is_the_threshold_label():
    old = {"horizon": 6, "threshold": 0.002, "kind": "forward_log_return_above_threshold",
           "description": "1 if log(close[t+6] / close[t]) > 0.002, else 0"}
    assert LabelSpec.from_dict(old) == LabelSpec(6, 0.002, "threshold")


@pytest.mark.parametrize(
    ("label", "says"),
    [({"kind": "direction"}, "horizon"), ({"kind": "lottery", "horizon": 6}, "lottery"),
     ({"kind": "move", "horizon": True, "threshold": 0.01}, "horizon"),
     ({"kind": "move", "horizon": 6, "threshold": "lots"}, "lots"),
     ({"kind": "move", "horizon": 6, "threshold": 0}, "above 0")],
)
def test_a_damaged_manifest_label_is_a_bundle_error_naming_it(label, says):
    with pytest.raises(BundleError) as exc:
        LabelSpec.from_dict(label)
    assert says in exc.value.message and "retrain" in exc.value.hint


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [({"kind": "up"}, "'up'"), ({"horizon": 0}, "horizon 0"), ({"threshold": -0.1}, "-0.1"),
     ({"threshold": float("nan")}, "nan"), ({"kind": "triple-barrier", "lower": 0.0}, "0.0")],
)
def test_a_bad_label_is_a_config_error_quoting_it(kwargs, says):
    with pytest.raises(ConfigError) as exc:
        LabelSpec(**kwargs)
    assert says in exc.value.message


def test_what_each_head_answers_as():
    assert LabelSpec(kind="direction").output_field == "up_probability"
    assert LabelSpec(kind="move").output_field == "move_probability"
    assert LabelSpec(kind="threshold").output_field is None


def test_what_a_label_predicts_states_its_barriers_exactly():
    """/models, the manifest and `models show` read this sentence: 1.25% must not be shown as 1.2%."""
    assert "more than 1.25% over the next 6" in LabelSpec(6, 0.0125, "threshold").predicts()
    assert "more than 0.2% either way" in LabelSpec(6, 0.002, "move").predicts()
    tb = LabelSpec(6, 0.0125, "triple-barrier", lower=0.0075).predicts()
    assert "rises 1.25% before it falls 0.75% within the next 6" in tb


@pytest.mark.parametrize(
    ("settings", "says", "fix"),
    [({"label_threshold": 0.0}, "The extra move head (--extra-head auto): A move label needs a threshold above 0",
      "--extra-head none"),
     ({"label": "direction", "extra_head": "direction"}, "'direction' is the label itself", "--extra-head move,"),
     ({"label": "move", "extra_head": "move"}, "'move' is the label itself", "--extra-head direction,")],
)
def test_a_head_the_options_cannot_make_is_named_with_the_fix(tmp_path, settings, says, fix):
    """`--threshold 0` is a fine direction label; what it breaks is the default move head, and the message says so."""
    from xylen.core.settings import Settings
    from xylen.train.pipeline import label_specs

    with pytest.raises(ConfigError) as exc:
        label_specs(Settings(home=tmp_path, **settings))
    assert says in exc.value.message and fix in exc.value.hint
    assert label_specs(Settings(home=tmp_path, label_threshold=0.0, extra_head="none"))[1] == []


def test_reading_a_manifest_label_that_may_be_missing_or_unreadable():
    old = {"horizon": 6, "threshold": 0.002, "kind": "forward_log_return_above_threshold"}
    assert labels.kind_of(old) == "threshold" and labels.kind_of({}) is None
    assert labels.kind_of({"kind": "lottery"}) == "lottery"  # the spelling, even of a label xylen cannot read
    assert labels.read(old) == LabelSpec(6, 0.002, "threshold")
    assert labels.read({}) is None and labels.read({"kind": "lottery", "horizon": 6}) is None
