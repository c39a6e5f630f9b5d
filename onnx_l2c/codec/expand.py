"""The expand stage: one mode per micro-block (pruned, unified, kept) → int32 symbols."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..errors import PayloadError
from . import native
from .stages import BodyReader, Buffer, Stage, StageSummary, _is_int

if TYPE_CHECKING:
    from .payload import Recipe


class BlockMode(enum.IntEnum):
    """What an expand stage does with one micro-block (the modes stream's values)."""

    PRUNE = 0  # every element 0
    UNIFY = 1  # one shared magnitude, each element's sign from the signs stream
    KEEP = 2  # each element its own symbol


@dataclass
class ExpandStage(Stage):
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

    kind: ClassVar[int] = 8
    name: ClassVar[str] = "expand"
    min_version: ClassVar[int] = 4
    consumes: ClassVar[Buffer] = Buffer.NONE
    produces: ClassVar[Buffer] = Buffer.INT32
    MAX_BLOCK: ClassVar[int] = 256  # elements per block: bounds the decoder's slice buffers
    MAX_MAGNITUDE: ClassVar[int] = 65536  # a stream codes at most 65536 distinct magnitudes (1..65536)
    limits: ClassVar[dict[str, int]] = {"kMaxExpandBlock": MAX_BLOCK, "kMaxExpandMagnitude": MAX_MAGNITUDE}

    outer: int
    n: int
    inner: int
    block: int
    modes: np.ndarray  # [blocks] in BlockMode
    magnitudes: np.ndarray  # [unified blocks] ≥ 1
    signs: np.ndarray  # [elements of unified blocks] 0 / 1
    kept: np.ndarray  # [elements of kept blocks] int32

    def validate(self, recipe: "Recipe", count: int) -> None:
        outer, n, inner, block = self.outer, self.n, self.inner, self.block
        if not _is_int(outer, n, inner, block):
            raise PayloadError(f"expand stage outer, n, inner, block must be integers, got {outer!r}, {n!r}, "
                               f"{inner!r}, {block!r}")
        if outer < 0 or n < 0 or inner < 0 or outer * n * inner != count:
            raise PayloadError(f"expand stage layout {outer}x{n}x{inner} does not cover {count} elements")
        if not 1 <= block <= self.MAX_BLOCK or (n > 0 and block > n):
            raise PayloadError(f"expand stage block {block} must be in 1..min(n = {n}, {self.MAX_BLOCK})")
        modes = np.asarray(self.modes).reshape(-1)
        nblocks = outer * (-(-n // block)) * inner
        if modes.size != nblocks or (modes.size and not np.isin(modes, list(BlockMode)).all()):
            raise PayloadError(f"expand stage needs {nblocks} block modes in {[int(m) for m in BlockMode]}, "
                               f"got {modes.size}")
        lengths = np.minimum(block, n - (np.arange(-(-n // block)) * block)) if n else np.zeros(0, np.int64)
        per_block = np.broadcast_to(lengths[None, :, None], (outer, lengths.size, inner)).reshape(-1)
        unified = int((modes == BlockMode.UNIFY).sum())
        counts = {"magnitudes": unified, "signs": int(per_block[modes == BlockMode.UNIFY].sum()),
                  "kept": int(per_block[modes == BlockMode.KEEP].sum())}
        for label, expected in counts.items():
            values = np.asarray(getattr(self, label)).reshape(-1)
            if values.size != expected or (values.size and not np.issubdtype(values.dtype, np.integer)):
                raise PayloadError(f"expand stage needs {expected} integer {label}, got {values.size}")
        mags, signs = np.asarray(self.magnitudes), np.asarray(self.signs)
        if mags.size and (mags.min() < 1 or mags.max() > self.MAX_MAGNITUDE):
            raise PayloadError(f"expand stage magnitudes must lie in [1, {self.MAX_MAGNITUDE}]")
        if signs.size and (signs.min() < 0 or signs.max() > 1):
            raise PayloadError("expand stage signs must be 0 or 1")
        kept = np.asarray(self.kept, dtype=np.int64)
        if kept.size and (kept.min() < np.iinfo(np.int32).min or kept.max() > np.iinfo(np.int32).max
                          or kept.max() - kept.min() >= 65536):
            raise PayloadError("expand stage kept symbols must be int32 and span at most 65536 values")

    def body(self, recipe: "Recipe", count: int) -> bytes:
        kept = np.ascontiguousarray(self.kept, dtype=np.int32).reshape(-1)
        lo = int(kept.min()) if kept.size else 0
        body = [struct.pack("<QQQIi", self.outer, self.n, self.inner, self.block, lo)]
        for values, offset in ((self.modes, 0), (self.magnitudes, 1), (self.signs, 0), (kept, lo)):
            v = np.ascontiguousarray(values, dtype=np.int32).reshape(-1) - np.int32(offset)
            body.append(native.encode_stream(v, int(v.max()) + 1 if v.size else 1))
        return b"".join(body)

    def apply(self, buf: np.ndarray | None, recipe: "Recipe") -> np.ndarray:
        return expand_symbols(self)

    @classmethod
    def parse(cls, body: BodyReader, recipe: "Recipe", count: int) -> "ExpandStage":
        outer, n, inner, block, lo = body.unpack("<QQQIi")
        if block < 1:
            raise PayloadError(f"{body.what}: expand stage block {block} must be at least 1")
        per_row = -(-n // block) if n else 0
        modes = body.stream(outer * per_row * inner).astype(np.uint8)
        lengths = np.minimum(block, n - np.arange(per_row) * block) if n else np.zeros(0, np.int64)
        per_block = np.broadcast_to(lengths[None, :, None], (outer, per_row, inner)).reshape(-1)
        unified = modes == BlockMode.UNIFY
        magnitudes = body.stream(int(unified.sum())) + np.int32(1)
        signs = body.stream(int(per_block[unified].sum())).astype(np.uint8)
        kept = body.stream(int(per_block[modes == BlockMode.KEEP].sum())) + np.int32(lo)
        return cls(outer, n, inner, block, modes, magnitudes, signs, kept)

    def summary(self, recipe: "Recipe") -> StageSummary:
        """Blocks (and weights) per mode."""
        modes = np.asarray(self.modes).reshape(-1)
        fields: dict[str, int] = {"block": int(self.block), "blocks": int(modes.size)}
        for mode in (BlockMode.KEEP, BlockMode.UNIFY, BlockMode.PRUNE):
            fields[_MODE_NAMES[mode]] = int((modes == mode).sum())
        return StageSummary(fields, f"blocks of {self.block}: " + _mode_text(fields))

    @classmethod
    def total(cls, summaries: list[StageSummary]) -> StageSummary | None:
        if not summaries:
            return None
        fields = {"tensors": len(summaries)}
        for key in ("blocks", *_MODE_NAMES.values()):
            fields[key] = sum(s.fields[key] for s in summaries)
        return StageSummary(fields, f"{len(summaries)} tensors, {fields['blocks']} blocks: " + _mode_text(fields))


_MODE_NAMES = {BlockMode.KEEP: "kept", BlockMode.UNIFY: "unified", BlockMode.PRUNE: "pruned"}


def _mode_text(fields: dict[str, int]) -> str:
    return ", ".join(f"{fields[name]} {name}" for name in _MODE_NAMES.values())


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
        raise PayloadError(f"expand stage needs one mode per block, got {modes.size}")
    qs, ms = q[order], modes[blocks]
    unify = ms == BlockMode.UNIFY
    ub = blocks[unify]
    first = np.r_[True, ub[1:] != ub[:-1]] if ub.size else np.zeros(0, bool)
    stage.magnitudes = np.abs(qs[unify][first]).astype(np.int32)
    if (np.abs(qs[unify]) != np.repeat(stage.magnitudes, np.diff(np.r_[np.flatnonzero(first), ub.size]))).any():
        raise PayloadError("expand stage: a unified block holds more than one magnitude")
    if (qs[ms == BlockMode.PRUNE] != 0).any():
        raise PayloadError("expand stage: a pruned block holds a nonzero symbol")
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

