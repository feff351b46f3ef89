"""Open Inference Protocol v2 (KServe v2 REST): health, model metadata, and infer on a feature matrix.

Inputs: one tensor of datatype FP32 or FP64 and shape [N, n_features] (data flat or nested, row-major).
Outputs: one FP64 tensor of shape [N] per output of the bundle: "probability" always, plus "up_probability" and/or
"move_probability" where the bundle has them (its heads, or a direction label); the request's ``outputs`` may ask
for some of them. Errors are ``{"error": "..."}`` as the protocol specifies.
Tensors travel as JSON or, with the binary tensor data extension (v2binary), as raw bytes after a JSON header:
tritonclient's defaults work as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response

from xylen import __version__
from xylen.serve import schemas, v2binary
from xylen.serve.decode import RequestError
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
            # an ensemble's members, at the versions it answers with now (serve/ensemble_live.py)
            "members": [{"name": m.name, "version": m.version} for m in live.members],
        },
    }


@router.get("", summary="Server metadata")
async def server_metadata() -> Response:
    return json_response({"name": "xylen", "version": __version__, "extensions": ["binary_tensor_data"]})


@router.get("/health/live")
async def v2_live() -> Response:
    return json_response({"live": True})


@router.get("/health/ready")
async def v2_ready(request: Request) -> Response:
    ok = state_of(request).not_ready_reason() is None  # --workers N: every worker's
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
    """200 when the model is loaded (with --workers N, in every worker); 503 while a configured model loads;
    404 for an unknown name."""
    st = state_of(request)
    if name not in st.holder.live:
        if name in st.holder.expected():
            return json_response({"name": name, "ready": False}, 503)
        _live(st, name)  # raises the 404 naming the known models
    if st.board is not None and st.board.missing(name) is not None:
        return json_response({"name": name, "ready": False}, 503)
    return json_response({"name": name, "ready": True})


@router.get("/models/{name}/versions/{version}/ready", responses=schemas.ERRORS)
async def version_ready(request: Request, name: str, version: str) -> Response:
    st = state_of(request)
    if name not in st.holder.live and name in st.holder.expected():  # still loading: not an unknown model
        return json_response({"name": name, "version": version[:32], "ready": False}, 503)
    live = _live(st, name, version)
    ready = st.board is None or st.board.missing(name) is None  # --workers N: loaded in every worker
    return json_response({"name": live.name, "version": live.version, "ready": ready}, 200 if ready else 503)


_BINARY_DOC = (
    "Binary tensor data extension (tritonclient's default): the header `Inference-Header-Content-Length: N` says the "
    "first N bytes are this JSON object; the input's raw little-endian FP32/FP64 values follow, row-major, their "
    "length in the input's `parameters.binary_data_size` (and no `data`)."
)
_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": schemas.inline_schema(schemas.V2InferRequest)},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description": _BINARY_DOC}},
        },
    }
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **schemas.ERRORS,
    200: {
        "description": "The outputs as JSON; or, when an output asks `parameters.binary_data: true` or the request "
        "`parameters.binary_data_output: true`, an application/octet-stream body: the JSON answer (its length in "
        "`Inference-Header-Content-Length`), then those outputs' FP64 little-endian bytes in order, each output's "
        "length in its `parameters.binary_data_size`.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
}
_INFER_TEXT = """Predict on a feature matrix: one FP32/FP64 input of shape [N, n_features], one FP64 output of shape [N]
per probability field. Inputs and outputs travel as JSON or as raw bytes (the binary tensor data extension, which
tritonclient uses by default: `set_data_from_numpy(x)`, `InferRequestedOutput(name)`)."""


@router.post(
    "/models/{name}/infer",
    response_model=schemas.V2InferResponse,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_DOC,
    description=_INFER_TEXT,
)
async def infer(request: Request, name: str) -> Response:
    return _answer(*infer_answer(state_of(request), name, None, await request.body(), _header_length(request)))


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=schemas.V2InferResponse,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_DOC,
    description=_INFER_TEXT,
)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return _answer(*infer_answer(state_of(request), name, version, await request.body(), _header_length(request)))


def _header_length(request: Request) -> bytes | None:
    value = request.headers.get("inference-header-content-length")
    return None if value is None else value.encode("latin-1")


def _answer(body: bytes, headers: list[tuple[bytes, bytes]] | None) -> Response:
    if headers is None:
        return Response(body, media_type="application/json")
    return Response(body, headers={k.decode(): v.decode() for k, v in headers})


def _flat(data: Any) -> list[Any]:
    """Tensor data as sent (flat, or nested rows: numpy already read it, so at most 32 levels), row-major."""
    return [y for x in data for y in _flat(x)] if isinstance(data, list) else [data]


def infer_answer(
    st: ServeState, name: str, version: str | None, body: bytes, header_length: bytes | None = None
) -> tuple[bytes, list[tuple[bytes, bytes]] | None]:
    """The infer response body, and its headers when it carries binary outputs (None: JSON). ``header_length``:
    the Inference-Header-Content-Length header, which makes ``body`` a binary request (v2binary)."""
    answer, binary = infer_body(st, name, version, body, header_length)
    if binary:
        return v2binary.encode(answer, binary)
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), None


def infer_body(
    st: ServeState, name: str, version: str | None, body: bytes, header_length: bytes | None = None
) -> tuple[dict[str, Any], frozenset[str]]:
    """The infer answer as JSON data, and the outputs the request asked to get as raw bytes."""
    live = _live(st, name, version)
    if header_length is None:
        obj, raw = _json_object(body), None
    else:
        obj, raw = v2binary.split(body, header_length)
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
    size = v2binary.binary_size(t, raw is not None)
    if size is not None and raw is not None:
        X = v2binary.read_tensor(raw, size, dtype, shape)
        data: Any = None
    else:
        if raw is not None:
            v2binary.no_binary_left(raw, len(body) - len(raw))
        data = t.get("data")
        X = _json_tensor(data, dtype, shape)
    if not np.isfinite(X).all():  # null, "NaN"/"inf" strings, or beyond FP32's range (3.4e38): never to a model
        r, j = (int(x) for x in np.argwhere(~np.isfinite(X))[0])
        sent = _flat(data)[r * n + j] if isinstance(data, list) else X[r, j]  # what was sent, nested or not
        where = "inputs[0].data" if data is not None else "inputs[0]'s binary data: value"
        raise RequestError(
            400,
            f"{where}[{r * n + j}] (row {r}, feature {live.bundle.feature_names[j][:40]!r}) is "
            f"{str(sent)[:40]!r}, which is not a finite {dtype} number; send finite numbers"
            f"{' within +-3.4e38, or datatype FP64' if dtype == 'FP32' else ''}.",
        )
    wanted = _requested(obj.get("outputs"), live)
    binary = v2binary.binary_outputs(obj, wanted)
    out = _outputs(live, X, wanted)
    return {
        "model_name": live.name,
        "model_version": live.version,
        "id": obj.get("id") if isinstance(obj.get("id"), str) else None,
        "parameters": {},
        "outputs": [{"name": f, "shape": [shape[0]], "datatype": "FP64", "data": out[f]} for f in wanted],
    }, binary


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(
            400,
            f'The request body is not JSON ({exc}); send a JSON object {{"inputs": [...]}}, or, for raw tensor '
            "bytes after the JSON (the binary tensor data extension), the header Inference-Header-Content-Length: "
            "<bytes of JSON>.",
        ) from None
    if not isinstance(obj, dict):
        raise RequestError(
            400,
            f"The request body is a JSON {type(obj).__name__}; send a JSON object "
            '{"inputs": [{"name", "shape", "datatype", "data"}]}.',
        )
    return obj


def _json_tensor(data: Any, dtype: str, shape: list[int]) -> np.ndarray:
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a value beyond FP32 becomes inf: refused below
            X = np.array(data, dtype=np.float32 if dtype == "FP32" else np.float64)
    except (TypeError, ValueError):
        raise RequestError(400, "inputs[0].data must hold only numbers.") from None
    if X.size != shape[0] * shape[1]:
        raise RequestError(400, f"inputs[0].data has {X.size} values; shape {shape} needs {shape[0] * shape[1]}.")
    return np.ascontiguousarray(X.reshape(shape[0], shape[1]), dtype=np.float64)


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
        raise RequestError(
            400,
            f"Field 'outputs' asks for {str(unknown[0])[:40]!r}; model {live.name!r} has outputs "
            f"{', '.join(live.output_names)} (leave 'outputs' out for all of them).",
        )
    return tuple(f for f in live.output_names if f in names)
