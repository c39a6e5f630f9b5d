"""Compression methods, one module each, behind one protocol (`base.Method`).

Every lossy method subclasses `Method` and registers itself by name; the
planner, the writer, the report and the CLI iterate over `registry()`.
Lossless coding and the presets' fixed quantizer are not planned methods:
they are the fallback and the no-target path. Installed as `onnx_l2c.passes`.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (Knob, Method, Params, Quantized, TensorContext, TensorInput, method, method_of,
                   registry)
from .lossless import Lossless
from .preset import PresetQuantizer

# Every module of this package is imported, so a method's module registers it
# on its own (`registry()` lists them in candidate order, not import order).
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["Knob", "Lossless", "Method", "Params", "PresetQuantizer", "Quantized", "TensorContext",
           "TensorInput", "method", "method_of", "registry"]
