"""The uniform baseline: one quantizer per tensor (per-channel steps where the
tensor has channels) on a step grid that all tensors share, so the allocator
searches one knob for the whole model instead of choosing per tensor.
"""

from __future__ import annotations

from .base import Option, TensorContext, TensorInput
from .steps import StepGridMethod


class Uniform(StepGridMethod):
    name = "uniform"
    order = 20
    per_tensor = False

    def candidates(self, tensor: TensorInput, ctx: TensorContext, lossless_bytes: int) -> list[Option]:
        return self.plain_candidates(tensor, ctx, lossless_bytes)
