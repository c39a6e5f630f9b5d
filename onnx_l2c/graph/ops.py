"""The op table: per consumer op, which input is a weight and what its axes mean.

Everything onnx_l2c knows about ONNX operators lives here. For each
(op type, input index) that takes a weight, `WEIGHT_INPUTS` says

* its **output-channel axis** (one step per output channel: quantization
  steps, statistics rows),
* its **matrix view**, when calibration models the op: the weight as
  `groups` matrices (rows × cols) acting on vectors of the op's activation
  input, with the axis that runs over the op's input channels,
* the input that adds a **bias** per output row (for bias correction).

`PASSTHROUGH` ops forward a weight unchanged (Transpose permutes its axes):
the consumer search continues through them. Only the default ONNX domain is
modelled. Statistics, sensitivity, the methods and the planner read this
table through `weight_input` / `layer_of`; nothing else names an op type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

DEFAULT_DOMAINS = ("", "ai.onnx")
PASSTHROUGH = frozenset({"Cast", "Identity", "Transpose"})  # forward a weight to the real consumer (input 0)


def node_attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """An attribute's value (ints, int, string decoded), or `default` when absent."""
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


# The matrix layouts of a weight, each with the weight's axis that runs over
# its consumer's input channels: Conv W[O, I/g, k…]; ConvTranspose W[I, O/g, k…];
# MatMul B and Gemm B [K, N]; Gemm B with transB [N, K]; Gather's table [V, D].
INPUT_AXIS = {"conv": 1, "conv_transpose": 0, "matmul": 0, "gemm_kn": 0, "gemm_nk": 1, "gather": 1}


@dataclass(frozen=True)
class Layer:
    """A weight as its consumer's matrices: `groups` matrices (rows × cols per
    group) acting on vectors of the consumer's input `activation_input`.

    `kind` names the layout (how the tensor maps to the matrices; see
    measure.layers.LayerView)."""

    kind: str  # a key of INPUT_AXIS
    groups: int
    rows: int
    cols: int
    activation_input: int
    trans_a: bool = False

    @property
    def input_axis(self) -> int:
        return INPUT_AXIS[self.kind]


@dataclass(frozen=True)
class WeightInput:
    """One weight input of a consumer op."""

    op_type: str
    index: int
    output_axis: Callable[[onnx.NodeProto, int], int | None]  # (node, rank) → output-channel axis
    layer: Callable[[onnx.NodeProto, tuple[int, ...]], Layer | None] = lambda node, shape: None
    bias_input: Callable[[onnx.NodeProto], int | None] = lambda node: None  # input adding one bias per row
    bias_after: bool = False  # the bias is the other input of an Add right after the op (MatMul)


def _conv_layer(node: onnx.NodeProto, shape: tuple[int, ...]) -> Layer | None:
    g = node_attr(node, "group", 1)
    if not 3 <= len(shape) <= 4 or shape[0] % g:
        return None
    return Layer("conv", g, shape[0] // g, int(np.prod(shape[1:])), 0)


def _conv_transpose_layer(node: onnx.NodeProto, shape: tuple[int, ...]) -> Layer | None:
    g = node_attr(node, "group", 1)
    if not 3 <= len(shape) <= 4 or shape[0] % g:
        return None
    kk = int(np.prod(shape[2:]))
    return Layer("conv_transpose", g, shape[1], shape[0] // g * kk, 0)


def _matmul_layer(node: onnx.NodeProto, shape: tuple[int, ...]) -> Layer | None:
    return Layer("matmul", 1, shape[1], shape[0], 0) if len(shape) == 2 else None


def _gemm_layer(node: onnx.NodeProto, shape: tuple[int, ...]) -> Layer | None:
    if len(shape) != 2:
        return None
    trans_a = bool(node_attr(node, "transA", 0))
    if node_attr(node, "transB", 0):
        return Layer("gemm_nk", 1, shape[0], shape[1], 0, trans_a)
    return Layer("gemm_kn", 1, shape[1], shape[0], 0, trans_a)


def _gather_layer(node: onnx.NodeProto, shape: tuple[int, ...]) -> Layer | None:
    if len(shape) != 2 or node_attr(node, "axis", 0) != 0:
        return None
    return Layer("gather", 1, shape[0], shape[1], 1)


def _gemm_axis(index: int) -> Callable[[onnx.NodeProto, int], int | None]:
    def axis(node: onnx.NodeProto, rank: int) -> int | None:
        if rank != 2:
            return None
        trans = node_attr(node, "transA" if index == 0 else "transB", 0)
        return (1 if trans else 0) if index == 0 else (0 if trans else 1)
    return axis


def _gemm_bias(node: onnx.NodeProto) -> int | None:
    # C is a per-row bias only when the op adds it unscaled
    if len(node.input) > 2 and node.input[2] and all(
            node_attr(node, k, 1.0) == 1.0 for k in ("alpha", "beta")):
        return 2
    return None


def _conv_bias(node: onnx.NodeProto) -> int | None:
    return 2 if len(node.input) > 2 and node.input[2] else None


def _rnn_axis(node: onnx.NodeProto, rank: int) -> int | None:
    return 1 if rank == 3 else None  # [directions, gates·hidden, input]: one row per gate unit


_INPUTS = [
    WeightInput("Conv", 1, lambda node, rank: 0, _conv_layer, _conv_bias),
    WeightInput("ConvTranspose", 1, lambda node, rank: 1 if rank >= 2 else None, _conv_transpose_layer),
    WeightInput("MatMul", 1, lambda node, rank: rank - 1 if rank >= 2 else None, _matmul_layer, bias_after=True),
    WeightInput("MatMul", 0, lambda node, rank: rank - 2 if rank >= 2 else None),
    WeightInput("Gemm", 1, _gemm_axis(1), _gemm_layer, _gemm_bias),
    WeightInput("Gemm", 0, _gemm_axis(0)),
    WeightInput("Gather", 0, lambda node, rank: node_attr(node, "axis", 0) % rank, _gather_layer),
    *(WeightInput(op, i, _rnn_axis) for op in ("LSTM", "GRU", "RNN") for i in (1, 2)),
]
WEIGHT_INPUTS: dict[tuple[str, int], WeightInput] = {(w.op_type, w.index): w for w in _INPUTS}


def weight_input(node: onnx.NodeProto, index: int) -> WeightInput | None:
    """The table entry for input `index` of `node`, or None when it takes no weight we model."""
    if node.domain not in DEFAULT_DOMAINS:
        return None
    return WEIGHT_INPUTS.get((node.op_type, index))


def layer_of(node: onnx.NodeProto, index: int, shape: tuple[int, ...]) -> Layer | None:
    """The matrix view of a weight of `shape` as input `index` of `node`, if modelled."""
    entry = weight_input(node, index)
    return entry.layer(node, shape) if entry is not None else None


def is_passthrough(node: onnx.NodeProto, index: int) -> bool:
    return node.domain in DEFAULT_DOMAINS and node.op_type in PASSTHROUGH and index == 0


def passthrough_axis(node: onnx.NodeProto, axis: int, rank: int) -> int | None:
    """The input axis that becomes output axis `axis` of a passthrough op."""
    if node.op_type != "Transpose":
        return axis
    perm = node_attr(node, "perm", None) or list(reversed(range(rank)))
    return perm[axis] if len(perm) == rank else None
