"""The Docker image and docker-compose.yml, proven by running them (issue #9).

Builds the image from this checkout, starts the three services with Debian's docker-compose 1.29, then checks:
serve becomes ready and answers /predict from the host's 127.0.0.1; collect and retrain start and stay up (no
restart); the limits from .env reach the containers; an API key written to models.env on the volume (the README's
way) takes effect after `docker-compose restart`; `docker-compose stop` ends each service cleanly (exit 0, no
SIGKILL); the image's default command serves on that volume. Run through .ci/docker-e2e.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import binance_rows, free_port, wait_for
from tests.docker.conftest import FIGURES, REPO, Image, docker, inspect, log_dir, run

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]
HOME = "/var/lib/xylen"
SERVICES = ("serve", "collect", "retrain")
# The README's compose file, and the test's override: collect and retrain get no network (no test may reach the
# internet), collect an exchange URL on its own loopback where nothing listens.
COMPOSE_FILES = ("-f", str(REPO / "docker-compose.yml"), "-f", str(REPO / "tests" / "docker" / "loopback-exchange.yml"))
# Clean-stop exit codes (README "Exit codes"): SIGTERM is the normal stop of serve (it drains), of the retrain loop
# and of collect following live: all exit 0. docker-init passes the child's code through.
CLEAN_EXIT = {"serve": 0, "collect": 0, "retrain": 0}
KEY = "e2e-key-not-secret"


def _env_file() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (REPO / ".env").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _bytes(size: str) -> int:
    units = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
    return int(float(size[:-1]) * units[size[-1].lower()]) if size[-1].lower() in units else int(size)


def test_image_is_slim_non_root_and_without_the_build_ca(image: Image) -> None:
    cfg = image.info["Config"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["XYLEN_HOME"] == HOME
    assert not any(k.startswith("PIP_") for k in env), f"build settings leaked into the image: {env}"
    assert HOME in (cfg.get("Volumes") or {})
    assert "8000/tcp" in cfg["ExposedPorts"]
    assert "/health/ready" in " ".join(cfg["Healthcheck"]["Test"])
    assert cfg["User"] and not cfg["User"].startswith(("0", "root"))

    probe = docker("run", "--rm", "--entrypoint", "sh", image.tag, "-c",
                   'id -u; id -un; for c in gcc cc c++ g++ clang tcc; do command -v "$c"; done; true').stdout.split()
    assert probe[:2] == ["10001", "xylen"]
    assert probe[2:] == [], f"compilers in the final image: {probe[2:]}"

    # the installed package imports (libgomp1 present for LightGBM) and runs as that user
    assert "xylen [OPTIONS] COMMAND" in docker("run", "--rm", image.tag, "--help").stdout
    docker("run", "--rm", "--entrypoint", "python3", image.tag, "-c", "import lightgbm, xylen.serve.server")

    if image.ca_file is None:
        pytest.skip("no host CA bundle was put in the build context, so there is none to look for")
    # No file anywhere in the image has the CA bundle's bytes (found by its exact size, compared by sha256).
    size = image.ca_file.stat().st_size
    digest = hashlib.sha256(image.ca_file.read_bytes()).hexdigest()
    found = docker("run", "--rm", "--user", "0", "--entrypoint", "sh", image.tag, "-c",
                   f"find / -xdev -type f \\( -name 'build-ca*' -o -size {size}c \\) -exec sha256sum {{}} + "
                   "2>/dev/null; true").stdout
    assert digest not in found and "build-ca" not in found, f"the build CA is in the final image:\n{found}"


def test_install_service_dry_run_inside_the_image(image: Image) -> None:
    if docker("run", "--rm", image.tag, "install-service", "--help", check=False).returncode != 0:
        pytest.skip("`xylen install-service` is not in this checkout yet (helper 'service', issue #9)")
    out = docker("run", "--rm", "--entrypoint", "sh", image.tag, "-c",
                 "xylen install-service all --platform systemd --dry-run && "
                 # a dry run writes nothing: no unit, not even models.env
                 f"test ! -e {HOME}/models.env && test ! -e /home/xylen/.config/systemd && echo WROTE-NOTHING").stdout
    for unit in ("xylen-serve.service", "xylen-collect.service", "xylen-retrain.service"):
        assert unit in out
    assert "/opt/venv/bin/xylen" in out and HOME in out
    assert out.rstrip().endswith("WROTE-NOTHING")


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    url: str

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        return run(["docker-compose", "-p", self.project, *COMPOSE_FILES, *args],
                   env=self.env, cwd=REPO, timeout=timeout, check=check).stdout

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-q", service).split()
        assert len(ids) == 1, f"expected one {service} container, got {ids}"
        return ids[0]

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "80", timeout=120, check=False)


@pytest.fixture
def stack(image: Image) -> Iterator[Stack]:
    project = f"xylene2e{os.getpid()}{secrets.token_hex(3)}"
    port = free_port()
    env = {**os.environ, "DOCKER_BUILDKIT": "0", "XYLEN_IMAGE": image.tag, "SERVE_PORT": str(port),
           # one limit from the environment (wins over .env), the others from .env
           "COLLECT_MEM_LIMIT": "768m"}
    s = Stack(project, env, f"http://127.0.0.1:{port}")
    try:
        yield s
    finally:
        (log_dir() / f"{project}.log").write_text(s.logs())
        # containers, network and the volume; the image stays for the next run's cache
        s.compose("down", "-v", "--remove-orphans", "--timeout", "90", timeout=600, check=False)
        label = f"label=com.docker.compose.project={project}"
        leftovers = docker("ps", "-aq", "--filter", label).stdout.split()
        leftovers += docker("volume", "ls", "-q", "--filter", label).stdout.split()
        assert leftovers == [], f"docker-compose down left {leftovers}"


def test_compose_serves_collects_retrains_and_stops_cleanly(stack: Stack) -> None:
    started = time.monotonic()
    # `up` returns once serve is healthy (collect and retrain wait for it): its first start trains the sample
    up = run(["docker-compose", "-p", stack.project, *COMPOSE_FILES, "up", "-d", "--no-build"],
             env=stack.env, cwd=REPO, timeout=1200, check=False)
    assert up.returncode == 0, f"docker-compose up failed:\n{up.stderr[-3000:]}\n{stack.logs()}"
    FIGURES["compose up (first-start training included)"] = f"{time.monotonic() - started:.0f} s"

    client = httpx.Client(base_url=stack.url, timeout=30, trust_env=False)
    wait_for(lambda: client.get("/health/ready").status_code == 200, timeout=600, interval=1,
             what=f"serve's /health/ready on {stack.url}\n{stack.logs()}")

    # /predict from the host on candles of the bundled sample (the model was trained on it at first start)
    from tests.builders import sample_arrays, window_matrix

    candles = sample_arrays(400)
    body = {"symbol": "BTCUSDT", "timeframe": "5m",
            "candles": binance_rows(window_matrix(candles, len(candles) - 1, 100))}
    got = client.post("/predict", json=body)
    assert got.status_code == 200, got.text
    answer = got.json()
    assert 0.0 <= answer["probability"] <= 1.0 and answer["prediction"] in (0, 1), answer
    assert answer["model"] == "btcusdt-5m" and answer["model_version"].startswith("v"), answer
    # without API keys it answers loopback Host names only (DNS rebinding), even though it binds 0.0.0.0 inside
    assert client.post("/predict", json=body, headers={"Host": "rebind.example"}).status_code == 421

    ids = {svc: stack.container(svc) for svc in SERVICES}
    limits = _env_file()
    serve_cfg = inspect(ids["serve"])["HostConfig"]
    assert serve_cfg["Memory"] == _bytes(limits["SERVE_MEM_LIMIT"])
    assert serve_cfg["NanoCpus"] == int(float(limits["SERVE_CPUS"]) * 1e9)
    assert {b["HostIp"] for b in serve_cfg["PortBindings"]["8000/tcp"]} == {"127.0.0.1"}
    assert inspect(ids["collect"])["HostConfig"]["Memory"] == 768 * 2**20
    assert inspect(ids["retrain"])["HostConfig"]["Memory"] == _bytes(limits["RETRAIN_MEM_LIMIT"])
    # the first-start training followed the container's limits (cgroup), not the host's memory and cores
    serve_log = docker("logs", ids["serve"], check=False)
    assert "(auto; within the cgroup limits 1 GB, 1 CPUs)" in serve_log.stdout + serve_log.stderr, stack.logs()
    for svc in SERVICES:
        host = inspect(ids[svc])["HostConfig"]
        assert host["Init"] is True and host["RestartPolicy"]["Name"] == "unless-stopped", (svc, host)

    # The retrain loop ran (one JSON line per run in logs/retrain.jsonl, shared volume) ...
    wait_for(lambda: docker("exec", ids["retrain"], "cat", f"{HOME}/logs/retrain.jsonl", check=False).stdout.strip(),
             timeout=600, interval=2, what=f"a retrain run's log line\n{stack.logs()}")
    # ... collect cannot reach its exchange (the override): it says so with its wait and keeps going ...
    wait_for(lambda: "Retrying in" in docker("logs", ids["collect"], check=False).stderr, timeout=300, interval=2,
             what=f"collect's outage warning\n{stack.logs()}")
    assert inspect(ids["collect"])["HostConfig"]["NetworkMode"] == "none"
    # ... and collect and retrain stay up: sampled for 20 s, never restarting, never restarted.
    window_end = time.monotonic() + 20
    while True:
        for svc in SERVICES:
            state = inspect(ids[svc])
            assert state["State"]["Running"] and not state["State"]["Restarting"], (svc, state["State"], stack.logs())
            assert state["RestartCount"] == 0, (svc, stack.logs())
        if time.monotonic() >= window_end:
            break
        time.sleep(1)
    assert inspect(ids["serve"])["State"]["Health"]["Status"] == "healthy"

    # The README's third command sends examples/predict-request.json (no key needed yet: loopback only).
    example = json.loads((REPO / "examples" / "predict-request.json").read_text())
    assert client.post("/predict", json=example).status_code == 200

    # API keys the README's way: appended to models.env on the volume by a one-off container, then a restart.
    keys = run(["docker-compose", "-p", stack.project, *COMPOSE_FILES, "run", "--rm",
                "--no-deps", "-T", "--entrypoint", "sh", "serve", "-c",
                'umask 077 && cat >> "$XYLEN_HOME/models.env" && stat -c "%a %u" "$XYLEN_HOME/models.env"'],
               input=f"XYLEN_API_KEYS={KEY}\n", env=stack.env, cwd=REPO, timeout=300)
    assert keys.stdout.split()[-2:] == ["600", "10001"], keys.stdout
    stack.compose("restart", timeout=900)
    wait_for(lambda: client.get("/health/ready").status_code == 200, timeout=600, interval=1,
             what=f"serve ready again\n{stack.logs()}")
    assert client.post("/predict", json=body).status_code == 401
    keyed = client.post("/predict", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert keyed.status_code == 200 and keyed.json()["model_version"] == answer["model_version"], keyed.text
    for svc in SERVICES:
        assert inspect(ids[svc])["State"]["Running"], (svc, stack.logs())

    # A clean stop: SIGTERM through docker-init, within each service's stop_grace_period (no SIGKILL: 137).
    stopping = time.monotonic()
    stack.compose("stop", timeout=600)
    FIGURES["compose stop"] = f"{time.monotonic() - stopping:.0f} s"
    _assert_clean_exits(stack, ids)

    # The image's default command on the same volume: serve on 0.0.0.0, allowed because models.env holds a key.
    volume = next(m["Name"] for m in inspect(ids["serve"])["Mounts"] if m["Destination"] == HOME)
    # README: compose names the volume <project>_xylen-home (a plain `-v xylen-home:...` is another volume), and any
    # other command reaches the stack's volume through `compose run`
    assert volume == f"{stack.project}_xylen-home", volume
    listed = stack.compose("run", "--rm", "--no-deps", "-T", "serve", "models", "list", timeout=300)
    assert "btcusdt-5m" in listed and answer["model_version"] in listed, listed
    port = free_port()
    plain = docker("run", "-d", "-v", f"{volume}:{HOME}", "-p", f"127.0.0.1:{port}:8000", image_tag(stack)).stdout
    cid = plain.strip()
    try:
        other = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False)
        wait_for(lambda: other.get("/health/ready").status_code == 200, timeout=600, interval=1,
                 what=f"the default command to serve\n{docker('logs', cid, check=False).stderr[-3000:]}")
        assert other.post("/predict", json=body, headers={"X-API-Key": KEY}).status_code == 200
        wait_for(lambda: inspect(cid)["State"]["Health"]["Status"] == "healthy", timeout=120, interval=1,
                 what="the image's HEALTHCHECK to pass")
        docker("stop", "-t", "60", cid, timeout=120)
        assert inspect(cid)["State"]["ExitCode"] == 0
    finally:
        docker("rm", "-f", cid, check=False)
    FIGURES["compose e2e"] = f"{time.monotonic() - started:.0f} s"


def image_tag(stack: Stack) -> str:
    return stack.env["XYLEN_IMAGE"]


def _assert_clean_exits(stack: Stack, ids: dict[str, str]) -> None:
    states = {svc: inspect(ids[svc])["State"] for svc in SERVICES}
    assert {svc: s["ExitCode"] for svc, s in states.items()} == CLEAN_EXIT, (states, stack.logs())
    assert not any(s["OOMKilled"] for s in states.values()), states

