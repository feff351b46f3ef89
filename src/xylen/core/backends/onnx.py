"""ONNX models through onnxruntime: one intra-op and one inter-op thread, CPUExecutionProvider.

Output convention (manifest field ``output``, default ``"probability"``): the model's first tensor output
(``probabilities`` when there is one) is either a probability -- shape (n,), (n, 1), or (n, 2) whose column 1 is
the positive class -- or, with ``output: "logit"``, a raw score turned into a probability by a sigmoid (one
column) or a softmax (two columns). A ZipMap output (a list of dicts) is refused: convert with ``zipmap=False``.

The input dtype follows the model: ``tensor(float)`` gets float32, ``tensor(double)`` float64. Models that
`xylen models export` writes take float64, because LightGBM compares features with its split thresholds in
double precision and float32 inputs cannot reproduce those decisions (see core/convert.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from xylen.core.errors import BundleError

OutputKind = Literal["probability", "logit"]
OUTPUT_KINDS = ("probability", "logit")
_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


def check_output(kind: str, artifact: Path) -> OutputKind:
    """The manifest's ``output`` convention, validated."""
    if kind not in OUTPUT_KINDS:
        raise BundleError(
            f"The manifest of {str(artifact)!r} has output {kind!r}.", hint=f"use one of: {', '.join(OUTPUT_KINDS)}."
        )
    return kind  # type: ignore[return-value]


def to_probability(y: np.ndarray, output: OutputKind, source: str) -> np.ndarray:
    """Positive-class probability per row from a model's raw output, by the manifest's convention."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 1:
        return 1.0 / (1.0 + np.exp(-y)) if output == "logit" else y
    if y.ndim == 2 and y.shape[1] == 2:
        if output == "logit":  # softmax column 1 of two logits, written as a stable sigmoid of their difference
            return 1.0 / (1.0 + np.exp(y[:, 0] - y[:, 1]))
        return y[:, 1]
    raise BundleError(
        f"{source} returns shape {tuple(y.shape)}; xylen serves binary classifiers.",
        hint="export one probability or logit per row, shape (n,), (n, 1) or (n, 2).",
    )


class OnnxPredictor:
    backend = "onnx"

    def __init__(self, artifact: Path, output: str = "probability", **_: Any) -> None:
        import onnxruntime as ort  # lazy: only ONNX servers pay for it

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # one request = one core; concurrency comes from the server, not the op
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.artifact = Path(artifact)
        self.session = ort.InferenceSession(str(artifact), sess_options=opts, providers=["CPUExecutionProvider"])
        self.output: OutputKind = check_output(output, self.artifact)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise BundleError(
                f"{str(artifact)!r} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}).",
                hint="xylen feeds one (n, features) matrix; export the model with a single input.",
            )
        inp = inputs[0]
        if inp.type not in _DTYPES:
            raise BundleError(
                f"{str(artifact)!r} takes {inp.type}; xylen feeds float or double.",
                hint="export the model with a float32 (or float64) input.",
            )
        width = inp.shape[-1] if len(inp.shape) == 2 else None
        if not isinstance(width, int):
            raise BundleError(
                f"{str(artifact)!r} input {inp.name!r} has shape {inp.shape}, no fixed feature width.",
                hint="export it with a 2-D input whose second dimension is the feature count.",
            )
        self._input, self._dtype, self._n = inp.name, _DTYPES[inp.type], width
        self._out = self._pick_output()

    def _pick_output(self) -> str:
        outs = self.session.get_outputs()
        tensors = [o for o in outs if o.type in _DTYPES]
        named = [o for o in tensors if o.name == "probabilities"]
        if named or tensors:
            return (named or tensors)[0].name
        kinds = ", ".join(f"{o.name}: {o.type}" for o in outs)
        raise BundleError(
            f"{str(self.artifact)!r} has no float tensor output ({kinds}).",
            hint="a ZipMap output is not supported; convert classifiers with zipmap=False.",
        )

    def num_feature(self) -> int:
        return self._n

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=self._dtype)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        (y,) = self.session.run([self._out], {self._input: X})
        return to_probability(y, self.output, f"ONNX model {self.artifact.name!r}")
