"""`xylen install-service` / `xylen uninstall-service` as the user sees them.

PID 1 here is not systemd and there is no launchd: `systemctl` and `launchctl` are recording stubs put first on
PATH (each call's argv is appended to a log), and the tests assert the exact calls and their order. The files go to
a temporary HOME (user units) or --output; nothing here touches /etc or a real service manager.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from xylen.cli import app
from xylen.core.errors import ConfigError
from xylen.service import install as I
from xylen.service.manager import detect_platform, enable_commands, find_xylen
from xylen.service.render import provenance

pytestmark = pytest.mark.unit

runner = CliRunner()
UNITS = ["xylen-serve.service", "xylen-collect.service", "xylen-retrain.service"]
PLISTS = ["io.xylen.serve.plist", "io.xylen.collect.plist", "io.xylen.retrain.plist"]

STUB = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as fh:
    fh.write(json.dumps([name, *args]) + "\\n")
if args == ["--version"]:
    print("systemd 252 (252.38-1~deb12u1)")
fail = os.environ.get("STUB_FAIL")
if fail and fail in " ".join([name, *args]):
    print("Failed to " + fail + ": Access denied", file=sys.stderr)
    sys.exit(4)
if name == "systemctl" and "disable" in args and os.environ.get("STUB_NOT_LOADED"):
    print("Failed to stop xylen-serve.service: Unit xylen-serve.service not loaded.", file=sys.stderr)
    sys.exit(5)
if name == "launchctl" and args[:1] == ["bootout"]:
    print("Boot-out failed: 3: No such process", file=sys.stderr)
    sys.exit(3)
"""


class Env:
    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "xylen home"
        self.home.mkdir()
        self.user_home = tmp / "user"
        self.user_home.mkdir()
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.log = tmp / "calls.jsonl"
        for name in ("systemctl", "launchctl"):
            stub = self.bin / name
            stub.write_text(STUB.format(python=sys.executable))
            stub.chmod(0o755)
        self.vars: dict[str, str | None] = {
            "HOME": str(self.user_home),
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "STUB_LOG": str(self.log),
            "XDG_CONFIG_HOME": None,
            "XYLEN_HOME": None,
            "STUB_FAIL": None,
            "STUB_NOT_LOADED": None,
        }

    @property
    def unit_dir(self) -> Path:
        return self.user_home / ".config" / "systemd" / "user"

    @property
    def agent_dir(self) -> Path:
        return self.user_home / "Library" / "LaunchAgents"

    def cli(self, command: str, *args: str, **env: str) -> Any:
        return runner.invoke(app, ["--home", str(self.home), command, *args], env=self.vars | env)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def snapshot(self, *folders: Path) -> dict[str, tuple[bytes, int]]:
        """Every file under ``folders`` and XYLEN_HOME with its bytes and mode."""
        out = {}
        for folder in (self.home, *folders):
            for p in sorted(folder.rglob("*")) if folder.exists() else []:
                if p.is_file():
                    out[str(p)] = (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        return out


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def no_temp_files(folder: Path) -> bool:
    return not list(folder.rglob("*.tmp")) if folder.exists() else True


# -- writing --------------------------------------------------------------------------------------------------------


def test_dry_run_prints_every_file_and_writes_nothing(env: Env) -> None:
    r = env.cli("install-service", "all", "--user", "--dry-run", "--enable")
    assert r.exit_code == 0, r.output
    for unit in UNITS:
        assert f"# would create {env.unit_dir / unit}:" in r.output
    assert r.output.count("[Service]") == 3 and "ExecStart=" in r.output
    assert f"would create {env.home / 'models.env'} (mode 0600)" in r.output
    assert "# would run: systemctl --user daemon-reload" in r.output
    assert "# would run: systemctl --user enable --now " + " ".join(UNITS) in r.output
    assert not env.unit_dir.exists() and not (env.home / "models.env").exists()
    assert env.snapshot(env.user_home) == {}
    assert env.calls() == [["systemctl", "--version"]], "a dry run only asks the systemd version"


def test_output_writes_the_units_there_and_creates_models_env_0600(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    old_umask = os.umask(0o077)  # the modes are set explicitly, not left to the umask
    try:
        r = env.cli("install-service", "--platform", "systemd", "--user", "--output", str(out))
    finally:
        os.umask(old_umask)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == sorted(UNITS)
    for unit in UNITS:
        f = out / unit
        assert stat.S_IMODE(f.stat().st_mode) == 0o644
        assert provenance(f.read_text()) == "ours"
        assert f"created {f}" in r.output
    menv = env.home / "models.env"
    assert stat.S_IMODE(menv.stat().st_mode) == 0o600
    assert "models.env.example" in menv.read_text()
    assert f"created {menv} (mode 0600)" in r.output
    assert f'ExecStart="{find_xylen()}" serve' in (out / UNITS[0]).read_text()
    assert "logs: journalctl --user -u xylen-serve.service -f" in r.output
    assert "next: copy the files into" in r.output
    assert env.calls() == [["systemctl", "--version"]] and no_temp_files(out)
    assert not env.unit_dir.exists()


def test_models_env_is_tightened_to_0600_and_kept(env: Env, tmp_path: Path) -> None:
    menv = env.home / "models.env"
    key = "k3y-of-models-env"  # not a word a path may hold (a checkout in /work/uisecret held "secret")
    menv.write_text(f"XYLEN_API_KEYS={key}\nXYLEN_PROFILE=8gb\n")
    menv.chmod(0o644)
    r = env.cli("install-service", "serve", "--platform", "launchd", "--user", "--output", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(menv.stat().st_mode) == 0o600 and f"set {menv} to mode 0600" in r.output
    assert menv.read_text() == f"XYLEN_API_KEYS={key}\nXYLEN_PROFILE=8gb\n"
    assert key not in (tmp_path / "o" / "io.xylen.serve.plist").read_text(), "keys never go into a plist"
    assert (env.home / "logs").is_dir(), "launchd writes the services' output into XYLEN_HOME/logs"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand a file to another user")
def test_root_hands_a_new_models_env_and_logs_to_the_owner_of_xylen_home(env: Env, tmp_path: Path) -> None:
    os.chown(env.home, 65534, 65534)
    r = env.cli("install-service", "--platform", "launchd", "--system", "--output", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    for p in (env.home / "models.env", env.home / "logs"):
        assert (p.stat().st_uid, p.stat().st_gid) == (65534, 65534)
    assert "<key>UserName</key>\n\t<string>nobody</string>" in (tmp_path / "o" / "io.xylen.serve.plist").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand a file to another user")
@pytest.mark.parametrize("mode", [0o644, 0o600])
def test_root_hands_an_existing_models_env_to_the_user_the_services_run_as(env: Env, tmp_path: Path, mode: int) -> None:
    """`sudo nano models.env` leaves a root-owned file in a home the services run as the owner of: at mode 0600
    (set by install, or already) the services could not read their settings and would stop with exit 2."""
    os.chown(env.home, 65534, 65534)
    menv = env.home / "models.env"
    menv.write_text("XYLEN_PROFILE=8gb\n")
    menv.chmod(mode)
    r = env.cli("install-service", "--platform", "systemd", "--system", "--output", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    st = menv.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o600), "User=nobody must read it"
    assert menv.read_text() == "XYLEN_PROFILE=8gb\n"
    assert "\nUser=nobody\n" in (tmp_path / "o" / UNITS[0]).read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="the default scope is --system only as root")
def test_default_scope_as_root_is_system_and_runs_as_the_owner(env: Env, tmp_path: Path) -> None:
    os.chown(env.home, 1, 1)  # daemon
    r = env.cli("install-service", "serve", "--platform", "systemd", "--output", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert "installing system services (running as root" in r.output
    text = (tmp_path / "o" / UNITS[0]).read_text()
    assert "\nUser=daemon\n" in text and "WantedBy=multi-user.target" in text and "ProtectSystem=strict" in text


def test_rerun_says_unchanged_and_writes_nothing(env: Env) -> None:
    assert env.cli("install-service", "--platform", "systemd", "--user").exit_code == 0
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in env.unit_dir.iterdir()}
    r = env.cli("install-service", "--platform", "systemd", "--user")
    assert r.exit_code == 0, r.output
    for unit in UNITS:
        assert f"unchanged {env.unit_dir / unit}" in r.output
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in env.unit_dir.iterdir()} == before


def test_our_own_file_is_updated_without_force(env: Env) -> None:
    (env.home / "models.env").write_text("XYLEN_PROFILE=8gb\n")
    assert env.cli("install-service", "retrain", "--platform", "systemd", "--user").exit_code == 0
    (env.home / "models.env").write_text("XYLEN_PROFILE=16gb\n")
    r = env.cli("install-service", "retrain", "--platform", "systemd", "--user")
    assert r.exit_code == 0, r.output
    assert f"updated {env.unit_dir / UNITS[2]}" in r.output
    assert f"MemoryMax={int(6 * 1.25 * 1024)}M" in (env.unit_dir / UNITS[2]).read_text()  # 16gb: a 6 GB cap


def edit_serve_and_change_the_rest(env: Env, folder: Path, edit: str) -> dict[str, tuple[bytes, int]]:
    menv = env.home / "models.env"
    menv.write_text("XYLEN_PROFILE=8gb\n")
    serve = folder / UNITS[0]
    if edit == "edited":
        serve.write_text(serve.read_text().replace("TimeoutStopSec=45s", "TimeoutStopSec=90s"))
    else:  # someone else's file of the same name: no header at all
        serve.write_text("[Service]\nExecStart=/usr/local/bin/other-server\nTimeoutStopSec=90s\n")
    menv.write_text("XYLEN_PROFILE=16gb\n")  # the retrain and serve caps change: those files would be updated
    menv.chmod(0o644)
    return env.snapshot(folder)


@pytest.mark.parametrize("edit", ["edited", "foreign"])
def test_an_edited_unit_is_refused_with_a_diff_and_nothing_is_written(env: Env, edit: str) -> None:
    (env.home / "models.env").write_text("XYLEN_PROFILE=8gb\n")
    assert env.cli("install-service", "--platform", "systemd", "--user").exit_code == 0
    before = edit_serve_and_change_the_rest(env, env.unit_dir, edit)
    for extra in ([], ["--dry-run"], ["--enable"]):
        r = env.cli("install-service", "--platform", "systemd", "--user", *extra)
        assert r.exit_code == 2, r.output
        assert f"--- {env.unit_dir / UNITS[0]} (installed)" in r.output
        assert "-TimeoutStopSec=90s" in r.output and "+TimeoutStopSec=45s" in r.output
        assert "Refusing to overwrite" in r.output and "--force" in r.output
        # the other services (whose files would change) and models.env (0644, not tightened) are untouched too
        assert env.snapshot(env.unit_dir) == before
        assert env.calls() == [["systemctl", "--version"]] * len(env.calls()), "nothing enabled"
    r = env.cli("install-service", "--platform", "systemd", "--user", "--force")
    assert r.exit_code == 0, r.output
    assert f"replaced (--force) {env.unit_dir / UNITS[0]}" in r.output
    assert f"updated {env.unit_dir / UNITS[2]}" in r.output
    assert "TimeoutStopSec=45s" in (env.unit_dir / UNITS[0]).read_text()
    assert stat.S_IMODE((env.home / "models.env").stat().st_mode) == 0o600


# -- --enable and uninstall, against recording stubs ----------------------------------------------------------


def test_enable_reloads_then_enables_now(env: Env) -> None:
    (env.home / "models.env").write_text("XYLEN_PROFILE=8gb\n")
    r = env.cli("install-service", "all", "--platform", "systemd", "--user", "--enable")
    assert r.exit_code == 0, r.output
    assert env.calls() == [
        ["systemctl", "--version"],
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", *UNITS],
    ]
    assert all((env.unit_dir / u).is_file() for u in UNITS)
    assert "ran systemctl --user enable --now" in r.output and "next:" not in r.output
    # a changed unit is restarted (a running service keeps its old unit until it restarts); unchanged ones are not
    env.log.unlink()
    (env.home / "models.env").write_text("XYLEN_PROFILE=16gb\n")
    r = env.cli("install-service", "all", "--platform", "systemd", "--user", "--enable")
    assert r.exit_code == 0, r.output
    assert env.calls()[1:] == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", *UNITS],
        ["systemctl", "--user", "try-restart", "xylen-serve.service", "xylen-retrain.service"],
    ]


def test_enable_on_launchd_boots_out_then_bootstraps_each(env: Env) -> None:
    r = env.cli("install-service", "all", "--platform", "launchd", "--user", "--enable")
    assert r.exit_code == 0, r.output
    domain = f"gui/{os.getuid()}"
    expected = []
    for service, plist in zip(("serve", "collect", "retrain"), PLISTS):
        expected.append(["launchctl", "bootout", f"{domain}/io.xylen.{service}"])  # "not loaded": ignored
        expected.append(["launchctl", "bootstrap", domain, str(env.agent_dir / plist)])
    assert env.calls() == expected
    assert (env.home / "logs").is_dir()
    assert f"logs: {env.home / 'logs' / 'serve.log'} and {env.home / 'logs' / 'serve.err.log'}" in r.output


@pytest.mark.parametrize(
    ("platform", "fail"), [("systemd", "enable"), ("systemd", "daemon-reload"), ("launchd", "bootstrap")]
)
def test_a_failing_service_manager_is_a_clear_error(env: Env, platform: str, fail: str) -> None:
    r = env.cli("install-service", "serve", "--platform", platform, "--user", "--enable", STUB_FAIL=fail)
    assert r.exit_code == 2, r.output
    assert f"Failed to {fail}: Access denied" in r.output and "failed (exit 4)" in r.output
    assert "Traceback" not in r.output
    ran = [c for c in env.calls() if c[1:] != ["--version"]]
    assert fail in ran[-1], "stops at the first failing call"


def test_system_scope_commands_have_no_user_flag() -> None:
    files = [("serve", Path("/etc/systemd/system/xylen-serve.service"))]
    assert [c.argv for c in enable_commands("systemd", "system", files)] == [
        ("systemctl", "daemon-reload"),
        ("systemctl", "enable", "--now", "xylen-serve.service"),
    ]
    files = [("serve", Path("/Library/LaunchDaemons/io.xylen.serve.plist"))]
    assert [c.argv for c in enable_commands("launchd", "system", files)] == [
        ("launchctl", "bootout", "system/io.xylen.serve"),
        ("launchctl", "bootstrap", "system", "/Library/LaunchDaemons/io.xylen.serve.plist"),
    ]


def test_uninstall_disables_removes_and_reloads_leaving_settings_and_data(env: Env) -> None:
    assert env.cli("install-service", "--platform", "systemd", "--user", "--enable").exit_code == 0
    (env.home / "data").mkdir()
    (env.home / "data" / "candles.parquet").write_bytes(b"PAR1")
    menv = (env.home / "models.env").read_bytes()
    env.log.unlink()
    r = env.cli("uninstall-service", "--platform", "systemd", "--user")
    assert r.exit_code == 0, r.output
    assert env.calls() == [
        ["systemctl", "--user", "disable", "--now", *UNITS],
        ["systemctl", "--user", "daemon-reload"],
    ]
    assert not any((env.unit_dir / u).exists() for u in UNITS)
    assert (env.home / "models.env").read_bytes() == menv
    assert (env.home / "data" / "candles.parquet").read_bytes() == b"PAR1"
    # again: nothing installed, nothing to run
    env.log.unlink()
    r = env.cli("uninstall-service", "--platform", "systemd", "--user")
    assert r.exit_code == 0 and r.output.count("not installed:") == 3 and env.calls() == []


def test_uninstall_on_launchd_boots_out_and_removes(env: Env) -> None:
    assert env.cli("install-service", "collect", "--platform", "launchd", "--user").exit_code == 0
    r = env.cli("uninstall-service", "collect", "--platform", "launchd", "--user")
    assert r.exit_code == 0, r.output
    assert env.calls() == [["launchctl", "bootout", f"gui/{os.getuid()}/io.xylen.collect"]]
    assert not (env.agent_dir / PLISTS[1]).exists()


def test_uninstall_refuses_an_edited_unit_without_force(env: Env) -> None:
    assert env.cli("install-service", "--platform", "systemd", "--user").exit_code == 0
    serve = env.unit_dir / UNITS[0]
    serve.write_text(serve.read_text() + "# my note\n")
    env.log.unlink()
    r = env.cli("uninstall-service", "--platform", "systemd", "--user")
    assert r.exit_code == 2 and "Refusing to remove" in r.output and "--force" in r.output
    assert all((env.unit_dir / u).exists() for u in UNITS) and env.calls() == [], "nothing stopped or removed"
    r = env.cli("uninstall-service", "--platform", "systemd", "--user", "--force")
    assert r.exit_code == 0 and not serve.exists()


def test_uninstall_dry_run_and_output_run_nothing(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert env.cli("install-service", "--platform", "systemd", "--user", "--output", str(out)).exit_code == 0
    env.log.unlink()
    r = env.cli("uninstall-service", "--platform", "systemd", "--user", "--output", str(out), "--dry-run")
    assert r.exit_code == 0 and r.output.count("# would remove") == 3 and len(list(out.iterdir())) == 3
    r = env.cli("uninstall-service", "--platform", "systemd", "--user", "--output", str(out))
    assert r.exit_code == 0 and list(out.iterdir()) == [] and env.calls() == []


# -- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["web"], "'web' is not one of 'serve', 'collect', 'retrain', 'all'"),
        (["--platform", "upstart"], "'upstart' is not one of 'systemd', 'launchd', 'auto'"),
    ],
)
@pytest.mark.parametrize("command", ["install-service", "uninstall-service"])
def test_unknown_service_or_platform(env: Env, command: str, args: list[str], says: str) -> None:
    r = env.cli(command, *args, "--user")
    assert r.exit_code == 2 and says in r.output
    assert env.snapshot(env.user_home) == {} and env.calls() == []


def test_missing_xylen_home(env: Env) -> None:
    missing = env.home.parent / "nowhere"
    r = runner.invoke(app, ["--home", str(missing), "install-service", "--user"], env=env.vars)
    assert r.exit_code == 2
    assert f"XYLEN_HOME '{missing}' does not exist" in r.output and f"mkdir -p {missing}" in r.output
    assert not missing.exists() and env.snapshot(env.user_home) == {}


def test_invalid_models_env_is_refused_and_nothing_written(env: Env) -> None:
    menv = env.home / "models.env"
    menv.write_text("XYLEN_PORT=abc\n")
    menv.chmod(0o644)
    r = env.cli("install-service", "--platform", "systemd", "--user")
    assert r.exit_code == 2
    assert "XYLEN_PORT (models.env) = 'abc'" in r.output and f"fix {menv}" in r.output
    assert stat.S_IMODE(menv.stat().st_mode) == 0o644 and not env.unit_dir.exists()


def test_unwritable_target_a_file_in_the_path(env: Env, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    r = env.cli("install-service", "--platform", "systemd", "--user", "--output", str(blocker / "units"))
    assert r.exit_code == 2
    assert f"Cannot write '{blocker / 'units' / UNITS[0]}'" in r.output and "is not a folder" in r.output
    assert not (env.home / "models.env").exists(), "models.env is not created when a unit cannot be written"
    # the same for the user manager's own folder
    (env.user_home / ".config").write_text("x")
    r = env.cli("install-service", "--platform", "systemd", "--user")
    assert r.exit_code == 2 and "--output DIR" in r.output and not (env.home / "models.env").exists()


def test_enable_with_output_is_refused(env: Env, tmp_path: Path) -> None:
    r = env.cli("install-service", "--user", "--output", str(tmp_path / "o"), "--enable")
    assert r.exit_code == 2 and "--enable cannot start services from files written to --output" in r.output
    assert not (tmp_path / "o").exists() and env.calls() == []


def test_platform_auto() -> None:
    assert detect_platform("auto", "linux") == "systemd"
    assert detect_platform("auto", "darwin") == "launchd"
    with pytest.raises(ConfigError, match="'win32'"):
        detect_platform("auto", "win32")


def test_help_documents_the_usage_line_with_an_example() -> None:
    r = runner.invoke(app, ["install-service", "--help"])
    text = " ".join(r.output.split())
    assert (
        "xylen install-service [serve|collect|retrain|all] [--platform systemd|launchd|auto] [--user|--system] "
        "[--dry-run] [--output DIR] [--enable] [--force]" in text
    )
    assert "Example: xylen install-service all --dry-run" in text
    r = runner.invoke(app, ["uninstall-service", "--help"])
    assert "Example:" in r.output and "Never touches models.env" in " ".join(r.output.split())


# -- atomic writes ------------------------------------------------------------------------------------------------


def test_a_failed_write_puts_every_file_back(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    (env.home / "models.env").write_text("XYLEN_PROFILE=8gb\n")
    assert env.cli("install-service", "--platform", "systemd", "--user").exit_code == 0
    before = env.snapshot(env.unit_dir)
    plan = I.plan_install(
        "systemd",
        "user",
        env.home,
        ["serve", "collect", "retrain"],
        xylen=Path("/opt/other/bin/xylen"),
        user_home=env.user_home,
        backoff=False,
    )
    assert [f.action for f in plan.files] == ["update"] * 3
    real_replace = os.replace
    calls = []

    def failing_second(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_second)
    with pytest.raises(ConfigError, match="No space left on device.*put back"):
        I.apply_install(plan)
    monkeypatch.undo()
    assert env.snapshot(env.unit_dir) == before, "the first service's new unit was rolled back"
    assert no_temp_files(env.unit_dir)


def test_write_atomic_leaves_the_old_file_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.service"
    target.write_text("old\n")

    def boom(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="Input/output"):
        I.write_atomic(target, b"new\n", 0o644)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["x.service"]


def test_uninstall_of_units_never_loaded_still_removes_them(env: Env) -> None:
    """Installed without --enable and never daemon-reloaded: `disable --now` has nothing to stop, which is fine."""
    assert env.cli("install-service", "--platform", "systemd", "--user").exit_code == 0
    r = env.cli("uninstall-service", "--platform", "systemd", "--user", STUB_NOT_LOADED="1")
    assert r.exit_code == 0, r.output
    assert not any((env.unit_dir / u).exists() for u in UNITS)


def test_uninstall_stops_at_a_failing_disable_and_keeps_the_files(env: Env) -> None:
    assert env.cli("install-service", "--platform", "systemd", "--user").exit_code == 0
    r = env.cli("uninstall-service", "--platform", "systemd", "--user", STUB_FAIL="disable")
    assert r.exit_code == 2 and "Failed to disable: Access denied" in r.output
    assert all((env.unit_dir / u).exists() for u in UNITS), "nothing removed while the services may still run"
    assert env.calls()[-1][:4] == ["systemctl", "--user", "disable", "--now"]


def test_a_file_named_logs_is_refused_before_anything_is_written(env: Env) -> None:
    """launchd writes the services' output to XYLEN_HOME/logs: a file in the way is found by the check that runs
    before any write, not when the folder is created after the plists."""
    (env.home / "logs").write_text("not a folder")
    r = env.cli("install-service", "--platform", "launchd", "--user")
    assert r.exit_code == 2 and "logs' is not a folder" in r.output, r.output
    assert not env.agent_dir.exists() and not (env.home / "models.env").exists()


def test_a_dangling_models_env_link_is_refused_and_kept(env: Env) -> None:
    menv = env.home / "models.env"
    menv.symlink_to(env.home / "secrets" / "models.env")  # e.g. on a volume not mounted yet
    r = env.cli("install-service", "--platform", "systemd", "--user")
    assert r.exit_code == 2 and "which does not exist" in r.output, r.output
    assert menv.is_symlink() and not env.unit_dir.exists()


def test_a_models_env_written_meanwhile_is_never_replaced(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the check (no models.env) and the write, someone writes one: install keeps theirs, puts the units
    back and says so (the old code replaced it with the empty header)."""
    plan = I.plan_install("systemd", "user", env.home, ["serve"], xylen=Path("/opt/x/bin/xylen"),
                          user_home=env.user_home, backoff=False)
    assert plan.env_action == "create"
    (env.home / "models.env").write_text("XYLEN_API_KEYS=theirs\n")
    with pytest.raises(ConfigError, match="appeared while installing"):
        I.apply_install(plan)
    assert (env.home / "models.env").read_text() == "XYLEN_API_KEYS=theirs\n"
    assert not (env.unit_dir / UNITS[0]).exists(), "the unit written before was removed again"
    assert no_temp_files(env.home) and no_temp_files(env.unit_dir)
