"""Model files that would run code when loaded: refused before anything runs, on every path that loads them.

Each hostile archive is a real one (torch.jit.save / torch.export.save of a small Linear model) with a payload
planted where torch reads it: a pickle whose ``__reduce__`` creates a marker file, Python source torch execs,
or TorchScript that writes a file. ``test_pt2_payloads_are_live_in_torch`` shows torch itself runs every .pt2
payload, so the refusals below are tested against payloads that work. Every refusal: exit 4 naming the entry,
marker never created (in this process or the verify child), nothing registered.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import wait_for
from xylen.cli import app
from xylen.core.backends import load_predictor
from xylen.core.bundle import Golden, artifact_info, load_bundle, new_manifest, write_manifest
from xylen.core.errors import BundleError
from xylen.core.pickle_scan import looks_like_pickle, scan_pickle
from xylen.core.registry import Registry

torch = pytest.importorskip("torch")
runner = CliRunner()
N = 5


class Payload:
    """Unpickling this calls ``fn(*args)``: the marker file appears if anything ever unpickles it."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.fn, self.args


def opens(marker: Path) -> Payload:
    return Payload(open, str(marker), "w")


def shell(marker: Path) -> Payload:
    return Payload(os.system, f"touch {marker}")


class Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(N, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def torchscript(path: Path, module: Any = None, *, trace: bool = True) -> Path:
    m = (module or Linear()).eval()
    torch.jit.save(torch.jit.trace(m, torch.zeros(2, N)) if trace else torch.jit.script(m), str(path))
    return path


def exported(path: Path) -> Path:
    torch.manual_seed(0)
    prog = torch.export.export(Linear().eval(), (torch.zeros(2, N),), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(prog, str(path))
    return path


def rewrite(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None], add: dict[str, bytes] | None = None):
    """Copy a zip entry by entry; ``edit(name, data)`` returns new bytes, or None to keep them."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        root = zi.namelist()[0].split("/", 1)[0]
        for info in zi.infolist():
            data = zi.read(info)
            new = edit(info.filename[len(root) + 1 :], data)
            zo.writestr(info, data if new is None else new)
        for name, data in (add or {}).items():
            zo.writestr(f"{root}/{name}", data)
    return dst


def replace(entry: str, data: bytes) -> Callable[[str, bytes], bytes | None]:
    return lambda name, _old: data if name == entry else None


def edit_json(entry: str, change: Callable[[dict[str, Any]], None]) -> Callable[[str, bytes], bytes | None]:
    def edit(name: str, data: bytes) -> bytes | None:
        if name != entry:
            return None
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()

    return edit


def torch_save_zip(obj: Any, payload: Payload) -> bytes:
    """A torch.save zip of ``obj`` whose data.pkl is replaced by ``payload``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zi, zipfile.ZipFile(out, "w") as zo:
        for info in zi.infolist():
            data = pickle.dumps(payload, protocol=2) if info.filename.endswith("data.pkl") else zi.read(info)
            zo.writestr(info, data)
    return out.getvalue()


# -- .pt2: every place torch.export.load unpickles with weights_only=False, or execs -------------------------------
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE = "data/sample_inputs/model.pt"


def _pickled_weight(doc: dict[str, Any]) -> None:
    doc["config"]["linear.weight"]["use_pickle"] = True


def _pickled_constant(prefix: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        doc["config"]["planted"] = {
            "path_name": f"{prefix}0",
            "is_param": False,
            "use_pickle": True,
            "tensor_meta": None,
        }

    return change


def _guard(marker: Path) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        doc["guards_code"] = [f"open({str(marker)!r}, 'w') is not None"]

    return change


def _shape_expr(marker: Path) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        size = doc["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0]["as_expr"]
        size["expr_str"] = f"open({str(marker)!r}, 'w') and {size['expr_str']}"

    return change


PT2_CASES: dict[str, tuple[str | None, Callable[[Path, Path, Path], Path]]] = {
    # case: (the entry the refusal must name, or None for the general .pt2 refusal; builder(src, dst, marker))
    "weights use_pickle": (
        "data/weights/weight_0",
        lambda s, d, m: rewrite(
            rewrite(s, d.with_suffix(".tmp"), edit_json(WEIGHTS_CONFIG, _pickled_weight)),
            d,
            replace("data/weights/weight_0", pickle.dumps(opens(m), protocol=2)),
        ),
    ),
    "tensor constant use_pickle": (
        "data/constants/tensor_0",
        lambda s, d, m: rewrite(
            s,
            d,
            edit_json(CONSTANTS_CONFIG, _pickled_constant("tensor_")),
            {"data/constants/tensor_0": pickle.dumps(opens(m), protocol=2)},
        ),
    ),
    "opaque constant": (
        "data/constants/opaque_obj_0",
        lambda s, d, m: rewrite(
            s,
            d,
            edit_json(CONSTANTS_CONFIG, _pickled_constant("opaque_obj_")),
            {"data/constants/opaque_obj_0": pickle.dumps(shell(m), protocol=4)},
        ),
    ),
    "sample inputs (raw pickle)": (SAMPLE, lambda s, d, m: rewrite(s, d, replace(SAMPLE, pickle.dumps(opens(m))))),
    "sample inputs (torch.save zip)": (
        SAMPLE,
        lambda s, d, m: rewrite(s, d, replace(SAMPLE, torch_save_zip(((torch.zeros(2, N),), {}), opens(m)))),
    ),
    "legacy weights file": (
        "data/weights/model.pt",
        lambda s, d, m: rewrite(s, d, lambda n, b: None, {"data/weights/model.pt": torch_save_zip({}, opens(m))}),
    ),
    "legacy constants file": (
        "data/constants/model.pt",
        lambda s, d, m: rewrite(s, d, lambda n, b: None, {"data/constants/model.pt": pickle.dumps(opens(m))}),
    ),
    "guard code": (None, lambda s, d, m: rewrite(s, d, edit_json("models/model.json", _guard(m)))),
    "shape expression": (None, lambda s, d, m: rewrite(s, d, edit_json("models/model.json", _shape_expr(m)))),
}


@pytest.fixture(scope="module")
def good_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported(tmp_path_factory.mktemp("pt2") / "model.pt2")


def plant_pt2(case: str, good: Path, tmp_path: Path) -> tuple[Path, Path, str | None]:
    entry, build = PT2_CASES[case]
    marker = tmp_path / "MARKER"
    path = build(good, tmp_path / "planted.pt2", marker)
    return path, marker, entry


@pytest.mark.parametrize("case", list(PT2_CASES))
def test_pt2_payloads_are_live_in_torch(case, good_pt2, tmp_path):
    """Without xylen's check, torch.export.load (and .module()) runs each planted payload: the tests are real."""
    import warnings

    path, marker, _ = plant_pt2(case, good_pt2, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(Exception):  # most payloads break the load after they ran
            torch.export.load(str(path)).module()(torch.zeros(2, N))
    assert marker.exists(), case


def cli_import(home: Path, path: Path, *extra: str):
    """`xylen models import` of a logistic model (--output logit: unguarded, the planted ones would import)."""
    return runner.invoke(
        app,
        [
            "--home",
            str(home),
            "models",
            "import",
            str(path),
            "--backend",
            "torch",
            "--features",
            "a,b,c,d,e",
            "--name",
            "planted",
            "--output",
            "logit",
            *extra,
        ],
    )


def assert_refused(res: Any, home: Path, marker: Path, *say: str) -> None:
    assert res.exit_code == 4, res.output
    assert "Traceback" not in res.output and "internal error" not in res.output
    for s in say:
        assert s in res.output, res.output
    assert not marker.exists()
    assert not (home / "models" / "planted").exists()
    assert Registry(home / "models").names() == []


@pytest.mark.parametrize("case", list(PT2_CASES))
def test_pt2_payloads_are_refused_by_import(case, good_pt2, tmp_path):
    path, marker, entry = plant_pt2(case, good_pt2, tmp_path)
    res = cli_import(tmp_path / "home", path)
    if entry is None:
        assert_refused(res, tmp_path / "home", marker, "torch.export .pt2 archive", "torch.jit.save")
    else:
        assert_refused(res, tmp_path / "home", marker, f"entry 'model/{entry}'", "that imports")


def test_pt2_payload_refusal_names_the_import(good_pt2, tmp_path):
    path, marker, _ = plant_pt2("opaque constant", good_pt2, tmp_path)
    with pytest.raises(BundleError) as exc:
        load_predictor("torch", path)
    assert f"imports {os.system.__module__}.system" in exc.value.message  # posix.system: what the pickle names
    assert not marker.exists()


def test_good_pt2_is_refused_with_how_to_save_torchscript(good_pt2, tmp_path):
    res = cli_import(tmp_path / "home", good_pt2)
    assert_refused(res, tmp_path / "home", tmp_path / "none", "xylen does not load", "torch.jit.save(torch.jit.trace(")


# -- TorchScript: every pickle torch reads, load-time code, and code that reaches outside the process -------------
def _script_payloads(good: Path, tmp_path: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    def planted(name: str, entry: str, payload: bytes) -> tuple[Path, str]:
        return rewrite(good, tmp_path / f"{name}.pt", replace(entry, payload)), entry

    return {
        "data.pkl": planted("data", "data.pkl", pickle.dumps(shell(marker), protocol=2)),
        "data.pkl (protocol 5)": planted("data5", "data.pkl", pickle.dumps(opens(marker), protocol=5)),
        "constants.pkl": planted("constants", "constants.pkl", pickle.dumps(opens(marker), protocol=2)),
        "traced_inputs.pkl": planted("traced", "traced_inputs.pkl", pickle.dumps(opens(marker), protocol=2)),
        "debug_pkl": planted(
            "debug", next(n for n in _names(good) if n.endswith(".debug_pkl")), pickle.dumps(opens(marker))
        ),
    }


def _names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return [n.split("/", 1)[1] for n in zf.namelist()]


@pytest.fixture(scope="module")
def good_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return torchscript(tmp_path_factory.mktemp("pt") / "model.pt")


@pytest.mark.parametrize(
    "case", ["data.pkl", "data.pkl (protocol 5)", "constants.pkl", "traced_inputs.pkl", "debug_pkl"]
)
def test_torchscript_pickles_are_refused_by_import(case, good_pt, tmp_path):
    marker = tmp_path / "MARKER"
    path, entry = _script_payloads(good_pt, tmp_path, marker)[case]
    res = cli_import(tmp_path / "home", path)
    assert_refused(res, tmp_path / "home", marker, f"entry 'model/{entry}'", "holds a pickle that imports")


def test_a_second_spelling_of_an_entry_is_refused(good_pt, tmp_path):
    """torch's zip reader matches names regardless of case: a DATA.PKL could be what torch reads."""
    marker = tmp_path / "MARKER"
    path = rewrite(good_pt, tmp_path / "twice.pt", lambda n, b: None, {"DATA.PKL": pickle.dumps(opens(marker))})
    res = cli_import(tmp_path / "home", path)
    assert_refused(res, tmp_path / "home", marker, "'model/DATA.PKL' appears twice")


def test_a_zip_that_torch_would_read_as_something_else_is_refused(good_pt, tmp_path):
    """torch takes "PTMF" at offset 4 for a flatbuffer model (unchecked here); zipfile would still see the zip."""
    data = bytearray(good_pt.read_bytes())
    data[4:8] = b"PTMF"
    polyglot = tmp_path / "poly.pt"
    polyglot.write_bytes(bytes(data))
    with zipfile.ZipFile(polyglot) as zf:
        assert zf.read("model/data.pkl")  # still a readable zip to Python
    prepended = tmp_path / "prepended.pt"
    prepended.write_bytes(b"\0" * 64 + good_pt.read_bytes())
    for path in (polyglot, prepended):
        res = cli_import(tmp_path / "home", path)
        assert_refused(res, tmp_path / "home", tmp_path / "none", "not a TorchScript archive")


class SaveInForward(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(N, 1)
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.marker)
        return self.linear(x)


class MapsAFile(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(N, 1)
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.marker, True, 8, dtype=torch.uint8)
        return self.linear(x) + t.sum().to(torch.float32) * 0


class SetState(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(N, 1)
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        torch.save(torch.zeros(1), self.marker)


def _save_in_fork(x: torch.Tensor, marker: str) -> torch.Tensor:
    torch.save(x, marker)
    return x


class SaveInFork(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(N, 1)
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.jit.wait(torch.jit.fork(_save_in_fork, x, self.marker)))


def _pre_hook(module: torch.nn.Module, inputs: tuple[torch.Tensor]) -> None:
    torch.save(inputs[0], "/nonexistent-xylen-dir/hook.pt")


def _hooked(_marker: str) -> Any:
    m = Linear()
    m.register_forward_pre_hook(_pre_hook)
    return m


CODE_CASES = {
    "torch.save in forward": (SaveInForward, "method forward uses aten::save"),
    "torch.from_file in forward": (MapsAFile, "method forward uses aten::from_file"),
    "torch.save in a forked function": (SaveInFork, "method forward uses aten::save"),
    "torch.save in a forward pre-hook": (_hooked, "hook _pre_hook uses aten::save"),
    "torch.save in __setstate__": (SetState, "defines __setstate__"),
}


@pytest.mark.parametrize("case", list(CODE_CASES))
def test_torchscript_that_reaches_outside_is_refused(case, tmp_path):
    make, say = CODE_CASES[case]
    marker = tmp_path / "MARKER"
    path = torchscript(tmp_path / "code.pt", make(str(marker)), trace=False)
    assert not marker.exists()  # scripting and saving ran nothing
    res = cli_import(tmp_path / "home", path)
    assert_refused(res, tmp_path / "home", marker, say)


def test_code_under_another_spelling_is_checked_too(tmp_path):
    """torch reads code/x.py from an entry spelled CODE/x.py (unguarded, its __setstate__ runs while loading)."""
    marker = tmp_path / "MARKER"
    good = torchscript(tmp_path / "model.pt", SetState(str(marker)), trace=False)
    path = tmp_path / "cased.pt"
    with zipfile.ZipFile(good) as zi, zipfile.ZipFile(path, "w") as zo:
        for info in zi.infolist():
            data = zi.read(info)
            if info.filename.endswith(".py") and b"__setstate__" in data:  # the other code/ entries stay put
                info = zipfile.ZipInfo(info.filename.replace("/code/", "/CODE/"))
            zo.writestr(info, data)
    res = cli_import(tmp_path / "home", path)
    assert_refused(res, tmp_path / "home", marker, "entry 'model/CODE/", "defines __setstate__")


def test_quantized_torchscript_is_refused(tmp_path):
    """Packed quantized weights are native torchbind objects (their __setstate__ is C++), not plain tensors."""
    import warnings

    with warnings.catch_warnings():  # quantized tensors are deprecated in torch 2.13 (and warn so)
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(Linear().eval(), {torch.nn.Linear}, dtype=torch.qint8)
        path = torchscript(tmp_path / "q.pt", q, trace=False)
    res = cli_import(tmp_path / "home", path)
    assert_refused(res, tmp_path / "home", tmp_path / "none", "imports __torch__.torch.classes.quantized")


@pytest.mark.parametrize("trace", [True, False])
def test_good_torchscript_still_imports_and_predicts(tmp_path, trace):
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(N, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    path = torchscript(tmp_path / "good.pt", m, trace=trace)
    res = cli_import(tmp_path / "home", path, "--promote")
    assert res.exit_code == 0, res.output
    b = load_bundle(Registry(tmp_path / "home" / "models").current_path("planted"))
    X = np.random.default_rng(2).standard_normal((6, N))
    with torch.no_grad():
        want = torch.sigmoid(m.eval()(torch.tensor(X, dtype=torch.float32))).numpy()[:, 0]
    np.testing.assert_allclose(b.predict(X), want, atol=1e-6)


def test_torch_load_error_is_reported_with_its_text(good_pt, tmp_path):
    """torch's own load errors start with a newline; the message used to end in an empty ': '."""
    with zipfile.ZipFile(good_pt) as zf:
        data = zf.read("model/data.pkl")
    # the module's class now names a TorchScript class the archive's code does not define
    path = rewrite(good_pt, tmp_path / "nope.pt", replace("data.pkl", data.replace(b"__torch__", b"__torch__.nope", 1)))
    with pytest.raises(BundleError) as exc:
        load_predictor("torch", path)
    assert "torch could not load" in exc.value.message
    assert exc.value.message.split(": ", 1)[1].strip(), exc.value.message  # the reason itself is not empty


# -- the server: a bundle whose artifact is planted, with a correct sha256 ----------------------------------------
def planted_bundle(folder: Path, artifact: Path, backend: str = "torch") -> Path:
    folder.mkdir(parents=True)
    art = folder / ("model.txt" if backend == "lightgbm" else "model.pt")
    art.write_bytes(artifact.read_bytes())
    names = [f"f{i}" for i in range(N)]
    manifest = new_manifest(
        name="planted",
        version="v0001",
        backend=backend,
        artifact=artifact_info(art),  # the right sha256 and size: only reading the file can tell
        feature_set={"version": "external", "names": names},
        golden=Golden(rows=[[0.0] * N], outputs=[0.5]),
    )
    write_manifest(folder, manifest)
    return folder


def _served(good_pt: Path, good_pt2: Path, tmp_path: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    pt = _script_payloads(good_pt, tmp_path, marker)["data.pkl (protocol 5)"][0]
    pt2 = plant_pt2("sample inputs (raw pickle)", good_pt2, tmp_path)[0]
    lgb = tmp_path / "lgb.pkl"
    lgb.write_bytes(pickle.dumps(opens(marker), protocol=0))
    return {
        "torchscript data.pkl": (planted_bundle(tmp_path / "b1", pt), "entry 'model/data.pkl' holds a pickle"),
        "pt2 sample inputs": (planted_bundle(tmp_path / "b2", pt2), f"entry 'model/{SAMPLE}' holds a pickle"),
        "lightgbm model.txt": (planted_bundle(tmp_path / "b3", lgb, "lightgbm"), "not a complete LightGBM text"),
    }


@pytest.mark.parametrize("case", ["torchscript data.pkl", "pt2 sample inputs", "lightgbm model.txt"])
def test_serve_refuses_a_planted_bundle(case, good_pt, good_pt2, tmp_path):
    import warnings

    from xylen.core.settings import load_settings
    from xylen.serve.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    marker = tmp_path / "MARKER"
    folder, say = _served(good_pt, good_pt2, tmp_path, marker)[case]
    with pytest.raises(BundleError, match=re.escape(say)):
        load_bundle(folder)  # what the server runs in-process after the verify child
    settings = load_settings({"home": tmp_path / "home"}, environ={})
    # the real verify child runs first; a loopback Host sees the reason
    with TestClient(create_app(settings, model_path=folder), base_url="http://127.0.0.1") as client:

        def refused() -> bool:
            r = client.get("/health/ready")
            return r.status_code == 503 and say in r.text

        wait_for(refused, timeout=120, what="the refusal on /health/ready")
        assert client.post("/predict", json={"features": [0.0] * N}).status_code == 503
    assert not marker.exists()


# -- the static reader itself ----------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_scan_finds_the_import_in_every_protocol(protocol, tmp_path):
    data = pickle.dumps([1, {"a": shell(tmp_path / "m")}], protocol=protocol)
    scan = scan_pickle(data)
    assert scan.problem is None and scan.end == len(data)
    assert any(name.endswith(".system") for name in scan.imports), scan.imports
    assert looks_like_pickle(data)
    assert not (tmp_path / "m").exists()


def _ops(*parts: bytes) -> bytes:
    return b"\x80\x04" + b"".join(parts) + b"."


def _str(s: str) -> bytes:
    return b"\x8c" + bytes([len(s)]) + s.encode()  # SHORT_BINUNICODE


def test_scan_resolves_stack_global_through_the_memo():
    # 'os' and 'system' memoized, the stack emptied, then both fetched back: STACK_GLOBAL imports os.system
    data = _ops(_str("os"), b"\x94", _str("system"), b"\x94", b"0", b"0", b"h\x00", b"h\x01", b"\x93", b")R")
    scan = scan_pickle(data)
    assert scan.imports == ("os.system",) and scan.problem is None


def test_scan_refuses_what_it_cannot_resolve():
    # a STACK_GLOBAL over a value built at load time (a REDUCE result) cannot be read statically
    computed = _ops(b"cbuiltins\nstr\n", _str("os"), b"\x85R", _str("system"), b"\x93", b")R")
    assert "STACK_GLOBAL" in (scan_pickle(computed).problem or "")
    assert "extension code" in (scan_pickle(_ops(b"\x82\x01")).problem or "")  # EXT1
    assert "well-formed" in (scan_pickle(b"\x80\x02cos\nsys").problem or "")  # truncated
    assert "follow the end" in (scan_pickle(pickle.dumps(1) + b"junk").problem or "")


def test_lightgbm_text_and_onnx_are_not_pickles():
    model = (Path(__file__).parent.parent / "data" / "models").glob("*.txt")
    for path in model:
        assert not looks_like_pickle(path.read_bytes()), path
    assert not looks_like_pickle(b"\x08\x08\x12\x07pytorch")  # ONNX protobuf opening
