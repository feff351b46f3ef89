"""PyTorch models: TorchScript archives (``torch.jit.save``), checked before and after torch reads them.

Never a pickle beyond plain tensors: before torch opens the file, backends/torch_archive.py reads every entry
torch would unpickle without unpickling it and refuses foreign imports; it refuses torch.export .pt2 archives
(their loader runs code stored in them) and torch.save checkpoints. After torch.jit.load and before the model
ever runs, every method and hook it could run is inlined and checked here for operations that reach outside
the process -- writing or mapping files (aten::save, aten::from_file), RPC, Python -- and for calls left
opaque after inlining (native custom classes): such a model is refused.

The model takes one float32 tensor of shape (n, features) and returns, by the manifest's ``output`` convention
(see backends/onnx.py), either probabilities -- (n,), (n, 1) or column 1 of (n, 2) -- or logits: sigmoid of
one column, softmax column 1 of two. Torch runs with one intra-op and one inter-op thread, like every backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from xylen.core.backends.onnx import OutputKind, check_output, to_probability
from xylen.core.backends.torch_archive import SAVE_AS_TORCHSCRIPT, inspect_archive
from xylen.core.errors import BundleError

_ALLOWED_NAMESPACES = ("aten::", "prim::")
_REFUSED_OPS = {
    "aten::save": "writes a file",
    "aten::from_file": "maps a file into memory (and can create or write it)",
    "prim::rpc_async": "makes a remote call",
    "prim::rpc_sync": "makes a remote call",
    "prim::rpc_remote": "makes a remote call",
    "prim::PythonOp": "calls Python",
    "prim::CallFunction": "calls a function that cannot be inspected",
    "prim::CallMethod": "calls a method that cannot be inspected (a native custom class?)",
}


def _one_thread(torch: Any) -> None:
    torch.set_num_threads(1)
    # only settable once per process, before any parallel work; later loads keep the first setting
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


class TorchPredictor:
    backend = "torch"

    def __init__(self, artifact: Path, output: str = "probability", **_: Any) -> None:
        self.artifact = Path(artifact)
        self.output: OutputKind = check_output(output, self.artifact)
        inspect_archive(self.artifact)  # before torch reads a byte of it
        self.kind = "torchscript"  # the only kind that gets through
        import torch  # lazy: ~200 MB RSS, paid only by torch servers

        _one_thread(torch)
        self._torch = torch
        self.module = torch.jit.load(str(artifact), map_location="cpu")
        check_operations(torch, self.module, self.artifact)  # before the model ever runs
        self.module.eval()
        self._width = _first_weight_width(self.module)
        if self._width is None:
            raise BundleError(
                f"Cannot tell how many features {str(artifact)!r} takes.",
                hint="its first layer should be a Linear (weight of shape (out, features)).",
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


def check_operations(torch: Any, module: Any, artifact: Path) -> None:
    """Refuse a loaded TorchScript module if anything it can run reaches outside the process."""
    for where, graph in _graphs(module):
        g = graph.copy()
        torch._C._jit_pass_inline(g)  # calls into submodules and TorchScript classes become their bodies
        for kind in _kinds(torch, g):
            why = _REFUSED_OPS.get(kind)
            if why is None and not kind.startswith(_ALLOWED_NAMESPACES):
                why = "is not a plain tensor operation"
            if why is not None:
                raise BundleError(
                    f"{str(artifact)!r}: {where} uses {kind}, which {why}; xylen serves models that compute "
                    "on tensors only.",
                    hint="if you did not build this model yourself, do not use it; otherwise script or trace "
                    f"only the forward computation: {SAVE_AS_TORCHSCRIPT}.",
                )


def _graphs(module: Any) -> Iterator[tuple[str, Any]]:
    """Every method and forward hook of every submodule (what a call of the model can reach)."""
    for qualname, sub in module.named_modules():
        c = sub._c
        prefix = f"{qualname}." if qualname else ""
        for name in c._method_names():
            yield f"method {prefix}{name}", c._get_method(name).graph
        for hook in [*c._get_forward_pre_hooks(), *c._get_forward_hooks()]:
            yield f"hook {prefix}{hook.name}", hook.graph


def _kinds(torch: Any, graph: Any) -> Iterator[str]:
    """Node kinds in ``graph``, its blocks and its subgraphs (torch.jit.fork keeps its body in a subgraph)."""
    stack = [graph]  # graphs and blocks: both have nodes()
    while stack:
        for node in stack.pop().nodes():
            yield node.kind()
            stack.extend(node.blocks())
            for attr in node.attributeNames():
                kind = node.kindOf(attr)
                subgraphs = [node.g(attr)] if kind == "g" else list(node.gs(attr)) if kind == "gs" else []
                for sub in subgraphs:
                    torch._C._jit_pass_inline(sub)
                    stack.append(sub)


def _first_weight_width(module: Any) -> int | None:
    for _name, p in module.named_parameters():
        if p.dim() == 2:
            return int(p.shape[1])
    return None
