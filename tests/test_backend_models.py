"""Lossless round trip on every model with a floating initializer in the
test data shipped inside the `onnx` wheel (onnx/backend/test/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnx_l2c
from helpers import assert_bit_identical, run_all_paths, run_plain

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


def test_enough_models_found():
    assert len(MODELS) >= 50, [str(m) for m in MODELS]


@pytest.mark.parametrize("path", MODELS, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}"
                         if p.name == "model.onnx" else p.stem)
def test_lossless_round_trip(path: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    feeds, refs = _inputs_and_refs(path, rng)
    expected = run_plain(path, feeds)
    out = tmp_path / "small.onnx"
    result = onnx_l2c.compress(path, out, preset="lossless", min_elements=1)
    assert result.tensors
    outputs = run_all_paths(out, tmp_path, feeds)
    for how, got in outputs.items():
        assert_bit_identical(expected, got, f"{path.name} via {how}")
    # As close to the stored reference outputs as the original model is.
    for ref, orig, fast in zip(refs, expected, outputs["fast"]):
        if ref.shape == np.shape(orig) and ref.dtype.kind == "f":
            dev_orig = np.max(np.abs(np.asarray(orig, np.float64) - ref), initial=0.0)
            dev_fast = np.max(np.abs(np.asarray(fast, np.float64) - ref), initial=0.0)
            assert dev_fast <= dev_orig
