"""Keep heavy optional libraries out of the serving (and verifying) process.

lightgbm imports pandas, scikit-learn, matplotlib, dask, pyarrow... whenever they are importable (+60 MB RSS,
~1 s of start-up); a server predicting from numpy arrays needs none of them. Polars is only for the readers.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any

BLOCKED = frozenset({"pandas", "sklearn", "matplotlib", "polars", "pyarrow", "dask", "datatable", "graphviz"})
_ALLOWED: set[str] = set()  # blocked names this process needs after all (allow_heavy_import)


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        top = fullname.partition(".")[0]
        if top in BLOCKED and top not in _ALLOWED:
            raise ModuleNotFoundError(f"{fullname} is not loaded in the xylen server (memory)", name=fullname)
        return None


def allow_heavy_import(name: str) -> None:
    """Let ``name`` load in this process after all: the server's store feed reads the candle store with polars
    (~35 MB RSS) once a client asks for pushed predictions, and only then."""
    _ALLOWED.add(name)


def block_heavy_imports() -> list[str]:
    """Make those imports fail in this process from now on. Returns any that were already imported."""
    if not any(isinstance(f, _Blocker) for f in sys.meta_path):
        sys.meta_path.insert(0, _Blocker())
    return sorted(m for m in BLOCKED if m in sys.modules)


# lightgbm's optional integrations: training from numpy arrays uses none of them, and scikit-learn alone costs a
# trainer ~1-4 s of start-up (scipy.stats) -- more than a warm-start retrain itself.
LIGHTGBM_EXTRAS = frozenset({"pandas", "sklearn", "matplotlib", "pyarrow", "dask", "datatable", "graphviz", "cffi"})


class _During(importlib.abc.MetaPathFinder):
    """Refuses the extras' modules not loaded yet: with dask itself loaded (a Dask worker, `train --cluster`),
    lightgbm would still import dask.dataframe, pandas and scikit-learn for its Dask estimators (~3 s)."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname.partition(".")[0] in self.names and fullname not in sys.modules:
            raise ModuleNotFoundError(f"{fullname} is skipped while lightgbm loads", name=fullname)
        return None


def import_lightgbm() -> Any:
    """``import lightgbm`` without its optional integrations (unless they are loaded already): they stay importable
    afterwards for whoever needs them (the report's matplotlib), lightgbm just does not load them for itself."""
    if "lightgbm" in sys.modules:
        return sys.modules["lightgbm"]
    finder = _During(LIGHTGBM_EXTRAS)
    sys.meta_path.insert(0, finder)
    try:
        import lightgbm
    finally:
        sys.meta_path.remove(finder)
    return lightgbm
