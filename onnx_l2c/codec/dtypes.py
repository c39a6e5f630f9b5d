"""The weight dtypes a payload decodes to, and their bit patterns in numpy."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import SimpleNamespace

import numpy as np

from ..errors import UnsupportedError

# ONNX's TensorProto.DataType numbers (fixed by the ONNX standard; a test
# checks them against onnx). Spelled out rather than read from onnx: onnx
# imports ml_dtypes, and the two take most of a second to import, which a
# model loaded through the sidecar index (load/indexed.py) never needs.
_T = SimpleNamespace(FLOAT=1, UINT8=2, INT8=3, UINT16=4, INT16=5, INT32=6, INT64=7, BOOL=9, FLOAT16=10, DOUBLE=11,
                     UINT32=12, UINT64=13, BFLOAT16=16, FLOAT8E4M3FN=17, FLOAT8E4M3FNUZ=18, FLOAT8E5M2=19,
                     FLOAT8E5M2FNUZ=20, UINT4=21, INT4=22, FLOAT4E2M1=23, UINT2=25, INT2=26)
FLOAT = _T.FLOAT
FLOAT16 = _T.FLOAT16
BFLOAT16 = _T.BFLOAT16
FLOAT_DTYPES = (FLOAT, FLOAT16, BFLOAT16)  # the dtypes every recipe may decode to (the lossy methods' weights)
# dtype: (name, bytes per element, numpy storage of its bits, numpy storage of the decoded tensor).
# The dtypes after the float ones are coded losslessly only (the raw stage, payload format version 5);
# numpy has no float8, so those are stored as their uint8 bits. The packed
# dtypes (PACKED_BITS: 4-bit and 2-bit elements, several to a byte in ONNX and
# onnxruntime) hold one element's bit pattern per byte as bits, and decode to
# ml_dtypes' one-element-per-byte types (named here, imported at first use),
# which onnxruntime's Python API packs.
_TABLE: dict[int, tuple[str, int, type, type | str]] = {
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
    _T.UINT4: ("uint4", 1, np.uint8, "uint4"),
    _T.INT4: ("int4", 1, np.uint8, "int4"),
    _T.FLOAT4E2M1: ("float4e2m1", 1, np.uint8, "float4_e2m1fn"),
    _T.UINT2: ("uint2", 1, np.uint8, "uint2"),
    _T.INT2: ("int2", 1, np.uint8, "int2"),
}


class _Storage(Mapping[int, type]):
    """dtype → numpy storage of its decoded tensors; ml_dtypes' types are
    imported when one is first asked for."""

    def __getitem__(self, dtype: int) -> type:
        storage = _TABLE[dtype][3]
        if isinstance(storage, str):
            import ml_dtypes

            return getattr(ml_dtypes, storage)
        return storage

    def __iter__(self) -> Iterator[int]:
        return iter(_TABLE)

    def __len__(self) -> int:
        return len(_TABLE)


# Bits per element of the packed dtypes. ONNX stores element i in bits
# (i mod k)·width … of byte i / k (k = 8 / width elements per byte, the first
# in the least significant bits); the unused high bits of the last byte are 0.
PACKED_BITS: dict[int, int] = {_T.UINT4: 4, _T.INT4: 4, _T.FLOAT4E2M1: 4, _T.UINT2: 2, _T.INT2: 2}
# Dtypes the format and every decoder hold but the writer leaves inline:
# onnxruntime (1.32) has no custom-op output of these types, so a Decode node
# of one would not load through the custom op (its kernel lookup fails).
NOT_WRITTEN_DTYPES = frozenset({_T.FLOAT4E2M1, _T.UINT2, _T.INT2})
DTYPE_NAMES = {k: v[0] for k, v in _TABLE.items()}
ELEM_BYTES = {k: v[1] for k, v in _TABLE.items()}
BITS_DTYPE = {k: v[2] for k, v in _TABLE.items()}  # numpy storage of each dtype's bits
STORAGE: Mapping[int, type] = _Storage()  # numpy storage of decoded tensors
RAW_DTYPES_VERSION = 5  # the payload format version that adds the dtypes other than FLOAT_DTYPES


def integer_range(dtype: int, field_bits: int | None = None) -> tuple[int, int]:
    """Smallest and largest value of an integer dtype (int4/uint4 included), or
    of unsigned `field_bits`-wide fields packed into its bytes (MatMulNBits' B)."""
    if field_bits is not None:
        return 0, (1 << field_bits) - 1
    if dtype in PACKED_BITS:
        import ml_dtypes

        info = ml_dtypes.iinfo(STORAGE[dtype])
    else:
        info = np.iinfo(STORAGE[dtype])
    return int(info.min), int(info.max)


def tensor_nbytes(dtype: int, numel: int) -> int:
    """Bytes of a tensor of `numel` elements as ONNX and onnxruntime store it (packed for PACKED_BITS)."""
    width = PACKED_BITS.get(dtype)
    return (numel * width + 7) // 8 if width else numel * ELEM_BYTES[dtype]


def pack_elements(patterns: np.ndarray, width: int) -> np.ndarray:
    """One `width`-bit pattern per byte → the packed bytes (first element in the low bits)."""
    per_byte = 8 // width
    flat = np.asarray(patterns, np.uint8).reshape(-1)
    padded = np.zeros(-(-flat.size // per_byte) * per_byte, np.uint8)
    padded[: flat.size] = flat
    lanes = padded.reshape(-1, per_byte)
    out = np.zeros(lanes.shape[0], np.uint8)
    for k in range(per_byte):
        out |= lanes[:, k] << np.uint8(k * width)
    return out


def unpack_elements(packed: np.ndarray, width: int, numel: int) -> np.ndarray:
    """Packed bytes → one `width`-bit pattern per byte, `numel` of them."""
    per_byte = 8 // width
    data = np.asarray(packed, np.uint8).reshape(-1)
    mask = np.uint8((1 << width) - 1)
    lanes = np.stack([(data >> np.uint8(k * width)) & mask for k in range(per_byte)], axis=1)
    return lanes.reshape(-1)[:numel]


def patterns_to_storage(patterns: np.ndarray, dtype: int) -> np.ndarray:
    """A packed dtype's bit patterns (one per byte) → its numpy storage (ml_dtypes
    keeps each element's pattern in the low bits of its byte)."""
    return np.asarray(patterns, np.uint8).view(STORAGE[dtype])


def storage_to_patterns(values: np.ndarray, dtype: int) -> np.ndarray:
    """A packed dtype's numpy storage (ml_dtypes) → bit patterns, one per byte."""
    return np.asarray(values).view(np.uint8) & np.uint8((1 << PACKED_BITS[dtype]) - 1)


def to_stored(values: np.ndarray, dtype: int) -> np.ndarray:
    """A decoded tensor (its numpy storage) laid out as ONNX and onnxruntime store
    it: little-endian, and the packed dtypes packed (a flat uint8 array)."""
    width = PACKED_BITS.get(dtype)
    if width:
        return pack_elements(storage_to_patterns(values, dtype), width)
    values = np.ascontiguousarray(values)
    return values.astype(values.dtype.newbyteorder("<"), copy=False)


def to_raw_bytes(values: np.ndarray, dtype: int) -> bytes:
    """A decoded tensor (its numpy storage) as ONNX `raw_data`."""
    return to_stored(values, dtype).tobytes()


def quantized_values(stored: np.ndarray, dtype: int, zero_point: np.ndarray,
                     field_bits: int | None = None) -> np.ndarray:
    """An integer tensor's values (its bits or storage, shaped) less its zero point, as int32.

    With `field_bits` each uint8 byte holds 8 / field_bits unsigned fields, first
    in the low bits (MatMulNBits' B): the last axis grows by that factor."""
    stored = np.asarray(stored)
    if field_bits is None:
        return stored.view(STORAGE[dtype]).astype(np.int32) - zero_point
    fields = unpack_elements(stored.view(np.uint8), field_bits, stored.size * (8 // field_bits))
    return fields.reshape(*stored.shape[:-1], -1).astype(np.int32) - zero_point


def quantized_storage(integers: np.ndarray, dtype: int, shape: tuple[int, ...],
                      field_bits: int | None = None) -> np.ndarray:
    """The inverse of `quantized_values` (zero point added back): the tensor's numpy storage, shaped."""
    if field_bits is None:
        return np.asarray(integers).astype(STORAGE[dtype]).reshape(shape)
    return pack_elements(np.asarray(integers, np.uint8), field_bits).reshape(shape)


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
