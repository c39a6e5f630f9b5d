"""Mixed precision + pruning: each tensor chooses among quantizer families
(per-tensor or per-channel steps, a dead zone, per-column steps and row
exponents for tables) and step sizes, under the global target (passes/steps.py).
"""

from __future__ import annotations

from .base import Option, TensorContext, TensorInput
from .steps import ALPHA_EXPONENTS, DEAD_ZONES, StepGridMethod, step_families


class MixedPrecision(StepGridMethod):
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
