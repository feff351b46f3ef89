"""`xylen serve` as a process: --train-if-missing trains in a child and serves lean; the exit codes the README and
`xylen --help` document (SIGTERM: a clean stop, 0; Ctrl-C: 130)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for
from xylen.core.errors import EXIT_CODES

pytestmark = [pytest.mark.integration]
ROOT = Path(__file__).parents[2]
LEAN = ("polars", "matplotlib", "pandas", "sklearn")


@contextmanager
def serving(home: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    log = home.parent / f"serve-{port}.log"
    full_env = {**os.environ, "XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(port), *args], env=full_env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or httpx.get(f"{url}/health/ready").status_code == 200,
                 timeout=timeout, what="a ready server")
        assert proc.poll() is None, log.read_text()[-3000:]
        yield proc, url, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def loaded_libraries(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {lib for lib in LEAN if f"/{lib}/" in maps}


@pytest.mark.slow
def test_train_if_missing_trains_in_a_child_and_the_server_stays_lean(tmp_path: Path) -> None:
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs Linux /proc")
    home = tmp_path / "home"
    env = {"XYLEN_FOLDS": "2", "XYLEN_PROFILE": "8gb"}
    with serving(home, "--train-if-missing", env=env, timeout=240) as (proc, url, log):
        text = log.read_text()
        assert "training one first" in text and "what it knows (95% day-block bootstrap intervals)" in text
        assert "already imported before the server started" not in text, text[-2000:]
        assert loaded_libraries(proc.pid) == set()  # polars, matplotlib: the training child's, gone with it
        assert httpx.get(f"{url}/health/ready").json()["models"] == {"btcusdt-5m": "v0001"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


@pytest.mark.slow
def test_sigterm_while_training_first_stops_the_child_and_exits_0(tmp_path: Path) -> None:
    """A service stopped while --train-if-missing trains (`docker compose stop`, `systemctl stop`) asks the training
    child to stop (its Ctrl-C path, which cleans up), waits for it and exits 0 without serving. docker-init and
    systemd's KillMode=mixed signal the server only: it used to die by the signal (exit 143 in the compose stack;
    as PID 1 without an init, the image's default command, SIGTERM was ignored until SIGKILL) and leave the child
    training on its own."""
    import psutil

    from xylen.core.registry import Registry

    home = tmp_path / "home"
    log = tmp_path / "serve.log"
    env = {**os.environ, "XYLEN_HOME": str(home), "OMP_NUM_THREADS": "1", "XYLEN_PROFILE": "8gb"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xylen", "serve", "--port", str(free_port()),
                                 "--train-if-missing"], env=env, stdout=out, stderr=subprocess.STDOUT)
    children: list[psutil.Process] = []
    try:
        children = wait_for(lambda: psutil.Process(proc.pid).children(), timeout=60, what="the training child")
        # the child's own output (relayed) says training has begun: its Python is up, with its Ctrl-C handling
        wait_for(lambda: "profile 8gb" in log.read_text(), timeout=120, what=f"training to start\n{log.read_text()}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert "stopped (SIGTERM) while training" in text and "Traceback" not in text, text[-3000:]
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), "child left running"
        assert Registry(home / "models").current("btcusdt-5m") is None  # cut short: nothing went live
    finally:
        for c in [*children, psutil.Process(proc.pid)] if proc.poll() is None else children:
            if c.is_running():
                c.kill()
        proc.wait()


def test_a_failed_training_stops_serve_with_the_trainers_exit_code(tmp_path: Path) -> None:
    """No ETHUSDT 1h candles anywhere: the training child exits 3 (bad data), and no server starts."""
    env = {**os.environ, "XYLEN_HOME": str(tmp_path / "home"), "XYLEN_SYMBOL": "ETHUSDT", "XYLEN_INTERVAL": "1h"}
    proc = subprocess.run([sys.executable, "-m", "xylen", "serve", "--train-if-missing", "--port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "No ETHUSDT 1h candles" in proc.stderr and "not starting the server" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_refused_bind_fails_before_training(tmp_path: Path) -> None:
    """--host 0.0.0.0 without API keys is refused (exit 2) before --train-if-missing trains anything (the Docker
    image's default command without a key used to train for half a minute, then refuse)."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XYLEN_")}
    env["XYLEN_HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-m", "xylen", "serve", "--host", "0.0.0.0", "--train-if-missing",
                           "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "0.0.0.0" in proc.stderr and "training one first" not in proc.stderr
    assert not (home / "models").exists() or not any((home / "models").iterdir())


def test_sigterm_is_a_clean_stop_and_ctrl_c_is_130(home_copy: Path) -> None:
    for sig, code in ((signal.SIGTERM, 0), (signal.SIGINT, 130)):
        with serving(home_copy) as (proc, _url, log):
            proc.send_signal(sig)
            assert proc.wait(60) == code, (sig, log.read_text()[-2000:])


def test_the_exit_code_docs_say_what_serve_does() -> None:
    from typer.testing import CliRunner

    from xylen.cli import app

    help_text = " ".join(CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"}).output.split())
    readme = (ROOT / "README.md").read_text()
    for code, text in EXIT_CODES.items():
        assert f"{code}: {' '.join(text.split())}" in help_text
        assert f"\n| {code} |" in readme, code
    assert "SIGTERM is the normal stop of `xylen serve`, which drains requests in flight" in EXIT_CODES[130]
    assert "`xylen serve` stopped by SIGTERM (systemd, Docker, Kubernetes) drains and exits 0" in readme
    assert (
        "| 130 | interrupted by Ctrl-C, or by SIGTERM during `xylen collect --once`/`--until` or a one-off "
        "`xylen retrain`;" in readme
    )
