"""The `xylen` command: thin typer adapters over the core library, one module per command group.

Each command parses options, resolves Settings, calls one core function and maps XylenError to the
documented exit code. Heavy libraries are imported inside the commands, so `xylen --help` stays instant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from xylen import __version__
from xylen.core.errors import EXIT_CODES, XylenError

T = TypeVar("T")

EXIT_HELP = "\n\n".join(f"{code}: {text}" for code, text in EXIT_CODES.items())

app = typer.Typer(
    name="xylen",
    help="Self-hosted crypto trading-signal models: collect Binance candles, train LightGBM sized to this "
    "machine, serve predictions, retrain as new candles arrive.\n\nExample: xylen train --profile auto",
    epilog=f"Exit codes:\n\n{EXIT_HELP}",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"xylen {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Path | None = typer.Option(
        None,
        "--home",
        envvar="XYLEN_HOME",
        show_envvar=True,
        help="xylen's folder (settings, data, models). Default ~/.xylen.",
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """xylen: collect, train, serve."""
    ctx.obj = {"home": home}


@contextmanager
def handled() -> Iterator[None]:
    """Map errors to exit codes with one readable message; never a traceback (XYLEN_DEBUG=1 shows one)."""
    try:
        yield
    except XylenError as exc:
        # escaped: a message quotes user values and hints like pip install 'xylen[onnx]', not rich markup
        err.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, soft_wrap=True)
        if exc.hint:
            err.print(f"[yellow]hint:[/] {escape(exc.hint)}", markup=True, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted; nothing was left half-written.")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as exc:  # a bug: say so plainly
        if os.environ.get("XYLEN_DEBUG"):
            raise
        err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc}", markup=True, soft_wrap=True)
        err.print("This is a bug in xylen. Run again with XYLEN_DEBUG=1 for the traceback and report it.")
        raise typer.Exit(1) from None


def settings_from(ctx: typer.Context, **overrides: Any) -> Any:
    from xylen.core.settings import load_settings

    home = (ctx.find_root().obj or {}).get("home")
    return load_settings({"home": home, **overrides})


def run(fn: Callable[[], T]) -> T:
    with handled():
        return fn()


def _register() -> None:
    from xylen.cli import (  # noqa: F401  (each module adds its commands to `app`)
        collect,  # noqa: F401
        config,
        models,
        models_ensemble,  # noqa: F401  (`xylen models ensemble create|show`)
        models_io,  # noqa: F401  (`xylen models export|import`)
        models_retention,  # noqa: F401  (`xylen models pin|unpin|prune`)
        retrain,  # noqa: F401
        serve,  # noqa: F401
        service,  # noqa: F401  (`xylen install-service`, `xylen uninstall-service`)
        train,
    )


_register()


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # `xylen models list | head`
        sys.stderr.close()
        sys.exit(0)
