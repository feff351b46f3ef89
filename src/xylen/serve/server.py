"""Run the server: check the bind, keep heavy libraries out, configure logs, start uvicorn, drain on SIGTERM.

``--workers N`` runs N uvicorn worker processes on one socket under uvicorn's supervisor. What a worker needs
from the parent travels inside the pickled app factory (``WorkerApp``) over the pipe ``multiprocessing`` starts
it with, never in the environment (any process of the same user reads /proc/<pid>/environ): the resolved
settings without the API keys, and the keys' sha256 digests, which is all a worker compares against.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess

from xylen.core.errors import ConfigError
from xylen.core.imports import block_heavy_imports
from xylen.core.settings import Settings

if TYPE_CHECKING:
    from xylen.serve.auth import KeyRing

log = logging.getLogger("xylen.serve")
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's name; read when a worker imports it
_KEY_ENV = "XYLEN_API_KEYS"  # kept out of the workers' environment (settings match names case-insensitively)


@dataclass
class ServeOptions:
    names: list[str]
    workers: int = 1
    drain_seconds: float = 0.0
    model_path: Path | None = None


def check_options(settings: Settings, opts: ServeOptions) -> KeyRing:
    """The checks that need no model: the API keys, the bind (a non-loopback host needs keys), --workers and
    --drain-seconds. Raises ConfigError. `xylen serve --train-if-missing` runs them before it trains, so a refused
    configuration fails at once instead of after a training run."""
    from xylen.serve.auth import KeyRing, check_bind

    keys = KeyRing.from_settings(settings)
    check_bind(settings.host, keys, settings.allow_unauthenticated)
    if opts.workers < 1:
        raise ConfigError(f"--workers {opts.workers} must be 1 or more.", hint="1 is best on 2 cores.")
    if not (math.isfinite(opts.drain_seconds) and opts.drain_seconds >= 0):
        raise ConfigError(
            f"--drain-seconds {opts.drain_seconds} must be a number of seconds, 0 or more.",
            hint="e.g. --drain-seconds 5: a few load-balancer health-check intervals.",
        )
    return keys


def serve(settings: Settings, opts: ServeOptions) -> None:
    """Serve until SIGTERM/SIGINT. Raises ConfigError for a refused configuration (exit 2)."""
    from xylen.serve.app import check_models
    from xylen.serve.auth import is_loopback
    from xylen.serve.logs import configure

    keys = check_options(settings, opts)
    check_models(settings, opts.names, opts.model_path)  # a wrong MODEL_PATH/MODEL_TYPE fails now, not as 503s
    configure(settings.log_format, settings.log_level)
    already = block_heavy_imports()
    if already:
        log.warning("already imported before the server started: %s", ", ".join(already))
    if not keys.enabled and not is_loopback(settings.host) and not settings.allowed_host_list():
        log.warning(
            "no API keys on %s: requests are answered only when their Host header is a loopback name; "
            "list the names clients use in XYLEN_ALLOWED_HOSTS (* for any)",
            settings.host,
        )

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
        # /ws/predict: a larger frame is closed 1009 before it is read; a shutdown closes sockets with 1001
        "ws_max_size": settings.ws_max_message_bytes,
        "ws": "xylen.serve.stream_close:GoingAwayProtocol",
    }
    if opts.workers > 1:
        _serve_workers(settings, opts, keys, common)
        return
    from xylen.serve.app import create_app

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


@dataclass(frozen=True)
class WorkerApp:
    """The uvicorn app factory each worker process of `xylen serve --workers N` unpickles and calls."""

    settings: Settings  # without api_keys / api_keys_file: the digests below replace them
    digests: tuple[bytes, ...] = field(repr=False)
    session_secret: bytes = field(repr=False)  # the dashboard's session signing secret: the same in every worker
    names: list[str]
    model_path: Path | None
    drain: Connection  # the read end of a pipe whose write end only the parent holds: EOF means drain
    ready_dir: str = ""  # the readiness board's private folder (serve/readyboard.py): ready only when all are
    workers: int = 1

    def __call__(self) -> Any:
        from xylen.serve.app import create_app
        from xylen.serve.auth import KeyRing
        from xylen.serve.logs import configure

        configure(self.settings.log_format, self.settings.log_level)
        block_heavy_imports()
        app = create_app(
            self.settings,
            names=self.names or None,
            model_path=self.model_path,
            keys=KeyRing(list(self.digests), self.session_secret),
        )
        holder = app.state.holder
        parent = os.getppid()
        if self.ready_dir:
            from xylen.serve.readyboard import ReadyBoard

            app.state.board = board = ReadyBoard(Path(self.ready_dir), self.workers)
            board.publish_every(0.2, lambda: (holder.not_ready_reason(), tuple(holder.live)))

        def drain_when_told() -> None:
            with contextlib.suppress(EOFError, OSError):
                self.drain.recv()  # nothing is ever sent: this returns when the parent closes its end (or dies)
            holder.draining = True  # readiness says 503; requests are still served until the parent stops us
            # the parent stops us after the drain; if it was killed instead (kill -9, OOM), nobody will: an
            # orphaned worker would keep the port and serve on unsupervised, so it stops itself (gracefully)
            while os.getppid() == parent:
                time.sleep(1.0)
            log.warning("the supervising process %d is gone: stopping this worker", parent)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=drain_when_told, name="xylen-drain", daemon=True).start()
        return app


def _serve_workers(settings: Settings, opts: ServeOptions, keys: KeyRing, common: dict[str, Any]) -> None:
    """N uvicorn worker processes on one socket, each with its own models and hot-swap watcher.

    On 2 cores one worker is as fast and half the memory (README, "Operations"); more help on machines with more cores.
    """
    # the workers inherit this process's environment: no keys in it, and the metrics directory set before
    # the first worker imports prometheus_client
    saved = {k: v for k, v in os.environ.items() if k.upper() in (_KEY_ENV, METRICS_DIR_ENV)}
    for k in saved:
        del os.environ[k]
    metrics_dir = tempfile.mkdtemp(prefix="xylen-metrics-")  # mode 0700, private to this server
    ready_dir = tempfile.mkdtemp(prefix="xylen-ready-")  # each worker's readiness, for collective readiness
    os.environ[METRICS_DIR_ENV] = metrics_dir
    try:
        # closing the write end tells every worker at once, a worker started later too, and no lock is involved
        # (a multiprocessing.Event deadlocks its setter once a waiting worker has been killed)
        drain_r, drain_w = multiprocessing.Pipe(duplex=False)
        app = WorkerApp(
            settings=settings.model_copy(update={"api_keys": "", "api_keys_file": None}),
            digests=keys.digests,
            session_secret=keys.session_secret,
            names=list(opts.names),
            model_path=opts.model_path,
            drain=drain_r,
            ready_dir=ready_dir,
            workers=opts.workers,
        )
        config = uvicorn.Config(app, factory=True, workers=opts.workers, **common)
        log.info(
            "serving on http://%s:%d with %d worker processes (%s keys)",
            settings.host,
            settings.port,
            opts.workers,
            len(keys) if keys.enabled else "no",
        )
        try:
            _Supervisor(config, [config.bind_socket()], drain_w, opts.drain_seconds, metrics_dir, ready_dir).run()
        finally:
            drain_r.close()
            drain_w.close()
    finally:
        os.environ.pop(METRICS_DIR_ENV, None)
        os.environ.update(saved)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(ready_dir, ignore_errors=True)


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, plus: SIGTERM with --drain-seconds N tells every worker to fail readiness and stops
    them N s later (a second SIGTERM or SIGINT stops them at once); a dead worker's live gauges are retired."""

    def __init__(
        self,
        config: uvicorn.Config,
        sockets: list[socket.socket],
        drain: Connection,
        drain_seconds: float,
        metrics_dir: str,
        ready_dir: str = "",
    ) -> None:
        super().__init__(config, sockets)
        self._ready_dir = ready_dir
        self._drain = drain
        self._drain_seconds = drain_seconds
        self._metrics_dir = metrics_dir
        self._pids: set[int] = set()

    def handle_term(self) -> None:
        if self._drain_seconds > 0 and not self._drain.closed:
            log.info("SIGTERM: readiness fails in every worker; stopping in %.3g s", self._drain_seconds)
            self._drain.close()
            timer = threading.Timer(self._drain_seconds, self.should_exit.set)
            timer.daemon = True
            timer.start()
            return
        super().handle_term()

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        from prometheus_client.multiprocess import mark_process_dead

        from xylen.serve.readyboard import forget

        # a replaced worker's file keeps its gauges; the "live" gauge modes skip the pids marked dead
        pids = {p.pid for p in self.processes if p.pid is not None}
        for pid in self._pids - pids:
            mark_process_dead(pid, self._metrics_dir)
            if self._ready_dir:  # tidiness: readers already skip a dead worker's file
                forget(Path(self._ready_dir), pid)
        self._pids = pids


def _fastest() -> tuple[str, str]:
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return http, loop


class _DrainingServer(uvicorn.Server):
    """SIGTERM: readiness fails first, in-flight requests finish, then a clean exit 0 (uvicorn would re-raise
    the signal after shutdown, which makes the exit status 143). With a drain time, a second SIGTERM (or a
    SIGINT) stops at once."""

    def __init__(self, config: uvicorn.Config, holder: object, drain_seconds: float) -> None:
        super().__init__(config)
        self._holder = holder
        self._drain = drain_seconds
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._holder.draining = True  # type: ignore[attr-defined]
        if sig == signal.SIGTERM:
            if self._drain > 0 and not self._draining:
                self._draining = True
                timer = threading.Timer(self._drain, lambda: setattr(self, "should_exit", True))
                timer.daemon = True
                timer.start()
            else:
                self.should_exit = True
            return  # not recorded in _captured_signals: no re-raise, exit 0
        super().handle_exit(sig, frame)
