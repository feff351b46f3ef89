"""systemd units and launchd plists for xylen's three services, rendered from the templates in packaging/.

Pure functions of their inputs (reading a template shipped in the package is the only I/O): install.py decides
where the files go and what runs them. Every value is escaped for the place it lands in:

- systemd: the program path and the Environment/ReadWritePaths values are double-quoted words with C escapes
  (``\\\\``, ``\\"``) and ``%%`` for ``%`` (specifiers); ``$`` stays as it is, since systemd expands ``$VAR``
  only in ExecStart's arguments, where no value of ours goes. WorkingDirectory takes its value verbatim after
  specifiers, so it gets ``%%`` alone. Checked against systemd's own parser (tests/integration/test_service_systemd.py).
- launchd: the template is parsed with plistlib, values are put into the dict, and plistlib writes the XML.

A newline (or any control character) in a path is refused: a unit file is line-based. Every file carries a
header ``xylen-rendered sha256=<hex>`` of the rest of the file, so a re-install can tell its own untouched file
from one someone edited (see ``provenance``).
"""

from __future__ import annotations

import hashlib
import plistlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath
from typing import Any, Literal

from xylen.core.errors import ConfigError, XylenError

Platform = Literal["systemd", "launchd"]
Scope = Literal["user", "system"]
SERVICES = ("serve", "collect", "retrain")
PLATFORMS: tuple[Platform, ...] = ("systemd", "launchd")
GIB = 2**30
MIB = 2**20
# serve and collect hold one process each with small, bounded state: 1 GiB is a generous ceiling for both.
SERVICE_BASE_BYTES = GIB
RETRAIN_CAP_FACTOR = 1.25  # the loop stops a run at the profile's cap itself; the kernel's cap is the backstop

_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
_MARKER = re.compile(r"^@([a-z][a-z-]*)@")
_HEADER = re.compile(r"^(?:# |<!-- )xylen-rendered sha256=([0-9a-f]{64})(?: -->)?\n", re.M)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TemplateError(XylenError):
    """A template names a value xylen does not fill in: a packaging bug, not the user's."""

    exit_code = 1


class _Omit:
    """A plist value that removes its key (UserName in a LaunchAgent)."""


OMIT = _Omit()


@dataclass(frozen=True)
class Inputs:
    """What a rendered file depends on. Paths must be absolute; ``run_user`` is the owner of XYLEN_HOME for
    system units (None when root owns it); ``memory`` maps each service to its cap in bytes and a one-line note."""

    xylen: PurePosixPath
    home: PurePosixPath
    scope: Scope
    memory: Mapping[str, tuple[int, str]]
    run_user: str | None = None
    backoff: bool = True  # RestartSteps/RestartMaxDelaySec: systemd >= 254 only (older ones warn on unknown keys)


@dataclass(frozen=True)
class Rendered:
    platform: Platform
    service: str
    file_name: str
    text: str


def unit_name(service: str) -> str:
    return f"xylen-{service}.service"


def label(service: str) -> str:
    return f"io.xylen.{service}"


def file_name(platform: Platform, service: str) -> str:
    return unit_name(service) if platform == "systemd" else f"{label(service)}.plist"


def template_text(platform: Platform, service: str) -> str:
    folder = resources.files(__package__).joinpath("templates").joinpath(platform)  # one name a call: Python 3.10
    return folder.joinpath(f"{file_name(platform, service)}.in").read_text(encoding="utf-8")


def memory_caps(profile_memory_gb: float) -> dict[str, tuple[int, str]]:
    """Each service's memory cap in bytes (whole MiB) and why: retrain = the training profile's cap x 1.25;
    collect 1 GiB; serve 1 GiB plus the retrain cap, because POST /retrain trains in a child of the server, inside
    the server's own cgroup (without that room the kernel would kill the server's training job, or the server)."""
    retrain = int(profile_memory_gb * RETRAIN_CAP_FACTOR * GIB) // MIB * MIB
    cap_gb = f"{profile_memory_gb:g} GB"
    return {
        "serve": (
            SERVICE_BASE_BYTES + retrain,
            f"Memory cap: 1 GiB for the server plus the retrain cap ({cap_gb} x {RETRAIN_CAP_FACTOR:g}) for a "
            "POST /retrain child, which runs inside this service.",
        ),
        "collect": (SERVICE_BASE_BYTES, "Memory cap: 1 GiB, ample for the collector."),
        "retrain": (
            retrain,
            f"Memory cap: the training profile's cap ({cap_gb}) x {RETRAIN_CAP_FACTOR:g}; the loop stops a run at "
            "the profile's cap itself, this is the backstop.",
        ),
    }


def check_path(what: str, path: PurePosixPath) -> None:
    """Refuse a path no unit or plist can carry faithfully. Raises ConfigError."""
    text = str(path)
    if _CONTROL.search(text):
        raise ConfigError(
            f"{what} {text!r} contains a newline or another control character, which a service file cannot carry.",
            hint="move or rename it to a path without control characters.",
        )
    if not path.is_absolute():
        raise ConfigError(f"{what} {text!r} is not an absolute path.", hint="pass an absolute path.")


def check_systemd_paths(xylen: PurePosixPath, home: PurePosixPath) -> None:
    """What systemd itself cannot take: quotes, a backslash or '$' in an executable's path (systemd refuses the
    first three, and the program path is the one word where '$$' is not unescaped), and a value ending in a blank
    or a backslash (systemd strips trailing blanks and joins a line ending in a backslash to the next)."""
    check_path("The xylen executable", xylen)
    check_path("XYLEN_HOME", home)
    bad = sorted(set("\\\"'$") & set(str(xylen)))
    if bad:
        raise ConfigError(
            f"The xylen executable {str(xylen)!r} has {' '.join(bad)} in its path, which systemd cannot run.",
            hint="install xylen into a virtual environment whose path has none of them, or use --platform launchd.",
        )
    text = str(home)
    if text != text.rstrip() or text.endswith("\\"):
        raise ConfigError(
            f"XYLEN_HOME {text!r} ends with a blank or a backslash, which systemd would drop or misread.",
            hint="move or rename it to a path that ends with a letter or digit.",
        )


def systemd_word(value: str) -> str:
    """``value`` as one double-quoted systemd word: C escapes for the quotes, ``%%`` for specifiers. Only for
    values where '$' is literal (Environment=, ReadWritePaths=, the program path of ExecStart)."""
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{out}"'


def render(platform: Platform, service: str, inputs: Inputs) -> Rendered:
    if service not in SERVICES:
        raise ConfigError(f"Unknown service {service!r}.", hint=f"use one of: {', '.join(SERVICES)}, all.")
    if platform not in PLATFORMS:
        raise ConfigError(f"Unknown platform {platform!r}.", hint="use systemd, launchd or auto.")
    text = render_unit(service, inputs) if platform == "systemd" else render_plist(service, inputs)
    return Rendered(platform, service, file_name(platform, service), text)


def render_unit(service: str, inputs: Inputs) -> str:
    check_systemd_paths(inputs.xylen, inputs.home)
    flags: set[str] = {inputs.scope}
    if inputs.scope == "system":
        flags.add("system-owner" if inputs.run_user else "system-root")
    if inputs.backoff:
        flags.add("backoff")
    cap, note = inputs.memory[service]
    home = str(inputs.home)
    values = {
        "XYLEN": systemd_word(str(inputs.xylen)),
        "HOME_PATH": home.replace("%", "%%"),
        "HOME_ENV": systemd_word(f"XYLEN_HOME={home}"),
        "HOME_WORD": systemd_word(home),
        "MPL_ENV": systemd_word(f"MPLCONFIGDIR={inputs.home / 'cache' / 'matplotlib'}"),
        "RUN_USER": (inputs.run_user or "").replace("%", "%%"),
        "MEMORY_MAX": f"{cap // MIB}M",
        "MEMORY_COMMENT": note,
    }
    lines = []
    for line in template_text("systemd", service).splitlines():
        m = _MARKER.match(line)
        if m:
            if m.group(1) not in flags:
                continue
            line = line[m.end() :]
        lines.append(line)
    body = _fill(f"systemd/{unit_name(service)}.in", "\n".join(lines) + "\n", values)
    return stamp("systemd", body)


def render_plist(service: str, inputs: Inputs) -> str:
    check_path("The xylen executable", inputs.xylen)
    check_path("XYLEN_HOME", inputs.home)
    logs = inputs.home / "logs"
    cap, _note = inputs.memory[service]
    values: dict[str, Any] = {
        "XYLEN": str(inputs.xylen),
        "XYLEN_HOME": str(inputs.home),
        # a LaunchDaemon runs as the owner of XYLEN_HOME; a LaunchAgent always runs as its user
        "RUN_USER": inputs.run_user if inputs.scope == "system" and inputs.run_user else OMIT,
        "STDOUT_PATH": str(logs / f"{service}.log"),
        "STDERR_PATH": str(logs / f"{service}.err.log"),
        "MEMORY_BYTES": cap,
    }
    where = f"launchd/{label(service)}.plist.in"
    data = plistlib.loads(template_text("launchd", service).encode())
    filled = _fill_plist(where, data, values)
    body = plistlib.dumps(filled, sort_keys=False).decode()
    return stamp("launchd", body)


def _fill(where: str, text: str, values: Mapping[str, Any]) -> str:
    """Replace every @NAME@ in one pass (a value is never scanned again: a home path may contain '@X@')."""

    def one(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise TemplateError(f"Template {where} has placeholder {m.group(0)} that xylen does not fill in.")
        value = values[m.group(1)]
        if not isinstance(value, str):
            raise TemplateError(f"Template {where}: {m.group(0)} must be a whole value there, not part of text.")
        return value

    return _PLACEHOLDER.sub(one, text)


def _fill_plist(where: str, node: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            filled = _fill_plist(where, value, values)
            if filled is not OMIT:
                out[key] = filled
        return out
    if isinstance(node, list):
        return [v for v in (_fill_plist(where, v, values) for v in node) if v is not OMIT]
    if isinstance(node, str):
        whole = _PLACEHOLDER.fullmatch(node)
        if whole:  # a whole-value placeholder may become a number, or remove its key
            if whole.group(1) not in values:
                raise TemplateError(f"Template {where} has placeholder {node} that xylen does not fill in.")
            return values[whole.group(1)]
        return _fill(where, node, values)
    return node


# -- provenance -----------------------------------------------------------------------------------------------


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def stamp(platform: Platform, body: str) -> str:
    """``body`` with its header: a first ``#`` line in a unit, an XML comment after the DOCTYPE in a plist."""
    digest = _digest(body)
    if platform == "systemd":
        return f"# xylen-rendered sha256={digest}\n{body}"
    head, sep, rest = body.partition("<plist ")
    if not sep:
        raise TemplateError("plistlib wrote a plist without a <plist> element.")
    return f"{head}<!-- xylen-rendered sha256={digest} -->\n{sep}{rest}"


def provenance(text: str) -> Literal["ours", "edited", "foreign"]:
    """ours: written by xylen and untouched since; edited: written by xylen, then changed; foreign: no header."""
    m = _HEADER.search(text)
    if m is None:
        return "foreign"
    body = text[: m.start()] + text[m.end() :]
    return "ours" if _digest(body) == m.group(1) else "edited"
