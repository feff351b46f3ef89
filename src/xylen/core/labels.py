"""The label: did the log return over the next N candles exceed theta?"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LabelSpec:
    horizon: int = 6  # N candles ahead
    threshold: float = 0.002  # theta, log return; default = round-trip fees at 0.1% per side
    kind: str = "forward_log_return_above_threshold"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        return f"1 if log(close[t+{self.horizon}] / close[t]) > {self.threshold:g}, else 0"


def make(close: np.ndarray, spec: LabelSpec) -> np.ndarray:
    """Labels as float (1.0/0.0); the last ``horizon`` rows have no future and are NaN."""
    n = len(close)
    y = np.full(n, np.nan)
    if n > spec.horizon:
        lc = np.log(close)
        fwd = lc[spec.horizon :] - lc[: -spec.horizon]
        y[: n - spec.horizon] = (fwd > spec.threshold).astype(np.float64)
    return y


def forward_returns(close: np.ndarray, horizon: int) -> np.ndarray:
    n = len(close)
    out = np.full(n, np.nan)
    if n > horizon:
        out[: n - horizon] = close[horizon:] / close[:-horizon] - 1.0
    return out
