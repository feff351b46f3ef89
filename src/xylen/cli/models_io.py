"""`xylen models export` and `xylen models import`: thin adapters over xylen.core.convert."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from xylen.cli import handled, out
from xylen.cli.models import _json, _registry, models_app


@models_app.command("export")
def export_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name of a LightGBM bundle."),
    version: str = typer.Argument(None, help="Version like v0003 (default: the live one)."),
    fmt: Literal["onnx"] = typer.Option("onnx", "--format", help="Target format (onnx)."),
    new_name: str = typer.Option(None, "--name", help="Register the result under this name (default NAME-onnx)."),
    out_dir: Path = typer.Option(None, "--out", help="Also copy the new bundle folder here (new or empty folder)."),
    promote: bool = typer.Option(False, "--promote", help="Make the new version live."),
    primary_only: bool = typer.Option(
        False,
        "--primary-only",
        help="Export a bundle with extra heads anyway, as its primary model alone: the ONNX bundle answers "
        "`probability` (and `up_probability` for a direction label) but not its heads' outputs (e.g. "
        "move_probability).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Convert a LightGBM bundle to a new ONNX bundle; predictions are checked equal (1e-5) before it is saved.

    An ONNX bundle has one model, so a bundle with extra heads (move_probability beside a direction model) is
    refused (exit 2) rather than exported without them: serve the LightGBM bundle, which answers every head, or
    pass --primary-only.

    Example: xylen models export btcusdt-5m --format onnx --promote
    """
    with handled():
        from xylen.core.onnx_export import export_onnx

        registry = _registry(ctx)
        res = export_onnx(
            registry, name, version, new_name=new_name, out=out_dir, promote=promote, primary_only=primary_only
        )
        if as_json:
            _json(res.to_dict())
            return
        out.print(f"{res.name} {res.version}: onnx bundle at {res.bundle}{' (live)' if res.promoted else ''}")
        out.print(f"max |onnx - lightgbm| {res.max_abs_diff:.2e} on {res.checked_rows} rows; {'; '.join(res.notes)}")
        if res.out:
            out.print(f"copied to {res.out}")
        if not res.promoted:
            out.print(f"make it live: xylen models promote {res.name} {res.version}")


def _feature_names(features: str | None, features_file: Path | None) -> list[str] | None:
    from xylen.core.errors import ConfigError

    if features and features_file:
        raise ConfigError("Both --features and --features-file were given.", hint="pass one of them.")
    if features_file is not None:
        try:
            text = features_file.read_text(encoding="utf-8")
        except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"Cannot read --features-file {str(features_file)!r} ({type(exc).__name__}).",
                hint="give a UTF-8 text file with one feature name per line.",
            ) from None
        return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if features:
        return [f.strip() for f in features.split(",") if f.strip()]
    return None


@models_app.command("import")
def import_cmd(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="LightGBM model.txt, .onnx or TorchScript .pt file (torch.jit.save)."),
    backend: Literal["lightgbm", "onnx", "torch"] = typer.Option(..., "--backend", help="lightgbm, onnx or torch."),
    name: str = typer.Option(..., "--name", help="Model name to register it under, e.g. my-signal."),
    features: str = typer.Option(None, "--features", help="Comma-separated input feature names, in input order."),
    features_file: Path = typer.Option(None, "--features-file", help="Text file, one feature name per line."),
    output: Literal["probability", "logit"] = typer.Option(
        "probability", "--output", help="What the model returns: probability, or logit (sigmoid/softmax applied)."
    ),
    promote: bool = typer.Option(False, "--promote", help="Make the new version live."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Register an external model (requests then send a `features` vector, not candles).

    Pickle and joblib files, torch.save checkpoints and torch.export .pt2 archives are refused (loading them
    runs code stored in them); a TorchScript archive is loaded only if every pickle in it rebuilds nothing but
    plain tensors, and kept only if its code writes no files.

    Example: xylen models import model.onnx --backend onnx --features-file names.txt --name my-signal --promote
    """
    with handled():
        from xylen.core.convert import import_model

        names = _feature_names(features, features_file)
        res = import_model(_registry(ctx), path, backend, names, name, output=output, promote=promote)
        if as_json:
            _json(res.to_dict())
            return
        out.print(f"{res.name} {res.version}: {res.backend} bundle at {res.bundle}{' (live)' if res.promoted else ''}")
        if not res.promoted:
            out.print(f"make it live: xylen models promote {res.name} {res.version}")
