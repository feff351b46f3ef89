"""A stand-in for `xylen retrain --json --lock-fd FD`, for POST /retrain's job runner tests.

    python retrain_child.py HOME FD MODE [ARG]

It first adopts the lock the server passed (exit 2 if FD is not it: the runner must hand it over), writes its pid
to HOME/child.pid, then by MODE:
  ok            print a contract-shaped success object, exit 0
  exit CODE     print a contract-shaped error object naming CODE, exit CODE
  crash         print an "error:/hint:" pair on stderr (and a traceback-looking line), no JSON, exit 1
  garbage       print non-JSON on stdout, exit 0
  wait FILE     wait until FILE exists (then like ok); SIGTERM: print the CLI's abort object, exit 130
  wait FILE finish   the same, but SIGTERM finds it done: it prints the success object and exits 0
  wait FILE settled  the same, but SIGTERM comes after a promotion: the CLI's abort object with that result, 130
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import orjson

from xylen.core.runlock import RunLock


def result(status: str, message: str, code: int, error: dict[str, object] | None = None) -> bytes:
    return orjson.dumps({
        "status": status, "message": message, "samples_used": 0 if error else 98000, "exit_code": code,
        "results": [{"name": "btcusdt-5m", "outcome": "error" if error else "promoted", "message": message,
                     "live_version": "v0001", "candidate_version": None if error else "v0002", "mode": "full",
                     "new_candles": 1234, "samples_used": 0 if error else 98000, "gate": None, "watch": None,
                     "pruned": [], "seconds": 0.1, "peak_rss_mb": 50.0, "error": error}],
    })


def main() -> int:
    home, fd, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    lock = RunLock(home)
    lock.adopt(fd)  # raises (exit 1 with a traceback) unless the server really handed us the locked file
    if mode == "wait":
        # before child.pid says we started: a test that sends SIGTERM then must find the handler in place
        finish = sys.argv[5:] == ["finish"]  # the run was past its last step: it ends normally despite SIGTERM
        settled = sys.argv[5:] == ["settled"]  # a promotion was done when the signal came (cli/retrain.run_once)

        def on_term(_sig: int, _frame: object) -> None:
            if finish:
                out = result("success", "btcusdt-5m: promoted v0002", 0)
            elif settled:
                out = result("error", "btcusdt-5m: promoted v0002; then terminated by SIGTERM; the run was aborted "
                                      "and nothing was left half-written.", 130)
            else:
                out = orjson.dumps(
                    {"status": "error", "message": "terminated by SIGTERM", "samples_used": 0, "exit_code": 130})
            sys.stdout.buffer.write(out)
            sys.stdout.flush()
            os._exit(0 if finish else 130)

        signal.signal(signal.SIGTERM, on_term)
    (home / "child.pid").write_text(str(os.getpid()))
    if mode == "exit":
        code = int(sys.argv[4])
        err = {"exit_code": code, "message": f"planted failure {code}", "hint": f"fix planted thing {code}"}
        sys.stdout.buffer.write(result("error", f"btcusdt-5m: planted failure {code}", code, err))
        return code
    if mode == "crash":
        sys.stderr.write("Traceback (most recent call last):\n  File \"x.py\", line 1\n")
        sys.stderr.write("error: the store partition 'x' is unreadable.\nhint: run xylen collect again.\n")
        return 1
    if mode == "garbage":
        sys.stdout.write("this is not json\n")
        return 0
    if mode == "wait":
        go = Path(sys.argv[4])
        while not go.exists():  # the test's release; a child process may poll, the tests never sleep
            time.sleep(0.01)
    sys.stdout.buffer.write(result("success", "btcusdt-5m: promoted v0002", 0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
