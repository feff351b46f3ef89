"""What a pickle would import, read without unpickling it (``pickletools.genops`` only parses opcodes).

Unpickling runs code only through callables the pickle imports: GLOBAL and INST name them, STACK_GLOBAL takes
them from the two strings on top of the stack, EXT1/2/4 look them up in copyreg's registry. Everything that
calls (REDUCE, NEWOBJ, OBJ, BUILD's ``__setstate__``) calls something imported that way or built from it. So a
pickle whose every import is on an allowlist can run nothing else. Whatever cannot be resolved statically -- a
STACK_GLOBAL over computed values, an extension code, a malformed stream, bytes after STOP -- is a ``problem``,
and callers refuse it rather than guess.
"""

from __future__ import annotations

import pickletools
from typing import NamedTuple

_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
)
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_NO_STACK_EFFECT = frozenset({"PROTO", "FRAME"})


class PickleScan(NamedTuple):
    imports: tuple[str, ...]  # "module.name", in the order the pickle imports them
    problem: str | None  # why the pickle cannot be read statically; None when every import is known
    end: int  # the offset just after its STOP opcode (0 when there is none)


def scan_pickle(data: bytes, *, allow_trailing: bool = False) -> PickleScan:
    """Every name the first pickle in ``data`` imports. Never unpickles anything."""
    imports: list[str] = []
    # values pushed since the last opcode that did anything else to the stack: a STACK_GLOBAL is resolved
    # only when both of its operands are among them (a str, or None when not a known str)
    recent: list[str | None] = []
    memo: dict[int, str | None] = {}
    end = 0
    try:
        for op, arg, pos in pickletools.genops(data):
            name = op.name
            if name in _STRING_OPS:
                recent.append(arg if isinstance(arg, str) else None)
            elif name in _MEMO_GET:
                recent.append(memo.get(int(arg)))  # type: ignore[arg-type]
            elif name in _MEMO_PUT:
                memo[int(arg)] = recent[-1] if recent else None  # type: ignore[arg-type]
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in _NO_STACK_EFFECT:
                pass
            elif name in ("GLOBAL", "INST"):
                imports.append(".".join(str(arg).split(" ", 1)))
                recent = []
            elif name == "STACK_GLOBAL":
                if len(recent) < 2 or recent[-2] is None or recent[-1] is None:
                    return PickleScan(tuple(imports), "it imports a name computed while unpickling (STACK_GLOBAL)", end)
                imports.append(f"{recent[-2]}.{recent[-1]}")
                recent = []
            elif name.startswith("EXT"):
                return PickleScan(tuple(imports), f"it imports through copyreg extension code {arg}", end)
            else:
                recent = []
                if name == "STOP":
                    end = (pos or 0) + 1
    except Exception as exc:  # genops raises ValueError and friends on a malformed stream
        why = str(exc)[:80] or type(exc).__name__
        return PickleScan(tuple(imports), f"it is not a well-formed pickle ({why})", end)
    if end < len(data) and not allow_trailing:
        return PickleScan(tuple(imports), f"{len(data) - end} bytes follow the end of the pickle", end)
    return PickleScan(tuple(imports), None, end)


def looks_like_pickle(data: bytes) -> bool:
    """True for protocol 2+ pickles (they open with PROTO, 0x80) and for whole protocol 0/1 pickles."""
    if data[:1] == b"\x80":
        return True
    scan = scan_pickle(data)
    return scan.problem is None and len(data) > 1
