"""Micro-structured unification (passes/unify.py): block layouts, mode selection, the block
projection, ADMM refinement with the least-squares refit, forced entries in output-aware
rounding, the expand payload decoded natively, and the global allocation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper

from builders import conv
from helpers import native_decode, run_fast, run_plain, save
from onnx_l2c import BlockShape, L2CError
from onnx_l2c.codec import BlockMode, reconstruct, serialize
from onnx_l2c.measure.layers import LayerStats, LayerView
from onnx_l2c.passes import gptq
from onnx_l2c.config import CompressOptions
from onnx_l2c.passes.base import TensorContext, TensorInput, method, method_of
from onnx_l2c.passes.blocks import BlockLayout, BlockMetric, block_layout, project, select_modes
from onnx_l2c.passes.unify import UnifyParams, Unification, admm, quantize, unify_tensor


def _tensor(values: np.ndarray, channel_axis: int | None, dtype: int = TensorProto.FLOAT) -> TensorInput:
    storage = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    v = values.astype(storage)
    return TensorInput("W", dtype, v.shape, v.view(np.uint16 if dtype == TensorProto.FLOAT16 else np.uint32)
                       .reshape(-1), channel_axis)


def _layer(rng, rows=48, d=64):
    """A MatMul weight (d x rows) and the second moment of strongly correlated inputs."""
    mix = rng.standard_normal((d, d)) * 0.3 + np.eye(d)
    x = rng.standard_normal((6000, d)) @ mix
    h = (x.T @ x / len(x))[None]
    node = helper.make_node("MatMul", ["x", "W"], ["y"])
    view = LayerView("matmul", 1, rows, d, (d, rows), "x", node)
    return rng.laplace(size=(d, rows)) * 0.05, LayerStats(view, hessian=h), view


def test_block_layouts_run_along_input_channels():
    node = helper.make_node("Conv", ["x", "W"], ["y"])
    conv_view = LayerView("conv", 1, 16, 72, (16, 8, 3, 3), "x", node)
    w = _tensor(np.zeros((16, 8, 3, 3)), 0)
    assert block_layout(w, conv_view, BlockShape.B1X4) == BlockLayout(16, 8, 9, 4)
    assert block_layout(w, conv_view, BlockShape.KERNEL) == BlockLayout(128, 9, 1, 9)
    assert block_layout(w, conv_view, BlockShape.B1X16) == BlockLayout(16, 8, 9, 8)  # capped at the channels
    mm = LayerView("matmul", 1, 48, 64, (64, 48), "x", node)
    assert block_layout(_tensor(np.zeros((64, 48)), 1), mm, BlockShape.B1X8) == BlockLayout(1, 64, 48, 8)
    nk = LayerView("gemm_nk", 1, 48, 64, (48, 64), "x", node)
    assert block_layout(_tensor(np.zeros((48, 64)), 0), nk, BlockShape.B1X4) == BlockLayout(48, 64, 1, 4)
    assert block_layout(_tensor(np.zeros((48, 64)), 0), nk, BlockShape.KERNEL) is None  # no spatial kernel
    assert block_layout(_tensor(np.zeros(64), None), None, BlockShape.B1X4) is None  # not a matrix weight
    # no statistics (e.g. an LSTM's [directions, 4·hidden, input] weights): along the last axis
    assert block_layout(_tensor(np.zeros((1, 512, 128)), None), None, BlockShape.B1X4) == BlockLayout(512, 128, 1, 4)
    members, block_of = BlockLayout(1, 6, 2, 4).members()
    np.testing.assert_array_equal(members, [[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, -1, -1], [9, 11, -1, -1]])
    np.testing.assert_array_equal(block_of, [0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3])


def test_projection_onto_the_block_structure():
    v = np.array([0.5, -0.1, 0.3, -0.3, 2.0, 1.0, 0.2, 0.4])
    block_of = np.repeat(np.arange(4), 2)
    modes = np.array([BlockMode.UNIFY, BlockMode.PRUNE, BlockMode.KEEP, BlockMode.UNIFY])
    z = project(v, block_of, modes, np.full(4, 2))
    np.testing.assert_allclose(z, [0.3, -0.3, 0.0, 0.0, 2.0, 1.0, 0.3, 0.3])
    np.testing.assert_allclose(project(z, block_of, modes, np.full(4, 2)), z)  # idempotent


def test_selection_follows_the_exchange_rate(rng):
    w = rng.laplace(size=(400, 4)) * 0.1
    w[:50] = np.sign(rng.standard_normal((50, 4))) * 0.2  # blocks of one magnitude
    metric = BlockMetric(np.arange(1600).reshape(400, 4), None, None, (1600,))
    step = np.full(400, 0.02)
    free_rate = select_modes(w, step, metric, 0.0)  # only the error counts: no block loses accuracy
    rounds_to_zero = (np.abs(w) < 0.01).all(axis=1)
    assert ((free_rate[50:] == BlockMode.KEEP) | ((free_rate[50:] == BlockMode.PRUNE) & rounds_to_zero[50:])).all()
    modes = select_modes(w, step, metric, 1.0)
    assert (modes[:50] == BlockMode.UNIFY).all()  # exact: unifying costs no error and saves bits
    assert (select_modes(w, step, metric, 1e6) == BlockMode.PRUNE).all()  # rate is everything


def test_admm_and_refit_lower_the_output_error(rng):
    w, stats, view = _layer(rng)
    t = _tensor(w, 1)
    values = t.values.astype(np.float64)
    layout = block_layout(t, view, BlockShape.B1X4)
    members, block_of = layout.members()
    metric = BlockMetric(members, stats, view, t.shape)
    flat = values.reshape(-1)
    modes = select_modes(flat[members], np.full(members.shape[0], 0.1), metric, 1.0)
    assert 0.2 < (modes != BlockMode.KEEP).mean() < 0.95
    sizes = np.full(modes.size, 4)
    plain = project(flat, block_of, modes, sizes)
    refined = project(admm(flat, plain, block_of, modes, sizes, stats, view), block_of, modes, sizes)
    np.testing.assert_allclose(project(refined, block_of, modes, sizes), refined)  # on the structure
    err_plain = stats.weighted_error(plain.reshape(t.shape) - values)
    err_admm = stats.weighted_error(refined.reshape(t.shape) - values)
    assert err_admm < 0.9 * err_plain, (err_admm, err_plain)
    # the whole pipeline (selection, ADMM, refit, quantization) against no refinement
    with_admm = quantize(t, UnifyParams(0.5, BlockShape.B1X4, 1.0), stats, view)
    without = quantize(t, UnifyParams(0.5, BlockShape.B1X4, 1.0, admm=False), stats, view)
    assert with_admm.error < without.error


def test_forced_entries_keep_their_symbols_in_output_aware_rounding(rng):
    w, stats, view = _layer(rng)
    m = view.to_matrix(w)
    mask = rng.random(m.shape) < 0.3
    sym = rng.integers(-3, 4, m.shape).astype(np.int32)
    step = np.full(m.shape[:2], 0.02)
    q = gptq.gptq(m, stats.hessian, step, 0.0, 0.0, forced=(mask, sym))
    np.testing.assert_array_equal(q[mask], sym[mask])
    free = gptq.gptq(m, stats.hessian, step, 0.0, 0.0)
    assert not np.array_equal(q[~mask], free[~mask])  # the others compensate the forced error


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
@pytest.mark.parametrize("block", [BlockShape.B1X4, BlockShape.KERNEL])
def test_payload_decodes_natively_with_unified_blocks(rng, dtype, block):
    node = helper.make_node("Conv", ["x", "W"], ["y"])
    view = LayerView("conv", 1, 16, 72, (16, 8, 3, 3), "x", node)
    t = _tensor(rng.laplace(size=(16, 8, 3, 3)) * 0.1, 0, dtype)
    result = unify_tensor(t, UnifyParams(0.7, block, 2.0), None, view)
    payload = serialize(result.recipe)
    decoded = native_decode(payload)
    np.testing.assert_array_equal(decoded.view(np.uint8), reconstruct(result.recipe).view(np.uint8))
    counts = np.bincount(result.modes, minlength=3)
    assert counts[BlockMode.UNIFY] > 0 and counts[BlockMode.PRUNE] > 0 and counts[BlockMode.KEEP] > 0
    layout = block_layout(t, view, block)
    members, _ = layout.members()
    values = decoded.astype(np.float32).reshape(-1)[members]
    unified = values[result.modes == BlockMode.UNIFY]
    assert (np.abs(unified) == np.abs(unified[:, :1])).all() and (unified != 0).all()
    assert (values[result.modes == BlockMode.PRUNE] == 0).all()


def test_unification_method_and_bad_block():
    node = helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)
    view = LayerView("gemm_nk", 1, 8, 12, (8, 12), "x", node)
    t = _tensor(np.linspace(-1, 1, 96).reshape(8, 12), 0)
    ctx = TensorContext(None, view, CompressOptions(methods=("unify",)))
    unification = method("unify")
    assert isinstance(unification, Unification) and method_of(UnifyParams(0.5, BlockShape.B1X4)) is unification
    options = unification.candidates(t, ctx, lossless_bytes=10 ** 6)
    assert options and {o.params.block for o in options} == {BlockShape.B1X4, BlockShape.B1X8}  # no kernel: a Gemm
    recipe = unification.encode(t, UnifyParams(0.5, BlockShape.B1X4), ctx)
    assert np.array_equal(native_decode(serialize(recipe)).view(np.uint8), reconstruct(recipe).view(np.uint8))
    with pytest.raises(L2CError, match=r"block 'kernel' does not fit it; valid: 1x2, 1x4"):
        unify_tensor(t, UnifyParams(0.5, BlockShape.KERNEL), None, view)


def test_block_option_from_the_cli_table():
    from onnx_l2c.config import CompressOptions

    opts = CompressOptions.from_kwargs(target_ratio=8, methods="unify", block="1x8")
    assert opts.option("block") is BlockShape.B1X8
    with pytest.raises(L2CError, match=r"^option block: invalid choice '2x2' \(valid values: 1x2, 1x4, 1x8"):
        CompressOptions.from_kwargs(block="2x2")


def test_unify_in_the_global_allocation(tmp_path, rng):
    """`--methods unify` hits a size target with expand payloads only; the report counts the
    blocks per mode; beside rounding+mixed the allocator still meets the target."""
    import onnx_l2c
    from test_target import _deep_mlp, _samples

    model = save(_deep_mlp(rng), tmp_path / "deep.onnx")
    samples = _samples(rng)
    out, report = tmp_path / "unified.onnx", tmp_path / "unified.json"
    result = onnx_l2c.compress(model, out, target_ratio=10, calibration_data=samples, methods="unify",
                               block="1x4", report=report)
    assert abs(result.ratio / 10 - 1) <= 0.03
    doc = json.loads(report.read_text())
    assert {t["method"] for t in doc["tensors"]} == {"unify"}
    assert doc["tensors"][0]["params"]["block"] == "1x4"
    summary = doc["plan"]["unify"]
    assert summary["tensors"] == 3 and summary["unify_blocks"] > 0 and summary["prune_blocks"] > 0
    held_out = {"x": rng.standard_normal((100, 128)).astype(np.float32)}
    ref, got = run_plain(model, held_out)[0], run_fast(out, held_out)[0]
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.8
    both = onnx_l2c.compress(model, tmp_path / "both.onnx", target_ratio=10, calibration_data=samples,
                             methods="rounding,mixed,unify")
    assert abs(both.ratio / 10 - 1) <= 0.03



def test_unification_alone_reaches_low_ratios(tmp_path, rng):
    """With no other quantizer asked for, unification's step grid also covers
    the high rates (every block kept), so a low target lands."""
    import onnx_l2c
    from test_target import _deep_mlp, _samples

    model = save(_deep_mlp(rng), tmp_path / "deep.onnx")
    result = onnx_l2c.compress(model, tmp_path / "u3.onnx", target_ratio=3, calibration_data=_samples(rng),
                               methods="unify", block="1x4")
    assert abs(result.ratio / 3 - 1) <= 0.03


def test_kernel_blocks_on_a_conv_model(tmp_path, rng):
    import onnx_l2c

    model = save(conv(rng), tmp_path / "conv.onnx")
    samples = [{"x": rng.standard_normal((1, 8, 12, 12)).astype(np.float32)} for _ in range(8)]
    out = tmp_path / "small.onnx"
    # 3.5x: the model is 1152 weights, so the sidecar index's ~200 bytes are an eighth of a 4x budget
    result = onnx_l2c.compress(model, out, target_ratio=3.5, calibration_data=samples, methods="unify",
                               block="kernel", min_elements=64)
    assert abs(result.ratio / 3.5 - 1) <= 0.03
    assert result.plan["unify"]["blocks"] == 16 * 8  # one block per 3x3 kernel
    feeds = {"x": samples[0]["x"]}
    ref, got = run_plain(model, feeds)[0], run_fast(out, feeds)[0]
    assert np.corrcoef(ref.reshape(-1), got.reshape(-1))[0, 1] > 0.95
