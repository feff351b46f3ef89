"""POST /retrain and GET /retrain/{id}, in process, against a stand-in child (tests/fakes/retrain_child.py) that
adopts the lock the server hands it: the alpha's answer shape, exit codes mapped to 4xx/503 (never 500), one job at
a time (409 naming the running job, also when another process holds the lock), ?wait=false with polling, job
records on disk (any app instance answers; lost; the last 100 kept), hostile ids, keys and the CSRF rule, a
MODEL_PATH server, a kill -9'd child releasing the lock, and the shutdown abort."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import wait_for
from xylen.core.runlock import RunLock
from xylen.core.settings import load_settings
from xylen.serve.app import create_app
from xylen.serve.retrain_jobs import KEEP_RECORDS, http_answer, retrain_command

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.unit
FAKE = Path(__file__).resolve().parents[1] / "fakes" / "retrain_child.py"
JSON = {"content-type": "application/json"}
KEY = "retrain-test-key-not-secret"
MODEL = "btcusdt-5m"


def fake(*mode: str) -> Any:
    def command(home: Path, names: list[str] | None, fd: int) -> list[str]:
        return [sys.executable, str(FAKE), str(home), str(fd), *mode]

    return command


@pytest.fixture
def make(home_copy: Path) -> Iterator[Any]:
    """make(*mode, **settings) -> a started TestClient whose POST /retrain runs the fake child in ``mode``."""
    clients: list[Any] = []

    def build(*mode: str, command: Any = None, **overrides: Any) -> Any:
        settings = load_settings({"home": home_copy, **overrides}, environ={})
        app = create_app(settings, retrain_command=command or fake(*mode))
        c = TestClient(app, base_url="http://localhost")
        c.__enter__()
        clients.append(c)
        return c

    yield build
    for c in reversed(clients):
        c.__exit__(None, None, None)


def jobs_dir(home: Path) -> Path:
    return home / "retrain" / "jobs"


def poll_state(c: Any, job_id: str, *states: str) -> dict[str, Any]:
    return wait_for(lambda: (r := c.get(f"/retrain/{job_id}").json()).get("state") in states and r,
                    timeout=60, what=f"job {job_id} to reach {states}")


# --- the alpha's shape, and every exit code mapped -------------------------------------------------------
def test_post_waits_and_answers_in_the_alphas_shape(make: Any, home_copy: Path) -> None:
    c = make("ok")
    r = c.post("/retrain", headers=JSON)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success" and body["samples_used"] == 98000
    assert body["message"] == "btcusdt-5m: promoted v0002"
    assert body["results"][0]["outcome"] == "promoted" and len(body["job_id"]) == 32
    job = c.get(f"/retrain/{body['job_id']}").json()
    assert job["state"] == "succeeded" and job["exit_code"] == 0 and job["result"]["samples_used"] == 98000
    assert job["started_at"] and job["finished_at"] and job["models"] == [MODEL]
    assert RunLock(home_copy).holder() is None  # released with the child's exit


@pytest.mark.parametrize(("code", "status"), [(2, 422), (3, 422), (4, 409), (5, 422), (1, 503), (12, 409),
                                              (6, 503)])
def test_child_exit_codes_map_to_4xx_or_503_with_its_message(make: Any, code: int, status: int) -> None:
    c = make("exit", str(code))
    r = c.post("/retrain", headers=JSON)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == "error" and body["exit_code"] == code
    assert f"planted failure {code}" in body["error"] and f"hint: fix planted thing {code}" in body["error"]
    assert body["message"] == body["error"] and "samples_used" in body and body["results"]
    assert c.get(f"/retrain/{body['job_id']}").json()["state"] == "failed"


def test_a_child_without_json_is_503_with_its_error_line_and_no_traceback(make: Any) -> None:
    c = make("crash")
    r = c.post("/retrain", headers=JSON)
    assert r.status_code == 503
    err = r.json()["error"]
    assert "the store partition 'x' is unreadable" in err and "hint: run xylen collect again" in err
    assert "Traceback" not in r.text


def test_a_child_that_exits_0_with_garbage_is_not_a_success(make: Any) -> None:
    r = make("garbage").post("/retrain", headers=JSON)
    assert r.status_code == 503 and "no JSON result" in r.json()["error"]


def test_a_child_that_cannot_start_is_503_and_frees_the_lock(make: Any, home_copy: Path) -> None:
    c = make(command=lambda home, names, fd: [str(home_copy / "no-such-python")])
    r = c.post("/retrain", headers=JSON)
    assert r.status_code == 503 and "Could not start the retrain child" in r.json()["error"]
    assert RunLock(home_copy).holder() is None
    assert make("ok").post("/retrain", headers=JSON).status_code == 200


def test_an_unwritable_home_is_503_naming_it_and_starts_nothing(make: Any, home_copy: Path) -> None:
    (home_copy / "retrain").write_text("a file where the jobs folder goes")
    r = make("ok").post("/retrain", headers=JSON)
    assert r.status_code == 503 and "Cannot write to" in r.json()["error"] and "hint:" in r.json()["error"]
    assert not (home_copy / "child.pid").exists() and RunLock(home_copy).holder() is None


def test_a_record_write_failing_once_the_child_runs_still_watches_it(make: Any, home_copy: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills between the job's first record and the one with the child's pid: the child runs (and may
    promote), so the answer is its result, not a 503 that invites a retry; the job is recorded when it ends."""
    from xylen.core.errors import XylenError

    c = make("ok")
    jobs = c.app.state.jobs
    real, writes = jobs._write, []

    def second_fails(record: dict[str, Any]) -> None:
        writes.append(record["state"])
        if len(writes) == 2:
            raise XylenError("Cannot write to the jobs folder: the disk is full.")
        real(record)

    monkeypatch.setattr(jobs, "_write", second_fails)
    r = c.post("/retrain", headers=JSON)
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    assert c.get(f"/retrain/{r.json()['job_id']}").json()["state"] == "succeeded"
    assert RunLock(home_copy).holder() is None


def test_http_answer_never_500_for_any_record() -> None:
    for state in ("succeeded", "failed", "aborted", "lost"):
        for code in (None, -9, 0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 130, 255):
            status, body = http_answer({"job_id": "a" * 32, "state": state, "exit_code": code, "result": "junk"})
            assert status in (200, 409, 422, 503) and body["status"] in ("success", "error")
            assert (status == 200) == (state == "succeeded")


# --- one at a time ----------------------------------------------------------------------------------------
def test_wait_false_then_poll_and_a_second_post_is_409_naming_the_job(make: Any, home_copy: Path) -> None:
    go = home_copy / "go"
    c = make("wait", str(go))
    r = c.post("/retrain?wait=false", headers=JSON)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.json() == {"job_id": job_id, "status": "running", "url": f"/retrain/{job_id}"}
    assert c.get(f"/retrain/{job_id}").json()["state"] == "running"
    second = c.post("/retrain", headers=JSON)
    assert second.status_code == 409 and f"job {job_id}" in second.json()["error"]
    other = make("ok")  # another app (a second worker) on the same XYLEN_HOME: the lock is across processes
    assert other.post("/retrain?wait=false", headers=JSON).status_code == 409
    assert other.get(f"/retrain/{job_id}").json()["state"] == "running"  # and it answers for the job
    go.touch()
    done = poll_state(c, job_id, "succeeded", "failed")
    assert done["state"] == "succeeded" and done["result"]["status"] == "success"
    assert other.get(f"/retrain/{job_id}").json()["state"] == "succeeded"
    assert c.post("/retrain", headers=JSON).status_code == 200  # free again
    metrics = c.get("/metrics").text
    assert 'xylen_retrain_jobs_total{outcome="busy"} 1.0' in metrics
    assert 'xylen_retrain_jobs_total{outcome="succeeded"} 2.0' in metrics


def test_409_when_another_process_holds_the_lock(make: Any, home_copy: Path) -> None:
    code = ("import sys; from xylen.core.runlock import RunLock; l = RunLock(sys.argv[1]); "
            "l.try_acquire(by='cli', models=['btcusdt-5m']); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(home_copy)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        r = make("ok").post("/retrain", headers=JSON)
        assert r.status_code == 409
        assert f"pid {holder.pid}" in r.json()["error"] and "a cli run" in r.json()["error"]
    finally:
        holder.communicate("")
    assert make("ok").post("/retrain", headers=JSON).status_code == 200  # its exit freed the lock


def test_kill_9_of_the_child_releases_the_lock_and_reads_failed(make: Any, home_copy: Path) -> None:
    c = make("wait", str(home_copy / "never"))
    job_id = c.post("/retrain?wait=false", headers=JSON).json()["job_id"]
    pid = wait_for(lambda: c.get(f"/retrain/{job_id}").json()["pid"] and (home_copy / "child.pid").exists()
                   and int((home_copy / "child.pid").read_text()), what="the child to start")
    assert RunLock(home_copy).holder()["job_id"] == job_id
    os.kill(pid, signal.SIGKILL)
    job = poll_state(c, job_id, "failed")
    assert job["exit_code"] == -9 and "SIGKILL" in job["message"]
    assert RunLock(home_copy).holder() is None
    assert http_answer(job)[0] == 503
    assert make("ok").post("/retrain", headers=JSON).status_code == 200


def test_shutdown_sigterms_the_child_and_records_aborted(make: Any, home_copy: Path) -> None:
    c = make("wait", str(home_copy / "never"))
    job_id = c.post("/retrain?wait=false", headers=JSON).json()["job_id"]
    wait_for(lambda: (home_copy / "child.pid").exists(), what="the child to start")
    c.__exit__(None, None, None)  # lifespan shutdown
    record = orjson.loads((jobs_dir(home_copy) / f"{job_id}.json").read_bytes())
    assert record["state"] == "aborted" and record["exit_code"] == 130
    assert record["result"]["message"] == "terminated by SIGTERM"  # the child's own clean abort
    assert RunLock(home_copy).holder() is None


def test_a_job_that_finishes_despite_the_sigterm_is_recorded_as_succeeded(make: Any, home_copy: Path) -> None:
    c = make("wait", str(home_copy / "never"), "finish")
    job_id = c.post("/retrain?wait=false", headers=JSON).json()["job_id"]
    wait_for(lambda: (home_copy / "child.pid").exists(), what="the child to start")
    c.__exit__(None, None, None)
    record = orjson.loads((jobs_dir(home_copy) / f"{job_id}.json").read_bytes())
    assert record["state"] == "succeeded" and record["exit_code"] == 0  # its promotion happened: say so


def test_the_drain_aborts_a_waiting_post_with_503(make: Any, home_copy: Path) -> None:
    c = make("wait", str(home_copy / "never"))
    holder = c.app.state.holder
    pid_file = home_copy / "child.pid"

    import threading

    def drain_when_started() -> None:
        wait_for(pid_file.exists, what="the child to start")
        holder.draining = True  # what SIGTERM does first (server.py), in every worker

    t = threading.Thread(target=drain_when_started)
    t.start()
    r = c.post("/retrain", headers=JSON)
    t.join()
    assert r.status_code == 503 and r.json()["status"] == "error" and "aborted" in r.json()["error"]
    assert c.get(f"/retrain/{r.json()['job_id']}").json()["state"] == "aborted"


def test_an_aborted_job_says_what_it_settled_before_the_signal(make: Any, home_copy: Path) -> None:
    """The shutdown's SIGTERM came after the child promoted a version: the 503 and the record say so, not only
    that the retrain "was stopped before it finished" (a new version is live)."""
    c = make("wait", str(home_copy / "never"), "settled")
    job_id = c.post("/retrain?wait=false", headers=JSON).json()["job_id"]
    wait_for(lambda: (home_copy / "child.pid").exists(), what="the child to start")
    c.__exit__(None, None, None)
    record = orjson.loads((jobs_dir(home_copy) / f"{job_id}.json").read_bytes())
    assert record["state"] == "aborted" and record["exit_code"] == 130
    assert record["message"].startswith("aborted: the server was shutting down")
    assert "btcusdt-5m: promoted v0002" in record["message"]
    status, body = http_answer(record)
    assert status == 503 and "promoted v0002" in body["error"] and body["results"][0]["outcome"] == "promoted"


# --- records ------------------------------------------------------------------------------------------------
def test_records_survive_a_restart_and_a_dead_running_job_reads_lost(make: Any, home_copy: Path) -> None:
    job_id = make("ok").post("/retrain", headers=JSON).json()["job_id"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lost_id = "b" * 32
    jobs_dir(home_copy).mkdir(parents=True, exist_ok=True)
    (jobs_dir(home_copy) / f"{lost_id}.json").write_bytes(orjson.dumps(
        {"job_id": lost_id, "state": "running", "models": [MODEL], "started_at": "2026-01-01T00:00:00Z",
         "finished_at": None, "exit_code": None, "result": None, "message": "running", "pid": dead.pid,
         "pid_created": 1.0}))
    fresh = make("ok")  # a new server on the same home
    assert fresh.get(f"/retrain/{job_id}").json()["state"] == "succeeded"
    lost = fresh.get(f"/retrain/{lost_id}").json()
    assert lost["state"] == "lost" and "stopped before recording its end" in lost["message"]


def running_record(job_id: str, **fields: Any) -> bytes:
    return orjson.dumps({"job_id": job_id, "state": "running", "models": [MODEL], "started_at": "2026-01-01T00:00:00Z",
                         "finished_at": None, "exit_code": None, "result": None, "message": "running", **fields})


def test_a_job_whose_child_ended_reads_running_while_its_server_records_the_end(make: Any, home_copy: Path) -> None:
    """--workers 2: worker A's child has exited and A is writing the final record when worker B is asked; B must
    not answer the terminal "lost" for a job that A is about to record as succeeded."""
    import psutil

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    server = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    job_id = "d" * 32
    try:
        jobs_dir(home_copy).mkdir(parents=True, exist_ok=True)
        (jobs_dir(home_copy) / f"{job_id}.json").write_bytes(running_record(
            job_id, pid=dead.pid, pid_created=1.0, server_pid=server.pid,
            server_created=psutil.Process(server.pid).create_time()))
        c = make("ok")
        assert c.get(f"/retrain/{job_id}").json()["state"] == "running"
    finally:
        server.communicate(b"")
    lost = c.get(f"/retrain/{job_id}").json()
    assert lost["state"] == "lost" and "stopped before recording its end" in lost["message"]


@pytest.mark.parametrize("fields", [{"pid": -1}, {"pid": "12"}, {"pid": True}, {"pid_created": "abc"}, {"pid": 2**62},
                                    {"server_pid": -1, "server_created": "x"},
                                    {"server_pid": 2**62, "server_created": 1.0}])
def test_a_hand_edited_running_record_reads_lost_never_500(make: Any, home_copy: Path, fields: dict[str, Any]) -> None:
    job_id = "e" * 32
    jobs_dir(home_copy).mkdir(parents=True, exist_ok=True)
    # pid_created "abc" with our own (live) pid: the start-time comparison must not raise
    (jobs_dir(home_copy) / f"{job_id}.json").write_bytes(running_record(job_id, **({"pid": os.getpid()} | fields)))
    r = make("ok").get(f"/retrain/{job_id}")
    assert r.status_code == 200 and r.json()["state"] in ("lost", "running"), r.text


def test_only_the_last_100_records_are_kept(make: Any, home_copy: Path) -> None:
    d = jobs_dir(home_copy)
    d.mkdir(parents=True)
    for i in range(KEEP_RECORDS + 5):
        jid = f"{i:032x}"
        (d / f"{jid}.json").write_bytes(orjson.dumps({"job_id": jid, "state": "succeeded"}))
        os.utime(d / f"{jid}.json", (1_000_000 + i, 1_000_000 + i))
    (d / f"{0:032x}.err").write_text("old log")
    c = make("ok")
    job_id = c.post("/retrain", headers=JSON).json()["job_id"]
    names = {p.stem for p in d.glob("*.json")}
    assert len(names) == KEEP_RECORDS and job_id in names
    assert f"{0:032x}" not in names and f"{5:032x}" not in names and f"{6:032x}" in names
    assert not (d / f"{0:032x}.err").exists()
    assert c.get(f"/retrain/{0:032x}").status_code == 404


@pytest.mark.parametrize("job_id", ["../x", "..%2Fx", "%2e%2e", "x", "A" * 32, "a" * 31, "a" * 33, "a" * 5000,
                                    "..%2F..%2Fmodels%2Fbtcusdt-5m%2FCURRENT", "%00" + "a" * 31])
def test_hostile_or_unknown_ids_are_404_and_never_read_a_file(make: Any, home_copy: Path, job_id: str) -> None:
    d = jobs_dir(home_copy)
    d.mkdir(parents=True)
    # files a path trick would reach: none may be answered
    for stem in ("x", "A" * 32, "a" * 31):
        (d / f"{stem}.json").write_bytes(orjson.dumps({"job_id": stem, "state": "succeeded"}))
    (home_copy / "retrain" / "x.json").write_bytes(orjson.dumps({"job_id": "../x", "state": "succeeded"}))
    r = make("ok").get(f"/retrain/{job_id}")
    assert r.status_code == 404 and "error" in r.json()
    assert "state" not in r.json()


def test_unknown_well_formed_id_is_404(make: Any) -> None:
    r = make("ok").get(f"/retrain/{'c' * 32}")
    assert r.status_code == 404 and "the last 100 jobs are kept" in r.json()["error"]


# --- options and bad input ----------------------------------------------------------------------------------
def test_model_option_reaches_the_child_and_defaults_to_all(make: Any) -> None:
    seen: list[Any] = []

    def command(home: Path, names: list[str] | None, fd: int) -> list[str]:
        seen.append(names)
        return fake("ok")(home, names, fd)

    c = make(command=command)
    assert c.post(f"/retrain?model={MODEL}&model={MODEL}", headers=JSON).status_code == 200
    assert c.post("/retrain", headers=JSON).status_code == 200
    assert seen == [[MODEL], None]
    assert retrain_command(Path("/h"), None, 7)[-6:] == ["/h", "retrain", "--all", "--json", "--lock-fd", "7"]
    assert retrain_command(Path("/h"), ["a", "b"], 7)[-7:] == ["/h", "retrain", "a", "b", "--json", "--lock-fd", "7"]


@pytest.mark.parametrize(("query", "body", "status", "words"), [
    ("?wait=maybe", None, 422, "'maybe' is not one true or false"),
    ("?wait=true&wait=false", None, 422, "is not one true or false"),
    ("?model=BTC/../x", None, 422, "is not a model name"),
    ("?model=ethusdt-1h", None, 404, "No live model named 'ethusdt-1h' to retrain; live models: btcusdt-5m"),
    ("?models=btcusdt-5m", None, 422, "Unknown query parameter 'models'"),
    ("", b'{"model": "btcusdt-5m"}', 422, "takes no body fields"),
    ("", b"[1, 2]", 422, "takes no body fields"),
    ("", b"{not json", 400, "not JSON"),
])
def test_bad_options_are_clear_4xx_and_start_nothing(make: Any, home_copy: Path, query: str, body: bytes | None,
                                                      status: int, words: str) -> None:
    r = make("ok").post(f"/retrain{query}", content=body, headers=JSON)
    assert r.status_code == status and words in r.json()["error"], r.text
    assert not (home_copy / "child.pid").exists()


@pytest.mark.parametrize("body", [None, b"{}", b"null", b"  "])
def test_an_empty_body_or_empty_object_is_fine(make: Any, body: bytes | None) -> None:
    assert make("ok").post("/retrain", content=body, headers=JSON).status_code == 200


# --- who may call -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"content-type": "text/plain"},
                                     {"content-type": "application/x-www-form-urlencoded"},
                                     {"content-type": "multipart/form-data; boundary=x"}])
def test_keyless_post_without_json_content_type_is_415_csrf(make: Any, home_copy: Path,
                                                             headers: dict[str, str]) -> None:
    r = make("ok").post("/retrain", content=b"", headers=headers)
    assert r.status_code == 415 and "Content-Type: application/json" in r.json()["error"]
    assert not (home_copy / "child.pid").exists()


def test_keyless_post_from_a_foreign_host_is_421(make: Any) -> None:
    r = make("ok").post("/retrain", headers={**JSON, "host": "evil.example"})
    assert r.status_code == 421


def test_keys_are_required_for_post_and_get(make: Any, home_copy: Path) -> None:
    c = make("ok", api_keys=KEY)
    assert c.post("/retrain", headers=JSON).status_code == 401
    assert not (home_copy / "child.pid").exists()
    r = c.post("/retrain", headers={"X-API-Key": KEY})  # with the key no content type is needed (curl -X POST)
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    assert c.get(f"/retrain/{job_id}").status_code == 401
    assert c.get(f"/retrain/{job_id}", headers={"Authorization": f"Bearer {KEY}"}).json()["state"] == "succeeded"


def test_a_model_path_server_says_retrain_needs_the_registry(make: Any, home_copy: Path) -> None:
    c = make("ok", model_path=home_copy / "models" / MODEL / "v0001")
    r = c.post("/retrain", headers=JSON)
    assert r.status_code == 409 and "nothing to retrain" in r.json()["error"] and "hint:" in r.json()["error"]
    assert c.get(f"/retrain/{'a' * 32}").status_code == 404
    assert not (home_copy / "child.pid").exists()


def test_the_child_gets_neither_keys_nor_the_metrics_dir(make: Any, home_copy: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XYLEN_API_KEYS", KEY)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(home_copy / "nowhere"))
    out = home_copy / "env.json"
    code = f"import os, json; open({str(out)!r}, 'w').write(json.dumps(dict(os.environ)))"
    c = make(command=lambda home, names, fd: [sys.executable, "-c", code])
    c.post("/retrain", headers=JSON)
    env = orjson.loads(out.read_bytes())
    assert "XYLEN_API_KEYS" not in env and "PROMETHEUS_MULTIPROC_DIR" not in env


def test_openapi_documents_retrain(make: Any) -> None:
    spec = make("ok").get("/openapi.json").json()
    post = spec["paths"]["/retrain"]["post"]
    assert {"200", "202", "401", "409", "415", "422", "503"} <= set(post["responses"])
    assert {p["name"] for p in post["parameters"]} == {"model", "wait"}
    assert "application/json" in post["description"] and "409" in post["description"]
    get = spec["paths"]["/retrain/{job_id}"]["get"]
    assert {"200", "404"} <= set(get["responses"])
    states = spec["components"]["schemas"]["RetrainJob"]["properties"]["state"]["enum"]
    assert states == ["running", "succeeded", "failed", "aborted", "lost"]


def test_a_post_during_the_shutdown_drain_starts_nothing(make: Any, home_copy: Path) -> None:
    c = make("exit", "0")
    c.app.state.holder.draining = True  # what SIGTERM does first (server.py)
    r = c.post("/retrain", headers=JSON)
    assert r.status_code == 503 and "shutting down" in r.json()["error"]
    assert not (home_copy / "child.pid").exists() and RunLock(home_copy).holder() is None
    assert not jobs_dir(home_copy).exists() or not any(jobs_dir(home_copy).glob("*.json"))
