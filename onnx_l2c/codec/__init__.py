"""The payload format and the native codec: dtypes, the stage vocabulary,
recipes and their serialization, the ctypes binding to runtime/."""

from __future__ import annotations

from .dtypes import (BFLOAT16, BITS_DTYPE, DTYPE_NAMES, ELEM_BYTES, FLOAT, FLOAT16, FLOAT_DTYPES, NOT_WRITTEN_DTYPES,
                     PACKED_BITS, RAW_DTYPES_VERSION, STORAGE, bits_to_float32, check_dtype, dtype_min_version,
                     float32_to, integer_range, pack_elements, patterns_to_storage, storage_to_patterns, quantized_values, quantized_storage, tensor_nbytes, to_raw_bytes, to_stored,
                     unpack_elements)
from .stages import (STAGES, AffineStage, Buffer, CastStage, CodebookStage, EntropyStage, RawStage, Stage, StageSummary,
                     byte_planes, stage_class)
from .transform import ExponentStage, TransformStage, exponent_multipliers
from .expand import BlockMode, ExpandStage, expand_blocks, expand_stage, expand_symbols
from .payload import (DECODE_LIMIT_FLOOR, DECODE_LIMIT_RATIO, DOMAIN, FORMAT_VERSION, MAGIC, MAX_DIMS, METADATA_KEY, SIDECAR_SUFFIX, OP_TYPE, OPSET, PAYLOAD_ALIGN, PayloadHeader,
                      PayloadSummary, Recipe, decode_native, describe, max_format_version, parse, parse_header,
                      payload_version, reconstruct, serialize, summarize, summarize_totals, validate,
                      default_decode_limit)

__all__ = [
    "DECODE_LIMIT_FLOOR", "DECODE_LIMIT_RATIO", "default_decode_limit", "BFLOAT16", "BITS_DTYPE", "DOMAIN", "DTYPE_NAMES", "ELEM_BYTES", "FLOAT", "FLOAT16", "FLOAT_DTYPES", "FORMAT_VERSION", "NOT_WRITTEN_DTYPES", "PACKED_BITS", "RAW_DTYPES_VERSION", "MAGIC",
    "MAX_DIMS", "METADATA_KEY", "OPSET", "SIDECAR_SUFFIX", "OP_TYPE", "PAYLOAD_ALIGN", "STAGES", "STORAGE", "AffineStage", "BlockMode", "Buffer",
    "CastStage", "CodebookStage", "EntropyStage", "ExpandStage", "ExponentStage", "PayloadHeader", "PayloadSummary",
    "RawStage", "Recipe", "Stage", "StageSummary", "TransformStage", "bits_to_float32", "byte_planes", "check_dtype",
    "decode_native", "describe", "dtype_min_version", "expand_blocks", "expand_stage", "expand_symbols", "exponent_multipliers",
    "float32_to", "max_format_version", "parse", "parse_header", "payload_version", "reconstruct", "serialize",
    "stage_class", "summarize", "summarize_totals", "validate", "pack_elements", "patterns_to_storage",
    "storage_to_patterns", "tensor_nbytes", "integer_range", "quantized_values", "quantized_storage", "to_raw_bytes", "to_stored", "unpack_elements",
]
