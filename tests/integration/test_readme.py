"""The README's two commands: the first runs the main job on the bundled sample, the second runs the tests."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
README = Path(__file__).parents[2] / "README.md"


def _two_commands() -> list[str]:
    text = README.read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)][:2]


def test_the_two_commands_are_at_the_top():
    setup, tests = _two_commands()
    assert setup.startswith("pip install . &&")
    assert tests == "pip install -e '.[dev]' && python -m pytest"
    assert "python -m pytest" in (Path(__file__).parents[2] / ".ci" / "run").read_text()


def test_first_command_runs_the_main_job_on_the_bundled_sample(tmp_path):
    """Run the xylen steps of the first command (the install step is what this environment already did)."""
    setup, _ = _two_commands()
    steps = [shlex.split(s.strip()) for s in setup.split("&&")[1:]]
    assert steps and steps[0][0] == "xylen"
    env = {**os.environ, "XYLEN_HOME": str(tmp_path)}
    for argv in steps:
        if argv[1] == "serve":  # long-running; the serve tests start it as a subprocess
            help_out = subprocess.run(
                [sys.executable, "-m", "xylen", *argv[1:], "--help"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert help_out.returncode == 0, help_out.stderr
            continue
        out = subprocess.run(
            [sys.executable, "-m", "xylen", *argv[1:], "--json"], env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["source"].startswith("bundled sample")
        assert result["rows_used"] > 100_000
        assert result["promoted"] is True
        assert (tmp_path / "models" / "btcusdt-5m" / "CURRENT.json").exists()
