"""What install and uninstall ask of the service manager: where its files live, the systemctl/launchctl calls
that load, start, stop and unload them (run in order, stopping at the first failure), and what to tell the user.

PID 1 is not systemd on the machines the tests run on, and there is no launchd: the tests put recording stubs
named systemctl and launchctl first on PATH and assert the exact calls.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xylen.core.errors import ConfigError
from xylen.service.render import Platform, Scope, label, unit_name

# launchctl bootout of a job that is not loaded; systemctl disable --now of a unit the manager never loaded
_NOT_LOADED = ("No such process", "Could not find", "not loaded")
TIMEOUT_S = 300  # enable --now waits for Type=exec to start the process: seconds, never minutes


class ServiceManagerError(ConfigError):
    """systemctl or launchctl refused; the message carries its own words."""


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    not_loaded_ok: bool = False  # launchctl bootout: a job that was not loaded is fine

    def __str__(self) -> str:
        return " ".join(self.argv)


def detect_platform(platform: str, system: str | None = None) -> Platform:
    if platform in ("systemd", "launchd"):
        return platform  # type: ignore[return-value]
    if platform != "auto":
        raise ConfigError(f"Unknown platform {platform!r}.", hint="use systemd, launchd or auto.")
    system = system or sys.platform
    if system.startswith("linux"):
        return "systemd"
    if system == "darwin":
        return "launchd"
    raise ConfigError(
        f"No service manager xylen knows on this system ({system!r}).",
        hint="pass --platform systemd or launchd with --output DIR to render the files anyway.",
    )


def find_xylen() -> Path:
    """The installed `xylen` beside this Python (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "xylen"
    if beside.is_file() and os.access(beside, os.X_OK):
        return Path(os.path.abspath(beside))
    found = shutil.which("xylen")
    if found is None:
        raise ConfigError(
            "Cannot find the `xylen` executable beside this Python or on PATH.",
            hint="install xylen with pip into the environment the services should run (pip install xylen).",
        )
    return Path(os.path.abspath(found))


def target_dir(platform: Platform, scope: Scope, *, user_home: Path, config_home: Path | None = None) -> Path:
    """Where the service manager reads its files: /etc/systemd/system, ~/.config/systemd/user (or
    $XDG_CONFIG_HOME/systemd/user), /Library/LaunchDaemons, ~/Library/LaunchAgents."""
    if platform == "systemd":
        if scope == "system":
            return Path("/etc/systemd/system")
        return (config_home or user_home / ".config") / "systemd" / "user"
    return Path("/Library/LaunchDaemons") if scope == "system" else user_home / "Library" / "LaunchAgents"


def systemd_version() -> int | None:
    """The local systemd's version from `systemctl --version`, None when unknown."""
    try:
        done = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"systemd (\d+)", done.stdout)
    return int(m.group(1)) if m else None


def launchd_domain(scope: Scope) -> str:
    return "system" if scope == "system" else f"gui/{os.getuid()}"


def _flag(scope: Scope) -> tuple[str, ...]:
    return ("--user",) if scope == "user" else ()


def enable_commands(
    platform: Platform, scope: Scope, files: Sequence[tuple[str, Path]], changed: Sequence[str] = ()
) -> list[Command]:
    """Load and start ``files`` ((service, path) pairs); ``changed``: services whose file was replaced."""
    if platform == "systemd":
        units = tuple(unit_name(s) for s, _ in files)
        cmds = [
            Command(("systemctl", *_flag(scope), "daemon-reload")),
            Command(("systemctl", *_flag(scope), "enable", "--now", *units)),
        ]
        if changed:  # a running service keeps its old unit until it restarts; try-restart leaves stopped ones be
            cmds.append(Command(("systemctl", *_flag(scope), "try-restart", *(unit_name(s) for s in changed))))
        return cmds
    domain = launchd_domain(scope)
    cmds = []
    for service, path in files:  # bootstrap refuses a loaded job: unload the old one first
        cmds.append(Command(("launchctl", "bootout", f"{domain}/{label(service)}"), not_loaded_ok=True))
        cmds.append(Command(("launchctl", "bootstrap", domain, str(path))))
    return cmds


def disable_commands(platform: Platform, scope: Scope, services: Sequence[str]) -> tuple[list[Command], list[Command]]:
    """Stop and unload ``services``: (before their files are removed, after)."""
    if not services:
        return [], []
    if platform == "systemd":
        units = tuple(unit_name(s) for s in services)
        return (
            # a unit never loaded (installed without --enable, no daemon-reload since) has nothing to stop
            [Command(("systemctl", *_flag(scope), "disable", "--now", *units), not_loaded_ok=True)],
            [Command(("systemctl", *_flag(scope), "daemon-reload"))],
        )
    domain = launchd_domain(scope)
    return [Command(("launchctl", "bootout", f"{domain}/{label(s)}"), not_loaded_ok=True) for s in services], []


def run_command(cmd: Command) -> None:
    """Run one systemctl/launchctl call; ServiceManagerError with its own message when it fails."""
    try:
        done = subprocess.run(list(cmd.argv), capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise ServiceManagerError(
            f"`{cmd.argv[0]}` is not on PATH, so `{cmd}` could not run.",
            hint="run this where the service manager is, or only write the files (no --enable, or --output DIR).",
        ) from None
    except subprocess.TimeoutExpired:
        raise ServiceManagerError(
            f"`{cmd}` did not finish within {TIMEOUT_S} s.", hint="check the service manager's state."
        ) from None
    said = (done.stderr.strip() or done.stdout.strip())[-2000:]
    if done.returncode == 0 or (cmd.not_loaded_ok and any(s in said for s in _NOT_LOADED)):
        return
    raise ServiceManagerError(
        f"`{cmd}` failed (exit {done.returncode}): {said or 'no message'}",
        hint="fix what it says, then run the same command again.",
    )


def log_locations(platform: Platform, scope: Scope, home: Path, services: Sequence[str]) -> list[str]:
    if platform == "systemd":
        flag = "--user " if scope == "user" else ""
        return [f"logs: journalctl {flag}-u {unit_name(s)} -f" for s in services]
    logs = home / "logs"
    return [f"logs: {logs / (s + '.log')} and {logs / (s + '.err.log')}" for s in services]


def next_steps(platform: Platform, scope: Scope, output: Path | None, files: Sequence[tuple[str, Path]]) -> list[str]:
    """What to run next when install did not start the services itself (no --enable)."""
    if output is not None:
        where = str(target_dir(platform, scope, user_home=Path("~")))
        return [f"next: copy the files into {where} on the machine that runs them, then enable them there."]
    if platform == "systemd":
        flag = "--user " if scope == "user" else ""
        units = " ".join(unit_name(s) for s, _ in files)
        steps = [
            f"next: systemctl {flag}daemon-reload && systemctl {flag}enable --now {units} (or run again with --enable)"
        ]
        if scope == "user":
            steps.append("user services stop when you log out unless lingering is on: loginctl enable-linger $USER")
        return steps
    domain = launchd_domain(scope)
    return [f"next: launchctl bootstrap {domain} {path} (or run again with --enable)" for _, path in files]
