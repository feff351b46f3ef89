"""Verify a bundle in a throwaway process: ``python -m xylen.core.verify <bundle folder>``, or a bare model
file with ``--raw <backend> <file>`` (core/rawmodel.py: a trial load and a prediction).

A truncated or corrupt LightGBM text model can abort or segfault the process that loads it instead of
raising, so nothing that matters loads a bundle before this child has: checked size and sha256, loaded it,
and reproduced the manifest's golden predictions. ``Registry.promote`` runs it before a version may go live,
and every server runs it again before it swaps a version in. Exit 0 = good; otherwise the reason is on stderr.

``--many`` verifies a batch (a server starting with hundreds of models, a poll that saw several pointers change):
the folders arrive as a JSON list on stdin, and for each one the child first announces ``start <i>`` on stdout,
then answers ``ok <i> <sha256 of the manifest.json it verified>`` or ``bad <i> <reason>``. A child that a corrupt
file kills therefore names its culprit: the last folder it announced without an answer.
``verify_many_in_children`` refuses that one and verifies the rest in a fresh child, spreading a batch over
min(usable cores, 4) children. Each child starts once (~0.4 s of imports) and spends ~1-2 ms per small bundle,
where one child per bundle paid the start-up each time.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

VERIFY_TIMEOUT_S = 60.0  # for one bundle (in a batch: between two answers of the child)
MAX_CHILDREN = 4  # a batch's children: more would only compete with the serving process for the cores
MANY_CHILD = (sys.executable, "-m", "xylen.core.verify", "--many")


def verify_in_child(folder: Path, timeout: float = VERIFY_TIMEOUT_S) -> str | None:
    """None when the bundle verified in a child process; else the reason it was refused."""
    return _child([str(folder)], folder, timeout)


def verify_raw_in_child(path: Path, backend: str, timeout: float = VERIFY_TIMEOUT_S) -> str | None:
    """The same for a bare model file (MODEL_PATH=model.txt): a trial load and a prediction with ``backend``."""
    return _child(["--raw", backend, str(path)], path, timeout)


def _child(args: list[str], folder: Path, timeout: float) -> str | None:
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "xylen.core.verify", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"verification of {folder} took longer than {timeout:.0f} s"
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        return f"loading {folder} killed the verifier with signal {-proc.returncode} (corrupt model file)"
    lines = (proc.stderr or "").strip().splitlines()
    return lines[-1] if lines else f"the verifier exited with code {proc.returncode}"


@dataclass(frozen=True)
class Verdict:
    """One bundle's verification: ``reason`` None when it passed. ``manifest_sha256``: the digest of the manifest.json
    the child verified (None: not known), which a server passes to load_bundle to load exactly those bytes."""

    reason: str | None
    manifest_sha256: str | None = None


def verify_many_in_children(
    folders: Sequence[Path], *, children: int | None = None, timeout: float = VERIFY_TIMEOUT_S
) -> dict[Path, Verdict]:
    """``verify_in_child`` for many bundles at once: folder -> its Verdict.

    The batch is split over ``children`` (default min(usable cores, 4)) child processes working at once. A folder
    whose load kills a child is refused with the signal, and the folders that child had not reached yet go to a
    new one: one corrupt file never holds the others back."""
    todo = list(dict.fromkeys(Path(f) for f in folders))
    if not todo:
        return {}
    if children is None:
        from xylen.core.cgroup import usable_cores

        children = min(usable_cores(), MAX_CHILDREN)
    n = max(1, min(children, len(todo)))
    parts: list[dict[Path, Verdict]] = [{} for _ in range(n)]
    workers = [
        threading.Thread(target=_verify_part, args=(todo[i::n], timeout, parts[i]), name=f"xylen-verify-{i}")
        for i in range(n)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out: dict[Path, Verdict] = {}
    for part in parts:
        out.update(part)
    return {f: out.get(f, Verdict("the verifier gave no answer")) for f in todo}


def _verify_part(folders: list[Path], timeout: float, out: dict[Path, Verdict]) -> None:
    """Verify ``folders`` in as few children as their files allow: each crash costs one folder and a new child."""
    pending = folders
    while pending:
        try:
            answered, culprit, reason = _many_child(pending, timeout)
        except OSError as exc:  # no process to start (out of memory, pids): refuse, never raise into the watcher
            for f in pending:
                out.setdefault(f, Verdict(f"could not start the verifier: {exc}"))
            return
        out.update(answered)
        if culprit is None:  # the child failed before it reached any folder it did not answer: no one to blame
            for f in pending:
                out.setdefault(f, Verdict(reason or "the verifier ended without an answer"))
            return
        out[culprit] = Verdict(reason or "refused")
        pending = [f for f in pending if f not in out]


def _many_child(folders: list[Path], timeout: float) -> tuple[dict[Path, Verdict], Path | None, str | None]:
    """One ``--many`` child over ``folders``: (its answers, the folder it was on when it died or stalled, why)."""
    import orjson

    answered: dict[Path, Verdict] = {}
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child can never block on it
        proc = subprocess.Popen([*MANY_CHILD], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            # the child reads all of stdin before it writes a line, so this write cannot deadlock
            proc.stdin.write(orjson.dumps([str(f) for f in folders]))
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the child died at start-up: its exit code and stderr say why, below
        current: Path | None = None
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                if not sel.select(timeout):  # no answer within the timeout: it hangs on ``current``
                    proc.kill()
                    proc.wait()
                    proc.stdout.close()
                    if current is None:
                        return answered, None, f"the verifier did not answer within {timeout:.0f} s"
                    return answered, current, f"verification of {current} took longer than {timeout:.0f} s"
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                *lines, buf = (buf + chunk).split(b"\n")
                for line in lines:
                    word, _, rest = line.decode("utf-8", "replace").partition(" ")
                    index, _, reason = rest.partition(" ")
                    if not index.isdigit() or int(index) >= len(folders):
                        continue
                    folder = folders[int(index)]
                    if word == "start":
                        current = folder
                    elif word == "ok":
                        answered[folder] = Verdict(None, reason or None)
                        current = None
                    elif word == "bad":
                        answered[folder] = Verdict(reason or "refused")
                        current = None
        proc.stdout.close()
        rc = proc.wait()
        if current is None and len(answered) == len(folders):
            return answered, None, None
        err.seek(0)
        said = err.read().decode("utf-8", "replace").strip().splitlines()
    last = f": {said[-1][:300]}" if said else ""
    if current is None:  # it died between two bundles (or before the first): none of them is to blame
        return answered, None, f"the verifier exited with code {rc} between two bundles{last}"
    if rc < 0:
        return answered, current, f"loading {current} killed the verifier with signal {-rc} (corrupt model file)"
    return answered, current, f"loading {current} made the verifier exit with code {rc}{last}"


def _main_many() -> int:
    """The child side of ``--many``: announce, verify, answer, for each folder of the JSON list on stdin."""
    import orjson

    from xylen.core.bundle import load_bundle
    from xylen.core.errors import XylenError, first_line

    raw = sys.stdin.buffer.read()
    try:
        folders = orjson.loads(raw)
    except orjson.JSONDecodeError:
        folders = None
    if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
        text = raw.decode("utf-8", "replace").strip()
        print(f"--many reads a JSON list of bundle folders on stdin, not {text[:80]!r}. Hint: send e.g. "
              '["/models/btcusdt-5m/v0001"].', file=sys.stderr)
        return 2
    # the protocol gets its own descriptor; fd 1 becomes stderr, so nothing a library prints (LightGBM's C++
    # logger writes to fd 1) can be mistaken for an answer
    proto = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    for i, folder in enumerate(folders):
        proto.write(f"start {i}\n".encode())
        try:
            bundle = load_bundle(folder, check_golden=True, num_threads=1)
        except XylenError as exc:
            answer = exc.message + (f" Hint: {exc.hint}" if exc.hint else "")
            proto.write(f"bad {i} {' '.join(answer.split())}\n".encode())
        except Exception as exc:  # an unexpected error is this bundle's refusal, not the end of the batch
            proto.write(f"bad {i} the verifier failed on it: {' '.join(first_line(exc).split())}\n".encode())
        else:
            proto.write(f"ok {i} {bundle.manifest_sha256}\n".encode())
    return 0


def main(argv: list[str]) -> int:
    raw = len(argv) == 3 and argv[0] == "--raw"
    many = argv == ["--many"]
    if len(argv) != 1 and not raw:
        print("usage: python -m xylen.core.verify <bundle folder> | --raw <backend> <model file> | --many "
              "(a JSON list of bundle folders on stdin)", file=sys.stderr)
        return 2
    from xylen.core.imports import block_heavy_imports

    block_heavy_imports()
    if many:
        return _main_many()
    from xylen.core.bundle import load_bundle
    from xylen.core.errors import XylenError
    from xylen.core.rawmodel import load_raw

    try:
        if raw:
            load_raw(argv[2], argv[1], num_threads=1)
        else:
            load_bundle(argv[0], check_golden=True, num_threads=1)
    except XylenError as exc:
        print(exc.message + (f" Hint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
