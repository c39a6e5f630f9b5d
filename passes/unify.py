"""Micro-structured unification: each small block of a weight is kept,
unified (one shared magnitude, each weight its own sign) or pruned.

Blocks are 1×N runs along a layer's input channels, or a Conv's whole
spatial kernel (`BlockShape`; their geometry and the mode selection are in
passes/blocks.py). With the layer's calibration statistics H = E[x xᵀ], a
block's change ΔW costs ΔWᵀ·H_bb·ΔW of output error (H_bb: the block's
rows and columns of H).

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

from onnx_l2c.codec import FLOAT, AffineStage, BlockMode, CastStage, ExpandStage, Recipe, expand_stage
from onnx_l2c.config import OptionSpec
from onnx_l2c.errors import UnsupportedError
from onnx_l2c.measure.layers import LayerStats, LayerView

from . import gptq, steps
from .blocks import BlockMetric, BlockShape, block_layout, project, select_modes
from .base import (Knob, Method, Option, Params, Quantized, TensorContext, TensorInput, channel_view, coded,
                   compensate, split_halves, sweep)

ADMM_ROUNDS = 12
RHO_START = 0.05  # ρ, as a fraction of mean diag H, in the first ADMM round
RHO_GROWTH = 1.5
DEFAULT_BLOCKS = (BlockShape.B1X4, BlockShape.B1X8, BlockShape.KERNEL)
# The allocator's step grid (α = 2^(k/2)·rms): from ~4 down to ~0.3 bits per
# weight, where unified and pruned blocks pay off.
ALPHA_EXPONENTS = tuple(range(-3, 5))
# Finer steps, for when unification is the only quantizer asked for (e.g.
# `--methods unify`): there every block is kept, so one block shape covers them.
FINE_ALPHA_EXPONENTS = (-16, -14, -12, -10, -8, -7, -6, -5, -4)
MIN_STRUCTURED = 0.02  # below this share of unified or pruned blocks ADMM is skipped (the refit suffices)


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


def _eigh(stats: LayerStats, hessian: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """H's eigen-decomposition, computed once per statistics (candidates share it)."""
    def decompose() -> tuple[np.ndarray, np.ndarray]:
        lam, vec = np.linalg.eigh(np.asarray(hessian, dtype=np.float64))
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
    rho = RHO_START * max(float(np.einsum("gii->", hessian, dtype=np.float64)) / (hessian.shape[0] * hessian.shape[1]),
                          1e-30)
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
    options = (
        OptionSpec("block", BlockShape, None,
                   "unification: micro-block shape, 1xN along input channels or kernel (a Conv's spatial kernel)",
                   default_text="the allocator tries 1x4, 1x8 and, for spatial Conv weights, kernel"),
    )

    def candidates(self, tensor: TensorInput, ctx: TensorContext, lossless_bytes: int) -> list[Option]:
        """Per block shape that fits the tensor, a step grid (the selection's
        exchange rate λ follows the step); where no step-grid quantizer covers
        the high rates (only unification asked for), also the finer steps, once."""
        block = ctx.options.option("block")
        blocks = (block,) if block is not None else DEFAULT_BLOCKS
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

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        # where unification was chosen: weight shares per block mode
        return {"unify_shares": {k.removesuffix("_weight_share"): round(v, 4)
                                 for k, v in summary.items() if k.endswith("_weight_share")}}
