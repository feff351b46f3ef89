"""PyTorch models: TorchScript archives (``torch.jit.save``) or torch.export archives (``torch.export.save``, .pt2).

Never a pickle: a ``torch.save`` checkpoint (a pickled module or state dict) is refused, because unpickling runs
arbitrary code and a state dict carries no architecture. The model takes one float32 tensor of shape
(n, features) and returns, by the manifest's ``output`` convention (see backends/onnx.py), either probabilities
-- (n,), (n, 1) or column 1 of (n, 2) -- or logits: sigmoid of one column, softmax column 1 of two.
Torch runs with one intra-op and one inter-op thread, like every xylen backend.
"""

from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xylen.core.backends.onnx import OutputKind, check_output, to_probability
from xylen.core.errors import BundleError

ArchiveKind = Literal["torchscript", "export"]


def archive_kind(path: Path) -> ArchiveKind:
    """TorchScript or torch.export, from the archive's entries; anything else is refused without loading it."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        raise BundleError(
            f"{str(path)!r} is not a TorchScript or torch.export archive (not a zip file).",
            hint="save the model with torch.jit.save(torch.jit.script(m), ...) or "
            "torch.export.save(torch.export.export(m, (x,)), 'model.pt2').",
        ) from None
    if any("/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith(("/archive_format", "/models/model.json")) or "serialized_exported_program" in n for n in names):
        return "export"
    raise BundleError(
        f"{str(path)!r} is a torch.save checkpoint (a pickle), not a TorchScript or .pt2 archive.",
        hint="xylen never unpickles models; save with torch.jit.save(torch.jit.script(model), path) "
        "or torch.export.save(torch.export.export(model, (example,)), 'model.pt2').",
    )


def _one_thread(torch: Any) -> None:
    torch.set_num_threads(1)
    # only settable once per process, before any parallel work; later loads keep the first setting
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


class TorchPredictor:
    backend = "torch"

    def __init__(self, artifact: Path, output: str = "probability", **_: Any) -> None:
        import torch  # lazy: ~200 MB RSS, paid only by torch servers

        _one_thread(torch)
        self.artifact = Path(artifact)
        self.kind = archive_kind(self.artifact)
        self.output: OutputKind = check_output(output, self.artifact)
        self._torch = torch
        self._width: int | None = None
        if self.kind == "torchscript":
            self.module = torch.jit.load(str(artifact), map_location="cpu")
            self.module.eval()
            self._width = _first_weight_width(self.module)
        else:
            program = torch.export.load(str(artifact))
            self.module = program.module()
            self._width = _export_width(program)
        if self._width is None:
            raise BundleError(
                f"Cannot tell how many features {str(artifact)!r} takes.",
                hint="its first layer should be a Linear (weight of shape (out, features)), or save "
                "it with torch.export so the input shape is recorded.",
            )

    def num_feature(self) -> int:
        assert self._width is not None
        return self._width

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        with self._torch.inference_mode():
            y = self.module(self._torch.from_numpy(X))
        if isinstance(y, (tuple, list)):
            y = y[0]
        return to_probability(
            y.detach().to(self._torch.float64).numpy(), self.output, f"torch model {self.artifact.name!r}"
        )


def _first_weight_width(module: Any) -> int | None:
    for _name, p in module.named_parameters():
        if p.dim() == 2:
            return int(p.shape[1])
    return None


def _export_width(program: Any) -> int | None:
    user = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user:
            val = node.meta.get("val")
            if val is not None and val.dim() == 2:
                try:
                    return int(val.shape[1])
                except TypeError:  # a symbolic width
                    return None
    return None
