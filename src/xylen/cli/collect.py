"""`xylen collect`: Binance candles into the local store (backfill, follow live, status, import, export)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from xylen.cli import app, err, handled, out, settings_from
from xylen.core.errors import ExchangeTemporaryError

collect_app = typer.Typer(
    help="Collect candles into the store: backfill by REST, then follow live (Binance by websocket; binanceus, "
    "bybit, okx, kraken and coinbase through ccxt, by REST polling just after each candle closes).\n\n"
    "Example: xylen collect --symbols BTCUSDT,ETHUSDT --intervals 5m,1h --since 2024-01-01\n\n"
    "Example: xylen collect --exchange kraken --symbols BTC/USD --intervals 1h --once",
    invoke_without_command=True,
)
app.add_typer(collect_app, name="collect")


def _exchange(value: str | None) -> str | None:
    """--exchange checked here, so a typo gets the usual message with the list and a close match."""
    from xylen.core.markets import check_exchange

    return None if value is None else check_exchange(value)


def _json(obj: object) -> None:
    import orjson

    typer.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode())


class _Bars:
    """Rich progress bars on stderr, one per series."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, symbol: str, interval: str, done: int, total: int) -> None:
        key = f"{symbol} {interval}"
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(key, total=max(total, 1))
        self.progress.update(self.tasks[key], completed=done if total else 1, total=max(total, 1))


@collect_app.callback()
def collect_cmd(
    ctx: typer.Context,
    exchange: str = typer.Option(
        None,
        "--exchange",
        "-e",
        help="binance (default), binanceus, bybit, okx, kraken or coinbase (default: the exchange setting).",
    ),
    symbols: str = typer.Option(
        None,
        "--symbols",
        "-s",
        help="Comma-separated pairs in the exchange's spelling (BTCUSDT, BTC-USDT, XBTUSD) or ccxt's BTC/USDT; "
        "stored as BTCUSDT (default: the symbol setting).",
    ),
    intervals: str = typer.Option(
        None,
        "--intervals",
        "-i",
        help="Comma-separated Binance intervals, 1s to 1M (1w: Mondays, 1M: calendar months), e.g. 5m,1h "
        "(default: the interval setting).",
    ),
    since: str = typer.Option(
        None,
        "--since",
        help="Start here instead of after the last stored candle: "
        "2024-01-01, 2024-01-01T12:00 (UTC) or epoch ms. Empty series default to a year back.",
    ),
    until: str = typer.Option(None, "--until", help="Stop at this time (exclusive) and exit; same formats as --since."),
    once: bool = typer.Option(
        False, "--once", help="Backfill up to now and exit (for cron) instead of following live."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars; print one summary line."),
    as_json: bool = typer.Option(False, "--json", help="No progress bars; print a JSON summary."),
) -> None:
    """Backfill each series from its last stored candle (or --since), then follow live until SIGTERM/Ctrl-C.

    Example: xylen collect --symbols BTCUSDT,ETHUSDT --intervals 5m,1h --once
    """
    if ctx.invoked_subcommand is not None:
        return
    with handled():
        from xylen.collect.runner import (
            CollectOptions,
            collect,
            parse_intervals,
            parse_symbols,
            parse_time,
            stop_on_signals,
        )

        settings = settings_from(ctx, exchange=_exchange(exchange))
        opts = CollectOptions(
            parse_symbols(symbols or settings.symbol),
            parse_intervals(intervals or settings.interval),
            parse_time(since, "--since"),
            parse_time(until, "--until"),
            once,
            settings.exchange,
        )
        bars = None if (quiet or as_json) else _Bars()

        def retrying(exc: ExchangeTemporaryError, delay: float) -> None:
            err.print(
                f"[yellow]warning:[/] {escape(exc.message)} Retrying in {delay:.0f} s (following live, `xylen "
                "collect` outlasts an unreachable exchange; --once gives up instead).",
                markup=True,
            )

        with stop_on_signals() as stop:
            if bars is not None:
                with bars.progress:
                    result = collect(settings, opts, progress=bars, should_stop=stop, on_retry=retrying)
            else:
                result = collect(settings, opts, should_stop=stop, on_retry=retrying)
        if as_json:
            _json(result.to_dict())
        else:
            (err if not quiet else out).print(result.line())
        if result.interrupted:
            # Following live, SIGTERM is a service's normal stop (systemd, launchd, Docker): exit 0 as serve and
            # retrain --loop do. Ctrl-C, and any signal that cuts a --once/--until run short, exit 130.
            follows = not (once or opts.until is not None)
            raise typer.Exit(0 if follows and stop.signum == signal.SIGTERM else 130)


@collect_app.command("status")
def status_cmd(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")
) -> None:
    """Per stored series, of every exchange: first and last candle, rows, gaps, known gaps (no trading), lag
    behind now, and unreadable files moved to quarantine with the command that fetches their candles again. Folds
    small tail files into their month files first.

    Example: xylen collect status --json
    """
    with handled():
        import time

        from xylen.collect.status import rows_for_table, status
        from xylen.core.markets import DEFAULT_EXCHANGE
        from xylen.core.store import open_store

        settings = settings_from(ctx)
        now = int(time.time() * 1000)
        store = open_store(settings, DEFAULT_EXCHANGE)
        summaries = [s for ex in store.exchanges_here() for s in status(store.for_exchange(ex), now)]
        if as_json:
            _json([s.to_dict() for s in summaries])
            return
        if not summaries:
            out.print(
                f"The store {store.klines} is empty. Fill it: xylen collect --symbols BTCUSDT --intervals 5m --once"
            )
            return
        from rich.table import Table

        rows = rows_for_table(summaries)
        t = Table()
        for col in rows[0]:
            t.add_column(col)
        for r in rows:
            t.add_row(*r.values())
        out.print(t)
        for s in summaries:
            for q in s.quarantined:
                out.print(f"quarantined ({s.exchange} {s.symbol} {s.interval}, unreadable): {q.file}\n  fix: {q.fix}")


@collect_app.command("migrate")
def migrate_cmd(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")
) -> None:
    """Move a store written before exchanges (klines/symbol=...) in place to klines/exchange=binance/...,
    with its known gaps and quarantined files. Each file moves atomically and nothing is overwritten (a file
    already at the new place is merged); if it is interrupted, run it again to finish. Files that are not the
    store's are left where they are and listed.

    Example: xylen collect migrate
    """
    with handled():
        from xylen.core.errors import ConfigError
        from xylen.core.store_migrate import migrate

        def waiting() -> None:
            err.print("another `xylen collect migrate` is moving this store; waiting for it to finish")

        location = settings_from(ctx).data_location
        if isinstance(location, str):
            raise ConfigError(
                f"`xylen collect migrate` moves a local store; the store is on S3 ({location!r}, XYLEN_DATA_URL).",
                hint="a store on S3 is written in the current layout; to bring an old local store there, run "
                "`XYLEN_DATA_URL=<its folder> xylen collect migrate`, then copy the folder to the bucket.",
            )
        result = migrate(location, on_wait=waiting)
        if as_json:
            _json(result.to_dict())
        else:
            out.print(escape(result.line()))


@collect_app.command("import")
def import_cmd(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(
        ...,
        help="Files: data.binance.vision .zip (a .CHECKSUM beside it is "
        "verified) or .csv, freqtrade .feather/.parquet, .jsonl.",
    ),
    symbol: str = typer.Option(
        None,
        "--symbol",
        help="Pair, when the file name does not say (BTCUSDT-5m-2024-01.zip does); btcusdt is read as BTCUSDT.",
    ),
    interval: str = typer.Option(
        None, "--interval", help="Interval (1s to 1M), when neither the name nor the candles say."
    ),
    exchange: str = typer.Option(
        None,
        "--exchange",
        "-e",
        help="Whose market the candles are from: binance, binanceus, bybit, okx, kraken or coinbase "
        "(default: the exchange setting, binance).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Import candle files into the store; all are checked before any is written. Duplicates are merged.

    Example: xylen collect import BTCUSDT-5m-2024-01.zip BTCUSDT-5m-2024-02.zip
    """
    with handled():
        from xylen.collect.archive import import_files
        from xylen.core.store import open_store

        settings = settings_from(ctx, exchange=_exchange(exchange))
        store = open_store(settings)
        result = import_files(store, paths, symbol=symbol, interval=interval)
        if as_json:
            _json(result.to_dict())
        else:
            out.print(result.line())


@collect_app.command("export")
def export_cmd(
    ctx: typer.Context,
    symbol: str = typer.Option(..., "--symbol", help="Pair, e.g. BTCUSDT."),
    interval: str = typer.Option(..., "--interval", help="Interval, e.g. 5m."),
    fmt: str = typer.Option("jsonl", "--format", "-f", help="jsonl, csv or parquet."),
    exchange: str = typer.Option(
        None,
        "--exchange",
        "-e",
        help="Whose series: binance, binanceus, bybit, okx, kraken or coinbase "
        "(default: the exchange setting, binance).",
    ),

    out_path: Path = typer.Option(None, "--out", "-o", help="File to write (default: standard output)."),
) -> None:
    """Export one stored series as JSONL, CSV or Parquet.

    Example: xylen collect export --symbol BTCUSDT --interval 5m --format csv --out btc-5m.csv
    """
    with handled():
        from xylen.collect.archive import export_series
        from xylen.core.errors import ConfigError
        from xylen.core.store import open_store

        if fmt not in ("jsonl", "csv", "parquet"):
            raise ConfigError(f"--format {fmt!r} is unknown.", hint="use jsonl, csv or parquet.")
        settings = settings_from(ctx, exchange=_exchange(exchange))
        store = open_store(settings)
        n = export_series(store, symbol, interval, fmt, out_path)  # type: ignore[arg-type]
        if out_path is not None:
            err.print(f"exported {n} candles to {out_path}")
