"""Keep heavy optional libraries out of the serving (and verifying) process.

lightgbm imports pandas, scikit-learn, matplotlib, dask, pyarrow... whenever they are importable (+60 MB RSS,
~1 s of start-up); a server predicting from numpy arrays needs none of them. Polars is only for the readers.
"""

from __future__ import annotations

import importlib.abc
import sys

BLOCKED = frozenset({"pandas", "sklearn", "matplotlib", "polars", "pyarrow", "dask", "datatable", "graphviz"})


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{fullname} is not loaded in the xylen server (memory)", name=fullname)
        return None


def block_heavy_imports() -> list[str]:
    """Make those imports fail in this process from now on. Returns any that were already imported."""
    if not any(isinstance(f, _Blocker) for f in sys.meta_path):
        sys.meta_path.insert(0, _Blocker())
    return sorted(m for m in BLOCKED if m in sys.modules)
