"""Bias correction, part of output-aware rounding: the mean output shift
ΔW·E[x] that quantizing a weight causes is folded into the bias its consumer
adds, so the weight's quantizers only need to control the remaining
(centered) error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_l2c.codec import Recipe, decode_native, serialize
from onnx_l2c.graph.model import WeightRef, value_uses
from onnx_l2c.graph.ops import weight_input
from onnx_l2c.measure.layers import LayerStats
from onnx_l2c.plan.allocate import Option

if TYPE_CHECKING:
    from onnx_l2c.plan.context import PlanContext


def find_biases(model: onnx.ModelProto, weights: list[WeightRef], stats: dict[str, LayerStats]) -> dict[str, str]:
    """Weights whose consumer adds a float32 bias initializer of one value per
    output row, used by nothing else: Conv's B, Gemm's C (alpha = beta = 1),
    or the Add right after a MatMul."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses = value_uses(graph, subgraphs=False, outputs=True)  # a graph output counts as a use

    def bias_ok(name: str, rows: int) -> bool:
        t = inits.get(name)
        return (t is not None and t.data_type == onnx.TensorProto.FLOAT and len(uses.get(name, [])) == 1
                and int(np.prod(t.dims, dtype=np.int64)) == rows and (len(t.dims) == 1 or max(t.dims) == rows))

    out: dict[str, str] = {}
    for w in weights:
        st = stats.get(w.name)
        node = w.consumer_node
        if (st is None or st.mean is None or node is None or w.graph.path != "main" or w.transposed
                or len(uses.get(w.name, [])) != 1 or node.input[w.consumer_input] != w.name):
            continue
        entry = weight_input(node, w.consumer_input)
        if entry is None:
            continue
        rows = st.view.groups * st.view.rows
        bias = None
        index = entry.bias_input(node)
        if index is not None:
            bias = node.input[index]
        elif entry.bias_after:
            after = uses.get(node.output[0], [])
            if len(after) == 1 and after[0].node is not None and after[0].node.op_type == "Add":
                others = [n for n in after[0].node.input if n != node.output[0]]
                bias = others[0] if len(others) == 1 else None
        if bias is not None and bias_ok(bias, rows) and bias not in out.values():
            out[w.name] = bias
    return out


def bias_corrections(ctx: PlanContext, chosen: dict[str, Option]) -> tuple[dict[str, np.ndarray], dict[str, Recipe]]:
    """New bias values (b − ΔW·E[x]) for every corrected weight, and the final
    recipes of those weights (so they are not encoded twice)."""
    new_bias: dict[str, np.ndarray] = {}
    recipes: dict[str, Recipe] = {}
    for name, bias_name in ctx.bias_of.items():
        option = chosen.get(name)
        if option is None or option.params is None:
            continue
        w = ctx.weights[name]
        tensor = ctx.tensor_input(name)
        recipe = ctx.encoding(name, option).encode(tensor)
        payload = serialize(recipe)
        values = tensor.decoded_values(decode_native(payload, recipe)).astype(np.float64)
        stats = ctx.stats[name]
        delta = stats.view.to_matrix(values - tensor.values.astype(np.float64))
        shift = np.einsum("grd,gd->gr", delta, stats.mean).reshape(-1)
        bias = next(t for t in w.graph.graph.initializer if t.name == bias_name)
        b = numpy_helper.to_array(bias, base_dir=str(ctx.base_dir)).astype(np.float64)
        new_bias[bias_name] = (b.reshape(-1) - shift).astype(np.float32).reshape(b.shape)
        recipes[name] = recipe
    return new_bias, recipes
