"""xylen.service.render: every service x {systemd, launchd} x {user, system}, the fields each file must carry,
hostile paths, and the provenance header. systemd's own parser checks the units in
tests/integration/test_service_systemd.py."""

from __future__ import annotations

import plistlib
import re
from pathlib import PurePosixPath

import pytest

from xylen.core.errors import ConfigError
from xylen.service import render as R
from xylen.service.render import GIB, MIB, Inputs, memory_caps, provenance, render

pytestmark = pytest.mark.unit

XYLEN = PurePosixPath("/opt/xylen/venv/bin/xylen")
HOME = PurePosixPath("/var/lib/xylen")
ARGS = {"serve": ["serve"], "collect": ["collect", "--quiet"], "retrain": ["retrain", "--loop", "--all"]}
STOP_S = {"serve": 45, "collect": 30, "retrain": 60}
CAPS = memory_caps(6.0)
MATRIX = [(s, p, sc) for s in R.SERVICES for p in R.PLATFORMS for sc in ("user", "system")]


def inputs(scope: str = "system", run_user: str | None = "xylen", home: PurePosixPath = HOME, **kw: object) -> Inputs:
    return Inputs(xylen=kw.pop("xylen", XYLEN), home=home, scope=scope, memory=CAPS, run_user=run_user, **kw)  # type: ignore[arg-type]


def unit_values(text: str) -> dict[str, list[str]]:
    """key -> values of a unit file (comments and section headers dropped)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif line and not line.startswith("#"):
            out.setdefault(current, []).append(line.partition("=")[0])
    return out


def unquote(word: str) -> str:
    """One double-quoted systemd word back to its value (C escapes, then specifier %%)."""
    assert word.startswith('"') and word.endswith('"'), word
    return re.sub(r"\\(.)", r"\1", word[1:-1]).replace("%%", "%")


@pytest.mark.parametrize(("service", "platform", "scope"), MATRIX)
def test_every_file_renders_with_a_valid_header_and_no_placeholder(service: str, platform: str, scope: str) -> None:
    r = render(platform, service, inputs(scope))  # type: ignore[arg-type]
    assert r.file_name == (f"xylen-{service}.service" if platform == "systemd" else f"io.xylen.{service}.plist")
    assert provenance(r.text) == "ours"
    assert not re.search(r"@[A-Za-z][A-Za-z0-9_-]*@", r.text), "a placeholder or marker was left in the file"


@pytest.mark.parametrize("service", R.SERVICES)
@pytest.mark.parametrize("scope", ["user", "system"])
def test_systemd_unit_fields(service: str, scope: str) -> None:
    text = render("systemd", service, inputs(scope)).text
    v = unit_values(text)
    assert v["ExecStart"] == [f'"{XYLEN}" ' + " ".join(ARGS[service])]
    assert v["WorkingDirectory"] == [str(HOME)]
    assert f'"XYLEN_HOME={HOME}"' in v["Environment"]
    assert ("OMP_NUM_THREADS=1" in v["Environment"]) == (service == "serve")
    assert v["Restart"] == ["on-failure"] and v["RestartSec"] == ["5s"] and v["StartLimitIntervalSec"] == ["0"]
    assert v["RestartPreventExitStatus"] == ["2"]
    assert v.get("SuccessExitStatus") == (["130"] if service == "collect" else None)
    assert v["KillMode"] == ["mixed"] and v["TimeoutStopSec"] == [f"{STOP_S[service]}s"]
    assert v["MemoryMax"] == [f"{CAPS[service][0] // MIB}M"]
    assert v["NoNewPrivileges"] == ["yes"]
    assert v["Type"] == ["exec"]
    system_only = ["ProtectSystem", "ReadWritePaths", "PrivateTmp", "ProtectHome", "After", "Wants", "User"]
    if scope == "system":
        assert v["ProtectSystem"] == ["strict"] and v["ReadWritePaths"] == [f'"{HOME}"']
        assert v["PrivateTmp"] == ["yes"] and v["ProtectHome"] == ["read-only"]
        assert v["After"] == v["Wants"] == ["network-online.target"]
        assert v["User"] == ["xylen"] and v["WantedBy"] == ["multi-user.target"]
        assert f"journalctl -u xylen-{service}" in text
    else:
        assert not set(system_only) & set(v), "a user manager cannot apply these"
        assert v["WantedBy"] == ["default.target"]
        assert f"journalctl --user -u xylen-{service}" in text
    s = sections(text)
    assert "Restart" in s["Service"] and "StartLimitIntervalSec" in s["Unit"] and "WantedBy" in s["Install"]


def test_system_unit_of_a_root_owned_home_has_no_user_line_and_says_why() -> None:
    text = render("systemd", "serve", inputs("system", run_user=None)).text
    assert "User" not in unit_values(text)
    assert "# No User=: root owns XYLEN_HOME" in text


def test_backoff_keys_only_when_asked() -> None:
    with_backoff = unit_values(render("systemd", "serve", inputs(backoff=True)).text)
    assert with_backoff["RestartSteps"] == ["5"] and with_backoff["RestartMaxDelaySec"] == ["2min"]
    without = unit_values(render("systemd", "serve", inputs(backoff=False)).text)
    assert "RestartSteps" not in without and "RestartMaxDelaySec" not in without


def test_memory_caps() -> None:
    caps = memory_caps(6.0)
    retrain = int(6.0 * 1.25 * GIB)
    assert caps["retrain"][0] == retrain and caps["collect"][0] == GIB
    assert caps["serve"][0] == GIB + retrain  # POST /retrain's child trains inside the server's cgroup
    assert all(cap % MIB == 0 for cap, _ in caps.values())
    odd = memory_caps(2.7)["retrain"][0]
    assert odd % MIB == 0 and 2.7 * 1.25 * GIB - MIB < odd <= 2.7 * 1.25 * GIB


@pytest.mark.parametrize("service", R.SERVICES)
@pytest.mark.parametrize("scope", ["user", "system"])
def test_plist_fields(service: str, scope: str) -> None:
    r = render("launchd", service, inputs(scope))
    d = plistlib.loads(r.text.encode())
    for key in ("Label", "ProgramArguments", "RunAtLoad", "KeepAlive", "StandardOutPath", "StandardErrorPath"):
        assert key in d
    assert d["Label"] == f"io.xylen.{service}"
    assert d["ProgramArguments"] == [str(XYLEN), *ARGS[service]]
    env = {"XYLEN_HOME": str(HOME)} | ({"OMP_NUM_THREADS": "1"} if service == "serve" else {})
    assert d["EnvironmentVariables"] == env
    assert d["RunAtLoad"] is True and d["KeepAlive"] == {"SuccessfulExit": False}
    assert d["ThrottleInterval"] == 10 and d["ExitTimeOut"] == STOP_S[service]
    assert d["WorkingDirectory"] == str(HOME)
    assert d["StandardOutPath"] == f"{HOME}/logs/{service}.log"
    assert d["StandardErrorPath"] == f"{HOME}/logs/{service}.err.log"
    assert d["SoftResourceLimits"] == d["HardResourceLimits"] == {"ResidentSetSize": CAPS[service][0]}
    assert d["ProcessType"] == ("Standard" if service == "serve" else "Background")
    assert d.get("UserName") == ("xylen" if scope == "system" else None)
    lines = r.text.splitlines()
    assert lines[1].startswith("<!DOCTYPE plist") and lines[2].startswith("<!-- xylen-rendered sha256=")


def test_plist_of_a_root_owned_home_has_no_user_name() -> None:
    assert "UserName" not in plistlib.loads(render("launchd", "serve", inputs("system", run_user=None)).text.encode())


HOSTILE = PurePosixPath('/srv/my data/100% "real"/$HOME/it\'s/back\\slash/@XYLEN@/x')


def test_hostile_home_round_trips_through_systemd_quoting() -> None:
    v = unit_values(render("systemd", "collect", inputs("system", home=HOSTILE)).text)
    env = [unquote(e) for e in v["Environment"]]
    assert f"XYLEN_HOME={HOSTILE}" in env
    assert unquote(v["ReadWritePaths"][0]) == str(HOSTILE)
    assert v["WorkingDirectory"][0].replace("%%", "%") == str(HOSTILE)  # taken verbatim after specifiers
    for raw in (v["Environment"][0], v["ReadWritePaths"][0], v["WorkingDirectory"][0]):
        assert "/100%% " in raw and not re.search(r"(?<!%)%(?!%)", raw), "an undoubled % is a systemd specifier"
    assert v["ExecStart"] == [f'"{XYLEN}" collect --quiet'], "a value from the home must not leak into ExecStart"


def test_hostile_paths_round_trip_through_plistlib() -> None:
    exe = PurePosixPath('/Users/a b/100%/$x/"q"/<tag>&amp;/xylen')
    d = plistlib.loads(render("launchd", "serve", inputs(home=HOSTILE, xylen=exe)).text.encode())
    assert d["ProgramArguments"][0] == str(exe)
    assert d["EnvironmentVariables"]["XYLEN_HOME"] == str(HOSTILE) == d["WorkingDirectory"]
    assert d["StandardOutPath"] == f"{HOSTILE}/logs/serve.log"


def test_the_exe_path_with_spaces_and_percent_is_quoted_for_systemd() -> None:
    exe = PurePosixPath("/opt/my apps/50%/bin/xylen")
    v = unit_values(render("systemd", "serve", inputs(xylen=exe)).text)
    word = v["ExecStart"][0].removesuffix(" serve")
    assert unquote(word) == str(exe)


@pytest.mark.parametrize("platform", R.PLATFORMS)
@pytest.mark.parametrize("bad", ["/srv/a\nb", "/srv/a\rb", "/srv/a\x00b", "/srv/tab\there"])
def test_control_characters_in_a_path_are_refused(platform: str, bad: str) -> None:
    with pytest.raises(ConfigError, match="control character") as exc:
        render(platform, "serve", inputs(home=PurePosixPath(bad)))  # type: ignore[arg-type]
    assert repr(bad) in exc.value.message
    with pytest.raises(ConfigError, match="control character"):
        render(platform, "serve", inputs(xylen=PurePosixPath(bad)))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ['/opt/"q"/xylen', "/opt/it's/xylen", "/opt/a\\b/xylen", "/opt/$v/xylen"])
def test_systemd_refuses_an_exe_path_it_cannot_run(bad: str) -> None:
    with pytest.raises(ConfigError, match="systemd cannot run"):
        render("systemd", "serve", inputs(xylen=PurePosixPath(bad)))
    render("launchd", "serve", inputs(xylen=PurePosixPath(bad)))  # launchd takes argv as it is


@pytest.mark.parametrize("bad", ["/srv/xylen ", "/srv/xylen\\"])
def test_systemd_refuses_a_home_it_would_misread(bad: str) -> None:
    with pytest.raises(ConfigError, match="ends with a blank or a backslash"):
        render("systemd", "serve", inputs(home=PurePosixPath(bad)))


def test_relative_paths_are_refused() -> None:
    with pytest.raises(ConfigError, match="not an absolute path"):
        render("systemd", "serve", inputs(home=PurePosixPath("xylen-home")))


def test_a_placeholder_left_unfilled_fails_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    real = R.template_text
    monkeypatch.setattr(R, "template_text", lambda p, s: real(p, s).replace("TimeoutStopSec=", "X=@NOT_A_VALUE@\n#"))
    with pytest.raises(R.TemplateError, match="@NOT_A_VALUE@"):
        render("systemd", "serve", inputs())
    monkeypatch.setattr(R, "template_text", lambda p, s: real(p, s).replace("io.xylen.serve", "@NOT_A_VALUE@"))
    with pytest.raises(R.TemplateError, match="@NOT_A_VALUE@"):
        render("launchd", "serve", inputs())


def test_unknown_service_or_platform_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'web'"):
        render("systemd", "web", inputs())
    with pytest.raises(ConfigError, match="'upstart'"):
        render("upstart", "serve", inputs())  # type: ignore[arg-type]


@pytest.mark.parametrize("platform", R.PLATFORMS)
def test_provenance_tells_ours_from_edited_and_foreign(platform: str) -> None:
    text = render(platform, "serve", inputs()).text  # type: ignore[arg-type]
    assert provenance(text) == "ours"
    assert provenance(text.replace("serve", "serve --port 9000", 1)) == "edited"
    assert provenance(text + "\n") == "edited"
    header = next(line for line in text.splitlines() if "xylen-rendered" in line)
    assert provenance(text.replace(header + "\n", "")) == "foreign"
    assert provenance("[Service]\nExecStart=/bin/true\n") == "foreign"
