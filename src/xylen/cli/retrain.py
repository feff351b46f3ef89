"""`xylen retrain`: keep live models fresh -- once (cron) or as a loop (a service)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from xylen.cli import app, err, handled, out, settings_from

if TYPE_CHECKING:
    from xylen.train.retrain import RunReport

RETRAIN_EPILOG = (
    "Outcomes per model: promoted, kept (the gate refused the candidate), nothing_new (too few new candles, or "
    "too few for a fair holdout yet), skipped (an imported model, with --all), busy (another retrain is running), "
    "conflict (someone promoted another version meanwhile), error.\n\n"
    "Exit codes: 0 when it ran without error (promoted, kept, nothing new, skipped, busy); otherwise the documented "
    "error codes (2 settings or unwritable XYLEN_HOME, 3 data, 4 model or registry, 5 training, 1 bug), the most "
    "severe winning with several models (1 > 4 > 5 > 3 > 2); 130 if interrupted. With --strict-exit: kept or "
    "conflict 10, nothing new or skipped 11, busy 12 (with several models the highest of these).\n\n"
    "--loop runs until SIGTERM or Ctrl-C (then exits 0; a run in progress is aborted and leaves nothing "
    "half-written)."
)


@app.command("retrain", epilog=RETRAIN_EPILOG)
def retrain_cmd(
    ctx: typer.Context,
    names: list[str] = typer.Argument(None, help="Models to retrain (default: the only live one)."),
    all_: bool = typer.Option(False, "--all", help="Every live model; imported ones are skipped with the reason."),
    min_new_samples: int = typer.Option(
        None,
        "--min-new-samples",
        help="Do nothing for a model until this many closed candles arrived after its training window "
        "(default XYLEN_RETRAIN_MIN_NEW_SAMPLES, 100).",
    ),
    warm_start: bool = typer.Option(
        False,
        "--warm-start/--full",
        help="Continue boosting the live model on the newest candles instead of a full refit (a full refit is "
        "forced after XYLEN_RETRAIN_MAX_WARM_STARTS warm starts in a row). Default: --full.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (per model: outcome, gate, watch)."),
    strict_exit: bool = typer.Option(
        False, "--strict-exit", help="Distinct exit codes for kept (10), nothing new (11) and busy (12)."
    ),
    loop: bool = typer.Option(False, "--loop", help="Run again every --interval seconds until stopped."),
    interval: str = typer.Option(
        None, "--interval", help="Seconds between runs of --loop (also 30m, 6h); default TRAINING_INTERVAL (1800)."
    ),
    lock_fd: int = typer.Option(None, "--lock-fd", hidden=True, help="Used by xylen serve for its retrain jobs."),
    cluster: str = typer.Option(
        None,
        "--cluster",
        metavar="ADDR",
        help="Make the candidates on the Dask cluster whose scheduler is at ADDR (tcp://HOST:PORT; default "
        "XYLEN_DASK_CLUSTER), one model per task, the workers reading the store and the registry where this "
        "machine does (the same XYLEN_HOME, or XYLEN_DATA_URL and XYLEN_MODELS_URL); this machine holds the run "
        "lock and publishes, gates and promotes each one. A model trained with `train --distributed` is refitted "
        "in full data-parallel over the whole cluster instead, one at a time. Needs pip install 'xylen[dask]'.",
    ),
) -> None:
    """Retrain live models on the candles `xylen collect` stored, keeping each one's feature set, label and extra
    heads; gate each candidate against the live model on the most recent holdout, each head against the live
    model's same head, and promote it only if every head is no worse (running servers swap it in).

    Example: xylen collect --once && xylen retrain --all
    """
    from xylen.core.errors import XylenError

    with handled(), json_errors(as_json):
        if min_new_samples is not None and min_new_samples < 1:
            from xylen.core.errors import ConfigError

            raise ConfigError(f"--min-new-samples {min_new_samples} is not allowed.", hint="use 1 or more.")
        if interval is not None and not loop:
            from xylen.core.errors import ConfigError

            raise ConfigError(f"--interval {interval} only applies to --loop.", hint="add --loop, or leave it out.")
        overrides: dict[str, Any] = {}
        if interval is not None:
            overrides["training_interval"] = interval
        try:
            settings = settings_from(ctx, **overrides)
        except XylenError as exc:  # the setting's generic name is not this command's option
            raise type(exc)(exc.message.replace("--training-interval (", "--interval ("), hint=exc.hint) from None
        if cluster is not None:
            from xylen.core.cluster import check_address

            cluster = check_address(cluster, source="--cluster")
            if loop:
                from xylen.core.errors import ConfigError

                raise ConfigError("--cluster cannot be used with --loop.",
                                  hint=f"set XYLEN_DASK_CLUSTER={cluster} for the loop's runs instead.")
        from xylen.train.retrain import RetrainOptions

        opts = RetrainOptions(
            names=names or (),
            all=all_,
            min_new_samples=min_new_samples,
            mode="warm" if warm_start else "full",
            lock_fd=lock_fd,
        )
        if loop:
            if lock_fd is not None:
                from xylen.core.errors import ConfigError

                raise ConfigError("--lock-fd cannot be used with --loop.", hint="leave --lock-fd out.")
            from xylen.train.loop import child_args, run_loop

            code = run_loop(settings, child_args(names or (), all_, min_new_samples, warm_start), as_json=as_json)
            raise typer.Exit(code)
        code = run_once(settings, opts, as_json=as_json, strict=strict_exit, cluster=cluster or settings.dask_cluster)
    raise typer.Exit(code)


@contextmanager
def json_errors(as_json: bool) -> Iterator[None]:
    """With --json, an error that stops the whole run (a bad option or setting too) is the one JSON object."""
    from xylen.core.errors import XylenError

    try:
        yield
    except XylenError as exc:
        if not as_json:
            raise
        import orjson

        from xylen.train.retrain import error_of

        body = {"status": "error", "message": exc.message, "samples_used": 0, "exit_code": exc.exit_code}
        typer.echo(orjson.dumps(body | {"error": error_of(exc), "results": []}).decode())
        raise typer.Exit(exc.exit_code) from None


def run_once(settings: Any, opts: Any, *, as_json: bool, strict: bool, cluster: str | None = None) -> int:
    import orjson

    from xylen.train.retrain import RunReport, Terminated, retrain, sigterm_unwinds

    try:
        with sigterm_unwinds():
            if cluster:
                from xylen.train.cluster import retrain_on_cluster

                report = retrain_on_cluster(settings, opts, cluster)
            else:
                report = retrain(settings, opts)
    except Terminated as exc:
        # what was settled before the signal stays true (a promotion among it happened): report it with the abort
        done = RunReport(exc.results, sum(r.seconds for r in exc.results))
        msg = "terminated by SIGTERM; the run was aborted and nothing was left half-written."
        if done.results:
            msg = f"{'; '.join(f'{r.name}: {r.message}' for r in done.results)}; then {msg}"
        if as_json:
            body = done.to_dict() | {"status": "error", "message": msg, "exit_code": 130}
            typer.echo(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY).decode())
        else:
            print_report(done)
            err.print(msg)
        return 130
    if as_json:
        typer.echo(orjson.dumps(report.to_dict(strict), option=orjson.OPT_SERIALIZE_NUMPY).decode())
    else:
        print_report(report)
    return report.exit_code(strict)


STYLE = {"promoted": "green", "kept": "yellow", "conflict": "yellow", "error": "red"}


def print_report(report: RunReport) -> None:
    from rich.markup import escape

    for r in report.results:
        style = STYLE.get(r.outcome, "")
        head = f"[{style}]{r.name}[/]" if style else r.name
        out.print(f"{head}: {escape(r.message)}", markup=True)
        g = r.gate
        if g and g.get("heads"):
            h = g["holdout"]
            out.print(f"  holdout {h['rows']} candles over {h['days']} days, each head scored on its own labels:")
            parts = [(f"primary ({g['primary']['kind']}) head", g)] + [(f"{k} head", h) for k, h in g["heads"].items()]
            for who, rec in parts:
                decision = rec["primary"]["decision"] if rec is g else rec["decision"]
                out.print(f"    {who}: {decision}: {_scores(rec)}", markup=False)
        elif g and g.get("live"):
            out.print(f"  holdout {g['holdout']['rows']} candles over {g['holdout']['days']} days: {_scores(g)}")
        if r.pruned:
            out.print(f"  retention removed {', '.join(r.pruned)}")
        if r.error and r.error.get("hint"):
            err.print(f"[yellow]hint:[/] {escape(str(r.error['hint']))}", markup=True)
    out.print(f"took {report.seconds:.1f} s")


def _scores(rec: dict[str, Any]) -> str:
    """One head's gate scores: against the live version's same head, or (unreadable) the constant base rate."""
    cand = rec["candidate"]
    if rec.get("live"):
        return (
            f"log-loss candidate {cand['logloss']:.5f} vs live {rec['live']['logloss']:.5f}; "
            f"AUC {cand['auc']:.4f} vs {rec['live']['auc']:.4f}"
        )
    return f"log-loss candidate {cand['logloss']:.5f} vs the base rate's {rec['base_rate']['logloss']:.5f}"
