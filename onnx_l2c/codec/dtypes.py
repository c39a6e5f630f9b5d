"""The weight dtypes a payload decodes to, and their bit patterns in numpy."""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import UnsupportedError

FLOAT = onnx.TensorProto.FLOAT
FLOAT16 = onnx.TensorProto.FLOAT16
BFLOAT16 = onnx.TensorProto.BFLOAT16
FLOAT_DTYPES = (FLOAT, FLOAT16, BFLOAT16)  # the dtypes every recipe may decode to (the lossy methods' weights)
_T = onnx.TensorProto
# dtype: (name, bytes per element, numpy storage of its bits, numpy storage of the decoded tensor).
# The dtypes after the float ones are coded losslessly only (the raw stage, payload format version 5);
# numpy has no float8, so those are stored as their uint8 bits.
_TABLE: dict[int, tuple[str, int, type, type]] = {
    FLOAT: ("float32", 4, np.uint32, np.float32),
    FLOAT16: ("float16", 2, np.uint16, np.float16),
    BFLOAT16: ("bfloat16", 2, np.uint16, np.uint16),  # no numpy type: its bits
    _T.UINT8: ("uint8", 1, np.uint8, np.uint8),
    _T.INT8: ("int8", 1, np.uint8, np.int8),
    _T.UINT16: ("uint16", 2, np.uint16, np.uint16),
    _T.INT16: ("int16", 2, np.uint16, np.int16),
    _T.INT32: ("int32", 4, np.uint32, np.int32),
    _T.INT64: ("int64", 8, np.uint64, np.int64),
    _T.BOOL: ("bool", 1, np.uint8, np.bool_),
    _T.DOUBLE: ("double", 8, np.uint64, np.float64),
    _T.UINT32: ("uint32", 4, np.uint32, np.uint32),
    _T.UINT64: ("uint64", 8, np.uint64, np.uint64),
    _T.FLOAT8E4M3FN: ("float8e4m3fn", 1, np.uint8, np.uint8),
    _T.FLOAT8E4M3FNUZ: ("float8e4m3fnuz", 1, np.uint8, np.uint8),
    _T.FLOAT8E5M2: ("float8e5m2", 1, np.uint8, np.uint8),
    _T.FLOAT8E5M2FNUZ: ("float8e5m2fnuz", 1, np.uint8, np.uint8),
}
DTYPE_NAMES = {k: v[0] for k, v in _TABLE.items()}
ELEM_BYTES = {k: v[1] for k, v in _TABLE.items()}
BITS_DTYPE = {k: v[2] for k, v in _TABLE.items()}  # numpy storage of each dtype's bits
STORAGE = {k: v[3] for k, v in _TABLE.items()}  # numpy storage of decoded tensors
RAW_DTYPES_VERSION = 5  # the payload format version that adds the dtypes other than FLOAT_DTYPES


def dtype_min_version(dtype: int) -> int:
    """The first payload format version that holds a tensor of `dtype`."""
    return 1 if dtype in FLOAT_DTYPES else RAW_DTYPES_VERSION


def check_dtype(dtype: int, what: str = "tensor") -> None:
    if dtype not in DTYPE_NAMES:
        valid = ", ".join(f"{k} ({v})" for k, v in DTYPE_NAMES.items())
        raise UnsupportedError(f"{what}: unsupported dtype {dtype}; valid: {valid}")


def float32_to(values: np.ndarray, dtype: int) -> np.ndarray:
    """float32 → float16 / bfloat16 bits, rounding to nearest even."""
    values = np.asarray(values, dtype=np.float32)
    if dtype == FLOAT:
        return values
    if dtype == FLOAT16:
        with np.errstate(over="ignore"):
            return values.astype(np.float16)
    if dtype == BFLOAT16:
        bits = values.view(np.uint32)
        rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
        nan = np.isnan(values)
        quiet = ((bits >> np.uint32(16)) | np.uint32(0x40))
        return np.where(nan, quiet, rounded).astype(np.uint16)
    raise UnsupportedError(f"cannot cast to dtype {dtype}; valid: {FLOAT16}, {BFLOAT16}")


def bits_to_float32(bits: np.ndarray, dtype: int) -> np.ndarray:
    """Values of float32 / float16 / bfloat16 bit patterns as float32."""
    if dtype == FLOAT:
        return np.asarray(bits).view(np.float32)
    if dtype == FLOAT16:
        return np.asarray(bits).view(np.float16).astype(np.float32)
    if dtype == BFLOAT16:
        return (np.asarray(bits).astype(np.uint32) << np.uint32(16)).view(np.float32)
    check_dtype(dtype)
    raise AssertionError("unreachable")
