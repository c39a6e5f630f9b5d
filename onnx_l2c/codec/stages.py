"""The stage vocabulary of payloads (docs/FORMAT.md, "Stages"): one class per stage kind.

A stage class carries everything about its kind: the kind number, the lowest
format version that holds it, the buffer it consumes and produces (and which
stages may come right before it), the limits the decoder enforces, its
validation, its serialized body and how to read it back (`parse`), its
reconstruction (bit-identical to the native decoder), and what it says about
a tensor and a whole model in `onnx-l2c inspect` (`summary`, `total`). `payload.py` only loops over the stages; the C++ decoder
(runtime/src/payload.h, payload.cc) mirrors this table, and
tests/test_layout.py keeps the two equal.

Adding a stage: one class here (or in a module of this package that
`codec/__init__.py` imports), its parse/execute code in runtime/src/payload.cc
and its kind and limits in payload.h, its section in FORMAT.md, and goldens.
"""

from __future__ import annotations

import enum
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import PayloadError
from . import native
from .dtypes import (BITS_DTYPE, BFLOAT16, DTYPE_NAMES, ELEM_BYTES, FLOAT, FLOAT16, PACKED_BITS, STORAGE, float32_to,
                     patterns_to_storage)

if TYPE_CHECKING:
    from .payload import Recipe


class Buffer(enum.Enum):
    """What lies between two stages (the state of FORMAT.md's decoding model)."""

    NONE = "nothing"
    INT32 = "int32 symbols"
    FLOAT32 = "float32 values"
    OUTPUT = "the tensor in its dtype"


# kind number → class, filled as the classes are defined: this module's, and
# those of transform.py and expand.py once imported. payload.py imports both,
# and the codec package imports payload before it hands out a stage name, so
# look kinds up through payload.stage_class.
STAGES: dict[int, type["Stage"]] = {}


@dataclass
class StageSummary:
    """What one stage did, for `inspect`: JSON fields, a short line for the
    table, and counts that the stage class's `total` adds up across tensors
    (not shown; e.g. how often each codebook value is used)."""

    fields: dict[str, Any]
    text: str
    tally: Counter = field(default_factory=Counter)


def entropy_of(counts: "Counter | np.ndarray") -> float:
    """Order-0 entropy in bits per element of a histogram."""
    c = np.asarray(list(counts.values()) if isinstance(counts, Counter) else counts, dtype=np.float64)
    c = c[c > 0]
    total = c.sum()
    if c.size <= 1 or total <= 0:
        return 0.0
    p = c / total
    return float(-(p * np.log2(p)).sum())


class BodyReader:
    """Reads one stage body (`Stage.parse`); running past its end is a PayloadError."""

    def __init__(self, body: bytes, what: str) -> None:
        self.body, self.pos, self.what = body, 0, what

    def unpack(self, fmt: str) -> tuple:
        try:
            values = struct.unpack_from(fmt, self.body, self.pos)
        except struct.error:
            raise PayloadError(f"{self.what}: stage body truncated ({len(self.body)} bytes)") from None
        self.pos += struct.calcsize(fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if self.pos + size > len(self.body):
            raise PayloadError(f"{self.what}: stage body truncated ({len(self.body)} bytes)")
        out = np.frombuffer(self.body, dtype=dtype, count=count, offset=self.pos).astype(np.dtype(dtype).newbyteorder("="))
        self.pos += size
        return out

    def stream(self, count: int) -> np.ndarray:
        """One entropy-coded stream of `count` indices (int32)."""
        indices, used = native.decode_stream(self.body[self.pos:], count)
        self.pos += used
        return indices


class Stage:
    """One stage of a recipe. Subclasses are dataclasses and register themselves."""

    kind: ClassVar[int]
    name: ClassVar[str]
    min_version: ClassVar[int] = 1  # the first payload format version that holds this stage
    consumes: ClassVar[Buffer]
    produces: ClassVar[Buffer]
    # The stages that may come right before this one (None: any that produces `consumes`)
    after: ClassVar[frozenset[str] | None] = None
    not_after: ClassVar[frozenset[str]] = frozenset()  # stages that may not come anywhere before it
    dtypes: ClassVar[frozenset[int] | None] = None  # tensor dtypes it may appear in (None: all)
    # The decoder's limits, by their constant names in runtime/src/payload.h (checked by a test)
    limits: ClassVar[dict[str, int]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind in STAGES:
            raise AssertionError(f"stage kind {cls.kind} defined twice ({STAGES[cls.kind].__name__}, {cls.__name__})")
        STAGES[cls.kind] = cls

    def coded_elements(self) -> int | None:
        """The element count of the stages before this one, when it differs from the tensor's (transform)."""
        return None

    def validate(self, recipe: "Recipe", count: int) -> None:
        """Reject what the native decoder would reject; `count` = elements this stage sees."""

    def body(self, recipe: "Recipe", count: int) -> bytes:
        raise NotImplementedError

    def apply(self, buf: np.ndarray | None, recipe: "Recipe") -> np.ndarray:
        """The stage's output from its input buffer, as the native decoder computes it."""
        raise NotImplementedError

    @classmethod
    def parse(cls, body: BodyReader, recipe: "Recipe", count: int) -> "Stage":
        """The stage from its serialized body (the inverse of `body`); `recipe`
        holds the tensor's dtype, shape and the stages before this one."""
        raise NotImplementedError

    @classmethod
    def coded_count(cls, body: BodyReader) -> int | None:
        """`coded_elements` read from a serialized body, before the stages are parsed."""
        return None

    def summary(self, recipe: "Recipe") -> StageSummary | None:
        """What this stage did to the tensor (for inspect), or None when there is nothing to say."""
        return None

    @classmethod
    def total(cls, summaries: list[StageSummary]) -> StageSummary | None:
        """The model-wide summary of this stage kind from the tensors' summaries."""
        return None


def _is_int(*values: object) -> bool:
    return all(isinstance(v, (int, np.integer)) for v in values)


@dataclass
class EntropyStage(Stage):
    """Integer symbols, rANS coded (one stream)."""

    kind: ClassVar[int] = 1
    name: ClassVar[str] = "entropy"
    consumes: ClassVar[Buffer] = Buffer.NONE
    produces: ClassVar[Buffer] = Buffer.INT32
    MAX_ALPHABET: ClassVar[int] = 65536

    symbols: np.ndarray  # int32, flat

    def validate(self, recipe: "Recipe", count: int) -> None:
        if np.asarray(self.symbols).size != count:
            raise PayloadError(f"entropy stage has {np.asarray(self.symbols).size} symbols for {count} elements")

    def body(self, recipe: "Recipe", count: int) -> bytes:
        sym = np.ascontiguousarray(self.symbols, dtype=np.int32).reshape(-1)
        if sym.size != count:
            raise PayloadError(f"entropy stage has {sym.size} symbols for {count} elements")
        lo = int(sym.min()) if sym.size else 0
        hi = int(sym.max()) if sym.size else 0
        alphabet = hi - lo + 1
        if alphabet > self.MAX_ALPHABET:
            raise PayloadError(f"entropy stage alphabet {alphabet} exceeds {self.MAX_ALPHABET} symbols")
        return struct.pack("<i", lo) + native.encode_stream(sym - np.int32(lo), alphabet)

    def apply(self, buf: np.ndarray | None, recipe: "Recipe") -> np.ndarray:
        return np.asarray(self.symbols, dtype=np.int32).reshape(-1)

    @classmethod
    def parse(cls, body: BodyReader, recipe: "Recipe", count: int) -> "EntropyStage":
        (lo,) = body.unpack("<i")
        return cls(body.stream(count) + np.int32(lo))


@dataclass
class AffineStage(Stage):
    """w = (q − sign(q)·theta) · scale[c] (+ offset[c]), float32 ops in that order."""

    kind: ClassVar[int] = 2
    name: ClassVar[str] = "affine"
    consumes: ClassVar[Buffer] = Buffer.INT32
    produces: ClassVar[Buffer] = Buffer.FLOAT32

    outer: int
    channels: int
    inner: int
    theta: float
    scale: np.ndarray  # float32 [channels]
    offset: np.ndarray | None = None  # float32 [channels]

    def validate(self, recipe: "Recipe", count: int) -> None:
        if self.outer * self.channels * self.inner != count:
            raise PayloadError(f"affine stage layout {self.outer}x{self.channels}x{self.inner} "
                               f"does not cover {count} elements")
        arrays = [("scale", self.scale)] + ([("offset", self.offset)] if self.offset is not None else [])
        for label, values in arrays:
            values = np.asarray(values)
            if values.size != self.channels or not np.isfinite(values).all():
                raise PayloadError(f"affine {label} needs {self.channels} finite values, got {values.size}")
        if not (np.isfinite(self.theta) and 0.0 <= self.theta < 1.0):
            raise PayloadError(f"affine theta {self.theta} outside [0, 1)")

    def body(self, recipe: "Recipe", count: int) -> bytes:
        has_offset = self.offset is not None
        body = [struct.pack("<QIQfB3x", self.outer, self.channels, self.inner, self.theta, int(has_offset))]
        body.append(np.ascontiguousarray(self.scale, dtype="<f4").tobytes())
        if has_offset:
            body.append(np.ascontiguousarray(self.offset, dtype="<f4").tobytes())
        return b"".join(body)

    def apply(self, buf: np.ndarray | None, recipe: "Recipe") -> np.ndarray:
        assert buf is not None and buf.dtype == np.int32
        q = buf.astype(np.float32).reshape(self.outer, self.channels, self.inner)
        t = q - np.sign(q) * np.float32(self.theta)
        w = t * np.asarray(self.scale, dtype=np.float32)[None, :, None]
        if self.offset is not None:
            w = w + np.asarray(self.offset, dtype=np.float32)[None, :, None]
        return w.reshape(-1).astype(np.float32, copy=False)

    @classmethod
    def parse(cls, body: BodyReader, recipe: "Recipe", count: int) -> "AffineStage":
        outer, channels, inner, theta, has_offset = body.unpack("<QIQfB3x")
        scale = body.array("<f4", channels)
        offset = body.array("<f4", channels) if has_offset else None
        return cls(outer, channels, inner, theta, scale, offset)

    def summary(self, recipe: "Recipe") -> StageSummary:
        steps = np.abs(np.asarray(self.scale, dtype=np.float64))
        lo, hi = (float(steps.min()), float(steps.max())) if steps.size else (0.0, 0.0)
        fields = {"steps": int(steps.size), "step_min": lo, "step_max": hi, "theta": float(self.theta),
                  "offset": self.offset is not None}
        text = f"step {lo:.3g}..{hi:.3g} ({steps.size} ch), θ {self.theta:.3g}" + (", offset" if self.offset
                                                                                    is not None else "")
        return StageSummary(fields, text)

    @classmethod
    def total(cls, summaries: list[StageSummary]) -> StageSummary | None:
        if not summaries:
            return None
        lo = min(s.fields["step_min"] for s in summaries)
        hi = max(s.fields["step_max"] for s in summaries)
        thetas = [s.fields["theta"] for s in summaries]
        fields = {"tensors": len(summaries), "step_min": lo, "step_max": hi, "theta_min": min(thetas),
                  "theta_max": max(thetas)}
        return StageSummary(fields, f"{len(summaries)} tensors, step {lo:.3g}..{hi:.3g}, "
                                    f"θ {min(thetas):.3g}..{max(thetas):.3g}")


@dataclass
class CodebookStage(Stage):
    """Symbols index a table of float32 values."""

    kind: ClassVar[int] = 3
    name: ClassVar[str] = "codebook"
    consumes: ClassVar[Buffer] = Buffer.INT32
    produces: ClassVar[Buffer] = Buffer.FLOAT32
    after: ClassVar[frozenset[str] | None] = frozenset({"entropy"})
    MAX_VALUES: ClassVar[int] = 65536  # a stream codes at most 65536 distinct indices

    values: np.ndarray  # float32 [size]

    def validate(self, recipe: "Recipe", count: int) -> None:
        values = np.asarray(self.values)
        if not 1 <= values.size <= self.MAX_VALUES or not np.isfinite(values).all():
            raise PayloadError(f"codebook needs 1..{self.MAX_VALUES} finite values, got {values.size}")
        symbols = np.asarray(recipe.stages[0].symbols)  # type: ignore[attr-defined]  # `after` = entropy
        if symbols.size and (symbols.min() < 0 or symbols.max() >= values.size):
            raise PayloadError(f"codebook symbols must lie in [0, {values.size})")

    def body(self, recipe: "Recipe", count: int) -> bytes:
        values = np.ascontiguousarray(self.values, dtype="<f4")
        return struct.pack("<I", values.size) + values.tobytes()

    def apply(self, buf: np.ndarray | None, recipe: "Recipe") -> np.ndarray:
        assert buf is not None and buf.dtype == np.int32
        return np.asarray(self.values, dtype=np.float32)[buf]

    @classmethod
    def parse(cls, body: BodyReader, recipe: "Recipe", count: int) -> "CodebookStage":
        (size,) = body.unpack("<I")
        return cls(body.array("<f4", size))

    def summary(self, recipe: "Recipe") -> StageSummary:
        """The distinct values the tensor uses and their entropy (bits per weight)."""
        values = np.asarray(self.values, dtype=np.float32).reshape(-1)
        symbols = np.asarray(recipe.stages[0].symbols).reshape(-1)  # type: ignore[attr-defined]  # after entropy
        uses = np.bincount(symbols, minlength=values.size)
        tally: Counter = Counter()
        for value, n in zip(values.tolist(), uses.tolist()):
            if n:
                tally[value] += n  # equal values (0.0 and -0.0 too) are one value
        return StageSummary(_codebook_fields(tally, values.size), _codebook_text(tally), tally)

    @classmethod
    def total(cls, summaries: list[StageSummary]) -> StageSummary | None:
        if not summaries:
            return None
        tally: Counter = Counter()
        for s in summaries:
            tally.update(s.tally)
        fields = {"tensors": len(summaries)} | _codebook_fields(tally, None)
        return StageSummary(fields, f"{len(summaries)} tensors, " + _codebook_text(tally), tally)


def _codebook_fields(tally: Counter, table: int | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"unique_values": len(tally), "entropy_bits": entropy_of(tally)}
    if table is not None:
        fields["table_size"] = table
    return fields


def _codebook_text(tally: Counter) -> str:
    return f"{len(tally)} unique value{'s' if len(tally) != 1 else ''}, entropy {entropy_of(tally):.2f} bits/weight"


@dataclass
class CastStage(Stage):
    """float32 → the tensor's float16 / bfloat16, rounding to nearest even."""

    kind: ClassVar[int] = 4
    name: ClassVar[str] = "cast"
    consumes: ClassVar[Buffer] = Buffer.FLOAT32
    produces: ClassVar[Buffer] = Buffer.OUTPUT
    dtypes: ClassVar[frozenset[int] | None] = frozenset({FLOAT16, BFLOAT16})

    target: int  # FLOAT16 or BFLOAT16

    def validate(self, recipe: "Recipe", count: int) -> None:
        if self.target != recipe.dtype:
            raise PayloadError(f"cast target {self.target} differs from the tensor dtype {recipe.dtype}")

    def body(self, recipe: "Recipe", count: int) -> bytes:
        return struct.pack("<B3x", self.target)

    def apply(self, buf: np.ndarray | None, recipe: "Recipe") -> np.ndarray:
        assert buf is not None and buf.dtype == np.float32
        return float32_to(buf, self.target)

    @classmethod
    def parse(cls, body: BodyReader, recipe: "Recipe", count: int) -> "CastStage":
        (target,) = body.unpack("<B3x")
        return cls(target)


_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}  # bit storage by element size


def byte_planes(bits: np.ndarray, elem_bytes: int, rotate: int) -> list[np.ndarray]:
    """Split rotl(bits, rotate) into byte planes, most significant first."""
    width = 8 * elem_bytes
    utype = _UNSIGNED[elem_bytes]
    b = np.ascontiguousarray(bits).reshape(-1).view(utype)
    rot = ((b << utype(rotate)) | (b >> utype(width - rotate))) if rotate else b
    return [((rot >> utype(8 * k)) & utype(0xFF)).astype(np.uint8) for k in reversed(range(elem_bytes))]


@dataclass
class RawStage(Stage):
    """Lossless: the exact bits, split into byte planes after a left rotation."""

    kind: ClassVar[int] = 5
    name: ClassVar[str] = "raw"
    consumes: ClassVar[Buffer] = Buffer.NONE
    produces: ClassVar[Buffer] = Buffer.OUTPUT

    bits: np.ndarray  # uint16/uint32, flat
    rotate: int = 1

    def validate(self, recipe: "Recipe", count: int) -> None:
        bits = np.asarray(self.bits)
        if bits.size != count:
            raise PayloadError(f"raw stage has {bits.size} values for {count} elements")
        if bits.dtype.kind not in "uib" or bits.dtype.itemsize != ELEM_BYTES[recipe.dtype]:
            raise PayloadError(f"raw stage bits are {bits.dtype}, not the {ELEM_BYTES[recipe.dtype]}-byte "
                               f"integers of {DTYPE_NAMES[recipe.dtype]}")
        if not 0 <= self.rotate < 8 * ELEM_BYTES[recipe.dtype]:
            raise PayloadError(f"raw stage rotate {self.rotate} outside [0, {8 * ELEM_BYTES[recipe.dtype]})")
        width = PACKED_BITS.get(recipe.dtype)
        if width:  # one element's pattern per index
            if self.rotate:
                raise PayloadError(f"raw stage of {DTYPE_NAMES[recipe.dtype]} has rotate {self.rotate}; valid: 0")
            if bits.size and int(bits.max()) >= 1 << width:
                raise PayloadError(f"raw stage of {DTYPE_NAMES[recipe.dtype]} holds a pattern above {width} bits")

    def body(self, recipe: "Recipe", count: int) -> bytes:
        elem_bytes = ELEM_BYTES[recipe.dtype]
        planes = byte_planes(self.bits, elem_bytes, self.rotate)
        body = [struct.pack("<BB2x", elem_bytes, self.rotate)]
        alphabet = 1 << PACKED_BITS.get(recipe.dtype, 8)
        body += [native.encode_stream(plane, alphabet, native.COMPACT_SCALE_BITS) for plane in planes]
        return b"".join(body)

    def apply(self, buf: np.ndarray | None, recipe: "Recipe") -> np.ndarray:
        bits = np.asarray(self.bits).reshape(-1).view(BITS_DTYPE[recipe.dtype])
        return patterns_to_storage(bits, recipe.dtype) if recipe.dtype in PACKED_BITS else bits.view(STORAGE[recipe.dtype])

    @classmethod
    def parse(cls, body: BodyReader, recipe: "Recipe", count: int) -> "RawStage":
        elem_bytes, rotate = body.unpack("<BB2x")
        if elem_bytes not in _UNSIGNED:
            raise PayloadError(f"raw stage elem_bytes {elem_bytes}; valid: 1, 2, 4, 8")
        utype = _UNSIGNED[elem_bytes]
        width = 8 * elem_bytes
        rot = np.zeros(count, utype)
        for k in reversed(range(elem_bytes)):  # most significant plane first
            rot |= body.stream(count).astype(utype) << utype(8 * k)
        bits = ((rot >> utype(rotate)) | (rot << utype(width - rotate))) if rotate else rot
        packed = PACKED_BITS.get(recipe.dtype)
        if packed and (rotate or elem_bytes != 1 or (bits.size and int(bits.max()) >= 1 << packed)):
            raise PayloadError(f"raw stage of {DTYPE_NAMES[recipe.dtype]}: patterns above {packed} bits or rotate "
                               f"{rotate}")
        return cls(bits.astype(BITS_DTYPE[recipe.dtype]), rotate)
