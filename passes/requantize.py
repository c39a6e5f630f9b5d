"""Coarser integer grids for already-quantized weights (issue 17).

A model quantized by onnxruntime (QDQ's DequantizeLinear, QOperator's
ConvInteger / MatMulInteger / QLinearConv / QLinearMatMul, or the block-wise
quantizer's MatMulNBits with 4-bit integers two to a byte) stores each weight
as integers q with a scale and a zero point z (per channel or per block). This method's candidates keep
the integers on a subset of that grid: the levels z + k·n for an integer step
k ≥ 2, with an optional dead zone (weights within it become z, magnitude
pruning on the stored grid), and the stored grid itself with a dead zone
of one or two steps. The output graph keeps the same quantized
operators, scales and zero points, so it runs with the same kernels at the
same speed; only the integers change, and the raw stage's entropy coder
turns the fewer levels into fewer bytes (about log2 k bits per weight less).

Errors are in units of the stored step (the scale is left out): with the
planner's data-free scaling each tensor's error is relative to its own rms,
as for the float methods without calibration statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from onnx_l2c.codec import RawStage, Recipe, integer_range, quantized_storage

from .base import STOP_BITS, Method, Option, Params, Quantized, TensorContext, TensorInput, coded

STEPS = (2, 3, 4, 5, 6, 8, 11, 16, 23, 32)  # multiples of the stored step, about half an octave apart
DEAD_ZONES = (0.0, 0.3)  # in steps k: |q − z| < (0.5 + dead_zone)·k becomes z, the rest rounds to nearest
# On the stored grid itself (k = 1) only the dead zone acts: the weights at
# ±1 (and ±2) stored steps become z. Finer than k = 2, so a target just
# past the lossless size has a candidate near it.
PRUNE_ZONES = (0.6, 1.6)


@dataclass(frozen=True)
class RequantParams(Params):
    method: ClassVar[str] = "requantize"

    step: int  # k: the new levels are z + k·n
    dead_zone: float

    @property
    def family(self) -> tuple:
        return ("requantize", self.dead_zone)

    def describe(self) -> dict[str, float | int]:
        return {"step": self.step, "dead_zone": self.dead_zone}


def requantized(tensor: TensorInput, params: RequantParams) -> np.ndarray:
    """The stored integers on the coarser grid (the tensor's numpy storage, shaped)."""
    assert tensor.zero_point is not None
    d = tensor.values.astype(np.int32)  # q − z (MatMulNBits' fields unpacked)
    k = params.step
    magnitude = np.abs(d)
    levels = np.floor(magnitude / k + 0.5).astype(np.int32)  # nearest level, halves away from z
    levels[magnitude < (0.5 + params.dead_zone) * k] = 0
    low, high = integer_range(tensor.dtype, tensor.field_bits)
    q = np.clip(np.sign(d) * levels * k + tensor.zero_point, low, high)
    return quantized_storage(q, tensor.dtype, tensor.shape, tensor.field_bits)


class Requantize(Method):
    name = "requantize"
    order = 90

    def applies_to(self, tensor: TensorInput) -> bool:
        return tensor.quantized

    def candidates(self, tensor: TensorInput, ctx: TensorContext, lossless_bytes: int) -> list[Option]:
        out = []
        for dead_zone in PRUNE_ZONES:
            out += self._sweep(tensor, ctx, lossless_bytes, (1,), dead_zone)
        for dead_zone in DEAD_ZONES:
            out += self._sweep(tensor, ctx, lossless_bytes, STEPS, dead_zone)
        return out

    def _sweep(self, tensor: TensorInput, ctx: TensorContext, lossless_bytes: int, steps: tuple[int, ...],
               dead_zone: float) -> list[Option]:
        """The steps finest first, those smaller than lossless, until one codes under STOP_BITS bits per weight."""
        out = []
        for k in steps:
            params = RequantParams(k, dead_zone)
            q = self.quantize(tensor, params, ctx)
            size = len(q.payload)
            if size < lossless_bytes:
                out.append(Option(size, q.error, params, q.sparsity))
            if 8 * size / max(tensor.weight_count, 1) < STOP_BITS:
                break
        return out

    def quantize(self, tensor: TensorInput, params: RequantParams, ctx: TensorContext) -> Quantized:
        return coded(tensor, self.encode(tensor, params, ctx), ctx.stats)

    def encode(self, tensor: TensorInput, params: RequantParams, ctx: TensorContext) -> Recipe:
        q = requantized(tensor, params)  # int4/uint4: ml_dtypes keeps each pattern in the low bits of its byte
        return Recipe(tensor.dtype, tensor.shape, [RawStage(q.reshape(-1).view(np.uint8), 0)])
