"""onnx_l2c: make ONNX models much smaller; load them with onnxruntime.

    onnx_l2c.compress("model.onnx", "small.onnx", preset="int8")
    sess = onnx_l2c.InferenceSession("small.onnx")     # zero-overhead loader
    so.register_custom_ops_library(onnx_l2c.custom_op_library())  # any ORT binding
"""

from __future__ import annotations

from .config import OPTIONS, CompressOptions, Preset
from .errors import L2CError
from .loader import InferenceSession, custom_op_library, decompress, inspect
from .pipeline import CompressResult, TensorReport, compress

__version__ = "0.1.0"

__all__ = [
    "OPTIONS", "CompressOptions", "CompressResult", "InferenceSession", "L2CError", "Preset", "TensorReport",
    "compress", "custom_op_library", "decompress", "inspect",
]
