"""Transform-domain decorrelation: the basis, the error identity, real payloads
through every load path, and the allocator choosing it only where it wins."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from builders import _model, tensor
from helpers import native_decode, run_all_paths, run_fast, run_plain, save
import onnx_l2c
from onnx_l2c.codec import reconstruct, serialize
from onnx_l2c.graph.model import find_weights
from onnx_l2c.passes import TensorInput, decorrelate
from onnx_l2c.measure.layers import LayerStats, layer_view


def _low_rank_embedding(rng, rows=3000, cols=48, rank=6) -> onnx.ModelProto:
    """A Gather table whose rows live near a low-dimensional subspace (like
    trained embeddings): decorrelation concentrates it in a few coefficients."""
    table = (rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols))
             + 0.05 * rng.standard_normal((rows, cols))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["y"])], "emb",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cols])], [tensor("E", table)])
    return _model(graph)


def _weight(model: onnx.ModelProto, name: str):
    w = next(w for w in find_weights(model, 1).weights if w.name == name)
    from onnx_l2c.graph.model import tensor_bits

    return w, TensorInput(w.name, w.dtype, w.shape, tensor_bits(w.tensor, Path(".")), w.channel_axis)


@pytest.mark.parametrize("whitened", [False, True])
def test_transform_recipe_decodes_natively_bit_for_bit(rng, whitened):
    d, rows = 24, 200
    w = rng.standard_normal((d, rows)).astype(np.float32)  # MatMul weight (K=d, N=rows): layout 1
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", rows])], [tensor("W", w)])
    model = _model(graph)
    ref, t = _weight(model, "W")
    view = layer_view(ref)
    x = rng.standard_normal((500, d)) @ rng.standard_normal((d, d))
    stats = LayerStats(view, hessian=(x.T @ x / 500)[None])
    fitted = decorrelate.fit_basis(t, stats, view, whitened)
    q = decorrelate.quantize_transform(t, decorrelate.TransformParams(0.05, whitened), stats, fitted)
    assert [type(s).__name__ for s in q.recipe.stages] == ["EntropyStage", "AffineStage", "TransformStage"]
    assert np.array_equal(native_decode(serialize(q.recipe)).view(np.uint32),
                          np.asarray(reconstruct(q.recipe)).view(np.uint32))
    rel = np.linalg.norm(np.asarray(reconstruct(q.recipe)) - w) / np.linalg.norm(w)
    assert rel < 0.05


def test_whitened_coefficient_error_is_the_output_error(rng, monkeypatch):
    """With B = Vᵀ·H^(-1/2), the squared error of the (whitened) coefficients
    equals tr(ΔM·H·ΔMᵀ): the property that makes one step size optimal."""
    monkeypatch.setattr(decorrelate, "WHITEN_DAMPING", 0.0)
    d, rows = 16, 120
    w = rng.standard_normal((rows, d)).astype(np.float32)  # Gemm transB=1 weight (N, K): layout 0
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, rows])], [tensor("W", w)])
    ref, t = _weight(_model(graph), "W")
    view = layer_view(ref)
    x = rng.standard_normal((4000, d)) @ (np.eye(d) + 0.5 * rng.standard_normal((d, d)))
    h = x.T @ x / len(x)
    stats = LayerStats(view, hessian=h[None])
    fitted = decorrelate.fit_basis(t, stats, view, whitened=True)
    delta_c = 0.01 * rng.standard_normal(fitted.coefficients.shape)
    delta_m = delta_c @ fitted.basis.astype(np.float64)
    output_error = float(np.einsum("rc,cd,rd->", delta_m, h, delta_m))
    coefficient_error = float(((delta_c / fitted.scale[None, :]) ** 2).sum())
    assert output_error == pytest.approx(coefficient_error, rel=2e-2)


def test_allocator_picks_the_transform_where_it_wins(tmp_path: Path, rng):
    model_path = save(_low_rank_embedding(rng), tmp_path / "emb.onnx")
    ids = [{"ids": rng.integers(0, 3000, 64)} for _ in range(16)]
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    result = onnx_l2c.compress(model_path, out, target_ratio=12, calibration_data=ids,
                               methods="rounding,mixed,decorrelate", report=report)
    assert abs(result.ratio / 12 - 1) <= 0.03
    row = json.loads(report.read_text())["tensors"][0]
    assert row["params"]["transform"] in ("klt", "whitened_klt")
    baseline = onnx_l2c.compress(model_path, tmp_path / "plain.onnx", target_ratio=12, calibration_data=ids,
                                 methods="rounding,mixed")
    feeds = {"ids": np.arange(3000)}
    ref = run_plain(model_path, feeds)[0]
    outs = run_all_paths(out, tmp_path, feeds)
    err_t = float(((outs["fast"][0] - ref) ** 2).mean())
    err_b = float(((run_fast(tmp_path / "plain.onnx", feeds)[0] - ref) ** 2).mean())
    assert err_t < 0.5 * err_b  # at the same size, much closer
    assert baseline.output_bytes == pytest.approx(result.output_bytes, rel=0.03)
    for name, got in outs.items():
        np.testing.assert_allclose(got[0], outs["fast"][0], rtol=1e-5, atol=1e-6, err_msg=name)


def test_transform_is_not_used_where_the_basis_costs_more(tmp_path: Path, rng):
    w = rng.standard_normal((64, 64)).astype(np.float32)  # square: a 64×64 basis never pays off
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "sq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], [tensor("W", w)])
    path = save(_model(graph), tmp_path / "sq.onnx")
    report = tmp_path / "r.json"
    onnx_l2c.compress(path, tmp_path / "o.onnx", target_ratio=6, methods="mixed,decorrelate", report=report)
    assert "transform" not in (json.loads(report.read_text())["tensors"][0]["params"] or {})
