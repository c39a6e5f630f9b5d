"""The ai.onnx_l2c::Decode custom op inside onnxruntime, on hand-made graphs.

The Decode output's element type is UNDEFINED in the op definition; the graph provides it:
(a) a value_info entry for the output (elem_type + shape), or (b) node attributes dtype (int)
+ shape (ints), or both (what the converter writes).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

import onnx_l2c
from helpers import patched
from onnx_l2c.codec import BFLOAT16, DOMAIN, FLOAT, FLOAT16, RawStage, Recipe, serialize

SHAPE = [4, 5]
OPSETS = [h.make_opsetid("", 17), h.make_opsetid(DOMAIN, 1)]


def make_payload(dtype: int, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A raw payload of a random [4, 5] tensor and its values widened to float32."""
    x = np.random.default_rng(seed).normal(0, 1, SHAPE).astype(np.float32)
    if dtype == FLOAT:
        bits, values = x.view(np.uint32), x
    elif dtype == FLOAT16:
        bits = x.astype(np.float16).view(np.uint16)
        values = bits.view(np.float16).astype(np.float32)
    else:
        bits = (x.view(np.uint32) >> 16).astype(np.uint16)  # truncated bfloat16
        values = (bits.astype(np.uint32) << 16).view(np.float32)
    return serialize(Recipe(dtype, tuple(SHAPE), [RawStage(bits.reshape(-1))])), values


def make_model(payloads, value_info=True, attrs=True, constant=True):
    """One Decode per payload, each Cast to float and added to X."""
    nodes, inits, inputs, vis = [], [], [h.make_tensor_value_info("X", TP.FLOAT, SHAPE)], []
    acc = "X"
    for k, (dtype, p) in enumerate(payloads):
        a = dict(tensor=f"w{k}", sidecar="model.onnx.l2c")
        if attrs:
            a.update(dtype=dtype, shape=SHAPE)
        nodes.append(h.make_node("Decode", [f"w{k}.l2c"], [f"w{k}"], domain=DOMAIN, name=f"dec{k}", **a))
        nodes.append(h.make_node("Cast", [f"w{k}"], [f"c{k}"], to=TP.FLOAT))
        nodes.append(h.make_node("Add", [acc, f"c{k}"], [f"s{k}"]))
        acc = f"s{k}"
        if constant:
            inits.append(nh.from_array(np.frombuffer(p, np.uint8).copy(), f"w{k}.l2c"))
        else:
            inputs.append(h.make_tensor_value_info(f"w{k}.l2c", TP.UINT8, [len(p)]))
        if value_info:
            vis.append(h.make_tensor_value_info(f"w{k}", dtype, SHAPE))
    nodes.append(h.make_node("Identity", [acc], ["Y"]))
    g = h.make_graph(nodes, "g", inputs, [h.make_tensor_value_info("Y", TP.FLOAT, SHAPE)], inits, value_info=vis)
    return h.make_model(g, opset_imports=OPSETS, ir_version=9)


def session(model, level=None):
    so = ort.SessionOptions()
    so.register_custom_ops_library(onnx_l2c.custom_op_library())
    if level is not None:
        so.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL])
@pytest.mark.parametrize("value_info", [False, True])
def test_decode_in_graph(level, value_info):
    """float32, float16 and bfloat16 outputs, typed by the attributes (and value_info)."""
    dtypes = (FLOAT, FLOAT16, BFLOAT16)
    ps = [make_payload(dt, seed=dt) for dt in dtypes]
    m = make_model([(dt, p) for dt, (p, _) in zip(dtypes, ps)], value_info)
    y = session(m, level).run(None, {"X": np.ones(SHAPE, np.float32)})[0]
    np.testing.assert_array_equal(y, ((1 + ps[0][1]) + ps[1][1]) + ps[2][1])


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL])
def test_the_declaration_attributes_are_required(level):
    """value_info alone no longer types the output: the fast loader and
    decompress need the attributes, so the op does too."""
    p, _ = make_payload(FLOAT16)
    with pytest.raises(Exception, match="tensor 'w0'.*needs the attributes dtype .* and shape"):
        session(make_model([(FLOAT16, p)], value_info=True, attrs=False), level)


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL])
def test_the_payload_must_be_a_constant_initializer(level):
    p, _ = make_payload(FLOAT)
    with pytest.raises(Exception, match="tensor 'w0'.*the payload must be a constant initializer"):
        session(make_model([(FLOAT, p)], constant=False), level)


def test_type_needed():
    p, _ = make_payload(FLOAT16)
    with pytest.raises(Exception, match="type inference failed"):
        session(make_model([(FLOAT16, p)], value_info=False, attrs=False))


def test_declared_type_mismatch():
    p, _ = make_payload(FLOAT16)
    with pytest.raises(Exception, match=r"tensor 'w0'.*the graph declares float32 \[4, 5\] but the payload holds "
                                        r"float16 \[4, 5\]"):
        session(make_model([(FLOAT, p)]))  # the graph says float32


def test_corrupt_payload_names_tensor():
    p, _ = make_payload(FLOAT)
    p = p[:-1] + bytes([p[-1] ^ 1])
    with pytest.raises(Exception, match=r"onnx_l2c Decode: tensor 'w0' \(sidecar 'model.onnx.l2c'\): CRC mismatch"):
        session(make_model([(FLOAT, p)]))


def test_bad_stage_names_tensor():
    """An error behind the CRC (unknown format version) is reported with the tensor too."""
    p, _ = make_payload(FLOAT)
    with pytest.raises(Exception, match=r"tensor 'w0' \(sidecar 'model.onnx.l2c'\): .*unsupported format version 7"):
        session(make_model([(FLOAT, patched(p, 4, b"\x07\x00"))]))


def test_declared_shape_mismatch():
    p, _ = make_payload(FLOAT)
    node = h.make_node("Decode", ["w.l2c"], ["w"], domain=DOMAIN, tensor="w", dtype=FLOAT, shape=[5, 4])
    g = h.make_graph([node], "g", [], [h.make_tensor_value_info("w", TP.FLOAT, [5, 4])],
                     [nh.from_array(np.frombuffer(p, np.uint8).copy(), "w.l2c")])
    with pytest.raises(Exception, match=r"tensor 'w': the graph declares float32 \[5, 4\] but the payload "
                                        r"holds float32 \[4, 5\]"):
        session(h.make_model(g, opset_imports=OPSETS, ir_version=9))
