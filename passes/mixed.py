"""Mixed precision + pruning: each tensor chooses among quantizer families
(per-tensor or per-channel steps, a dead zone, per-column steps and row
exponents for tables) and step sizes, under the global target (passes/steps.py).
"""

from __future__ import annotations

import numpy as np

from onnx_l2c.codec import Recipe
from onnx_l2c.errors import UnsupportedError

from .base import Method, Option, Quantized, TensorContext, TensorInput
from .steps import ALPHA_EXPONENTS, DEAD_ZONES, QuantParams, quantize, step_families


class MixedPrecision(Method):
    """Per-tensor choice among quantizer families and steps (module doc)."""

    name = "mixed"
    order = 10

    def candidates(self, tensor: TensorInput, ctx: TensorContext, lossless_bytes: int) -> list[Option]:
        # Per-tensor or per-channel steps, both with the tensor's rounding; a
        # dead zone (pruning) with plain rounding, where it is cheap to try.
        stats, damping = ctx.stats, ctx.damping
        per_channel = (False, True) if tensor.channel_axis is not None else (False,)
        families = [(pc, 0.0, damping, False, False) for pc in per_channel]
        families += [(False, dz, None, False, False) for dz in DEAD_ZONES if dz > 0]
        if damping is None and len(tensor.shape) == 2 and tensor.channel_axis == 0:
            families.append((True, 0.0, None, True, False))  # tables (Gather, Gemm transB): per-column steps
            if stats is not None and stats.row_weight is not None and stats.row_weight.size == tensor.shape[0]:
                # lookup tables: finer steps for the rows that inputs use often
                families.append((True, 0.0, None, True, True))
        return step_families(tensor, ctx, ALPHA_EXPONENTS, lossless_bytes, families)

    def quantize(self, tensor: TensorInput, params: QuantParams, ctx: TensorContext) -> Quantized:
        return quantize(tensor, params, ctx.stats, held_out=True)

    def encode(self, tensor: TensorInput, params: QuantParams, ctx: TensorContext) -> Recipe:
        if not np.isfinite(tensor.values).all():
            raise UnsupportedError(f"tensor {tensor.name!r}: non-finite values cannot be quantized")
        return quantize(tensor, params, ctx.stats).recipe
