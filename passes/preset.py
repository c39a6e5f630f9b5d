"""The presets' fixed quantizer (int8, `--bits N`): per-output-channel uniform
quantization with a dead zone (`entropy` + `affine`), no planning.

Symbols q = sign(w)·round(|w|/Δc), with the zero bin widened by `dead_zone`
steps on each side; reconstruction ŵ = (q − sign(q)·θ)·Δc where θ is the
MSE-optimal shrink of the nonzero levels toward zero (Laplacian-like weights
sit closer to zero than the bin centres). At 6 bits and fewer, the per-channel
clipping range is searched for the smallest weight error.
"""

from __future__ import annotations

import numpy as np

from onnx_l2c.errors import OptionError
from onnx_l2c.codec import FLOAT, AffineStage, CastStage, EntropyStage, Recipe

from .base import TensorInput, channel_view

_CLIP_GRID = np.linspace(0.5, 1.0, 11, dtype=np.float32)
_MAX_THETA = 0.45


_SLICE = 1 << 20  # elements per slice of the θ fit


def _slices(q: np.ndarray, v: np.ndarray, step: np.ndarray):
    """(q, v, step) in slices of about _SLICE elements along the outer or
    inner axis of the (outer, C, inner) channel view."""
    outer, channels, inner = q.shape
    if outer >= inner:
        rows = max(1, _SLICE // max(channels * inner, 1))
        for i in range(0, outer, rows):
            yield q[i:i + rows], v[i:i + rows], step
    else:
        cols = max(1, _SLICE // max(outer * channels, 1))
        for i in range(0, inner, cols):
            yield q[:, :, i:i + cols], v[:, :, i:i + cols], step


class PresetQuantizer:
    """N-bit per-channel steps from each channel's max |w| (clipping searched at ≤ 6 bits)."""

    name = "uniform"  # the report's method name of preset tensors
    lossless = False

    def __init__(self, bits: int = 8, dead_zone: float = 0.15) -> None:
        if not 2 <= bits <= 16:
            raise OptionError(f"uniform quantization needs 2 ≤ bits ≤ 16, got {bits}", "bits")
        if not 0.0 <= dead_zone <= 0.5:
            raise OptionError(f"must be in [0, 0.5], got {dead_zone}", "dead_zone")
        self.bits = bits
        self.dead_zone = dead_zone
        self.qmax = 2 ** (bits - 1) - 1

    def applies_to(self, tensor: TensorInput) -> bool:
        # Only weights of ops with a known output-channel axis; biases, norms and
        # unknown tensors stay lossless. Non-finite values cannot be quantized.
        return tensor.channel_axis is not None and bool(np.isfinite(tensor.values).all())

    def _quantize(self, v: np.ndarray, step: np.ndarray) -> np.ndarray:
        # round(|v| / step) with a dead zone, clamped to qmax, signed; in place
        # (two float32-sized temporaries, not six: compress runs several at once)
        a = np.abs(v)
        a /= step
        dead = a < 0.5 + self.dead_zone
        a += 0.5
        np.floor(a, out=a)
        np.minimum(a, self.qmax, out=a)
        a[dead] = 0
        del dead
        q = a.astype(np.int32)
        del a
        np.negative(q, out=q, where=v < 0)
        return q

    def _steps(self, v: np.ndarray) -> np.ndarray:
        """Per-channel step (float32, > 0), shaped (1, C, 1)."""
        absmax = np.abs(v).max(axis=(0, 2), keepdims=True).astype(np.float32)
        absmax = np.where(absmax > 0, absmax, np.float32(1.0))
        if self.bits > 6:
            return (absmax / np.float32(self.qmax)).astype(np.float32)
        best_err = np.full(absmax.shape, np.inf)
        best = absmax / np.float32(self.qmax)
        for clip in _CLIP_GRID:
            step = (absmax * clip / np.float32(self.qmax)).astype(np.float32)
            q = self._quantize(v, step)
            err = ((q * step - v) ** 2).sum(axis=(0, 2), keepdims=True)
            better = err < best_err
            best = np.where(better, step, best)
            best_err = np.where(better, err, best_err)
        return best.astype(np.float32)

    def symbols_and_params(self, tensor: TensorInput) -> tuple[np.ndarray, np.ndarray, float]:
        v = channel_view(tensor.values, tensor.channel_axis)
        step = self._steps(v)
        q = self._quantize(v, step)
        # θ minimizing Σ (Δ(|q|−θ) − |w|)² over nonzero symbols, in float64,
        # summed a fixed slice at a time (the same bytes whatever the workers).
        num = den = 0.0
        for qs, vs, ss in _slices(q, v, step):
            nz = qs != 0
            st = np.broadcast_to(ss, qs.shape)[nz]
            s2 = st.astype(np.float64) ** 2
            num += float((s2 * (np.abs(qs[nz]) - np.abs(vs[nz]) / st)).sum())
            den += float(s2.sum())
        theta = float(np.clip(num / den, 0.0, _MAX_THETA)) if den > 0 else 0.0
        return q, step.reshape(-1), float(np.float32(theta))

    def encode(self, tensor: TensorInput) -> Recipe:
        q, step, theta = self.symbols_and_params(tensor)
        outer, channels, inner = q.shape
        stages = [EntropyStage(q.reshape(-1)), AffineStage(outer, channels, inner, theta, step)]
        if tensor.dtype != FLOAT:
            stages.append(CastStage(tensor.dtype))
        return Recipe(tensor.dtype, tensor.shape, stages)
