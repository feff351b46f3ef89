"""`xylen models`: list, show, promote and roll back model versions in the registry."""

from __future__ import annotations

import typer

from xylen.cli import app, handled, out, settings_from

models_app = typer.Typer(
    help="List, inspect, promote and roll back model versions.\n\nExample: xylen models list", no_args_is_help=True
)
app.add_typer(models_app, name="models")


def _registry(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from xylen.core.registry import Registry

    return Registry(settings_from(ctx).models_dir)


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _json(obj: object) -> None:
    import orjson

    typer.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())


@models_app.command("list")
def list_cmd(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List every model version; the live one is marked.

    Example: xylen models list --json
    """
    with handled():
        reg = _registry(ctx)
        rows = [r for n in reg.names() for r in reg.summary(n)]
        if as_json:
            _json(rows)
            return
        if not rows:
            out.print(f"No models in {reg.root}. Train one: xylen train")
            return
        from rich.table import Table

        t = Table()
        for col in ("name", "version", "live", "backend", "created", "AUC", "edge vs vol", "rows"):
            t.add_column(col)
        for r in rows:
            if not r["ok"]:
                t.add_row(r["name"], r["version"], "*" if r["live"] else "", "BROKEN", r["error"][:60], "", "", "")
                continue
            t.add_row(
                r["name"],
                r["version"],
                "*" if r["live"] else "",
                r["backend"],
                r["created_at"],
                _fmt(r["auc"]),
                _fmt(r["edge_vs_volatility"]),
                str(r["rows"] or ""),
            )
        out.print(t)


@models_app.command("show")
def show_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(None, help="Model name (default: the only one)."),
    version: str = typer.Argument(None, help="Version like v0003 (default: the live one)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
) -> None:
    """Show a version's manifest: metrics, training window, features, profile; verifies its artifact hash.

    Example: xylen models show btcusdt-5m v0002
    """
    with handled():
        from xylen.core.bundle import verify_artifact

        reg = _registry(ctx)
        name = reg.resolve_name(name)
        version = version or reg.current_path(name).name
        m = reg.manifest(name, version)
        verify_artifact(reg.path(name, version), m)
        if as_json:
            _json(m.model_dump(mode="json"))
            return
        live = reg.current(name)
        mt = m.metrics
        out.print(f"[bold]{m.name} {m.version}[/]{' (live)' if live and live.version == version else ''}", markup=True)
        out.print(
            f"backend {m.backend}; artifact {m.artifact.file} {m.artifact.size} bytes "
            f"sha256 {m.artifact.sha256[:16]}... (verified)"
        )
        out.print(
            f"features {m.feature_set.version}: {len(m.feature_set.names)} ({', '.join(m.feature_set.names[:6])}, ...)"
        )
        if m.training_window:
            from xylen.core.candles import fmt_ts

            tw = m.training_window
            out.print(
                f"trained on {m.symbol} {m.interval}: {fmt_ts(tw.first_open_time)} .. "
                f"{fmt_ts(tw.last_open_time)}, {tw.rows} rows"
            )
        if "auc_mean" in mt:
            out.print(
                f"AUC {mt['auc_mean']:.4f} | volatility-only {mt['auc_volatility_mean']:.4f} | shuffled "
                f"{mt['auc_shuffled_mean']:.4f} | edge {mt['auc_edge_vs_volatility']:+.4f}"
            )
        out.print(f"created {m.created_at} by xylen {m.xylen_version}; profile {m.profile.get('name', '-')}")
        report = reg.path(name, version) / "report.html"
        if report.exists():
            out.print(f"report: {report}")


@models_app.command("promote")
def promote_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name."),
    version: str = typer.Argument(..., help="Version to make live, e.g. v0003."),
) -> None:
    """Verify a version (in a child process) and make it live; running servers pick it up. A broken one is refused.

    Example: xylen models promote btcusdt-5m v0003
    """
    with handled():
        reg = _registry(ctx)
        name = reg.resolve_name(name)
        ptr = reg.promote(name, version)  # verified first (in a child process): a broken version never goes live
        out.print(f"{name}: {ptr.version} is live (previous: {ptr.history[0] if ptr.history else 'none'})")


@models_app.command("rollback")
def rollback_cmd(
    ctx: typer.Context, name: str = typer.Argument(None, help="Model name (default: the only one).")
) -> None:
    """Make the previous live version live again, in one step (verified first, like a promotion).

    Example: xylen models rollback btcusdt-5m
    """
    with handled():
        reg = _registry(ctx)
        name = reg.resolve_name(name)
        ptr = reg.rollback(name)
        out.print(f"{name}: rolled back, {ptr.version} is live")
