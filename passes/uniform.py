"""The uniform baseline: one quantizer per tensor (per-channel steps where the
tensor has channels) on a step grid that all tensors share, so the allocator
searches one knob for the whole model instead of choosing per tensor.
"""

from __future__ import annotations

from onnx_l2c.codec import Recipe

from .base import Method, Option, Quantized, TensorContext, TensorInput
from .steps import ALPHA_EXPONENTS, QuantParams, plain_family, quantize, step_families


class Uniform(Method):
    name = "uniform"
    order = 20
    per_tensor = False

    def candidates(self, tensor: TensorInput, ctx: TensorContext, lossless_bytes: int) -> list[Option]:
        if ctx.step_families:  # mixed precision already offers this quantizer among its families
            return []
        return step_families(tensor, ctx, ALPHA_EXPONENTS, lossless_bytes, [plain_family(tensor, ctx)])

    def quantize(self, tensor: TensorInput, params: QuantParams, ctx: TensorContext) -> Quantized:
        return quantize(tensor, params, ctx.stats, held_out=True)

    def encode(self, tensor: TensorInput, params: QuantParams, ctx: TensorContext) -> Recipe:
        return quantize(tensor, params, ctx.stats).recipe
