"""The weight dtypes a payload decodes to, and their bit patterns in numpy."""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import UnsupportedError

FLOAT = onnx.TensorProto.FLOAT
FLOAT16 = onnx.TensorProto.FLOAT16
BFLOAT16 = onnx.TensorProto.BFLOAT16
DTYPE_NAMES = {FLOAT: "float32", FLOAT16: "float16", BFLOAT16: "bfloat16"}
ELEM_BYTES = {FLOAT: 4, FLOAT16: 2, BFLOAT16: 2}
# numpy storage of each dtype's bits (bfloat16 has no numpy type: its bits are uint16)
BITS_DTYPE = {FLOAT: np.uint32, FLOAT16: np.uint16, BFLOAT16: np.uint16}
STORAGE = {FLOAT: np.float32, FLOAT16: np.float16, BFLOAT16: np.uint16}  # numpy storage of decoded tensors


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
