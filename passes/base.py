"""The parametric-transform abstraction and the registry of methods."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from onnx_l2c.errors import L2CError
from onnx_l2c.format import Recipe, bits_to_float32, reconstruct


@dataclass
class TensorInput:
    """One weight as a method sees it."""

    name: str
    dtype: int  # onnx.TensorProto data type (FLOAT, FLOAT16, BFLOAT16)
    shape: tuple[int, ...]
    bits: np.ndarray  # exact bit patterns, flat (uint32 / uint16)
    channel_axis: int | None  # output-channel axis from the consuming op; None = not a matrix weight

    @property
    def values(self) -> np.ndarray:
        """The weight as float32 (exact for every supported dtype), shaped."""
        return bits_to_float32(self.bits, self.dtype).reshape(self.shape)

    def decoded_values(self, decoded: np.ndarray) -> np.ndarray:
        """A decoded version of this weight (what `reconstruct` or the native
        decoder returns: float32, float16, or bfloat16 bits) as float32, shaped."""
        return bits_to_float32(np.asarray(decoded).view(self.bits.dtype), self.dtype).reshape(self.shape)


class WeightTransform(abc.ABC):
    """A method: encode(θ) → Recipe; decode → Ŵ; rate estimate in bits."""

    name: ClassVar[str]
    lossless: ClassVar[bool] = False

    @abc.abstractmethod
    def applies_to(self, tensor: TensorInput) -> bool:
        """Whether this method can code `tensor` (else the caller falls back)."""

    @abc.abstractmethod
    def encode(self, tensor: TensorInput) -> Recipe:
        """The decode recipe of `tensor` under this method's parameters."""

    def decode(self, recipe: Recipe) -> np.ndarray:
        """Exactly what the native decoder produces for `recipe`."""
        return reconstruct(recipe)

    @abc.abstractmethod
    def rate_bits(self, tensor: TensorInput) -> float:
        """Estimated coded size of `tensor` in bits (order-0 entropy of its symbols)."""


REGISTRY: dict[str, type[WeightTransform]] = {}


def register(cls: type[WeightTransform]) -> type[WeightTransform]:
    if cls.name in REGISTRY:
        raise L2CError(f"method {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def get_transform(name: str) -> type[WeightTransform]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise L2CError(f"unknown method {name!r}; valid methods: {', '.join(sorted(REGISTRY))}") from None


def entropy_bits(symbols: np.ndarray) -> float:
    """Order-0 empirical entropy of a symbol array, in bits (total)."""
    _, counts = np.unique(np.asarray(symbols).reshape(-1), return_counts=True)
    if counts.size <= 1:
        return 0.0
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())
