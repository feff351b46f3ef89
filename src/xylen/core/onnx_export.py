"""`xylen models export`: a LightGBM bundle to a new ONNX bundle that answers exactly like LightGBM.

The new bundle is built in ``Registry.stage``, verified with ``load_bundle`` exactly as a server would, and only
then published (one rename), so a failure at any step leaves nothing visible in the registry.

LightGBM -> ONNX goes through onnxmltools' ``convert_lightgbm`` (zipmap=False) and is then made exact:
LightGBM decides every split as ``double(x) <= double(threshold)`` (NaN read as 0.0 unless the split tracks
missing values), while the converter stores float32 thresholds for a float32 input. On xylen's own features that
moves rows across splits -- e.g. ``dow_sin`` holds pairs like sin(a) and sin(pi - a) that differ in the 16th
digit and LightGBM splits between them -- and changes probabilities by up to ~0.13. So the converted
TreeEnsembleClassifier is rewritten to ai.onnx.ml opset 3 with double thresholds and leaf values
(``*_as_tensor``), a float64 input, and LightGBM's NaN rule per split; the result matches
``Booster.predict`` to float32 output precision (~1e-7), checked on every export before anything is published.
"""

from __future__ import annotations

import shutil
import time
from importlib.metadata import version as version_of
from pathlib import Path
from typing import Any

import numpy as np

from xylen.core import featuresets
from xylen.core.backends import load_predictor
from xylen.core.bundle import artifact_info, load_bundle, make_golden, new_manifest, outputs_of, write_manifest
from xylen.core.convert import ARTIFACTS, ModelIOResult
from xylen.core.errors import BundleError, ConfigError
from xylen.core.registry import Registry, check_name

EXPORT_TOLERANCE = 1e-5


def _reference_nodes(tree: dict[str, Any]) -> dict[int, tuple[Any, ...]]:
    """Node id -> (feature, threshold, nan_goes_left, left, right) or (leaf value,), numbered like onnxmltools:
    the root is 0 and a split numbers its two children when it is visited, before descending left, then right."""
    nodes: dict[int, tuple[Any, ...]] = {}
    counter = iter(range(1, 1 << 31))
    stack = [(tree, 0)]
    while stack:
        node, nid = stack.pop()
        if "leaf_value" in node:
            nodes[nid] = (float(node["leaf_value"]),)
            continue
        if node["decision_type"] != "<=":
            raise ConfigError(
                "The model has categorical splits, which the ONNX export does not support.",
                hint="serve it with the lightgbm backend.",
            )
        thr = float(node["threshold"])
        missing = node["missing_type"]
        if missing == "Zero":
            raise ConfigError(
                "The model treats zeros as missing values (zero_as_missing), which an ONNX tree "
                "ensemble cannot express.",
                hint="serve it with the lightgbm backend.",
            )
        nan_left = bool(node["default_left"]) if missing == "NaN" else thr >= 0.0  # "None": NaN is read as 0.0
        left, right = next(counter), next(counter)
        nodes[nid] = (int(node["split_feature"]), thr, nan_left, left, right)
        # depth first, left subtree first: push right below left
        stack.extend([(node["right_child"], right), (node["left_child"], left)])
    return nodes


# LightGBM reads |x| <= kZeroThreshold (1e-35f, as a double) as exactly 0.0 when it predicts from a dense row.
_LGB_ZERO_THRESHOLD = float(np.float32(1e-35))


def _zero_tiny_inputs(model: Any, tree_node: Any, helper: Any, numpy_helper: Any) -> None:
    """Put LightGBM's input rule in front of the trees: where |x| <= 1e-35, use 0.0 (NaN stays NaN)."""
    src = tree_node.input[0]
    zeroed = f"{src}_lgb_zeroed"
    model.graph.initializer.extend(
        [
            # |x| < nextafter(t) is |x| <= t (opset 9 has no LessOrEqual), and is False for NaN, which stays NaN
            numpy_helper.from_array(np.array(np.nextafter(_LGB_ZERO_THRESHOLD, np.inf)), name="lgb_zero_below"),
            numpy_helper.from_array(np.array(0.0), name="lgb_zero"),
        ]
    )
    pre = [
        helper.make_node("Abs", [src], [f"{src}_abs"]),
        helper.make_node("Less", [f"{src}_abs", "lgb_zero_below"], [f"{src}_tiny"]),
        helper.make_node("Where", [f"{src}_tiny", "lgb_zero", src], [zeroed]),
    ]
    tree_node.input[0] = zeroed
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(pre + nodes)


def require_onnx() -> None:
    """ConfigError naming the extra to install when onnx, onnxmltools or onnxruntime cannot be imported."""
    try:
        import onnx  # noqa: F401
        import onnxmltools  # noqa: F401
        import onnxruntime  # noqa: F401  (every export is checked against LightGBM with it)
    except ImportError as exc:  # ModuleNotFoundError, or an installed package that fails to import
        raise ConfigError(
            f"ONNX export needs {exc.name or str(exc)!r}, which is not installed (or does not import).",
            hint="pip install 'xylen[onnx]' (onnx, onnxmltools and onnxruntime).",
        ) from None


def booster_to_onnx(booster: Any) -> Any:
    """An exact ONNX model (float64 input ``input``, output ``probabilities``) of a binary LightGBM booster."""
    require_onnx()
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    dump = booster.dump_model()
    objective = str(dump.get("objective", ""))
    if not objective.startswith(("binary", "cross_entropy")) or int(dump.get("num_class", 1)) != 1:
        raise ConfigError(
            f"Only binary classifiers can be exported to ONNX; this model's objective is {objective.split(' ')[0]!r}.",
            hint="serve it with the lightgbm backend.",
        )
    n = booster.num_feature()
    model = convert_lightgbm(
        booster, initial_types=[("input", FloatTensorType([None, n]))], zipmap=False, target_opset=15
    )
    ref = {i: _reference_nodes(t["tree_structure"]) for i, t in enumerate(dump["tree_info"])}
    (node,) = [nd for nd in model.graph.node if nd.op_type == "TreeEnsembleClassifier"]
    att = {a.name: a for a in node.attribute}
    get = helper.get_attribute_value
    tree_ids, node_ids, feats = get(att["nodes_treeids"]), get(att["nodes_nodeids"]), get(att["nodes_featureids"])
    values, modes = get(att["nodes_values"]), get(att["nodes_modes"])
    thresholds, tracks = np.zeros(len(node_ids)), list(get(att["nodes_missing_value_tracks_true"]))
    for i, (t, nid) in enumerate(zip(tree_ids, node_ids)):
        r = ref[t].get(nid)
        if r is None or (len(r) == 1) != (modes[i] == b"LEAF"):
            raise BundleError(
                f"ONNX conversion: tree {t} node {nid} does not match the LightGBM dump.",
                hint="the installed onnxmltools numbers nodes differently; report this.",
            )
        if len(r) == 5:
            if r[0] != feats[i] or np.float32(r[1]) != np.float32(values[i]):
                raise BundleError(
                    f"ONNX conversion: split {t}/{nid} does not match the LightGBM dump.",
                    hint="the installed onnxmltools numbers nodes differently; report this.",
                )
            thresholds[i], tracks[i] = r[1], int(r[2])
    leaves = np.array([ref[t][nid][0] for t, nid in zip(get(att["class_treeids"]), get(att["class_nodeids"]))])
    if not np.array_equal(leaves.astype(np.float32), np.asarray(get(att["class_weights"]), dtype=np.float32)):
        raise BundleError(
            "ONNX conversion: leaf values do not match the LightGBM dump.",
            hint="the installed onnxmltools numbers nodes differently; report this.",
        )
    for name in ("nodes_values", "class_weights", "nodes_missing_value_tracks_true"):
        node.attribute.remove(att[name])
    node.attribute.extend(
        [
            helper.make_attribute("nodes_values_as_tensor", numpy_helper.from_array(thresholds)),
            helper.make_attribute("class_weights_as_tensor", numpy_helper.from_array(leaves)),
            helper.make_attribute("nodes_missing_value_tracks_true", tracks),
        ]
    )
    for op in model.opset_import:
        if op.domain == "ai.onnx.ml":
            op.version = max(op.version, 3)  # *_as_tensor attributes need ai.onnx.ml opset 3
    _zero_tiny_inputs(model, node, helper, numpy_helper)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    onnx.checker.check_model(model)
    return model


def check_rows(golden: np.ndarray, n_random: int = 256, seed: int = 0) -> np.ndarray:
    """Rows for the export's differential check: the golden rows, then perturbed copies with NaN and +-inf."""
    rng = np.random.default_rng(seed)
    base = golden[rng.integers(0, len(golden), n_random)]
    noisy = base * (1 + rng.normal(0, 0.05, base.shape)) + rng.normal(0, 1e-3, base.shape)
    mask = rng.random(noisy.shape)
    noisy[mask < 0.03] = np.nan
    noisy[(mask >= 0.03) & (mask < 0.04)] = np.inf
    noisy[(mask >= 0.04) & (mask < 0.05)] = -np.inf
    return np.vstack([golden, noisy, np.zeros((1, golden.shape[1]))])


def export_onnx(
    registry: Registry,
    name: str,
    version: str | None = None,
    *,
    new_name: str | None = None,
    out: Path | None = None,
    promote: bool = False,
    primary_only: bool = False,
) -> ModelIOResult:
    """Convert a LightGBM bundle to a new ONNX bundle, registered as the next version of ``new_name``.

    An ONNX bundle holds one model: a bundle with extra heads is refused (ConfigError naming the outputs it would
    lose) unless ``primary_only`` says to export its primary model alone."""
    t0 = time.perf_counter()
    require_onnx()
    name = registry.resolve_name(name)
    version = version or registry.current_path(name).name
    src = load_bundle(registry.path(name, version))
    if src.manifest.heads and not primary_only:
        m = src.manifest
        kept = outputs_of(m.model_copy(update={"heads": []}))  # what the primary model alone answers
        lost = [f for f in outputs_of(m) if f not in kept]
        raise ConfigError(
            f"{name} {version} has {len(m.heads)} extra head(s) ({', '.join(lost)}) beside its probability; an "
            "ONNX bundle holds one model, so the export would serve without them.",
            hint=f"serve the LightGBM bundle (it answers every head), or `xylen models export {name} {version} "
            "--primary-only` for an ONNX bundle of the primary model alone.",
        )
    if src.backend != "lightgbm":
        raise ConfigError(
            f"{name} {version} is a {src.backend} bundle; only lightgbm bundles export to ONNX.",
            hint="pick a lightgbm version: `xylen models list`.",
        )
    target = check_name(new_name or f"{name}-onnx")
    if out is not None and out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out folder {str(out)!r} is not empty.", hint="name a new or empty folder.")
    booster = src.predictor.booster  # type: ignore[attr-defined]
    tc = time.perf_counter()
    model = booster_to_onnx(booster)
    seconds_convert = time.perf_counter() - tc
    g = src.manifest.golden
    golden = np.array([[np.nan if v is None else v for v in r] for r in g.rows], dtype=np.float64)
    with registry.stage(target) as staging:
        art = staging / ARTIFACTS["onnx"]
        art.write_bytes(model.SerializeToString())
        onnx_pred = load_predictor("onnx", art, output="probability")
        X = check_rows(golden)
        diff = float(np.max(np.abs(onnx_pred.predict(X) - booster.predict(X, num_threads=1))))
        if not diff <= EXPORT_TOLERANCE:
            raise BundleError(
                f"The ONNX model differs from {name} {version} by {diff:.3g} (> {EXPORT_TOLERANCE:g}) "
                f"on {len(X)} check rows.",
                hint="nothing was written; serve the lightgbm bundle.",
            )
        window = None if g.window is None else np.asarray(g.window)
        # the window's row by the bundle's own feature set (ohlcv-ctx-v1 reads days, not 49 candles)
        new_golden = make_golden(onnx_pred.predict, golden, window, src.features or featuresets.OHLCV_V2)
        m = src.manifest
        manifest = new_manifest(
            name=target,
            version="v0000",
            backend="onnx",
            artifact=artifact_info(art),
            feature_set=m.feature_set,
            label=m.label,
            symbol=m.symbol,
            interval=m.interval,
            training_window=m.training_window,
            profile=m.profile,
            params=m.params,
            metrics=m.metrics,
            output="probability",
            golden=new_golden,
            source={"name": name, "version": version, "backend": "lightgbm", "sha256": m.artifact.sha256},
            conversion={
                "tool": f"onnxmltools {version_of('onnxmltools')}",
                "seconds": round(seconds_convert, 3),
                "max_abs_diff": diff,
                "check_rows": len(X),
                "input": "float64",
            },
        )
        write_manifest(staging, manifest)
        load_bundle(staging)
        new_version = registry.publish(target, staging)
    bundle = registry.path(target, new_version)
    if out is not None:
        shutil.copytree(bundle, out, dirs_exist_ok=True)
    if promote:
        registry.promote(target, new_version)
    return ModelIOResult(
        name=target,
        version=new_version,
        bundle=bundle,
        backend="onnx",
        promoted=promote,
        seconds=time.perf_counter() - t0,
        max_abs_diff=diff,
        checked_rows=len(X),
        out=out,
        notes=[f"converted in {seconds_convert:.2f} s"],
    )
