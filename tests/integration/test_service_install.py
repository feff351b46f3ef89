"""`xylen install-service` in real processes: an unprivileged user facing folders it may not write, and a wheel
built from the repository, which must carry the templates (src/xylen/service/templates links to packaging/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
TEMPLATES = [
    *(f"systemd/xylen-{s}.service.in" for s in ("serve", "collect", "retrain")),
    *(f"launchd/io.xylen.{s}.plist.in" for s in ("serve", "collect", "retrain")),
]


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder nobody may enter (pytest's tmp root is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="xylen-perm-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    for p in d.rglob("*"):  # let rmtree into the read-only folders
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(d, ignore_errors=True)


def as_nobody(world: Path, *args: str, home_dir: Path) -> subprocess.CompletedProcess[str]:
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-m", "xylen", *args]
    env = {"PATH": os.environ["PATH"], "HOME": str(home_dir), "LANG": "C.UTF-8"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=world, check=False)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="root ignores file permissions; this runs the command as nobody, which needs root and setpriv "
    "(tests/unit/test_service_cli.py covers a target blocked by a file)",
)
def test_unwritable_targets_are_named_with_the_fix_and_nothing_is_written(world: Path) -> None:
    home = world / "xylen-home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    locked = world / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    nobody_home = world / "nobody"
    nobody_home.mkdir()
    os.chown(nobody_home, NOBODY, NOBODY)

    r = as_nobody(
        world,
        "--home",
        str(home),
        "install-service",
        "--platform",
        "systemd",
        "--user",
        "--output",
        str(locked),
        home_dir=nobody_home,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"no permission to write in '{locked}'" in r.stderr and "--output" in r.stderr
    assert "Traceback" not in r.stderr

    # the user manager's folder under a HOME the user cannot write
    r = as_nobody(world, "--home", str(home), "install-service", "--platform", "systemd", "--user", home_dir=locked)
    assert r.returncode == 2 and f"no permission to write in '{locked}'" in r.stderr
    assert "--output DIR" in r.stderr

    # system units as a normal user: the hint says sudo, --user or --output
    r = as_nobody(
        world,
        "--home",
        str(home),
        "install-service",
        "--platform",
        "launchd",
        "--system",
        "--output",
        str(locked),
        home_dir=nobody_home,
    )
    assert r.returncode == 2 and "choose a folder you can write" in r.stderr
    r = as_nobody(
        world,
        "--home",
        str(home),
        "install-service",
        "serve",
        "--platform",
        "systemd",
        "--system",
        home_dir=nobody_home,
    )
    if Path("/etc/systemd/system").exists():
        assert r.returncode == 2 and "/etc/systemd/system" in r.stderr and "sudo" in r.stderr, r.stderr

    assert list(locked.iterdir()) == [] and list(home.iterdir()) == [], "nothing written, not even models.env"


def test_a_wheel_built_from_the_repo_carries_the_templates(tmp_path: Path) -> None:
    """pip wheel --no-deps --no-build-isolation on a copy of the tree the build reads (the shared checkout gets
    no build/ or egg-info), with this environment's setuptools (pyproject asks for >= 68)."""
    import setuptools

    if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) < (68, 0):
        pytest.fail(f"setuptools {setuptools.__version__} < 68: pip install 'setuptools>=68' into this venv")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "packaging", tree / "packaging", ignore=ignore)
    shutil.copytree(REPO / "src", tree / "src", symlinks=True, ignore=ignore)
    assert (tree / "src/xylen/service/templates").is_symlink()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(tree),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "dist").glob("xylen-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for t in TEMPLATES:
            assert zf.read(f"xylen/service/templates/{t}") == (REPO / "packaging" / t).read_bytes(), t
        zf.extractall(tmp_path / "site")
    # and the installed layout renders them (importlib.resources on real files, not the link)
    code = (
        "import sys; from pathlib import PurePosixPath as P; from xylen.service.render import *\n"
        "import xylen.service.render as r; assert r.__file__.startswith(sys.argv[1]), r.__file__\n"
        "i = Inputs(P('/opt/v/bin/xylen'), P('/var/lib/xylen'), 'system', memory_caps(2.0), 'xylen')\n"
        "print(sum(len(render(p, s, i).text) > 0 for p in PLATFORMS for s in SERVICES))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"PYTHONPATH": str(tmp_path / "site"), "PYTHONNOUSERSITE": "1"},
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "6", done.stdout + done.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="runs the command as nobody, which needs root and setpriv",
)
def test_a_models_env_the_service_user_could_not_read_is_refused_without_root(world: Path) -> None:
    """System services run as the owner of XYLEN_HOME (daemon here); a models.env of another user (nobody, who
    runs install) would be unreadable to them at 0600, and only root can hand it over: exit 2 with the chown."""
    home = world / "xylen-home"
    home.mkdir()
    os.chown(home, 1, 1)
    menv = home / "models.env"
    menv.write_text("XYLEN_PROFILE=8gb\n")
    menv.chmod(0o600)
    os.chown(menv, NOBODY, NOBODY)
    out = world / "out"
    out.mkdir()
    os.chown(out, NOBODY, NOBODY)
    r = as_nobody(
        world,
        "--home",
        str(home),
        "install-service",
        "--platform",
        "systemd",
        "--system",
        "--output",
        str(out),
        home_dir=out,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"sudo chown 1 {menv}" in r.stderr and "Traceback" not in r.stderr
    assert list(out.iterdir()) == [] and menv.stat().st_uid == NOBODY
