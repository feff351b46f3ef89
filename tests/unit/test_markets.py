"""The one naming rule for exchanges, markets and their models (core/markets.py), and the manifest's exchange."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.builders import build_bundle
from xylen.core.bundle import read_manifest
from xylen.core.errors import BundleError, ConfigError
from xylen.core.markets import canonical_symbol, check_exchange, exchange_flag, market_label, model_name
from xylen.core.registry import Registry

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("sent", "canonical"),
    [("BTCUSDT", "BTCUSDT"), ("btc/usdt", "BTCUSDT"), ("BTC-USDT", "BTCUSDT"), (" btc_usd ", "BTCUSD"),
     ("XBTUSD", "XBTUSD"), ("1000PEPE/USDT", "1000PEPEUSDT")],
)
def test_every_common_spelling_is_one_canonical_symbol(sent: str, canonical: str) -> None:
    assert canonical_symbol(sent) == canonical


@pytest.mark.parametrize("bad", ["BTC//USDT", "B/T-C", "BTC/USDT:USDT", "../etc", "BTC USDT", "", "X", "Ä/USDT",
                                 "A" * 21])
def test_anything_else_is_refused_quoting_it(bad: str) -> None:
    with pytest.raises(ConfigError) as exc:
        canonical_symbol(bad)
    assert repr(bad.strip()[:40]) in exc.value.message and "BTC/USDT" in exc.value.hint


def test_exchanges_are_checked_with_the_list_and_a_close_match() -> None:
    assert check_exchange(" Kraken ") == "kraken"
    with pytest.raises(ConfigError) as exc:
        check_exchange("krakn")
    assert "'krakn'" in exc.value.message and "did you mean kraken" in exc.value.message
    assert "binance, binanceus, bybit, okx, kraken, coinbase" in exc.value.hint


def test_binance_keeps_its_names_and_the_others_carry_the_exchange() -> None:
    assert model_name("BTCUSDT", "5m") == model_name("BTCUSDT", "5m", "binance") == "btcusdt-5m"
    assert model_name("BTCUSD", "1h", "kraken") == "kraken-btcusd-1h"
    assert model_name("BTCUSDT", "1M", "okx") == "okx-btcusdt-1mo"
    assert (market_label("binance", "BTCUSDT"), market_label("okx", "BTCUSDT")) == ("BTCUSDT", "okx BTCUSDT")
    assert (exchange_flag("binance"), exchange_flag("okx")) == ("", " --exchange okx")


def test_a_manifest_naming_an_unknown_exchange_is_refused(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "models")
    version = build_bundle(reg, "kraken-btcusd-5m", rounds=3, rows=400, exchange="kraken", symbol="BTCUSD")
    folder = reg.path("kraken-btcusd-5m", version)
    assert read_manifest(folder).exchange == "kraken"
    raw = orjson.loads((folder / "manifest.json").read_bytes())
    assert raw["exchange"] == "kraken"
    for odd in ("Kraken", "ftx", "", 7):
        (folder / "manifest.json").write_bytes(orjson.dumps(raw | {"exchange": odd}))
        with pytest.raises(BundleError) as exc:
            read_manifest(folder)
        assert "exchange" in exc.value.message, exc.value.message
    del raw["exchange"]  # a bundle written before exchanges: Binance's candles
    (folder / "manifest.json").write_bytes(orjson.dumps(raw))
    assert read_manifest(folder).exchange == "binance"
