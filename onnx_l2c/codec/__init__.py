"""The payload format and the native codec: dtypes, the stage vocabulary,
recipes and their serialization, the ctypes binding to runtime/.

Names are imported from their submodule at first use (PEP 562): loading a
model through its sidecar index (load/indexed.py) needs the dtypes and the
native binding only, and the stage classes' dataclasses cost more to create
than the rest of that load's Python work.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dtypes import (BFLOAT16, BITS_DTYPE, DTYPE_NAMES, ELEM_BYTES, FLOAT, FLOAT16, FLOAT_DTYPES, NOT_WRITTEN_DTYPES,
                         PACKED_BITS, RAW_DTYPES_VERSION, STORAGE, bits_to_float32, check_dtype, dtype_min_version,
                         float32_to, integer_range, pack_elements, patterns_to_storage, storage_to_patterns, quantized_values, quantized_storage, tensor_nbytes, to_raw_bytes, to_stored,
                         unpack_elements)
    from .stages import (STAGES, AffineStage, Buffer, CastStage, CodebookStage, EntropyStage, RawStage, Stage, StageSummary,
                         byte_planes)
    from .transform import ExponentStage, TransformStage, exponent_multipliers
    from .expand import BlockMode, ExpandStage, expand_blocks, expand_stage, expand_symbols
    from .index import SIDECAR_SUFFIX
    from .payload import (DECODE_LIMIT_FLOOR, DECODE_LIMIT_RATIO, DOMAIN, FORMAT_VERSION, MAGIC, MAX_DIMS, METADATA_KEY, OP_TYPE, OPSET, PAYLOAD_ALIGN, PayloadHeader,
                          PayloadSummary, Recipe, decode_native, describe, max_format_version, parse, parse_header,
                          payload_version, reconstruct, serialize, stage_class, summarize, summarize_totals,
                          validate, default_decode_limit)

# public name → the submodule that defines it
_LAZY = {
    "SIDECAR_SUFFIX": "index",
    "BFLOAT16": "dtypes", "BITS_DTYPE": "dtypes", "DTYPE_NAMES": "dtypes", "ELEM_BYTES": "dtypes", "FLOAT": "dtypes",
    "FLOAT16": "dtypes", "FLOAT_DTYPES": "dtypes", "NOT_WRITTEN_DTYPES": "dtypes", "PACKED_BITS": "dtypes",
    "RAW_DTYPES_VERSION": "dtypes", "STORAGE": "dtypes", "bits_to_float32": "dtypes", "check_dtype": "dtypes",
    "dtype_min_version": "dtypes", "float32_to": "dtypes", "integer_range": "dtypes", "pack_elements": "dtypes",
    "patterns_to_storage": "dtypes", "quantized_storage": "dtypes", "quantized_values": "dtypes",
    "storage_to_patterns": "dtypes", "tensor_nbytes": "dtypes", "to_raw_bytes": "dtypes", "to_stored": "dtypes",
    "unpack_elements": "dtypes",
    "AffineStage": "stages", "Buffer": "stages", "CastStage": "stages", "CodebookStage": "stages",
    "EntropyStage": "stages", "RawStage": "stages", "STAGES": "stages", "Stage": "stages", "StageSummary": "stages",
    "byte_planes": "stages",
    "ExponentStage": "transform", "TransformStage": "transform", "exponent_multipliers": "transform",
    "BlockMode": "expand", "ExpandStage": "expand", "expand_blocks": "expand", "expand_stage": "expand",
    "expand_symbols": "expand",
    "DECODE_LIMIT_FLOOR": "payload", "DECODE_LIMIT_RATIO": "payload", "DOMAIN": "payload",
    "FORMAT_VERSION": "payload", "MAGIC": "payload", "MAX_DIMS": "payload", "METADATA_KEY": "payload",
    "OPSET": "payload", "OP_TYPE": "payload", "PAYLOAD_ALIGN": "payload", "PayloadHeader": "payload",
    "PayloadSummary": "payload", "Recipe": "payload", "decode_native": "payload",
    "default_decode_limit": "payload", "describe": "payload", "max_format_version": "payload", "parse": "payload",
    "parse_header": "payload", "payload_version": "payload", "reconstruct": "payload", "serialize": "payload",
    "stage_class": "payload",
    "summarize": "payload", "summarize_totals": "payload", "validate": "payload",
}


_SUBMODULES = frozenset({"dtypes", "expand", "index", "native", "payload", "stages", "transform"})


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if name in _SUBMODULES:  # `from onnx_l2c.codec import native`: the submodule itself
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if module not in ("dtypes", "index"):
        # payload imports every stage module, so STAGES is complete before any
        # stage name is handed out
        importlib.import_module(f"{__name__}.payload")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_LAZY)
