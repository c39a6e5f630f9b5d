"""Payloads (docs/FORMAT.md): recipes, serialization, reconstruction, the header.

A `Recipe` is the decode program of one tensor: a short list of stages from
the fixed vocabulary (`stages.py`). `serialize` turns it into payload bytes
(entropy coding through the native encoder); `reconstruct` computes in numpy
exactly what the native decoder will produce, bit for bit, so optimization
can measure the real reconstruction without decoding. Both, and `validate`,
are loops over the stage classes. `parse_header` is the one reader of the
payload header on the Python side.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import PayloadError, UnsupportedError
from . import native
from .dtypes import DTYPE_NAMES, FLOAT, RAW_DTYPES_VERSION, STORAGE, check_dtype, dtype_min_version
from .stages import STAGES, BodyReader, Buffer, Stage, StageSummary
from . import expand, transform  # noqa: F401 (their stage classes register themselves in STAGES)

MAGIC = b"L2CP"
# The version of payloads holding only the stages of version 1, and the model
# metadata value `onnx_l2c.format`. Every payload is written with the lowest
# version that holds its stages, so payloads of old stages stay byte for byte.
FORMAT_VERSION = 1
MAX_DIMS = 8
MAX_STAGES = 8
DOMAIN = "ai.onnx_l2c"
OP_TYPE = "Decode"
OPSET = 1
PAYLOAD_ALIGN = 64
# The default decode budget (runtime/src/payload.h): a model's payloads may
# decode to at most max(DECODE_LIMIT_FLOOR, DECODE_LIMIT_RATIO × their stored
# bytes) unless the caller passes max_decoded_bytes. Real models stay far
# below 1024× (the zoo: 4–20×); a few-byte payload declaring terabytes does not.
DECODE_LIMIT_FLOOR = 256 << 20
DECODE_LIMIT_RATIO = 1024


def stage_class(kind: int) -> type[Stage]:
    """The class of a stage kind (STAGES is complete here: this module imports every stage module)."""
    try:
        return STAGES[kind]
    except KeyError:
        known = ", ".join(f"{k} ({c.name})" for k, c in sorted(STAGES.items()))
        raise UnsupportedError(f"unknown stage kind {kind}; known: {known}") from None


def default_decode_limit(stored_bytes: int) -> int:
    return max(DECODE_LIMIT_FLOOR, DECODE_LIMIT_RATIO * stored_bytes)
METADATA_KEY = "onnx_l2c.format"  # model metadata: the format version of its payloads


def max_format_version() -> int:
    """The newest payload version: the highest `min_version` of the stage table and the dtypes."""
    return max(RAW_DTYPES_VERSION, *(cls.min_version for cls in STAGES.values()))


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
        """Element count of the stages before a transform (rows*k), else numel."""
        for stage in self.stages:
            counted = stage.coded_elements()
            if counted is not None:
                return counted
        return self.numel

    def stage(self, cls: type[Stage]) -> Stage | None:
        """The recipe's stage of that class, if any."""
        return next((s for s in self.stages if isinstance(s, cls)), None)


def payload_version(recipe: Recipe) -> int:
    """Format version a recipe's payload is written with (the lowest that holds its stages)."""
    return max([FORMAT_VERSION, dtype_min_version(recipe.dtype), *(stage.min_version for stage in recipe.stages)])


def _check_sequence(recipe: Recipe) -> None:
    """The stage order rules of the table: each stage consumes what the one
    before produced, follows a stage it may follow, and the last one leaves
    the tensor in its dtype (float32 values are the tensor for float32)."""
    names = "+".join(type(s).name for s in recipe.stages) or "none"
    where = f"invalid stage sequence {names} for {DTYPE_NAMES[recipe.dtype]}"
    buf, previous, seen = Buffer.NONE, None, set()
    for stage in recipe.stages:
        cls = type(stage)
        if not isinstance(stage, Stage) or cls.kind not in STAGES:
            raise UnsupportedError(f"{where}: {cls.__name__} is not a stage of the format")
        if buf is not cls.consumes:
            raise PayloadError(f"{where}: {cls.name} needs {cls.consumes.value}, "
                               f"{'the start' if previous is None else previous} gives {buf.value}")
        if cls.after is not None and previous not in cls.after:
            raise PayloadError(f"{where}: {cls.name} may only follow {', '.join(sorted(cls.after))}")
        if cls.not_after & seen:
            raise PayloadError(f"{where}: {cls.name} cannot come after {', '.join(sorted(cls.not_after & seen))}")
        if cls.dtypes is not None and recipe.dtype not in cls.dtypes:
            raise PayloadError(f"{where}: {cls.name} is for {', '.join(DTYPE_NAMES[d] for d in sorted(cls.dtypes))}")
        buf, previous = cls.produces, cls.name
        seen.add(cls.name)
    if not (buf is Buffer.OUTPUT or (buf is Buffer.FLOAT32 and recipe.dtype == FLOAT)):
        raise PayloadError(f"{where}: it ends with {buf.value}, not the tensor in its dtype")



def validate(recipe: Recipe) -> None:
    """Reject what the native decoder would reject, before writing or reconstructing."""
    check_dtype(recipe.dtype, "recipe")
    if len(recipe.dims) > MAX_DIMS or any(d < 0 for d in recipe.dims):
        raise PayloadError(f"invalid shape {list(recipe.dims)} (at most {MAX_DIMS} non-negative dims)")
    _check_sequence(recipe)
    if len(recipe.stages) > MAX_STAGES:
        raise PayloadError(f"a recipe has at most {MAX_STAGES} stages, got {len(recipe.stages)}")
    # A stage after which fewer elements flow (transform) is validated first:
    # the stages before it then cover its element count, not the tensor's.
    count = recipe.coded
    for stage in recipe.stages:
        if stage.coded_elements() is not None:
            stage.validate(recipe, recipe.numel)
    for stage in recipe.stages:
        if stage.coded_elements() is None:
            stage.validate(recipe, count)


def serialize(recipe: Recipe, check: bool = True) -> bytes:
    """Payload bytes of a recipe (header, stages, CRC32).

    check=False skips `validate` (tests use it to build malformed payloads).
    """
    if check:
        validate(recipe)
    parts = [MAGIC, struct.pack("<HBB", payload_version(recipe), recipe.dtype, len(recipe.dims))]
    parts.append(struct.pack(f"<{len(recipe.dims)}Q", *recipe.dims))
    parts.append(struct.pack("<B3x", len(recipe.stages)))
    count = recipe.coded
    for stage in recipe.stages:
        body = stage.body(recipe, recipe.numel if stage.coded_elements() is not None else count)
        parts.append(struct.pack("<B3xI", stage.kind, len(body)))
        parts.append(body)
    data = b"".join(parts)
    return data + struct.pack("<I", zlib.crc32(data) & 0xFFFFFFFF)


def reconstruct(recipe: Recipe) -> np.ndarray:
    """What the native decoder produces, computed in numpy, bit for bit.

    Returns arrays of the dtype's numpy storage (`STORAGE`: float32, float16,
    the integers, bool, float64; the bit patterns of bfloat16 and float8),
    shaped `recipe.dims`.
    """
    validate(recipe)
    buf: np.ndarray | None = None
    for stage in recipe.stages:
        buf = stage.apply(buf, recipe)
    assert buf is not None
    return buf.reshape(recipe.dims)


def decode_native(payload: bytes, recipe: Recipe) -> np.ndarray:
    """The native decoder's output for a payload of `recipe` (what `reconstruct`
    computes, bit for bit, as the tests pin; much faster for transform stages)."""
    out = np.empty(recipe.dims, STORAGE[recipe.dtype])
    native.decode_into(payload, out)
    return out


@dataclass(frozen=True)
class PayloadHeader:
    """A payload's header and the frame of each stage (kind, body offset, body size)."""

    version: int
    dtype: int
    dims: tuple[int, ...]
    stages: tuple[tuple[int, int, int], ...]

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(stage_class(kind).name for kind, _, _ in self.stages)


def parse_header(payload: np.ndarray | bytes | memoryview, what: str = "payload") -> PayloadHeader:
    """Read the header and stage frames of a payload the native library has
    already validated (`native.payload_info` or a successful decode); bounds
    are still checked, so garbage gives a PayloadError, never an IndexError."""
    data = payload.tobytes() if isinstance(payload, np.ndarray) else bytes(payload)
    try:
        if data[:4] != MAGIC:
            raise PayloadError(f"{what}: bad magic (not an onnx_l2c payload)")
        version, dtype, ndim = struct.unpack_from("<HBB", data, 4)
        dims = struct.unpack_from(f"<{ndim}Q", data, 8)
        pos = 8 + 8 * ndim
        nstages = data[pos]
        pos += 4
        frames = []
        for _ in range(nstages):
            kind, size = struct.unpack_from("<B3xI", data, pos)
            frames.append((kind, pos + 8, size))
            pos += 8 + size
    except (struct.error, IndexError):
        raise PayloadError(f"{what}: truncated payload header ({len(data)} bytes)") from None
    return PayloadHeader(version, dtype, tuple(int(d) for d in dims), tuple(frames))


@dataclass(frozen=True)
class PayloadSummary:
    dtype: int
    dims: tuple[int, ...]
    stages: tuple[str, ...]


def describe(payload: np.ndarray | bytes, what: str = "payload") -> PayloadSummary:
    """Header and stage names of a payload (fully validated natively first)."""
    native.payload_info(payload, what)
    header = parse_header(payload, what)
    return PayloadSummary(header.dtype, header.dims, header.stage_names)


def parse(payload: np.ndarray | bytes | memoryview, what: str = "payload", max_decoded_bytes: int = 0) -> Recipe:
    """The recipe a payload holds (the inverse of `serialize`: serializing it
    again gives the same bytes). The payload is validated natively first; its
    arrays take memory in proportion to the decoded tensor, refused
    (LimitError) above `max_decoded_bytes` (> 0)."""
    native.payload_info(payload, what, max_decoded_bytes)
    data = payload.tobytes() if isinstance(payload, np.ndarray) else bytes(payload)
    header = parse_header(data, what)
    recipe = Recipe(header.dtype, header.dims)
    bodies = [(stage_class(kind), data[start:start + size]) for kind, start, size in header.stages]
    # the element count the stages see: the tensor's, or what a transform stage expands
    count = recipe.numel
    for cls, body in bodies:
        coded = cls.coded_count(BodyReader(body, what))
        if coded is not None:
            count = coded
    for cls, body in bodies:
        stage_count = recipe.numel if cls.coded_count(BodyReader(body, what)) is not None else count
        recipe.stages.append(cls.parse(BodyReader(body, what), recipe, stage_count))
    return recipe


def summarize(recipe: Recipe) -> dict[str, StageSummary]:
    """What each stage of a recipe did (the stages that have something to say), by stage name."""
    out: dict[str, StageSummary] = {}
    for stage in recipe.stages:
        summary = stage.summary(recipe)
        if summary is not None:
            out[type(stage).name] = summary
    return out


def summarize_totals(summaries: list[dict[str, StageSummary]]) -> dict[str, StageSummary]:
    """The model-wide summary of each stage kind (`Stage.total`) from the tensors' summaries."""
    by_name: dict[str, list[StageSummary]] = {}
    for per_tensor in summaries:
        for name, summary in per_tensor.items():
            by_name.setdefault(name, []).append(summary)
    classes = {cls.name: cls for cls in STAGES.values()}
    out: dict[str, StageSummary] = {}
    for name, items in by_name.items():
        total = classes[name].total(items)
        if total is not None:
            out[name] = total
    return out
