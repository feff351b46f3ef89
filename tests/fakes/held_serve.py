"""`xylen` whose `serve --workers N` workers can be held back before they load their models, for readiness tests.

    XYLEN_TEST_HOLD_DIR=DIR python tests/fakes/held_serve.py serve --workers 2 ...

The workers are started by multiprocessing's spawn, which runs this file again in each of them (as __mp_main__),
so the patch below applies in every worker and no production code knows about it. Each worker, on its way to load
its models, takes the next arrival number k (0, 1, 2, ...: the first to create DIR/arrived-k, which then holds its
pid) and waits while DIR/hold-k exists. A test creates hold-0 to keep the first worker loading, and hold-2 to keep
the replacement of a killed worker loading (the third to arrive).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from xylen.serve import holder


def _held_load_all(original):  # type: ignore[no-untyped-def]
    def load_all(self: holder.ModelHolder) -> None:
        folder = Path(os.environ["XYLEN_TEST_HOLD_DIR"])
        k = 0
        while True:
            try:
                fd = os.open(folder / f"arrived-{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                k += 1
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        while (folder / f"hold-{k}").exists():  # the fake's own wait, inside the server: the test polls
            time.sleep(0.05)
        original(self)

    return load_all


if os.environ.get("XYLEN_TEST_HOLD_DIR"):
    holder.ModelHolder.load_all = _held_load_all(holder.ModelHolder.load_all)  # type: ignore[method-assign]

if __name__ == "__main__":
    from xylen.cli import main

    sys.argv[0] = "xylen"
    main()
