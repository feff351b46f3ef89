"""One-row prediction without Booster.predict's Python overhead (~tens of µs a call).

LightGBM's C API has a prepared single-row path: ``LGBM_BoosterPredictForMatSingleRowFastInit`` builds a
FastConfig once (predict type, feature count, ``num_threads=1``) and ``...SingleRowFast`` then predicts a
row into a preallocated buffer. A ``RowPredictor`` built here -- for a bundle's primary head and for each of its
extra heads -- is checked equal to that head's ``Booster.predict`` on the bundle's golden rows before it may
serve; any other backend (or a multiclass model) uses its ``predict`` on a one-row matrix.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np

from xylen.core.backends import Predictor
from xylen.core.bundle import ModelBundle

RowPredictor = Callable[[np.ndarray], float]

_C_API_PREDICT_NORMAL = 0
_C_API_DTYPE_FLOAT64 = 1


class LightGBMFastRow:
    """Calls of one instance must not overlap (one buffer); the server calls it from its event loop only."""

    def __init__(self, booster: object, n_features: int) -> None:
        from lightgbm import basic

        # A private CDLL view of the loaded library: our argtypes never change lightgbm's own prototypes.
        lib = ctypes.CDLL(basic._LIB._name)
        self._booster = booster  # the FastConfig points into it: keep it alive as long as we are
        self._free = lib.LGBM_FastConfigFree
        self._handle = ctypes.c_void_p()
        init = lib.LGBM_BoosterPredictForMatSingleRowFastInit
        handle = booster._handle  # type: ignore[attr-defined]
        rc = init(handle, ctypes.c_int(_C_API_PREDICT_NORMAL), ctypes.c_int(0), ctypes.c_int(-1),
                  ctypes.c_int(_C_API_DTYPE_FLOAT64), ctypes.c_int32(n_features), ctypes.c_char_p(b"num_threads=1"),
                  ctypes.byref(self._handle))
        if rc != 0:
            raise RuntimeError(basic._LIB.LGBM_GetLastError().decode())
        self._n = n_features
        self._out = np.zeros(1, dtype=np.float64)
        self._out_len = ctypes.c_int64(0)
        fn = lib.LGBM_BoosterPredictForMatSingleRowFast
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        fn.restype = ctypes.c_int
        self._fn = fn
        self._args = (self._handle, ctypes.addressof(self._out_len), self._out.ctypes.data)

    def __call__(self, row: np.ndarray) -> float:
        if row.dtype != np.float64 or not row.flags.c_contiguous or row.size != self._n:
            row = np.ascontiguousarray(row, dtype=np.float64).reshape(-1)
            if row.size != self._n:
                raise ValueError(f"expected {self._n} features, got {row.size}")
        handle, out_len, out = self._args
        if self._fn(handle, row.ctypes.data, out_len, out) != 0:
            raise RuntimeError("LightGBM single-row prediction failed")
        return float(self._out[0])

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value:
            self._free(handle)


def row_predictor(bundle: ModelBundle) -> tuple[RowPredictor, str]:
    """The fastest exact one-row predictor for ``bundle``'s primary head and its name (for logs and /v2 metadata)."""
    return fast_row(bundle.predictor, bundle.num_feature(), golden_rows(bundle))


def head_row_predictors(bundle: ModelBundle) -> list[tuple[str, RowPredictor, str]]:
    """(field, one-row predictor, its name) for each extra head, each checked like the primary's."""
    rows = golden_rows(bundle) if bundle.heads else None
    return [(field, *fast_row(pred, bundle.num_feature(), rows)) for field, pred in bundle.heads]


def golden_rows(bundle: ModelBundle) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in r] for r in bundle.manifest.golden.rows], dtype=np.float64)


def fast_row(pred: Predictor, n_features: int, rows: np.ndarray | None) -> tuple[RowPredictor, str]:
    """LightGBM's single-row C path for ``pred`` when it gives exactly ``pred.predict`` on ``rows`` (the
    bundle's golden rows; none: never unchecked), else ``pred.predict`` on a one-row matrix."""
    booster = getattr(pred, "booster", None)
    single = pred.backend == "lightgbm" and getattr(pred, "num_class", 1) == 1
    if single and booster is not None and rows is not None and len(rows):
        try:
            fast = LightGBMFastRow(booster, n_features)
            want = pred.predict(rows)
            got = np.array([fast(np.ascontiguousarray(r)) for r in rows])
            if np.array_equal(got, want):
                return fast, "lightgbm-c-api-single-row"
        except (AttributeError, OSError, RuntimeError, ValueError):
            pass  # an older/newer lightgbm without this API shape: the exact slow path below still works

    def slow(row: np.ndarray) -> float:
        return float(pred.predict(row.reshape(1, -1))[0])

    return slow, f"{pred.backend}-predict"
