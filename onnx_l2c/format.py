"""Payload format v1 (docs/FORMAT.md): recipes, serialization, reconstruction.

A `Recipe` is the decode program of one tensor: a short list of stages from
the fixed vocabulary the native decoder implements. `serialize` turns it into
payload bytes (entropy coding through the native encoder); `reconstruct`
computes in numpy exactly what the native decoder will produce, bit for bit,
so optimization can measure the real reconstruction without decoding.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import onnx

from . import _native
from .errors import L2CError

MAGIC = b"L2CP"
FORMAT_VERSION = 1
DOMAIN = "ai.onnx_l2c"
OP_TYPE = "Decode"
OPSET = 1
PAYLOAD_ALIGN = 64

FLOAT = onnx.TensorProto.FLOAT
FLOAT16 = onnx.TensorProto.FLOAT16
BFLOAT16 = onnx.TensorProto.BFLOAT16
DTYPE_NAMES = {FLOAT: "float32", FLOAT16: "float16", BFLOAT16: "bfloat16"}
ELEM_BYTES = {FLOAT: 4, FLOAT16: 2, BFLOAT16: 2}
# numpy storage of each dtype's bits (bfloat16 has no numpy type: its bits are uint16)
BITS_DTYPE = {FLOAT: np.uint32, FLOAT16: np.uint16, BFLOAT16: np.uint16}


class StageKind(enum.IntEnum):
    ENTROPY = 1
    AFFINE = 2
    CODEBOOK = 3
    CAST = 4
    RAW = 5


@dataclass
class EntropyStage:
    """Integer symbols, rANS coded (one stream)."""

    symbols: np.ndarray  # int32, flat


@dataclass
class AffineStage:
    """w = (q − sign(q)·theta) · scale[c] (+ offset[c]), float32 ops in that order."""

    outer: int
    channels: int
    inner: int
    theta: float
    scale: np.ndarray  # float32 [channels]
    offset: np.ndarray | None = None  # float32 [channels]


@dataclass
class CodebookStage:
    values: np.ndarray  # float32 [size]


@dataclass
class CastStage:
    target: int  # FLOAT16 or BFLOAT16


@dataclass
class RawStage:
    """Lossless: the exact bits, split into byte planes after a left rotation."""

    bits: np.ndarray  # uint16/uint32, flat
    rotate: int = 1


Stage = EntropyStage | AffineStage | CodebookStage | CastStage | RawStage


@dataclass
class Recipe:
    dtype: int
    dims: tuple[int, ...]
    stages: list[Stage] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64)) if self.dims else 1


# --------------------------------------------------------------- validate

MAX_CODEBOOK = 65536  # a stream codes at most 65536 distinct indices


def validate(recipe: Recipe) -> None:
    """Reject what the native decoder would reject, before writing or reconstructing."""
    if recipe.dtype not in DTYPE_NAMES:
        raise L2CError(f"unsupported dtype {recipe.dtype}; valid: {sorted(DTYPE_NAMES)}")
    if len(recipe.dims) > 8 or any(d < 0 for d in recipe.dims):
        raise L2CError(f"invalid shape {list(recipe.dims)} (at most 8 non-negative dims)")
    kinds = [type(stage) for stage in recipe.stages]
    cast = [CastStage] if recipe.dtype != FLOAT else []
    valid = (kinds == [RawStage] or kinds == [EntropyStage, AffineStage, *cast]
             or kinds == [EntropyStage, CodebookStage, *cast])
    if not valid:
        names = "+".join(k.__name__ for k in kinds) or "none"
        raise L2CError(f"invalid stage sequence {names} for {DTYPE_NAMES[recipe.dtype]}; valid: raw, "
                       f"entropy+affine|codebook{'+cast' if cast else ''}")
    numel = recipe.numel
    for stage in recipe.stages:
        if isinstance(stage, RawStage):
            if np.asarray(stage.bits).size != numel:
                raise L2CError(f"raw stage has {np.asarray(stage.bits).size} values for {numel} elements")
            if not 0 <= stage.rotate < 8 * ELEM_BYTES[recipe.dtype]:
                raise L2CError(f"raw stage rotate {stage.rotate} outside [0, {8 * ELEM_BYTES[recipe.dtype]})")
        elif isinstance(stage, EntropyStage):
            if np.asarray(stage.symbols).size != numel:
                raise L2CError(f"entropy stage has {np.asarray(stage.symbols).size} symbols for {numel} elements")
        elif isinstance(stage, AffineStage):
            if stage.outer * stage.channels * stage.inner != numel:
                raise L2CError(f"affine stage layout {stage.outer}x{stage.channels}x{stage.inner} "
                               f"does not cover {numel} elements")
            arrays = [("scale", stage.scale)] + ([("offset", stage.offset)] if stage.offset is not None else [])
            for label, values in arrays:
                values = np.asarray(values)
                if values.size != stage.channels or not np.isfinite(values).all():
                    raise L2CError(f"affine {label} needs {stage.channels} finite values, got {values.size}")
            if not (np.isfinite(stage.theta) and 0.0 <= stage.theta < 1.0):
                raise L2CError(f"affine theta {stage.theta} outside [0, 1)")
        elif isinstance(stage, CodebookStage):
            values = np.asarray(stage.values)
            if not 1 <= values.size <= MAX_CODEBOOK or not np.isfinite(values).all():
                raise L2CError(f"codebook needs 1..{MAX_CODEBOOK} finite values, got {values.size}")
            symbols = np.asarray(recipe.stages[0].symbols)
            if symbols.size and (symbols.min() < 0 or symbols.max() >= values.size):
                raise L2CError(f"codebook symbols must lie in [0, {values.size})")
        elif isinstance(stage, CastStage) and stage.target != recipe.dtype:
            raise L2CError(f"cast target {stage.target} differs from the tensor dtype {recipe.dtype}")


# ---------------------------------------------------------------- serialize

def serialize(recipe: Recipe, check: bool = True) -> bytes:
    """Payload bytes of a recipe (header, stages, CRC32).

    check=False skips `validate` (tests use it to build malformed payloads).
    """
    if check:
        validate(recipe)
    parts = [MAGIC, struct.pack("<HBB", FORMAT_VERSION, recipe.dtype, len(recipe.dims))]
    parts.append(struct.pack(f"<{len(recipe.dims)}Q", *recipe.dims))
    parts.append(struct.pack("<B3x", len(recipe.stages)))
    for stage in recipe.stages:
        kind, body = _stage_body(stage, recipe)
        parts.append(struct.pack("<B3xI", kind, len(body)))
        parts.append(body)
    data = b"".join(parts)
    return data + struct.pack("<I", zlib.crc32(data) & 0xFFFFFFFF)


def _stage_body(stage: Stage, recipe: Recipe) -> tuple[int, bytes]:
    if isinstance(stage, EntropyStage):
        sym = np.ascontiguousarray(stage.symbols, dtype=np.int32).reshape(-1)
        if sym.size != recipe.numel:
            raise L2CError(f"entropy stage has {sym.size} symbols for {recipe.numel} elements")
        lo = int(sym.min()) if sym.size else 0
        hi = int(sym.max()) if sym.size else 0
        alphabet = hi - lo + 1
        if alphabet > 65536:
            raise L2CError(f"entropy stage alphabet {alphabet} exceeds 65536 symbols")
        stream = _native.encode_stream(sym - np.int32(lo), alphabet)
        return StageKind.ENTROPY, struct.pack("<i", lo) + stream
    if isinstance(stage, AffineStage):
        has_offset = stage.offset is not None
        body = [struct.pack("<QIQfB3x", stage.outer, stage.channels, stage.inner, stage.theta, int(has_offset))]
        body.append(np.ascontiguousarray(stage.scale, dtype="<f4").tobytes())
        if has_offset:
            body.append(np.ascontiguousarray(stage.offset, dtype="<f4").tobytes())
        return StageKind.AFFINE, b"".join(body)
    if isinstance(stage, CodebookStage):
        values = np.ascontiguousarray(stage.values, dtype="<f4")
        return StageKind.CODEBOOK, struct.pack("<I", values.size) + values.tobytes()
    if isinstance(stage, CastStage):
        return StageKind.CAST, struct.pack("<B3x", stage.target)
    if isinstance(stage, RawStage):
        elem_bytes = ELEM_BYTES[recipe.dtype]
        planes = byte_planes(stage.bits, elem_bytes, stage.rotate)
        body = [struct.pack("<BB2x", elem_bytes, stage.rotate)]
        body += [_native.encode_stream(plane, 256) for plane in planes]
        return StageKind.RAW, b"".join(body)
    raise L2CError(f"unknown stage {type(stage).__name__}")


def byte_planes(bits: np.ndarray, elem_bytes: int, rotate: int) -> list[np.ndarray]:
    """Split rotl(bits, rotate) into byte planes, most significant first."""
    width = 8 * elem_bytes
    utype = np.uint32 if elem_bytes == 4 else np.uint16
    b = np.ascontiguousarray(bits).reshape(-1).view(utype)
    rot = ((b << utype(rotate)) | (b >> utype(width - rotate))) if rotate else b
    return [((rot >> utype(8 * k)) & utype(0xFF)).astype(np.uint8) for k in reversed(range(elem_bytes))]


# ---------------------------------------------------------- reconstruction

def reconstruct(recipe: Recipe) -> np.ndarray:
    """What the native decoder produces, computed in numpy, bit for bit.

    Returns float32 or float16 arrays, and uint16 bit patterns for bfloat16,
    shaped `recipe.dims`.
    """
    validate(recipe)
    buf: np.ndarray | None = None
    for stage in recipe.stages:
        if isinstance(stage, EntropyStage):
            buf = np.asarray(stage.symbols, dtype=np.int32).reshape(-1)
        elif isinstance(stage, AffineStage):
            assert buf is not None and buf.dtype == np.int32
            q = buf.astype(np.float32).reshape(stage.outer, stage.channels, stage.inner)
            t = q - np.sign(q) * np.float32(stage.theta)
            w = t * np.asarray(stage.scale, dtype=np.float32)[None, :, None]
            if stage.offset is not None:
                w = w + np.asarray(stage.offset, dtype=np.float32)[None, :, None]
            buf = w.reshape(-1).astype(np.float32, copy=False)
        elif isinstance(stage, CodebookStage):
            assert buf is not None and buf.dtype == np.int32
            buf = np.asarray(stage.values, dtype=np.float32)[buf]
        elif isinstance(stage, CastStage):
            assert buf is not None and buf.dtype == np.float32
            buf = float32_to(buf, stage.target)
        elif isinstance(stage, RawStage):
            buf = np.asarray(stage.bits).reshape(-1).view(BITS_DTYPE[recipe.dtype])
            if recipe.dtype == FLOAT:
                buf = buf.view(np.float32)
            elif recipe.dtype == FLOAT16:
                buf = buf.view(np.float16)
    assert buf is not None
    return buf.reshape(recipe.dims)


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
    raise L2CError(f"cannot cast to dtype {dtype}; valid: {FLOAT16}, {BFLOAT16}")


def bits_to_float32(bits: np.ndarray, dtype: int) -> np.ndarray:
    """Values of float32 / float16 / bfloat16 bit patterns as float32."""
    if dtype == FLOAT:
        return np.asarray(bits).view(np.float32)
    if dtype == FLOAT16:
        return np.asarray(bits).view(np.float16).astype(np.float32)
    if dtype == BFLOAT16:
        return (np.asarray(bits).astype(np.uint32) << np.uint32(16)).view(np.float32)
    raise L2CError(f"unsupported dtype {dtype}; valid: {sorted(DTYPE_NAMES)}")


# ------------------------------------------------------------ description

@dataclass(frozen=True)
class PayloadSummary:
    dtype: int
    dims: tuple[int, ...]
    stages: tuple[str, ...]


def describe(payload: np.ndarray | bytes, what: str = "payload") -> PayloadSummary:
    """Header and stage names of a payload (fully validated natively first)."""
    info = _native.payload_info(payload, what)
    data = payload.tobytes() if isinstance(payload, np.ndarray) else bytes(payload)
    pos = 8 + 8 * len(info.dims)
    nstages = data[pos]
    pos += 4
    names: list[str] = []
    for _ in range(nstages):
        kind, size = struct.unpack_from("<B3xI", data, pos)
        names.append(StageKind(kind).name.lower())
        pos += 8 + size
    return PayloadSummary(info.dtype, info.dims, tuple(names))
