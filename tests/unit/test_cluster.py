"""The Dask scheduler address rule and the import cost on a Dask worker (no cluster started)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xylen.core.cluster import address_problem, check_address
from xylen.core.errors import ConfigError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "tls://sched.internal:8786", "tcp://[::1]:8786",
                                     " tcp://10.0.0.5:1 "])
def test_scheduler_addresses(address: str) -> None:
    assert address_problem(address) is None
    assert check_address(address) == address.strip()


@pytest.mark.parametrize("address", ["", "127.0.0.1:8786", "tcp://127.0.0.1", "http://h:8786", "tcp://h:0",
                                     "tcp://h:65536", "tcp://a b:1", "tcp://h:8786/x"])
def test_anything_else_is_refused_with_the_form(address: str) -> None:
    with pytest.raises(ConfigError) as exc:
        check_address(address, source="--cluster")
    assert f"--cluster {address!r} is not a Dask scheduler address" in exc.value.message
    assert "tcp://HOST:PORT" in (exc.value.hint or "")


def test_lightgbm_loads_without_its_dask_estimators_where_dask_is_loaded() -> None:
    """A Dask worker (and `train --cluster`'s client) has dask loaded: lightgbm must still not pull in
    dask.dataframe, pandas and scikit-learn for itself (seconds per process)."""
    pytest.importorskip("distributed")
    code = (
        "import sys, distributed; from xylen.core.imports import import_lightgbm; lgb = import_lightgbm(); "
        "print(sorted(m for m in ('dask.dataframe', 'pandas', 'sklearn') if m in sys.modules)); assert lgb.Booster"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
