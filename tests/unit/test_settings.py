"""Settings: precedence, the alpha's names, models.env, readable errors; profiles."""

from __future__ import annotations

import pytest

from xylen import profiles
from xylen.core.errors import ConfigError
from xylen.core.settings import Settings, explain, load_settings, unknown_env_file_keys

pytestmark = pytest.mark.unit


def test_precedence_cli_env_file_default(tmp_path):
    (tmp_path / "models.env").write_text("XYLEN_PORT=7000\nXYLEN_SYMBOL=ethusdt\nLGBM_NUM_THREADS=3\n")
    env = {"XYLEN_HOME": str(tmp_path), "XYLEN_PORT": "7100"}
    s = load_settings({}, environ=env)
    assert (s.port, s.symbol, s.lgbm_num_threads, s.interval) == (7100, "ETHUSDT", 3, "5m")
    s = load_settings({"port": 7200}, environ=env)
    assert s.port == 7200
    src = {r["setting"]: (r["source"], r["source_name"]) for r in explain(s, {"port": 7200}, env)}
    assert src["port"] == ("cli", "port")
    assert src["symbol"] == ("models.env", "XYLEN_SYMBOL")
    assert src["lgbm_num_threads"] == ("models.env", "LGBM_NUM_THREADS")
    assert src["home"] == ("env", "XYLEN_HOME")
    assert src["interval"][0] == "default"


def test_alpha_names_are_accepted(tmp_path):
    env = {
        "XYLEN_HOME": str(tmp_path),
        "MODEL_PATH": "/srv/model",
        "MODEL_TYPE": "onnx",
        "PORT": "8100",
        "HOST": "0.0.0.0",
        "LGBM_MAX_MEMORY_GB": "1.5",
        "LGBM_NUM_THREADS": "2",
        "TRAINING_INTERVAL": "6h",
    }
    s = load_settings({}, environ=env)
    assert str(s.model_path) == "/srv/model" and s.model_type == "onnx"
    assert (s.port, s.host, s.lgbm_max_memory_gb, s.lgbm_num_threads) == (8100, "0.0.0.0", 1.5, 2)
    assert s.training_interval == 6 * 3600


def test_symbol_spellings_and_the_exchange_setting(tmp_path):
    s = load_settings({}, environ={"XYLEN_HOME": str(tmp_path), "XYLEN_SYMBOL": "btc/usdt", "XYLEN_EXCHANGE": "Kraken"})
    assert (s.symbol, s.exchange, s.exchange_base_url) == ("BTCUSDT", "kraken", None)
    s = load_settings({}, environ={"XYLEN_HOME": str(tmp_path), "XYLEN_EXCHANGE_BASE_URL": " "})
    assert (s.exchange, s.exchange_base_url) == ("binance", None)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"XYLEN_PORT": "eighty"}, "XYLEN_PORT (environment) = 'eighty'"),
        ({"PORT": "99999"}, "PORT (environment) = '99999'"),
        ({"XYLEN_PROFILE": "9gb"}, "XYLEN_PROFILE (environment) = '9gb'"),
        ({"XYLEN_INTERVAL": "7m"}, "use one of 1s 1m"),
        ({"TRAINING_INTERVAL": "soon"}, "a duration is seconds"),
        ({"XYLEN_SYMBOL": "BTC//USDT"}, "a pair like BTCUSDT or BTC/USDT"),
        ({"XYLEN_SYMBOL": "../etc"}, "XYLEN_SYMBOL (environment) = '../etc'"),
        ({"XYLEN_EXCHANGE": "ftx"}, "use one of binance, binanceus, bybit, okx, kraken, coinbase"),
        ({"XYLEN_EXCHANGE_BASE_URL": "api.bybit.com"}, "an http:// or https:// URL"),
    ],
)
def test_bad_values_name_the_variable_and_the_fix(tmp_path, env, needle):
    with pytest.raises(ConfigError) as exc:
        load_settings({}, environ={"XYLEN_HOME": str(tmp_path), **env})
    assert needle in exc.value.message


def test_bad_value_in_models_env_names_the_file(tmp_path):
    (tmp_path / "models.env").write_text("LGBM_MAX_MEMORY_GB=lots\nXYLEN_PROFIL=8gb\n")
    with pytest.raises(ConfigError, match=r"LGBM_MAX_MEMORY_GB \(models.env\) = 'lots'"):
        load_settings({}, environ={"XYLEN_HOME": str(tmp_path)})
    (tmp_path / "models.env").write_text("XYLEN_PROFIL=8gb\n")
    s = load_settings({}, environ={"XYLEN_HOME": str(tmp_path)})
    assert unknown_env_file_keys(s) == ["XYLEN_PROFIL"]


def test_every_setting_is_documented_in_the_example_file():
    from pathlib import Path

    example = (Path(__file__).parents[2] / "models.env.example").read_text()
    for name, info in Settings.model_fields.items():
        assert f"XYLEN_{name.upper()}" in example, name
        assert info.description, name


def test_profiles_auto_and_overrides():
    assert profiles.auto_name(8 * 2**30, "linux", "x86_64") == "8gb"
    assert profiles.auto_name(32 * 2**30, "linux", "x86_64") == "16gb"
    assert profiles.auto_name(8 * 2**30, "darwin", "arm64") == "m1"
    assert profiles.auto_name(24 * 2**30, "darwin", "arm64") == "m4"
    p = profiles.resolve("16gb", max_memory_gb=1.25, num_threads=3, cpu_count=2)
    assert (p.name, p.memory_gb, p.threads) == ("16gb", 1.25, 3)
    assert profiles.resolve("m4", cpu_count=2).threads == 2  # capped at the cores there are
    for name in profiles.NAMES:
        prof = profiles.load(name)
        assert prof.num_leaves > 1 and prof.memory_gb > 0 and prof.train_window_days > 0
    with pytest.raises(ConfigError, match="Unknown profile '9gb'"):
        profiles.load("9gb")


def test_only_xylen_and_alpha_names_count(tmp_path, monkeypatch):
    """A bare SYMBOL or HOME in the environment is not a setting (HOME made a bare Settings() use $HOME itself)."""
    env = {"XYLEN_HOME": str(tmp_path), "SYMBOL": "ETHUSDT", "INTERVAL": "1h", "FOLDS": "9", "API_KEYS": "k"}
    s = load_settings({}, environ=env)
    assert (s.symbol, s.interval, s.folds, s.api_keys) == ("BTCUSDT", "5m", 5, "")
    (tmp_path / "models.env").write_text("SYMBOL=ETHUSDT\nPROFILE=m4\n")
    s = load_settings({}, environ=env)
    assert (s.symbol, s.profile) == ("BTCUSDT", "auto")
    assert unknown_env_file_keys(s) == ["PROFILE", "SYMBOL"]
    monkeypatch.setenv("HOME", str(tmp_path / "somebody"))
    monkeypatch.delenv("XYLEN_HOME", raising=False)
    monkeypatch.setenv("SYMBOL", "ETHUSDT")
    bare = Settings()
    assert bare.home == tmp_path / "somebody" / ".xylen" and bare.symbol == "BTCUSDT"


@pytest.mark.parametrize("where", ["env", "models.env"])
def test_xylen_name_beats_the_alpha_name_and_config_says_so(tmp_path, where):
    """With XYLEN_PORT and PORT both set, XYLEN_PORT wins, and `xylen config` reports that value with that source."""
    lines = {"XYLEN_PORT": "7001", "PORT": "7002"}
    env = {"XYLEN_HOME": str(tmp_path)}
    if where == "env":
        env |= lines
    else:
        (tmp_path / "models.env").write_text("PORT=7002\nXYLEN_PORT=7001\n")
    s = load_settings({}, environ=env)
    assert s.port == 7001
    row = next(r for r in explain(s, {}, env) if r["setting"] == "port")
    assert (row["value"], row["source"], row["source_name"]) == ("7001", where, "XYLEN_PORT")
    # the environment beats models.env whatever the spelling
    (tmp_path / "models.env").write_text("XYLEN_PORT=7003\n")
    s = load_settings({}, environ={"XYLEN_HOME": str(tmp_path), "PORT": "7004"})
    row = next(r for r in explain(s, {}, {"PORT": "7004"}) if r["setting"] == "port")
    assert s.port == 7004 and (row["source"], row["source_name"]) == ("env", "PORT")


def test_config_command_reports_the_value_in_use(tmp_path):
    from typer.testing import CliRunner

    from xylen.cli import app

    res = CliRunner().invoke(
        app, ["--home", str(tmp_path), "config", "--json"], env={"XYLEN_PORT": "7001", "PORT": "7002"}
    )
    assert res.exit_code == 0, res.output
    import orjson

    port = next(r for r in orjson.loads(res.stdout)["settings"] if r["setting"] == "port")
    assert (port["value"], port["source_name"]) == ("7001", "XYLEN_PORT")


def test_a_models_env_that_is_not_utf8_is_an_error_not_silence(tmp_path):
    """One stray byte must not drop every setting in the file (among them the API keys: the server would run open)."""
    (tmp_path / "models.env").write_bytes(b"# caf\xe9\nXYLEN_API_KEYS=sekrit\nXYLEN_PORT=9123\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_settings({}, environ={"XYLEN_HOME": str(tmp_path)})
    from typer.testing import CliRunner

    from xylen.cli import app

    res = CliRunner().invoke(app, ["--home", str(tmp_path), "serve"])
    assert res.exit_code == 2 and "is not UTF-8 text" in res.output
