"""`xylen serve`: the inference server."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

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
        help="Serve only these models (repeat). Default: every "
        "model in the registry; the first is the default for /predict.",
    ),
    model_path: Path = typer.Option(None, "--model-path", help="Serve this one bundle folder (MODEL_PATH)."),
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
        help="Allow a non-loopback --host without API keys (e.g. behind an authenticating proxy).",
    ),
    train_if_missing: bool = typer.Option(
        False,
        "--train-if-missing",
        help="If no model is live yet, first train one (store data, else the bundled sample; profile auto).",
    ),
    drain_seconds: float = typer.Option(
        0.0, "--drain-seconds", help="After SIGTERM, answer 503 on readiness for this long before closing the listener."
    ),
) -> None:
    """Serve the registry's live models over HTTP; new versions are hot-swapped within 2 s.

    Example: XYLEN_API_KEYS=secret xylen serve --host 0.0.0.0 --port 8000
    """
    with handled():
        from xylen.serve.server import ServeOptions, serve

        settings = settings_from(
            ctx,
            host=host,
            port=port,
            model_path=model_path,
            log_format=log_format.value if log_format else None,
            allow_unauthenticated=allow_unauthenticated,
        )
        if train_if_missing and settings.model_path is None:
            _train_if_missing(settings, list(model))
        serve(
            settings,
            ServeOptions(
                names=list(model), workers=workers, drain_seconds=drain_seconds, model_path=settings.model_path
            ),
        )


def _train_if_missing(settings: Settings, names: list[str]) -> None:
    """Train the default series when it has no live model yet (the README's first command)."""
    from xylen.cli import err
    from xylen.cli.train import run_training
    from xylen.core.registry import Registry, model_name

    registry = Registry(settings.models_dir)
    default = model_name(settings.symbol, settings.interval)
    if registry.current(default) is not None or (names and default not in names):
        return
    err.print(f"No live {default} model in {registry.root}: training one first.")
    run_training(settings)
