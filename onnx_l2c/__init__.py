"""onnx_l2c: make ONNX models much smaller; load them with onnxruntime.

    onnx_l2c.compress("model.onnx", "small.onnx")      # the safe preset (or preset="int8", target_ratio=...)
    onnx_l2c.export(torch_module, (x,), "small.onnx", target_ratio=8)  # torch.onnx.export, then compress
    sess = onnx_l2c.InferenceSession("small.onnx")     # zero-overhead loader
    so.register_custom_ops_library(onnx_l2c.custom_op_library())  # any ORT binding

The names are imported on first use, so loading a compressed model (the read
path: `onnx_l2c.load`) never imports the planner, the statistics or the passes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The source folder is not the package: installing places passes/ and models/
# inside it (one import name per module). Imported from a checkout (e.g. the
# current directory on sys.path), say so instead of failing later.
_HERE = Path(__file__).absolute().parent
if not (_HERE / "passes").is_dir() and (_HERE.parent / "passes" / "base.py").is_file():
    raise ImportError(f"onnx_l2c is being imported from its source folder {_HERE}; install it "
                      "(`pip install .` or `bash scripts/setup.sh`) and run Python outside the checkout or with "
                      "`python -P` so the installed package is used")

from onnx_l2c.errors import (ErrorCode, FileError, L2CError, LimitError, ModelError, OptionError, PayloadError,
                             TargetError, UnsupportedError, VersionError)

__version__ = "0.2.0"

# public name → the module that defines it
_LAZY = {
    "OPTIONS": "onnx_l2c.config", "BlockShape": "onnx_l2c.passes.blocks", "CompressOptions": "onnx_l2c.config",
    "Preset": "onnx_l2c.config",
    "InferenceSession": "onnx_l2c.load.session", "custom_op_library": "onnx_l2c.load.session",
    "decompress": "onnx_l2c.load.compressed", "inspect": "onnx_l2c.load.compressed",
    "CompressResult": "onnx_l2c.write.results", "TensorReport": "onnx_l2c.write.results",
    "Planner": "onnx_l2c.write.compress", "compress": "onnx_l2c.write.compress",
    "Exporter": "onnx_l2c.write.export", "export": "onnx_l2c.write.export",
}

if TYPE_CHECKING:
    from onnx_l2c.config import OPTIONS, CompressOptions, Preset
    from onnx_l2c.passes.blocks import BlockShape
    from onnx_l2c.load.compressed import decompress, inspect
    from onnx_l2c.load.session import InferenceSession, custom_op_library
    from onnx_l2c.write.compress import Planner, compress
    from onnx_l2c.write.export import Exporter, export
    from onnx_l2c.write.results import CompressResult, TensorReport


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onnx_l2c' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "OPTIONS", "BlockShape", "CompressOptions", "CompressResult", "ErrorCode", "Exporter", "FileError", "InferenceSession", "LimitError",
    "L2CError", "ModelError", "OptionError", "PayloadError", "Planner", "Preset", "TargetError", "TensorReport",
    "UnsupportedError", "VersionError", "compress", "custom_op_library", "decompress", "export", "inspect",
]
