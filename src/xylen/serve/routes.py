"""The alpha's routes (/predict, /health, /retrain) plus liveness/readiness, /metrics and model admin."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
import psutil
from fastapi import APIRouter, Request, Response

from xylen.core import labels, summary
from xylen.core.bundle import Manifest
from xylen.core.errors import ConfigError, XylenError
from xylen.core.registry import check_name
from xylen.serve import schemas
from xylen.serve.auth import DETAIL
from xylen.serve.decode import RequestError
from xylen.serve.metrics import CONTENT_TYPE
from xylen.serve.model_health import stale_names
from xylen.serve.predict import predict
from xylen.serve.retrain_jobs import Busy, http_answer, well_formed
from xylen.serve.state import ServeState

router = APIRouter()
JSON = "application/json"


def state_of(request: Request) -> ServeState:
    return request.app.state.xylen  # type: ignore[no-any-return]


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type=JSON)


@router.post("/predict", tags=["predict"], summary="Signal for the last candle",
             response_model=schemas.PredictResponse, responses=schemas.ERRORS,
             openapi_extra={"requestBody": {"required": True, "content": {
                 JSON: {"schema": schemas.PredictBody.model_json_schema()}}}})
async def predict_route(request: Request) -> Response:
    """Features of the last closed candle (the same code as training) -> the model of `<symbol>-<timeframe>`;
    without one, the configured default model if it has the same timeframe, else 404. Normally answered by the
    gate's fast path; this route documents it and serves it when the app runs without the gate."""
    return Response(predict(state_of(request), await request.body()), media_type=JSON)


@router.get("/health", tags=["health"], response_model=schemas.HealthResponse)
async def health(request: Request) -> Response:
    """The alpha's health shape; 503 while no model is ready or while shutting down."""
    st = state_of(request)
    reason = st.holder.not_ready_reason()
    models = st.holder.live
    live = st.holder.default() or st.holder.only() or (models[min(models)] if models else None)
    body = {"status": "unhealthy" if reason else "healthy", "uptime_seconds": round(st.uptime(), 3),
            "memory_usage_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
            "model_loaded": live is not None, "model_type": live.bundle.backend if live else None,
            "model_version": live.version if live else None, "reason": reason,
            "pid": os.getpid(),  # which worker answered (xylen serve --workers N)
            # a stale model still serves: the flag is for monitoring, the status stays "healthy"
            "stale_models": stale_names(models, st.settings.model_max_age)}
    body["stale"] = bool(body["stale_models"])
    return json_response(body, 503 if reason else 200)


@router.get("/health/live", tags=["health"], summary="Liveness: 200 while the process runs")
@router.get("/livez", tags=["health"], include_in_schema=False)
async def live() -> Response:
    return json_response({"status": "alive"})


@router.get("/health/ready", tags=["health"], summary="Readiness: 200 when every configured model is warm",
            responses={503: {"model": schemas.ErrorResponse}})
@router.get("/readyz", tags=["health"], include_in_schema=False)
async def ready(request: Request) -> Response:
    """Open to probes without a key; names the models, versions and the reason only with a valid key. With
    `--workers N`, 200 only when every worker is ready (the reason names one that is not)."""
    st = state_of(request)
    reason = st.not_ready_reason()
    detail = request.scope.get(DETAIL, True)
    if reason:
        why = reason if detail else "the reason is shown only with the API key (keyless servers: to loopback Hosts)"
        return json_response({"status": "not ready", "error": f"not ready: {why}"}, 503)
    if not detail:
        return json_response({"status": "ready"})
    return json_response({"status": "ready", "models": {n: m.version for n, m in st.holder.live.items()}})


@router.post("/retrain", tags=["retrain"], summary="Retrain live models now (one job at a time)",
             response_model=schemas.RetrainResponse, responses=schemas.RETRAIN_ERRORS,
             openapi_extra={"parameters": schemas.RETRAIN_PARAMETERS})
async def retrain(request: Request) -> Response:
    """Runs `xylen retrain --json` (the same pipeline as cron and `--loop`) in a child process: each model's
    candidate is trained on the newest candles of the store and promoted only if it passes the gate; this server
    (and every other one on the registry) hot-swaps a promotion in. Answers in the alpha's shape
    `{status, message, samples_used}` plus `job_id` and `results` (one per model) when the job ends, or at once
    with 202 and the job's URL under `?wait=false`. One retrain runs at a time per XYLEN_HOME: 409 names the
    running job. Without an API key, send `Content-Type: application/json` (415 otherwise) and no body or `{}`."""
    st = state_of(request)
    jobs = st.jobs
    reg = st.holder.registry
    if jobs is None or reg is None:
        raise RequestError(409, "This server serves one MODEL_PATH model, not a registry, so there is nothing to "
                                "retrain: a retrain publishes a new version in XYLEN_HOME/models and promotes it. "
                                "hint: serve the registry (unset MODEL_PATH), or import the model with `xylen models "
                                "import` and serve that.")
    names, wait = retrain_options(request.query_params.multi_items(), await request.body())
    if st.holder.draining:  # a child started now would only be aborted by the shutdown under way
        raise RequestError(503, "The server is shutting down; no retrain was started. hint: send it to a running "
                                "server, or run `xylen retrain`.")
    live = await asyncio.to_thread(reg.live_names)
    unknown = [n for n in names or [] if n not in live]
    if unknown or not live:
        raise RequestError(404, f"No live model named {unknown[0]!r} to retrain; live models: "
                                f"{', '.join(live) or 'none'}. hint: train one with `xylen train`, or leave ?model= "
                                "out to retrain every live model." if unknown else
                                f"No live models in {reg.location!r} to retrain. hint: train one with `xylen train`.")
    try:
        job_id = await jobs.start(names, names or live)
    except Busy as exc:
        raise RequestError(409, str(exc)) from None
    except XylenError as exc:  # an unwritable XYLEN_HOME, a child that cannot start
        raise RequestError(503, f"{exc.message} hint: {exc.hint}" if exc.hint else exc.message) from None
    if not wait:
        return json_response({"job_id": job_id, "status": "running", "url": f"/retrain/{job_id}"}, 202)
    status, body = http_answer(await jobs.wait(job_id))
    return json_response(body, status)


def retrain_options(query: list[tuple[str, str]], body: bytes) -> tuple[list[str] | None, bool]:
    """(model names or None for all, wait) from ?model=NAME (repeatable) and ?wait=true|false; the body carries
    nothing (empty, {} or null)."""
    names: list[str] = []
    waits = []
    for key, value in query:
        if key == "model":
            try:
                check_name(value)
            except ConfigError:
                raise RequestError(422, f"?model={value[:64]!r} is not a model name. hint: names look like "
                                        "btcusdt-5m; see GET /models.") from None
            if value not in names:
                names.append(value)
        elif key == "wait":
            waits.append(value)
        else:
            raise RequestError(422, f"Unknown query parameter {key[:40]!r} for POST /retrain. hint: use "
                                    "?model=NAME (repeatable) and ?wait=false.")
    if len(waits) > 1 or (waits and waits[0].lower() not in _BOOLS):
        raise RequestError(422, f"?wait={'&wait='.join(w[:20] for w in waits)!r} is not one true or false. hint: "
                                "?wait=false answers 202 at once with the job's URL; leave it out to wait.")
    if body.strip():
        try:
            got = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RequestError(400, f"The body is not JSON ({body[:40]!r}). hint: send no body, or {{}}.") from None
        if got not in ({}, None):
            raise RequestError(422, f"POST /retrain takes no body fields (got {str(got)[:80]!r}). hint: choose "
                                    "models with ?model=NAME and ?wait=false; send no body, or {}.")
    return names or None, _BOOLS.get(waits[0].lower(), True) if waits else True


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@router.get("/retrain/{job_id}", tags=["retrain"], summary="A retrain job's state and result",
            response_model=schemas.RetrainJob, responses={
                **{c: schemas.ERRORS[c] for c in (401, 421)},
                404: {"model": schemas.ErrorResponse, "description": "No such job (ids are 32 hex digits; the last "
                                                                     "100 jobs are kept)."}})
async def retrain_job(request: Request, job_id: str) -> Response:
    """Any worker answers for any job (records live in XYLEN_HOME/retrain/jobs and survive a restart). `state`:
    running, succeeded, failed, aborted (the server shut down while it ran), lost (the process that ran it
    stopped before recording its end)."""
    jobs = state_of(request).jobs
    # the id is checked before it can name a file
    record = await asyncio.to_thread(jobs.read, job_id) if jobs is not None and well_formed(job_id) else None
    if record is None:
        raise RequestError(404, f"No retrain job {job_id[:40]!r}. hint: use the job_id POST /retrain returned (32 "
                                "hex digits); the last 100 jobs are kept.")
    return json_response({k: record.get(k) for k in schemas.RetrainJob.model_fields})


@router.get("/metrics", tags=["health"], summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE)


def model_rows(st: ServeState) -> list[dict[str, Any]]:
    return [{"name": m.name, "version": m.version, "backend": m.bundle.backend, "exchange": m.exchange,
             "symbol": m.bundle.manifest.symbol, "interval": m.interval,
             "feature_set": m.bundle.manifest.feature_set.version, "n_features": m.bundle.num_feature(),
             "loaded_at": m.loaded_at, "predict_path": m.predict_path, "label": label_of(m.bundle.manifest),
             "outputs": m.bundle.outputs(), "min_candles": m.bundle.min_candles,
             "summary": summary.sentence(m.bundle.manifest),
             "members": [{"name": x.name, "version": x.version} for x in m.members]} for m in st.holder.live.values()]


def label_of(manifest: Manifest) -> dict[str, Any] | None:
    """The manifest's label as every xylen writes it now (older spellings read through LabelSpec: the same
    definition, with its description and what it predicts); None for a model without one (imported)."""
    spec = labels.read(manifest.label)
    return spec.to_dict() if spec is not None else None


@router.get("/models", tags=["admin"], response_model=list[schemas.ModelRow])
async def models(request: Request) -> Response:
    """The live models: version, what each predicts (`label`, `outputs`: the /predict fields and their meaning),
    how many candles a /predict request must send (`min_candles`), and one sentence on what the model is worth
    (`summary`, from its walk-forward evaluation)."""
    return json_response(model_rows(state_of(request)))


@router.post("/models/{name}/rollback", tags=["admin"], responses={
    **schemas.ERRORS, 409: {"model": schemas.ErrorResponse,
                            "description": "No previous live version, or it failed verification; nothing changed."}})
async def rollback(request: Request, name: str) -> Response:
    """Make the previous live version live again (rewrites CURRENT.json; the watcher swaps it in). Without an API
    key, send `Content-Type: application/json` (415 otherwise): a web page on another origin cannot."""
    st = state_of(request)
    reg = st.holder.registry
    if reg is None or name not in st.holder.live:
        raise RequestError(404, f"No live model named {name[:64]!r}; see GET /models.")
    try:
        # verified in a child process first (~0.4 s): off the event loop, so requests keep flowing meanwhile
        ptr = await asyncio.to_thread(reg.rollback, name)
    except XylenError as exc:
        raise RequestError(409, exc.message) from None
    return json_response({"name": name, "version": ptr.version, "status": "rolled back; swapping in"})
