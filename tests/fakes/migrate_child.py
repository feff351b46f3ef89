"""A `xylen collect migrate` that stops at a known point and waits to be killed, for the migration's kill tests.

    python migrate_child.py ROOT N READY

It migrates the store at ROOT; once the Nth file is moved it writes that file's new path to READY and waits (for
the test's ``kill -9``). Exit 3 if the migration ended before N files were moved.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from xylen.core.store_migrate import migrate


def main() -> int:
    root, n, ready = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    moved = 0

    def on_moved(path: Path) -> None:
        nonlocal moved
        moved += 1
        if moved == n:
            tmp = ready.with_suffix(".tmp")
            tmp.write_text(str(path))
            os.replace(tmp, ready)  # the test never reads half a path
            while True:  # the test kills us here: a child may wait, the tests never sleep
                time.sleep(1)

    migrate(root, on_moved=on_moved)
    return 3


if __name__ == "__main__":
    sys.exit(main())
