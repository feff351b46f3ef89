"""Open Inference Protocol v2 (KServe v2 REST): health, model metadata, and infer on a feature matrix.

Inputs: one tensor of datatype FP32 or FP64 and shape [N, n_features] (data flat or nested, row-major).
Output: FP64 "probability" of shape [N]. Errors are ``{"error": "..."}`` as the protocol specifies.
The binary-tensor extension is not supported (tritonclient: pass ``binary_data=False``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from xylen import __version__
from xylen.serve import schemas
from xylen.serve.decode import RequestError, loads_object
from xylen.serve.holder import Live
from xylen.serve.routes import json_response, state_of
from xylen.serve.state import ServeState

router = APIRouter(prefix="/v2", tags=["v2"])
OUTPUT = "probability"
MAX_ROWS = 100_000


def _live(st: ServeState, name: str, version: str | None = None) -> Live:
    live = st.holder.live.get(name)
    if live is None:
        known = ", ".join(sorted(st.holder.live)) or "none loaded"
        raise RequestError(404, f"Unknown model {name[:64]!r}; known: {known}.")
    if version is not None and version != live.version:
        raise RequestError(
            404, f"Model {name!r} serves version {live.version}, not {version[:32]!r}; only the live version is served."
        )
    return live


def _metadata(live: Live) -> dict[str, Any]:
    n = live.bundle.num_feature()
    return {
        "name": live.name,
        "versions": [live.version],
        "platform": f"xylen-{live.bundle.backend}",
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, n]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP64", "shape": [-1]}],
        "parameters": {
            "feature_names": live.bundle.feature_names,
            "feature_set": live.bundle.manifest.feature_set.version,
        },
    }


@router.get("", summary="Server metadata")
async def server_metadata() -> Response:
    return json_response({"name": "xylen", "version": __version__, "extensions": []})


@router.get("/health/live")
async def v2_live() -> Response:
    return json_response({"live": True})


@router.get("/health/ready")
async def v2_ready(request: Request) -> Response:
    ok = state_of(request).holder.not_ready_reason() is None
    return json_response({"ready": ok}, 200 if ok else 503)


@router.get("/models", summary="Live models (repository index)")
async def v2_models(request: Request) -> Response:
    return json_response(
        {
            "models": [
                {"name": m.name, "version": m.version, "state": "READY"} for m in state_of(request).holder.live.values()
            ]
        }
    )


@router.get("/models/{name}", responses=schemas.ERRORS)
async def model_metadata(request: Request, name: str) -> Response:
    return json_response(_metadata(_live(state_of(request), name)))


@router.get("/models/{name}/versions/{version}", responses=schemas.ERRORS)
async def version_metadata(request: Request, name: str, version: str) -> Response:
    return json_response(_metadata(_live(state_of(request), name, version)))


@router.get("/models/{name}/ready", responses=schemas.ERRORS)
async def model_ready(request: Request, name: str) -> Response:
    """200 when the model is loaded; 503 while a configured model loads; 404 for an unknown name."""
    st = state_of(request)
    if name not in st.holder.live:
        if name in st.holder.expected():
            return json_response({"name": name, "ready": False}, 503)
        _live(st, name)  # raises the 404 naming the known models
    return json_response({"name": name, "ready": True})


@router.get("/models/{name}/versions/{version}/ready", responses=schemas.ERRORS)
async def version_ready(request: Request, name: str, version: str) -> Response:
    live = _live(state_of(request), name, version)
    return json_response({"name": live.name, "version": live.version, "ready": True})


_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": schemas.inline_schema(schemas.V2InferRequest)}},
    }
}


@router.post(
    "/models/{name}/infer", response_model=schemas.V2InferResponse, responses=schemas.ERRORS, openapi_extra=_INFER_DOC
)
async def infer(request: Request, name: str) -> Response:
    return json_response(infer_body(state_of(request), name, None, await request.body()))


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=schemas.V2InferResponse,
    responses=schemas.ERRORS,
    openapi_extra=_INFER_DOC,
)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return json_response(infer_body(state_of(request), name, version, await request.body()))


def infer_body(st: ServeState, name: str, version: str | None, body: bytes) -> dict[str, Any]:
    live = _live(st, name, version)
    obj = loads_object(body)
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(
            400,
            "Field 'inputs' must be a list with exactly one tensor "
            "{name, shape: [N, n_features], datatype: FP32|FP64, data}.",
        )
    t = inputs[0]
    n = live.bundle.num_feature()
    dtype = t.get("datatype")
    if dtype not in ("FP32", "FP64"):
        raise RequestError(400, f"inputs[0].datatype {str(dtype)[:16]!r} is not supported; send FP32 or FP64.")
    shape = t.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(s) is int and s >= 0 for s in shape)):
        raise RequestError(400, f"inputs[0].shape must be [N, {n}] (rows, features).")
    if shape[1] != n:
        raise RequestError(
            400, f"inputs[0].shape {shape} has {shape[1]} features; model {name!r} expects {n} (shape [N, {n}])."
        )
    if shape[0] > MAX_ROWS:
        raise RequestError(400, f"inputs[0].shape asks for {shape[0]} rows; send at most {MAX_ROWS}.")
    try:
        X = np.array(t.get("data"), dtype=np.float32 if dtype == "FP32" else np.float64)
    except (TypeError, ValueError):
        raise RequestError(400, "inputs[0].data must hold only numbers.") from None
    if X.size != shape[0] * n:
        raise RequestError(400, f"inputs[0].data has {X.size} values; shape {shape} needs {shape[0] * n}.")
    X = np.ascontiguousarray(X.reshape(shape[0], n), dtype=np.float64)
    if shape[0] == 1:  # the common case: the single-row fast path the live model was verified with
        probs = np.array([live.predict_row(X[0])])
    elif shape[0] == 0:
        probs = np.zeros(0)
    else:
        probs = live.bundle.predict(X)
    return {
        "model_name": live.name,
        "model_version": live.version,
        "id": obj.get("id") if isinstance(obj.get("id"), str) else None,
        "parameters": {},
        "outputs": [{"name": OUTPUT, "shape": [shape[0]], "datatype": "FP64", "data": probs.tolist()}],
    }
