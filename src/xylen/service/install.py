"""Install and uninstall xylen's services: plan everything first, then write, then tell the service manager.

``plan_install`` renders every file, reads what is already there, validates models.env and checks that every
target can be written; it writes nothing. ``apply_install`` then writes each file atomically (temp file in the
same folder, fsync, rename; mode 0644), puts back what it replaced if a later write fails, sets models.env to
0600 (creating it when missing), and runs ``systemctl``/``launchctl`` for --enable. Uninstall mirrors it.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import pwd
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from xylen.core.cgroup import Limits
from xylen.core.errors import ConfigError
from xylen.core.storage import fsync_dir
from xylen.service.manager import (
    Command,
    disable_commands,
    enable_commands,
    run_command,
    systemd_version,
    target_dir,
)
from xylen.service.render import Inputs, Platform, Scope, file_name, memory_caps, provenance, render

ENV_HEADER = (
    "# xylen settings (KEY=value lines), read by every xylen command and service. Mode 0600: API keys go here.\n"
    "# Every setting is listed in models.env.example (in the xylen repository); `xylen config` shows the values.\n"
)
_SAFE_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


@dataclass
class FilePlan:
    service: str
    path: Path
    action: Literal["create", "update", "unchanged", "conflict", "replace", "remove", "absent"]
    new: str | None = None
    old: bytes | None = None
    old_mode: int = 0o644

    @property
    def old_text(self) -> str:
        return (self.old or b"").decode("utf-8", errors="replace")

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                self.old_text.splitlines(keepends=True),
                (self.new or "").splitlines(keepends=True),
                fromfile=f"{self.path} (installed)",
                tofile=f"{self.path} (xylen install-service)",
            )
        )


@dataclass
class Plan:
    platform: Platform
    scope: Scope
    home: Path
    files: list[FilePlan]
    output: Path | None = None
    env_action: Literal["create", "chmod", "ok", "keep"] = "keep"
    # chown models.env to XYLEN_HOME's owner: one root creates, or one a system service (running as that owner)
    # could not read at 0600
    env_owner: tuple[int, int] | None = None
    logs_dir: Path | None = None  # launchd writes the services' output there; created when missing
    before: list[Command] = field(default_factory=list)
    after: list[Command] = field(default_factory=list)

    @property
    def env_file(self) -> Path:
        return self.home / "models.env"

    @property
    def conflicts(self) -> list[FilePlan]:
        return [f for f in self.files if f.action == "conflict"]


# -- resolving the request --------------------------------------------------------------------------------------


def resolve_home(home: Path) -> Path:
    path = Path(os.path.abspath(home.expanduser()))
    if not path.exists():
        raise ConfigError(
            f"XYLEN_HOME {str(path)!r} does not exist.",
            hint=f"create it first, e.g. with `xylen train` (it creates it) or `mkdir -p {path}`, or point "
            "--home / XYLEN_HOME at your xylen folder.",
        )
    if not path.is_dir():
        raise ConfigError(f"XYLEN_HOME {str(path)!r} is not a folder.", hint="point --home / XYLEN_HOME at a folder.")
    return path


def _owner(home: Path) -> tuple[int, int, str | None]:
    st = home.stat()
    try:
        name: str | None = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        name = None
    return st.st_uid, st.st_gid, name


def _run_user(platform: Platform, home: Path) -> str | None:
    """Who a system service runs as: the owner of XYLEN_HOME (None when that is root)."""
    uid, _gid, name = _owner(home)
    if uid == 0:
        return None
    if name is not None and _SAFE_USER.fullmatch(name):
        return name
    if platform == "systemd":
        return str(uid)  # systemd takes a numeric uid too
    raise ConfigError(
        f"XYLEN_HOME {str(home)!r} is owned by uid {uid}, which has no usable user name for launchd's UserName.",
        hint="chown it to a named user, or install --user.",
    )


def _check_writable(path: Path, fix: str) -> None:
    """``path`` can be created or replaced: its nearest existing folder is a folder we may write in."""
    if path.is_dir():
        raise ConfigError(f"Cannot write {str(path)!r}: a folder is in the way.", hint=f"remove or move it, or {fix}.")
    folder = path.parent
    while not folder.exists() and not folder.is_symlink():
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"Cannot write {str(path)!r}: {str(folder)!r} is not a folder.", hint=fix + ".")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"Cannot write {str(path)!r}: no permission to write in {str(folder)!r}.", hint=fix + ".")


def _fix_hint(platform: Platform, scope: Scope, output: Path | None) -> str:
    if output is not None:
        return "choose a folder you can write with --output"
    if scope == "system":
        return "run it with sudo, install --user units instead, or write the files elsewhere with --output DIR"
    return "fix the folder's permissions, or write the files elsewhere with --output DIR"


def _read(path: Path) -> tuple[bytes | None, int]:
    try:
        return path.read_bytes(), path.stat().st_mode & 0o777
    except FileNotFoundError:
        return None, 0o644
    except OSError as exc:
        raise ConfigError(f"Cannot read {str(path)!r}: {exc.strerror}.", hint="check its permissions.") from None


# -- install ------------------------------------------------------------------------------------------------------


def plan_install(
    platform: Platform,
    scope: Scope,
    home: Path,
    services: Sequence[str],
    *,
    xylen: Path,
    user_home: Path,
    config_home: Path | None = None,
    output: Path | None = None,
    force: bool = False,
    enable: bool = False,
    backoff: bool | None = None,
) -> Plan:
    """Everything install would do, checked; nothing written. ``backoff`` None: ask `systemctl --version`."""
    from xylen.core.settings import load_settings
    from xylen.profiles import resolve

    if enable and output is not None:
        raise ConfigError(
            "--enable cannot start services from files written to --output.",
            hint="drop --output to install into the service manager's folder, or drop --enable.",
        )
    home = resolve_home(home)
    # the settings the services will see: models.env and XYLEN_HOME only (a unit passes no other environment)
    try:
        settings = load_settings({"home": home}, environ={})
    except ConfigError as exc:
        raise ConfigError(
            exc.message, hint=exc.hint or f"fix {home / 'models.env'} (see models.env.example); nothing was written."
        ) from None
    # the profile as the service will see it, not narrowed by the cgroup of the shell running this install
    prof = resolve(settings.profile, max_memory_gb=settings.lgbm_max_memory_gb, limits=Limits())
    if platform == "systemd" and backoff is None:
        version = systemd_version()
        backoff = version is None or version >= 254  # RestartSteps came in 254; 252 warns on unknown keys
    inputs = Inputs(
        xylen=PurePosixPath(xylen),
        home=PurePosixPath(home),
        scope=scope,
        memory=memory_caps(prof.memory_gb),
        run_user=_run_user(platform, home) if scope == "system" else None,
        backoff=bool(backoff),
    )
    folder = output or target_dir(platform, scope, user_home=user_home, config_home=config_home)
    fix = _fix_hint(platform, scope, output)
    plan = Plan(platform, scope, home, [], output=output)
    for service in services:
        rendered = render(platform, service, inputs)
        path = Path(os.path.abspath(folder / rendered.file_name))
        _check_writable(path, fix)
        old, mode = _read(path)
        f = FilePlan(service, path, "create", rendered.text, old, mode)
        if old is not None:
            if old == rendered.text.encode():
                f.action = "unchanged"
            elif provenance(f.old_text) == "ours":
                f.action = "update"
            else:
                f.action = "replace" if force else "conflict"
        plan.files.append(f)
    _plan_env_file(plan)
    if platform == "launchd":
        plan.logs_dir = home / "logs"
        if plan.logs_dir.exists() and not plan.logs_dir.is_dir() or plan.logs_dir.is_symlink():
            raise ConfigError(
                f"{str(plan.logs_dir)!r} is not a folder: launchd writes the services' output there.",
                hint="move it away, then run this again.",
            )
        if not plan.logs_dir.is_dir():
            _check_writable(plan.logs_dir, "fix XYLEN_HOME's permissions")
    if enable:
        changed = [f.service for f in plan.files if f.action in ("update", "replace")]
        plan.after = enable_commands(platform, scope, [(f.service, f.path) for f in plan.files], changed)
    return plan


def _plan_env_file(plan: Plan) -> None:
    path = plan.env_file
    if path.is_symlink() and not path.exists():
        raise ConfigError(
            f"{str(path)!r} is a link to {os.readlink(path)!r}, which does not exist.",
            hint="remove the link or create its target; models.env holds KEY=value settings.",
        )
    if path.exists():
        if not path.is_file():
            raise ConfigError(f"{str(path)!r} is not a file.", hint="remove it; models.env holds KEY=value settings.")
        st = path.stat()
        uid, gid, _name = _owner(plan.home)
        if plan.scope == "system" and uid not in (0, st.st_uid):
            # system services run as XYLEN_HOME's owner, who could not read another user's file at mode 0600
            if os.geteuid() != 0:
                raise ConfigError(
                    f"{str(path)!r} belongs to uid {st.st_uid}, but the services run as the owner of XYLEN_HOME "
                    f"(uid {uid}) and could not read it at mode 0600.",
                    hint=f"`sudo chown {uid} {path}`, or run this with sudo.",
                )
            plan.env_owner = (uid, gid)
        if st.st_mode & 0o777 == 0o600:
            plan.env_action = "ok"
            return
        if os.geteuid() not in (0, st.st_uid):
            raise ConfigError(
                f"{str(path)!r} has mode {st.st_mode & 0o777:04o} and only its owner can make it 0600.",
                hint=f"run this as its owner or with sudo, or `chmod 600 {path}` first.",
            )
        plan.env_action = "chmod"
        return
    _check_writable(path, "fix XYLEN_HOME's permissions, or run this as its owner")
    plan.env_action = "create"
    uid, gid, _name = _owner(plan.home)
    if os.geteuid() == 0 and uid != 0:
        plan.env_owner = (uid, gid)


def _write_temp(path: Path, data: bytes, mode: int) -> str:
    """A complete, fsynced temp file beside ``path`` with ``mode`` set before any byte lands (a secret is never
    readable by others); removed again if writing fails."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder: readers see the old file or the new one."""
    tmp = _write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_new(path: Path, data: bytes, mode: int) -> bool:
    """Like write_atomic, but never replaces anything at ``path`` (a file written meanwhile, a dangling link):
    the complete temp file is hard-linked into place, which fails if the name exists. False when it did."""
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return True


def apply_install(plan: Plan) -> list[str]:
    """Write what ``plan`` says (refusing conflicts), then run its commands. Returns what was done, line by line."""
    if plan.conflicts:
        names = ", ".join(str(f.path) for f in plan.conflicts)
        raise ConfigError(f"Refusing to overwrite {names}: edited since xylen wrote it.", hint="--force overwrites.")
    done: list[str] = []
    written: list[FilePlan] = []
    try:
        for f in plan.files:
            if f.action in ("create", "update", "replace"):
                f.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(f.path, (f.new or "").encode(), 0o644)
                written.append(f)
            done.append(f"{_PAST[f.action]} {f.path}")
        if plan.logs_dir is not None and not plan.logs_dir.is_dir():
            plan.logs_dir.mkdir(mode=0o755)
            uid, gid, _name = _owner(plan.home)
            if os.geteuid() == 0 and uid != 0:  # the services run as XYLEN_HOME's owner and write there
                os.chown(plan.logs_dir, uid, gid)
            done.append(f"created {plan.logs_dir}")
        done.extend(_apply_env_file(plan))
    except ConfigError:
        _restore(written)
        raise
    except OSError as exc:
        _restore(written)
        where = exc.filename or (written[-1].path if written else plan.home)
        raise ConfigError(
            f"Could not write {str(where)!r}: {exc.strerror or exc}; every file was put back as it was.",
            hint="free some space or fix the folder's permissions, then run it again.",
        ) from None
    for cmd in plan.after:
        run_command(cmd)
        done.append(f"ran {cmd}")
    return done


_PAST = {"create": "created", "update": "updated", "replace": "replaced (--force)", "unchanged": "unchanged"}


def _apply_env_file(plan: Plan) -> list[str]:
    path = plan.env_file
    done = []
    if plan.env_action == "create":
        if not write_new(path, ENV_HEADER.encode(), 0o600):
            raise ConfigError(
                f"{str(path)!r} appeared while installing (another install, an editor, a dangling link).",
                hint="check it, then run this again; the services' files were put back.",
            )
        done.append(f"created {path} (mode 0600)")
    elif plan.env_action == "chmod":
        os.chmod(path, 0o600)
        done.append(f"set {path} to mode 0600")
    if plan.env_owner is not None:
        os.chown(path, *plan.env_owner)
        if plan.env_action != "create":
            done.append(f"handed {path} to uid {plan.env_owner[0]}, the owner of XYLEN_HOME the services run as")
    return done


def _restore(written: list[FilePlan]) -> None:
    """Best effort: put back each file a failed install had already replaced, remove the ones it created."""
    for f in reversed(written):
        with contextlib.suppress(OSError):
            if f.old is None:
                f.path.unlink()
            else:
                write_atomic(f.path, f.old, f.old_mode)


# -- uninstall ----------------------------------------------------------------------------------------------------


def plan_uninstall(
    platform: Platform,
    scope: Scope,
    home: Path,
    services: Sequence[str],
    *,
    user_home: Path,
    config_home: Path | None = None,
    output: Path | None = None,
    force: bool = False,
) -> Plan:
    """What uninstall would do: stop and disable (unless --output), remove our files, reload. Never models.env."""
    folder = output or target_dir(platform, scope, user_home=user_home, config_home=config_home)
    plan = Plan(platform, scope, Path(os.path.abspath(home.expanduser())), [], output=output)
    fix = _fix_hint(platform, scope, output)
    for service in services:
        path = Path(os.path.abspath(folder / file_name(platform, service)))
        old, mode = _read(path)
        f = FilePlan(service, path, "absent", None, old, mode)
        if old is not None:
            _check_writable(path, fix)
            f.action = "remove" if force or provenance(f.old_text) == "ours" else "conflict"
        plan.files.append(f)
    if output is None and not plan.conflicts:
        present = [f.service for f in plan.files if f.action == "remove"]
        plan.before, plan.after = disable_commands(platform, scope, present)
    return plan


def apply_uninstall(plan: Plan) -> list[str]:
    if plan.conflicts:
        names = ", ".join(str(f.path) for f in plan.conflicts)
        raise ConfigError(
            f"Refusing to remove {names}: edited since xylen wrote it, or not written by xylen.",
            hint="--force removes it anyway.",
        )
    done: list[str] = []
    for cmd in plan.before:
        run_command(cmd)
        done.append(f"ran {cmd}")
    for f in plan.files:
        if f.action == "remove":
            try:
                f.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ConfigError(
                    f"Cannot remove {str(f.path)!r}: {exc.strerror}.", hint="check its permissions."
                ) from None
            fsync_dir(f.path.parent)
            done.append(f"removed {f.path}")
        else:
            done.append(f"not installed: {f.path}")
    for cmd in plan.after:
        run_command(cmd)
        done.append(f"ran {cmd}")
    return done
