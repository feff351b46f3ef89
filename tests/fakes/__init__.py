"""Test doubles that speak real protocols on loopback (see ``binance.py``)."""

from tests.fakes.binance import FakeBinance, ServedRequest, python_binance_client
from tests.fakes.faults import Fault, Faults
from tests.fakes.klines import FakeClock, as_array, candle_close_time, load_series, normalize_rows

__all__ = [
    "FakeBinance",
    "FakeClock",
    "Fault",
    "Faults",
    "ServedRequest",
    "as_array",
    "candle_close_time",
    "load_series",
    "normalize_rows",
    "python_binance_client",
]
