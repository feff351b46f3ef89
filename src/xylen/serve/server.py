"""Run the server: check the bind, keep heavy libraries out, configure logs, start uvicorn, drain on SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn

from xylen.core.errors import ConfigError
from xylen.core.settings import Settings
from xylen.serve.imports import block_heavy_imports

log = logging.getLogger("xylen.serve")

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
    if opts.workers < 1:
        raise ConfigError(f"--workers {opts.workers} must be 1 or more.", hint="1 is best on 2 cores.")
    configure(settings.log_format, settings.log_level)
    already = block_heavy_imports()
    if already:
        log.warning("already imported before the server started: %s", ", ".join(already))
    from xylen.serve.app import create_app

    app = create_app(settings, names=opts.names or None, model_path=opts.model_path, keys=keys)
    http, loop = _fastest()
    config = uvicorn.Config(app, host=settings.host, port=settings.port, workers=1, http=http, loop=loop,
                            access_log=False, log_config=None, lifespan="on", timeout_graceful_shutdown=30,
                            server_header=False, date_header=False)
    if opts.workers > 1:
        log.warning("--workers %d: running 1 worker; on this design a second worker doubles memory and hot-swap "
                    "work without adding throughput (see DESIGN.md). Run replicas behind a proxy instead.",
                    opts.workers)
    server = _DrainingServer(config, app.state.holder, opts.drain_seconds)
    log.info("serving on http://%s:%d (%s keys, %s/%s)", settings.host, settings.port,
             len(keys) if keys.enabled else "no", http, loop)
    server.run()


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
