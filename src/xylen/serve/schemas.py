"""Pydantic models that DOCUMENT the HTTP bodies (OpenAPI at /docs). The hot path never parses with them:
serve/decode.py reads msgspec/orjson values directly (pydantic parsing costs 1.6x requests/s here)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from xylen.core import features, featuresets

CANDLES_DOC = ("At least the answering model's `min_candles` closed candles (GET /models states it: "
               f"{features.MIN_CANDLES} for feature set {features.VERSION}; for {featuresets.CTX_VERSION} 3 days of "
               f"candles plus one but never fewer than {features.MIN_CANDLES}, e.g. 865 at 5m, 73 at 1h, 49 at 2h; "
               "fewer is a 422 naming the number), oldest "
               "first, unique open_time. Each is a Binance "
               "12-field array [open_time, open, high, low, close, volume, close_time, quote_volume, trades, "
               "taker_buy_base, taker_buy_quote, ignore] (numbers or numeric strings) or an object with open_time|t, "
               "open|o, high|h, low|l, close|c, volume|v and optionally close_time|T. The prediction is for the LAST "
               "closed candle. Times are epoch milliseconds; seconds (below 1e11) and microseconds (1e14 and above) "
               "are recognised by their magnitude and converted, nanoseconds are refused. The last "
               "`min_candles` candles must be consecutive candles of the model's interval (no gaps; 422 "
               "names the row). A last candle that is still open -- its close_time, or else its next open time, is "
               "later than the server's clock plus XYLEN_CLOCK_SKEW (default 2 s) -- is dropped and the response "
               "says so in `notes`; send `min_candles` + 1 candles when the last one may be open. A whole klines "
               "page (up to 1,000) is fine: the body must be valid JSON throughout, but only the last "
               "`min_candles` + 1 candles are converted and checked; earlier ones are only counted. Values must be "
               f"finite, prices from {features.PRICE_RANGE[0]:g} to {features.PRICE_RANGE[1]:g} and volumes from 0 to "
               f"{features.MAX_VOLUME:g} (what the features represent finitely); 422 names the candle and field.")


class PredictBody(BaseModel):
    """POST /predict. Send `candles` (models trained by xylen) or `features` (models trained elsewhere)."""

    symbol: str | None = Field(None, examples=["BTCUSDT"], description=(
        "BTCUSDT, or BTC/USDT, BTC-USDT (the same market). With timeframe, routes to model "
        "<symbol lower>-<timeframe> (see exchange); without one, the default model "
        "(XYLEN_DEFAULT_MODEL, the first --model, MODEL_PATH) answers if it has the same timeframe, else 404. "
        "Without timeframe: the default model, or the only model served if it was trained on this symbol "
        "(else 404). Left out: the default model, or the only model served."))
    timeframe: str | None = Field(None, examples=["5m"], description=(
        "Binance interval, e.g. 5m. A model never answers for another timeframe than it was trained on."))
    exchange: str | None = Field(None, examples=["binance"], description=(
        "Whose market the candles are from: binance (the default when left out), binanceus, bybit, okx, kraken or "
        "coinbase. With symbol and timeframe, routes to model <exchange>-<symbol lower>-<timeframe> (binance: "
        "<symbol lower>-<timeframe>); a model never answers for another exchange's market unless it is the default "
        "model, and then `notes` says so."))
    candles: list[list[float | str] | dict[str, float | str]] | None = Field(
        None, min_length=features.MIN_CANDLES, description=CANDLES_DOC)  # the least any feature set needs
    features: list[float | None] | dict[str, float | None] | None = Field(
        None, description="Feature vector in the model's order, or {name: value} (see GET /v2/models/<name>). "
                          "Finite numbers; null means missing (LightGBM's NaN).")
    indicators: dict[str, Any] = Field(default_factory=dict, description=(
        "{name: value}: the features of a model trained elsewhere (a bare MODEL_PATH file, `xylen models "
        "import`), by the model's feature names; other keys are ignored, a missing name is a 422 listing them. "
        "Ignored by models that compute their features from candles."))
    meta: dict[str, Any] = Field(default_factory=dict, description="Accepted and ignored (alpha compat).")


class PredictResponse(BaseModel):
    """The alpha's fields, plus the bundle's other outputs where it has them. `prediction`, `confidence` and
    `probability` are the primary head's: what they mean is the model's label (GET /models: `label.predicts`)."""

    prediction: Literal[0, 1] = Field(description="1 if probability >= 0.5 else 0.")
    confidence: float = Field(description="Probability of the predicted class.", examples=[0.85])
    model_version: str = Field(examples=["v0003"])
    model: str = Field(examples=["btcusdt-5m"])
    probability: float = Field(description=(
        "Probability of class 1 of the model's label (GET /models: `label`), e.g. P(the price is higher 6 candles "
        "from now) for a direction label."))
    feature_set: str = Field(examples=[features.VERSION])
    up_probability: float | None = Field(None, description=(
        "Only for a model with a direction output: P(the close `horizon` candles after the last candle is higher "
        "than its close). The same value as `probability` when the model's own label is direction; otherwise a "
        "second head's. Absent when the model has none (GET /models: `outputs`)."), examples=[0.52])
    move_probability: float | None = Field(None, description=(
        "Only for a model with a move-size head: P(|log return| over the next `horizon` candles > its threshold), "
        "the size of the coming move in either direction -- for position sizing and stop or grid width, not for "
        "which way to trade. Absent when the model has none (GET /models: `outputs`)."), examples=[0.31])
    notes: list[str] = Field(default_factory=list, description=(
        "What the server did with the request besides predicting, e.g. \"dropped the still-open candle opened "
        "at 2024-01-01T00:05:00Z\", or that the default model answered for another symbol."),
        examples=[["dropped the still-open candle opened at 2024-01-01T00:05:00Z"]])


class ErrorResponse(BaseModel):
    error: str = Field(description="What is wrong, naming the field, and the fix.")


class HealthResponse(BaseModel):
    status: Literal["healthy", "unhealthy"]
    uptime_seconds: float
    memory_usage_mb: float
    model_loaded: bool
    model_type: str | None
    model_version: str | None = None
    reason: str | None = None
    pid: int = Field(description="Process id of the worker that answered (xylen serve --workers N).")
    stale: bool = Field(description="True when any served model is older than XYLEN_MODEL_MAX_AGE (default 7 days; "
                                    "its manifest's created_at). A stale model still serves: status stays healthy.")
    stale_models: list[str] = Field(description="The names of the stale served models.", examples=[["btcusdt-5m"]])


class RetrainResponse(BaseModel):
    """The alpha's shape, plus the job id and one result per model (the `xylen retrain --json` output)."""

    status: Literal["success", "error"]
    message: str = Field(examples=["btcusdt-5m: promoted v0004 (holdout log-loss 0.6312 <= live 0.6330 + 0.001)"])
    samples_used: int = Field(description="Rows the candidates trained on, summed over the models.")
    job_id: str = Field(description="32 hex digits; GET /retrain/<job_id> reports it later.")
    results: list[dict[str, Any]] = Field(description=(
        "Per model: name, outcome (promoted, kept, nothing_new, skipped, busy, conflict, error), message, "
        "live_version, candidate_version, mode, new_candles, samples_used, gate, watch, pruned, seconds, "
        "peak_rss_mb, error."))


class RetrainFailed(RetrainResponse):
    error: str = Field(description="What went wrong (the retrain's own message) and the fix.")
    exit_code: int | None = Field(description="The `xylen retrain` exit code (negative: killed by that signal).")


class RetrainAccepted(BaseModel):
    job_id: str
    status: Literal["running"]
    url: str = Field(examples=["/retrain/3f2a9c0e5b7d4e1fa0b1c2d3e4f5a6b7"])


class RetrainJob(BaseModel):
    job_id: str
    state: Literal["running", "succeeded", "failed", "aborted", "lost"] = Field(description=(
        "aborted: the server shut down while it ran (its child got SIGTERM); lost: the server process that ran it "
        "stopped before recording its end."))
    models: list[str] | None = Field(None, description="The models it retrains.")
    pid: int | None = Field(None, description="Process id of the `xylen retrain` child.")
    started_at: str | None = Field(description="ISO-8601 UTC.")
    finished_at: str | None
    exit_code: int | None = Field(description="`xylen retrain` exit code (0 success, 2/3/4/5 errors, negative: "
                                              "killed by that signal); null while running.")
    message: str | None
    result: dict[str, Any] | None = Field(description="The `xylen retrain --json` object, once it ended.")


class LabelInfo(BaseModel):
    """What the model's `probability` is the probability of (the manifest's label, as this xylen reads it)."""

    kind: Literal["direction", "threshold", "move", "triple-barrier"]
    horizon: int = Field(description="N: candles ahead the label looks.")
    threshold: float | None = Field(None, description="theta, a log return (not for direction).")
    lower: float | None = Field(None, description="triple-barrier only: the lower barrier, a log return.")
    description: str = Field(examples=["1 if log(close[t+6] / close[t]) > 0, else 0"])
    predicts: str = Field(examples=["P(the price is higher 6 candles from now)"])


class ModelRow(BaseModel):
    name: str
    version: str
    backend: str
    exchange: str = Field(description=(
        "Whose candles it was trained on (binance, binanceus, bybit, okx, kraken, coinbase); /predict's "
        "`exchange` (default binance) routes to it."), examples=["binance"])
    symbol: str | None = Field(description="The market it was trained on (null: a model imported without one).",
                               examples=["BTCUSDT"])
    interval: str | None = Field(description="Its candle interval (null: a model imported without one).",
                                 examples=["5m"])
    feature_set: str
    n_features: int
    loaded_at: float
    predict_path: str
    label: LabelInfo | None = Field(description="The primary label (null: a model imported without one).")
    outputs: dict[str, str] = Field(description=(
        "The /predict (and /v2 infer) probability fields this model answers with and what each means: "
        "`probability` always, `up_probability` and `move_probability` where it has them."),
        examples=[{"probability": "P(the price is higher 6 candles from now)",
                   "up_probability": "P(the price is higher 6 candles from now)",
                   "move_probability": "P(the price moves more than 0.2% either way over the next 6 candles)"}])
    min_candles: int | None = Field(description=(
        "Candles a /predict request must send (fewer is a 422 naming this number); one more when the last may "
        "still be open. null: the model is sent its features, not candles."), examples=[49])
    summary: str = Field(description=(
        "One sentence on what the model knows, from its walk-forward evaluation (with 95% intervals), or what is "
        "missing for one."), examples=["forecasts move size (AUC 0.73 [0.72, 0.74]); direction edge over baseline "
                                       "+0.004 [-0.002, +0.010]: none measurable"])
    members: list[dict[str, str]] = Field(default_factory=list, description=(
        "An ensemble's members (`xylen models ensemble create`) and the version of each it answers with now "
        "(a member without @version follows its live version); empty for a single model."),
        examples=[[{"name": "btcusdt-5m-a", "version": "v0003"}, {"name": "btcusdt-5m-b", "version": "v0002"}]])


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["FP32", "FP64"]
    data: list[Any] = Field(description="Row-major values, flat or nested.")
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    """Open Inference Protocol v2 (KServe v2) REST inference request; one input of shape [N, n_features]."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor] = Field(min_length=1, max_length=1)
    outputs: list[dict[str, Any]] | None = Field(None, description=(
        "[{\"name\": ...}]: the outputs to return (see the model's metadata); left out, all of them."))


class V2OutTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[V2OutTensor] = Field(description=(
        "One FP64 tensor of shape [N] per output: `probability`, plus `up_probability` and `move_probability` "
        "where the model has them (as in /predict), or those the request's `outputs` named."))


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in (
        (400, "Malformed JSON or wrong content type."), (401, "Missing or wrong API key."),
        (404, "No such model, or no model for the request's symbol and timeframe (the message names the live "
              "models and the `xylen train` command that adds one)."),
        (413, "Body larger than max_body_bytes."),
        (415, "Content-Type is not JSON (a state-changing POST without an API key must send application/json)."),
        (421, "Host header not answered by a server without API keys: not loopback, not in XYLEN_ALLOWED_HOSTS."),
        (422, "A field is missing or invalid; the message names it."),
        (503, "No model loaded yet (see /health/ready)."))
}


RETRAIN_ERRORS: dict[int | str, dict[str, Any]] = {
    202: {"model": RetrainAccepted, "description": "?wait=false: the job started; poll GET /retrain/<job_id>."},
    **{c: ERRORS[c] for c in (400, 401, 413, 415, 421)},
    404: {"model": ErrorResponse, "description": "?model= names no live model (the message lists them)."},
    409: {"model": RetrainFailed, "description": (
        "A retrain is already running (the message names its job), the server serves a MODEL_PATH (no registry), "
        "or the retrain failed on a model or registry problem (exit 4).")},
    422: {"model": RetrainFailed, "description": "A bad query parameter or body, or the retrain failed on settings, "
                                                 "data or training (exit 2, 3 or 5)."},
    503: {"model": RetrainFailed, "description": "The retrain child failed internally (exit 1), was killed, or was "
                                                 "aborted because the server is shutting down."},
}
RETRAIN_PARAMETERS = [
    {"name": "model", "in": "query", "required": False, "schema": {"type": "array", "items": {"type": "string"}},
     "style": "form", "explode": True,
     "description": "A live model to retrain (repeatable). Default: every live model of the registry."},
    {"name": "wait", "in": "query", "required": False, "schema": {"type": "boolean", "default": True},
     "description": "false: answer 202 at once with the job id instead of waiting for the job to end."},
]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` inlined, for ``openapi_extra`` request bodies."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]
