"""Model analysis: which tensors are weights, who consumes them, and their I/O.

Tensors are loaded lazily: the model is read without its external data and a
weight's bytes are read only when that weight is encoded.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from onnx_l2c.errors import FileError, L2CError, ModelError
from onnx_l2c.codec import (BITS_DTYPE, DTYPE_NAMES, FLOAT_DTYPES, NOT_WRITTEN_DTYPES, PACKED_BITS, storage_to_patterns,
                            tensor_nbytes, unpack_elements)
from onnx_l2c.graph.ops import DEFAULT_DOMAINS, is_passthrough, passthrough_axis, weight_input

log = logging.getLogger(__name__)

@dataclass
class GraphRef:
    """A graph of the model: the main graph or a subgraph (path for messages)."""

    graph: onnx.GraphProto
    path: str


@dataclass
class WeightRef:
    """One weight of the model: an initializer or a Constant node's tensor."""

    name: str
    graph: GraphRef
    tensor: onnx.TensorProto  # the initializer or the Constant's `value`
    constant_node: onnx.NodeProto | None = None  # set for Constant-node weights
    channel_axis: int | None = None  # output-channel axis from the consuming op
    consumer: str | None = None  # op type of the consuming op (after passthroughs)
    consumer_node: onnx.NodeProto | None = None  # that op (for calibration statistics)
    consumer_input: int = -1  # which of its inputs the weight is
    transposed: bool = False  # reaches the consumer through a Transpose
    # For an already-quantized weight (int8/uint8/int4/uint4 integers that a quantized
    # operator dequantizes): its zero point, broadcastable to its shape.
    zero_point: np.ndarray | None = None
    # MatMulNBits' B: uint8 bytes each holding 8 / field_bits unsigned integers (first
    # in the low bits); the zero point then broadcasts to the unpacked integers.
    field_bits: int | None = None

    @property
    def dtype(self) -> int:
        return self.tensor.data_type

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensor.dims)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.dtype, self.numel)

    @property
    def weight_count(self) -> int:
        """How many weights it holds: its elements, or the integers packed in them."""
        return self.numel * (8 // self.field_bits) if self.field_bits else self.numel


def iter_scopes(graph: onnx.GraphProto, path: str = "main",
                outer: tuple[onnx.GraphProto, ...] = ()) -> Iterator[tuple[GraphRef, tuple[onnx.GraphProto, ...]]]:
    """Every graph as iter_graphs gives it, with its enclosing graphs (nearest first)."""
    yield GraphRef(graph, path), outer
    for node in graph.node:
        for attr in node.attribute:
            label = f"{path}/{node.name or node.op_type}.{attr.name}"
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_scopes(attr.g, label, (graph,) + outer)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for i, sub in enumerate(attr.graphs):
                    yield from iter_scopes(sub, f"{label}[{i}]", (graph,) + outer)


def iter_graphs(graph: onnx.GraphProto, path: str = "main") -> Iterator[GraphRef]:
    """The graph and, recursively, every subgraph in node attributes."""
    for ref, _ in iter_scopes(graph, path):
        yield ref


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read a model's graph without its external data (read lazily later)."""
    path = Path(path)
    if not path.is_file():
        raise FileError(f"{path}: no such model file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types on garbage
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc


def tensor_bits(tensor: onnx.TensorProto, base_dir: Path) -> np.ndarray:
    """The raw bit patterns (unsigned integers of the element's size) of a tensor, flat;
    for the packed dtypes (int4, ...), one element's pattern per byte.

    Reads external data relative to `base_dir` (the model's folder).
    """
    if tensor.data_type not in DTYPE_NAMES:
        valid = ", ".join(DTYPE_NAMES.values())
        raise L2CError(f"tensor {tensor.name!r}: dtype {tensor.data_type} cannot be coded; valid: {valid}")
    bits_dtype = np.dtype(BITS_DTYPE[tensor.data_type]).newbyteorder("<")
    numel = int(np.prod(tensor.dims, dtype=np.int64)) if len(tensor.dims) else 1
    if external_data_helper.uses_external_data(tensor):
        raw = _read_external(tensor, base_dir)
    elif tensor.HasField("raw_data"):
        raw = tensor.raw_data
    else:
        raw = None
    width = PACKED_BITS.get(tensor.data_type)
    if raw is not None:
        expected = tensor_nbytes(tensor.data_type, numel)
        if len(raw) != expected:
            raise L2CError(f"tensor {tensor.name!r}: {len(raw)} bytes of data for {expected} expected")
        if width:
            return unpack_elements(np.frombuffer(raw, np.uint8), width, numel)
        return np.frombuffer(raw, dtype=bits_dtype).astype(bits_dtype.newbyteorder("="))
    # the typed field ONNX keeps this dtype in (int32_data for the narrow types'
    # values or bits, and the packed types' bytes; uint64_data for uint32, ...),
    # read by onnx's own reader
    count = len(getattr(tensor, onnx.helper.tensor_dtype_to_field(tensor.data_type)))
    if count != (tensor_nbytes(tensor.data_type, numel) if width else numel):
        raise L2CError(f"tensor {tensor.name!r}: {count} values for shape {list(tensor.dims)}")
    values = numpy_helper.to_array(tensor).reshape(-1)
    if width:
        return storage_to_patterns(values, tensor.data_type)
    return values.view(BITS_DTYPE[tensor.data_type])


def _read_external(tensor: onnx.TensorProto, base_dir: Path) -> bytes:
    info = external_data_helper.ExternalDataInfo(tensor)
    location = Path(info.location)
    path = (base_dir / location).resolve()
    if location.is_absolute() or not path.is_relative_to(base_dir.resolve()):
        raise FileError(f"tensor {tensor.name!r}: external data location {info.location!r} is outside {base_dir}")
    try:
        # Non-blocking open, then fstat: a named pipe or a device is refused
        # instead of blocking the read.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FileError(f"tensor {tensor.name!r}: external data {path} is not a regular file")
            fh.seek(info.offset or 0)
            data = fh.read(info.length) if info.length else fh.read()
    except OSError as exc:
        raise FileError(f"tensor {tensor.name!r}: cannot read external data {path}: {exc}") from exc
    if info.length and len(data) != info.length:
        raise FileError(f"tensor {tensor.name!r}: external data {path} is truncated "
                        f"({len(data)} of {info.length} bytes at offset {info.offset})")
    return data


def sparse_to_dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """The dense array onnxruntime makes of a sparse tensor (a Constant node's
    `sparse_value`): zeros except at `indices`, linear ([count]) or per axis
    ([count, rank]), in any order, the last of repeated ones standing. An
    index outside the tensor, or a count that differs from the values',
    raises ValueError."""
    dims = [int(d) for d in sparse.dims]
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dims {dims}")
    values = numpy_helper.to_array(sparse.values).reshape(-1)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64, copy=False)
    total = int(np.prod(dims, dtype=np.int64))
    if indices.ndim == 2 and indices.shape[1] == len(dims) and len(dims) > 1:
        if indices.size and ((indices < 0).any() or (indices >= np.asarray(dims)).any()):
            raise ValueError(f"an index outside dims {dims}")
        indices = indices @ np.array([int(np.prod(dims[j + 1:], dtype=np.int64)) for j in range(len(dims))])
    indices = indices.reshape(-1)
    if len(indices) != len(values) or (len(indices) and (indices.min() < 0 or indices.max() >= total)):
        raise ValueError(f"{len(indices)} indices for {len(values)} values, or an index outside [0, {total})")
    _, from_end = np.unique(indices[::-1], return_index=True)
    last = len(indices) - 1 - from_end
    dense = np.zeros(total, values.dtype)
    dense[indices[last]] = values[last]
    return dense.reshape(dims)


def embed_external(tensor: onnx.TensorProto, base_dir: Path) -> None:
    """Move a tensor's external data into the proto (for tensors kept as they are)."""
    if external_data_helper.uses_external_data(tensor):
        data = _read_external(tensor, base_dir)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
        tensor.raw_data = data


def external_files(model: onnx.ModelProto, base_dir: Path) -> set[Path]:
    """Every external data file a model references."""
    files: set[Path] = set()
    for ref in iter_graphs(model.graph):
        tensors = list(ref.graph.initializer)
        tensors += [a.t for n in ref.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
        for t in tensors:
            if external_data_helper.uses_external_data(t):
                files.add(base_dir / external_data_helper.ExternalDataInfo(t).location)
    return files


def model_bytes(path: Path, model: onnx.ModelProto | None = None) -> int:
    """What a user stores: the .onnx file plus every external data file it references."""
    model = model if model is not None else load_model(path)
    return path.stat().st_size + sum(f.stat().st_size for f in external_files(model, path.parent) if f.is_file())


@dataclass
class Consumer:
    """One read of a value: input `index` of `node`, or (node None) a graph output."""

    node: onnx.NodeProto | None
    index: int


@dataclass
class WeightAnalysis:
    weights: list[WeightRef] = field(default_factory=list)  # floating tensors: planned, lossy where it pays
    # Tensors of the other dtypes (integers, bool, double, float8: quantized weights,
    # index tables): coded losslessly by the writer, never planned.
    exact: list[WeightRef] = field(default_factory=list)
    skipped_small: int = 0


def value_uses(graph: onnx.GraphProto, *, subgraphs: bool = True, outputs: bool = False) -> dict[str, list[Consumer]]:
    """Who reads each value name: node inputs of `graph` (and, with
    `subgraphs`, of every subgraph), and with `outputs` the graph's outputs."""
    # ONNX forbids shadowing outer-scope names, so one map serves all scopes.
    uses: dict[str, list[Consumer]] = {}
    graphs = [ref.graph for ref in iter_graphs(graph)] if subgraphs else [graph]
    for g in graphs:
        for node in g.node:
            for i, name in enumerate(node.input):
                if name:
                    uses.setdefault(name, []).append(Consumer(node, i))
    if outputs:
        for value in graph.output:
            uses.setdefault(value.name, []).append(Consumer(None, -1))
    return uses


@dataclass
class ConsumerInfo:
    axis: int | None = None
    op: str | None = None
    node: onnx.NodeProto | None = None
    index: int = -1
    transposed: bool = False


def _channel_axis(name: str, rank: int, uses: dict[str, list[Consumer]], depth: int = 0) -> ConsumerInfo:
    """Output-channel axis of `name` as seen by its first weight-consuming op
    (the op table's `output_axis`), searched through passthrough ops."""
    if depth > 8 or rank == 0:
        return ConsumerInfo()
    for use in uses.get(name, []):
        node, i = use.node, use.index
        if node is None:
            continue
        if is_passthrough(node, i):
            info = _channel_axis(node.output[0], rank, uses, depth + 1)
            if info.axis is not None and node.op_type == "Transpose":
                info.axis = passthrough_axis(node, info.axis, rank)
                info.transposed = True
            if info.axis is not None:
                return info
            continue
        entry = weight_input(node, i)
        axis = entry.output_axis(node, rank) if entry is not None else None
        if axis is not None:
            return ConsumerInfo(axis, node.op_type, node, i)
    return ConsumerInfo()


# Integer tensors this small stay inline whatever --min-elements says: they are
# shapes, axes, pads and starts that onnxruntime reads while it builds the
# session (ConstantOfShape's shape, Reshape's, Slice's), before any Decode node
# runs; the fast loader's tensors are not readable then.
EXACT_MIN_ELEMENTS = 64


# The quantized operators' integer weight inputs: op type → (weight input,
# its zero-point input, the zero point's axis when it is per channel, as an
# attribute name or a fixed axis; None: the last axis).
QUANTIZED_WEIGHT_INPUTS: dict[str, tuple[int, int, str | int | None]] = {
    "DequantizeLinear": (0, 2, "axis"),  # QDQ: the integers feed DequantizeLinear (axis attribute, default 1)
    "ConvInteger": (1, 3, 0),  # QOperator: per output channel
    "MatMulInteger": (1, 3, None),  # per column of B
    "QLinearConv": (3, 5, 0),
    "QLinearMatMul": (3, 5, None),
}
# Where gathered rows of a quantized table are read as integers, in the same
# form; searched with shape () so that only a per-tensor zero point passes.
QUANTIZED_ROWS_INPUTS: dict[str, tuple[int, int, str | int | None]] = {
    "DequantizeLinear": (0, 2, "axis"),
    "MatMulInteger": (0, 2, None),  # dynamic quantization's embeddings feed the first MatMul as its A
    "QLinearMatMul": (0, 2, None),
}
_QUANTIZED_DTYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4)


def _constant_zero_point(node: onnx.NodeProto, index: int, constants: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """Input `index` of `node` as an int32 zero point (absent: 0); None if it is not a constant."""
    name = node.input[index] if len(node.input) > index else ""
    if not name:
        return np.zeros((), np.int32)
    if name not in constants:
        return None
    return numpy_helper.to_array(constants[name]).astype(np.int32)


def _quantized_zero_point(name: str, shape: tuple[int, ...], uses: dict[str, list[Consumer]],
                          constants: dict[str, onnx.TensorProto],
                          inputs: dict[str, tuple[int, int, str | int | None]] = QUANTIZED_WEIGHT_INPUTS
                          ) -> np.ndarray | None:
    """The zero point (int32, broadcastable to `shape`) if every read of `name` is
    a quantized operator's weight input (`inputs`) with a constant zero point
    (absent: 0) that agrees between them; else None (not a quantized weight)."""
    found: np.ndarray | None = None
    reads = uses.get(name, [])
    if not reads:
        return None
    for use in reads:
        node = use.node
        if node is not None and node.op_type == "Gather" and node.domain in DEFAULT_DOMAINS and use.index == 0 \
                and len(shape) >= 1:
            # a quantized table (dynamic quantization's embeddings): rows gathered, then
            # read as integers with one zero point for the whole tensor
            rows = _quantized_zero_point(node.output[0], (), uses, constants, QUANTIZED_ROWS_INPUTS)
            if rows is None or (found is not None and (found.size != 1 or not np.array_equal(found, rows))):
                return None
            found = rows.reshape(())
            continue
        spec = inputs.get(node.op_type) if node is not None and node.domain in DEFAULT_DOMAINS else None
        if spec is None or use.index != spec[0]:
            return None
        _, zp_index, axis_spec = spec
        zp = _constant_zero_point(node, zp_index, constants)
        if zp is None:
            return None
        if zp.size > 1:
            if isinstance(axis_spec, str):
                axis = next((a.i for a in node.attribute if a.name == axis_spec), 1)
            else:
                axis = len(shape) - 1 if axis_spec is None else axis_spec
            axis = axis + len(shape) if axis < 0 else axis
            if not 0 <= axis < len(shape) or shape[axis] != zp.size:
                return None
            zp = zp.reshape([-1 if d == axis else 1 for d in range(len(shape))])
        if found is not None and (found.shape != zp.shape or not np.array_equal(found, zp)):
            return None
        found = zp
    return found


NBITS_DOMAIN = "com.microsoft"


def _nbits_zero_point(name: str, shape: tuple[int, ...], uses: dict[str, list[Consumer]],
                      constants: dict[str, onnx.TensorProto]) -> tuple[np.ndarray, int] | None:
    """(zero point, bits) if every read of `name` is the B input of a MatMulNBits
    (onnxruntime's block-quantized MatMul: B is uint8 [N, blocks, block bytes] of
    `bits`-wide unsigned integers, one zero point per block) whose zero points are
    absent (2^(bits-1)) or constant packed uint8, and they all agree; else None.
    Widths that straddle bytes (3, 5, 6, 7 bits) and act-order (g_idx) are left out."""
    found: tuple[np.ndarray, int] | None = None
    reads = uses.get(name, [])
    if not reads or len(shape) != 3:
        return None
    rows, blocks, _ = shape
    for use in reads:
        node = use.node
        if node is None or node.op_type != "MatMulNBits" or node.domain != NBITS_DOMAIN or use.index != 1:
            return None
        attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        bits = attrs.get("bits", 4)
        if bits not in (2, 4, 8) or attrs.get("N") != rows or (len(node.input) > 4 and node.input[4]):
            return None
        zp_name = node.input[3] if len(node.input) > 3 else ""
        if not zp_name:
            zp = np.full((rows, blocks, 1), 1 << (bits - 1), np.int32)
        else:
            t = constants.get(zp_name)
            if t is None or t.data_type != onnx.TensorProto.UINT8:
                return None  # a runtime or float zero point (same dtype as the scales): not on an integer grid
            packed = numpy_helper.to_array(t).reshape(-1)
            per_row = -(-blocks * bits // 8)
            if packed.size != rows * per_row:
                return None
            fields = unpack_elements(packed, bits, packed.size * (8 // bits)).reshape(rows, -1)[:, :blocks]
            zp = fields.astype(np.int32).reshape(rows, blocks, 1)
        if found is not None and (found[1] != bits or not np.array_equal(found[0], zp)):
            return None
        found = (zp, bits)
    return found


def find_weights(model: onnx.ModelProto, min_elements: int, plan_quantized: bool = False) -> WeightAnalysis:
    """Initializers and Constant-node tensors with ≥ min_elements elements: the
    floating ones as `weights`, those of the other dtypes the format holds as `exact`.

    With `plan_quantized` (a size target), the int8/uint8/int4/uint4 weights of quantized
    operators (QDQ's DequantizeLinear, ConvInteger, MatMulInteger, QLinearConv,
    QLinearMatMul) with constant zero points are `weights` too, with
    `zero_point` set: the planner may put them on a coarser integer grid. So are
    MatMulNBits' block-quantized B (uint8 holding 2/4/8-bit integers: `field_bits`).

    Each weight appears once however many nodes use it (it stays shared).
    """
    uses = value_uses(model.graph)
    out = WeightAnalysis()
    constants = {t.name: t for ref in iter_graphs(model.graph) for t in ref.graph.initializer} if plan_quantized \
        else {}
    for ref in iter_graphs(model.graph):
        candidates: list[tuple[onnx.TensorProto, onnx.NodeProto | None, str]] = [
            (t, None, t.name) for t in ref.graph.initializer
        ]
        for node in ref.graph.node:
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and len(node.output) == 1:
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        candidates.append((attr.t, node, node.output[0]))
        for tensor, node, name in candidates:
            if tensor.data_type not in DTYPE_NAMES or tensor.data_type in NOT_WRITTEN_DTYPES:
                continue  # strings, complex, int2, float4, ...: kept as they are
            w = WeightRef(name=name, graph=ref, tensor=tensor, constant_node=node)
            exact = tensor.data_type not in FLOAT_DTYPES
            if w.numel < (max(min_elements, EXACT_MIN_ELEMENTS) if exact else min_elements):
                out.skipped_small += 1
                continue
            if exact and plan_quantized and tensor.data_type in _QUANTIZED_DTYPES:
                w.zero_point = _quantized_zero_point(name, w.shape, uses, constants)
                if w.zero_point is None and tensor.data_type == onnx.TensorProto.UINT8:
                    nbits = _nbits_zero_point(name, w.shape, uses, constants)
                    if nbits is not None:
                        w.zero_point, w.field_bits = nbits
                if w.zero_point is not None:
                    out.weights.append(w)
                    continue
            if exact:
                out.exact.append(w)
                continue
            info = _channel_axis(name, len(w.shape), uses)
            w.channel_axis, w.consumer = info.axis, info.op
            w.consumer_node, w.consumer_input, w.transposed = info.node, info.index, info.transposed
            out.weights.append(w)
    return out
