"""Open Inference Protocol v2 (KServe v2 REST): health, model metadata, and infer on a feature matrix.

Inputs: one tensor of datatype FP32 or FP64 and shape [N, n_features] (data flat or nested, row-major).
Outputs: one FP64 tensor of shape [N] per output of the bundle: "probability" always, plus "up_probability" and/or
"move_probability" where the bundle has them (its heads, or a direction label); the request's ``outputs`` may ask
for some of them. Errors are ``{"error": "..."}`` as the protocol specifies.
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
from xylen.serve.routes import json_response, label_of, state_of
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
        "outputs": [{"name": field, "datatype": "FP64", "shape": [-1]} for field in live.output_names],
        "parameters": {
            "feature_names": live.bundle.feature_names,
            "feature_set": live.bundle.manifest.feature_set.version,
            "label_kind": (label_of(live.bundle.manifest) or {}).get("kind"),  # None: a model without a label
            "min_candles": live.bundle.min_candles,
            "outputs": live.bundle.outputs(),
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


def _flat(data: Any) -> list[Any]:
    """Tensor data as sent (flat, or nested rows: numpy already read it, so at most 32 levels), row-major."""
    return [y for x in data for y in _flat(x)] if isinstance(data, list) else [data]


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
    data = t.get("data")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a value beyond FP32 becomes inf: refused below
            X = np.array(data, dtype=np.float32 if dtype == "FP32" else np.float64)
    except (TypeError, ValueError):
        raise RequestError(400, "inputs[0].data must hold only numbers.") from None
    if X.size != shape[0] * n:
        raise RequestError(400, f"inputs[0].data has {X.size} values; shape {shape} needs {shape[0] * n}.")
    X = np.ascontiguousarray(X.reshape(shape[0], n), dtype=np.float64)
    if not np.isfinite(X).all():  # null, "NaN"/"inf" strings, or beyond FP32's range (3.4e38): never to a model
        r, j = (int(x) for x in np.argwhere(~np.isfinite(X))[0])
        sent = _flat(data)[r * n + j] if isinstance(data, list) else X[r, j]  # what was sent, nested or not
        raise RequestError(
            400,
            f"inputs[0].data[{r * n + j}] (row {r}, feature {live.bundle.feature_names[j][:40]!r}) is "
            f"{str(sent)[:40]!r}, which is not a finite {dtype} number; send finite numbers"
            f"{' within +-3.4e38, or datatype FP64' if dtype == 'FP32' else ''}.",
        )
    wanted = _requested(obj.get("outputs"), live)
    out = _outputs(live, X, wanted)
    return {
        "model_name": live.name,
        "model_version": live.version,
        "id": obj.get("id") if isinstance(obj.get("id"), str) else None,
        "parameters": {},
        "outputs": [{"name": f, "shape": [shape[0]], "datatype": "FP64", "data": out[f]} for f in wanted],
    }


def _outputs(live: Live, X: np.ndarray, wanted: tuple[str, ...]) -> dict[str, list[float]]:
    """The ``wanted`` outputs of ``live`` for the rows of ``X``: one row through the single-row fast paths the live
    model was verified with (the common case), more through each head's batch predict. A head nobody asked for is
    not run; the primary always is (a direction model's up_probability is its value)."""
    if len(X) == 1:
        p = live.predict_row(X[0])
        out = {OUTPUT: [p]}
        for field, head in live.extra:
            if field in wanted:
                out[field] = [p if head is None else head(X[0])]
        return out
    if len(X) == 0:
        return dict.fromkeys(wanted, [])
    probs = live.bundle.predict(X).tolist()
    heads = dict(live.bundle.heads)
    out = {OUTPUT: probs}
    for field in wanted:
        if field in heads:
            out[field] = np.asarray(heads[field].predict(X)).tolist()
        elif field != OUTPUT:
            out[field] = probs  # the primary's own field
    return out


def _requested(outputs: Any, live: Live) -> tuple[str, ...]:
    """The outputs a request asks for (``outputs: [{"name": ...}]``), in the model's order; all when it names none."""
    if not outputs:
        return live.output_names
    names = [o.get("name") if isinstance(o, dict) else None for o in outputs] if isinstance(outputs, list) else [None]
    unknown = [x for x in names if x not in live.output_names]
    if unknown:
        raise RequestError(400, f"Field 'outputs' asks for {str(unknown[0])[:40]!r}; model {live.name!r} has outputs "
                                f"{', '.join(live.output_names)} (leave 'outputs' out for all of them).")
    return tuple(f for f in live.output_names if f in names)
