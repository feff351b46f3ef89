"""Docker end-to-end fixtures: the image built from this checkout, and helpers to drive docker and docker-compose.

These tests build an image and run containers for minutes, so the README's `python -m pytest` does not collect
them: they are collected only with XYLEN_DOCKER_TESTS=1, which `.ci/docker-e2e` sets after it has installed
Docker, started dockerd and built the base image. No image registry is reachable here, so the image is built
on `xylen-ci-base:bookworm` (Debian bookworm + python3 + python3-venv, made by that script with debootstrap)
through the Dockerfile's PYTHON_IMAGE argument, and compose is Debian's docker-compose 1.29.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

collect_ignore_glob = [] if os.environ.get("XYLEN_DOCKER_TESTS") == "1" else ["test_*.py"]

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("XYLEN_DOCKER_BASE", "xylen-ci-base:bookworm")
IMAGE = "xylen:e2e"
# The optional build-only context file the Dockerfile's `COPY ... build-ca.pe[m]` picks up.
CA_NAME = "build-ca.pem"
# The classic builder (the docker client here has no buildx plugin); quiet "what's next" hints.
DOCKER_ENV = {**os.environ, "DOCKER_BUILDKIT": "0", "DOCKER_CLI_HINTS": "false"}

# Figures for the terminal summary (image build time and size, e2e time); the base build is timed by the script.
FIGURES: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("docker e2e figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")


def log_dir() -> Path:
    path = Path(os.environ.get("XYLEN_DOCKER_LOG_DIR", "/tmp/xylen-docker-e2e"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(
    argv: Sequence[str], *, timeout: float = 120, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command (docker, docker-compose); on failure, fail with its output. Timeouts only catch hangs."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, errors="replace", timeout=timeout,
                          env=kw.pop("env", DOCKER_ENV), **kw)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def docker(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run(["docker", *args], **kw)


def inspect(ref: str, kind: str = "container") -> dict[str, Any]:
    import json

    data: list[dict[str, Any]] = json.loads(docker(kind, "inspect", ref).stdout)
    return data[0]


def host_ca_bundle() -> Path | None:
    """The CA bundle pip uses on this host (TLS interception here): XYLEN_BUILD_CA, pip's `cert`, or Debian's."""
    if os.environ.get("XYLEN_BUILD_CA"):
        return Path(os.environ["XYLEN_BUILD_CA"])
    got = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.cert"], capture_output=True,
                         text=True, check=False)
    if got.returncode == 0 and got.stdout.strip() and Path(got.stdout.strip()).is_file():
        return Path(got.stdout.strip())
    debian = Path("/etc/ssl/certs/ca-certificates.crt")
    return debian if debian.is_file() else None


def copy_checkout(dst: Path) -> int:
    """Copy what git tracks plus untracked files it does not ignore (this checkout as it is) into ``dst``."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    copied = 0
    for rel in filter(None, listed):
        src = REPO / rel
        if not src.is_symlink() and not src.exists():  # deleted but still in the index
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel, follow_symlinks=False)  # the service templates link stays a link
        copied += 1
    return copied


@dataclass
class Image:
    tag: str
    ca_file: Path | None
    info: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="session")
def docker_ready() -> None:
    if shutil.which("docker") is None or docker("info", check=False, timeout=60).returncode != 0:
        pytest.fail("dockerd is not reachable: run these tests through .ci/docker-e2e, which starts it")
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        pytest.fail(f"base image {BASE_IMAGE} is missing: .ci/docker-e2e builds it (debootstrap + docker import)")
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing: .ci/docker-e2e installs Debian's docker-compose")


@pytest.fixture(scope="session")
def image(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Image:
    """xylen:e2e, built from a copy of this checkout on the Debian base image, with the host CA for pip only."""
    ctx = tmp_path_factory.mktemp("docker-context")
    files = copy_checkout(ctx)
    ca = host_ca_bundle()
    if ca is not None:
        shutil.copyfile(ca, ctx / CA_NAME)
    build_log = log_dir() / "image-build.log"
    start = time.monotonic()
    proc = docker("build", "--network=host", "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", "-t", IMAGE, str(ctx),
                  timeout=1800, check=False)
    elapsed = time.monotonic() - start
    build_log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        pytest.fail(f"docker build exited {proc.returncode} (log: {build_log}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    steps = proc.stdout.count("\nStep ")
    cached = proc.stdout.count("Using cache")
    info = inspect(IMAGE, "image")
    FIGURES["image build"] = f"{elapsed:.0f} s ({cached} of {steps} steps from the cache; {files} files in context)"
    FIGURES["image size"] = f"{info['Size'] / 1e6:.0f} MB ({BASE_IMAGE} base)"
    return Image(IMAGE, ctx / CA_NAME if ca is not None else None, info)
