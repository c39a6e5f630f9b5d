"""Lossless coding of the exact float bits (the `raw` stage): every tensor's
fallback candidate, and the lossless preset."""

from __future__ import annotations

from onnx_l2c.codec import ELEM_BYTES, FLOAT_DTYPES, RawStage, Recipe

from .base import TensorInput


class Lossless:
    """Byte planes of rotl(bits, 1): the exponent gets a plane of its own,
    where trained weights have ~3 bits of entropy out of 8."""

    name = "lossless"
    lossless = True

    def __init__(self, rotate: int = 1) -> None:
        self.rotate = rotate

    def applies_to(self, tensor: TensorInput) -> bool:
        return tensor.dtype in ELEM_BYTES

    def encode(self, tensor: TensorInput) -> Recipe:
        # integers: no rotation, so each plane is one byte of the two's-complement value
        rotate = self.rotate if tensor.dtype in FLOAT_DTYPES else 0
        return Recipe(tensor.dtype, tensor.shape, [RawStage(tensor.bits, rotate)])
