"""The ai.onnx_l2c::Decode custom op inside onnxruntime.

The Decode output's element type is UNDEFINED in the op definition; the graph
provides it, either (a) a value_info entry for the output (elem_type + shape),
or (b) node attributes dtype (int) + shape (ints), or both (what the converter
writes).
"""
import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

import l2c_native as n

ort = pytest.importorskip("onnxruntime")
ELEM = {1: TP.FLOAT, 10: TP.FLOAT16, 16: TP.BFLOAT16}
SHAPE = [4, 5]


def make_payload(dtype, seed=0):
    x = np.random.default_rng(seed).normal(0, 1, SHAPE).astype(np.float32)
    if dtype == 1:
        return n.payload(1, SHAPE, [n.raw_stage(x.view(np.uint32), 4)]), x
    if dtype == 10:
        h16 = x.astype(np.float16)
        return n.payload(10, SHAPE, [n.raw_stage(h16.view(np.uint16), 2)]), h16.astype(np.float32)
    b = (x.view(np.uint32) >> 16).astype(np.uint16)  # truncated bf16
    return n.payload(16, SHAPE, [n.raw_stage(b, 2)]), (b.astype(np.uint32) << 16).view(np.float32)


def make_model(payloads, value_info=True, attrs=True, constant=True):
    """One Decode per payload, each Cast to float and summed with X."""
    nodes, inits, inputs, vis = [], [], [h.make_tensor_value_info("X", TP.FLOAT, SHAPE)], []
    acc = "X"
    for k, (dtype, p) in enumerate(payloads):
        a = dict(tensor=f"w{k}", sidecar="model.onnx.l2c")
        if attrs:
            a.update(dtype=dtype, shape=SHAPE)
        nodes.append(h.make_node("Decode", [f"w{k}.l2c"], [f"w{k}"], domain="ai.onnx_l2c", name=f"dec{k}", **a))
        nodes.append(h.make_node("Cast", [f"w{k}"], [f"c{k}"], to=TP.FLOAT))
        nodes.append(h.make_node("Add", [acc, f"c{k}"], [f"s{k}"]))
        acc = f"s{k}"
        if constant:
            inits.append(nh.from_array(np.frombuffer(p, np.uint8).copy(), f"w{k}.l2c"))
        else:
            inputs.append(h.make_tensor_value_info(f"w{k}.l2c", TP.UINT8, [len(p)]))
        if value_info:
            vis.append(h.make_tensor_value_info(f"w{k}", ELEM[dtype], SHAPE))
    nodes.append(h.make_node("Identity", [acc], ["Y"]))
    g = h.make_graph(nodes, "g", inputs, [h.make_tensor_value_info("Y", TP.FLOAT, SHAPE)], inits, value_info=vis)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("ai.onnx_l2c", 1)], ir_version=9)


def session(model, level=None):
    so = ort.SessionOptions()
    so.register_custom_ops_library(n.lib_path())
    if level is not None:
        so.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("value_info,attrs,constant", [(True, False, True), (False, True, True),
                                                       (True, True, True), (True, True, False)])
def test_decode_in_graph(level, value_info, attrs, constant):
    ps = [make_payload(dt, seed=dt) for dt in (1, 10, 16)]
    m = make_model([(dt, p) for dt, (p, _) in zip((1, 10, 16), ps)], value_info, attrs, constant)
    feeds = {"X": np.ones(SHAPE, np.float32)}
    if not constant:
        feeds.update({f"w{k}.l2c": np.frombuffer(p, np.uint8) for k, (p, _) in enumerate(ps)})
    y = session(m, level).run(None, feeds)[0]
    np.testing.assert_array_equal(y, ((1 + ps[0][1]) + ps[1][1]) + ps[2][1])


def test_type_needed():
    p, _ = make_payload(10)
    with pytest.raises(Exception, match="type inference failed"):
        session(make_model([(10, p)], value_info=False, attrs=False))


def test_declared_type_mismatch():
    p, _ = make_payload(10)
    m = make_model([(1, p)])  # graph says float32, payload is float16
    with pytest.raises(Exception, match="tensor 'w0'.*declares output element type 1 but the payload decodes to float16"):
        session(m)


def test_corrupt_payload_names_tensor():
    p, _ = make_payload(1)
    p = p[:-1] + bytes([p[-1] ^ 1])
    with pytest.raises(Exception, match=r"onnx_l2c Decode: tensor 'w0' \(sidecar 'model.onnx.l2c'\): CRC mismatch"):
        session(make_model([(1, p)]))


def test_declared_shape_mismatch():
    p, _ = make_payload(1)
    node = h.make_node("Decode", ["w.l2c"], ["w"], domain="ai.onnx_l2c", tensor="w")
    g = h.make_graph([node], "g", [], [h.make_tensor_value_info("w", TP.FLOAT, [5, 4])],
                     [nh.from_array(np.frombuffer(p, np.uint8).copy(), "w.l2c")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("ai.onnx_l2c", 1)], ir_version=9)
    with pytest.raises(Exception, match=r"tensor 'w': the graph declares output shape \[5, 4\] but the payload decodes to shape \[4, 5\]"):
        session(m)
