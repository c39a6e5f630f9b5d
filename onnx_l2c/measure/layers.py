"""A weight as its consumer's matrices, and the statistics measured for it.

`LayerView` says how a weight acts as G groups of matrices (rows × d) on its
consumer's input vectors; `LayerStats` holds what calibration measured for
it (H = E[x xᵀ] per group, its diagonal, row usage, mean input, the two
halves of the samples) and a cache for work its candidates share.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnx_l2c.graph.model import WeightRef
from onnx_l2c.graph.ops import INPUT_AXIS, layer_of


@dataclass
class LayerView:
    """How a weight acts in its consumer: as `groups` matrices (rows × cols)."""

    kind: str  # the layout: a key of graph.ops.INPUT_AXIS
    groups: int
    rows: int  # per group
    cols: int  # per group (the input dimension d)
    shape: tuple[int, ...]
    activation: str  # name of the consumer's input the statistics come from
    node: onnx.NodeProto
    trans_a: bool = False

    @property
    def input_axis(self) -> int:
        """The weight's axis that runs over the consumer's input channels."""
        return INPUT_AXIS[self.kind]

    def to_matrix(self, w: np.ndarray) -> np.ndarray:
        """Tensor → (groups, rows, cols)."""
        w = w.reshape(self.shape)
        if self.kind == "conv":
            return w.reshape(self.groups, self.rows, self.cols)
        if self.kind == "conv_transpose":
            ci = self.shape[0] // self.groups
            m = w.reshape(self.groups, ci, self.rows, -1).transpose(0, 2, 1, 3)
            return m.reshape(self.groups, self.rows, self.cols)
        if self.kind in ("matmul", "gemm_kn"):
            return w.T.reshape(1, self.rows, self.cols)
        return w.reshape(1, self.rows, self.cols)  # gemm_nk, gather

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        """(groups, rows, cols) → tensor layout."""
        if self.kind == "conv":
            return m.reshape(self.shape)
        if self.kind == "conv_transpose":
            ci = self.shape[0] // self.groups
            kk = self.cols // ci
            return m.reshape(self.groups, self.rows, ci, kk).transpose(0, 2, 1, 3).reshape(self.shape)
        if self.kind in ("matmul", "gemm_kn"):
            return m.reshape(self.rows, self.cols).T.reshape(self.shape)
        return m.reshape(self.shape)

    def row_channels(self, channel_axis: int) -> np.ndarray:
        """Index along the tensor's channel axis of every matrix row (groups·rows)."""
        if self.kind == "conv_transpose":
            return np.tile(np.arange(self.rows), self.groups)
        if self.kind == "gather":
            return np.arange(self.rows)
        return np.arange(self.groups * self.rows)


# The d×d second moments are stored in float32 as soon as each layer's sums
# are finished (three per layer: H and the H of each half of the samples; in
# float64 they were 445 MB on all-MiniLM-L6-v2, five times the model). The
# sums are accumulated in float64, and every consumer that solves or
# decomposes H widens it first. Rounding costs 6e-8 of H; centering (H − μμᵀ,
# see centered()) cancels and scales that by (μ/σ)², about 1.5e-4 of the
# covariance at μ/σ = 50, below the estimate's own sampling error
# (~1/√vectors, a few thousand vectors per half) and the 1% damping of every
# factorization. all-MiniLM-L6-v2 10×: mean cosine 0.993360 either way.
MOMENT_DTYPE = np.float32


def hessian_error(delta: np.ndarray, hessian: np.ndarray) -> float:
    """tr(Δ·H·Δᵀ) summed over groups, for Δ (groups, rows, cols) and H
    (groups, cols, cols): Δ·H by one BLAS product in float64 (H widened for
    it: einsum on a float32 H was 3× slower), then the row-wise dot products."""
    m = delta if delta.dtype == np.float64 else delta.astype(np.float64)
    h = hessian if hessian.dtype == np.float64 else hessian.astype(np.float64)
    return float(np.einsum("grd,grd->", np.matmul(m, h), m))


@dataclass
class LayerStats:
    """Mean second moment of a weight's input vectors."""

    view: LayerView
    hessian: np.ndarray | None = None  # (groups, cols, cols), MOMENT_DTYPE once stored
    diagonal: np.ndarray | None = None  # (groups, cols) when only the diagonal is kept
    row_weight: np.ndarray | None = None  # (rows,) usage probability of Gather rows (smoothed, sums to 1)
    vectors: int = 0
    positions: int = 0  # input vectors over all samples before subsampling: multiply-adds = positions · weights
    halves: tuple[np.ndarray, np.ndarray] | None = None  # H of the first / second half of the samples
    mean: np.ndarray | None = None  # (groups, cols): E[x], with a full H
    halves_mean: tuple[np.ndarray, np.ndarray] | None = None
    # Work derived from these statistics that several candidates of the layer
    # share (factorizations, eigen-decompositions): owned here, dropped with
    # `forget()` once the layer's candidates are fitted.
    cache: "LayerCache" = field(default_factory=lambda: LayerCache(), repr=False, compare=False)
    # the centered twin, made once (see centered())
    _centered: "LayerStats | None" = field(default=None, repr=False, compare=False)
    _noise: float | None = field(default=None, repr=False, compare=False)  # noise_error(), once

    def store_moments(self) -> None:
        """Keep H and its halves in MOMENT_DTYPE from now on (noise_error is
        taken first, from the moments as measured)."""
        if self.hessian is not None:
            self.noise_error()
            self.hessian = self.hessian.astype(MOMENT_DTYPE, copy=False)
        if self.halves is not None:
            self.halves = (self.halves[0].astype(MOMENT_DTYPE, copy=False),
                           self.halves[1].astype(MOMENT_DTYPE, copy=False))

    def half(self, index: int) -> "LayerStats":
        """The statistics of one half of the samples (0: fit, 1: score), one object per half,
        so its own cache is shared by every candidate that uses it."""
        assert self.halves is not None
        return self.cache.get(("half", index), lambda: LayerStats(self.view, hessian=self.halves[index]))

    def forget(self) -> None:
        """Drop the cached work of this layer (and of its halves)."""
        self.cache.clear()

    def release_fit(self) -> None:
        """Drop what only fitting reads (H, its halves and their cached work),
        keeping the mean (bias correction), the vector count and noise_error:
        the planner's last use of an uncentered layer whose methods fit on
        its centered twin."""
        if self.hessian is not None:
            self.noise_error()
        self.hessian = None
        self.halves = None
        self.halves_mean = None
        self.forget()

    def centered(self) -> "LayerStats":
        """Statistics of the error that remains after bias correction: the
        mean output shift ΔW·E[x] is folded into the bias, so H becomes the
        covariance E[x xᵀ] − E[x]E[x]ᵀ (subtracted in float64). Made once,
        so every method set fits on the same twin."""
        if self._centered is not None:
            return self._centered
        if self.hessian is None or self.mean is None:
            return self

        def cov(h: np.ndarray, mu: np.ndarray) -> np.ndarray:
            return h - np.einsum("gi,gj->gij", mu, mu)

        halves = None
        if self.halves is not None and self.halves_mean is not None:
            halves = (cov(self.halves[0], self.halves_mean[0]), cov(self.halves[1], self.halves_mean[1]))
        self._centered = LayerStats(self.view, hessian=cov(self.hessian, self.mean), vectors=self.vectors,
                                    halves=halves, mean=np.zeros_like(self.mean))
        return self._centered

    def weighted_error(self, delta: np.ndarray, consume: bool = False) -> float:
        """tr(ΔW·H·ΔWᵀ) summed over groups (or the row-weighted squared error).

        With `consume`, `delta` is the caller's to give up: a float64 delta is
        squared in place instead of in a copy (on a 30522×384 token table
        that copy was 94 MB at the planner's peak)."""
        m = self.view.to_matrix(delta)
        if self.hessian is not None:
            return hessian_error(m, self.hessian)
        own = consume and m.dtype == np.float64 and np.shares_memory(m, delta)
        m = m if own else m.astype(np.float64)
        np.square(m, out=m)
        if self.diagonal is not None:
            return float(np.einsum("grc,gc->", m, self.diagonal))
        assert self.row_weight is not None
        m[0] *= self.row_weight[:, None]
        return float(m[0].sum())

    def noise_error(self) -> float:
        """E[weighted_error] of iid unit-variance noise: rows · tr(H) (or Σ row
        weights · cols); kept from its first call (from the float64 moments,
        before H is stored in float32 or released)."""
        if self._noise is None:
            self._noise = self._noise_error()
        return self._noise

    def _noise_error(self) -> float:
        v = self.view
        if self.hessian is not None:
            return float(v.rows * np.trace(self.hessian, axis1=1, axis2=2, dtype=np.float64).sum())
        if self.diagonal is not None:
            return float(v.rows * self.diagonal.sum())
        assert self.row_weight is not None
        return float(self.row_weight.sum() * v.cols)


class LayerCache:
    """Values computed once per layer and shared by its candidates; safe to use from several threads."""

    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._values:
                return self._values[key]
        value = compute()  # outside the lock: a factorization may take seconds
        with self._lock:
            return self._values.setdefault(key, value)

    def clear(self) -> None:
        with self._lock:
            for value in self._values.values():
                if isinstance(value, LayerStats):
                    value.forget()
            self._values.clear()


MAX_UNSEEN_MASS = 0.5


def smoothed_row_weight(counts: np.ndarray) -> np.ndarray:
    """Usage probability of each table row from its lookup counts, with the
    Good–Turing estimate of the mass of rows the samples never looked up:
    P(unseen) ≈ (rows seen exactly once) / lookups, spread evenly over the
    unseen rows. A finite calibration set sees a few percent of a token
    table; giving the rest zero weight would let the allocator wreck rows
    that real inputs do use (on MiniLM, 128 calibration sentences see 779 of
    30522 rows, and those cover 86% of the evaluation text's tokens).
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    unseen = counts == 0
    if total <= 0:
        return np.full(counts.shape, 1.0 / max(counts.size, 1))
    if not unseen.any():
        return counts / total
    singletons = int(np.count_nonzero(counts == 1))
    p_unseen = min(max(singletons, 1) / total, MAX_UNSEEN_MASS)
    return np.where(unseen, p_unseen / unseen.sum(), (1.0 - p_unseen) * counts / total)


def layer_view(w: WeightRef) -> LayerView | None:
    """The matrix view of a weight in its consumer (from the op table), or
    None if it has none we model."""
    node = w.consumer_node
    if node is None or w.transposed:
        return None
    layer = layer_of(node, w.consumer_input, w.shape)
    if layer is None:
        return None
    return LayerView(layer.kind, layer.groups, layer.rows, layer.cols, w.shape,
                     node.input[layer.activation_input], node, layer.trans_a)
