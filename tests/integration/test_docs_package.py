"""The vendored /docs and /redoc assets ship: in the wheel (what `pip install` and the Docker image install) and in
the sdist, byte for byte, and an installed wheel serves them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from xylen.serve import docs

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def vendored() -> dict[str, bytes]:
    return {p.relative_to(docs.STATIC).as_posix(): p.read_bytes() for p in docs.STATIC.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the build reads (the shared checkout gets no build/ or egg-info)."""
    tree = tmp_path_factory.mktemp("docs-pkg") / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "packaging", tree / "packaging", ignore=ignore)
    shutil.copytree(REPO / "src", tree / "src", symlinks=True, ignore=ignore)
    return tree


def test_the_wheel_carries_the_assets_and_an_installed_wheel_serves_them(tree: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(tree)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "dist").glob("xylen-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n.removeprefix("xylen/serve/static/"): zf.read(n) for n in zf.namelist()
                   if n.startswith("xylen/serve/static/")}
        zf.extractall(tmp_path / "site")
    assert shipped == vendored()
    assert not [n for n in shipped if n.endswith(".map")]
    code = (
        "import sys, warnings; warnings.simplefilter('ignore')\n"
        "from starlette.testclient import TestClient\n"
        "import xylen.serve.docs as d; assert d.__file__.startswith(sys.argv[1]), d.__file__\n"
        "from xylen.core.settings import load_settings; from xylen.serve.app import create_app\n"
        "c = TestClient(create_app(load_settings({'home': sys.argv[2]}, environ={})), base_url='http://127.0.0.1')\n"
        "page = c.get('/redoc').text; url = page.split('<script src=\"')[1].split('\"')[0]\n"
        "r = c.get(url); print(r.status_code, len(r.content), url)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "site"), str(tmp_path / "home")],
        capture_output=True, text=True, timeout=120, check=False,
        env=os.environ | {"PYTHONPATH": str(tmp_path / "site"), "PYTHONNOUSERSITE": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    status, size, url = run.stdout.split()
    assert (status, int(size)) == ("200", len(vendored()["redoc/redoc.standalone.js"])), run.stdout
    assert url.startswith("/static/docs/redoc/redoc.standalone.js?v=")


def test_the_sdist_carries_the_assets(tree: Path, tmp_path: Path) -> None:
    code = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tree, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    sdist = tmp_path / done.stdout.strip().splitlines()[-1]
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/src/xylen/serve/static/"
    with tarfile.open(sdist) as tf:
        shipped = {}
        for m in tf.getmembers():
            if m.isfile() and m.name.startswith(prefix):
                f = tf.extractfile(m)
                assert f is not None
                shipped[m.name.removeprefix(prefix)] = f.read()
    assert shipped == vendored()
