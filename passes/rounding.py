"""Output-aware rounding (GPTQ, passes/gptq.py) for the step-grid quantizers,
with bias correction: with calibration data, each tensor's quantizers round
so that the layer's *output* error is small (at the damping that generalizes
to held-out samples, else to nearest), and the mean output shift ΔW·E[x] is
folded into the consumer's bias. Alone it quantizes with the uniform
baseline's one quantizer per tensor, on the shared step grid.
"""

from __future__ import annotations

from .base import Option, TensorContext, TensorInput
from .steps import StepGridMethod, output_aware_damping


class Rounding(StepGridMethod):
    name = "rounding"
    order = 30
    needs_calibration = True
    corrects_bias = True
    per_tensor = False

    def prepare(self, tensor: TensorInput, ctx: TensorContext) -> None:
        # every step-grid quantizer of the tensor (and unification's kept weights) rounds with it
        ctx.damping = output_aware_damping(tensor, ctx.stats)

    def candidates(self, tensor: TensorInput, ctx: TensorContext, lossless_bytes: int) -> list[Option]:
        return self.plain_candidates(tensor, ctx, lossless_bytes)
