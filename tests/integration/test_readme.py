"""The README's two commands: the first trains on the bundled sample and serves it (and the curl call shown next
to it works against that server); the second runs the tests."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tests.conftest import free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"


def _blocks() -> list[str]:
    section = README.read_text().split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_the_two_commands_are_at_the_top():
    setup, curl, tests = _blocks()
    assert setup.startswith("pip install . &&")
    assert curl.startswith("curl ")
    assert tests == "pip install torch==2.13.0 && pip install -e '.[dev]' && python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    for step in tests.split(" && "):  # CI runs the README's test command, step by step
        assert step.replace("pip install", "python -m pip install --quiet").replace("python -m python", "python") in ci
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert any(d.replace(" ", "").startswith("xylen[onnx,torch]") for d in dev)  # so no ONNX or torch test skips


@pytest.mark.timeout(900)
def test_first_command_trains_serves_and_answers_the_curl_call(tmp_path):
    """Run the xylen step of the first command (pip install is what this environment already did)."""
    setup, curl, _ = _blocks()
    (step,) = [shlex.split(s) for s in setup.split("&&")[1:]]
    assert step[:2] == ["xylen", "serve"]
    port = free_port()
    env = {**os.environ, "XYLEN_HOME": str(tmp_path), "XYLEN_PORT": str(port)}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xylen", *step[1:]], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        wait_for(
            lambda: proc.poll() is not None or httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200,
            timeout=800,  # catches a hang only: training takes ~10 s idle and minutes on a busy machine
            what="training on the bundled sample, then a ready server",
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        assert "what it knows (95% day-block bootstrap intervals)" in log.read_text()
        argv = [a.replace("localhost:8000", f"127.0.0.1:{port}") for a in shlex.split(curl)]
        answer = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
        body = json.loads(answer.stdout)
        assert body["prediction"] in (0, 1)
        assert 0.5 <= body["confidence"] <= 1.0
        assert body["model_version"] == "v0001"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
