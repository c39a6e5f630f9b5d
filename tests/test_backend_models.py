"""Lossless round trip on every model with a floating initializer in the
test data shipped inside the `onnx` wheel (onnx/backend/test/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper, version_converter
from onnx.reference import ReferenceEvaluator

import onnx_l2c
from helpers import (assert_bit_identical, assert_close, decoded_by_custom_op, run_all_paths, run_custom_op,
                     run_fast, run_plain)

ROOT = Path(onnx.__file__).parent / "backend" / "test" / "data"
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def _models() -> list[Path]:
    found = []
    for path in sorted(ROOT.rglob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        if any(t.data_type in FLOATS for t in model.graph.initializer):
            found.append(path)
    return found


MODELS = _models()


def _inputs_and_refs(path: Path, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in inits]
    data_set = path.parent / "test_data_set_0"
    if path.name == "model.onnx" and data_set.is_dir():
        feeds = {}
        for v, pb in zip(graph_inputs, sorted(data_set.glob("input_*.pb"))):
            feeds[v.name] = numpy_helper.to_array(onnx.load_tensor(str(pb)))
        refs = [numpy_helper.to_array(onnx.load_tensor(str(pb))) for pb in sorted(data_set.glob("output_*.pb"))]
        return feeds, refs
    feeds = {}
    for v in graph_inputs:  # light_* models: inputs of the declared shape
        shape = [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
        feeds[v.name] = rng.standard_normal(shape).astype(dtype)
    refs = [numpy_helper.to_array(onnx.load_tensor(str(pb)))
            for pb in sorted(path.parent.glob(path.stem + "_output_*.pb"))]
    return feeds, refs


def _runnable(path: Path, tmp_path: Path, feeds: dict[str, np.ndarray]) -> tuple[Path, list[np.ndarray]]:
    """The model and its onnxruntime outputs; models of an opset onnxruntime no
    longer implements (e.g. BatchNormalization-6) are upgraded to opset 13 first."""
    try:
        return path, run_plain(path, feeds)
    except Exception as exc:
        if "NOT_IMPLEMENTED" not in str(exc):
            raise
    upgraded = version_converter.convert_version(onnx.load(str(path)), 13)
    target = tmp_path / "upgraded.onnx"
    onnx.save(upgraded, str(target))
    try:
        return target, run_plain(target, feeds)
    except Exception as exc:
        if "PRelu" not in str(exc):
            raise
    return path, None  # old PRelu broadcasting that onnxruntime rejects at any opset


def test_enough_models_found():
    assert len(MODELS) >= 50, [str(m) for m in MODELS]


@pytest.mark.parametrize("path", MODELS, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}"
                         if p.name == "model.onnx" else p.stem)
def test_lossless_round_trip(path: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    feeds, refs = _inputs_and_refs(path, rng)
    path, expected = _runnable(path, tmp_path, feeds)
    out = tmp_path / "small.onnx"
    result = onnx_l2c.compress(path, out, preset="lossless", min_elements=1)
    assert result.tensors
    if expected is None:
        # onnxruntime cannot run this model at all: compare with onnx's reference
        # evaluator through decompress, and check that both load paths fail
        # exactly like the original does.
        plain = tmp_path / "plain.onnx"
        onnx_l2c.decompress(out, plain)
        reference = ReferenceEvaluator(str(path)).run(None, feeds)
        assert_bit_identical(reference, ReferenceEvaluator(str(plain)).run(None, feeds), f"{path.name} decompressed")
        with pytest.raises(Exception) as original_error:
            run_plain(path, feeds)
        for runner in (run_fast, run_custom_op):
            with pytest.raises(Exception) as error:
                runner(out, feeds)
            assert type(error.value) is type(original_error.value)
        return
    outputs = run_all_paths(out, tmp_path, feeds)
    assert_bit_identical(expected, outputs["fast"], f"{path.name} via the fast loader")
    assert_bit_identical(expected, outputs["decompressed"], f"{path.name} decompressed")
    assert_close(expected, outputs["custom_op"], f"{path.name} via the custom op")
    original = onnx.load(str(path))
    weights = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    for name, array in decoded_by_custom_op(out).items():
        assert array.tobytes() == weights[name].astype(array.dtype).tobytes(), f"{path.name}: {name} by the custom op"
    # As close to the stored reference outputs as the original model is.
    for ref, orig, fast in zip(refs, expected, outputs["fast"]):
        if ref.shape == np.shape(orig) and ref.dtype.kind == "f":
            dev_orig = np.max(np.abs(np.asarray(orig, np.float64) - ref), initial=0.0)
            dev_fast = np.max(np.abs(np.asarray(fast, np.float64) - ref), initial=0.0)
            assert dev_fast <= dev_orig
