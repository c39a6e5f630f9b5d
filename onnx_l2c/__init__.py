"""onnx_l2c: make ONNX models much smaller; load them with onnxruntime.

    onnx_l2c.compress("model.onnx", "small.onnx", preset="int8")
    sess = onnx_l2c.InferenceSession("small.onnx")     # zero-overhead loader
    so.register_custom_ops_library(onnx_l2c.custom_op_library())  # any ORT binding
"""

from __future__ import annotations

from pathlib import Path as _Path

# Installed, the methods are the subpackage onnx_l2c/passes. In a source
# checkout they sit beside this folder (the design card's layout): let
# `onnx_l2c.passes` resolve there too, so the checkout runs in place.
_here = _Path(__file__).absolute().parent
if not (_here / "passes").is_dir() and (_here.parent / "passes" / "__init__.py").is_file():
    __path__.append(str(_here.parent))

from .config import OPTIONS, BlockShape, CompressOptions, Preset
from .errors import L2CError
from .loader import InferenceSession, custom_op_library, decompress, inspect
from .pipeline import CompressResult, Planner, TensorReport, compress

__version__ = "0.1.0"

__all__ = [
    "OPTIONS", "BlockShape", "CompressOptions", "CompressResult", "InferenceSession", "L2CError", "Planner", "Preset", "TensorReport",
    "compress", "custom_op_library", "decompress", "inspect",
]
