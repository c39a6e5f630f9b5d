"""Lossless coding of the exact float bits (the `raw` stage)."""

from __future__ import annotations

from onnx_l2c.format import ELEM_BYTES, RawStage, Recipe, byte_planes

from .base import TensorInput, WeightTransform, entropy_bits, register


@register
class Lossless(WeightTransform):
    """Byte planes of rotl(bits, 1): the exponent gets a plane of its own,
    where trained weights have ~3 bits of entropy out of 8."""

    name = "lossless"
    lossless = True

    def __init__(self, rotate: int = 1) -> None:
        self.rotate = rotate

    def applies_to(self, tensor: TensorInput) -> bool:
        return tensor.dtype in ELEM_BYTES

    def encode(self, tensor: TensorInput) -> Recipe:
        return Recipe(tensor.dtype, tensor.shape, [RawStage(tensor.bits, self.rotate)])

    def rate_bits(self, tensor: TensorInput) -> float:
        planes = byte_planes(tensor.bits, ELEM_BYTES[tensor.dtype], self.rotate)
        return sum(entropy_bits(p) for p in planes)
