"""Compression methods, one module each, behind one protocol (`base.Method`).

Every lossy method subclasses `Method` and registers itself by name; the
planner, the writer, the report and the CLI iterate over `registry()`.
Lossless coding and the presets' fixed quantizer are not planned methods:
they are the fallback and the no-target path. Installed as `onnx_l2c.passes`.
"""

from __future__ import annotations

# Importing a method module registers its method (order: candidate order).
from . import mixed, uniform, rounding, decorrelate, fixing, unify  # noqa: F401
from .base import (Knob, Method, Params, Quantized, TensorContext, TensorInput, method, method_of,
                   registry)
from .lossless import Lossless
from .preset import PresetQuantizer

__all__ = ["Knob", "Lossless", "Method", "Params", "PresetQuantizer", "Quantized", "TensorContext",
           "TensorInput", "method", "method_of", "registry"]
