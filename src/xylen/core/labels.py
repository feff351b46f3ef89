"""Labels: what a model is trained to predict, as a documented choice recorded in every manifest.

Every label reads the ``horizon`` candles after candle t (and never candle t's own future beyond them); the last
``horizon`` rows have no label (NaN). r = log(close[t+N] / close[t]).

- ``threshold``:       1 if r > theta. The alpha's label: a move up by more than the round-trip fee. It mixes two
                       questions (will it move? which way?) and on real data it mostly answers the first.
- ``direction``:       1 if r > 0. Up or down: what a bot acting on the sign of the signal needs.
- ``move``:            1 if |r| > theta. Will the price move by more than theta either way: the move-size head,
                       for position sizing and stop or grid width.
- ``triple-barrier``:  1 if the high of a candle in t+1..t+N reaches close[t] * exp(theta) before any low reaches
                       close[t] * exp(-lower) (the lower barrier; default theta); 0 when the lower barrier is hit
                       first, in the same candle as the upper one (which came first is unknown: counted as a loss),
                       or neither is hit within N candles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from xylen.core.errors import BundleError, ConfigError

KINDS = ("direction", "threshold", "move", "triple-barrier")
DEFAULT_KIND = "direction"
# the alpha's label kind as older manifests spell it
_LEGACY = {"forward_log_return_above_threshold": "threshold"}
# /predict fields of the heads whose label says what they are
OUTPUT_FIELD = {"direction": "up_probability", "move": "move_probability"}


@dataclass(frozen=True)
class LabelSpec:
    horizon: int = 6  # N candles ahead
    threshold: float = 0.002  # theta, a log return; default = the round-trip fee at 0.1% per side
    kind: str = "threshold"  # the alpha's; `xylen train` defaults to DEFAULT_KIND (settings.label)
    lower: float | None = None  # triple-barrier: the lower barrier as a positive log return (default: theta)

    def __post_init__(self) -> None:
        # canonical: theta means nothing to the direction label, the lower barrier only to the triple barrier
        if self.kind == "direction":
            object.__setattr__(self, "threshold", 0.0)
        if self.kind != "triple-barrier":
            object.__setattr__(self, "lower", None)
        elif self.lower is None:  # the default lower barrier is theta, spelled out so a round trip compares equal
            object.__setattr__(self, "lower", self.threshold)
        if self.kind not in KINDS:
            raise ConfigError(f"Label {self.kind!r} is not one xylen knows.", hint=f"use one of: {', '.join(KINDS)}.")
        if not (isinstance(self.horizon, int) and self.horizon >= 1):
            raise ConfigError(f"Label horizon {self.horizon!r} is not a whole number of candles >= 1.",
                              hint="use e.g. --horizon 6.")
        if not (np.isfinite(self.threshold) and self.threshold >= 0):
            raise ConfigError(f"Label threshold {self.threshold!r} is not a log return >= 0.",
                              hint="use e.g. --threshold 0.002.")
        if self.kind in ("move", "triple-barrier") and self.threshold <= 0:
            raise ConfigError(f"A {self.kind} label needs a threshold above 0 (got {self.threshold!r}).",
                              hint="use e.g. --threshold 0.002.")
        if self.lower is not None and not (np.isfinite(self.lower) and self.lower > 0):
            raise ConfigError(f"Lower barrier {self.lower!r} is not a log return above 0.",
                              hint="use e.g. --lower-barrier 0.002.")

    @property
    def barrier_down(self) -> float:
        return self.threshold if self.lower is None else self.lower

    @property
    def output_field(self) -> str | None:
        """The /predict field that carries this head's probability besides ``probability`` (or None)."""
        return OUTPUT_FIELD.get(self.kind)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        if self.kind != "triple-barrier":
            d.pop("lower")
        else:
            d["lower"] = self.barrier_down
        if self.kind == "direction":
            d.pop("threshold")
        return d | {"description": self.describe(), "predicts": self.predicts()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSpec:
        """From a manifest's ``label`` (any xylen version's). Raises BundleError naming what is wrong."""
        kind = _LEGACY.get(str(d.get("kind", "threshold")), str(d.get("kind", "threshold")))
        try:
            horizon = d["horizon"]
            if isinstance(horizon, bool) or not isinstance(horizon, int):
                raise TypeError
            return cls(
                horizon=horizon,
                threshold=float(d.get("threshold", 0.0 if kind == "direction" else 0.002)),
                kind=kind,
                lower=float(d["lower"]) if d.get("lower") is not None else None,
            )
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            why = exc.message if isinstance(exc, ConfigError) else f"{type(exc).__name__} {exc}"
            raise BundleError(
                f"The manifest's label {str(d)[:120]!r} is not a label this xylen reads ({why}).",
                hint="the manifest is damaged or from a newer xylen; retrain with `xylen train`.",
            ) from None

    def describe(self) -> str:
        """The definition, as a formula."""
        n, th = self.horizon, f"{self.threshold:g}"
        r = f"log(close[t+{n}] / close[t])"
        if self.kind == "threshold":
            return f"1 if {r} > {th}, else 0"
        if self.kind == "direction":
            return f"1 if {r} > 0, else 0"
        if self.kind == "move":
            return f"1 if |{r}| > {th}, else 0"
        return (
            f"1 if a high in t+1..t+{n} reaches close[t]*exp({th}) before a low reaches "
            f"close[t]*exp(-{self.barrier_down:g}), else 0 (both in one candle: 0)"
        )

    def predicts(self) -> str:
        """What the probability means, in words (for /models, the report and the manifest)."""
        n = self.horizon
        pct = f"{self.threshold * 100:g}%"  # as many digits as describe()'s theta: 1.25%, not 1.2%
        if self.kind == "threshold":
            return f"P(the price rises more than {pct} over the next {n} candles)"
        if self.kind == "direction":
            return f"P(the price is higher {n} candles from now)"
        if self.kind == "move":
            return f"P(the price moves more than {pct} either way over the next {n} candles)"
        return (
            f"P(the price rises {pct} before it falls {self.barrier_down * 100:g}% within the next {n} candles)"
        )


def kind_of(label: dict[str, Any]) -> str | None:
    """A manifest label's kind as today's xylen spells it (None: none recorded); the label may be unreadable."""
    kind = label.get("kind")
    return None if kind is None else _LEGACY.get(str(kind), str(kind))


def read(label: dict[str, Any]) -> LabelSpec | None:
    """A manifest's label, or None when it has none or one this xylen cannot read (an imported model)."""
    if not label:
        return None
    try:
        return LabelSpec.from_dict(label)
    except BundleError:
        return None


def make(
    close: np.ndarray, spec: LabelSpec, high: np.ndarray | None = None, low: np.ndarray | None = None
) -> np.ndarray:
    """Labels as float (1.0/0.0); the last ``horizon`` rows have no future and are NaN.

    ``high`` and ``low`` are needed by the triple-barrier label only."""
    n, h = len(close), spec.horizon
    y = np.full(n, np.nan)
    if n <= h:
        return y
    lc = np.log(close)
    if spec.kind == "triple-barrier":
        if high is None or low is None:
            raise ValueError("the triple-barrier label needs highs and lows")
        y[: n - h] = _triple_barrier(lc, np.log(high), np.log(low), h, spec.threshold, spec.barrier_down)
        return y
    fwd = lc[h:] - lc[:-h]
    if spec.kind == "threshold":
        y[: n - h] = (fwd > spec.threshold).astype(np.float64)
    elif spec.kind == "direction":
        y[: n - h] = (fwd > 0).astype(np.float64)
    else:
        y[: n - h] = (np.abs(fwd) > spec.threshold).astype(np.float64)
    return y


def _triple_barrier(lc: np.ndarray, lh: np.ndarray, ll: np.ndarray, h: int, up: float, down: float) -> np.ndarray:
    """Rows 0..n-h-1: 1 where the upper barrier is touched strictly before the lower one within h candles."""
    m = len(lc) - h
    never = h + 1
    first_up = np.full(m, never)
    first_down = np.full(m, never)
    for k in range(h, 0, -1):  # newest step first, so the earliest touch is written last
        hit_up = lh[k : k + m] - lc[:m] >= up
        hit_down = ll[k : k + m] - lc[:m] <= -down
        first_up[hit_up] = k
        first_down[hit_down] = k
    return (first_up < first_down).astype(np.float64)


def up_labels(close: np.ndarray, horizon: int) -> np.ndarray:
    """The direction of the move over ``horizon`` candles (1 up, 0 not), NaN without a future: every model's
    probability is also scored against it ("up-vs-down AUC")."""
    return make(close, LabelSpec(horizon=horizon, kind="direction"))


def forward_returns(close: np.ndarray, horizon: int) -> np.ndarray:
    n = len(close)
    out = np.full(n, np.nan)
    if n > horizon:
        out[: n - horizon] = close[horizon:] / close[:-horizon] - 1.0
    return out
