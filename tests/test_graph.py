"""The graph layer: the op table (which input is a weight and what its axes
mean) and the edits (Decode rewrite and back, external-data entries,
feeding weights, exposing values)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from onnx_l2c.graph.edit import (decode_nodes, defined_names, drop_initializers, make_feedable, mark_compressed,
                                 replace_with_decode, restore_weights, set_external, unique_name)
from onnx_l2c.graph.model import find_weights, value_uses
from onnx_l2c.graph.ops import INPUT_AXIS, WEIGHT_INPUTS, layer_of, weight_input
from onnx_l2c.measure.layers import layer_view


def _init(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _zoo_of_ops(rng: np.random.Generator) -> onnx.ModelProto:
    """One weight per entry of the op table, plus a Transpose passthrough, a
    Constant-node weight and a weight two ops share."""
    inits = [
        _init("conv_w", (8, 4, 3, 3), rng), _init("conv_b", (8,), rng),
        _init("deconv_w", (8, 2, 3, 3), rng),
        _init("mm_b", (16, 12), rng), _init("mm_a", (5, 16), rng),
        _init("gemm_nk", (6, 12), rng), _init("gemm_kn", (12, 6), rng),
        _init("table", (30, 12), rng),
        _init("lstm_w", (1, 32, 12), rng), _init("lstm_r", (1, 32, 8), rng),
        _init("tr_w", (12, 7), rng), _init("shared", (12, 12), rng),
    ]
    nodes = [
        helper.make_node("Conv", ["img", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "deconv_w"], ["d"], group=2),
        helper.make_node("MatMul", ["x", "mm_b"], ["m"]),
        helper.make_node("MatMul", ["mm_a", "xt"], ["ma"]),
        helper.make_node("Gemm", ["m", "gemm_nk"], ["g1"], transB=1),
        helper.make_node("Gemm", ["m", "gemm_kn"], ["g2"]),
        helper.make_node("Gather", ["table", "ids"], ["e"]),
        helper.make_node("LSTM", ["seq", "lstm_w", "lstm_r"], ["h"], hidden_size=8),
        helper.make_node("Transpose", ["tr_w"], ["tr_wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["m7", "tr_wt"], ["t"]),
        helper.make_node("MatMul", ["m", "shared"], ["s1"]),
        helper.make_node("MatMul", ["s1", "shared"], ["s2"]),
        helper.make_node("Constant", [], ["const_w"], value=_init("const_w", (12, 4), rng)),
        helper.make_node("MatMul", ["m", "const_w"], ["k"]),
    ]
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(n, f, None) for n in ("img", "x", "xt", "seq", "m7")]
    inputs.append(helper.make_tensor_value_info("ids", TensorProto.INT64, None))
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("d", "ma", "g1", "g2", "e", "h", "t", "s2", "k")]
    return helper.make_model(helper.make_graph(nodes, "ops", inputs, outputs, inits))


def test_op_table_axes_and_layers(rng):
    weights = {w.name: w for w in find_weights(_zoo_of_ops(rng), 1).weights}
    expected = {  # name: (output-channel axis, consumer op, matrix layout or None)
        "conv_w": (0, "Conv", "conv"), "deconv_w": (1, "ConvTranspose", "conv_transpose"),
        "mm_b": (1, "MatMul", "matmul"), "mm_a": (0, "MatMul", None),
        "gemm_nk": (0, "Gemm", "gemm_nk"), "gemm_kn": (1, "Gemm", "gemm_kn"), "table": (0, "Gather", "gather"),
        "lstm_w": (1, "LSTM", None), "lstm_r": (1, "LSTM", None),
        "tr_w": (0, "MatMul", None),  # through Transpose perm [1, 0]: no matrix view
        "shared": (1, "MatMul", "matmul"), "const_w": (1, "MatMul", "matmul"),
    }
    for name, (axis, op, kind) in expected.items():
        w = weights[name]
        view = layer_view(w)
        assert (w.channel_axis, w.consumer, view.kind if view else None) == (axis, op, kind), name
    assert weights["tr_w"].transposed
    assert weights["const_w"].constant_node is not None
    # The matrix views: Conv groups × rows × cols; ConvTranspose with group 2
    conv = layer_view(weights["conv_w"])
    assert (conv.groups, conv.rows, conv.cols, conv.activation, conv.input_axis) == (1, 8, 36, "img", 1)
    deconv = layer_view(weights["deconv_w"])
    assert (deconv.groups, deconv.rows, deconv.cols, deconv.input_axis) == (2, 2, 36, 0)
    assert layer_view(weights["table"]).activation == "ids"


def test_op_table_entries_are_consistent():
    for (op, index), entry in WEIGHT_INPUTS.items():
        assert (entry.op_type, entry.index) == (op, index)
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1, beta=0.5)
    assert weight_input(node, 1).bias_input(node) is None  # scaled C is not a per-row bias
    assert weight_input(helper.make_node("Conv", ["x", "w", "b"], ["y"]), 1).bias_input(
        helper.make_node("Conv", ["x", "w", "b"], ["y"])) == 2
    assert weight_input(helper.make_node("MatMul", ["x", "w"], ["y"], domain="com.other"), 1) is None
    assert layer_of(helper.make_node("Conv", ["x", "w"], ["y"], group=3), 1, (8, 4, 3, 3)) is None  # 3 ∤ 8
    assert set(INPUT_AXIS) == {"conv", "conv_transpose", "matmul", "gemm_kn", "gemm_nk", "gather"}


def test_value_uses_counts_outputs_and_scopes(rng):
    model = _zoo_of_ops(rng)
    uses = value_uses(model.graph, outputs=True)
    assert len(uses["shared"]) == 2
    assert [u.node for u in uses["k"]] == [None]  # a graph output


def test_decode_rewrite_and_back_restores_the_graph(rng):
    model = _zoo_of_ops(rng)
    original = onnx.ModelProto()
    original.CopyFrom(model)
    weights = find_weights(model, 1).weights
    used = defined_names(model.graph)
    for i, w in enumerate(weights):
        replace_with_decode(w, 64 * i, 64, "m.onnx.l2c", used)
    drop_initializers(model, {w.name for w in weights if w.constant_node is None})
    mark_compressed(model)
    nodes = decode_nodes(model, "m.onnx")
    assert sorted(n.name for n in nodes) == sorted(w.name for w in weights)
    assert {(n.location, n.offset, n.length) for n in nodes} == {("m.onnx.l2c", 64 * i, 64)
                                                                for i in range(len(weights))}
    originals = {t.name: t for t in original.graph.initializer}
    originals["const_w"] = next(a.t for n in original.graph.node if n.op_type == "Constant" for a in n.attribute)
    restored = restore_weights(model, nodes, {n.name: originals[n.name] for n in nodes})
    assert not any(n.domain == "ai.onnx_l2c" for n in restored.graph.node)
    expected = {t.name for t in original.graph.initializer} | {"const_w"}  # the Constant became an initializer
    assert sorted(t.name for t in restored.graph.initializer) == sorted(expected)
    assert [op.domain for op in restored.opset_import] == [op.domain for op in original.opset_import]
    assert not restored.metadata_props


def test_set_external_matches_onnx_helper():
    mine = TensorProto(name="p", data_type=TensorProto.UINT8, dims=[10])
    set_external(mine, "f.l2c", 128, 10)
    info = external_data_helper.ExternalDataInfo(mine)
    assert (info.location, info.offset, info.length) == ("f.l2c", 128, 10)
    assert [e.key for e in mine.external_data] == ["location", "offset", "length"]
    assert not mine.HasField("raw_data") and mine.data_location == TensorProto.EXTERNAL


def test_unique_name_never_reuses():
    used = {"a", "a_1"}
    assert unique_name("a", used) == "a_2" and unique_name("b", used) == "b" and {"a_2", "b"} <= used


def test_make_feedable_hoists_subgraph_weights(rng):
    then_w = _init("then_w", (4, 4), rng)
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "then_w"], ["yt"])], "then", [],
                               [helper.make_tensor_value_info("yt", TensorProto.FLOAT, None)], [then_w])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["ye"])], "else", [],
                               [helper.make_tensor_value_info("ye", TensorProto.FLOAT, None)])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                            helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    weights = find_weights(model, 1).weights
    assert [w.name for w in weights] == ["then_w"]
    fed = make_feedable(model, weights)
    assert [w.name for w in fed] == ["then_w"]
    assert [t.name for t in model.graph.initializer] == ["then_w"]
    assert "then_w" in {v.name for v in model.graph.input}
    assert not model.graph.node[0].attribute[0].g.initializer  # moved out of the branch
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString())
    x, fed_w = np.ones((1, 4), np.float32), np.eye(4, dtype=np.float32) * 3
    (y,) = session.run(None, {"x": x, "cond": np.array(True), "then_w": fed_w})
    np.testing.assert_array_equal(y, x @ fed_w)  # the feed overrides the hoisted weight inside the branch


@pytest.mark.parametrize("location", ["../outside.l2c", "/abs/path.l2c"])
def test_loader_rejects_payloads_outside_the_model_folder(tmp_path, rng, location):
    from onnx_l2c.errors import FileError
    from onnx_l2c.load.compressed import CompressedModel

    model = _zoo_of_ops(rng)
    w = find_weights(model, 1).weights[0]
    replace_with_decode(w, 0, 8, location, defined_names(model.graph))
    drop_initializers(model, {w.name})
    mark_compressed(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(FileError, match="outside the model's folder"):
        CompressedModel(path)


TYPED_FIELD_CASES = [
    (TensorProto.INT8, np.array([-128, -1, 0, 5, 127], np.int8)),
    (TensorProto.UINT8, np.array([0, 1, 200, 255], np.uint8)),
    (TensorProto.INT16, np.array([-32768, -2, 7, 32767], np.int16)),
    (TensorProto.UINT16, np.array([0, 65535, 3], np.uint16)),
    (TensorProto.INT32, np.array([-(2 ** 31), -1, 2 ** 31 - 1], np.int32)),
    (TensorProto.INT64, np.array([-(2 ** 63), -1, 2 ** 40, 2 ** 63 - 1], np.int64)),
    (TensorProto.UINT32, np.array([0, 2 ** 32 - 1, 9], np.uint32)),
    (TensorProto.UINT64, np.array([0, 2 ** 64 - 1, 9], np.uint64)),
    (TensorProto.BOOL, np.array([True, False, True])),
    (TensorProto.DOUBLE, np.array([-0.0, 1e-300, np.inf, 3.25])),
    (TensorProto.FLOAT16, np.array([-0.0, 65504.0, 1e-7], np.float16)),
]


@pytest.mark.parametrize("dtype,values", TYPED_FIELD_CASES, ids=[TensorProto.DataType.Name(d) for d, _ in TYPED_FIELD_CASES])
def test_tensor_bits_of_every_dtype_in_raw_data_and_typed_fields(dtype, values, tmp_path):
    """The bits of a tensor, whether ONNX stores it in raw_data or in its typed
    field (int32_data for the narrow integers and bool, int64_data, uint64_data, double_data)."""
    from onnx_l2c.codec import BITS_DTYPE
    from onnx_l2c.graph.model import tensor_bits

    raw = numpy_helper.from_array(values, "t")
    typed = helper.make_tensor("t", dtype, values.shape, values.tolist() if dtype != TensorProto.FLOAT16 else values)
    assert raw.HasField("raw_data") and not typed.HasField("raw_data")
    expected = values.view(BITS_DTYPE[dtype])
    for tensor in (raw, typed):
        got = tensor_bits(tensor, tmp_path)
        assert got.dtype == np.dtype(BITS_DTYPE[dtype]) and np.array_equal(got, expected)
    float8 = helper.make_tensor("f8", TensorProto.FLOAT8E4M3FN, (3,), [0.5, -2.0, 448.0])
    assert np.array_equal(tensor_bits(float8, tmp_path), numpy_helper.to_array(float8).view(np.uint8))
