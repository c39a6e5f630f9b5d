"""Compression methods, one module each, registered by name.

Every method is a parametric transform of a tensor (DESIGN.md §3):
`encode` gives a `Recipe` (symbols + side parameters), `decode` gives exactly
what the native decoder will produce, and `rate_bits` estimates the coded
size. Installed as `onnx_l2c.passes`.
"""

from __future__ import annotations

from .base import REGISTRY, TensorInput, WeightTransform, get_transform, register
from . import decorrelate, fixing, lossless, mixed, uniform, unify  # noqa: F401  (modules register themselves)

__all__ = ["REGISTRY", "TensorInput", "WeightTransform", "get_transform", "register"]
