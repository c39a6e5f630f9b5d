"""Payload format v1 to v4 (docs/FORMAT.md): recipes, serialization, reconstruction.

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
# FORMAT_VERSION is also the model metadata value `onnx_l2c.format`. Payloads
# are written with the lowest version that holds their stages, so every
# payload without a transform stage stays version 1, byte for byte.
FORMAT_VERSION = 1
FORMAT_VERSION_TRANSFORM = 2  # the first version with the transform stage
FORMAT_VERSION_EXPONENT = 3  # the first version with the exponent stage
FORMAT_VERSION_EXPAND = 4  # the first version with the expand stage
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
    TRANSFORM = 6
    EXPONENT = 7
    EXPAND = 8


class BlockMode(enum.IntEnum):
    """What an expand stage does with one micro-block."""

    PRUNE = 0  # every element 0
    UNIFY = 1  # one shared magnitude, each element's sign from the signs stream
    KEEP = 2  # each element its own symbol


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


@dataclass
class TransformStage:
    """Inverse decorrelating transform: tensor = C · basis (+ mean), in float32.

    C is the affine stage's output read as a rows × k matrix; basis is k × cols.
    Output element (r, j) lands at flat index r*cols + j (layout 0) or
    j*rows + r (layout 1). Per element: acc = 0; acc = acc + C[r, i]·basis[i, j]
    for i = 0..k-1 (separately rounded float32 operations, in that order);
    then acc = acc + mean[j].
    """

    rows: int
    k: int
    cols: int
    basis: np.ndarray  # float32 values, k*cols (row-major k × cols)
    layout: int = 0  # 0: (r, j) -> r*cols + j; 1: (r, j) -> j*rows + r
    basis_dtype: int = FLOAT  # stored as FLOAT or FLOAT16 (then the values must be exact in float16)
    mean: np.ndarray | None = None  # float32 [cols]


@dataclass
class ExponentStage:
    """w = w · 2^(−e[g]) for the elements of group g of an (outer, groups, inner) layout.

    Per-group power-of-two refinement of the affine steps, e.g. finer steps for
    the often-used rows of an embedding table, at the cost of a few bits per
    group (the exponents are one entropy-coded stream). Multiplying by a power
    of two is one correctly rounded float32 operation (exact unless the
    result is subnormal).
    """

    outer: int
    groups: int
    inner: int
    exponents: np.ndarray  # integers in [0, MAX_EXPONENT], [groups]


@dataclass
class ExpandStage:
    """Micro-blocks → int32 symbols (in place of the entropy stage).

    The symbols are viewed as (outer, n, inner); a block is `block`
    consecutive positions along n (the last of each row may be shorter), and
    blocks are ordered (outer, block position along n, inner). Per block one
    mode (`BlockMode`): pruned blocks decode to 0; a unified block to
    ±magnitude with one sign per element; a kept block to its own symbols.
    Four entropy-coded streams: modes, magnitudes (≥ 1, one per unified
    block), signs (1 = negative, per element of the unified blocks, in block
    order) and kept symbols (per element of the kept blocks, in block order).
    """

    outer: int
    n: int
    inner: int
    block: int
    modes: np.ndarray  # [blocks] in BlockMode
    magnitudes: np.ndarray  # [unified blocks] ≥ 1
    signs: np.ndarray  # [elements of unified blocks] 0 / 1
    kept: np.ndarray  # [elements of kept blocks] int32


Stage = (EntropyStage | AffineStage | CodebookStage | CastStage | RawStage | TransformStage | ExponentStage
         | ExpandStage)


@dataclass
class Recipe:
    dtype: int
    dims: tuple[int, ...]
    stages: list[Stage] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64)) if self.dims else 1

    @property
    def coded(self) -> int:
        """Element count of the entropy and affine stages: rows*k under a transform, else numel."""
        for stage in self.stages:
            if isinstance(stage, TransformStage):
                return stage.rows * stage.k
        return self.numel


def payload_version(recipe: Recipe) -> int:
    """Format version a recipe's payload is written with (the lowest that holds its stages)."""
    if any(isinstance(stage, ExpandStage) for stage in recipe.stages):
        return FORMAT_VERSION_EXPAND
    if any(isinstance(stage, ExponentStage) for stage in recipe.stages):
        return FORMAT_VERSION_EXPONENT
    if any(isinstance(stage, TransformStage) for stage in recipe.stages):
        return FORMAT_VERSION_TRANSFORM
    return FORMAT_VERSION


# --------------------------------------------------------------- validate

MAX_CODEBOOK = 65536  # a stream codes at most 65536 distinct indices
MAX_TRANSFORM_BASIS = 1 << 24  # k*cols: bounds the decoder's basis memory (64 MiB as float32)
TRANSFORM_LAYOUTS = (0, 1)
TRANSFORM_BASIS_DTYPES = (FLOAT, FLOAT16)
MAX_EXPONENT = 31  # 2^-31 is a normal float32: every multiplier is exact
MAX_EXPONENT_GROUPS = 1 << 24  # bounds the decoder's exponent table (16 MiB)
MAX_EXPAND_BLOCK = 256  # elements per expand block: bounds the decoder's slice buffers
MAX_MAGNITUDE = 65536  # a stream codes at most 65536 distinct magnitudes (1..65536)


def validate(recipe: Recipe) -> None:
    """Reject what the native decoder would reject, before writing or reconstructing."""
    if recipe.dtype not in DTYPE_NAMES:
        raise L2CError(f"unsupported dtype {recipe.dtype}; valid: {sorted(DTYPE_NAMES)}")
    if len(recipe.dims) > 8 or any(d < 0 for d in recipe.dims):
        raise L2CError(f"invalid shape {list(recipe.dims)} (at most 8 non-negative dims)")
    kinds = [type(stage) for stage in recipe.stages]
    cast = [CastStage] if recipe.dtype != FLOAT else []
    exponent = [ExponentStage] if ExponentStage in kinds else []
    valid = (kinds == [RawStage] or kinds == [EntropyStage, AffineStage, *exponent, *cast]
             or kinds == [ExpandStage, AffineStage, *exponent, *cast]
             or kinds == [EntropyStage, CodebookStage, *cast]
             or kinds == [EntropyStage, AffineStage, *exponent, TransformStage, *cast])
    if not valid:
        names = "+".join(k.__name__ for k in kinds) or "none"
        tail = "+cast" if cast else ""
        raise L2CError(f"invalid stage sequence {names} for {DTYPE_NAMES[recipe.dtype]}; valid: raw, "
                       f"entropy+codebook{tail}, entropy+affine[+exponent][+transform]{tail}, "
                       f"expand+affine[+exponent]{tail}")
    # A transform stage runs after the affine one: entropy and affine then
    # cover the rows*k coefficients, not the tensor's numel elements.
    for stage in recipe.stages:
        if isinstance(stage, TransformStage):
            _validate_transform(stage, recipe.numel)
    numel = recipe.coded
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
        elif isinstance(stage, ExponentStage):
            _validate_exponent(stage, numel)
        elif isinstance(stage, ExpandStage):
            _validate_expand(stage, numel)
        elif isinstance(stage, CastStage) and stage.target != recipe.dtype:
            raise L2CError(f"cast target {stage.target} differs from the tensor dtype {recipe.dtype}")


def _validate_transform(stage: TransformStage, numel: int) -> None:
    rows, k, cols = stage.rows, stage.k, stage.cols
    if not all(isinstance(v, (int, np.integer)) for v in (rows, k, cols)):
        raise L2CError(f"transform stage rows, k, cols must be integers, got {rows!r}, {k!r}, {cols!r}")
    if not 1 <= k <= cols:
        raise L2CError(f"transform stage k = {k} must be in 1..cols ({cols})")
    if k * cols > MAX_TRANSFORM_BASIS:
        raise L2CError(f"transform stage basis k*cols = {k}*{cols} exceeds {MAX_TRANSFORM_BASIS} values")
    if rows < 0 or rows * cols != numel:
        raise L2CError(f"transform stage rows*cols = {rows}*{cols} does not match {numel} elements")
    if stage.layout not in TRANSFORM_LAYOUTS:
        raise L2CError(f"transform stage layout {stage.layout} not in {TRANSFORM_LAYOUTS}")
    if stage.basis_dtype not in TRANSFORM_BASIS_DTYPES:
        raise L2CError(f"transform stage basis_dtype {stage.basis_dtype}; valid: {FLOAT} (float32), "
                       f"{FLOAT16} (float16)")
    # Finite as float32, the type the decoder computes in (a float64 input may overflow it).
    basis = _basis_float32(stage)
    if basis.size != k * cols or not np.isfinite(basis).all():
        raise L2CError(f"transform stage basis needs {k}*{cols} finite values, got {basis.size}")
    if stage.basis_dtype == FLOAT16:
        with np.errstate(over="ignore"):
            half = basis.astype(np.float16).astype(np.float32)
        if not np.array_equal(half.view(np.uint32), basis.view(np.uint32)):
            raise L2CError("transform stage basis_dtype float16 needs basis values exactly representable in float16")
    if stage.mean is not None:
        with np.errstate(over="ignore"):
            mean = np.asarray(stage.mean, dtype=np.float32).reshape(-1)
        if mean.size != cols or not np.isfinite(mean).all():
            raise L2CError(f"transform stage mean needs {cols} finite values, got {mean.size}")


def _validate_exponent(stage: ExponentStage, numel: int) -> None:
    outer, groups, inner = stage.outer, stage.groups, stage.inner
    if not all(isinstance(v, (int, np.integer)) for v in (outer, groups, inner)):
        raise L2CError(f"exponent stage outer, groups, inner must be integers, got {outer!r}, {groups!r}, {inner!r}")
    if not 1 <= groups <= MAX_EXPONENT_GROUPS:
        raise L2CError(f"exponent stage groups = {groups} must be in 1..{MAX_EXPONENT_GROUPS}")
    if outer < 0 or inner < 0 or outer * groups * inner != numel:
        raise L2CError(f"exponent stage layout {outer}x{groups}x{inner} does not cover {numel} elements")
    e = np.asarray(stage.exponents)
    if e.size != groups or not np.issubdtype(e.dtype, np.integer):
        raise L2CError(f"exponent stage needs {groups} integer exponents, got {e.size} of {e.dtype}")
    if e.size and (e.min() < 0 or e.max() > MAX_EXPONENT):
        raise L2CError(f"exponent stage exponents must lie in [0, {MAX_EXPONENT}]")


def expand_blocks(outer: int, n: int, inner: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """For each flat element of an (outer, n, inner) buffer: its block index
    (blocks ordered outer, position along n, inner) and its position in the block."""
    per_row = -(-n // block) if n else 0
    j = np.arange(n, dtype=np.int64)
    ids = (np.arange(outer, dtype=np.int64)[:, None, None] * (per_row * inner)
           + (j // block)[None, :, None] * inner + np.arange(inner, dtype=np.int64)[None, None, :])
    pos = np.broadcast_to((j % block)[None, :, None], ids.shape)
    return ids.reshape(-1), np.ascontiguousarray(pos).reshape(-1)


def _expand_order(stage: ExpandStage) -> tuple[np.ndarray, np.ndarray]:
    """Flat elements in stream order (block, then position) and the block of each."""
    ids, pos = expand_blocks(stage.outer, stage.n, stage.inner, stage.block)
    order = np.lexsort((pos, ids))
    return order, ids[order]


def expand_stage(symbols: np.ndarray, outer: int, n: int, inner: int, block: int,
                 modes: np.ndarray) -> ExpandStage:
    """The expand stage that decodes to `symbols` (flat int32) with the given
    block modes; unified blocks must hold one nonzero magnitude, pruned ones zeros."""
    q = np.asarray(symbols, dtype=np.int32).reshape(-1)
    modes = np.asarray(modes, dtype=np.uint8).reshape(-1)
    stage = ExpandStage(outer, n, inner, block, modes, np.zeros(0, np.int32), np.zeros(0, np.uint8),
                        np.zeros(0, np.int32))
    order, blocks = _expand_order(stage)
    if modes.size != (blocks[-1] + 1 if blocks.size else 0):
        raise L2CError(f"expand stage needs one mode per block, got {modes.size}")
    qs, ms = q[order], modes[blocks]
    unify = ms == BlockMode.UNIFY
    ub = blocks[unify]
    first = np.r_[True, ub[1:] != ub[:-1]] if ub.size else np.zeros(0, bool)
    stage.magnitudes = np.abs(qs[unify][first]).astype(np.int32)
    if (np.abs(qs[unify]) != np.repeat(stage.magnitudes, np.diff(np.r_[np.flatnonzero(first), ub.size]))).any():
        raise L2CError("expand stage: a unified block holds more than one magnitude")
    if (qs[ms == BlockMode.PRUNE] != 0).any():
        raise L2CError("expand stage: a pruned block holds a nonzero symbol")
    stage.signs = (qs[unify] < 0).astype(np.uint8)
    stage.kept = qs[ms == BlockMode.KEEP].astype(np.int32)
    return stage


def expand_symbols(stage: ExpandStage) -> np.ndarray:
    """The int32 symbols an expand stage decodes to (flat)."""
    order, blocks = _expand_order(stage)
    ms = np.asarray(stage.modes, dtype=np.int64)[blocks]
    out = np.zeros(order.size, np.int32)
    unify, keep = ms == BlockMode.UNIFY, ms == BlockMode.KEEP
    ub = blocks[unify]
    rank = np.cumsum(np.r_[True, ub[1:] != ub[:-1]]) - 1 if ub.size else np.zeros(0, np.int64)
    mag = np.asarray(stage.magnitudes, dtype=np.int32)[rank]
    out[order[unify]] = np.where(np.asarray(stage.signs).reshape(-1) == 1, -mag, mag)
    out[order[keep]] = np.asarray(stage.kept, dtype=np.int32).reshape(-1)
    return out


def _validate_expand(stage: ExpandStage, numel: int) -> None:
    outer, n, inner, block = stage.outer, stage.n, stage.inner, stage.block
    if not all(isinstance(v, (int, np.integer)) for v in (outer, n, inner, block)):
        raise L2CError(f"expand stage outer, n, inner, block must be integers, got {outer!r}, {n!r}, {inner!r}, "
                       f"{block!r}")
    if outer < 0 or n < 0 or inner < 0 or outer * n * inner != numel:
        raise L2CError(f"expand stage layout {outer}x{n}x{inner} does not cover {numel} elements")
    if not 1 <= block <= MAX_EXPAND_BLOCK or (n > 0 and block > n):
        raise L2CError(f"expand stage block {block} must be in 1..min(n = {n}, {MAX_EXPAND_BLOCK})")
    modes = np.asarray(stage.modes).reshape(-1)
    nblocks = outer * (-(-n // block)) * inner
    if modes.size != nblocks or (modes.size and not np.isin(modes, list(BlockMode)).all()):
        raise L2CError(f"expand stage needs {nblocks} block modes in {[int(m) for m in BlockMode]}, "
                       f"got {modes.size}")
    lengths = np.minimum(block, n - (np.arange(-(-n // block)) * block)) if n else np.zeros(0, np.int64)
    per_block = np.broadcast_to(lengths[None, :, None], (outer, lengths.size, inner)).reshape(-1)
    unified = int((modes == BlockMode.UNIFY).sum())
    counts = {"magnitudes": unified, "signs": int(per_block[modes == BlockMode.UNIFY].sum()),
              "kept": int(per_block[modes == BlockMode.KEEP].sum())}
    for label, count in counts.items():
        values = np.asarray(getattr(stage, label)).reshape(-1)
        if values.size != count or (values.size and not np.issubdtype(values.dtype, np.integer)):
            raise L2CError(f"expand stage needs {count} integer {label}, got {values.size}")
    mags, signs = np.asarray(stage.magnitudes), np.asarray(stage.signs)
    if mags.size and (mags.min() < 1 or mags.max() > MAX_MAGNITUDE):
        raise L2CError(f"expand stage magnitudes must lie in [1, {MAX_MAGNITUDE}]")
    if signs.size and (signs.min() < 0 or signs.max() > 1):
        raise L2CError("expand stage signs must be 0 or 1")
    kept = np.asarray(stage.kept, dtype=np.int64)
    if kept.size and (kept.min() < np.iinfo(np.int32).min or kept.max() > np.iinfo(np.int32).max
                      or kept.max() - kept.min() >= 65536):
        raise L2CError("expand stage kept symbols must be int32 and span at most 65536 values")


def exponent_multipliers(exponents: np.ndarray) -> np.ndarray:
    """2^(−e) as float32 (exact: e ≤ 31)."""
    return np.ldexp(np.float32(1.0), -np.asarray(exponents, dtype=np.int32)).astype(np.float32)


def _basis_float32(stage: TransformStage) -> np.ndarray:
    """The basis as the decoder uses it: float32, flat row-major k × cols."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(stage.basis, dtype=np.float32).reshape(-1)


# ---------------------------------------------------------------- serialize

def serialize(recipe: Recipe, check: bool = True) -> bytes:
    """Payload bytes of a recipe (header, stages, CRC32).

    check=False skips `validate` (tests use it to build malformed payloads).
    """
    if check:
        validate(recipe)
    parts = [MAGIC, struct.pack("<HBB", payload_version(recipe), recipe.dtype, len(recipe.dims))]
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
        if sym.size != recipe.coded:
            raise L2CError(f"entropy stage has {sym.size} symbols for {recipe.coded} elements")
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
    if isinstance(stage, TransformStage):
        has_mean = stage.mean is not None
        body = [struct.pack("<QIIBBBx", stage.rows, stage.k, stage.cols, stage.layout, stage.basis_dtype,
                            int(has_mean))]
        basis = _basis_float32(stage)
        # validate() checked that float16 holds these values exactly
        with np.errstate(over="ignore"):
            stored = basis.astype("<f2") if stage.basis_dtype == FLOAT16 else basis.astype("<f4")
        body.append(stored.tobytes())
        if has_mean:
            body.append(np.ascontiguousarray(stage.mean, dtype="<f4").tobytes())
        return StageKind.TRANSFORM, b"".join(body)
    if isinstance(stage, ExpandStage):
        kept = np.ascontiguousarray(stage.kept, dtype=np.int32).reshape(-1)
        lo = int(kept.min()) if kept.size else 0
        body = [struct.pack("<QQQIi", stage.outer, stage.n, stage.inner, stage.block, lo)]
        for values, offset in ((stage.modes, 0), (stage.magnitudes, 1), (stage.signs, 0), (kept, lo)):
            v = np.ascontiguousarray(values, dtype=np.int32).reshape(-1) - np.int32(offset)
            body.append(_native.encode_stream(v, int(v.max()) + 1 if v.size else 1))
        return StageKind.EXPAND, b"".join(body)
    if isinstance(stage, ExponentStage):
        e = np.ascontiguousarray(stage.exponents, dtype=np.int32).reshape(-1)
        alphabet = int(e.max()) + 1 if e.size else 1
        body = [struct.pack("<QIQ", stage.outer, stage.groups, stage.inner), _native.encode_stream(e, alphabet)]
        return StageKind.EXPONENT, b"".join(body)
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
        elif isinstance(stage, ExpandStage):
            buf = expand_symbols(stage)
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
        elif isinstance(stage, ExponentStage):
            assert buf is not None and buf.dtype == np.float32
            mult = exponent_multipliers(stage.exponents)
            with np.errstate(under="ignore"):
                w = buf.reshape(stage.outer, stage.groups, stage.inner) * mult[None, :, None]
            buf = w.reshape(-1).astype(np.float32, copy=False)
        elif isinstance(stage, TransformStage):
            assert buf is not None and buf.dtype == np.float32
            buf = _inverse_transform(buf, stage)
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


def _inverse_transform(coefficients: np.ndarray, stage: TransformStage) -> np.ndarray:
    """FORMAT.md transform, vectorised over (r, j) but in the decoder's per-element order:
    acc = 0; acc = acc + C[r, i]·B[i, j] for increasing i; acc = acc + mean[j].

    Each numpy float32 elementwise operation is one IEEE binary32 operation
    rounded to nearest even, as in the native loop, so the bits match; overflow
    to inf and inf − inf = NaN are the format's defined results, not errors.
    """
    c = coefficients.reshape(stage.rows, stage.k)
    b = _basis_float32(stage).reshape(stage.k, stage.cols)
    acc = np.zeros((stage.rows, stage.cols), np.float32)
    product = np.empty_like(acc)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        for i in range(stage.k):
            np.multiply(c[:, i:i + 1], b[i:i + 1, :], out=product)
            np.add(acc, product, out=acc)
        if stage.mean is not None:
            np.add(acc, np.asarray(stage.mean, dtype=np.float32).reshape(1, -1), out=acc)
    if stage.layout == 1:
        acc = acc.T  # (r, j) lands at j*rows + r
    return np.ascontiguousarray(acc).reshape(-1)


STORAGE = {FLOAT: np.float32, FLOAT16: np.float16, BFLOAT16: np.uint16}  # numpy storage of decoded tensors


def decode_native(payload: bytes, recipe: Recipe) -> np.ndarray:
    """The native decoder's output for a payload of `recipe` (what `reconstruct`
    computes, bit for bit, as the tests pin; much faster for transform stages)."""
    out = np.empty(recipe.dims, STORAGE[recipe.dtype])
    _native.decode_into(payload, out)
    return out


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
