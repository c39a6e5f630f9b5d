"""Micro-block geometry and mode selection for unification (passes/unify.py).

`BlockShape` names the block shapes (1×N along the input channels, or a
Conv's whole kernel); `block_layout` places them in a tensor as the expand
stage lays them out; `BlockMetric` holds each block's quadratic form of the
output error (H_bb); `select_modes` picks keep / unify / prune per block by
least D + λ·R; `project` is the nearest point of a block structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_l2c.codec import BlockMode, expand_blocks
from onnx_l2c.config import Choice
from onnx_l2c.measure.layers import LayerStats, LayerView

from .base import TensorInput

SELECTION_ROUNDS = 3  # re-estimates of the symbol statistics during selection
MAX_BLOCK_FORM = 1 << 25  # blocks × size²: above it the block metric keeps only diag H


class BlockShape(Choice):
    """Micro-block shapes of unification: 1×N runs along a weight's input
    channels, or a Conv's whole spatial kernel (e.g. 3×3)."""

    B1X2 = "1x2"
    B1X4 = "1x4"
    B1X8 = "1x8"
    B1X16 = "1x16"
    KERNEL = "kernel"

    @property
    def length(self) -> int | None:
        """Elements along the input channels (None for the kernel shape)."""
        return None if self is BlockShape.KERNEL else int(self.value.split("x")[1])


MAX_KERNEL = 256  # the expand stage's largest block


@dataclass(frozen=True)
class BlockLayout:
    """The expand stage's geometry: blocks of `size` consecutive positions
    along n of the weight viewed as (outer, n, inner)."""

    outer: int
    n: int
    inner: int
    size: int

    def members(self) -> tuple[np.ndarray, np.ndarray]:
        """(blocks, size) flat element indices of each block (−1 past a short
        block's end), and the block of every element."""
        ids, pos = expand_blocks(self.outer, self.n, self.inner, self.size)
        count = int(ids.max()) + 1 if ids.size else 0
        members = np.full((count, self.size), -1, dtype=np.int64)
        members[ids, pos] = np.arange(ids.size)
        return members, ids


def input_axis(tensor: TensorInput, view: LayerView | None) -> int | None:
    """The axis of the weight that runs over its consumer's input channels."""
    if view is not None:
        return view.input_axis
    if len(tensor.shape) == 2 and tensor.channel_axis is not None:
        return 1 - tensor.channel_axis
    # A matrix weight of an op without statistics (e.g. LSTM's W and R,
    # [directions, gates·hidden, input]): ONNX puts the input dimension last.
    return len(tensor.shape) - 1 if len(tensor.shape) >= 2 else None


def block_layout(tensor: TensorInput, view: LayerView | None, shape: BlockShape) -> BlockLayout | None:
    """Where the blocks of `shape` lie in `tensor`, or None when the shape does not fit it."""
    dims = tensor.shape
    if shape is BlockShape.KERNEL:
        if view is None or view.kind != "conv" or len(dims) < 3:
            return None
        kernel = int(np.prod(dims[2:], dtype=np.int64))
        if not 2 <= kernel <= MAX_KERNEL:
            return None
        return BlockLayout(dims[0] * dims[1], kernel, 1, kernel)
    axis = input_axis(tensor, view)
    if axis is None or axis >= len(dims) or dims[axis] < 2:
        return None
    assert shape.length is not None
    outer = int(np.prod(dims[:axis], dtype=np.int64))
    inner = int(np.prod(dims[axis + 1:], dtype=np.int64))
    return BlockLayout(outer, dims[axis], inner, min(shape.length, dims[axis]))





class BlockMetric:
    """Per-block quadratic forms of the output error: H_bb of each block
    (full statistics whose blocks each lie in one matrix row), or its diagonal."""

    def __init__(self, members: np.ndarray, stats: LayerStats | None, view: LayerView | None,
                 shape: tuple[int, ...]) -> None:
        self.valid = members >= 0
        idx = np.where(self.valid, members, 0)
        numel = int(np.prod(shape, dtype=np.int64))
        self.full: np.ndarray | None = None
        diag = np.ones(numel)
        if stats is not None and view is not None:
            m_shape = (view.groups, view.rows, view.cols)
            if stats.hessian is not None:
                h = stats.hessian  # float32 as stored: what is read of it is widened
                diag = view.from_matrix(np.broadcast_to(np.einsum("gii->gi", h).astype(np.float64)[:, None, :],
                                                        m_shape)).reshape(-1)
                pos = np.empty(numel, dtype=np.int64)  # matrix position of every flat element
                pos[view.to_matrix(np.arange(numel).reshape(shape)).reshape(-1)] = np.arange(numel)
                g, rest = np.divmod(pos[idx], view.rows * view.cols)
                r, c = np.divmod(rest, view.cols)
                one_row = ((g == g[:, :1]) & (r == r[:, :1])) | ~self.valid
                if one_row.all() and members.size * members.shape[1] <= MAX_BLOCK_FORM:
                    gb = g[:, 0]
                    self.full = h[gb[:, None, None], c[:, :, None], c[:, None, :]].astype(np.float64) * (
                        self.valid[:, :, None] & self.valid[:, None, :])
            elif stats.diagonal is not None:
                diag = view.from_matrix(np.broadcast_to(stats.diagonal[:, None, :], m_shape)).reshape(-1)
            elif stats.row_weight is not None:
                diag = view.from_matrix(np.broadcast_to(stats.row_weight[None, :, None], m_shape)).reshape(-1)
        self.diag = np.where(self.valid, diag[idx], 0.0)
        count = np.maximum(self.valid.sum(axis=1), 1)
        self.mean_diag = self.diag.sum(axis=1) / count

    def error(self, delta: np.ndarray) -> np.ndarray:
        """ΔᵀH_bbΔ of every block, delta (blocks, size) (0 past a block's end)."""
        if self.full is not None:
            return np.einsum("bi,bij,bj->b", delta, self.full, delta, optimize=True)
        return (self.diag * delta * delta).sum(axis=1)

    def best_magnitude(self, w: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """argmin_m (mσ − w)ᵀH_bb(mσ − w) = σᵀH_bb w / σᵀH_bb σ, at least 0."""
        if self.full is not None:
            num = np.einsum("bi,bij,bj->b", sigma, self.full, w, optimize=True)
            den = np.einsum("bi,bij,bj->b", sigma, self.full, sigma, optimize=True)
        else:
            num = (self.diag * sigma * w).sum(axis=1)
            den = (self.diag * sigma * sigma).sum(axis=1)
        plain = np.abs(w).sum(axis=1) / np.maximum((sigma != 0).sum(axis=1), 1)
        return np.where(den > 0, np.maximum(num / np.where(den > 0, den, 1.0), 0.0), plain)


def _bits(symbols: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """−log2 p of each value under the (smoothed) histogram of `symbols`:
    a lookup table from value − offset, and the offset."""
    s = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if s.size == 0:
        return np.zeros(1), 0
    lo, hi = int(s.min()), int(s.max())
    counts = np.bincount(s - lo, minlength=hi - lo + 1).astype(np.float64) + 0.5
    return -np.log2(counts / counts.sum()), lo


def _lookup(table: tuple[np.ndarray, int], values: np.ndarray) -> np.ndarray:
    bits, lo = table
    i = np.asarray(values, dtype=np.int64) - lo
    unseen = float(bits.max()) + 1.0  # a value the histogram has not seen
    inside = (i >= 0) & (i < bits.size)
    return np.where(inside, bits[np.clip(i, 0, bits.size - 1)], unseen)


def select_modes(w: np.ndarray, step: np.ndarray, metric: BlockMetric, strength: float) -> np.ndarray:
    """Mode of every block: least D + λ·R (module doc, step 1).

    w: (blocks, size) weights (0 past a block's end); step: (blocks,) the
    step of each block's output channel."""
    valid = metric.valid
    s = step[:, None]
    q_keep = np.where(valid, np.sign(w) * np.floor(np.abs(w) / s + 0.5), 0.0)
    d_keep = metric.error(q_keep * s - w)
    sigma = np.where(valid, np.where(w < 0, -1.0, 1.0), 0.0)
    k = np.maximum(np.floor(metric.best_magnitude(w, sigma) / step + 0.5), 1.0)
    d_unify = metric.error(k[:, None] * s * sigma - w)
    d_prune = metric.error(-w)
    lam = strength * (np.log(2.0) / 6.0) * step ** 2 * metric.mean_diag
    sizes = valid.sum(axis=1)
    modes = np.full(w.shape[0], int(BlockMode.KEEP), dtype=np.int64)
    mode_bits = np.full(3, np.log2(3.0))  # no mode preferred in the first round
    for _ in range(SELECTION_ROUNDS):
        keep, unify = modes == BlockMode.KEEP, modes == BlockMode.UNIFY
        sym = _bits(q_keep[keep][valid[keep]] if keep.any() else q_keep[valid])
        mag = _bits(k[unify] if unify.any() else k)
        r_keep = (np.where(valid, _lookup(sym, q_keep), 0.0)).sum(axis=1) + mode_bits[BlockMode.KEEP]
        r_unify = sizes + _lookup(mag, k) + mode_bits[BlockMode.UNIFY]
        r_prune = np.full(w.shape[0], mode_bits[BlockMode.PRUNE])
        cost = np.stack([d_prune + lam * r_prune, d_unify + lam * r_unify, d_keep + lam * r_keep])
        new = np.argmin(cost, axis=0)  # row order = BlockMode values
        if np.array_equal(new, modes):
            break
        modes = new
        mode_bits = -np.log2((np.bincount(modes, minlength=3) + 0.5) / (modes.size + 1.5))
    return modes.astype(np.uint8)


def project(v: np.ndarray, block_of: np.ndarray, modes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Nearest point of the block structure (flat v): kept blocks unchanged,
    unified ones to sign(v)·mean|v|, pruned ones to 0."""
    elem_mode = modes[block_of]
    mean_abs = np.bincount(block_of, weights=np.abs(v), minlength=modes.size) / np.maximum(sizes, 1)
    unified = np.where(v < 0, -1.0, 1.0) * mean_abs[block_of]
    return np.where(elem_mode == BlockMode.KEEP, v, np.where(elem_mode == BlockMode.UNIFY, unified, 0.0))

