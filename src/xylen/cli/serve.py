"""`xylen serve`: the inference server."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from enum import Enum
from pathlib import Path
from typing import IO, TYPE_CHECKING

import typer

from xylen.cli import app, handled, settings_from

if TYPE_CHECKING:
    from xylen.core.settings import Settings


class LogFormat(str, Enum):
    text = "text"
    json = "json"


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    host: str = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1; others need API keys)."),
    port: int = typer.Option(None, "--port", help="Port (default 8000)."),
    model: list[str] = typer.Option(
        [],
        "--model",
        "-m",
        help="Serve only these models (repeat). Default: every model in the registry with a live version. The "
        "first is the default model: /predict sends it requests for other symbols of its timeframe and requests "
        "without symbol/timeframe (XYLEN_DEFAULT_MODEL, when set, picks another of them).",
    ),
    model_path: Path = typer.Option(
        None,
        "--model-path",
        help="Serve this one model (MODEL_PATH): a bundle folder, or a LightGBM text, ONNX or TorchScript file "
        "(MODEL_TYPE names or checks its kind).",
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        help="Worker processes on one socket, each with its own models "
        "(1 is best on 2 cores: a second doubles memory without adding throughput).",
    ),
    log_format: LogFormat = typer.Option(None, "--log-format", help="Log format: text (default) or json."),
    allow_unauthenticated: bool = typer.Option(
        None,
        "--allow-unauthenticated",
        help="Allow a non-loopback --host without API keys (e.g. behind an authenticating proxy); list the Host "
        "names clients use in XYLEN_ALLOWED_HOSTS, since a server without keys answers only loopback names.",
    ),
    train_if_missing: bool = typer.Option(
        False,
        "--train-if-missing",
        help="If no model is live yet, first train one (store data, else the bundled sample; profile auto).",
    ),
    ui: bool = typer.Option(
        None,
        "--ui/--no-ui",
        help="Serve the dashboard at /ui (default; XYLEN_UI). --no-ui: every /ui path is 404.",
    ),
    drain_seconds: float = typer.Option(
        0.0,
        "--drain-seconds",
        help="After SIGTERM, answer 503 on readiness (in every worker) for this long before closing the listener; "
        "a second SIGTERM or Ctrl-C stops at once.",
    ),
) -> None:
    """Serve the registry's live models over HTTP; new versions are hot-swapped within 2 s.

    Example: XYLEN_API_KEYS=secret xylen serve --host 0.0.0.0 --port 8000
    """
    with handled():
        from xylen.serve.server import ServeOptions, check_options, serve

        settings = settings_from(
            ctx,
            host=host,
            port=port,
            model_path=model_path,
            log_format=log_format.value if log_format else None,
            allow_unauthenticated=allow_unauthenticated,
            ui=ui,
        )
        opts = ServeOptions(
            names=list(model), workers=workers, drain_seconds=drain_seconds, model_path=settings.model_path
        )
        if train_if_missing and settings.model_path is None:
            check_options(settings, opts)  # a refused bind fails now, not after training
            _train_if_missing(settings, list(model))
        serve(settings, opts)


def _train_if_missing(settings: Settings, names: list[str]) -> None:
    """Train the default series when it has no live model yet (the README's first command).

    In a child process (`python -m xylen train` with the same home and environment): training imports polars
    and matplotlib, which would stay in the server's memory (~260 MB RSS instead of ~95 MB) for its lifetime.
    """
    from xylen.cli import err
    from xylen.core.registry import model_name, open_registry

    registry = open_registry(settings)
    default = model_name(settings.symbol, settings.interval, settings.exchange)
    if registry.current(default) is not None or (names and default not in names):
        return
    err.print(f"No live {default} model in {registry.location}: training one first.")
    argv = [
        sys.executable,
        "-m",
        "xylen",
        "--home",
        str(settings.home),
        "train",
        "--symbol",
        settings.symbol,
        "--interval",
        settings.interval,
        "--exchange",
        settings.exchange,
    ]
    rc, terminated = _relay(argv)
    if terminated:
        # a service manager's stop (docker compose stop, systemctl stop): a clean stop, like the server's own
        err.print(f"stopped (SIGTERM) while training {default}; not starting the server.")
        raise typer.Exit(0)
    if rc != 0:
        err.print(
            f"[bold red]error:[/] training {default} failed (exit {rc}, see above); not starting the server.",
            markup=True,
        )
        raise typer.Exit(130 if rc < 0 else rc)


def _relay(argv: list[str]) -> tuple[int, bool]:
    """Run ``argv``, copying its stdout and stderr to ours line by line (also when ours is not a terminal).

    Returns its exit code and whether SIGTERM arrived meanwhile. docker-init and systemd (KillMode=mixed) send
    SIGTERM to this process only: it is passed on as SIGINT, the child's Ctrl-C path (it cleans up and exits), and
    waited for. Without the handler this process died at once (as PID 1 it ignored the signal) and left the child."""
    terminated: list[int] = []
    proc: subprocess.Popen[str] | None = None

    def on_sigterm(signum: int, frame: object) -> None:
        terminated.append(signum)
        if proc is not None:
            proc.send_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
        if terminated:  # arrived before the child existed
            proc.send_signal(signal.SIGINT)
        assert proc.stdout is not None and proc.stderr is not None
        errors = threading.Thread(target=_copy, args=(proc.stderr, sys.stderr), daemon=True)
        errors.start()
        try:
            _copy(proc.stdout, sys.stdout)
            errors.join()
            return proc.wait(), bool(terminated)
        except KeyboardInterrupt:  # Ctrl-C reached the child too (same process group); let it finish its cleanup
            proc.wait()
            raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _copy(src: IO[str], dst: IO[str]) -> None:
    for line in src:
        dst.write(line)
        dst.flush()
