"""systemd's own parser on every rendered unit: `systemd-analyze verify` (system and --user) with the real installed
xylen, and `systemd --test --user` (which loads a unit and dumps what it understood) to read back ExecStart,
Environment, WorkingDirectory and ReadWritePaths of a home path full of hostile characters.

PID 1 here is not systemd: verify and --test parse and check units without a running manager. `--test` refuses to
run as root, so as root it runs as nobody (setpriv). Skipped, with the reason, only where systemd is not installed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from xylen.service.manager import find_xylen, systemd_version
from xylen.service.render import SERVICES, Inputs, memory_caps, render

pytestmark = pytest.mark.integration

ANALYZE = shutil.which("systemd-analyze")
SYSTEMD = next((p for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd") if os.access(p, os.X_OK)), None)
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (apt install systemd)")
ARGS = {"serve": ["serve"], "collect": ["collect", "--quiet"], "retrain": ["retrain", "--loop", "--all"]}
CAPS = memory_caps(6.0)
NOBODY = 65534


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder every user may read (pytest's tmp root is 0700), for a parser that runs as nobody."""
    d = Path(tempfile.mkdtemp(prefix="xylen-units-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def hostile_home(world: Path) -> Path:
    home = world / "my home" / '100% "q" 50%h' / "$HOME" / "it's" / "b\\s" / "@XYLEN@" / "x"  # %h: a specifier
    home.mkdir(parents=True)
    return home


def hostile_xylen(world: Path) -> Path:
    """The real installed xylen, reached through a folder with a space and a percent sign."""
    link = world / "bin dir 50%h" / "xylen"
    link.parent.mkdir()
    link.symlink_to(find_xylen())
    return link


def write_units(folder: Path, scope: str, home: Path, xylen: Path, *, backoff: bool = False) -> list[Path]:
    folder.mkdir(exist_ok=True)
    files = []
    for service in SERVICES:
        inputs = Inputs(
            xylen=PurePosixPath(xylen),
            home=PurePosixPath(home),
            scope=scope,  # type: ignore[arg-type]
            memory=CAPS,
            run_user="daemon" if scope == "system" else None,
            backoff=backoff,
        )
        r = render("systemd", service, inputs)
        path = folder / r.file_name
        path.write_text(r.text)
        files.append(path)
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o755 if p.is_dir() else 0o644)
    return files


def verify(files: list[Path], scope: str, world: Path) -> tuple[int, list[str]]:
    """rc and the output lines that name one of ``files`` (verify prints findings only on the console target)."""
    assert ANALYZE is not None
    env = os.environ | {"SYSTEMD_LOG_TARGET": "console"}
    cmd = [ANALYZE, "verify", *map(str, files)]
    if scope == "user":
        runtime = world / "runtime-root"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)  # --user verify needs one that exists
        cmd.insert(1, "--user")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    said = [line for line in (done.stdout + done.stderr).splitlines() if any(f.name in line for f in files)]
    return done.returncode, said


@needs_analyze
@pytest.mark.parametrize("scope", ["system", "user"])
def test_every_unit_passes_systemd_analyze_verify(world: Path, scope: str) -> None:
    files = write_units(world / "units", scope, hostile_home(world), find_xylen(), backoff=False)
    rc, said = verify(files, scope, world)
    assert rc == 0 and said == [], said


@needs_analyze
def test_verify_with_a_hostile_home_and_exe_path(world: Path) -> None:
    files = write_units(world / "units", "system", hostile_home(world), hostile_xylen(world))
    rc, said = verify(files, "system", world)
    assert rc == 0 and said == [], said


@needs_analyze
def test_verify_catches_what_it_should(world: Path) -> None:
    """The check above can fail: a unit naming a program that is not there is reported."""
    files = write_units(world / "units", "system", hostile_home(world), world / "missing" / "xylen")
    rc, said = verify(files, "system", world)
    assert rc != 0 and any("is not executable" in line for line in said), said


@needs_analyze
def test_backoff_keys_are_left_out_where_systemd_is_too_old(world: Path) -> None:
    """RestartSteps/RestartMaxDelaySec came in systemd 254; older ones warn about unknown keys, so install asks
    `systemctl --version` and leaves them out there."""
    version = systemd_version()
    if version is None or version >= 254:
        pytest.skip(f"systemd {version} knows the backoff keys: nothing to leave out")
    files = write_units(world / "units", "system", hostile_home(world), find_xylen(), backoff=True)
    _rc, said = verify(files, "system", world)
    assert any("RestartSteps" in line for line in said), said


def dump_unit(folder: Path, unit: str, world: Path) -> dict[str, list[str]]:
    """What `systemd --test --user` understood of ``unit``: key -> values, from its dump."""
    if SYSTEMD is None:
        pytest.skip("the systemd binary is not installed")
    runtime = world / "runtime-test"
    runtime.mkdir(mode=0o700, exist_ok=True)
    cmd = [SYSTEMD, "--test", "--user", f"--unit={unit}", "--log-target=console"]
    if os.geteuid() == 0:  # --test will not run as root
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to run systemd --test as nobody")
        os.chown(runtime, NOBODY, NOBODY)
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(runtime),
        "XDG_RUNTIME_DIR": str(runtime),
        "SYSTEMD_UNIT_PATH": f"{folder}:",
    }
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=world, check=False)
    lines = done.stdout.splitlines()
    try:
        start = lines.index(f"\t-> Unit {unit}:")
    except ValueError:
        raise AssertionError(f"no dump of {unit}: rc={done.returncode} {done.stderr[-2000:]}") from None
    out: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if line.startswith("\t-> Unit "):
            break
        key, sep, value = line.strip().partition(": ")
        if sep:
            out.setdefault(key, []).append(value)
    return out


@needs_analyze
@pytest.mark.parametrize("scope", ["system", "user"])
def test_systemd_reads_back_every_value_we_wrote(world: Path, scope: str) -> None:
    home, xylen = hostile_home(world), hostile_xylen(world)
    folder = world / "units"
    write_units(folder, scope, home, xylen)
    for service in SERVICES:
        got = dump_unit(folder, f"xylen-{service}.service", world)
        assert shlex.split(got["Command Line"][0]) == [str(xylen), *ARGS[service]]
        assert got["WorkingDirectory"] == [str(home)]
        env = [f"XYLEN_HOME={home}"] + (["OMP_NUM_THREADS=1"] if service == "serve" else [])
        if scope == "system" and service != "collect":  # matplotlib's folder: the home is read-only there
            env.append(f"MPLCONFIGDIR={home}/cache/matplotlib")
        assert got["Environment"] == env
        assert got["MemoryMax"] == [str(CAPS[service][0])]
        assert got["Type"] == ["exec"] and got["Restart"] == ["on-failure"] and got["RestartSec"] == ["5s"]
        assert got["KillMode"] == ["mixed"]
        assert got["TimeoutStopSec"] == [{"serve": "45s", "collect": "30s", "retrain": "1min"}[service]]
        if scope == "system":
            assert got["ReadWritePaths"] == [str(home)] and got["User"] == ["daemon"]
            assert got["ProtectSystem"] == ["strict"] and got["ProtectHome"] == ["read-only"]
            assert got["PrivateTmp"] == ["yes"]
        else:
            assert "ReadWritePaths" not in got and "User" not in got and got["ProtectSystem"] == ["no"]


@needs_analyze
@pytest.mark.parametrize("service", ["serve", "retrain"])
def test_matplotlib_writes_under_xylen_home_in_a_system_unit(world: Path, service: str) -> None:
    """retrain (and serve's POST /retrain child) draw the training report with matplotlib, which writes its config
    and font cache under $HOME. A system unit makes HOME read-only (ProtectHome=read-only, ProtectSystem=strict):
    the unit must point MPLCONFIGDIR into XYLEN_HOME, the one writable path. Run with the environment systemd
    read back and a HOME that cannot be written, matplotlib must neither warn nor fall back to a temporary folder."""
    home = hostile_home(world)
    folder = world / "units"
    write_units(folder, "system", home, find_xylen())
    got = dump_unit(folder, f"xylen-{service}.service", world)
    env = dict(e.partition("=")[::2] for e in got["Environment"])
    writable = [Path(p) for p in got["ReadWritePaths"]]
    assert any(Path(env.get("MPLCONFIGDIR", "/")).is_relative_to(p) for p in writable), env
    run_env = {"PATH": os.environ["PATH"], "HOME": "/dev/null/home"} | env  # a HOME nothing can be written in
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as p; "
            "p.subplots()[0].savefig(__import__('io').BytesIO(), format='png'); print(matplotlib.get_cachedir())",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=run_env,
        cwd=world,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "temporary" not in done.stderr, done.stderr[-2000:]
    assert Path(done.stdout.strip()).is_relative_to(home), done.stdout
