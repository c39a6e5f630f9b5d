"""ONNX operators as torch functions, one per op type, registered in `OPS`.

Each follows the ONNX operator spec for the opsets real exporters write
(7 to 21); where onnxruntime's kernel is the reference (integer division
truncates, Cast to an integer truncates), it follows onnxruntime. An op is
called as `fn(ctx, *inputs)` with missing optional inputs as None and
returns one tensor or a tuple (one per node output).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from onnx_l2c.errors import UnsupportedError

Tensor = torch.Tensor

DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.BOOL: torch.bool,
    onnx.TensorProto.UINT16: torch.uint16, onnx.TensorProto.UINT32: torch.uint32,
    onnx.TensorProto.UINT64: torch.uint64,
}


@dataclass
class OpContext:
    """What an op sees besides its inputs."""

    node: onnx.NodeProto
    attrs: dict[str, Any]
    opset: int  # of the default domain
    run_graph: Callable[[onnx.GraphProto, list[Tensor]], list[Tensor]]  # a subgraph, in this node's scope

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


OpFn = Callable[..., Tensor | tuple[Tensor | None, ...]]
OPS: dict[str, OpFn] = {}


def op(*names: str) -> Callable[[OpFn], OpFn]:
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = fn
        return fn
    return register


def to_torch(tensor: onnx.TensorProto) -> Tensor:
    """An ONNX tensor (its data inline) as a torch tensor of the same type."""
    if tensor.data_type not in DTYPES:
        raise UnsupportedError(f"tensor {tensor.name!r}: element type "
                               f"{onnx.helper.tensor_dtype_to_string(tensor.data_type)} is not supported by the mirror")
    array = numpy_helper.to_array(tensor)
    if array.dtype.kind not in "biuf":  # numpy's own float8 / int4 stand-ins
        raise UnsupportedError(f"tensor {tensor.name!r}: element type {array.dtype} is not supported by the mirror")
    if tensor.data_type == onnx.TensorProto.BFLOAT16:  # numpy_helper gives float32 values
        return torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True))


def ints(t: Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# --- elementwise ---------------------------------------------------------------------

def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    return lambda ctx, a, b: fn(a, b)


for _name, _fn in {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Equal": torch.eq,
                   "Greater": torch.gt, "GreaterOrEqual": torch.ge, "Less": torch.lt, "LessOrEqual": torch.le,
                   "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor}.items():
    OPS[_name] = _binary(_fn)

for _name, _fn in {"Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Erf": torch.erf, "Tanh": torch.tanh,
                   "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Reciprocal": torch.reciprocal, "Neg": torch.neg,
                   "Abs": torch.abs, "Floor": torch.floor, "Ceil": torch.ceil, "Sin": torch.sin, "Cos": torch.cos,
                   "Not": torch.logical_not, "Sign": torch.sign, "Round": torch.round,
                   "Softplus": F.softplus, "Softsign": F.softsign}.items():
    OPS[_name] = (lambda f: lambda ctx, x: f(x))(_fn)


@op("Div")
def div(ctx: OpContext, a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # onnxruntime: C++ integer division


@op("Mod")
def mod(ctx: OpContext, a: Tensor, b: Tensor) -> Tensor:
    return torch.fmod(a, b) if ctx.attr("fmod", 0) else torch.remainder(a, b)


@op("Pow")
def power(ctx: OpContext, a: Tensor, b: Tensor) -> Tensor:
    return torch.pow(a, b).to(a.dtype)


@op("Max", "Min", "Sum", "Mean")
def variadic(ctx: OpContext, *xs: Tensor) -> Tensor:
    kind = ctx.node.op_type
    if kind == "Max":
        return functools.reduce(torch.maximum, xs)
    if kind == "Min":
        return functools.reduce(torch.minimum, xs)
    total = functools.reduce(torch.add, xs)
    return total / len(xs) if kind == "Mean" else total


@op("Clip")
def clip(ctx: OpContext, x: Tensor, low: Tensor | None = None, high: Tensor | None = None) -> Tensor:
    if ctx.opset < 11:
        low_v, high_v = ctx.attr("min", -math.inf), ctx.attr("max", math.inf)
        return torch.clamp(x, low_v, high_v)
    if low is not None:
        x = torch.maximum(x, low.to(x.dtype))
    if high is not None:
        x = torch.minimum(x, high.to(x.dtype))
    return x


@op("HardSigmoid")
def hard_sigmoid(ctx: OpContext, x: Tensor) -> Tensor:
    return torch.clamp(ctx.attr("alpha", 0.2) * x + ctx.attr("beta", 0.5), 0.0, 1.0)


@op("HardSwish")
def hard_swish(ctx: OpContext, x: Tensor) -> Tensor:
    return x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


@op("LeakyRelu")
def leaky_relu(ctx: OpContext, x: Tensor) -> Tensor:
    return F.leaky_relu(x, ctx.attr("alpha", 0.01))


@op("Elu")
def elu(ctx: OpContext, x: Tensor) -> Tensor:
    return F.elu(x, ctx.attr("alpha", 1.0))


@op("Selu")
def selu(ctx: OpContext, x: Tensor) -> Tensor:
    alpha, gamma = ctx.attr("alpha", 1.67326319217681884765625), ctx.attr("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@op("Celu")
def celu(ctx: OpContext, x: Tensor) -> Tensor:
    return F.celu(x, ctx.attr("alpha", 1.0))


@op("ThresholdedRelu")
def thresholded_relu(ctx: OpContext, x: Tensor) -> Tensor:
    return torch.where(x > ctx.attr("alpha", 1.0), x, torch.zeros_like(x))


@op("Shrink")
def shrink(ctx: OpContext, x: Tensor) -> Tensor:
    lambd, bias = ctx.attr("lambd", 0.5), ctx.attr("bias", 0.0)
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x))).to(x.dtype)


@op("PRelu")
def prelu(ctx: OpContext, x: Tensor, slope: Tensor) -> Tensor:
    return torch.where(x < 0, x * slope, x)


@op("Gelu")
def gelu(ctx: OpContext, x: Tensor) -> Tensor:
    return F.gelu(x, approximate=ctx.attr("approximate", "none"))


@op("Where")
def where(ctx: OpContext, cond: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(cond, a, b)


@op("Cast")
def cast(ctx: OpContext, x: Tensor) -> Tensor:
    to = ctx.attr("to")
    if to not in DTYPES:
        raise UnsupportedError(f"node {ctx.node.name!r}: Cast to element type {to} is not supported by the mirror")
    return x.to(DTYPES[to])


@op("Identity", "Dropout")
def identity(ctx: OpContext, x: Tensor, *rest: Tensor | None) -> Tensor | tuple[Tensor, ...]:
    if ctx.node.op_type == "Dropout":
        training = rest[1] if len(rest) > 1 else None
        if training is not None and bool(training.reshape(-1)[0]):
            raise UnsupportedError(f"node {ctx.node.name!r}: Dropout in training mode is not supported by the "
                                   "mirror (it evaluates inference graphs)")
        if len(ctx.node.output) > 1:
            return x, torch.ones_like(x, dtype=torch.bool)
    return x


# --- shapes and indexing -------------------------------------------------------------

@op("Shape")
def shape(ctx: OpContext, x: Tensor) -> Tensor:
    dims = list(x.shape)
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    return torch.tensor(dims[slice(start, end)], dtype=torch.int64)


@op("Size")
def size(ctx: OpContext, x: Tensor) -> Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64)


@op("Reshape")
def reshape(ctx: OpContext, x: Tensor, target: Tensor) -> Tensor:
    dims = ints(target)
    if not ctx.attr("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@op("Flatten")
def flatten(ctx: OpContext, x: Tensor) -> Tensor:
    axis = _axis(ctx.attr("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _axes(ctx: OpContext, given: Tensor | None) -> list[int] | None:
    """Axes from the input (newer opsets) or the attribute (older ones)."""
    if given is not None:
        return ints(given)
    axes = ctx.attr("axes")
    return None if axes is None else list(axes)


@op("Squeeze")
def squeeze(ctx: OpContext, x: Tensor, axes_in: Tensor | None = None) -> Tensor:
    axes = _axes(ctx, axes_in)
    if not axes:
        return x.squeeze() if x.dim() else x
    return x.squeeze(tuple(_axis(a, x.dim()) for a in axes))


@op("Unsqueeze")
def unsqueeze(ctx: OpContext, x: Tensor, axes_in: Tensor | None = None) -> Tensor:
    axes = _axes(ctx, axes_in) or []
    rank = x.dim() + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(a)
    return x


@op("Transpose")
def transpose(ctx: OpContext, x: Tensor) -> Tensor:
    perm = ctx.attr("perm") or list(range(x.dim()))[::-1]
    return x.permute(list(perm))


@op("Concat")
def concat(ctx: OpContext, *xs: Tensor) -> Tensor:
    return torch.cat([x for x in xs if x is not None], dim=ctx.attr("axis"))


@op("Split")
def split(ctx: OpContext, x: Tensor, sizes_in: Tensor | None = None) -> tuple[Tensor, ...]:
    axis = _axis(ctx.attr("axis", 0), x.dim())
    sizes = ints(sizes_in) if sizes_in is not None else list(ctx.attr("split", []) or [])
    n = len(ctx.node.output)
    if not sizes:
        parts = ctx.attr("num_outputs", n)
        each = -(-x.shape[axis] // parts)
        sizes = [min(each, x.shape[axis] - each * i) for i in range(parts)]
    return tuple(torch.split(x, sizes, dim=axis))


@op("Slice")
def slice_(ctx: OpContext, x: Tensor, starts: Tensor | None = None, ends: Tensor | None = None,
           axes_in: Tensor | None = None, steps_in: Tensor | None = None) -> Tensor:
    if ctx.opset < 10:
        start_v, end_v = list(ctx.attr("starts")), list(ctx.attr("ends"))
        axes = list(ctx.attr("axes", range(len(start_v))))
        steps = [1] * len(start_v)
    else:
        start_v, end_v = ints(starts), ints(ends)
        axes = ints(axes_in) if axes_in is not None else list(range(len(start_v)))
        steps = ints(steps_in) if steps_in is not None else [1] * len(start_v)
    for a, s, e, st in zip(axes, start_v, end_v, steps):
        a = _axis(a, x.dim())
        # numpy's clamping is the spec's, negative steps included
        begin, stop, step = slice(s, e, st).indices(x.shape[a])
        if step > 0:
            index = [slice(None)] * x.dim()
            index[a] = slice(begin, stop, step)
            x = x[tuple(index)]
        else:
            x = x.index_select(a, torch.arange(begin, stop, step, dtype=torch.int64))
    return x


@op("Expand")
def expand(ctx: OpContext, x: Tensor, target: Tensor) -> Tensor:
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(target))))


@op("Tile")
def tile(ctx: OpContext, x: Tensor, repeats: Tensor) -> Tensor:
    return x.repeat(ints(repeats))


def _wrap(indices: Tensor, dim: int) -> Tensor:
    indices = indices.to(torch.int64)
    return torch.where(indices < 0, indices + dim, indices)


@op("Gather")
def gather(ctx: OpContext, x: Tensor, indices: Tensor) -> Tensor:
    axis = _axis(ctx.attr("axis", 0), x.dim())
    idx = _wrap(indices, x.shape[axis])
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))


@op("GatherElements")
def gather_elements(ctx: OpContext, x: Tensor, indices: Tensor) -> Tensor:
    axis = _axis(ctx.attr("axis", 0), x.dim())
    return torch.gather(x, axis, _wrap(indices, x.shape[axis]))


@op("GatherND")
def gather_nd(ctx: OpContext, x: Tensor, indices: Tensor) -> Tensor:
    b = ctx.attr("batch_dims", 0)
    k = indices.shape[-1]
    batch = math.prod(x.shape[:b])
    xs = x.reshape((batch,) + tuple(x.shape[b:]))
    idx = indices.to(torch.int64).reshape((batch,) + tuple(indices.shape[b:]))
    rows = torch.arange(batch).reshape((batch,) + (1,) * (idx.dim() - 2))
    picks = tuple(_wrap(idx[..., i], x.shape[b + i]) for i in range(k))
    out = xs[(rows.expand(idx.shape[:-1]),) + picks]
    return out.reshape(tuple(x.shape[:b]) + tuple(indices.shape[b:-1]) + tuple(x.shape[b + k:]))


@op("ScatterND")
def scatter_nd(ctx: OpContext, x: Tensor, indices: Tensor, updates: Tensor) -> Tensor:
    if ctx.attr("reduction", "none") != "none":
        raise UnsupportedError(f"node {ctx.node.name!r}: ScatterND with a reduction is not supported by the mirror")
    out = x.clone()
    k = indices.shape[-1]
    picks = tuple(_wrap(indices[..., i], x.shape[i]) for i in range(k))
    out[picks] = updates
    return out


@op("Range")
def range_(ctx: OpContext, start: Tensor, limit: Tensor, delta: Tensor) -> Tensor:
    n = max(int(math.ceil((limit.item() - start.item()) / delta.item())), 0)
    return start + torch.arange(n, dtype=start.dtype) * delta


@op("ConstantOfShape")
def constant_of_shape(ctx: OpContext, dims: Tensor) -> Tensor:
    value = ctx.attr("value")
    fill = to_torch(value).reshape(-1) if value is not None else torch.zeros(1, dtype=torch.float32)
    return fill.expand(ints(dims)).clone() if ints(dims) else fill.reshape(()).expand(ints(dims)).clone()


@op("Pad")
def pad(ctx: OpContext, x: Tensor, pads_in: Tensor | None = None, value: Tensor | None = None,
        axes_in: Tensor | None = None) -> Tensor:
    mode = ctx.attr("mode", "constant")
    pads = ints(pads_in) if ctx.opset >= 11 else list(ctx.attr("pads"))
    fill = (value.item() if value is not None and value.numel() else 0.0) if ctx.opset >= 11 \
        else ctx.attr("value", 0.0)
    axes = [_axis(a, x.dim()) for a in ints(axes_in)] if axes_in is not None else list(range(x.dim()))
    n = len(axes)
    for i, a in enumerate(axes):
        before, after = pads[i], pads[i + n]
        if mode == "constant":
            spec = [0, 0] * (x.dim() - 1 - a) + [before, after]
            x = F.pad(x, spec, value=fill)
            continue
        size = x.shape[a]
        positions = torch.arange(-before, size + after)
        if mode == "edge":
            positions = positions.clamp(0, size - 1)
        elif mode == "reflect":
            period = 2 * (size - 1) if size > 1 else 1
            positions = positions.remainder(period)
            positions = torch.where(positions >= size, period - positions, positions)
        elif mode == "wrap":
            positions = positions.remainder(size)
        else:
            raise UnsupportedError(f"node {ctx.node.name!r}: Pad mode {mode!r} is not supported by the mirror")
        x = x.index_select(a, positions)
    return x


# --- reductions and normalizations ---------------------------------------------------

@op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1",
    "ReduceSumSquare", "ReduceLogSumExp")
def reduce(ctx: OpContext, x: Tensor, axes_in: Tensor | None = None) -> Tensor:
    axes = _axes(ctx, axes_in)
    keep = bool(ctx.attr("keepdims", 1))
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    dims = tuple(_axis(a, x.dim()) for a in axes)
    kind = ctx.node.op_type
    if kind == "ReduceMean":
        return x.mean(dim=dims, keepdim=keep)
    if kind == "ReduceSum":
        return x.sum(dim=dims, keepdim=keep)
    if kind == "ReduceMax":
        return x.amax(dim=dims, keepdim=keep)
    if kind == "ReduceMin":
        return x.amin(dim=dims, keepdim=keep)
    if kind == "ReduceSumSquare":
        return (x * x).sum(dim=dims, keepdim=keep)
    if kind == "ReduceL2":
        return torch.sqrt((x * x).sum(dim=dims, keepdim=keep))
    if kind == "ReduceL1":
        return x.abs().sum(dim=dims, keepdim=keep)
    if kind == "ReduceLogSumExp":
        return torch.logsumexp(x, dim=dims, keepdim=keep)
    out = x
    for d in sorted(dims, reverse=True):
        out = out.prod(dim=d, keepdim=keep)
    return out


@op("ArgMax", "ArgMin")
def arg_extreme(ctx: OpContext, x: Tensor) -> Tensor:
    axis = _axis(ctx.attr("axis", 0), x.dim())
    keep = bool(ctx.attr("keepdims", 1))
    values = x.flip(axis) if ctx.attr("select_last_index", 0) else x
    fn = torch.argmax if ctx.node.op_type == "ArgMax" else torch.argmin
    out = fn(values, dim=axis, keepdim=keep)
    return x.shape[axis] - 1 - out if ctx.attr("select_last_index", 0) else out


@op("Softmax", "LogSoftmax")
def softmax(ctx: OpContext, x: Tensor) -> Tensor:
    fn = torch.softmax if ctx.node.op_type == "Softmax" else torch.log_softmax
    if ctx.opset >= 13:
        return fn(x, dim=ctx.attr("axis", -1))
    axis = _axis(ctx.attr("axis", 1), x.dim())  # older opsets: over the flattened trailing axes
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    return fn(flat, dim=1).reshape(x.shape)


@op("LayerNormalization")
def layer_norm(ctx: OpContext, x: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor | tuple:
    axis = _axis(ctx.attr("axis", -1), x.dim())
    eps = ctx.attr("epsilon", 1e-5)
    y = F.layer_norm(x, tuple(x.shape[axis:]), None, None, eps) * scale
    if bias is not None:
        y = y + bias
    if len(ctx.node.output) == 1:
        return y
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    inv_std = torch.rsqrt(x.var(dim=dims, unbiased=False, keepdim=True) + eps)
    return (y, mean, inv_std)[:len(ctx.node.output)]


@op("BatchNormalization")
def batch_norm(ctx: OpContext, x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    if ctx.attr("training_mode", 0) or len(ctx.node.output) > 1:
        raise UnsupportedError(f"node {ctx.node.name!r}: BatchNormalization in training mode is not supported "
                               "by the mirror (it evaluates inference graphs)")
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=ctx.attr("epsilon", 1e-5))


@op("InstanceNormalization")
def instance_norm(ctx: OpContext, x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=ctx.attr("epsilon", 1e-5))


@op("LRN")
def lrn(ctx: OpContext, x: Tensor) -> Tensor:
    return F.local_response_norm(x, ctx.attr("size"), alpha=ctx.attr("alpha", 1e-4), beta=ctx.attr("beta", 0.75),
                                 k=ctx.attr("bias", 1.0))


# --- linear algebra and convolution --------------------------------------------------

@op("MatMul")
def matmul(ctx: OpContext, a: Tensor, b: Tensor) -> Tensor:
    return torch.matmul(a, b)


@op("Gemm")
def gemm(ctx: OpContext, a: Tensor, b: Tensor, c: Tensor | None = None) -> Tensor:
    a = a.t() if ctx.attr("transA", 0) else a
    b = b.t() if ctx.attr("transB", 0) else b
    y = ctx.attr("alpha", 1.0) * (a @ b)
    return y if c is None else y + ctx.attr("beta", 1.0) * c


def _pads(ctx: OpContext, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
          dilations: Sequence[int]) -> list[int]:
    """ONNX pads [begin..., end...], from auto_pad when it is set."""
    n = len(spatial)
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            begin.append(small if auto == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return begin + end
    if auto == "VALID":
        return [0] * (2 * n)
    return list(ctx.attr("pads", [0] * (2 * n)))


def _spatial_pad(x: Tensor, pads: list[int], value: float = 0.0) -> Tensor:
    n = len(pads) // 2
    spec: list[int] = []
    for i in reversed(range(n)):
        spec += [pads[i], pads[i + n]]
    return F.pad(x, spec, value=value)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@op("Conv")
def conv(ctx: OpContext, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    n = w.dim() - 2
    kernel = list(w.shape[2:])
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    pads = _pads(ctx, list(x.shape[2:]), kernel, strides, dilations)
    if pads[:n] == pads[n:]:
        padding = pads[:n]
    else:
        x, padding = _spatial_pad(x, pads), [0] * n
    return _CONV[n](x, w, b, stride=strides, padding=padding, dilation=dilations, groups=ctx.attr("group", 1))


@op("ConvTranspose")
def conv_transpose(ctx: OpContext, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    n = w.dim() - 2
    dilations = list(ctx.attr("dilations", [1] * n))
    kernel = [(k - 1) * d + 1 for k, d in zip(w.shape[2:], dilations)]
    strides = list(ctx.attr("strides", [1] * n))
    extra = list(ctx.attr("output_padding", [0] * n))
    spatial = list(x.shape[2:])
    full = [s * (i - 1) + e + k for s, i, e, k in zip(strides, spatial, extra, kernel)]
    target = ctx.attr("output_shape")
    auto = ctx.attr("auto_pad", "NOTSET")
    if target is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        wanted = list(target)[-n:] if target is not None else [i * s for i, s in zip(spatial, strides)]
        totals = [f - t for f, t in zip(full, wanted)]
        # onnxruntime: SAME_UPPER puts the smaller half first, anything else the larger
        begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in totals]
        pads = begin + [t - bg for t, bg in zip(totals, begin)]
    else:
        pads = list(ctx.attr("pads", [0] * (2 * n)))
    # The kernel's full output, then output_padding and any negative pad as
    # zeros, then the positive pads cropped; the bias last, so the added
    # rows get it too.
    y = _CONV_T[n](x, w, None, stride=strides, padding=0, dilation=dilations, groups=ctx.attr("group", 1))
    grow = [max(-p, 0) for p in pads[:n]] + [e + max(-q, 0) for e, q in zip(extra, pads[n:])]
    if any(grow):
        y = _spatial_pad(y, grow)
    index = [slice(None), slice(None)] + [slice(max(p, 0), y.shape[2 + i] - max(q, 0))
                                          for i, (p, q) in enumerate(zip(pads[:n], pads[n:]))]
    y = y[tuple(index)]
    return y if b is None else y + b.reshape((1, -1) + (1,) * n)


def _pool_setup(ctx: OpContext, x: Tensor) -> tuple[list[int], list[int], list[int], list[int], bool]:
    kernel = list(ctx.attr("kernel_shape"))
    n = len(kernel)
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    pads = _pads(ctx, list(x.shape[2:]), kernel, strides, dilations)
    return kernel, strides, dilations, pads, bool(ctx.attr("ceil_mode", 0))


def _ceil_extra(x: Tensor, kernel: list[int], strides: list[int], dilations: list[int], pads: list[int],
                ceil_mode: bool) -> list[int]:
    """End padding that ceil_mode adds (a last window must start inside the input or its begin pad)."""
    n = len(kernel)
    extra = []
    for i in range(n):
        size = x.shape[2 + i] + pads[i] + pads[i + n]
        span = (kernel[i] - 1) * dilations[i] + 1
        count = (size - span) / strides[i] + 1
        out = math.ceil(count) if ceil_mode else math.floor(count)
        if ceil_mode and (out - 1) * strides[i] >= x.shape[2 + i] + pads[i]:
            out -= 1
        extra.append(max((out - 1) * strides[i] + span - size, 0))
    return extra


@op("MaxPool")
def max_pool(ctx: OpContext, x: Tensor) -> Tensor:
    if len(ctx.node.output) > 1:
        raise UnsupportedError(f"node {ctx.node.name!r}: MaxPool's Indices output is not supported by the mirror")
    kernel, strides, dilations, pads, ceil_mode = _pool_setup(ctx, x)
    n = len(kernel)
    extra = _ceil_extra(x, kernel, strides, dilations, pads, ceil_mode)
    low = -math.inf if x.is_floating_point() else torch.iinfo(x.dtype).min
    padded = _spatial_pad(x, pads[:n] + [p + e for p, e in zip(pads[n:], extra)], value=low)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
    return fn(padded, kernel, strides, 0, dilations)


@op("AveragePool")
def average_pool(ctx: OpContext, x: Tensor) -> Tensor:
    kernel, strides, dilations, pads, ceil_mode = _pool_setup(ctx, x)
    if any(d != 1 for d in dilations):
        raise UnsupportedError(f"node {ctx.node.name!r}: AveragePool with dilations is not supported by the mirror")
    n = len(kernel)
    extra = _ceil_extra(x, kernel, strides, dilations, pads, ceil_mode)
    ends = [p + e for p, e in zip(pads[n:], extra)]
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    sums = fn(_spatial_pad(x, pads[:n] + ends), kernel, strides, 0) * math.prod(kernel)
    # the divisor: the pads count when count_include_pad (not ceil_mode's extra), else only the input
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype)
    if ctx.attr("count_include_pad", 0):
        counted = _spatial_pad(_spatial_pad(ones, pads, value=1.0), [0] * n + extra)
    else:
        counted = _spatial_pad(ones, pads[:n] + ends)
    counts = fn(counted, kernel, strides, 0) * math.prod(kernel)
    return sums / counts


@op("GlobalAveragePool")
def global_average_pool(ctx: OpContext, x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def global_max_pool(ctx: OpContext, x: Tensor) -> Tensor:
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@op("Resize", "Upsample")
def resize(ctx: OpContext, x: Tensor, *rest: Tensor | None) -> Tensor:
    if ctx.node.op_type == "Upsample" or ctx.opset < 11:
        scales_t = rest[0] if rest else None
        scale_v = [float(v) for v in scales_t.tolist()] if scales_t is not None else list(ctx.attr("scales"))
        sizes = [int(math.floor(d * s)) for d, s in zip(x.shape, scale_v)]
        mode, coords, nearest = ctx.attr("mode", "nearest"), "asymmetric", "floor"
    else:
        scales_t = rest[1] if len(rest) > 1 else None
        sizes_t = rest[2] if len(rest) > 2 else None
        mode = ctx.attr("mode", "nearest")
        coords = ctx.attr("coordinate_transformation_mode", "half_pixel")
        nearest = ctx.attr("nearest_mode", "round_prefer_floor")
        axes = [_axis(a, x.dim()) for a in ctx.attr("axes", range(x.dim()))]
        sizes, scale_v = list(x.shape), [1.0] * x.dim()
        if sizes_t is not None and sizes_t.numel():
            wanted = dict(zip(axes, ints(sizes_t)))
            policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
            if policy != "stretch":  # one scale for the given axes, the sizes rounded from it
                pick = min if policy == "not_larger" else max
                common = pick(wanted[a] / x.shape[a] for a in axes)
                wanted = {a: int(math.floor(common * x.shape[a] + 0.5)) for a in axes}
                scale_v = [common if a in wanted else 1.0 for a in range(x.dim())]
            else:
                scale_v = [wanted[a] / x.shape[a] if a in wanted else 1.0 for a in range(x.dim())]
            sizes = [wanted.get(a, x.shape[a]) for a in range(x.dim())]
        else:
            for a, v in zip(axes, scales_t.tolist()):
                scale_v[a] = float(v)
            sizes = [int(math.floor(d * s)) for d, s in zip(x.shape, scale_v)]
    if mode not in ("nearest", "linear") or coords == "tf_crop_and_resize" or ctx.attr("antialias", 0):
        raise UnsupportedError(f"node {ctx.node.name!r}: Resize mode {mode!r} with {coords!r} coordinates"
                               f"{' and antialias' if ctx.attr('antialias', 0) else ''} is not supported by the mirror")
    for axis, (size_in, size_out, scale) in enumerate(zip(x.shape, sizes, scale_v)):
        if size_in == size_out and scale == 1.0:
            continue
        out = torch.arange(size_out, dtype=torch.float64)
        if coords == "half_pixel":
            src = (out + 0.5) / scale - 0.5
        elif coords == "pytorch_half_pixel":
            src = (out + 0.5) / scale - 0.5 if size_out > 1 else torch.zeros_like(out)
        elif coords == "align_corners":  # the spec's resized length is size_in · scale, not rounded
            span = size_in * scale - 1
            src = out * (size_in - 1) / span if span != 0 else torch.zeros_like(out)
        elif coords == "half_pixel_symmetric":
            adjust = size_out / (scale * size_in)
            center = size_in / 2 * (1 - adjust)
            src = center + (out + 0.5) / scale - 0.5
        else:  # asymmetric
            src = out / scale
        if mode == "nearest":
            if nearest == "floor":
                index = torch.floor(src)
            elif nearest == "ceil":
                index = torch.ceil(src)
            elif nearest == "round_prefer_ceil":
                index = torch.floor(src + 0.5)
            else:  # round_prefer_floor
                index = torch.ceil(src - 0.5)
            x = x.index_select(axis, index.to(torch.int64).clamp(0, size_in - 1))
            continue
        src = src.clamp(0, size_in - 1)
        low = torch.floor(src).to(torch.int64)
        high = (low + 1).clamp(max=size_in - 1)
        frac = (src - low).to(x.dtype).reshape((-1,) + (1,) * (x.dim() - axis - 1))
        x = x.index_select(axis, low) * (1 - frac) + x.index_select(axis, high) * frac
    return x


# --- recurrent -----------------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
                                                       "Relu": torch.relu}


@op("LSTM")
def lstm(ctx: OpContext, x: Tensor, w: Tensor, r: Tensor, b: Tensor | None = None, seq_lens: Tensor | None = None,
         h0: Tensor | None = None, c0: Tensor | None = None, peep: Tensor | None = None) -> tuple[Tensor, ...]:
    if ctx.attr("clip") is not None or ctx.attr("input_forget", 0):
        raise UnsupportedError(f"node {ctx.node.name!r}: LSTM with clip or input_forget is not supported by the mirror")
    layout = ctx.attr("layout", 0)
    if layout:
        x = x.transpose(0, 1)
        h0 = h0.transpose(0, 1) if h0 is not None else None
        c0 = c0.transpose(0, 1) if c0 is not None else None
    names = ctx.attr("activations") or ["Sigmoid", "Tanh", "Tanh"] * 2
    try:
        acts = [_ACTIVATIONS[a] for a in names]
    except KeyError as exc:
        raise UnsupportedError(f"node {ctx.node.name!r}: LSTM activation {exc} is not supported by the mirror") \
            from None
    steps, batch, _ = x.shape
    dirs, four_h, _ = w.shape
    hidden = four_h // 4
    lengths = ints(seq_lens) if seq_lens is not None and seq_lens.numel() else [steps] * batch
    if any(n != steps for n in lengths):
        raise UnsupportedError(f"node {ctx.node.name!r}: LSTM with sequence_lens shorter than the input is not "
                               "supported by the mirror")
    direction = ctx.attr("direction", "forward")
    ys, hs, cs = [], [], []
    for d in range(dirs):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        f, g, hact = acts[3 * d: 3 * d + 3] if len(acts) >= 3 * (d + 1) else acts[:3]
        bias = b[d, :four_h] + b[d, four_h:] if b is not None else 0.0
        h = h0[d] if h0 is not None else x.new_zeros(batch, hidden)
        c = c0[d] if c0 is not None else x.new_zeros(batch, hidden)
        xw = torch.matmul(x, w[d].t()) + bias
        out = [None] * steps
        for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
            gates = xw[t] + h @ r[d].t()
            i, o, fg, cc = gates.split(hidden, dim=1)  # ONNX's gate order: input, output, forget, cell
            if peep is not None:
                pi, po, pf = peep[d].split(hidden)
                i, fg = i + pi * c, fg + pf * c
            i, fg = f(i), f(fg)
            c = fg * c + i * g(cc)
            o = f(o + po * c) if peep is not None else f(o)
            h = o * hact(c)
            out[t] = h
        ys.append(torch.stack(out))
        hs.append(h)
        cs.append(c)
    y = torch.stack(ys, dim=1)
    y_h, y_c = torch.stack(hs), torch.stack(cs)
    if layout:
        y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
    return (y, y_h, y_c)[:len(ctx.node.output)]
