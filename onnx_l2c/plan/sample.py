"""Planning the largest tensors on a sample of their output channels.

A candidate of a tensor costs a few passes over it (and output-aware
rounding a GPTQ sweep, rows × cols² work), and the planner tries dozens of
candidates per tensor. On a tensor of 67 M weights that is minutes per
candidate and gigabytes of float64 temporaries per worker. Output channels
are coded independently given the layer's statistics (per-channel steps,
GPTQ rows), so the candidates of such a tensor are fitted on every k-th
output channel and their sizes and errors scaled by k: estimates for the
allocation. The writer encodes the chosen candidate on the whole tensor and
measures it exactly (and re-allocates if the output misses the budget).

A Gather table is sampled by its rows, which are coded independently given
their usage (per-row step exponents, a codebook shared by the tensor). Its
rows are not equally used, so the sample is systematic in usage order: the
rows sorted by their calibration weight, the middle one of every k. Each
sampled row stands for k rows of about its usage, and the error, weighted by
usage, scales by k like the bytes (every k-th row in table order would leave
the most used rows, which carry most of the weighted error, to chance).

Tensors up to SAMPLED_ELEMENTS weights, and those whose consumer does not
map output channels to matrix rows one to one (grouped Conv), are planned
whole: every zoo model's tensors are, except all-MiniLM-L6-v2's 30522×384
token table (planned whole, it was the critical path of planning with every
method, 327 s of candidates on one thread, and the planner peaked at 2.5 GB).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from onnx_l2c.config import CompressOptions
from onnx_l2c.measure.layers import LayerStats, LayerView
from onnx_l2c.passes import TensorContext, TensorInput
from onnx_l2c.plan.allocate import Option

SAMPLED_ELEMENTS = 1 << 23  # tensors above this many weights are planned on a sample of channels
SAMPLE_ELEMENTS = 1 << 22  # about this many weights in the sample
MIN_SAMPLED_CHANNELS = 64  # fewer channels than this in the sample: planned whole
_ROW_KINDS = ("matmul", "gemm_kn", "gemm_nk", "conv", "gather")  # layouts whose matrix rows are the output channels


@dataclass(frozen=True)
class ChannelSample:
    """Every `stride`-th output channel of a tensor, as the planner fits it."""

    tensor: TensorInput  # the sampled channels
    stats: LayerStats | None  # the layer's statistics, seen through the sample's view
    view: LayerView | None
    scale: float  # channels of the tensor / channels in the sample

    def context(self, options: CompressOptions, max_abs: float) -> TensorContext:
        """What the methods read while fitting the sample's candidates."""
        return TensorContext(self.stats, self.view, options, max_abs)

    def scaled(self, option: Option) -> Option:
        """A candidate of the sample as an estimate for the whole tensor."""
        return dataclasses.replace(option, bytes=int(round(option.bytes * self.scale)),
                                   error=option.error * self.scale)


def channel_sample(tensor: TensorInput, view: LayerView | None, stats: LayerStats | None) -> ChannelSample | None:
    """The sample a tensor is planned on, or None to plan it whole."""
    axis = tensor.channel_axis
    if tensor.numel <= SAMPLED_ELEMENTS or axis is None:
        return None
    channels = tensor.shape[axis]
    views = [v for v in (view, stats.view if stats is not None else None) if v is not None]
    if any(v.kind not in _ROW_KINDS or v.groups != 1 or v.rows != channels or v.shape != tensor.shape
           for v in views):
        return None
    stride = -(-tensor.numel // SAMPLE_ELEMENTS)
    row_weight = stats.row_weight if stats is not None else None
    if row_weight is not None:
        if row_weight.shape != (channels,):
            return None
        keep = np.sort(np.argsort(-row_weight, kind="stable")[stride // 2::stride])
    else:
        keep = np.arange(0, channels, stride)
    if keep.size < MIN_SAMPLED_CHANNELS:
        return None
    shape = tuple(keep.size if a == axis else n for a, n in enumerate(tensor.shape))
    bits = np.ascontiguousarray(np.take(tensor.bits.reshape(tensor.shape), keep, axis=axis)).reshape(-1)
    sample = TensorInput(tensor.name, tensor.dtype, shape, bits, axis)
    sample_view = dataclasses.replace(view, rows=keep.size, shape=shape) if view is not None else None
    sample_stats = None
    if stats is not None:
        # the same arrays (H is per input, shared by every row), another view
        sample_stats = LayerStats(dataclasses.replace(stats.view, rows=keep.size, shape=shape), hessian=stats.hessian,
                                  diagonal=stats.diagonal, vectors=stats.vectors, halves=stats.halves,
                                  mean=stats.mean, halves_mean=stats.halves_mean,
                                  row_weight=row_weight[keep] if row_weight is not None else None)
    return ChannelSample(sample, sample_stats, sample_view, channels / keep.size)
