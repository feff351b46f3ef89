"""One Settings object for every command.

Precedence: CLI flag > environment > XYLEN_HOME/models.env > default. In the environment and in models.env a
setting is read from XYLEN_<NAME>, else from the alpha's name (MODEL_PATH, PORT, ...); no other name counts.
Core code receives a ``Settings``; it never reads ``os.environ`` itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from xylen.core.errors import ConfigError, XylenError

ProfileName = Literal["m1", "m4", "8gb", "16gb", "auto"]
BackendName = Literal["lightgbm", "onnx", "torch"]

# The alpha's settings names, accepted verbatim (environment or models.env) next to the XYLEN_ ones.
ALPHA_NAMES = {
    "model_path": "MODEL_PATH",
    "model_type": "MODEL_TYPE",
    "port": "PORT",
    "host": "HOST",
    "lgbm_max_memory_gb": "LGBM_MAX_MEMORY_GB",
    "lgbm_num_threads": "LGBM_NUM_THREADS",
    "training_interval": "TRAINING_INTERVAL",
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _alias(field: str) -> AliasChoices:
    names = [f"XYLEN_{field.upper()}"]
    if field in ALPHA_NAMES:
        names.append(ALPHA_NAMES[field])
    return AliasChoices(field, *names)


# The environment and the settings file a load_settings() call resolves against (tests pass their own
# environment instead of os.environ; a bare Settings() reads os.environ and no file).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("xylen_environ", default=None)
_ENV_FILE: ContextVar[Path | None] = ContextVar("xylen_env_file", default=None)


def lookup(field: str, values: Mapping[str, str | None]) -> tuple[str, str] | None:
    """(name, value) of ``field`` in ``values``: XYLEN_<FIELD> first, then the alpha's name; names are matched
    without regard to case. Nothing else counts: a bare SYMBOL or HOME in the environment is not a setting."""
    upper = {k.upper(): v for k, v in values.items() if v is not None}
    for name in _env_names(field):
        if name in upper:
            return name, str(upper[name])
    return None


class _NamedSource(PydanticBaseSettingsSource):
    """Settings from one mapping of variable names (the environment, or models.env), resolved by ``lookup``."""

    def __init__(self, settings_cls: type[BaseSettings], values: Callable[[], Mapping[str, str | None]]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # unused: __call__ does it all
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = self._values()
        out: dict[str, Any] = {}
        for field in self.settings_cls.model_fields:
            found = lookup(field, values)
            if found is not None:
                out[field] = found[1]
        return out


def _environment() -> Mapping[str, str | None]:
    env = _ENVIRON.get()
    return os.environ if env is None else env


def _settings_file() -> Mapping[str, str | None]:
    """models.env for load_settings: a file that cannot be read is an error, never silently no settings (it may
    hold the API keys: a server started without them would run open)."""
    path = _ENV_FILE.get()
    if path is None:
        return {}
    try:
        return {k.upper(): v for k, v in dotenv_values(path).items()}
    except UnicodeDecodeError:
        raise ConfigError(
            f"Settings file {str(path)!r} is not UTF-8 text.",
            hint="rewrite it as KEY=value lines, see models.env.example.",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"Cannot read settings file {str(path)!r}: {exc.strerror or exc}.", hint="fix its permissions (chmod 600)."
        ) from None


def default_home() -> Path:
    return Path("~/.xylen").expanduser()


class Settings(BaseSettings):
    """Every setting xylen reads. Each is documented in models.env.example and shown by `xylen config`."""

    model_config = SettingsConfigDict(
        env_prefix="XYLEN_",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
        validate_default=True,
    )

    home: Path = Field(
        default_factory=default_home,
        validation_alias=_alias("home"),
        description="Root folder: models.env, data/ (the candle store), models/ (the registry), logs/.",
    )
    models_url: str | None = Field(
        None,
        validation_alias=_alias("models_url"),
        description="Where the model registry lives: s3://BUCKET/PREFIX (S3 or an S3-compatible store; needs the "
        "xylen[s3] extra), or a local folder. Unset: XYLEN_HOME/models.",
    )
    data_url: str | None = Field(
        None,
        validation_alias=_alias("data_url"),
        description="Where the candle store lives: s3://BUCKET/PREFIX (S3 or an S3-compatible store; needs the "
        "xylen[s3] extra), or a local folder. Unset: XYLEN_HOME/data.",
    )
    s3_endpoint_url: str | None = Field(
        None,
        validation_alias=_alias("s3_endpoint_url"),
        description="S3 endpoint for s3:// locations (MinIO, Ceph, ...); unset: AWS. Credentials come from "
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and are never logged.",
    )
    # --- data / training -------------------------------------------------------------------------------
    symbol: str = Field(
        "BTCUSDT", validation_alias=_alias("symbol"), description="Default trading pair for train/serve, e.g. BTCUSDT."
    )
    exchange: str = Field(
        "binance",
        validation_alias=_alias("exchange"),
        description="Default exchange for collect/train/retrain: binance, binanceus, bybit, okx, kraken or coinbase.",
    )
    interval: str = Field(
        "5m",
        validation_alias=_alias("interval"),
        description="Default candle interval (Binance spelling: 1m 5m 15m 1h 4h 1d ...).",
    )
    profile: ProfileName = Field(
        "auto",
        validation_alias=_alias("profile"),
        description="Hardware profile for training: m1, m4, 8gb, 16gb or auto.",
    )
    lgbm_max_memory_gb: float | None = Field(
        None,
        gt=0,
        validation_alias=_alias("lgbm_max_memory_gb"),
        description="Memory cap for training in GB; overrides the profile.",
    )
    lgbm_num_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        validation_alias=_alias("lgbm_num_threads"),
        description="LightGBM threads for training; overrides the profile.",
    )
    label_horizon: int = Field(
        6,
        ge=1,
        le=1000,
        validation_alias=_alias("label_horizon"),
        description="Label horizon N: candles ahead the return is measured over.",
    )
    label_threshold: float = Field(
        0.002,
        ge=0,
        lt=1,
        validation_alias=_alias("label_threshold"),
        description="Theta, a log return over N candles: threshold label r > theta, move label or head |r| > theta, "
        "triple-barrier upper barrier. Not used by the direction label.",
    )
    label: Literal["direction", "threshold", "move", "triple-barrier"] = Field(
        "direction",
        validation_alias=_alias("label"),
        description="What `xylen train` predicts: direction (up over N candles), threshold (up more than theta), "
        "move (|move| above theta) or triple-barrier (theta up before lower down). See the README's Labels.",
    )
    extra_head: Literal["auto", "move", "direction", "none"] = Field(
        "auto",
        validation_alias=_alias("extra_head"),
        description="A second head trained beside the label: auto = the move-size head (none for --label move).",
    )
    label_lower_barrier: float | None = Field(
        None,
        gt=0,
        lt=1,
        validation_alias=_alias("label_lower_barrier"),
        description="Triple-barrier label: the lower barrier as a log return (default: the threshold).",
    )
    feature_set: Literal["ohlcv-v2", "ohlcv-ctx-v1"] = Field(
        "ohlcv-v2",
        validation_alias=_alias("feature_set"),
        description="Features `xylen train` uses: ohlcv-v2 (49-candle requests) or ohlcv-ctx-v1 (adds 1-3 day "
        "context; requests of 3 days of candles + 1, at least 49; intervals 5m..2h). A retrain keeps the "
        "model's.",
    )
    fee: float = Field(
        0.001,
        ge=0,
        lt=0.05,
        validation_alias=_alias("fee"),
        description="Trading fee per side used by the backtest (0.001 = 0.1%).",
    )
    folds: int = Field(
        5, ge=2, le=20, validation_alias=_alias("folds"), description="Walk-forward folds for evaluation."
    )
    entry_threshold: float = Field(
        0.5,
        gt=0,
        lt=1,
        validation_alias=_alias("entry_threshold"),
        description="Backtest: go long while the predicted probability is at least this.",
    )
    training_interval: float = Field(
        1800.0,
        gt=0,
        validation_alias=_alias("training_interval"),
        description="Seconds between runs of `xylen retrain --loop` (also 30m, 6h, 1d); the alpha's default 1800.",
    )
    retrain_min_new_samples: int = Field(
        100,
        ge=1,
        validation_alias=_alias("retrain_min_new_samples"),
        description="`xylen retrain` does nothing for a model until this many closed candles arrived after its "
        "training window.",
    )
    retrain_holdout: int = Field(
        2000,
        ge=200,
        validation_alias=_alias("retrain_holdout"),
        description="The retrain gate's holdout: the most recent max(this many candles, 10% of the window).",
    )
    retrain_tolerance: float = Field(
        0.001,
        ge=0,
        lt=1,
        validation_alias=_alias("retrain_tolerance"),
        description="Promote a retrained candidate when its holdout log-loss <= the live model's + this.",
    )
    retrain_max_warm_starts: int = Field(
        5,
        ge=0,
        validation_alias=_alias("retrain_max_warm_starts"),
        description="`--warm-start` does a full refit instead after this many warm starts in a row.",
    )
    retrain_warm_rounds: int = Field(
        50,
        ge=1,
        le=10000,
        validation_alias=_alias("retrain_warm_rounds"),
        description="Trees a warm start adds to the live model.",
    )
    keep_versions: int = Field(
        10,
        ge=1,
        validation_alias=_alias("keep_versions"),
        description="Retention: keep the last N versions of each model (plus pinned ones, the live one and the "
        "rollback target).",
    )
    model_max_age: float = Field(
        7 * 86400.0,
        gt=0,
        validation_alias=_alias("model_max_age"),
        description="A live model created longer ago than this (seconds, or 12h, 7d) is flagged stale.",
    )
    dask_cluster: str | None = Field(
        None,
        validation_alias=_alias("dask_cluster"),
        description="Dask scheduler address (tcp://HOST:PORT): `xylen train` and `xylen retrain` run there "
        "(`--cluster` overrides it; needs the xylen[dask] extra). Unset: train in this process.",
    )
    # --- serving ---------------------------------------------------------------------------------------
    model_path: Path | None = Field(
        None,
        validation_alias=_alias("model_path"),
        description="Serve this one model instead of the registry: a bundle folder, or a bare model file "
        "(LightGBM text, ONNX, TorchScript) whose features the requests send by name.",
    )
    model_type: BackendName | None = Field(
        None,
        validation_alias=_alias("model_type"),
        description="Backend the served models must have: lightgbm, onnx or torch; a model of another kind is "
        "refused at start (exit 2). Unset: taken from the model file or bundle.",
    )
    default_model: str | None = Field(
        None,
        validation_alias=_alias("default_model"),
        description="Model that answers /predict for a symbol without its own model (same timeframe only) and "
        "requests without symbol/timeframe. Unset: only each series' own model answers.",
    )
    clock_skew: float = Field(
        2.0,
        ge=0,
        le=3600,
        validation_alias=_alias("clock_skew"),
        description="Seconds the server's clock may lag the exchange's: /predict drops a last candle that closes "
        "later than now plus this (the still-open candle).",
    )
    host: str = Field(
        "127.0.0.1",
        validation_alias=_alias("host"),
        description="Address `xylen serve` binds; non-loopback needs API keys.",
    )
    port: int = Field(
        8000, ge=1, le=65535, validation_alias=_alias("port"), description="Port `xylen serve` listens on."
    )
    api_keys: str = Field(
        "",
        validation_alias=_alias("api_keys"),
        repr=False,
        description="Comma-separated API keys accepted by the server (never logged).",
    )
    api_keys_file: Path | None = Field(
        None, validation_alias=_alias("api_keys_file"), description="File of sha256-hashed API keys, one per line."
    )
    allow_unauthenticated: bool = Field(
        False,
        validation_alias=_alias("allow_unauthenticated"),
        description="Allow a non-loopback bind without API keys.",
    )
    allowed_hosts: str = Field(
        "",
        validation_alias=_alias("allowed_hosts"),
        description="Comma-separated Host names a server without API keys answers besides loopback ones "
        "(DNS-rebinding guard); * allows any.",
    )
    max_body_bytes: int = Field(
        1_000_000,
        ge=1024,
        validation_alias=_alias("max_body_bytes"),
        description="Request bodies above this many bytes get 413.",
    )
    ws_max_subscriptions: int = Field(
        64,
        ge=1,
        le=100_000,
        validation_alias=_alias("ws_max_subscriptions"),
        description="Subscriptions one /ws/predict connection may hold; one more is an error message.",
    )
    ws_max_message_bytes: int = Field(
        1_048_576,
        ge=1024,
        le=64 * 1_048_576,
        validation_alias=_alias("ws_max_message_bytes"),
        description="/ws/predict frames above this many bytes close the connection with code 1009.",
    )
    ui: bool = Field(
        True,
        validation_alias=_alias("ui"),
        description="Serve the dashboard at /ui (false, or `xylen serve --no-ui`: every /ui path is 404).",
    )
    ui_session_max_age: float = Field(
        12 * 3600.0,
        ge=1,  # the cookie's Max-Age is whole seconds: 0.5 would be Max-Age=0, a login dropped at once
        le=30 * 86400,
        validation_alias=_alias("ui_session_max_age"),
        description="How long a dashboard login lasts (seconds, or 12h, 7d; at least 1 s, at most 30d).",
    )
    ui_session_secret_file: Path | None = Field(
        None,
        validation_alias=_alias("ui_session_secret_file"),
        description="File holding the dashboard's session secret (64+ hex characters, mode 600/640): replicas "
        "with the same file accept each other's logins, and a restart keeps them. Unset: a random secret per start.",
    )
    ui_sample_s: float = Field(
        10.0,
        ge=0.5,
        le=3600,
        validation_alias=_alias("ui_sample_s"),
        description="Seconds between two samples of the dashboard's server history (360 samples are kept).",
    )
    log_format: Literal["text", "json"] = Field(
        "text", validation_alias=_alias("log_format"), description="Log format: text or json."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias=_alias("log_level"), description="Log level."
    )
    # --- collect ---------------------------------------------------------------------------------------
    binance_base_url: str = Field(
        "https://data-api.binance.vision",
        validation_alias=_alias("binance_base_url"),
        description="Binance REST base URL (keyless market data by default).",
    )
    exchange_base_url: str | None = Field(
        None,
        validation_alias=_alias("exchange_base_url"),
        description="REST base URL for the exchanges xylen reaches through ccxt (all but binance); unset: the "
        "exchange's own public API. Point it at a mirror, a proxy or a test fake.",
    )
    binance_ws_url: str = Field(
        "wss://data-stream.binance.vision/ws",
        validation_alias=_alias("binance_ws_url"),
        description="Binance websocket base URL for kline streams.",
    )
    weight_budget_share: float = Field(
        0.5,
        gt=0,
        le=1,
        validation_alias=_alias("weight_budget_share"),
        description="Share of Binance's 6000/min request weight the collector may use.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # CLI flag > environment > models.env > default; within each, XYLEN_<NAME> before the alpha's name
        return init_settings, _NamedSource(settings_cls, _environment), _NamedSource(settings_cls, _settings_file)

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, v: str) -> str:
        from xylen.core.markets import canonical_symbol  # the one symbol rule (store, collect, train)

        try:
            return canonical_symbol(v)
        except ConfigError:
            raise ValueError("a symbol is a pair like BTCUSDT or BTC/USDT") from None

    @field_validator("exchange")
    @classmethod
    def _exchange(cls, v: str) -> str:
        from xylen.core.markets import EXCHANGES, check_exchange

        try:
            return check_exchange(v)
        except ConfigError:
            raise ValueError(f"use one of {', '.join(EXCHANGES)}") from None

    @field_validator("exchange_base_url", mode="before")
    @classmethod
    def _exchange_url(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip() or None
            if v is not None and not v.startswith(("http://", "https://")):
                raise ValueError("an http:// or https:// URL, like https://api.bybit.com")
        return v

    @field_validator("models_url", "data_url", mode="before")
    @classmethod
    def _location_url(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip() or None  # XYLEN_MODELS_URL= (empty) means unset
            if v is not None and "://" in v:
                if not v.startswith("s3://"):
                    raise ValueError("s3://BUCKET/PREFIX or a local folder (other URL schemes are not supported)")
                from xylen.core.storage_s3 import parse_s3_url

                try:
                    parse_s3_url(v)
                except XylenError as exc:
                    raise ValueError(f"{exc.message} {exc.hint or ''}".strip()) from None
        return v

    @field_validator("s3_endpoint_url", mode="before")
    @classmethod
    def _s3_endpoint(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip() or None
            if v is not None and not v.startswith(("http://", "https://")):
                raise ValueError("an http:// or https:// URL, like http://127.0.0.1:9000")
        return v

    @field_validator("dask_cluster", mode="before")
    @classmethod
    def _dask_cluster(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip() or None  # XYLEN_DASK_CLUSTER= (empty) means unset
            if v is not None:
                from xylen.core.cluster import address_problem

                why = address_problem(v)
                if why:
                    raise ValueError(why)
        return v

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: str) -> str:
        from xylen.core.intervals import INTERVALS  # polars-free: serving never loads the readers

        if v not in INTERVALS:
            raise ValueError(f"use one of {' '.join(INTERVALS)} (1m is a minute, 1M a calendar month)")
        return v

    @field_validator("default_model", mode="before")
    @classmethod
    def _default_model(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip() or None  # XYLEN_DEFAULT_MODEL= (empty) means unset
            if v is not None:
                from xylen.core.registry import check_name  # the registry's one name rule

                try:
                    check_name(v)
                except ConfigError:
                    raise ValueError(
                        "a model name is lowercase letters, digits, '.', '_' and '-', like btcusdt-5m"
                    ) from None
        return v

    @field_validator("training_interval", "model_max_age", "ui_session_max_age", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        if isinstance(v, str):
            m = _DURATION.match(v)
            if not m:
                raise ValueError("a duration is seconds (3600) or a number with s, m, h or d (6h)")
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, v: str) -> str:
        return ",".join(host_entry(e) for e in v.split(",") if e.strip())

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def data_location(self) -> str | Path:
        """The candle store's location: XYLEN_DATA_URL (an s3:// URL or a folder), else XYLEN_HOME/data."""
        if self.data_url is None:
            return self.data_dir
        return self.data_url if self.data_url.startswith("s3://") else Path(self.data_url).expanduser()

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def models_location(self) -> str | Path:
        """The registry's location: XYLEN_MODELS_URL (an s3:// URL or a folder), else XYLEN_HOME/models."""
        if self.models_url is None:
            return self.models_dir
        return self.models_url if self.models_url.startswith("s3://") else Path(self.models_url).expanduser()

    @property
    def env_file(self) -> Path:
        return self.home / "models.env"

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    def allowed_host_list(self) -> list[str]:
        return [h for h in self.allowed_hosts.split(",") if h]


_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")


def host_entry(entry: str) -> str:
    """A host name as xylen compares it: lowercased, without a DNS root dot, IP literals in their shortest form and
    IPv6 in brackets ("[::1]", how a Host header spells them). For XYLEN_ALLOWED_HOSTS entries and Host headers
    alike, so that both spell one host the same way. ValueError for anything that is not a host name."""
    import ipaddress

    e = entry.strip().lower()
    if e == "*":
        return e
    bare = e[1:-1] if e.startswith("[") and e.endswith("]") else e
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        ip = None
    if isinstance(ip, ipaddress.IPv6Address):
        return f"[{ip.compressed}]"
    if ip is not None:
        return ip.compressed
    e = e.removesuffix(".")  # the DNS root: "xylen.internal." is "xylen.internal"
    if not _HOST_NAME.fullmatch(e):
        raise ValueError(
            f"{entry.strip()!r} is not a host name; list names or IP addresses without scheme, port or path, "
            "e.g. xylen.internal,10.0.0.5 (or * for any)"
        )
    return e


def _env_names(field: str) -> list[str]:
    names = [f"XYLEN_{field.upper()}"]
    if field in ALPHA_NAMES:
        names.append(ALPHA_NAMES[field])
    return names


def _resolve_home(overrides: dict[str, Any], environ: dict[str, str]) -> Path:
    if overrides.get("home") is not None:
        return Path(overrides["home"]).expanduser()
    if environ.get("XYLEN_HOME"):
        return Path(environ["XYLEN_HOME"]).expanduser()
    return default_home()


def load_settings(overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Resolve settings: CLI overrides > environment > models.env > defaults. Raises ConfigError."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    env = dict(os.environ if environ is None else environ)
    home = _resolve_home(overrides, env)
    env_file = home / "models.env"
    token = _ENVIRON.set(env)
    file_token = _ENV_FILE.set(env_file if env_file.is_file() else None)
    try:
        if env_file.exists() and not os.access(env_file, os.R_OK):
            raise ConfigError(f"Cannot read settings file {str(env_file)!r}.", hint="fix its permissions (chmod 600).")
        return Settings(**(overrides | {"home": home}))
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, overrides, env, env_file)) from None
    finally:
        _ENVIRON.reset(token)
        _ENV_FILE.reset(file_token)


def _format_validation(exc: ValidationError, overrides: dict[str, Any], env: dict[str, str], env_file: Path) -> str:
    lines = ["Invalid settings:"]
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        origin = describe_source(field, overrides, env, env_file)
        lines.append(f"  {origin} = {err.get('input')!r}: {err['msg']}")
    return "\n".join(lines)


def describe_source(field: str, overrides: dict[str, Any], env: dict[str, str], env_file: Path) -> str:
    return _source(field, overrides, env, _read_env_file(env_file)).label


@dataclass(frozen=True)
class Source:
    kind: Literal["cli", "env", "models.env", "default"]
    name: str

    @property
    def label(self) -> str:
        if self.kind == "cli":
            return f"--{self.name.replace('_', '-')} (command line)"
        if self.kind == "env":
            return f"{self.name} (environment)"
        if self.kind == "models.env":
            return f"{self.name} (models.env)"
        return f"{self.name} (default)"


def _read_env_file(env_file: Path) -> dict[str, str | None]:
    try:
        return {k.upper(): v for k, v in dotenv_values(env_file).items()} if env_file.is_file() else {}
    except (OSError, UnicodeDecodeError):
        return {}


def _source(field: str, overrides: dict[str, Any], env: dict[str, str], file_values: dict[str, str | None]) -> Source:
    """Where ``field``'s value came from: the same ``lookup`` the settings sources use, in the same order."""
    if field in overrides:
        return Source("cli", field)
    found = lookup(field, env)
    if found is not None:
        return Source("env", found[0])
    found = lookup(field, file_values)
    if found is not None:
        return Source("models.env", found[0])
    return Source("default", f"XYLEN_{field.upper()}")


def explain(
    settings: Settings, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Each setting with its value and where it came from (for `xylen config`). Secrets are masked."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    env = dict(os.environ if environ is None else environ)
    file_values = _read_env_file(settings.env_file)
    rows = []
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        if name == "api_keys":
            value = f"<{len(settings.api_key_list())} key(s) set>" if value else ""
        src = _source(name, overrides, env, file_values)
        rows.append(
            {
                "setting": name,
                "env": _env_names(name),
                "value": value if value is None else str(value),
                "source": src.kind,
                "source_name": src.name,
                "description": info.description or "",
            }
        )
    return rows


def unknown_env_file_keys(settings: Settings) -> list[str]:
    """Keys in models.env that no setting reads (usually typos)."""
    known = {n for f in Settings.model_fields for n in _env_names(f)}
    return sorted(k for k in _read_env_file(settings.env_file) if k not in known)
