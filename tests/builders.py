"""Tiny ONNX models built in code, one per feature the converter must handle."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _model(graph: onnx.GraphProto, opset: list | None = None) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=opset or OPSET, producer_name="onnx_l2c-tests")
    model.ir_version = 8
    return model



def tensor(name: str, values: np.ndarray, dtype: int = TensorProto.FLOAT) -> onnx.TensorProto:
    values = np.asarray(values, dtype=np.float32)
    if dtype == TensorProto.FLOAT:
        return numpy_helper.from_array(values, name)
    if dtype == TensorProto.FLOAT16:
        return numpy_helper.from_array(values.astype(np.float16), name)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncation is fine for test data
    t = TensorProto(name=name, data_type=TensorProto.BFLOAT16, dims=list(values.shape))
    t.raw_data = bits.tobytes()
    return t


def mlp(rng: np.random.Generator, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """x[N,64] → MatMul W1 → Add b1 → Relu → MatMul W2 → y[N,32]; float16 runs natively,
    bfloat16 weights go through Cast to float."""
    w1 = rng.standard_normal((64, 128)).astype(np.float32) * 0.1
    b1 = rng.standard_normal(128).astype(np.float32) * 0.1
    w2 = rng.standard_normal((128, 32)).astype(np.float32) * 0.1
    io = TensorProto.FLOAT16 if dtype == TensorProto.FLOAT16 else TensorProto.FLOAT
    nodes, inits = [], [tensor("W1", w1, dtype), tensor("b1", b1, dtype), tensor("W2", w2, dtype)]
    names = {"W1": "W1", "b1": "b1", "W2": "W2"}
    if dtype == TensorProto.BFLOAT16:
        for n in list(names):
            nodes.append(helper.make_node("Cast", [n], [n + "_f"], to=TensorProto.FLOAT))
            names[n] = n + "_f"
    nodes += [
        helper.make_node("MatMul", ["x", names["W1"]], ["h"]),
        helper.make_node("Add", ["h", names["b1"]], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", names["W2"]], ["y"]),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", io, ["N", 64])],
                              [helper.make_tensor_value_info("y", io, ["N", 32])], inits)
    return _model(graph)


def conv(rng: np.random.Generator) -> onnx.ModelProto:
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2
    b = rng.standard_normal(16).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 12])],
        [tensor("W", w), tensor("B", b)])
    return _model(graph)


def shared(rng: np.random.Generator) -> onnx.ModelProto:
    """One initializer consumed by two MatMuls and a Gemm (transB)."""
    w = rng.standard_normal((32, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("MatMul", ["a", "W"], ["b"]),
         helper.make_node("Gemm", ["b", "W"], ["y"], transB=1)], "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], [tensor("W", w)])
    return _model(graph)


def constant_node(rng: np.random.Generator) -> onnx.ModelProto:
    w = rng.standard_normal((32, 48)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Constant", [], ["Wc"], value=tensor("Wc", w)),
         helper.make_node("MatMul", ["r", "Wc"], ["y"])], "constant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 48])], [])
    return _model(graph)


def subgraphs(rng: np.random.Generator) -> onnx.ModelProto:
    """If with a weight in each branch plus an outer weight used inside a branch."""
    w_then = rng.standard_normal((16, 16)).astype(np.float32)
    w_else = rng.standard_normal((16, 16)).astype(np.float32)
    w_outer = rng.standard_normal((16, 16)).astype(np.float32)
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "Wt"], ["t1"]), helper.make_node("MatMul", ["t1", "Wo"], ["out_t"])],
        "then", [], [helper.make_tensor_value_info("out_t", TensorProto.FLOAT, [2, 16])], [tensor("Wt", w_then)])
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["We"], value=tensor("We", w_else)),
         helper.make_node("MatMul", ["x", "We"], ["out_e"])],
        "else", [], [helper.make_tensor_value_info("out_e", TensorProto.FLOAT, [2, 16])], [])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)], "ifmodel",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])], [tensor("Wo", w_outer)])
    return _model(graph)


def embedding(rng: np.random.Generator) -> onnx.ModelProto:
    table = rng.standard_normal((100, 24)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["y"])], "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5, 24])], [tensor("E", table)])
    return _model(graph)
