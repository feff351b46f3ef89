"""`xylen install-service` and `xylen uninstall-service`: systemd units and launchd plists for serve, collect and
retrain. The work is in xylen.service (render: the files; install: plan, write, enable; manager: systemctl and
launchctl); these commands parse options and print."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from xylen.cli import app, handled

if TYPE_CHECKING:
    from xylen.service.install import Plan
    from xylen.service.render import Scope


class ServiceName(str, Enum):
    serve = "serve"
    collect = "collect"
    retrain = "retrain"
    all = "all"


class PlatformName(str, Enum):
    systemd = "systemd"
    launchd = "launchd"
    auto = "auto"


INSTALL_EPILOG = (
    "Each service runs the installed xylen (its absolute path) with XYLEN_HOME set and nothing else: serve as "
    "`xylen serve` (with OMP_NUM_THREADS=1), collect as `xylen collect --quiet` (following live), retrain as "
    "`xylen retrain --loop --all`. xylen reads XYLEN_HOME/models.env itself, so no API key is written into a unit "
    "or plist; install validates models.env and sets it to mode 0600 (creating it when missing).\n\n"
    "systemd units restart on failure (not after exit 2, a bad setting), count exit 0 (SIGTERM) and, for collect, "
    "130 (SIGINT) as a clean stop, stop within 45 s (serve), 30 s (collect) or 60 s (retrain), cap memory "
    "(MemoryMax: retrain the training profile's cap x 1.25, collect 1 GiB, serve 1 GiB plus the retrain cap for "
    "POST /retrain's child) and, as system units, run as the owner of XYLEN_HOME with NoNewPrivileges, "
    "ProtectSystem=strict (XYLEN_HOME writable), PrivateTmp and ProtectHome=read-only. Logs: journalctl [--user] "
    "-u xylen-serve. launchd plists: RunAtLoad, KeepAlive unless the exit was clean, logs in "
    "XYLEN_HOME/logs/<service>.log and .err.log.\n\n"
    "Defaults: --platform auto (systemd on Linux, launchd on macOS); --system as root, else --user. Files: "
    "/etc/systemd/system, ~/.config/systemd/user, /Library/LaunchDaemons, ~/Library/LaunchAgents.\n\n"
    "Nothing is written until every file is rendered and checked. A file someone edited is never overwritten "
    "without --force: the command shows the difference and exits 2, writing nothing. Writes are atomic.\n\n"
    "Exit codes: 0 done; 2 a bad option or setting (models.env), a missing XYLEN_HOME, an unwritable target, an "
    "edited file without --force, or a failing systemctl/launchctl."
)


def _services(service: ServiceName) -> list[str]:
    from xylen.service.render import SERVICES

    return list(SERVICES) if service is ServiceName.all else [service.value]


def _scope(user: bool | None) -> tuple[Scope, str]:
    if user is not None:
        return ("user" if user else "system"), ""
    if os.geteuid() == 0:
        return "system", "system services (running as root; --user installs into root's own user manager)"
    return "user", "user services (not running as root; sudo and --system install system services)"


def _home(ctx: typer.Context) -> Path:
    from xylen.core.settings import default_home

    home = (ctx.find_root().obj or {}).get("home")
    return Path(home) if home is not None else default_home()


def _config_home() -> Path | None:
    value = os.environ.get("XDG_CONFIG_HOME", "")
    return Path(value) if os.path.isabs(value) else None  # systemd ignores a relative one too


def _refuse_conflicts(plan: Plan, verb: str) -> None:
    from xylen.core.errors import ConfigError

    if not plan.conflicts:
        return
    for f in plan.conflicts:
        if f.new is not None:
            typer.echo(f.diff(), nl=False)
    names = " ".join(str(f.path) for f in plan.conflicts)
    if verb == "overwrite":
        hint = "the difference is shown above; --force overwrites it (keep a copy of your changes first)."
    else:
        hint = "--force removes it anyway."
    raise ConfigError(
        f"Refusing to {verb} {names}: edited since xylen wrote it, or not written by xylen; nothing was written.",
        hint=hint,
    )


@app.command("install-service", epilog=INSTALL_EPILOG)
def install_service_cmd(
    ctx: typer.Context,
    service: ServiceName = typer.Argument(
        ServiceName.all, help="Which service to install: serve, collect, retrain or all."
    ),
    platform: PlatformName = typer.Option(PlatformName.auto, "--platform", help="systemd, launchd or auto (by OS)."),
    user: bool = typer.Option(
        None, "--user/--system", help="User services, or system services (default: --system as root, else --user)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print each file with its path; write nothing, run nothing."),
    output: Path = typer.Option(
        None, "--output", metavar="DIR", help="Write the files into DIR instead of the service manager's folder."
    ),
    enable: bool = typer.Option(
        False,
        "--enable",
        help="Then start them now and at boot: systemctl [--user] daemon-reload and enable --now (try-restart for "
        "changed units); launchctl bootout and bootstrap. Not with --output.",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite a file someone edited (default: refuse, show diff)."),
) -> None:
    """Install xylen's long-running services (serve, collect, retrain) as systemd units or launchd plists.

    \b
    Usage: xylen install-service [serve|collect|retrain|all] [--platform systemd|launchd|auto]
           [--user|--system] [--dry-run] [--output DIR] [--enable] [--force]

    \b
    Example: xylen install-service all --dry-run
             sudo /opt/xylen/venv/bin/xylen --home /var/lib/xylen install-service all --enable
    """
    with handled():
        from xylen.service.install import apply_install, plan_install
        from xylen.service.manager import detect_platform, find_xylen, log_locations, next_steps

        plat = detect_platform(platform.value)
        scope, note = _scope(user)
        plan = plan_install(
            plat,
            scope,
            _home(ctx),
            _services(service),
            xylen=find_xylen(),
            user_home=Path.home(),
            config_home=_config_home(),
            output=output,
            force=force,
            enable=enable,
        )
        if note:
            typer.echo(f"installing {note}")
        if dry_run:
            _print_dry_run(plan)
        _refuse_conflicts(plan, "overwrite")
        if dry_run:
            return
        for line in apply_install(plan):
            typer.echo(line)
        for line in log_locations(plat, scope, plan.home, [f.service for f in plan.files]):
            typer.echo(line)
        if not enable:
            for line in next_steps(plat, scope, output, [(f.service, f.path) for f in plan.files]):
                typer.echo(line)


def _print_dry_run(plan: Plan) -> None:
    verbs = {"create": "would create", "update": "would update", "replace": "would replace (--force)"}
    for f in plan.files:
        if f.action in ("unchanged", "conflict"):
            typer.echo(f"# {f.path}: {'unchanged' if f.action == 'unchanged' else 'edited, refused without --force'}")
            continue
        typer.echo(f"# {verbs[f.action]} {f.path}:")
        typer.echo(f.new or "", nl=False)
    env = {"create": "would create {} (mode 0600)", "chmod": "would set {} to mode 0600", "ok": "{} is mode 0600"}
    if plan.env_action in env:
        typer.echo("# " + env[plan.env_action].format(plan.env_file))
    if plan.env_owner is not None and plan.env_action != "create":
        typer.echo(f"# would hand {plan.env_file} to uid {plan.env_owner[0]}, the owner of XYLEN_HOME")
    for cmd in plan.after:
        typer.echo(f"# would run: {cmd}")
    typer.echo("# dry run: nothing was written")


@app.command("uninstall-service")
def uninstall_service_cmd(
    ctx: typer.Context,
    service: ServiceName = typer.Argument(
        ServiceName.all, help="Which service to remove: serve, collect, retrain or all."
    ),
    platform: PlatformName = typer.Option(PlatformName.auto, "--platform", help="systemd, launchd or auto (by OS)."),
    user: bool = typer.Option(
        None, "--user/--system", help="User services, or system services (default: --system as root, else --user)."
    ),
    output: Path = typer.Option(
        None, "--output", metavar="DIR", help="Remove the files from DIR (no systemctl/launchctl call)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what it would stop and remove; do nothing."),
    force: bool = typer.Option(False, "--force", help="Also remove a file someone edited, or did not come from xylen."),
) -> None:
    """Stop and remove what `xylen install-service` installed: systemctl [--user] disable --now (launchctl bootout),
    remove the files, daemon-reload. Never touches models.env, the data or the models.

    \b
    Usage: xylen uninstall-service [serve|collect|retrain|all] [--platform systemd|launchd|auto]
           [--user|--system] [--output DIR] [--dry-run] [--force]

    \b
    Example: sudo /opt/xylen/venv/bin/xylen --home /var/lib/xylen uninstall-service all
    """
    with handled():
        from xylen.service.install import apply_uninstall, plan_uninstall
        from xylen.service.manager import detect_platform

        plat = detect_platform(platform.value)
        scope, note = _scope(user)
        plan = plan_uninstall(
            plat,
            scope,
            _home(ctx),
            _services(service),
            user_home=Path.home(),
            config_home=_config_home(),
            output=output,
            force=force,
        )
        if note:
            typer.echo(f"uninstalling {note}")
        _refuse_conflicts(plan, "remove")
        if dry_run:
            for cmd in plan.before:
                typer.echo(f"# would run: {cmd}")
            for f in plan.files:
                typer.echo(f"# would remove {f.path}" if f.action == "remove" else f"# not installed: {f.path}")
            for cmd in plan.after:
                typer.echo(f"# would run: {cmd}")
            typer.echo("# dry run: nothing was changed")
            return
        for line in apply_uninstall(plan):
            typer.echo(line)
