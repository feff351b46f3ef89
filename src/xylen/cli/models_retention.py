"""`xylen models pin|unpin|prune`: thin adapters over xylen.core.retention (retention keeps the newest N versions
plus the live one, the rollback target and pinned ones)."""

from __future__ import annotations

from typing import Any

import typer

from xylen.cli import err, handled, out, settings_from
from xylen.cli.models import _json, _registry, models_app


@models_app.command("pin")
def pin_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name."),
    version: str = typer.Argument(..., help="Version to keep whatever the retention, e.g. v0003."),
) -> None:
    """Pin a version: `xylen models prune` and retraining never remove it.

    Example: xylen models pin btcusdt-5m v0003
    """
    with handled():
        reg = _registry(ctx)
        name = reg.resolve_name(name)
        changed = reg.pin(name, version)
        pins = ", ".join(sorted(reg.pins(name)))
        out.print(f"{name}: {version} {'pinned' if changed else 'was pinned already'} (pinned: {pins})")


@models_app.command("unpin")
def unpin_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name."),
    version: str = typer.Argument(..., help="Pinned version to release, e.g. v0003."),
) -> None:
    """Unpin a version: the retention may remove it again (unless it is among the newest, live or the rollback target).

    Example: xylen models unpin btcusdt-5m v0003
    """
    with handled():
        reg = _registry(ctx)
        name = reg.resolve_name(name)
        changed = reg.unpin(name, version)
        pins = ", ".join(sorted(reg.pins(name))) or "none"
        out.print(f"{name}: {version} {'unpinned' if changed else 'was not pinned'} (pinned: {pins})")


@models_app.command("prune")
def prune_cmd(
    ctx: typer.Context,
    names: list[str] = typer.Argument(None, help="Models to prune (default: the only one)."),
    all_models: bool = typer.Option(False, "--all", help="Prune every model in the registry."),
    keep: int = typer.Option(None, "--keep", help="Versions to keep per model (default XYLEN_KEEP_VERSIONS, 10)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be removed."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (also on errors)."),
) -> None:
    """Remove old versions: keep the newest N of each model, plus the live version, the rollback target and pinned
    versions. A model whose CURRENT.json or PINS.json is damaged is left whole (exit 4, after the others). On an S3
    registry it also removes abandoned uploads: versions a killed publisher claimed but never committed, once nothing
    was written to them for 24 hours (by the S3 server's clock), after the old versions; a failure there is reported
    apart (JSON "abandoned_error") and stops no removal.

    Example: xylen models prune --all --keep 5 --dry-run
    """
    report: dict[str, Any] = {"keep": keep, "dry_run": dry_run, "exit_code": 0, "results": []}
    with handled():
        from xylen.core import retention
        from xylen.core.errors import ConfigError, XylenError

        try:
            settings = settings_from(ctx)
            keep = settings.keep_versions if keep is None else keep
            report["keep"] = keep
            retention.check_keep(keep)
            reg = _registry(ctx)
            if all_models and names:
                raise ConfigError(
                    f"Both --all and model names ({', '.join(names)[:200]}) were given.", hint="pass one or the other."
                )
            given = [reg.resolve_name(n) for n in names or []]
            chosen = reg.names() if all_models else given or [reg.resolve_name(None)]
            report = retention.prune_models(reg, chosen, keep, dry_run=dry_run)
        except XylenError as exc:
            if not as_json:
                raise
            report |= {"exit_code": exc.exit_code, "error": {"message": exc.message, "hint": exc.hint}}
        if as_json:
            _json(report)
        else:
            _print(report)
        if report["exit_code"]:
            raise typer.Exit(report["exit_code"])


def _print(report: dict[str, Any]) -> None:
    if not report["results"]:
        out.print("No models to prune.")
    verb = "would remove" if report["dry_run"] else "removed"
    for r in report["results"]:
        if r["error"]:
            err.print(f"{r['name']}: error: {r['error']['message']}", markup=False)
            if r["error"]["hint"]:
                err.print(f"hint: {r['error']['hint']}", markup=False)
            continue
        why = [f"newest {report['keep']}"]
        if r["live"]:
            why.append(f"live {r['live']}")
        if r["rollback_target"]:
            why.append(f"rollback target {r['rollback_target']}")
        if r["pinned"]:
            why.append(f"pinned {', '.join(r['pinned'])}")
        done = f"{verb} {', '.join(r['removed'])}" if r["removed"] else f"nothing to remove ({len(r['kept'])} versions)"
        if r.get("abandoned"):
            done += f"; {verb} abandoned uploads {', '.join(r['abandoned'])} (claimed, never committed)"
        out.print(f"{r['name']}: {done}; keeps {len(r['kept'])}: {'; '.join(why)}", markup=False)
        if r.get("abandoned_error"):
            err.print(f"{r['name']}: error: abandoned uploads were not cleaned: {r['abandoned_error']['message']}",
                      markup=False)
            if r["abandoned_error"]["hint"]:
                err.print(f"hint: {r['abandoned_error']['hint']}", markup=False)
