"""Verify a candidate bundle in a throwaway process: ``python -m xylen.serve.verify <bundle folder>``.

A truncated or corrupt LightGBM text model can abort or segfault the process that loads it instead of
raising, so the server never loads a candidate before this child has: checked size and sha256, loaded it,
and reproduced the manifest's golden predictions. Exit 0 = good; otherwise the reason is on stderr.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m xylen.serve.verify <bundle folder>", file=sys.stderr)
        return 2
    from xylen.serve.imports import block_heavy_imports

    block_heavy_imports()
    from xylen.core.bundle import load_bundle
    from xylen.core.errors import XylenError

    try:
        load_bundle(argv[0], check_golden=True, num_threads=1)
    except XylenError as exc:
        print(exc.message + (f" Hint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
