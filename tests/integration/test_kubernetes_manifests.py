"""packaging/kubernetes/: every manifest validates against the Kubernetes schemas (kubernetes-validate, offline, for
a pinned version, strict: an unknown field fails), and what the manifests say agrees with xylen: every env var and
models.env key is a real setting, the probe paths answer, the command lines parse, the image and its user are the
Dockerfile's, and the Secret's placeholder cannot be deployed (serve refuses to start)."""

from __future__ import annotations

import copy
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]
MANIFESTS = ROOT / "packaging" / "kubernetes"
K8S_VERSION = "1.31.0"  # the schemas the manifests are checked against (kubernetes-validate bundles them)
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def resources() -> list[dict[str, Any]]:
    out = []
    for f in sorted(MANIFESTS.glob("*.yaml")):
        out += [r for r in yaml.safe_load_all(f.read_text()) if r]
    return out


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [r for r in resources() if r["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    [r] = [r for r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return r


def pod_spec(r: dict[str, Any]) -> dict[str, Any]:
    if r["kind"] == "CronJob":
        return r["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return r["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def workloads() -> list[dict[str, Any]]:
    return [r for r in resources() if r["kind"] in ("Deployment", "CronJob")]


def containers() -> list[dict[str, Any]]:
    return [c for r in workloads() for c in pod_spec(r)["containers"]]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test: the schemas must come from the package."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_the_expected_resources_are_there() -> None:
    kinds = sorted((r["kind"], r["metadata"]["name"]) for r in resources())
    assert kinds == [("ConfigMap", "xylen-models-env"), ("CronJob", "xylen-retrain"), ("Deployment", "xylen-collect"),
                     ("Deployment", "xylen-serve"), ("PersistentVolumeClaim", "xylen-home"),
                     ("Secret", "xylen-api-keys"), ("Secret", "xylen-ui-session"), ("Service", "xylen"),
                     ("Service", "xylen-ui")]  # fmt: skip


def test_every_manifest_validates_offline_against_the_pinned_schemas(no_network: None) -> None:
    from kubernetes_validate import utils

    for r in resources():
        # a kind without a bundled schema raises SchemaNotFoundError: a failure here, not the CLI's warning
        assert utils.validate(r, K8S_VERSION, strict=True) == "1.31", r["metadata"]["name"]


def test_the_validator_rejects_a_broken_manifest(no_network: None) -> None:
    from kubernetes_validate import utils

    serve = one("Deployment", "xylen-serve")
    typo = copy.deepcopy(serve)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = typo["spec"]["template"]["spec"][
        "containers"][0].pop("readinessProbe")  # fmt: skip
    bad_type = copy.deepcopy(serve)
    bad_type["spec"]["replicas"] = "two"
    for broken in (typo, bad_type):
        with pytest.raises(utils.ValidationError):
            utils.validate(broken, K8S_VERSION, strict=True)


def test_serve_two_replicas_probes_and_service() -> None:
    serve = one("Deployment", "xylen-serve")
    assert serve["spec"]["replicas"] == 2
    [c] = pod_spec(serve)["containers"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 8000}]
    assert c["args"][c["args"].index("--port") + 1] == "8000" and c["args"][c["args"].index("--host") + 1] == "0.0.0.0"
    svc = one("Service", "xylen")
    assert svc["spec"]["selector"] == serve["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    # the grace period outlasts the drain plus uvicorn's 30 s for requests in flight
    drain = float(c["args"][c["args"].index("--drain-seconds") + 1])
    assert pod_spec(serve)["terminationGracePeriodSeconds"] > drain + 30
    assert (drain, pod_spec(serve)["terminationGracePeriodSeconds"]) == (10, 45)  # as the README says
    assert svc["spec"]["ports"][0]["port"] == 8000
    # the dashboard's Service: the same pods, each client held to one (optional with the shared session secret)
    ui = one("Service", "xylen-ui")
    assert ui["spec"]["selector"] == svc["spec"]["selector"] and ui["spec"]["ports"] == svc["spec"]["ports"]
    assert ui["spec"]["sessionAffinity"] == "ClientIP" and "sessionAffinity" not in svc["spec"]


def test_the_probe_paths_answer_in_the_app(served_client: Any, tmp_path: Path) -> None:
    """/health/ready and /health/live are 200 on a server with a live model, without a key; with no model yet,
    readiness is 503 (the pods stay out of the Service until a model is trained) and liveness 200."""
    for probe in ("/health/ready", "/health/live"):
        assert served_client.get(probe).status_code == 200, probe
    import warnings

    from xylen.core.settings import load_settings
    from xylen.serve.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from tests.conftest import wait_for

    with TestClient(create_app(load_settings({"home": tmp_path}, environ={})), base_url="http://127.0.0.1") as c:
        wait_for(lambda: c.get("/health/live").status_code == 200, what="liveness")
        assert c.get("/health/ready").status_code == 503
        from tests.builders import build_bundle
        from xylen.core.registry import Registry

        build_bundle(Registry(tmp_path / "models"), "btcusdt-5m", rounds=5, rows=1500)  # the first model, promoted
        wait_for(lambda: c.get("/health/ready").status_code == 200, what="the first model, without a restart")


def test_collector_is_one_recreated_pod_and_retrain_a_forbid_cronjob() -> None:
    collect = one("Deployment", "xylen-collect")
    assert collect["spec"]["replicas"] == 1 and collect["spec"]["strategy"] == {"type": "Recreate"}
    retrain = one("CronJob", "xylen-retrain")
    assert retrain["spec"]["concurrencyPolicy"] == "Forbid"
    assert retrain["spec"]["schedule"] == "*/30 * * * *"
    assert pod_spec(retrain)["containers"][0]["args"] == ["retrain", "--all"]
    assert [c["args"][0] for c in containers()] == ["collect", "retrain", "serve"]  # files in name order


def test_every_pod_runs_the_dockerfiles_image_as_its_user_on_the_shared_volume() -> None:
    uid = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE, flags=re.M)
    home = re.search(r"XYLEN_HOME=(\S+)", DOCKERFILE)
    assert uid and home
    image = re.search(r"image: \$\{XYLEN_IMAGE:-(\S+)\}", (ROOT / "docker-compose.yml").read_text())
    assert image and image.group(1) == "xylen:latest"
    pvc = one("PersistentVolumeClaim", "xylen-home")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for r in workloads():
        spec = pod_spec(r)
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == int(uid.group(1)), r["metadata"]["name"]
        assert sc["runAsGroup"] == sc["fsGroup"] == int(uid.group(2))
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
                  if "persistentVolumeClaim" in v}  # fmt: skip
        configs = {v["name"]: v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v}
        for c in spec["containers"]:
            assert c["image"] == image.group(1) and c["imagePullPolicy"] == "IfNotPresent"
            csc = c["securityContext"]
            assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
            assert csc["capabilities"] == {"drop": ["ALL"]}
            assert set(c["resources"]["limits"]) == {"cpu", "memory"} and c["resources"]["requests"]
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert claims[mounts[home.group(1)]["name"]] == "xylen-home"
            env_file = mounts[f"{home.group(1)}/models.env"]
            assert configs[env_file["name"]] == "xylen-models-env" and env_file["subPath"] == "models.env"
            assert env_file["readOnly"] is True
            assert "/tmp" in mounts  # the one writable place outside the volume (a read-only root)


def test_every_env_var_and_models_env_key_is_a_setting(tmp_path: Path) -> None:
    from xylen.core.settings import Settings, _env_names, load_settings, unknown_env_file_keys

    known = {n for f in Settings.model_fields for n in _env_names(f)}
    names = [e["name"] for c in containers() for e in c.get("env", [])]
    assert names and set(names) <= known, set(names) - known
    (tmp_path / "models.env").write_text(one("ConfigMap", "xylen-models-env")["data"]["models.env"])
    settings = load_settings({"home": tmp_path}, environ={})  # every value valid, else ConfigError
    assert unknown_env_file_keys(settings) == []
    assert settings.log_format == "json"  # and it is read
    # the commented-out object-storage lines are valid settings too, once uncommented
    text = one("ConfigMap", "xylen-models-env")["data"]["models.env"]
    opened = [ln.strip()[2:] for ln in text.splitlines() if ln.strip().startswith("# XYLEN_")]
    assert [ln.split("=")[0] for ln in opened] == ["XYLEN_DATA_URL", "XYLEN_MODELS_URL", "XYLEN_S3_ENDPOINT_URL"]
    (tmp_path / "models.env").write_text(text + "\n".join(opened) + "\n")
    settings = load_settings({"home": tmp_path}, environ={})
    assert unknown_env_file_keys(settings) == [] and str(settings.data_location).startswith("s3://my-bucket/")


def test_every_command_line_is_a_valid_xylen_command() -> None:
    from typer.testing import CliRunner

    from xylen.cli import app

    runner = CliRunner()
    lines = [c["args"] for c in containers()] + [["train"]]  # README: the first model, trained in the collect pod
    for args in lines:
        # unknown commands or options fail the parse; --help then exits 0 without running anything
        got = runner.invoke(app, [*args, "--help"])
        assert got.exit_code == 0, (args, got.output)
    assert runner.invoke(app, ["serve", "--no-such-option", "--help"]).exit_code != 0  # the check can fail


def test_the_secret_placeholder_is_referenced_and_cannot_be_deployed(tmp_path: Path) -> None:
    secret = one("Secret", "xylen-api-keys")
    [(key, placeholder)] = secret["stringData"].items()
    assert "REPLACE" in placeholder
    serve = one("Deployment", "xylen-serve")
    spec = pod_spec(serve)
    [vol] = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "xylen-api-keys"]
    [c] = spec["containers"]
    [mount] = [m for m in c["volumeMounts"] if m["name"] == vol["name"]]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["XYLEN_API_KEYS_FILE"] == f"{mount['mountPath']}/{key}"
    # as shipped, serve on 0.0.0.0 with this key file refuses to start: exit 2 naming the line and the fix
    keys = tmp_path / key
    keys.write_text(placeholder)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("XYLEN_")}
    environ |= {"XYLEN_HOME": str(tmp_path / "home"), "XYLEN_API_KEYS_FILE": str(keys)}
    done = subprocess.run([sys.executable, "-m", "xylen", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                          env=environ, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "line 1 is not a sha256 hex digest" in done.stderr and "sha256sum" in done.stderr


def test_the_serve_pods_share_the_ui_session_secret_whose_placeholder_cannot_be_deployed(tmp_path: Path) -> None:
    """Every serve pod mounts Secret xylen-ui-session where XYLEN_UI_SESSION_SECRET_FILE points, with a mode serve
    accepts (group read: fsGroup); as shipped, its placeholder makes serve exit 2."""
    [(key, placeholder)] = one("Secret", "xylen-ui-session")["stringData"].items()
    assert "REPLACE" in placeholder
    spec = pod_spec(one("Deployment", "xylen-serve"))
    [vol] = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "xylen-ui-session"]
    assert vol["secret"]["defaultMode"] & 0o027 == 0 and spec["securityContext"]["fsGroup"] == 10001
    [c] = spec["containers"]
    [mount] = [m for m in c["volumeMounts"] if m["name"] == vol["name"]]
    assert mount["readOnly"] is True
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["XYLEN_UI_SESSION_SECRET_FILE"] == f"{mount['mountPath']}/{key}"
    secret = tmp_path / key
    secret.write_text(placeholder)
    secret.chmod(vol["secret"]["defaultMode"])
    environ = {k: v for k, v in os.environ.items() if not k.startswith("XYLEN_")}
    environ |= {"XYLEN_HOME": str(tmp_path / "home"), "XYLEN_API_KEYS": "a-key", "XYLEN_UI_SESSION_SECRET_FILE":
                str(secret)}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "xylen", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                          env=environ, capture_output=True, text=True, timeout=120)  # fmt: skip
    out = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is not one line of hex characters" in out and "openssl rand -hex 32" in out, out


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Several replicas (nginx, Kubernetes)")
    return text[start : text.index("\n## ", start + 1)]


def test_the_readme_commands_match_the_manifests(tmp_path: Path) -> None:
    section = readme_section()
    kube = section[section.index("**Kubernetes.**") :]
    block = kube[kube.index("```bash") : kube.index("```", kube.index("```bash") + 3)]
    for f in re.findall(r"-f (packaging/kubernetes/\S+\.yaml)", block):
        assert (ROOT / f).is_file(), f
    # the Secret created by hand has the key the manifests mount (and XYLEN_API_KEYS_FILE names)
    [key] = one("Secret", "xylen-api-keys")["stringData"]
    digest_cmd = re.search(rf'--from-literal={re.escape(key)}="\$\((.*)\)"', block)
    assert digest_cmd, block
    # and its digest pipeline gives what the server accepts for that key
    from xylen.serve.auth import KeyRing, read_key_file

    out = subprocess.run(["bash", "-c", digest_cmd.group(1)], env={**os.environ, "KEY": "a-key"},
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    (tmp_path / key).write_text(out)
    ring = KeyRing(read_key_file(tmp_path / key))
    assert ring.check(b"a-key") and not ring.check(b"another-key")
    # the dashboard's session Secret created by hand: its key is the mounted one, its value a secret serve accepts
    from xylen.serve.auth import read_session_secret

    [ui_key] = one("Secret", "xylen-ui-session")["stringData"]
    secret_cmd = re.search(rf'--from-literal={re.escape(ui_key)}="\$\((.*?)\)"', block)
    assert secret_cmd, block
    made = [subprocess.run(["bash", "-c", secret_cmd.group(1)], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]  # fmt: skip
    (tmp_path / ui_key).write_text(made[0])
    (tmp_path / ui_key).chmod(0o400)
    assert len(read_session_secret(tmp_path / ui_key)) == 32 and made[0] != made[1]  # random each time
    # every file in the table exists, and every manifest is in the table
    assert sorted(re.findall(r"^\| `(\w+\.yaml)` \|", kube, flags=re.M)) == sorted(
        f.name for f in MANIFESTS.glob("*.yaml"))  # fmt: skip
