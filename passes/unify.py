"""Micro-structured unification: each small block of a weight is kept,
unified (one shared magnitude, each weight its own sign) or pruned.

Blocks are 1×N runs along a layer's input channels, or a Conv's whole
spatial kernel (`onnx_l2c.config.BlockShape`). With the layer's calibration
statistics H = E[x xᵀ], a block's change ΔW costs ΔWᵀ·H_bb·ΔW of output
error (H_bb: the block's rows and columns of H).

1. **Selection.** Each block takes the mode of least D + λ·R: D its output
   error under the mode (kept weights rounded to the step grid; a unified
   block at its H-optimal magnitude for the weights' signs; a pruned block
   zero), R its coded bits under the current symbol statistics (mode,
   symbols, or signs + magnitude), re-estimated a few times. λ is the
   exchange rate of the kept weights' quantizer, (ln 2 / 6)·s²·h̄ per bit
   for step s (dD/dR of a uniform quantizer at high rate), times a strength.
2. **ADMM refinement** of the layer-local objective f(W) = tr(ΔW·H·ΔWᵀ)
   under the chosen block structure: W-step (least squares with the
   proximal term ρ/2‖W − Z + U‖², closed form through H's eigenvectors),
   Z-step (projection onto the structure: unified blocks to ±mean|·|,
   pruned ones to 0), dual update U += W − Z, with ρ growing each round.
3. **Hard projection and refit**: the structured blocks take the projection,
   the kept weights are refitted by least squares on H with them held.
4. **Quantization** on the per-channel step grid: unified magnitudes
   rounded, kept weights rounded to nearest or output-aware (GPTQ, with the
   structured entries forced so their error is compensated by later columns).

Stored with the `expand` stage (block modes, magnitudes, signs and kept
symbols as four entropy-coded streams) before the usual `affine` stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from onnx_l2c.codec import (FLOAT, AffineStage, BlockMode, CastStage, ExpandStage, Recipe, expand_blocks,
                            expand_stage)
from onnx_l2c.config import BlockShape
from onnx_l2c.errors import UnsupportedError
from onnx_l2c.measure.layers import LayerStats, LayerView

from . import gptq, steps
from .base import (Knob, Method, Option, Params, Quantized, TensorContext, TensorInput, channel_view, coded,
                   compensate, split_halves, sweep)

SELECTION_ROUNDS = 3  # re-estimates of the symbol statistics during selection
ADMM_ROUNDS = 12
RHO_START = 0.05  # ρ, as a fraction of mean diag H, in the first ADMM round
RHO_GROWTH = 1.5
MAX_BLOCK_FORM = 1 << 25  # blocks × size²: above it the block metric keeps only diag H
DEFAULT_BLOCKS = (BlockShape.B1X4, BlockShape.B1X8, BlockShape.KERNEL)
MAX_KERNEL = 256  # the expand stage's largest block
# The allocator's step grid (α = 2^(k/2)·rms): from ~4 down to ~0.3 bits per
# weight, where unified and pruned blocks pay off.
ALPHA_EXPONENTS = tuple(range(-3, 5))
# Finer steps, for when unification is the only quantizer asked for (e.g.
# `--methods unify`): there every block is kept, so one block shape covers them.
FINE_ALPHA_EXPONENTS = (-16, -14, -12, -10, -8, -7, -6, -5, -4)
MIN_STRUCTURED = 0.02  # below this share of unified or pruned blocks ADMM is skipped (the refit suffices)


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


@dataclass(frozen=True)
class UnifyParams(Params):
    """One unification candidate of a tensor."""

    method: ClassVar[str] = "unify"

    alpha: float  # step = alpha · rms of each output channel (of the tensor without a channel axis)
    block: BlockShape
    strength: float = 1.0  # multiplies λ: larger unifies and prunes more blocks
    damping: float | None = None  # GPTQ damping for the kept weights; None = round to nearest
    admm: bool = True

    @property
    def family(self) -> tuple:
        return ("unify", self.block, self.strength, self.damping)

    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("alpha", steps=7),)

    def describe(self) -> dict[str, float | str | bool | None]:
        return {"alpha": self.alpha, "block": self.block.value, "strength": self.strength,
                "output_aware": self.damping is not None, "damping": self.damping}


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
                h = stats.hessian
                diag = view.from_matrix(np.broadcast_to(np.einsum("gii->gi", h)[:, None, :], m_shape)).reshape(-1)
                pos = np.empty(numel, dtype=np.int64)  # matrix position of every flat element
                pos[view.to_matrix(np.arange(numel).reshape(shape)).reshape(-1)] = np.arange(numel)
                g, rest = np.divmod(pos[idx], view.rows * view.cols)
                r, c = np.divmod(rest, view.cols)
                one_row = ((g == g[:, :1]) & (r == r[:, :1])) | ~self.valid
                if one_row.all() and members.size * members.shape[1] <= MAX_BLOCK_FORM:
                    gb = g[:, 0]
                    self.full = h[gb[:, None, None], c[:, :, None], c[:, None, :]] * (
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


def _eigh(stats: LayerStats, hessian: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """H's eigen-decomposition, computed once per statistics (candidates share it)."""
    def decompose() -> tuple[np.ndarray, np.ndarray]:
        lam, vec = np.linalg.eigh(hessian)
        return np.maximum(lam, 0.0), vec

    return stats.cache.get(("eigh",), decompose)


def admm(w0: np.ndarray, z: np.ndarray, block_of: np.ndarray, modes: np.ndarray, sizes: np.ndarray,
         stats: LayerStats, view: LayerView, rounds: int = ADMM_ROUNDS) -> np.ndarray:
    """ADMM on tr((W − W0)·H·(W − W0)ᵀ) subject to the block structure (module
    doc, step 2), from the structured start z. Returns the last W (flat)."""
    shape = view.shape
    hessian = stats.hessian
    assert hessian is not None
    lam, vec = _eigh(stats, hessian)  # H = Q Λ Qᵀ per group: every W-step is two products
    m0 = view.to_matrix(w0.reshape(shape))
    b = 2.0 * np.matmul(m0, hessian)  # 2 W0 H
    rho = RHO_START * max(float(np.einsum("gii->", hessian)) / (hessian.shape[0] * hessian.shape[1]), 1e-30)
    u = np.zeros_like(w0)
    w = w0.copy()
    for _ in range(rounds):
        rhs = b + rho * view.to_matrix((z - u).reshape(shape))
        # W (2H + ρI) = rhs  →  W = rhs · Q diag(1 / (2λ + ρ)) Qᵀ
        w = view.from_matrix(np.matmul(np.matmul(rhs, vec) / (2.0 * lam + rho)[:, None, :],
                                       np.swapaxes(vec, 1, 2))).reshape(-1)
        z = project(w + u, block_of, modes, sizes)
        u = u + w - z
        rho *= RHO_GROWTH
    return w


@dataclass
class Unified:
    recipe: Recipe
    modes: np.ndarray  # per block
    symbols: np.ndarray  # int32, flat


def unify_tensor(tensor: TensorInput, params: UnifyParams, stats: LayerStats | None, view: LayerView | None,
                 prepared: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Unified:
    """Select, refine, refit and quantize one tensor (module doc)."""
    layout = block_layout(tensor, view, params.block)
    if layout is None:
        raise UnsupportedError(f"tensor {tensor.name!r} (shape {list(tensor.shape)}): block {params.block.value!r} does "
                       f"not fit it; valid: {', '.join(b.value for b in BlockShape)} along its input channels")
    values = tensor.values.astype(np.float64)
    flat = values.reshape(-1)
    v = channel_view(values, tensor.channel_axis)
    step = steps.channel_steps(v, steps.QuantParams(params.alpha, tensor.channel_axis is not None, 0.0))
    elem_step = np.broadcast_to(step.astype(np.float64)[None, :, None], v.shape).reshape(-1)
    members, block_of = layout.members()
    valid = members >= 0
    idx = np.where(valid, members, 0)
    block_step = elem_step[idx[:, 0]]
    if not np.all(np.where(valid, elem_step[idx], block_step[:, None]) == block_step[:, None]):
        raise UnsupportedError(f"tensor {tensor.name!r}: a {params.block.value} block spans output channels")
    metric = BlockMetric(members, stats, view, tensor.shape)
    w_blocks = np.where(valid, flat[idx], 0.0)
    modes = select_modes(w_blocks, block_step, metric, params.strength)
    sizes = valid.sum(axis=1)

    structured = project(flat, block_of, modes, sizes)
    full = stats is not None and stats.hessian is not None and view is not None
    if full and params.admm and (modes != BlockMode.KEEP).mean() >= MIN_STRUCTURED:
        w = admm(flat, structured, block_of, modes, sizes, stats, view)
        structured = project(w, block_of, modes, sizes)
    free = modes[block_of] == BlockMode.KEEP
    if full and free.any() and (~free).any():
        # least-squares refit of the kept weights with the structured ones held
        # (from where ADMM left them, or from the original weights)
        structured = compensate(values, structured, free, stats, view)

    # quantize on the per-channel grid
    a = np.abs(structured) / elem_step
    q = np.sign(structured) * np.minimum(np.floor(a + 0.5), gptq.QMAX)
    mags = np.bincount(block_of, weights=a, minlength=modes.size) / np.maximum(sizes, 1)
    theta = steps.shrink(v, np.where(free, q, 0).reshape(v.shape), step) if free.any() else 0.0
    level = np.clip(np.floor(mags + theta + 0.5), 1, gptq.QMAX)
    elem_mode = modes[block_of]
    sign = np.where(structured < 0, -1, 1)
    forced = np.where(elem_mode == BlockMode.UNIFY, sign * level[block_of], 0).astype(np.int32)
    if params.damping is not None and full:
        assert view is not None and stats is not None and stats.hessian is not None
        m = view.to_matrix(structured.reshape(tensor.shape))
        rows = step.astype(np.float64)[view.row_channels(tensor.channel_axis)].reshape(m.shape[:2])
        fmask = view.to_matrix((~free).reshape(tensor.shape))
        fsym = view.to_matrix(forced.reshape(tensor.shape))
        qm = gptq.gptq(m, stats.hessian, rows, theta, 0.0, prepared=prepared, damping=params.damping,
                           forced=(fmask, fsym))
        q = view.from_matrix(qm).reshape(-1)
    q = np.where(free, q, forced).astype(np.int32)
    # a kept block that rounds to all zeros is a pruned block (same values, fewer bits)
    nonzero = np.bincount(block_of, weights=(q != 0), minlength=modes.size)
    modes = np.where((modes == BlockMode.KEEP) & (nonzero == 0), BlockMode.PRUNE, modes).astype(np.uint8)
    outer, channels, inner = v.shape
    stages = [expand_stage(q, layout.outer, layout.n, layout.inner, layout.size, modes),
              AffineStage(outer, channels, inner, theta, step)]
    if tensor.dtype != FLOAT:
        stages.append(CastStage(tensor.dtype))
    return Unified(Recipe(tensor.dtype, tensor.shape, stages), modes, q)


def quantize(tensor: TensorInput, params: UnifyParams, stats: LayerStats | None, view: LayerView | None,
             held_out: bool = False) -> Quantized:
    """One candidate: payload and output error. held_out=True fits on the first
    half of the calibration samples and scores on the second (as steps.quantize)."""
    fit, score = split_halves(stats) if held_out else (stats, stats)
    prepared = None
    if params.damping is not None and stats is not None and stats.hessian is not None:
        prepared = steps.prepared(stats, params.damping, None if fit is stats else 0)
    result = unify_tensor(tensor, params, fit, view, prepared)
    q = coded(tensor, result.recipe, score)
    return Quantized(q.recipe, q.payload, q.error, float((result.symbols == 0).mean()))


def block_summary(recipes: list[Recipe]) -> dict[str, float | int]:
    """Blocks and weights per mode over the tensors coded by unification."""
    counts = np.zeros(3, dtype=np.int64)
    weights = np.zeros(3, dtype=np.int64)
    for recipe in recipes:
        stage = recipe.stages[0]
        assert isinstance(stage, ExpandStage)
        modes = np.asarray(stage.modes, dtype=np.int64)
        counts += np.bincount(modes, minlength=3)
        weights[BlockMode.UNIFY] += np.asarray(stage.signs).size
        weights[BlockMode.KEEP] += np.asarray(stage.kept).size
        weights[BlockMode.PRUNE] += recipe.numel - np.asarray(stage.signs).size - np.asarray(stage.kept).size
    total = max(int(weights.sum()), 1)
    return {"tensors": len(recipes), "blocks": int(counts.sum()),
            **{f"{m.name.lower()}_blocks": int(counts[m]) for m in BlockMode},
            **{f"{m.name.lower()}_weight_share": float(weights[m] / total) for m in BlockMode}}


class Unification(Method):
    """Blocks kept, unified or pruned (module doc), per block shape on a step grid."""

    name = "unify"
    order = 60
    summary_key = "unify"

    def candidates(self, tensor: TensorInput, ctx: TensorContext, lossless_bytes: int) -> list[Option]:
        """Per block shape that fits the tensor, a step grid (the selection's
        exchange rate λ follows the step); where no step-grid quantizer covers
        the high rates (only unification asked for), also the finer steps, once."""
        blocks = (ctx.options.block,) if ctx.options.block is not None else DEFAULT_BLOCKS
        fine = not ctx.step_families
        out: list[Option] = []
        for block in blocks:
            if block_layout(tensor, ctx.view, block) is None:
                continue

            def candidate(alpha: float) -> tuple[UnifyParams, Quantized]:
                params = UnifyParams(alpha, block, damping=ctx.damping)
                return params, quantize(tensor, params, ctx.stats, ctx.view, held_out=True)

            exponents = ALPHA_EXPONENTS
            if fine:
                exponents, fine = FINE_ALPHA_EXPONENTS + exponents, False
            out += sweep(exponents, tensor.numel, lossless_bytes, candidate)
        return out

    def quantize(self, tensor: TensorInput, params: UnifyParams, ctx: TensorContext) -> Quantized:
        return quantize(tensor, params, ctx.stats, ctx.view, held_out=True)

    def encode(self, tensor: TensorInput, params: UnifyParams, ctx: TensorContext) -> Recipe:
        if not np.isfinite(tensor.values).all():
            raise UnsupportedError(f"tensor {tensor.name!r}: non-finite values cannot be unified")
        return quantize(tensor, params, ctx.stats, ctx.view).recipe

    def summary(self, recipes: list[Recipe]) -> dict[str, Any] | None:
        return block_summary(recipes) if recipes else None
