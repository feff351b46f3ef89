"""`xylen models ensemble create|show`: thin adapters over xylen.core.ensemble."""

from __future__ import annotations

from typing import Any

import typer

from xylen.cli import handled, out
from xylen.cli.models import _json, _registry, models_app

ensemble_app = typer.Typer(
    help="Combine models into an ensemble: a registry model served, promoted and rolled back like any other, whose "
    "probability combines its members' (mean, weighted mean or weighted majority vote)."
    "\n\nExample: xylen models ensemble create btcusdt-5m --member btcusdt-5m-a --member btcusdt-5m-b --promote",
    no_args_is_help=True,
)
models_app.add_typer(ensemble_app, name="ensemble")


@ensemble_app.command("create")
def create_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The ensemble's model name, e.g. btcusdt-5m (a series' name: /predict "
                               "routes that series to it)."),
    members: list[str] = typer.Option(..., "--member", help="A member: NAME (follows that model's live version) or "
                                      "NAME@vNNNN (that version). Repeat for each member (at least 2)."),
    weights: list[float] = typer.Option(None, "--weight", help="One weight (> 0) per --member, in the same order. "
                                        "Default: all 1."),
    aggregation: str = typer.Option(None, "--aggregation", help="mean | weighted (sum w*p / sum w) | vote (the "
                                    "weighted share of members with p >= 0.5). Default: weighted with --weight, "
                                    "else mean."),
    promote: bool = typer.Option(False, "--promote", help="Make the new version live (verified first)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Create a new version of an ensemble. Members must share label, outputs and feature set (same version, names
    and interval); anything else is refused (exit 2), as is a cycle, a weight <= 0, or an unknown aggregation. A
    missing member or version exits 4. Every member version is verified, and pinned so that no prune removes a version
    the ensemble's golden rows were computed with. Running servers serve it once it is live, members included.

    Example: xylen models ensemble create btcusdt-5m --member btcusdt-5m-a --member btcusdt-5m-b@v0002 --weight 2
    --weight 1 --promote
    """
    with handled():
        from xylen.core.ensemble import create, describe

        reg = _registry(ctx)
        version, _ = create(reg, name, members, weights or None, aggregation, promote=promote)
        info = describe(reg, name, version)
        if as_json:
            _json(info)
            return
        state = "live" if info["live"] else f"not live; `xylen models promote {name} {version}` makes it live"
        out.print(f"{name} {version}: ensemble ({info['aggregation']}) of "
                  f"{', '.join(m['member'] for m in info['members'])} ({state})", markup=False)


@ensemble_app.command("show")
def show_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The ensemble's model name."),
    version: str = typer.Argument(None, help="Version like v0003 (default: the live one)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show an ensemble version: its aggregation, and each member with its weight, the version the ensemble was
    created (and verified) with and the version a server serves in it now (a member without @version follows its
    live version).

    Example: xylen models ensemble show btcusdt-5m --json
    """
    with handled():
        from xylen.core.ensemble import describe

        reg = _registry(ctx)
        info = describe(reg, reg.resolve_name(name), version)
        if as_json:
            _json(info)
            return
        print_members(info)


def print_members(info: dict[str, Any]) -> None:
    from rich.table import Table

    out.print(f"[bold]{info['name']} {info['version']}[/]{' (live)' if info['live'] else ''}: ensemble, "
              f"{info['aggregation']} of {len(info['members'])} members; features {info['feature_set']}, "
              f"{info['interval'] or 'any'} candles", markup=True)
    t = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    for col in ("member", "weight", "created with", "serves", "backend"):
        t.add_column(col, no_wrap=True)
    for m in info["members"]:
        serves = m["serves"] or "nothing live"
        t.add_row(m["member"], f"{m['weight']:.3f}", m["created_with"],
                  f"{serves} (follows live)" if m["follows_live"] else serves, str(m["backend"]))
    out.print(t)
