"""`xylen config`: the resolved settings and where each value came from."""

from __future__ import annotations

import typer

from xylen.cli import app, err, handled, out, settings_from


@app.command("config")
def config_cmd(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")
) -> None:
    """Show every setting, its value, and where it came from (flag, environment, models.env, default).

    Example: XYLEN_PORT=9000 xylen config
    """
    with handled():
        from xylen.core.settings import explain, unknown_env_file_keys

        settings = settings_from(ctx)
        rows = explain(settings)
        unknown = unknown_env_file_keys(settings)
        if as_json:
            import orjson

            typer.echo(
                orjson.dumps(
                    {"settings": rows, "env_file": str(settings.env_file), "unknown_env_file_keys": unknown},
                    option=orjson.OPT_INDENT_2,
                ).decode()
            )
            return
        from rich.table import Table

        table = Table(title=f"xylen settings (models.env: {settings.env_file})", title_justify="left")
        for col in ("setting", "value", "source", "environment variable(s)"):
            table.add_column(col)
        for r in rows:
            src = r["source"] if r["source"] in ("default",) else f"{r['source']}: {r['source_name']}"
            table.add_row(r["setting"], "" if r["value"] is None else r["value"], src, " | ".join(r["env"]))
        out.print(table)
        for key in unknown:
            err.print(f"warning: {settings.env_file} sets {key}, which no setting reads (a typo?)")
