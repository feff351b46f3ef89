"""Verify a bundle in a throwaway process: ``python -m xylen.core.verify <bundle folder>``, or a bare model
file with ``--raw <backend> <file>`` (core/rawmodel.py: a trial load and a prediction).

A truncated or corrupt LightGBM text model can abort or segfault the process that loads it instead of
raising, so nothing that matters loads a bundle before this child has: checked size and sha256, loaded it,
and reproduced the manifest's golden predictions. ``Registry.promote`` runs it before a version may go live,
and every server runs it again before it swaps a version in. Exit 0 = good; otherwise the reason is on stderr.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VERIFY_TIMEOUT_S = 60.0


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


def main(argv: list[str]) -> int:
    raw = len(argv) == 3 and argv[0] == "--raw"
    if len(argv) != 1 and not raw:
        print("usage: python -m xylen.core.verify <bundle folder> | --raw <backend> <model file>", file=sys.stderr)
        return 2
    from xylen.core.imports import block_heavy_imports

    block_heavy_imports()
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
