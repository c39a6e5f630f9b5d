"""Step-grid quantizers, the machinery of mixed precision, the uniform baseline
and output-aware rounding: a family of quantizers per tensor, each with its
real coded size and its layer-local error, for the global allocator
(`onnx_l2c.plan.allocate`) to choose from (the FITCompress / L2C formulation).

A candidate is a step size (relative to the tensor's or each channel's rms,
on a geometric grid: the "bit depth" of an entropy-coded quantizer), a dead
zone (zeroes the weights within it: magnitude pruning at that threshold) and
the rounding: nearest, or output-aware (GPTQ, passes/gptq.py) when the
layer has calibration statistics and that generalizes to held-out samples
(passes/gptq.py).
Symbols go through the `entropy` + `affine` stages; sizes are those of the
serialized payloads, not estimates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from onnx_l2c.codec import (FLOAT, AffineStage, CastStage, EntropyStage, ExponentStage, Recipe,
                            exponent_multipliers, reconstruct, serialize)
from onnx_l2c.errors import UnsupportedError
from onnx_l2c.measure.layers import LayerStats

from . import gptq
from .base import (Knob, Method, Option, Params, Quantized, TensorContext, TensorInput, channel_view,
                   layer_error, sweep, weight_delta)

MAX_THETA = 0.45
DEAD_ZONES = (0.0, 0.3)
# α = 2^(k/2) · rms: from ~11 to ~1 bits per weight; whole-octave steps at the
# fine end (rarely chosen, and the allocator refines the chosen step anyway).
ALPHA_EXPONENTS = (-18, -16, -14, -12, -10, -8) + tuple(range(-7, 4))
MAX_ROW_EXPONENT = 8  # finest row step: the table's step / 2^8


@dataclass(frozen=True)
class QuantParams(Params):
    """One quantizer of a tensor."""

    method: ClassVar[str] = "mixed"

    alpha: float  # step = alpha · rms (of the tensor, or of each channel)
    per_channel: bool
    dead_zone: float
    damping: float | None = None  # GPTQ damping; None = round to nearest
    # Steps per input column instead of per output channel (per_channel=True):
    # for tables whose dimensions differ in scale, e.g. embeddings' outlier dims.
    per_column: bool = False
    # With per-column steps on a table: each row's step is refined by 2^-e,
    # e from how often the calibration samples look the row up (`row_exponents`).
    row_exponents: bool = False

    @property
    def family(self) -> tuple:
        return ("quantize", self.per_channel, self.dead_zone, self.damping, self.per_column, self.row_exponents)

    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("alpha", steps=7),)

    def step_axis(self, tensor: TensorInput) -> int | None:
        return len(tensor.shape) - 1 if self.per_column else tensor.channel_axis

    def describe(self) -> dict[str, float | bool | None]:
        return {"alpha": self.alpha, "per_channel": self.per_channel, "per_column": self.per_column,
                "row_exponents": self.row_exponents, "dead_zone": self.dead_zone,
                "output_aware": self.damping is not None, "damping": self.damping}


def channel_steps(v: np.ndarray, params: QuantParams) -> np.ndarray:
    """Per-channel steps (float32, > 0) for the (outer, C, inner) view v."""
    squares = v.astype(np.float64)
    np.square(squares, out=squares)  # one float64 copy for both means
    total_rms = float(np.sqrt(squares.mean())) or 1.0
    if params.per_channel:
        rms = np.sqrt(squares.mean(axis=(0, 2)))
        rms = np.where(rms > 0, rms, total_rms)
    else:
        rms = np.full(v.shape[1], total_rms)
    step = (params.alpha * rms).astype(np.float32)
    return np.maximum(step, np.float32(np.finfo(np.float32).tiny))


def row_exponents(row_weight: np.ndarray) -> np.ndarray:
    """Per-row step exponents e (step / 2^e) of a table from its rows' usage
    probabilities p: the high-rate optimum of Σ p_r·step_r² at a fixed total
    rate is step_r ∝ p_r^(-1/2), i.e. e_r = ½·log2(p_r / p_min), rounded and
    capped. Rows looked up as rarely as the rarest keep the table's step."""
    p = np.asarray(row_weight, dtype=np.float64)
    floor = p[p > 0].min() if (p > 0).any() else 1.0
    e = np.round(0.5 * np.log2(np.maximum(p, floor) / floor))
    return np.clip(e, 0, MAX_ROW_EXPONENT).astype(np.int32)


def shrink(v: np.ndarray, q: np.ndarray, step: np.ndarray) -> float:
    """MSE-optimal shrink of nonzero levels toward zero (as in passes/preset.py).

    `step` is per channel (C,) or broadcastable to v's (outer, C, inner) shape."""
    s3 = step[None, :, None] if step.ndim == 1 else step
    step_of = np.broadcast_to(s3, q.shape)
    # Σ over the nonzero levels of s²·(|q| − |v|/s) and of s², as whole-slice
    # sums (a zero level adds 0 to each: |q| = 0 and the mask is 0), slice by
    # slice so the float64 temporaries stay a few MB.
    num = den = 0.0
    for index in gptq.leading_slices(q.shape):
        levels = np.abs(q[index]).astype(np.float64)
        nonzero = levels != 0
        s = step_of[index].astype(np.float64)
        s2 = s * s
        num += float((s2 * levels).sum()) - float((s * np.abs(v[index]) * nonzero).sum())
        den += float((s2 * nonzero).sum())
    if den <= 0:
        return 0.0
    return float(np.float32(np.clip(num / den, 0.0, MAX_THETA)))


def quantize(tensor: TensorInput, params: QuantParams, stats: LayerStats | None, held_out: bool = False) -> Quantized:
    """Symbols, payload, exact reconstruction error of one candidate.

    held_out=True scores output-aware rounding honestly: it is fitted on the
    first half of the calibration samples and its error measured on the
    second (fitting and scoring on the same samples flatters it several-fold
    on layers with few input vectors per dimension). The final encode fits on
    all samples.
    """
    # float32: every use below widens it exactly (the same values as a
    # float64 copy, which on a 30522×384 token table was 94 MB)
    values = tensor.values
    v = channel_view(values, params.step_axis(tensor))
    step = channel_steps(v, params)
    s3 = step.astype(np.float64)[None, :, None]
    exponents = None
    if params.row_exponents:
        if not params.per_column or stats is None or stats.row_weight is None:
            raise UnsupportedError(f"tensor {tensor.name!r}: row exponents need per-column steps and the table's "
                           f"row usage from calibration data")
        exponents = row_exponents(stats.row_weight)
        s3 = s3 * exponent_multipliers(exponents)[:, None, None]  # v is (rows, cols, 1)
    q = gptq.quantize_nearest(v, s3, params.dead_zone)
    theta = shrink(v, q, s3)
    score_stats = stats
    if params.per_column and params.damping is not None:
        raise UnsupportedError(f"tensor {tensor.name!r}: per-column steps use round-to-nearest")
    if params.damping is not None and stats is not None and stats.hessian is not None:
        view = stats.view
        m = view.to_matrix(values)
        rows = step.astype(np.float64)[view.row_channels(tensor.channel_axis)].reshape(m.shape[:2])
        split = held_out and stats.halves is not None
        fit = 0 if split else None
        qm = gptq.gptq(m, stats.halves[0] if split else stats.hessian, rows, theta, params.dead_zone,
                           prepared=prepared(stats, params.damping, fit), damping=params.damping)
        q = view.from_matrix(qm).reshape(v.shape)
        if split:
            score_stats = stats.half(1)
    outer, channels, inner = v.shape
    stages = [EntropyStage(q.reshape(-1)), AffineStage(outer, channels, inner, theta, step)]
    if exponents is not None:
        stages.append(ExponentStage(1, outer, channels * inner, exponents))
    if tensor.dtype != FLOAT:
        stages.append(CastStage(tensor.dtype))
    recipe = Recipe(tensor.dtype, tensor.shape, stages)
    payload = serialize(recipe)
    sparsity = float((q == 0).mean())
    delta = weight_delta(tensor, tensor.decoded_values(reconstruct(recipe)))
    return Quantized(recipe, payload, layer_error(delta, score_stats), sparsity)


def prepared(stats: LayerStats, damping: float, half: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inverse-Hessian factorization, computed once per layer, damping and half (cached on the statistics)."""
    h = stats.hessian if half is None else stats.halves[half]
    return stats.cache.get(_factorization_key(damping, half), lambda: gptq.prepare(h, damping))


def _factorization_key(damping: float, half: int | None) -> tuple:
    return ("gptq", damping, half)


def output_aware_damping(tensor: TensorInput, stats: LayerStats | None) -> float | None:
    """GPTQ damping validated on held-out samples, or None (round to nearest)."""
    if stats is None or stats.hessian is None or stats.halves is None:
        return None
    values = tensor.values.astype(np.float64)
    v = channel_view(values, tensor.channel_axis)
    params = QuantParams(2 ** -1.5, True, 0.0)
    step = channel_steps(v, params)
    q = gptq.quantize_nearest(v, step.astype(np.float64)[None, :, None], 0.0)
    theta = shrink(v, q, step)
    view = stats.view
    m = view.to_matrix(values)
    rows = step.astype(np.float64)[view.row_channels(tensor.channel_axis)].reshape(m.shape[:2])
    def keep(damping: float, factorization: gptq.Factorization) -> None:
        # the chosen damping's factorization of the first half: the one its held-out candidates use (`prepared`)
        stats.cache.get(_factorization_key(damping, 0), lambda: factorization)

    return gptq.choose_damping(m, stats.halves, rows, theta, 0.0, keep=keep)


def step_families(tensor: TensorInput, ctx: TensorContext, exponents: tuple[int, ...], lossless: int,
                  families: list[tuple]) -> list[Option]:
    """The step-grid candidates of the given quantizer families (QuantParams
    fields after alpha), each swept over the step grid; grid positions are
    recorded for the shared-grid search."""
    options: list[Option] = []
    for family in families:
        def candidate(alpha: float) -> tuple[QuantParams, Quantized]:
            params = QuantParams(alpha, *family)
            return params, quantize(tensor, params, ctx.stats, held_out=True)

        options += sweep(exponents, tensor.numel, lossless, candidate, grid=True)
    ctx.step_families = True
    return options


def plain_family(tensor: TensorInput, ctx: TensorContext) -> tuple:
    """The one quantizer of the uniform baseline: per-channel steps where the
    tensor has channels, with the tensor's gptq."""
    return (tensor.channel_axis is not None, 0.0, ctx.damping, False, False)


class StepGridMethod(Method):
    """A method whose candidates are step-grid quantizers (`QuantParams`):
    they quantize and encode alike, whichever method proposed them."""

    def quantize(self, tensor: TensorInput, params: QuantParams, ctx: TensorContext) -> Quantized:
        return quantize(tensor, params, ctx.stats, held_out=True)

    def encode(self, tensor: TensorInput, params: QuantParams, ctx: TensorContext) -> Recipe:
        if not np.isfinite(tensor.values).all():
            raise UnsupportedError(f"tensor {tensor.name!r}: non-finite values cannot be quantized")
        return quantize(tensor, params, ctx.stats).recipe

    def plain_candidates(self, tensor: TensorInput, ctx: TensorContext, lossless_bytes: int) -> list[Option]:
        """The uniform baseline's one quantizer on the step grid, unless another
        method already offered the step-grid quantizers (with the same rounding)."""
        if ctx.step_families:
            return []
        return step_families(tensor, ctx, ALPHA_EXPONENTS, lossless_bytes, [plain_family(tensor, ctx)])
