"""The alpha's routes (/predict, /health, /retrain) plus liveness/readiness, /metrics and model admin."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
import psutil
from fastapi import APIRouter, Request, Response

from xylen.core.errors import XylenError
from xylen.serve import schemas
from xylen.serve.auth import DETAIL
from xylen.serve.decode import RequestError
from xylen.serve.metrics import CONTENT_TYPE
from xylen.serve.predict import predict
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
            "pid": os.getpid()}  # which worker answered (xylen serve --workers N)
    return json_response(body, 503 if reason else 200)


@router.get("/health/live", tags=["health"], summary="Liveness: 200 while the process runs")
@router.get("/livez", tags=["health"], include_in_schema=False)
async def live() -> Response:
    return json_response({"status": "alive"})


@router.get("/health/ready", tags=["health"], summary="Readiness: 200 when every configured model is warm",
            responses={503: {"model": schemas.ErrorResponse}})
@router.get("/readyz", tags=["health"], include_in_schema=False)
async def ready(request: Request) -> Response:
    """Open to probes without a key; names the models, versions and the reason only with a valid key."""
    st = state_of(request)
    reason = st.holder.not_ready_reason()
    detail = request.scope.get(DETAIL, True)
    if reason:
        why = reason if detail else "the reason is shown only with the API key (keyless servers: to loopback Hosts)"
        return json_response({"status": "not ready", "error": f"not ready: {why}"}, 503)
    if not detail:
        return json_response({"status": "ready"})
    return json_response({"status": "ready", "models": {n: m.version for n, m in st.holder.live.items()}})


@router.post("/retrain", tags=["admin"], status_code=501, responses={501: {"model": schemas.ErrorResponse}})
async def retrain() -> Response:
    """Not implemented in this server: say so instead of pretending."""
    return json_response({"error": "Retraining from the server is not implemented yet (no `xylen retrain` "
                                   "pipeline exists). Run `xylen train` and this server will hot-swap the new "
                                   "version within 2 s.", "status": "not_implemented"}, 501)


@router.get("/metrics", tags=["health"], summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE)


def model_rows(st: ServeState) -> list[dict[str, Any]]:
    return [{"name": m.name, "version": m.version, "backend": m.bundle.backend,
             "feature_set": m.bundle.manifest.feature_set.version, "n_features": m.bundle.num_feature(),
             "loaded_at": m.loaded_at, "predict_path": m.predict_path} for m in st.holder.live.values()]


@router.get("/models", tags=["admin"], response_model=list[schemas.ModelRow])
async def models(request: Request) -> Response:
    """The live models and their versions."""
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
