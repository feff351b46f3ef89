"""Check a PyTorch archive before torch reads any of it: only pickles that rebuild plain tensors get through.

A TorchScript archive (``torch.jit.save``) is a zip of pickles (data.pkl, constants.pkl, code/*.debug_pkl,
traced_inputs.pkl), raw tensor bytes and TorchScript source. Every entry torch would unpickle is read here first
with pickletools (core/pickle_scan.py, never unpickled) and refused when it imports anything beyond what plain
tensors and TorchScript attributes need: the allowlist below is exactly what torch 2.13 writes for float
models (Linear, BatchNorm, LayerNorm, Embedding, Dropout, LSTM; every common dtype; list, dict, tuple and
device attributes) plus the archive's own TorchScript classes. Quantized models (packed native parameters)
are not plain tensors and are refused. A ``__setstate__`` in the TorchScript source is refused as well:
torch.jit.load runs it while loading. What the loaded code may call is checked in backends/torch.py.

A torch.export archive (.pt2) is refused whole, after naming any pickle in it that imports something else:
torch.export.load unpickles weights and constants marked use_pickle, opaque constants and the sample inputs
with weights_only=False, and it hands the guard code and shape expressions stored in models/*.json to
exec/eval. Each of those creates a file while loading a doctored archive (tests/unit/test_torch_archives.py),
so no check of the pickles alone makes a .pt2 safe. A torch.save checkpoint is a pickle: refused too.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Literal

from xylen.core.errors import BundleError
from xylen.core.pickle_scan import scan_pickle

ArchiveKind = Literal["torchscript", "export", "checkpoint"]

MAX_ENTRY_BYTES = 64 << 20  # a pickle or source entry this large is not a small model's: refuse, never inflate it
_DTYPES: tuple[str, ...] = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
_DTYPES += ("ComplexFloat", "ComplexDouble")
# what rebuilding a plain tensor imports (torch.save and TorchScript alike)
TENSOR_GLOBALS = frozenset(
    {"torch._utils._rebuild_tensor_v2", "collections.OrderedDict", *(f"torch.{d}Storage" for d in _DTYPES)}
)
# plus what TorchScript attributes import: typed lists and dicts, devices
SCRIPT_GLOBALS = TENSOR_GLOBALS | {
    "torch.device",
    "torch.jit._pickle.build_intlist",
    "torch.jit._pickle.build_doublelist",
    "torch.jit._pickle.build_boollist",
    "torch.jit._pickle.build_tensorlist",
    "torch.jit._pickle.restore_type_tag",
}
# the archive's own TorchScript classes (compiled from its code/ folder; never Python classes)...
_SCRIPT_CLASS = re.compile(r"__torch__(\.[A-Za-z_][A-Za-z0-9_]*)+")
_NATIVE_CLASSES = "__torch__.torch.classes."  # ...but not torchbind classes: their __setstate__ is native code
_SETSTATE = re.compile(rb"\b__setstate__\b")
_EXPORT_NOT_PICKLED = ("archive_format", "archive_version", "byteorder", "version", "serialization_id")
_EXPORT_NATIVE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/", "extra/")
SAVE_AS_TORCHSCRIPT = "torch.jit.save(torch.jit.trace(model.eval(), example_input), 'model.pt')"


def inspect_archive(path: Path) -> None:
    """Refuse ``path`` (BundleError) unless it is a TorchScript archive whose pickles import only plain-tensor
    names and whose source defines no ``__setstate__``. Reads the zip only; never imports torch."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
        # torch picks its loader by the first bytes, flatbuffer ("PTMF" at offset 4) before zip, while Python's
        # zipfile reads the directory at the end: only a file that is a zip from its first byte is one archive
        if head[:4] != b"PK\x03\x04" or head[4:8] == b"PTMF":
            raise zipfile.BadZipFile("does not start like a torch zip archive")
        with zipfile.ZipFile(path) as zf:
            _inspect(path, zf)
    # NotImplementedError is zipfile's answer to a compression method it lacks: a crafted archive, not a stub
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError, NotImplementedError):
        raise BundleError(
            f"{str(path)!r} is not a TorchScript archive (not a zip file as torch.jit.save writes one).",
            hint=f"save the model with {SAVE_AS_TORCHSCRIPT}.",
        ) from None


def _inspect(path: Path, zf: zipfile.ZipFile) -> None:
    infos = zf.infolist()
    seen: set[str] = set()
    for info in infos:
        # torch's zip reader matches names without regard to case: two spellings of one name could show
        # this check one entry and torch another
        key = info.filename.lower()
        if key in seen:
            raise _refuse(path, info.filename, "appears twice in the archive", "re-save the model")
        seen.add(key)
    kind = _kind([i.filename for i in infos])
    if kind == "checkpoint":  # never opened at all, so what its pickle imports does not matter
        raise BundleError(
            f"{str(path)!r} is a torch.save checkpoint (a pickle), not a TorchScript archive.",
            hint=f"xylen never unpickles models; save with {SAVE_AS_TORCHSCRIPT}.",
        )
    allowed = SCRIPT_GLOBALS if kind == "torchscript" else TENSOR_GLOBALS
    for info in infos:
        if info.filename.lower().endswith("pkl"):
            _check_pickle(path, zf, info, allowed, script_classes=kind == "torchscript")
    if kind == "export":
        _check_export(path, zf)
        raise BundleError(
            f"{str(path)!r} is a torch.export .pt2 archive, which xylen does not load: torch.export.load runs "
            "code stored in the archive (it unpickles payloads with weights_only=False and passes the guard "
            "code and shape expressions in models/*.json to exec and eval).",
            hint=f"save the model as TorchScript and import that: {SAVE_AS_TORCHSCRIPT}.",
        )
    for info in infos:
        lower = info.filename.lower()  # torch finds code/x.py under any spelling of the name
        if "/code/" in lower and lower.endswith(".py") and _SETSTATE.search(_read(path, zf, info)):
            raise _refuse(
                path,
                info.filename,
                "defines __setstate__, which torch.jit.load runs while loading",
                "save a model without custom __getstate__/__setstate__ methods",
            )


def _kind(names: list[str]) -> ArchiveKind:
    if any("/code/" in n.lower() for n in names):
        return "torchscript"
    if any(n.endswith(("/archive_format", "/models/model.json")) or "serialized_exported_program" in n for n in names):
        return "export"
    return "checkpoint"


def _refuse(path: Path, entry: str, what: str, fix: str) -> BundleError:
    return BundleError(
        f"{str(path)!r}: entry {entry!r} {what}; xylen never unpickles or runs anything from a model file "
        "beyond plain tensors and the model's own TorchScript.",
        hint=f"if you did not build this file yourself, do not use it; otherwise {fix} ({SAVE_AS_TORCHSCRIPT}).",
    )


def _read(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > MAX_ENTRY_BYTES:
        raise _refuse(path, info.filename, f"is {info.file_size} bytes, too large to check", "re-save the model")
    try:
        with zf.open(info) as fh:
            data = fh.read(MAX_ENTRY_BYTES + 1)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise _refuse(path, info.filename, f"cannot be read ({exc})", "re-save the model") from None
    if len(data) > MAX_ENTRY_BYTES:
        raise _refuse(path, info.filename, "inflates beyond its declared size", "re-save the model")
    return data


def _bad_import(imports: tuple[str, ...], allowed: frozenset[str], script_classes: bool) -> str | None:
    for name in imports:
        if name in allowed:
            continue
        if script_classes and _SCRIPT_CLASS.fullmatch(name) and not name.startswith(_NATIVE_CLASSES):
            continue
        return name
    return None


def _check_pickle(
    path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, allowed: frozenset[str], *, script_classes: bool
) -> None:
    scan = scan_pickle(_read(path, zf, info))
    bad = _bad_import(scan.imports, allowed, script_classes)
    if bad is not None:
        raise _refuse(path, info.filename, f"holds a pickle that imports {bad}", "re-save a plain float model")
    if scan.problem is not None:
        raise _refuse(path, info.filename, f"holds a pickle that cannot be checked: {scan.problem}", "re-save it")


# -- .pt2: refused anyway; these checks only make the message name a planted payload ---------------------------
def _check_export(path: Path, zf: zipfile.ZipFile) -> None:
    raw: set[str] = set()  # payloads torch reads as raw tensor bytes, never unpickles
    for info in zf.infolist():
        name = info.filename
        folder = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
        if not name.endswith("_config.json") or "/data/" not in name:
            continue
        try:
            config = json.loads(_read(path, zf, info)).get("config", {})
            items = list(config.items())
        except (ValueError, AttributeError):
            continue  # torch cannot read it either; the archive is refused below anyway
        for fqn, meta in items:
            if not isinstance(meta, dict):
                continue
            target = f"{folder}{meta.get('path_name')}"
            if meta.get("use_pickle"):
                _check_export_payload(path, zf, target)
                raise _refuse(
                    path,
                    name,
                    f"marks {fqn!r} (entry {target!r}) use_pickle, which torch.export.load unpickles with "
                    "weights_only=False",
                    "save the model as TorchScript",
                )
            if "/weights/" in folder or str(meta.get("path_name", "")).startswith("tensor_"):
                raw.add(target)
    for info in zf.infolist():
        name = info.filename
        inner = name.split("/", 1)[1] if "/" in name else name
        if (
            name in raw
            or name.endswith((".json", ".py"))
            or inner.rsplit("/", 1)[-1] in _EXPORT_NOT_PICKLED
            or inner.startswith(_EXPORT_NATIVE_DIRS)
            or name.lower().endswith("pkl")  # scanned already
        ):
            continue
        _check_export_payload(path, zf, name)


def _check_export_payload(path: Path, zf: zipfile.ZipFile, entry: str) -> None:
    """Name the first disallowed import in ``entry``: a raw pickle stream, or a torch.save zip of one."""
    try:
        info = zf.getinfo(entry)
    except KeyError:
        return
    data = _read(path, zf, info)
    for where, imports in _payload_imports(data):
        bad = _bad_import(imports, TENSOR_GLOBALS, script_classes=False)
        if bad is not None:
            inside = f" ({where})" if where else ""
            raise _refuse(path, entry, f"holds a pickle{inside} that imports {bad}", "save the model as TorchScript")


def _payload_imports(data: bytes) -> list[tuple[str, tuple[str, ...]]]:
    if data.startswith(b"PK\x03\x04"):
        out: list[tuple[str, tuple[str, ...]]] = []
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as inner:
                for info in inner.infolist():
                    if info.filename.lower().endswith("pkl") and info.file_size <= MAX_ENTRY_BYTES:
                        out.append((info.filename, scan_pickle(inner.read(info)).imports))
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ValueError):
            pass
        return out
    # torch.load's legacy format is several pickles in a row (the payload need not be the first)
    found: list[tuple[str, tuple[str, ...]]] = []
    rest = data
    while rest:
        scan = scan_pickle(rest, allow_trailing=True)
        found.append(("", scan.imports))
        if scan.problem is not None or scan.end >= len(rest) or scan.end <= 0:
            break
        rest = rest[scan.end :]
    return found
