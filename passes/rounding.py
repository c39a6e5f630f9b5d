"""Output-aware rounding (GPTQ, passes/gptq.py) for the step-grid quantizers,
with bias correction: with calibration data, each tensor's quantizers round
so that the layer's *output* error is small (at the damping that generalizes
to held-out samples, else to nearest), and the mean output shift ΔW·E[x] is
folded into the consumer's bias. Alone it quantizes with the uniform
baseline's one quantizer per tensor, on the shared step grid.
"""

from __future__ import annotations

from onnx_l2c.codec import Recipe

from .base import Method, Option, Quantized, TensorContext, TensorInput
from .steps import ALPHA_EXPONENTS, QuantParams, output_aware_damping, plain_family, quantize, step_families


class Rounding(Method):
    name = "rounding"
    order = 30
    needs_calibration = True
    corrects_bias = True
    per_tensor = False

    def prepare(self, tensor: TensorInput, ctx: TensorContext) -> None:
        ctx.damping = output_aware_damping(tensor, ctx.stats)

    def candidates(self, tensor: TensorInput, ctx: TensorContext, lossless_bytes: int) -> list[Option]:
        if ctx.step_families:  # the step quantizers of another method already round output-aware
            return []
        return step_families(tensor, ctx, ALPHA_EXPONENTS, lossless_bytes, [plain_family(tensor, ctx)])

    def quantize(self, tensor: TensorInput, params: QuantParams, ctx: TensorContext) -> Quantized:
        return quantize(tensor, params, ctx.stats, held_out=True)

    def encode(self, tensor: TensorInput, params: QuantParams, ctx: TensorContext) -> Recipe:
        return quantize(tensor, params, ctx.stats).recipe
