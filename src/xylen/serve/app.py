"""The app factory: ``create_app(settings)`` -> an ASGI app (the gate in front of FastAPI).

No model is loaded at import time or by this function: the lifespan starts the watcher thread, which loads
(and then keeps swapping) the live versions while /health/ready says 503 with the reason.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import WebSocketRoute

from xylen import __version__
from xylen.core.bundle import read_manifest, verify_artifact
from xylen.core.errors import BundleError, ConfigError, XylenError
from xylen.core.rawmodel import resolve_backend
from xylen.core.registry import open_registry
from xylen.core.settings import Settings
from xylen.core.verify import verify_in_child
from xylen.serve import docs, routes, ui, v2
from xylen.serve.auth import KeyRing
from xylen.serve.decode import RequestError
from xylen.serve.gate import Gate, error_bytes
from xylen.serve.holder import ModelHolder
from xylen.serve.metrics import Metrics
from xylen.serve.retrain_jobs import Command, RetrainJobs
from xylen.serve.retrain_jobs import retrain_command as default_retrain_command
from xylen.serve.state import ServeState
from xylen.serve.stream import StreamHub

DESCRIPTION = """Trading signals from the registry's live models, hot-swapped without downtime.

`POST /predict` takes the alpha's body (candles as Binance arrays or objects) and answers for the last closed
candle with the model of its symbol and timeframe, or the configured default model for the same timeframe, else
404 (a still-open last candle is dropped and `notes` says so). `GET /models` states what each model's `probability`
means, its other outputs (`up_probability`, `move_probability`) and how many candles it needs (`min_candles`).
`/v2/...` speaks the Open Inference Protocol v2 (KServe) on feature matrices. Send `Authorization: Bearer <key>`
or `X-API-Key: <key>` when the server has API keys (the health probes never need one). A server without keys
answers only loopback `Host` names and those in XYLEN_ALLOWED_HOSTS (421 otherwise), and its state-changing POSTs
need `Content-Type: application/json`. `GET /ws/predict` streams predictions over a WebSocket (one closed candle
in, one prediction out, or pushed as `xylen collect` stores candles): OpenAPI cannot describe it; see the README's
"Streaming predictions"."""


def create_app(settings: Settings, *, names: list[str] | None = None, model_path: Path | None = None,
               watch_interval: float = 0.25, verify: Callable[[Path], str | None] = verify_in_child,
               keys: KeyRing | None = None, clock: Callable[[], float] = time.time,
               retrain_command: Command = default_retrain_command) -> Gate:
    """Build the server for ``settings``: every registry model with a live version (or ``names``), or the one
    model at ``model_path`` (a bundle folder or a bare model file). ``clock`` (epoch seconds) decides which
    candle is still open; ``retrain_command`` builds the argv of POST /retrain's child (tests inject one)."""
    metrics = Metrics()
    model_path = model_path or settings.model_path
    registry = None if model_path else open_registry(settings)
    # only an explicit choice is a default: XYLEN_DEFAULT_MODEL, else the first --model (MODEL_PATH: its model)
    default = settings.default_model or (names[0] if names else None)
    holder = ModelHolder(registry, names, model_path=model_path, default=None if model_path else default,
                         backend=settings.model_type, verify=verify, events=metrics.events())
    metrics.watch_models(holder, settings.model_max_age)
    jobs = None if registry is None else RetrainJobs(
        settings.home, command=retrain_command, draining=lambda: holder.draining, finished=metrics.retrain_finished)
    state = ServeState(settings=settings, holder=holder, metrics=metrics,
                       keys=keys if keys is not None else KeyRing.from_settings(settings), clock=clock, jobs=jobs)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stop = holder.start_watching(watch_interval)
        if dashboard is not None:
            await dashboard.start()  # the server history sampler (serve/ui_history.py)
        try:
            yield
        finally:
            holder.draining = True
            stop.set()
            if dashboard is not None:
                await dashboard.stop()
            await streams.stop()  # the store feed's polling thread, if a push subscription started it
            if jobs is not None:
                await jobs.shutdown()  # a retrain child still running gets SIGTERM and its record says "aborted"

    app = FastAPI(title="xylen", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # FastAPI's pages load a CDN: ours, from the package
    app.state.xylen = state
    streams = StreamHub(state)
    app.state.streams = streams
    app.router.routes.append(WebSocketRoute("/ws/predict", streams))  # an ASGI app: the protocol is in serve/stream.py
    app.include_router(routes.router)
    app.include_router(v2.router)
    docs.install(app)
    # the dashboard (issue #14): off with `xylen serve --no-ui` / XYLEN_UI=false, and then every /ui path is a 404
    dashboard = ui.install(app, state) if settings.ui else None

    async def on_request_error(_r: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        return Response(error_bytes(exc.message), exc.status, media_type="application/json")

    async def on_validation(_r: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return Response(error_bytes(f"{where}: {first.get('msg')}"), 422, media_type="application/json")

    async def on_http(_r: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        msg = "No such route; see /docs." if exc.status_code == 404 else str(exc.detail)
        return Response(error_bytes(msg), exc.status_code, media_type="application/json", headers=exc.headers)

    app.add_exception_handler(RequestError, on_request_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    return Gate(app, state)


def check_models(settings: Settings, names: list[str], model_path: Path | None) -> None:
    """What `xylen serve` refuses before it starts, instead of serving 503s: a MODEL_PATH that is not a model
    (BundleError, exit 4), a MODEL_TYPE that contradicts the model, a default model outside ``--model`` (exit 2)."""
    if model_path is not None:
        if not model_path.exists():
            raise BundleError(
                f"MODEL_PATH {str(model_path)!r} does not exist.",
                hint="point it at a bundle folder (models/<name>/vNNNN) or a model file (LightGBM text, ONNX, "
                "TorchScript).",
            )
        if model_path.is_file():
            resolve_backend(model_path, settings.model_type)
            return
        manifest = read_manifest(model_path)
        verify_artifact(model_path, manifest)
        _same_backend(settings.model_type, manifest.backend, f"the bundle {str(model_path)!r}")
        return
    if settings.default_model and names and settings.default_model not in names:
        raise ConfigError(
            f"XYLEN_DEFAULT_MODEL is {settings.default_model!r}, which is not among --model {', '.join(names)}.",
            hint=f"add --model {settings.default_model}, or unset XYLEN_DEFAULT_MODEL (the first --model is the "
            "default).",
        )
    if settings.model_type is None:
        return
    registry = open_registry(settings)
    for name in names or registry.live_names():
        try:
            ptr = registry.current(name)
            backend = registry.manifest(name, ptr.version).backend if ptr else None
        except XylenError:
            continue  # a broken pointer or bundle is the watcher's to refuse (and readiness's to report)
        if backend is not None:
            _same_backend(settings.model_type, backend, f"model {name!r} {ptr.version if ptr else ''}")


def _same_backend(model_type: str | None, backend: str, what: str) -> None:
    if model_type is not None and backend != model_type:
        raise ConfigError(
            f"MODEL_TYPE is {model_type!r} but {what} is a {backend} model.",
            hint=f"set MODEL_TYPE={backend}, leave MODEL_TYPE unset (each model's own backend is used), or serve "
            "only models of that backend with --model.",
        )

