"""Calibration input readers, layer statistics against onnxruntime, and
output-aware rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from builders import _model, mlp, tensor
from helpers import save
from onnx_l2c.measure.calibration import graph_inputs, iter_samples
from onnx_l2c.codec import native
from onnx_l2c.errors import L2CError, NativeArgumentError
from onnx_l2c.graph.model import find_weights
from onnx_l2c.measure.statistics import collect_statistics
from onnx_l2c.passes import gptq


def _inputs(model: onnx.ModelProto):
    return graph_inputs(model)


def test_npz_with_leading_sample_axis(tmp_path: Path, rng):
    model = mlp(rng)
    x = rng.standard_normal((5, 64)).astype(np.float32)  # rank of the input: the sample axis is the batch axis
    np.savez(tmp_path / "s.npz", x=x)
    got = list(iter_samples(tmp_path / "s.npz", _inputs(model)))
    assert len(got) == 5 and got[2]["x"].shape == (1, 64)
    np.testing.assert_array_equal(got[2]["x"][0], x[2])
    np.savez(tmp_path / "extra.npz", x=x[:, None, :])  # one more dimension: dropped per sample
    got = list(iter_samples(tmp_path / "extra.npz", _inputs(model), limit=3))
    assert len(got) == 3 and got[0]["x"].shape == (1, 64)


def test_folder_iterable_and_reader(tmp_path: Path, rng):
    model = mlp(rng)
    feeds = [{"x": rng.standard_normal((2, 64)).astype(np.float32)} for _ in range(4)]
    for i, f in enumerate(feeds):
        np.savez(tmp_path / f"{i:03d}.npz", **f)
    from_folder = list(iter_samples(tmp_path, _inputs(model)))
    assert [f["x"].tolist() for f in from_folder] == [f["x"].tolist() for f in feeds]
    assert len(list(iter_samples(iter(feeds), _inputs(model)))) == 4

    class Reader:  # the shape of onnxruntime.quantization.CalibrationDataReader
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    assert len(list(iter_samples(Reader(), _inputs(model), limit=3))) == 3


def test_onnxruntime_calibration_data_reader(rng):
    quantization = pytest.importorskip("onnxruntime.quantization")
    model = mlp(rng)
    feeds = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(3)]

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    assert len(list(iter_samples(Reader(), _inputs(model)))) == 3


@pytest.mark.parametrize("data, message", [
    ([{"y": np.zeros((1, 64), np.float32)}], "missing graph input"),
    ([], "holds no samples"),
    ({"x": np.zeros((1, 64), np.float32)}, "single dict"),
    (42, "not a path"),
    ([np.zeros(3)], "not a dict"),
    ("/nonexistent/samples.npz", "no such file"),
])
def test_bad_calibration_input(data, message, rng):
    with pytest.raises(L2CError, match=message):
        list(iter_samples(data, _inputs(mlp(rng))))


def test_bad_npz(tmp_path: Path, rng):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(L2CError, match="not a readable .npz"):
        list(iter_samples(tmp_path / "bad.npz", _inputs(mlp(rng))))
    np.savez(tmp_path / "other.npz", z=np.zeros((2, 64)))
    with pytest.raises(L2CError, match="no array named after a graph input"):
        list(iter_samples(tmp_path / "other.npz", _inputs(mlp(rng))))


def _conv_model(w: np.ndarray, group: int, strides, pads, dilations) -> onnx.ModelProto:
    c_in = w.shape[1] * group
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], group=group, strides=strides, pads=pads,
                          dilations=dilations)], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [tensor("W", w)])
    return _model(graph)


@pytest.mark.parametrize("group, strides, pads, dilations", [
    (1, [1, 1], [1, 1, 1, 1], [1, 1]),
    (2, [2, 2], [1, 0, 2, 1], [1, 1]),
    (6, [1, 1], [1, 1, 1, 1], [2, 2]),  # depthwise, dilated (49 positions: none subsampled)
])
def test_conv_statistics_match_onnxruntime(tmp_path: Path, rng, group, strides, pads, dilations):
    """tr(ΔW·H·ΔWᵀ) from the streamed im2col statistics equals the mean
    squared output change that onnxruntime computes for the perturbation."""
    import onnxruntime as ort

    w = rng.standard_normal((6, 6 // group, 3, 3)).astype(np.float32)
    delta = rng.standard_normal(w.shape).astype(np.float32)
    model = _conv_model(w, group, strides, pads, dilations)
    samples = [{"x": rng.standard_normal((1, 6, 9, 9)).astype(np.float32)} for _ in range(6)]
    weights = find_weights(model, 1).weights
    stats = collect_statistics(model, tmp_path, weights, samples, graph_inputs(model))["W"]
    sess = ort.InferenceSession(_conv_model(delta, group, strides, pads, dilations).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    dy = np.concatenate([sess.run(None, s)[0] for s in samples]).astype(np.float64)
    expected = float((dy ** 2).sum(axis=1).mean())  # Σ over output channels, mean over samples·positions
    assert stats.weighted_error(delta) == pytest.approx(expected, rel=1e-4)
    assert stats.positions == dy.shape[0] * dy.shape[2] * dy.shape[3]  # every output position of every sample


def test_matmul_and_gemm_statistics(tmp_path: Path, rng):
    model = mlp(rng)
    samples = [{"x": rng.standard_normal((3, 64)).astype(np.float32)} for _ in range(4)]
    weights = find_weights(model, 1).weights
    stats = collect_statistics(model, tmp_path, weights, samples, graph_inputs(model))
    x = np.concatenate([s["x"] for s in samples]).astype(np.float64)
    np.testing.assert_allclose(stats["W1"].hessian[0], x.T @ x / len(x), rtol=1e-5, atol=1e-7)
    assert stats["W1"].positions == len(x)  # every input row: the layer's multiply-adds ÷ its weights
    assert stats["W2"].hessian.shape == (1, 128, 128)  # the input of W2 is an intermediate tensor
    assert "b1" not in stats  # an Add operand has no matrix view


def test_gptq_beats_rounding_on_its_statistics(rng):
    d, rows = 48, 32
    mix = rng.standard_normal((d, d))
    x = rng.standard_normal((2000, d)) @ mix  # strongly correlated inputs
    h = (x.T @ x / len(x))[None]
    w = rng.standard_normal((1, rows, d))
    step = np.full((1, rows), 0.5)

    def err(q):
        delta = gptq.dequantize(q, step[:, :, None], 0.0) - w
        return float(np.einsum("grc,gcd,grd->", delta, h, delta))

    q_near = gptq.quantize_nearest(w, step[:, :, None], 0.0)
    q_gptq = gptq.gptq(w, h, step, 0.0, 0.0)
    assert err(q_gptq) < 0.5 * err(q_near)
    assert np.abs(q_gptq - q_near).max() <= 3  # compensation moves symbols a few steps, not arbitrarily


def _gptq_numpy(w, step, theta, dead_zone, prepared, forced=None):
    """The column loop in numpy, as gptq ran it before the native block kernel:
    the specification the kernel must match bit for bit."""
    perm, u, dead = prepared
    g, r, d = w.shape
    wp = np.take_along_axis(w.astype(np.float64), perm[:, None, :], axis=2)
    wp[np.broadcast_to(np.take_along_axis(dead, perm, axis=1)[:, None, :], wp.shape)] = 0.0
    if forced is not None:
        fmask = np.take_along_axis(forced[0], perm[:, None, :], axis=2)
        fsym = np.take_along_axis(forced[1].astype(np.int32), perm[:, None, :], axis=2)
    s = step.astype(np.float64)
    q = np.zeros((g, r, d), dtype=np.int32)
    for start in range(0, d, gptq.BLOCK):
        end = min(start + gptq.BLOCK, d)
        err_block = np.zeros((g, r, end - start))
        for i in range(start, end):
            col = wp[:, :, i]
            qi = gptq.quantize_nearest(col, s, dead_zone)
            if forced is not None:
                qi = np.where(fmask[:, :, i], fsym[:, :, i], qi)
            q[:, :, i] = qi
            e = (col - gptq.dequantize(qi, s, theta)) / u[:, i, i][:, None]
            err_block[:, :, i - start] = e
            wp[:, :, i + 1:end] -= e[:, :, None] * u[:, None, i, i + 1:end]
        if end < d:
            wp[:, :, end:] -= np.matmul(err_block, u[:, start:end, end:])
    return np.take_along_axis(q, np.argsort(perm, axis=1)[:, None, :], axis=2)


@pytest.mark.parametrize("groups, rows, d", [(1, 48, 300), (3, 5, 129), (2, 1, 1)])
def test_gptq_native_loop_matches_numpy_bit_for_bit(rng, groups, rows, d):
    x = rng.standard_normal((500, d)) * rng.uniform(0.1, 3.0, d)
    h = np.stack([x.T @ x / len(x)] * groups)
    h[:, 0, :] = h[:, :, 0] = 0.0  # a dead input
    w = rng.standard_normal((groups, rows, d)) * 2.0
    w[0, 0, :2] = 1e4  # beyond QMAX steps: clipped
    step = rng.uniform(0.05, 0.5, (groups, rows))
    step[0, 0] = 1e-3
    prepared = gptq.prepare(h)
    forced = (rng.random(w.shape) < 0.3, rng.integers(-4, 5, w.shape))
    for theta, dead_zone, f in ((0.0, 0.0, None), (0.2, 0.3, None), (0.1, 0.0, forced)):
        expected = _gptq_numpy(w, step, theta, dead_zone, prepared, f)
        np.testing.assert_array_equal(gptq.gptq(w, h, step, theta, dead_zone, prepared=prepared, forced=f), expected)


def test_gptq_native_block_rejects_bad_arguments():
    w, u, step = np.zeros((1, 2, 4)), np.eye(4)[None], np.ones((1, 2))
    q, err = np.zeros((1, 2, 4), np.int32), np.zeros((1, 2, 2))
    with pytest.raises(NativeArgumentError, match="bad sizes"):
        native.gptq_block(w, u, step, 0.0, 0.0, gptq.QMAX, 3, 5, q, err)
    with pytest.raises(NativeArgumentError, match="u must be a C-contiguous float64"):
        native.gptq_block(w, u.astype(np.float32), step, 0.0, 0.0, gptq.QMAX, 0, 2, q, err)
    with pytest.raises(NativeArgumentError, match="err_block"):
        native.gptq_block(w, u, step, 0.0, 0.0, gptq.QMAX, 0, 3, q, err)
    with pytest.raises(NativeArgumentError, match="qmax"):
        native.gptq_block(w, u, step, 0.0, 0.0, float("nan"), 0, 2, q, err)


def test_choose_damping_rejects_rounding_that_does_not_generalize(rng):
    d, rows = 64, 16
    fit = rng.standard_normal((20, d))  # fewer vectors than dimensions: H of the first half is rank 20
    check = rng.standard_normal((2000, d))
    halves = ((fit.T @ fit / 20)[None], (check.T @ check / 2000)[None])
    w = rng.standard_normal((1, rows, d))
    assert gptq.choose_damping(w, halves, np.full((1, rows), 0.7), 0.0, 0.0) in (None, 1.0)


def test_statistics_inside_if_branches(rng):
    """Weights consumed inside If branches (their own, and a main-graph weight used in a branch) get
    E[x xᵀ] over exactly the runs that took their branch, including values computed in the branch."""
    from builders import subgraphs
    from onnx import numpy_helper

    model = subgraphs(rng)
    weights = find_weights(model, 16).weights
    conds = [True, False, True] * 4
    samples = [{"cond": np.array(c), "x": rng.standard_normal((2, 16)).astype(np.float32)} for c in conds]
    stats = collect_statistics(model, Path("."), weights, samples, graph_inputs(model))
    then = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    wt = numpy_helper.to_array(then.initializer[0]).astype(np.float64)

    def second_moment(rows: list[np.ndarray]) -> np.ndarray:
        x = np.concatenate(rows).astype(np.float64)
        return x.T @ x / len(x)

    taken = [s["x"] for s, c in zip(samples, conds) if c]
    expected = {"Wt": second_moment(taken), "We": second_moment([s["x"] for s, c in zip(samples, conds) if not c]),
                "Wo": second_moment([x.astype(np.float64) @ wt for x in taken])}
    for name, h in expected.items():
        np.testing.assert_allclose(stats[name].hessian[0], h, rtol=1e-4, atol=1e-5, err_msg=name)
    assert stats["Wt"].vectors == 16 and stats["We"].vectors == 8


def test_a_calibration_folder_is_read_when_used(tmp_path: Path, rng):
    """The planner's samples from a folder are its files, read as each pass
    reaches them (the same feeds, in the same order, as iter_samples); other
    sources are read once into a list; a file without an input names itself."""
    from onnx_l2c.measure.calibration import SampleFiles, load_samples

    model = mlp(rng)
    feeds = [{"x": rng.standard_normal((2, 64)).astype(np.float32)} for _ in range(5)]
    for i, f in enumerate(feeds):
        np.savez(tmp_path / f"{i:03d}.npz", **f)
    samples = load_samples(tmp_path, _inputs(model), limit=4)
    assert isinstance(samples, SampleFiles) and len(samples) == 4
    expected = [f["x"].tolist() for f in iter_samples(tmp_path, _inputs(model), limit=4)]
    assert [f["x"].tolist() for f in samples] == expected
    assert [f["x"].tolist() for f in samples[1:3]] == expected[1:3]
    assert samples[3]["x"].tolist() == feeds[3]["x"].tolist()
    assert isinstance(load_samples(iter(feeds), _inputs(model), limit=2), list)
    np.savez(tmp_path / "004.npz", y=feeds[4]["x"])
    with pytest.raises(L2CError, match=r"004\.npz: missing graph input\(s\) \['x'\]"):
        load_samples(tmp_path, _inputs(model))[4]


def test_freed_memory_goes_back_to_the_system():
    """glibc keeps freed heap blocks resident (activations of earlier
    calibration runs); the passes trim after every run."""
    from onnx_l2c.measure import calibration

    status = Path("/proc/self/status")
    if calibration._malloc_trim() is None or not status.is_file():
        pytest.skip("not glibc on Linux: nothing to trim")

    def resident() -> int:
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS"))
        return int(line.split()[1]) << 10

    blocks = [np.ones(100_000 // 8) for _ in range(2000)]  # 200 MB in pieces glibc serves from its heap
    last = blocks[-1]  # in use after the others: free() alone cannot shrink the heap below it
    del blocks
    before = resident()
    calibration.release_freed_memory()
    assert before - resident() > 100 << 20
    del last
