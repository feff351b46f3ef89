"""The app factory: ``create_app(settings)`` -> an ASGI app (the gate in front of FastAPI).

No model is loaded at import time or by this function: the lifespan starts the watcher thread, which loads
(and then keeps swapping) the live versions while /health/ready says 503 with the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from xylen import __version__
from xylen.core.registry import Registry, model_name
from xylen.core.settings import Settings
from xylen.core.verify import verify_in_child
from xylen.serve import routes, v2
from xylen.serve.auth import KeyRing
from xylen.serve.decode import RequestError
from xylen.serve.gate import Gate, error_bytes
from xylen.serve.holder import ModelHolder
from xylen.serve.metrics import Metrics
from xylen.serve.state import ServeState

DESCRIPTION = """Trading signals from the registry's live models, hot-swapped without downtime.

`POST /predict` takes the alpha's body (candles as Binance arrays or objects) and answers for the last candle.
`/v2/...` speaks the Open Inference Protocol v2 (KServe) on feature matrices. Send `Authorization: Bearer <key>`
or `X-API-Key: <key>` when the server has API keys."""


def create_app(settings: Settings, *, names: list[str] | None = None, model_path: Path | None = None,
               watch_interval: float = 0.25, verify: Callable[[Path], str | None] = verify_in_child,
               keys: KeyRing | None = None) -> Gate:
    """Build the server for ``settings``: every registry model (or ``names``), or the one bundle ``model_path``."""
    metrics = Metrics()
    model_path = model_path or settings.model_path
    registry = None if model_path else Registry(settings.models_dir)
    holder = ModelHolder(registry, names, model_path=model_path,
                         default=names[0] if names else model_name(settings.symbol, settings.interval),
                         verify=verify, events=metrics.events())
    state = ServeState(settings=settings, holder=holder, metrics=metrics,
                       keys=keys if keys is not None else KeyRing.from_settings(settings))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stop = holder.start_watching(watch_interval)
        try:
            yield
        finally:
            holder.draining = True
            stop.set()

    app = FastAPI(title="xylen", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.xylen = state
    app.include_router(routes.router)
    app.include_router(v2.router)

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
