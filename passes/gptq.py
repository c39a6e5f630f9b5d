"""Output-aware rounding (GPTQ / OBQ): quantize a layer so that its *output*
error on the calibration statistics is small, not its weight error.

For each group's matrix W (rows × d) and input second moment H = E[x xᵀ],
the columns are quantized one at a time (largest diag(H) first, "act
order"); the error each column leaves is spread over the not yet quantized
columns along the rows of the inverse Hessian's Cholesky factor, which is the
optimal (OBS) compensation of that error. Columns are processed in blocks so
the compensation of later columns is one matrix product per block.

The quantizer is the one the `affine` stage decodes: q = sign(w)·round(|w|/s)
with a dead zone, dequantized as (q − sign(q)·θ)·s with a per-row step s.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from onnx_l2c.codec import native
from onnx_l2c.measure.layers import hessian_error

DAMPING = 0.01  # fraction of mean(diag H) added to the diagonal (GPTQ's default)
BLOCK = 128
QMAX = 32767  # the entropy stage codes at most 65536 distinct symbols


FACTOR_BUDGET = 256 << 20  # bytes the factorizations of the planner's threads may hold at once


class MemoryGate:
    """Admits work by its memory estimate, first come first served: a piece
    starts when what is in flight plus its own fits the budget, or when
    nothing else is in flight (so a piece over the budget runs alone). The
    planner's threads factorize different layers at once; a d×d inverse at
    d = 2880 (PP-OCRv4 rec) holds about 400 MB, and two of them, or one with
    a neighbour's, set the planner's peak. Which thread waits changes no
    result, only when it is computed."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._in_flight = 0
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            self._cond.wait_for(lambda: self._queue[0] is ticket
                                and (self._in_flight == 0 or self._in_flight + nbytes <= self.budget))
            self._queue.popleft()
            self._in_flight += nbytes
            self._cond.notify_all()  # the next in line may fit too
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= nbytes
                self._cond.notify_all()


FACTORIZATIONS = MemoryGate(FACTOR_BUDGET)


CHUNK = 1 << 20  # elements per slice of the elementwise passes over a large tensor


def leading_slices(shape: tuple[int, ...], chunk: int = CHUNK) -> list[tuple[slice, ...]]:
    """Index tuples that cut an array of `shape` into pieces of about `chunk`
    elements along its first axis longer than 1 (the axes before it have one
    element), so the pieces, in order, are the array in C order."""
    axis = next((a for a, n in enumerate(shape) if n > 1), None)
    if axis is None:
        return [tuple(slice(None) for _ in shape)]
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    step = max(1, chunk // max(inner, 1))
    head = (slice(None),) * axis
    return [head + (slice(a, a + step),) for a in range(0, shape[axis], step)]


def quantize_nearest(w: np.ndarray, step: np.ndarray, dead_zone: float) -> np.ndarray:
    """Round-to-nearest with a dead zone: |w|/s < 0.5 + dead_zone → 0.

    Large tensors go in slices (the same values: each element is computed
    alone), so the float64 temporaries stay a few MB instead of several
    copies of the tensor."""
    step = np.asarray(step)
    if w.size <= CHUNK or np.broadcast_shapes(w.shape, step.shape) != w.shape:
        return _quantize_nearest(w, step, dead_zone)
    steps = np.broadcast_to(step, w.shape)
    q = np.empty(w.shape, np.int32)
    for index in leading_slices(w.shape):
        q[index] = _quantize_nearest(w[index], steps[index], dead_zone)
    return q


def _quantize_nearest(w: np.ndarray, step: np.ndarray, dead_zone: float) -> np.ndarray:
    a = np.abs(w) / step
    q = np.where(a < 0.5 + dead_zone, 0.0, np.floor(a + 0.5))
    return (np.sign(w) * np.minimum(q, QMAX)).astype(np.int32)


def dequantize(q: np.ndarray, step: np.ndarray, theta: float) -> np.ndarray:
    qf = q.astype(np.float64)
    return (qf - np.sign(qf) * theta) * step


def inverse_cholesky(h: np.ndarray, damping: float = DAMPING, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU) per group, with dead inputs
    (zero diagonal) marked. h: (groups, d, d); with `overwrite` a float64 h
    is the caller's to give up and is damped in place.

    Each d×d intermediate is dropped as soon as the next exists: at d = 2880
    (a PP-OCRv4 rec conv) one is 66 MB."""
    h = np.asarray(h, dtype=np.float64) if overwrite else np.array(h, dtype=np.float64)
    g, d, _ = h.shape
    diag = np.einsum("gii->gi", h)
    dead = diag <= 0
    idx = np.arange(d)
    for k in range(g):
        if dead[k].any():
            h[k][dead[k], :] = 0.0
            h[k][:, dead[k]] = 0.0
            h[k][idx[dead[k]], idx[dead[k]]] = 1.0
    mean_diag = np.maximum(np.einsum("gii->gi", h).mean(axis=1), 1e-12)
    h[:, idx, idx] += damping * mean_diag[:, None]
    # Each group's U is made only once its intermediates are gone (not
    # allocated up front): one d×d less at the peak, inside numpy's inverse.
    factors: list[np.ndarray] = []
    for k in range(g):
        damp = 0.0
        for _ in range(6):  # raise damping until H is numerically positive definite
            try:
                damped = h[k] + damp * np.eye(d) if damp else h[k]
                lower = np.linalg.cholesky(damped)
                del damped
                inv = np.linalg.inv(lower)
                del lower
                hinv = inv.T @ inv
                del inv
                upper_t = np.linalg.cholesky(hinv)
                del hinv
                factors.append(np.ascontiguousarray(upper_t.T))
                del upper_t
                break
            except np.linalg.LinAlgError:
                damp = max(damp * 10.0, mean_diag[k] * 0.1)
        else:
            factors.append(np.diag(1.0 / np.sqrt(np.diag(h[k]))))
    u = factors[0][None] if g == 1 else np.stack(factors)
    return u, dead


def gptq(w: np.ndarray, hessian: np.ndarray, step: np.ndarray, theta: float, dead_zone: float,
         prepared: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, damping: float = DAMPING,
         forced: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Quantize w (groups, rows, d) with per-row steps (groups, rows) → int32 symbols.

    `prepared` = prepare(hessian) may be passed to reuse the factorization
    across candidates of the same layer. `forced` = (mask, symbols), both
    shaped like w: the masked entries take the given symbols (e.g. unified or
    pruned micro-blocks) and the error they leave is compensated by the later
    columns like any other (as SparseGPT does for a pruning mask).
    """
    perm, u, dead = prepared if prepared is not None else prepare(hessian, damping)
    g, r, d = w.shape
    wp = np.ascontiguousarray(np.take_along_axis(w.astype(np.float64), perm[:, None, :], axis=2))
    deadp = np.take_along_axis(dead, perm, axis=1)
    wp[np.broadcast_to(deadp[:, None, :], wp.shape)] = 0.0  # inputs that are always zero
    forced_p = None
    if forced is not None:
        fmask = np.take_along_axis(forced[0].astype(bool), perm[:, None, :], axis=2)
        fsym = np.take_along_axis(forced[1].astype(np.int32), perm[:, None, :], axis=2)
        forced_p = (np.ascontiguousarray(fmask).view(np.uint8), np.ascontiguousarray(fsym))
    s = np.ascontiguousarray(step, dtype=np.float64)
    u = np.ascontiguousarray(u, dtype=np.float64)
    q = np.zeros((g, r, d), dtype=np.int32)
    for start in range(0, d, BLOCK):
        end = min(start + BLOCK, d)
        err_block = np.empty((g, r, end - start))
        # the block's columns one at a time, natively (the sequential part)
        native.gptq_block(wp, u, s, theta, dead_zone, QMAX, start, end, q, err_block, forced_p)
        if end < d:
            wp[:, :, end:] -= np.matmul(err_block, u[:, start:end, end:])
    inverse = np.argsort(perm, axis=1)
    return np.take_along_axis(q, inverse[:, None, :], axis=2)


def prepare(hessian: np.ndarray, damping: float = DAMPING) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Act-order permutation, inverse-Hessian Cholesky factor (permuted) and dead inputs."""
    h = np.asarray(hessian)  # float64 or the statistics' float32: permuted first, then factorized in float64
    g, d, _ = h.shape
    diag = np.einsum("gii->gi", h)
    perm = np.argsort(-diag, axis=1, kind="stable")
    # the permuted H and U, plus up to four d×d intermediates (numpy's inverse)
    with FACTORIZATIONS.hold(8 * d * d * (2 * g + 4)):
        hp = np.empty(h.shape, dtype=np.float64)
        for k in range(g):
            hp[k] = h[k][np.ix_(perm[k], perm[k])]
        u, dead_p = inverse_cholesky(hp, damping, overwrite=True)
        del hp
    dead = np.empty_like(dead_p)
    np.put_along_axis(dead, perm, dead_p, axis=1)
    return perm, u, dead


DAMPING_CHOICES = (0.01, 0.1, 1.0)


Factorization = tuple[np.ndarray, np.ndarray, np.ndarray]


def choose_damping(w: np.ndarray, halves: tuple[np.ndarray, np.ndarray], step: np.ndarray,
                   theta: float, dead_zone: float,
                   keep: Callable[[float, Factorization], None] | None = None) -> float | None:
    """Damping that generalizes: fit on the first half of the calibration
    samples, measure the output error on the second. None when plain
    round-to-nearest does better on the held-out half (too few or too
    homogeneous samples for this layer's d×d statistics). `keep(damping,
    factorization)` receives the chosen damping's factorization of the
    first half, which the held-out candidates reuse."""
    fit, check = halves
    s = step[:, :, None]
    best: float | None = None
    best_prepared: Factorization | None = None
    best_err = hessian_error(dequantize(quantize_nearest(w, s, dead_zone), s, theta) - w, check)
    for damp in DAMPING_CHOICES:
        factorization = prepare(fit, damp)
        q = gptq(w, fit, step, theta, dead_zone, prepared=factorization)
        err = hessian_error(dequantize(q, s, theta) - w, check)
        if err < 0.97 * best_err:
            best, best_err, best_prepared = damp, err, factorization
        del factorization
    if keep is not None and best is not None and best_prepared is not None:
        keep(best, best_prepared)
    return best
