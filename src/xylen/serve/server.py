"""Run the server: check the bind, keep heavy libraries out, configure logs, start uvicorn, drain on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import uvicorn

from xylen.core.errors import ConfigError
from xylen.core.imports import block_heavy_imports
from xylen.core.settings import Settings

log = logging.getLogger("xylen.serve")
# --workers N: the parent hands its resolved settings to each worker process through this variable
WORKER_ENV = "XYLEN_SERVE_WORKER_CONFIG"


@dataclass
class ServeOptions:
    names: list[str]
    workers: int = 1
    drain_seconds: float = 0.0
    model_path: Path | None = None


def serve(settings: Settings, opts: ServeOptions) -> None:
    """Serve until SIGTERM/SIGINT. Raises ConfigError for a refused configuration (exit 2)."""
    from xylen.serve.auth import KeyRing, check_bind
    from xylen.serve.logs import configure

    keys = KeyRing.from_settings(settings)
    check_bind(settings.host, keys, settings.allow_unauthenticated)
    from xylen.serve.app import check_models

    check_models(settings, opts.names, opts.model_path)  # a wrong MODEL_PATH/MODEL_TYPE fails now, not as 503s
    if opts.workers < 1:
        raise ConfigError(f"--workers {opts.workers} must be 1 or more.", hint="1 is best on 2 cores.")
    configure(settings.log_format, settings.log_level)
    already = block_heavy_imports()
    if already:
        log.warning("already imported before the server started: %s", ", ".join(already))
    from xylen.serve.app import create_app

    http, loop = _fastest()
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": http,
        "loop": loop,
        "access_log": False,
        "log_config": None,
        "lifespan": "on",
        "timeout_graceful_shutdown": 30,
        "server_header": False,
        "date_header": False,
    }
    if opts.workers > 1:
        _serve_workers(settings, opts, common)
        return
    app = create_app(settings, names=opts.names or None, model_path=opts.model_path, keys=keys)
    config = uvicorn.Config(app, workers=1, **common)
    server = _DrainingServer(config, app.state.holder, opts.drain_seconds)
    log.info(
        "serving on http://%s:%d (%s keys, %s/%s)",
        settings.host,
        settings.port,
        len(keys) if keys.enabled else "no",
        http,
        loop,
    )
    server.run()


def _serve_workers(settings: Settings, opts: ServeOptions, common: dict[str, Any]) -> None:
    """N uvicorn worker processes on one socket, each with its own models and hot-swap watcher.

    On 2 cores one worker is faster and half the memory (DESIGN.md); more help on machines with more cores.
    SIGTERM is uvicorn's: each worker stops accepting, finishes requests in flight and exits.
    """
    from uvicorn.supervisors import Multiprocess

    os.environ[WORKER_ENV] = orjson.dumps(
        {
            "settings": settings.model_dump(mode="json"),
            "names": opts.names,
            "model_path": str(opts.model_path) if opts.model_path else None,
        }
    ).decode()
    config = uvicorn.Config("xylen.serve.server:worker_app", factory=True, workers=opts.workers, **common)
    log.info("serving on http://%s:%d with %d worker processes", settings.host, settings.port, opts.workers)
    Multiprocess(config, sockets=[config.bind_socket()]).run()


def worker_app() -> Any:
    """uvicorn factory run inside each worker process of `xylen serve --workers N`."""
    from xylen.serve.app import create_app
    from xylen.serve.auth import KeyRing
    from xylen.serve.logs import configure

    payload = orjson.loads(os.environ[WORKER_ENV])
    settings = Settings(**payload["settings"])
    configure(settings.log_format, settings.log_level)
    block_heavy_imports()
    model_path = Path(payload["model_path"]) if payload["model_path"] else None
    return create_app(
        settings, names=payload["names"] or None, model_path=model_path, keys=KeyRing.from_settings(settings)
    )


def _fastest() -> tuple[str, str]:
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return http, loop


class _DrainingServer(uvicorn.Server):
    """SIGTERM: readiness fails first, in-flight requests finish, then a clean exit 0 (uvicorn would re-raise
    the signal after shutdown, which makes the exit status 143)."""

    def __init__(self, config: uvicorn.Config, holder: object, drain_seconds: float) -> None:
        super().__init__(config)
        self._holder = holder
        self._drain = drain_seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._holder.draining = True  # type: ignore[attr-defined]
        if sig == signal.SIGTERM:
            if self._drain > 0 and not self.should_exit:
                threading.Timer(self._drain, lambda: setattr(self, "should_exit", True)).start()
            else:
                self.should_exit = True
            return  # not recorded in _captured_signals: no re-raise, exit 0
        super().handle_exit(sig, frame)
