"""`xylen train`: the initial model, sized to this machine."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from xylen.cli import app, err, handled, out, settings_from

if TYPE_CHECKING:
    from xylen.core.settings import Settings
    from xylen.train import TrainOptions


class LabelChoice(str, Enum):
    direction = "direction"
    threshold = "threshold"
    move = "move"
    triple_barrier = "triple-barrier"


class HeadChoice(str, Enum):
    auto = "auto"
    move = "move"
    direction = "direction"
    none = "none"


class FeatureChoice(str, Enum):
    v2 = "ohlcv-v2"
    ctx = "ohlcv-ctx-v1"


class ProfileChoice(str, Enum):
    m1 = "m1"
    m4 = "m4"
    gb8 = "8gb"
    gb16 = "16gb"
    auto = "auto"


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    profile: ProfileChoice = typer.Option(
        None,
        "--profile",
        "-p",
        case_sensitive=False,
        help="Hardware profile (threads, memory cap, model size, window). Default: auto.",
    ),
    data: list[Path] = typer.Option(
        [],
        "--data",
        "-d",
        help="Candle files (Binance CSV/zip, freqtrade feather, "
        "parquet, JSONL). Repeat for several. Default: the store, else the bundled sample.",
    ),
    symbol: str = typer.Option(
        None, "--symbol", help="Trading pair, e.g. BTCUSDT (default: from the files or settings)."
    ),
    interval: str = typer.Option(
        None, "--interval", help="Candle interval, e.g. 5m (default: from the files or settings)."
    ),
    exchange: str = typer.Option(
        None,
        "--exchange",
        help="Whose candles in the store: binance (default), binanceus, bybit, okx, kraken or coinbase.",
    ),
    name: str = typer.Option(
        None,
        "--name",
        help="Model name in the registry (default: <symbol>-<interval>, on other exchanges than binance "
        "<exchange>-<symbol>-<interval>, e.g. kraken-btcusd-1h).",
    ),
    label: LabelChoice = typer.Option(
        None,
        "--label",
        case_sensitive=False,
        help="What to predict over the next N candles: direction (up or not; default), threshold (up more than "
        "theta), move (more than theta either way), triple-barrier (+theta before -lower). README: Labels.",
    ),
    extra_head: HeadChoice = typer.Option(
        None,
        "--extra-head",
        case_sensitive=False,
        help="A second head in the same bundle: move (P(|move| > theta), /predict's move_probability), direction "
        "(up_probability) or none. Default auto: move, none for --label move.",
    ),
    horizon: int = typer.Option(None, "--horizon", help="Label horizon N in candles (default 6)."),
    threshold: float = typer.Option(
        None, "--threshold", help="Theta as a log return (default 0.002): threshold, move head, upper barrier."
    ),
    lower_barrier: float = typer.Option(
        None, "--lower-barrier", help="Triple-barrier lower barrier as a log return (default: theta)."
    ),
    feature_set: FeatureChoice = typer.Option(
        None,
        "--features",
        case_sensitive=False,
        help="Feature set: ohlcv-v2 (default; requests of 49 candles) or ohlcv-ctx-v1 (adds 1-3 day returns and "
        "daily volatility; requests of 3 days of candles + 1, at least 49; 5m..2h). A retrain keeps the model's.",
    ),
    folds: int = typer.Option(None, "--folds", help="Walk-forward folds (default 5)."),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="Make the new version live (default yes)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary instead of tables."),
    symbols: str = typer.Option(
        None,
        "--symbols",
        help="Several markets from the store, comma-separated (BTCUSDT,ETHUSDT): one model per symbol and interval "
        "(with --intervals), each named as --name's default. With --cluster they train in parallel.",
    ),
    intervals: str = typer.Option(
        None, "--intervals", help="The intervals for --symbols, comma-separated (5m,1h; default: the interval setting)."
    ),
    cluster: str = typer.Option(
        None,
        "--cluster",
        metavar="ADDR",
        help="Train on the Dask cluster whose scheduler is at ADDR (tcp://HOST:PORT; default XYLEN_DASK_CLUSTER): "
        "one model per task, the workers reading the store where this machine does (the same XYLEN_HOME, or "
        "XYLEN_DATA_URL); this machine publishes each "
        "bundle. Needs pip install 'xylen[dask]' here and on the workers.",
    ),
    distributed: bool = typer.Option(
        False,
        "--distributed",
        help="With a cluster: train ONE market (--symbol/--interval or the defaults) as one model over all its "
        "workers with lightgbm.dask, each worker computing the features of its share of the store's month "
        "partitions; evaluated on the last walk-forward fold. A worker lost mid-fit ends it with exit 5, nothing "
        "published.",
    ),
) -> None:
    """Train a model on candles, evaluate it walk-forward, write a bundle and a report, make it live.

    Example: xylen train --profile 8gb --data BTCUSDT-5m-2024-01.zip --data BTCUSDT-5m-2024-02.zip
    """
    with handled():
        from xylen.core.markets import check_exchange

        settings = settings_from(
            ctx,
            profile=profile.value if profile else None,
            symbol=symbol,
            interval=interval,
            exchange=check_exchange(exchange) if exchange else None,
            label=label.value if label else None,
            extra_head=extra_head.value if extra_head else None,
            label_horizon=horizon,
            label_threshold=threshold,
            label_lower_barrier=lower_barrier,
            feature_set=feature_set.value if feature_set else None,
            folds=folds,
        )
        if lower_barrier is not None and settings.label != "triple-barrier":
            from xylen.core.errors import ConfigError

            raise ConfigError(
                f"--lower-barrier {lower_barrier:g} is the triple-barrier label's lower barrier, but the label is "
                f"{settings.label!r}.",
                hint="add --label triple-barrier, or leave --lower-barrier out.",
            )
        from xylen.train import TrainOptions

        address = check_cluster(cluster) if cluster is not None else settings.dask_cluster
        if distributed:
            run_distributed(settings, markets_of(settings, symbols, intervals, symbol, interval, data, name),
                            address=address, name=name, promote=promote, as_json=as_json, data=data)
            return
        if symbols is not None or intervals is not None or address:
            code = run_markets(
                settings, markets_of(settings, symbols, intervals, symbol, interval, data, name),
                address=address, name=name, promote=promote, as_json=as_json, data=data,
            )
            raise typer.Exit(code)
        opts = TrainOptions(
            data=data, symbol=symbol, interval=interval, name=name, promote=promote, exchange=settings.exchange
        )
        run_training(settings, opts, as_json=as_json)


def check_cluster(cluster: str) -> str:
    from xylen.core.cluster import check_address

    return check_address(cluster, source="--cluster")


def _split(value: str, flag: str) -> list[str]:
    from xylen.core.errors import ConfigError

    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"{flag} {value!r} names nothing.", hint=f"give a comma-separated list, e.g. {flag} "
                          f"{'BTCUSDT,ETHUSDT' if flag == '--symbols' else '5m,1h'}.")
    return items


def markets_of(
    settings: Settings,
    symbols: str | None,
    intervals: str | None,
    symbol: str | None,
    interval: str | None,
    data: list[Path],
    name: str | None,
) -> list[Any]:
    """The markets `xylen train --symbols/--intervals/--cluster` trains, each checked before anything starts."""
    from xylen.core.errors import ConfigError
    from xylen.train.cluster import markets_from

    if symbols is not None and symbol is not None:
        raise ConfigError("Both --symbol and --symbols given.", hint="use --symbols for several markets, or --symbol.")
    if intervals is not None and interval is not None:
        raise ConfigError("Both --interval and --intervals given.", hint="use one of them.")
    if data and symbols is not None:
        raise ConfigError("--symbols reads the store; --data files are one series.", hint="leave one of them out.")
    syms = _split(symbols, "--symbols") if symbols is not None else [symbol or settings.symbol]
    ints = _split(intervals, "--intervals") if intervals is not None else [interval or settings.interval]
    markets = markets_from(settings, syms, ints, settings.exchange)
    if name is not None and len(markets) > 1:
        raise ConfigError(f"--name {name!r} names one model, but {len(markets)} markets are trained.",
                          hint="leave --name out: each model is named after its market (btcusdt-5m).")
    return markets


def run_markets(
    settings: Settings,
    markets: list[Any],
    *,
    address: str | None,
    name: str | None,
    promote: bool,
    as_json: bool,
    data: list[Path],
) -> int:
    """Train ``markets`` on the cluster at ``address`` (or one after another here); print each result as it is
    published. Returns the exit code (the most severe of the markets' errors)."""
    from dataclasses import replace

    from xylen.core.errors import ConfigError
    from xylen.train import cluster

    markets = [replace(m, name=name) for m in markets] if name else markets

    def said(o: Any) -> None:
        if as_json:
            return
        if o.result is not None:
            _print_summary(o.result)
            where = f" on {o.host}" if o.host else ""
            out.print(f"{o.market.label}: trained{where}, published {o.result.name} {o.result.version}")
        else:
            err.print(f"[bold red]error:[/] {escape(o.error['message'])}", markup=True, soft_wrap=True)
            if o.error.get("hint"):
                err.print(f"[yellow]hint:[/] {escape(str(o.error['hint']))}", markup=True, soft_wrap=True)

    if address:
        if data:
            raise ConfigError("--data files cannot be sent to a --cluster: its workers read the store.",
                              hint="put the candles in the store (`xylen collect`), or train here without --cluster.")
        outcomes = cluster.train_markets(settings, markets, address=address, promote=promote, on_done=said)
    else:
        outcomes = cluster.train_here(settings, markets, promote=promote, on_done=said)
    code = cluster.exit_code(outcomes)
    if as_json:
        import orjson

        body = {
            "exit_code": code,
            "cluster": address,
            "results": [
                {"symbol": o.market.symbol, "interval": o.market.interval, "exchange": o.market.exchange,
                 "host": o.host}
                | ({"result": o.result.to_dict()} if o.result is not None else {"error": o.error})
                for o in outcomes
            ],
        }
        typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
    elif len(outcomes) > 1:
        ok = sum(o.result is not None for o in outcomes)
        out.print(f"{ok} of {len(outcomes)} markets trained" + (f" on {address}" if address else ""))
    return code


def run_distributed(
    settings: Settings,
    markets: list[Any],
    *,
    address: str | None,
    name: str | None,
    promote: bool,
    as_json: bool,
    data: list[Path],
) -> None:
    """`xylen train --cluster ADDR --distributed`: one market, one model over the whole cluster."""
    from dataclasses import replace

    from xylen.core.errors import ConfigError
    from xylen.train.distributed import check_single, train_distributed

    if not address:
        raise ConfigError("--distributed trains one model over a Dask cluster, but no cluster was named.",
                          hint="add --cluster tcp://HOST:PORT, or set XYLEN_DASK_CLUSTER.")
    if data:
        raise ConfigError("--data files cannot be sent to a --cluster: its workers read the store.",
                          hint="put the candles in the store (`xylen collect`), or train here without --cluster.")
    market = check_single(markets)
    market = replace(market, name=name) if name else market
    if as_json:
        import orjson

        result = train_distributed(settings, market, address=address, promote=promote)
        body = {"cluster": address, "distributed": True} | result.to_dict()
        typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err, transient=True
    ) as bar:
        task = bar.add_task("Starting", total=1.0)
        result = train_distributed(settings, market, address=address, promote=promote,
                                   say=lambda s, f: bar.update(task, description=s, completed=f))
    _print_summary(result)


def run_training(settings: Settings, opts: TrainOptions | None = None, *, as_json: bool = False) -> None:
    """Train with a rich progress bar (or quietly for --json) and print the summary."""
    from xylen.profiles import resolve
    from xylen.train import TrainOptions, train

    prof = resolve(settings.profile, max_memory_gb=settings.lgbm_max_memory_gb, num_threads=settings.lgbm_num_threads)
    opts = opts or TrainOptions()
    if as_json:
        import orjson

        result = train(settings, opts, prof)
        typer.echo(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    err.print(
        f"profile [bold]{prof.name}[/] ({prof.chosen_by}): {prof.threads} thread{'s' if prof.threads != 1 else ''}, "
        f"{prof.memory_gb:g} GB cap, "
        f"{prof.num_leaves} leaves, max_bin {prof.max_bin}, up to {prof.num_boost_round} trees",
        markup=True,
    )
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err, transient=True
    ) as bar:
        task = bar.add_task("Starting", total=1.0)
        result = train(settings, opts, prof, progress=lambda s, f: bar.update(task, description=s, completed=f))
    _print_summary(result)


def _print_summary(r: object) -> None:
    from rich.table import Table

    from xylen.train import TrainResult

    assert isinstance(r, TrainResult)
    m = r.metrics
    for w in r.warnings:
        err.print(f"[yellow]note:[/] {w}", markup=True, soft_wrap=True)
    t = Table(
        title=f"{r.name} {r.version}: walk-forward, {len(r.folds)} folds, {r.rows_used} rows", title_justify="left"
    )
    for col in ("fold", "test from", "AUC", "AUC vol-only", "AUC shuffled", "log-loss", "base"):
        t.add_column(col, justify="right")
    from xylen.core.candles import fmt_ts

    for f in r.folds:
        t.add_row(
            str(f["index"]),
            fmt_ts(f["test_first"])[:10],
            f"{f['auc']:.4f}",
            f"{f['auc_volatility']:.4f}",
            f"{f['auc_shuffled']:.4f}",
            f"{f['logloss']:.4f}",
            f"{f['logloss_base']:.4f}",
        )
    t.add_row(
        "mean",
        "",
        f"{m['auc_mean']:.4f}",
        f"{m['auc_volatility_mean']:.4f}",
        f"{m['auc_shuffled_mean']:.4f}",
        f"{m['logloss_mean']:.4f}",
        f"{m['logloss_base_mean']:.4f}",
        style="bold",
    )
    out.print(t)
    from xylen.train.report import BACKTEST_COLUMNS, HEAD_COLUMNS, backtest_table, heads_table

    honesty = m["honesty"]
    heads = Table(title="what it knows (95% day-block bootstrap intervals)", title_justify="left")
    for col in HEAD_COLUMNS:
        heads.add_column(col, justify="left" if col in ("output", "verdict") else "right")
    for row in heads_table(honesty):
        heads.add_row(*row)
    out.print(heads)
    bt = honesty.get("backtest")
    if bt:
        table = Table(title=f"backtest: {bt['rule']}; signal {bt['signal']} >= {bt['entry_threshold']:g}",
                      title_justify="left")
        for col in BACKTEST_COLUMNS:
            table.add_column(col, justify="left" if col == "strategy" else "right")
        for row in backtest_table(bt):
            table.add_row(*row)
        out.print(table)
    out.print(f"[bold]{r.name} {r.version}[/] {honesty['sentence']}.", markup=True, soft_wrap=True)
    out.print(f"bundle: {r.bundle} ({'live' if r.promoted else 'not promoted'})")
    if r.report:
        out.print(f"report: {r.report}")
    out.print(f"took {r.seconds:.1f} s, peak memory {r.peak_rss_mb:.0f} MB")
