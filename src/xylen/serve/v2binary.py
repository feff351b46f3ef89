"""The binary tensor data extension of the Open Inference Protocol v2 (KServe v2 / Triton ``binary_data``).

A request with the header ``Inference-Header-Content-Length: N`` is N bytes of JSON, then each input's raw
little-endian bytes in input order; the JSON gives each binary input's length in ``parameters.binary_data_size``
(and no ``data``). An output is answered in binary when it asks ``parameters.binary_data: true``, or when the
request asks ``parameters.binary_data_output: true`` and the output does not say otherwise; the answer is then the
JSON (its length in the same header) followed by the outputs' raw bytes, each output's length in its
``parameters.binary_data_size``. tritonclient's defaults (``set_data_from_numpy(x)``, ``InferRequestedOutput(name)``,
or no outputs named) send and ask exactly this.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from xylen.serve.decode import RequestError

HEADER = b"inference-header-content-length"  # ASGI header names are lower case
OCTETS = b"application/octet-stream"
ITEMSIZE = {"FP32": 4, "FP64": 8}
_LITTLE: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
_HINT = "hint: tritonclient's set_data_from_numpy(x) sends this; by hand, see the binary tensor data extension."


def split(body: bytes, header_length: bytes) -> tuple[dict[str, Any], memoryview]:
    """The JSON header object of a binary request and the bytes after it."""
    text = header_length[:40].decode("latin-1")
    if not header_length.isdigit() or len(header_length) > 18:
        raise RequestError(400, f"Inference-Header-Content-Length {text!r} is not a number of bytes. {_HINT}")
    n = int(header_length)
    if n > len(body):
        raise RequestError(
            400,
            f"Inference-Header-Content-Length is {n} but the body has only {len(body)} bytes: the JSON header "
            f"cannot be longer than the body. {_HINT}",
        )
    try:
        obj = orjson.loads(memoryview(body)[:n])
    except orjson.JSONDecodeError as exc:
        raise RequestError(
            400,
            f"The first {n} bytes of the body (Inference-Header-Content-Length) are not JSON ({exc}); they must be "
            f"the request's JSON object, the raw tensor bytes after them. {_HINT}",
        ) from None
    if not isinstance(obj, dict):
        raise RequestError(
            400,
            f"The first {n} bytes of the body are a JSON {type(obj).__name__}, not the request's "
            f"JSON object {{inputs: [...]}}. {_HINT}",
        )
    return obj, memoryview(body)[n:]


def binary_size(t: dict[str, Any], has_header: bool) -> int | None:
    """inputs[0].parameters.binary_data_size, checked; None when the input sends JSON ``data``."""
    params = t.get("parameters")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise RequestError(400, f"inputs[0].parameters must be an object, got {str(params)[:40]!r}.")
    size = params.get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise RequestError(400, f"inputs[0].parameters.binary_data_size {str(size)[:24]!r} is not a number of bytes.")
    if not has_header:
        raise RequestError(
            400,
            "inputs[0].parameters.binary_data_size is set but the request has no Inference-Header-Content-Length "
            f"header saying where the JSON ends and the tensor bytes begin; send it. {_HINT}",
        )
    if "data" in t:
        raise RequestError(400, "inputs[0] has both 'data' and parameters.binary_data_size; send the values one way.")
    return size


def read_tensor(raw: memoryview, size: int, dtype: str, shape: list[int]) -> np.ndarray:
    """The (rows, features) float64 matrix of a binary input of ``size`` bytes that must be all of ``raw``."""
    if size != len(raw):
        raise RequestError(
            400,
            f"inputs[0].parameters.binary_data_size is {size} bytes but {len(raw)} bytes follow the JSON header: "
            f"the binary_data_size of the inputs must add up to the bytes after it. {_HINT}",
        )
    need = shape[0] * shape[1] * ITEMSIZE[dtype]
    if size != need:
        raise RequestError(
            400,
            f"inputs[0].parameters.binary_data_size is {size} bytes; shape {shape} of {dtype} needs "
            f"{shape[0]} x {shape[1]} x {ITEMSIZE[dtype]} = {need} bytes (little-endian, row-major).",
        )
    X = np.frombuffer(raw, dtype=_LITTLE[dtype]).reshape(shape[0], shape[1])
    return np.ascontiguousarray(X, dtype=np.float64)


def no_binary_left(raw: memoryview, header: int) -> None:
    if len(raw):
        raise RequestError(
            400,
            f"{len(raw)} bytes follow the {header}-byte JSON header but no input names them in "
            f"parameters.binary_data_size. {_HINT}",
        )


def binary_outputs(obj: dict[str, Any], wanted: tuple[str, ...]) -> frozenset[str]:
    """The outputs of ``wanted`` the request asks to get as raw bytes."""
    params = obj.get("parameters")
    default = False
    if params is not None:
        if not isinstance(params, dict):
            raise RequestError(400, f"Field 'parameters' must be an object, got {str(params)[:40]!r}.")
        default = _flag(params.get("binary_data_output", False), "parameters.binary_data_output")
    asked: dict[str, bool] = {}
    outputs = obj.get("outputs")
    if isinstance(outputs, list):  # v2._requested has checked the names
        for i, o in enumerate(outputs):
            p = o.get("parameters") if isinstance(o, dict) else None
            if p is None:
                continue
            if not isinstance(p, dict):
                raise RequestError(400, f"outputs[{i}].parameters must be an object, got {str(p)[:40]!r}.")
            if "binary_data" in p:
                asked[o["name"]] = _flag(p["binary_data"], f"outputs[{i}].parameters.binary_data")
    return frozenset(f for f in wanted if asked.get(f, default))


def _flag(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise RequestError(400, f"{where} must be true or false, got {str(value)[:24]!r}.")
    return value


def encode(answer: dict[str, Any], binary: frozenset[str]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """``answer`` with the ``binary`` outputs' data moved after the JSON as FP64 little-endian bytes: the body and
    the response headers."""
    tail = []
    for out in answer["outputs"]:
        if out["name"] in binary:
            raw = np.asarray(out.pop("data"), dtype="<f8").tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
    head = orjson.dumps(answer)
    headers = [(b"content-type", OCTETS), (HEADER, str(len(head)).encode())]
    return b"".join([head, *tail]), headers
