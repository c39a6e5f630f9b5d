"""Already-quantized models with a size target (issue 17): their integer
weights go on coarser grids of the stored one (passes/requantize.py), chosen
by the same allocation as float weights, and the graph keeps its quantized
operators. Models are made in the test with onnxruntime's own quantizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_l2c
from helpers import assert_bit_identical, assert_close, run_all_paths, run_plain, save

VOCAB, DIM, HIDDEN = 600, 64, 256


def _float_model(rng: np.random.Generator) -> onnx.ModelProto:
    """Token ids → embedding table (Gather) → MatMul → Relu → MatMul: a tiny
    text encoder, with trained-like (Laplace) weights."""
    table = rng.laplace(0, 0.05, (VOCAB, DIM)).astype(np.float32)
    w1 = rng.laplace(0, 0.08, (DIM, HIDDEN)).astype(np.float32)
    w2 = rng.laplace(0, 0.05, (HIDDEN, DIM)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("MatMul", ["e", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "encoder", [helper.make_tensor_value_info("ids", TensorProto.INT64, (None, 8))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (None, 8, DIM))],
                              [numpy_helper.from_array(v, k) for k, v in (("table", table), ("w1", w1), ("w2", w2))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _feeds(rng: np.random.Generator, n: int = 6) -> dict[str, np.ndarray]:
    return {"ids": rng.integers(0, VOCAB, (n, 8), dtype=np.int64)}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict[str, Path]:
    """onnxruntime's dynamic (QOperator: MatMulInteger, the table's Gather +
    DequantizeLinear) and static (QDQ) int8 quantizations of the float model."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    folder = tmp_path_factory.mktemp("quantized")
    rng = np.random.default_rng(7)
    src = save(_float_model(rng), folder / "float.onnx")
    quantize_dynamic(str(src), str(folder / "qop.onnx"), weight_type=QuantType.QInt8)
    feeds = [_feeds(rng, 4) for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.it, None)

    quantize_static(str(src), str(folder / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    return {"float": src, "qop": folder / "qop.onnx", "qdq": folder / "qdq.onnx"}


def _ops(path: Path) -> list[str]:
    return sorted(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node
                  if n.domain != "ai.onnx_l2c")


def _integers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
            if t.data_type in (TensorProto.INT8, TensorProto.UINT8) and np.prod(t.dims) >= 1024}


def _zero_points(path: Path) -> dict[str, int]:
    """The zero point each quantized weight is read with (per-tensor in these models)."""
    model = onnx.load(str(path))
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    pairs = {"DequantizeLinear": ((0, 2),), "MatMulInteger": ((0, 2), (1, 3))}
    for node in model.graph.node:
        for value, zp in pairs.get(node.op_type, ()):
            if len(node.input) > zp and node.input[zp] in values:  # not a dynamic activation's zero point
                out[node.input[value]] = values[node.input[zp]]
    for node in model.graph.node:  # a table's gathered rows are read with the table's zero point
        if node.op_type == "Gather" and node.output[0] in out:
            out[node.input[0]] = out[node.output[0]]
    return out


@pytest.mark.parametrize("kind", ["qop", "qdq"])
def test_a_target_puts_quantized_weights_on_coarser_grids_and_keeps_the_quantized_graph(quantized, tmp_path, kind):
    source = quantized[kind]
    out = tmp_path / f"{kind}_small.onnx"
    result = onnx_l2c.compress(source, out, target_ratio=1.6)
    # within the budget, and near it (three tensors with whole-number steps: the discrete fill)
    assert 1.6 * 0.995 <= result.ratio <= 1.6 * 1.03, result.ratio
    requantized = {t.name: t for t in result.tensors if t.method == "requantize"}
    assert requantized, [(t.name, t.method) for t in result.tensors]
    assert all(t.dtype in ("int8", "uint8") for t in requantized.values())
    # the same quantized operators, scales and zero points; the same weight dtypes
    plain = tmp_path / f"{kind}_plain.onnx"
    onnx_l2c.decompress(out, plain)
    assert _ops(plain) == _ops(source)
    before, after = _integers(source), _integers(plain)
    assert before.keys() == after.keys() and all(before[k].dtype == after[k].dtype for k in before)
    zero_points = _zero_points(source)
    for name, t in requantized.items():
        k = t.params["step"]
        shifted = after[name].astype(np.int32) - zero_points[name].astype(np.int32)
        clipped = np.isin(after[name], [np.iinfo(after[name].dtype).min, np.iinfo(after[name].dtype).max])
        assert np.all((shifted % k == 0) | clipped), name  # a subset of the stored grid
        changed = before[name] != after[name]
        assert changed.any(), name
        if k == 1:  # the stored grid with a dead zone: only small weights moved, to the zero point
            assert np.all(shifted[changed] == 0), name
    # every load path gives the requantized model's outputs, bit for bit
    rng = np.random.default_rng(3)
    feeds = _feeds(rng)
    reference = run_plain(plain, feeds)
    paths = run_all_paths(out, tmp_path, feeds)
    assert_bit_identical(reference, paths["fast"], "fast loader")
    assert_bit_identical(reference, paths["custom_op"], "custom op")
    # and they stay near the quantized model's (the float weights of the same layers change little)
    original = run_plain(source, feeds)[0].reshape(-1)
    got = reference[0].reshape(-1)
    cosine = float(original @ got / (np.linalg.norm(original) * np.linalg.norm(got)))
    assert cosine > 0.98, cosine


def test_quantized_weights_stay_exact_without_a_target_or_the_method(quantized, tmp_path):
    """No target (the default safe preset, lossless) or --methods without
    requantize: the integers are coded losslessly, bit for bit."""
    source = quantized["qop"]
    for name, options in (("default", {}), ("lossless", {"preset": "lossless"}),
                          ("methods", {"target_ratio": 1.2, "methods": "mixed", "allow_target_miss": True})):
        out = tmp_path / f"{name}.onnx"
        result = onnx_l2c.compress(source, out, **options)
        assert all(t.method == "lossless" for t in result.tensors if t.dtype in ("int8", "uint8")), name
        plain = tmp_path / f"{name}_plain.onnx"
        onnx_l2c.decompress(out, plain)
        after = _integers(plain)
        for key, value in _integers(source).items():
            np.testing.assert_array_equal(after[key], value, err_msg=f"{name}: {key}")


def test_the_embedding_table_behind_gather_is_a_quantized_weight(quantized):
    """Dynamic quantization gathers rows of a uint8 table and dequantizes them:
    the table is planned with its zero point; MatMulInteger's weights too."""
    from onnx_l2c.graph.model import find_weights, load_model

    model = load_model(quantized["qop"])
    planned = {w.name: w for w in find_weights(model, 1024, plan_quantized=True).weights}
    table = next(w for name, w in planned.items() if name.startswith("table"))
    assert table.dtype == TensorProto.UINT8 and table.zero_point is not None and table.zero_point.size == 1
    assert any(w.dtype == TensorProto.INT8 for w in planned.values())
    assert not find_weights(model, 1024).weights  # without plan_quantized: exact, like every integer tensor


def test_calibration_measures_the_quantized_weights_sensitivity(quantized, tmp_path):
    """With calibration samples the quantized weights' sensitivities are
    measured (integer noise on their grid, through the quantized graph), not
    borrowed from float tensors; the target still lands. (Through a Planner,
    which is built before any target is known.)"""
    import json

    rng = np.random.default_rng(11)
    report = tmp_path / "report.json"
    planner = onnx_l2c.Planner(quantized["qdq"], calibration_data=[_feeds(rng, 4) for _ in range(8)])
    result = planner.compress(tmp_path / "calibrated.onnx", target_ratio=1.5, report=report)
    assert any(t.method == "requantize" for t in result.tensors)
    assert 1.5 * 0.995 <= result.ratio <= 1.5 * 1.05, result.ratio
    rows = {t["name"]: t for t in json.loads(report.read_text())["tensors"]}
    integer = [t for t in rows.values() if t["dtype"] == "int8"]
    assert integer and all(t["sensitivity_measured"] and t["sensitivity"] > 0 for t in integer), integer


def test_requantized_levels_round_to_nearest_outside_the_dead_zone():
    from onnx_l2c.passes import TensorInput
    from onnx_l2c.passes.requantize import RequantParams, requantized

    d = np.array([-7, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 124])
    stored = (d + 3).astype(np.int8)  # zero point 3
    tensor = TensorInput("w", TensorProto.INT8, stored.shape, stored.view(np.uint8), None, np.int32(3))
    shifted = lambda k, zone: (requantized(tensor, RequantParams(k, zone)).astype(np.int32) - 3).tolist()  # noqa: E731
    assert shifted(2, 0.0) == [-8, -4, -4, -2, -2, 0, 2, 2, 4, 4, 6, 124]  # nearest, halves away from z
    assert shifted(3, 0.3) == [-6, -3, -3, 0, 0, 0, 0, 0, 3, 3, 6, 123]  # |d| < 2.4 stored steps: z
    assert shifted(1, 0.6) == [-7, -4, -3, -2, 0, 0, 0, 2, 3, 4, 5, 124]  # ±1 pruned, the rest kept
    assert shifted(1, 1.6) == [-7, -4, -3, 0, 0, 0, 0, 0, 3, 4, 5, 124]
    assert shifted(8, 0.0)[-1] == 124  # 128 + 3 does not fit int8: clipped to 127


def test_int4_qdq_weights_are_requantized_on_their_grid(tmp_path):
    """DequantizeLinear of int4 weights (opset 21): the same coarser grids,
    repacked two to a byte; every load path gives the same outputs."""
    rng = np.random.default_rng(5)
    w = np.clip(np.round(rng.laplace(0, 2.0, (96, 64))), -8, 7).astype(np.int64)
    inits = [helper.make_tensor("w_q", TensorProto.INT4, w.shape, w.reshape(-1).tolist()),
             numpy_helper.from_array(np.float32(0.05), "w_scale"),
             helper.make_tensor("w_zp", TensorProto.INT4, (), [0])]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "int4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (None, 96))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (None, 64))], inits)
    src = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10),
               tmp_path / "int4.onnx")
    out = tmp_path / "small.onnx"
    result = onnx_l2c.compress(src, out, target_ratio=2.0)  # lossless alone gives 1.41x
    (t,) = [t for t in result.tensors if t.name == "w_q"]
    assert t.method == "requantize" and t.dtype == "int4", t
    plain = tmp_path / "plain.onnx"
    onnx_l2c.decompress(out, plain)
    after = {x.name: numpy_helper.to_array(x) for x in onnx.load(str(plain)).graph.initializer}["w_q"]
    shifted = after.astype(np.int32)
    assert after.shape == w.shape and np.all((shifted % t.params["step"] == 0) | np.isin(shifted, [-8, 7]))
    feeds = {"x": rng.standard_normal((4, 96)).astype(np.float32)}
    reference = run_plain(plain, feeds)
    paths = run_all_paths(out, tmp_path, feeds)
    assert_bit_identical(reference, paths["fast"], "fast loader")
    # The custom op's DequantizeLinear runs at run time, unfused: x @ (w · scale) in float. (onnxruntime fuses
    # the plain graph's int4 DequantizeLinear + MatMul into MatMulNBits, which rounds differently, ~1%.)
    exact = feeds["x"] @ (shifted.astype(np.float32) * np.float32(0.05))
    assert_close([exact], paths["custom_op"], "custom op")
    # with calibration: int4 cannot be fed to onnxruntime from numpy, so its sensitivity is the fallback
    calibrated = onnx_l2c.compress(src, tmp_path / "calibrated.onnx", target_ratio=2.0,
                                   calibration_data=[{"x": rng.standard_normal((2, 96)).astype(np.float32)}
                                                     for _ in range(4)])
    assert any(x.method == "requantize" for x in calibrated.tensors)


@pytest.mark.parametrize("symmetric", [True, False])
def test_matmulnbits_blocks_are_requantized_on_their_grid(tmp_path, symmetric):
    """MatMulNBits (onnxruntime's block-wise 4-bit quantizer, blocks of 32):
    its packed B is planned per 4-bit integer with each block's zero point
    (absent: 8; asymmetric: packed uint8), repacked two to a byte, and every
    load path runs the requantized blocks bit for bit."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from onnx_l2c.graph.model import find_weights, load_model

    rng = np.random.default_rng(9)
    w1 = rng.laplace(0, 0.05, (128, 256)).astype(np.float32)
    w2 = (rng.laplace(0, 0.05, (256, 96)) + 0.02).astype(np.float32)  # off-centre: asymmetric zero points ≠ 8
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (None, 128))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (None, 96))],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=symmetric)
    quantizer.process()
    src = save(quantizer.model.model, tmp_path / "int4.onnx")
    assert _ops(src) == ["MatMulNBits", "MatMulNBits", "Relu"]

    planned = [w for w in find_weights(load_model(src), 1024, plan_quantized=True).weights if w.zero_point is not None]
    assert len(planned) == 2 and all(w.field_bits == 4 and w.dtype == TensorProto.UINT8 for w in planned)
    zero_points = {w.name: w.zero_point for w in planned}
    if symmetric:
        assert all(np.all(z == 8) for z in zero_points.values())
    else:
        assert any(np.any(z != 8) for z in zero_points.values())

    feeds = {"x": rng.standard_normal((4, 128)).astype(np.float32)}
    calibration = [{"x": rng.standard_normal((4, 128)).astype(np.float32)} for _ in range(4)]
    out = tmp_path / "small.onnx"
    result = onnx_l2c.compress(src, out, target_ratio=1.4, calibration_data=calibration)
    requantized = {t.name: t for t in result.tensors if t.method == "requantize"}
    assert requantized and 1.4 * 0.99 <= result.ratio <= 1.4 * 1.05, (result.ratio, result.tensors)
    plain = tmp_path / "plain.onnx"
    onnx_l2c.decompress(out, plain)
    assert _ops(plain) == _ops(src)
    before, after = _integers(src), _integers(plain)
    for name, t in requantized.items():
        assert after[name].shape == before[name].shape and after[name].dtype == np.uint8
        fields = np.stack([after[name] & 15, after[name] >> 4], axis=-1).reshape(*after[name].shape[:2], -1)
        shifted = fields.astype(np.int32) - zero_points[name]
        assert np.all((shifted % t.params["step"] == 0) | np.isin(fields, [0, 15])), name
        assert np.any(after[name] != before[name]), name
    reference = run_plain(plain, feeds)
    paths = run_all_paths(out, tmp_path, feeds)
    assert_bit_identical(reference, paths["fast"], "fast loader")
    assert_close(reference, paths["custom_op"], "custom op")  # B from a node: MatMulNBits' unpacked path
    original = run_plain(src, feeds)[0].reshape(-1)
    got = reference[0].reshape(-1)
    cosine = float(original @ got / (np.linalg.norm(original) * np.linalg.norm(got)))
    assert cosine > 0.95, (cosine, [(t.name, t.method, t.params) for t in result.tensors])
