"""`xylen models`: list, show, promote and roll back model versions in the registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from xylen.cli import app, handled, out, settings_from

if TYPE_CHECKING:
    from xylen.core.bundle import Manifest
    from xylen.core.labels import LabelSpec

models_app = typer.Typer(
    help="List, inspect, promote, roll back, pin and prune model versions; import and export models."
    "\n\nExample: xylen models list",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


def _registry(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from xylen.core.registry import open_registry

    return open_registry(settings_from(ctx))


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _json(obj: object) -> None:
    import orjson

    typer.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())


def _stale_cell(stale: bool | None) -> str:
    return "" if stale is None else "STALE" if stale else "no"


@models_app.command("list")
def list_cmd(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List every model version; the live one is marked, and flagged stale when it was created longer ago than
    XYLEN_MODEL_MAX_AGE (default 7d); pinned versions are marked "pin" (`xylen models pin`).

    Example: xylen models list --json
    """
    with handled():
        from xylen.train.watch import mark_stale

        reg = _registry(ctx)
        max_age = settings_from(ctx).model_max_age
        rows = mark_stale([r for n in reg.names() for r in reg.summary(n)], max_age)
        if as_json:
            _json(rows)
            return
        if not rows:
            out.print(f"No models in {reg.location}. Train one: xylen train")
            return
        from rich.table import Table

        # fits 80 columns (* marks the live version): the edge's figures and interval are in `xylen models show`
        # and --json; here its verdict
        t = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
        for col in ("name", "version", "label", "created", "AUC", "edge", "stale", "pinned"):
            t.add_column(col, no_wrap=col in ("name", "version"))
        for r in rows:
            if not r["ok"]:
                broken = (r["name"], _version_cell(r), "BROKEN", r["error"][:60], "", "", "")
                t.add_row(*broken, "pin" if r.get("pinned") else "")
                continue
            t.add_row(
                r["name"],
                _version_cell(r),
                # an imported model has no label: its backend says what it is
                r.get("label") or (r["backend"] if r["backend"] != "lightgbm" else ""),
                str(r["created_at"])[:10],
                _fmt(r["auc"]),
                _edge_cell(r.get("edge"), r.get("edge_vs_volatility"), short=True),
                _stale_cell(r.get("stale")),
                "pin" if r.get("pinned") else "",
            )
        out.print(t)


SHORT_VERDICT = {"measurable": "measurable", "none measurable": "none", "below the baseline": "below"}


def _version_cell(r: dict[str, Any]) -> str:
    return f"{r['version']} *" if r["live"] else str(r["version"])  # * marks the live version


def _edge_cell(edge: dict[str, Any] | None, legacy: Any, *, short: bool = False) -> str:
    """The primary head's edge with its interval and verdict (``short``: the verdict alone); an older model's edge
    says it has no interval."""
    if edge and all(isinstance(edge.get(k), (int, float)) for k in ("value", "low", "high")):
        if short:  # one word for a narrow column: measurable | none (measurable) | below (the baseline) | n/a
            verdict = str(edge.get("verdict") or "")
            return SHORT_VERDICT.get(verdict, verdict[:10])
        return f"{edge['value']:+.4f} [{edge['low']:+.4f}, {edge['high']:+.4f}] {edge.get('verdict') or ''}".strip()
    if isinstance(legacy, (int, float)) and not isinstance(legacy, bool):
        return "no interval" if short else f"{legacy:+.4f} (no interval)"
    return ""


@models_app.command("show")
def show_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(None, help="Model name (default: the only one)."),
    version: str = typer.Argument(None, help="Version like v0003 (default: the live one)."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help='Print the whole manifest as JSON, with "summary", "label_spec", "outputs", "min_candles", "watch" and '
        '"staleness" keys added.',
    ),
) -> None:
    """Show a version: the one sentence on what it knows (its evaluation, with intervals), its label and what its
    probability predicts, its outputs (probability, and up_probability / move_probability when it has them), its
    feature set and the candles a request must send, metrics, training window, profile; verifies the hash of its
    artifact and of each head's. For the live version also its watch record (AUC and hit rate on the candles since
    its promotion, next to the volatility baseline) and its age against XYLEN_MODEL_MAX_AGE.

    Example: xylen models show btcusdt-5m v0002
    """
    with handled():
        from xylen.core.bundle import outputs_of, verify_artifact
        from xylen.core.labels import read as read_label

        reg = _registry(ctx)
        name = reg.resolve_name(name)
        version = version or reg.current_path(name).name
        m = reg.manifest(name, version)
        verify_artifact(reg.path(name, version), m)
        for head in m.heads:
            verify_artifact(reg.path(name, version), m, head.artifact)
        from xylen.core.summary import sentence
        from xylen.train import watch

        live = reg.current(name)
        is_live = bool(live and live.version == version)
        record = watch.read(reg, name) if is_live else None
        age = watch.staleness(m, settings_from(ctx).model_max_age)
        spec, outputs, min_candles = read_label(m.label), outputs_of(m), _min_candles(m)
        if as_json:
            extra = {"summary": sentence(m), "label_spec": spec.to_dict() if spec else None, "outputs": outputs}
            _json(m.model_dump(mode="json") | extra | {"min_candles": min_candles, "watch": record, "staleness": age})
            return
        mt = m.metrics
        out.print(f"[bold]{m.name} {m.version}[/]{' (live)' if live and live.version == version else ''}", markup=True)
        out.print(f"what it knows: {sentence(m)}", markup=False)
        out.print(_label_line(m.label, spec), markup=False)
        out.print("outputs: " + "; ".join(f"{k} = {v}" for k, v in outputs.items()), markup=False)
        out.print(
            f"backend {m.backend}; artifact {m.artifact.file} {m.artifact.size} bytes "
            f"sha256 {m.artifact.sha256[:16]}... (verified)"
        )
        if m.backend == "ensemble":  # its members: which version each serves, and its weight
            from xylen.cli.models_ensemble import print_members
            from xylen.core.ensemble import describe

            print_members(describe(reg, name, version))
        for head in m.heads:
            out.print(
                f"head {head.label.get('kind')}: artifact {head.artifact.file} {head.artifact.size} bytes sha256 "
                f"{head.artifact.sha256[:16]}... (verified)",
                markup=False,
            )
        window = (
            f"a request sends at least {min_candles} candles"
            if min_candles is not None
            else "this xylen does not compute them from candles: a request sends them (\"features\" or \"indicators\")"
        )
        names = m.feature_set.names
        listed = f"{len(names)} ({', '.join(names[:6])}, ...)"
        out.print(f"features {m.feature_set.version}: {listed}; {window}", markup=False)
        if m.training_window:
            from xylen.core.candles import fmt_ts

            tw = m.training_window
            out.print(
                f"trained on {m.exchange} {m.symbol} {m.interval}: {fmt_ts(tw.first_open_time)} .. "
                f"{fmt_ts(tw.last_open_time)}, {tw.rows} rows"
            )
        figures = [
            f"{label} {mt[key]:{fmt}}"
            for label, key, fmt in (
                ("AUC", "auc_mean", ".4f"),
                ("volatility-only", "auc_volatility_mean", ".4f"),
                ("shuffled", "auc_shuffled_mean", ".4f"),
            )
            if isinstance(mt.get(key), (int, float)) and not isinstance(mt.get(key), bool)
        ]
        if figures:  # each figure the manifest has (a hand-edited or older one may lack some)
            out.print(" | ".join(figures))
        made = (m.model_extra or {}).get("retrain")
        g = (m.model_extra or {}).get("gate")
        if isinstance(made, dict) and isinstance(g, dict):
            how = f"retrained from {made.get('parent')} ({made.get('mode')})"
            out.print(f"{how}; gate: {g.get('decision')}: {g.get('reason')}", markup=False)
        out.print(f"created {m.created_at} by xylen {m.xylen_version}; profile {m.profile.get('name', '-')}")
        out.print(_age_line(age), markup=False)
        if is_live:
            out.print(_watch_lines(record, name), markup=False)
        report = reg.path(name, version) / "report.html"
        if report.exists():
            out.print(f"report: {report}")


def _label_line(label: dict[str, Any], spec: LabelSpec | None) -> str:
    if spec is None:
        what = f"not one this xylen reads ({str(label)[:80]})" if label else "none recorded (an imported model)"
        return f"label: {what}"
    return f"label: {spec.kind}, {spec.horizon} candles ahead: {spec.describe()}; predicts {spec.predicts()}"


def _min_candles(m: Manifest) -> int | None:
    from xylen.core import featuresets

    fs = featuresets.for_manifest(m.feature_set.version, list(m.feature_set.names), m.interval)
    return fs.min_candles if fs is not None else None


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _age_line(age: dict[str, Any]) -> str:
    max_age = _span(age["max_age_seconds"])
    if age["age_seconds"] is None:
        return f"age unknown (created_at is not a time); max age {max_age}"
    state = "STALE: retrain it (xylen retrain)" if age["stale"] else "fresh"
    return f"age {_span(age['age_seconds'])} (max {max_age}, XYLEN_MODEL_MAX_AGE): {state}"


def _watch_lines(rec: dict[str, Any] | None, name: str) -> str:
    if rec is None:
        return f"watch: no record for this live version yet (`xylen retrain {name}` writes one after each run)"
    from xylen.core.candles import fmt_ts

    head = f"watch since {rec['promoted_at']} (computed {rec['computed_at']}): {rec['rows']} candles scored"
    if rec["first_open_time"] is not None:
        head += f" ({fmt_ts(rec['first_open_time'])} .. {fmt_ts(rec['last_open_time'])})"
    if rec["base_rate"] is not None:
        head += f", base rate {rec['base_rate']:.3f}"
    lines = [head]
    model, base = rec.get("model"), rec.get("volatility_baseline")
    if isinstance(model, dict):
        line = f"  live model: AUC {_fmt(model['auc'])}, hit rate {_hit(model)}"
        if isinstance(base, dict):
            line += f" | volatility baseline: AUC {_fmt(base['auc'])}, hit rate {_hit(base)}"
            line += f" | edge {rec['auc_edge_vs_volatility']:+.4f}" if rec["auc_edge_vs_volatility"] is not None else ""
        lines.append(line)
    if rec.get("note"):
        lines.append(f"  {rec['note']}")
    return "\n".join(lines)


def _hit(m: dict[str, Any]) -> str:
    return "-" if m["hit_rate"] is None else f"{m['hit_rate']:.3f} on {m['signals']} signals"


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
