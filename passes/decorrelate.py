"""Transform-domain decorrelation (transform quantization): quantize a
layer's weights in a basis where their coefficients are uncorrelated, and
store the basis (`transform` stage, docs/FORMAT.md).

For a weight acting as a matrix M (rows × d) on inputs x with second moment
H = E[x xᵀ], the output error of a perturbation is tr(ΔM·H·ΔMᵀ). Writing
M = C·B with B = Vᵀ·H^(-1/2), where V are the eigenvectors of the whitened
weight covariance (M·H^(1/2))ᵀ(M·H^(1/2)), makes that error exactly the plain
squared error of the coefficients C, and C's columns uncorrelated with
variances σᵢ² (the KLT in the metric of the output error, which is the
paper's end-to-end learned transform's objective solved in closed form for a
quadratic proxy). Rate-distortion theory for uncorrelated Gaussian
components then gives reverse water-filling: one step size for every
coefficient, and components with σᵢ² below the distortion level dropped:
the coded basis keeps only the k rows whose coefficients are not all zero.
Without statistics the basis is the plain KLT of M's columns (H = I).

The basis is stored in float16, its rows normalized (the scale moves into
the coefficient steps, which keeps the error identity exact), and its bytes
count in the candidate's size, so the allocator uses a transform only where
it wins on (rate, distortion) against the untransformed candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from onnx_l2c.codec import (FLOAT, FLOAT16, AffineStage, CastStage, EntropyStage, Recipe, TransformStage,
                            decode_native, serialize)
from onnx_l2c.errors import UnsupportedError
from onnx_l2c.measure.layers import LayerStats, LayerView

from . import gptq
from .base import Knob, Method, Option, Params, Quantized, TensorContext, TensorInput, layer_error, sweep, weight_delta
from .steps import ALPHA_EXPONENTS

MAX_COLS = 2048  # eigendecompositions of d × d; larger inputs are not transformed
WHITEN_DAMPING = 0.1  # of mean(diag H): the whitening must not trust tiny eigenvalues of a sampled H


@dataclass(frozen=True)
class TransformParams(Params):
    method: ClassVar[str] = "decorrelate"

    alpha: float  # coefficient step = alpha · rms of the whitened weights
    whitened: bool  # basis in the output-error metric (needs full statistics) or plain KLT

    @property
    def family(self) -> tuple:
        return ("transform", self.whitened)

    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("alpha", steps=7),)

    def describe(self) -> dict[str, float | bool | None]:
        return {"alpha": self.alpha, "transform": "whitened_klt" if self.whitened else "klt",
                "output_aware": self.whitened, "dead_zone": 0.0, "per_channel": False, "damping": None}


@dataclass
class Basis:
    """M = C·B: coefficients C (rows × d, columns by decreasing variance), B (d × d)."""

    coefficients: np.ndarray  # float64
    basis: np.ndarray  # float32, exact in float16, rows of unit max-abs
    scale: np.ndarray  # float64 [d]: whitened-coefficient units per stored-coefficient unit
    layout: int
    rms: float  # rms of the whitened coefficients


def matrix_layout(view: LayerView | None, tensor: TensorInput) -> tuple[np.ndarray, int] | None:
    """The weight as rows × cols with the `transform` stage layout that rebuilds it."""
    shape = tensor.shape
    values = tensor.values.astype(np.float64)
    if view is None:
        return None
    if view.kind == "conv" and view.groups == 1:
        return values.reshape(shape[0], -1), 0
    if view.kind in ("matmul", "gemm_kn"):
        return values.T, 1
    if view.kind in ("gemm_nk", "gather"):
        return values.reshape(shape[0], -1), 0
    return None


def applies(tensor: TensorInput, stats: LayerStats | None, view: LayerView | None) -> bool:
    layout = matrix_layout(view, tensor)
    if layout is None:
        return False
    rows, cols = layout[0].shape
    # A d×d basis only pays off when it serves many rows.
    return 2 <= cols <= MAX_COLS and rows >= 2 * cols and bool(np.isfinite(tensor.values).all())


def fit_basis(tensor: TensorInput, stats: LayerStats | None, view: LayerView, whitened: bool) -> Basis:
    m, layout = matrix_layout(view, tensor)  # type: ignore[misc]
    d = m.shape[1]
    if whitened:
        if stats is None or stats.hessian is None or stats.hessian.shape[0] != 1:
            raise UnsupportedError(f"tensor {tensor.name!r}: a whitened transform needs full calibration statistics")
        h = stats.hessian[0].astype(np.float64)
        h = h + WHITEN_DAMPING * max(float(np.mean(np.diag(h))), 1e-12) * np.eye(d)
        lam, q = np.linalg.eigh(h)
        lam = np.maximum(lam, lam.max() * 1e-12)
        root = (q * np.sqrt(lam)) @ q.T
        inv_root = (q / np.sqrt(lam)) @ q.T
    else:
        root = inv_root = np.eye(d)
    white = m @ root
    var, v = np.linalg.eigh(white.T @ white)
    v = v[:, np.argsort(-var, kind="stable")]
    basis = v.T @ inv_root  # M = (white·V)·(Vᵀ·H^-1/2)
    norm = np.abs(basis).max(axis=1)
    norm = np.where(norm > 0, norm, 1.0)
    basis16 = (basis / norm[:, None]).astype(np.float16).astype(np.float32)
    # Coefficients against the stored (rounded) basis: least squares, so the
    # basis rounding is compensated rather than added to the error.
    coeff = np.linalg.lstsq(basis16.astype(np.float64).T, m.T, rcond=None)[0].T
    white_coeff = white @ v
    rms = float(np.sqrt((white_coeff ** 2).mean())) or 1.0
    return Basis(coeff, basis16, norm, layout, rms)


def quantize_transform(tensor: TensorInput, params: TransformParams, stats: LayerStats | None,
                       fitted: Basis) -> Quantized:
    c = fitted.coefficients
    rows, d = c.shape
    # One step in whitened units for every coefficient (reverse water-filling);
    # in stored units that is step·norm_i per column.
    step = (params.alpha * fitted.rms * fitted.scale).astype(np.float32)
    step = np.maximum(step, np.float32(np.finfo(np.float32).tiny))
    q = gptq.quantize_nearest(c, step.astype(np.float64)[None, :], 0.0)
    nonzero_cols = np.flatnonzero(np.abs(q).sum(axis=0))
    k = int(nonzero_cols[-1]) + 1 if nonzero_cols.size else 1
    q = np.ascontiguousarray(q[:, :k])
    stages = [EntropyStage(q.reshape(-1)), AffineStage(rows, k, 1, 0.0, step[:k]),
              TransformStage(rows, k, d, fitted.basis[:k].reshape(-1), layout=fitted.layout,
                             basis_dtype=FLOAT16)]
    if tensor.dtype != FLOAT:
        stages.append(CastStage(tensor.dtype))
    recipe = Recipe(tensor.dtype, tensor.shape, stages)
    payload = serialize(recipe)
    rec_values = tensor.decoded_values(decode_native(payload, recipe))
    delta = weight_delta(tensor, rec_values)
    return Quantized(recipe, payload, layer_error(delta, stats), float((rec_values == 0).mean()))


class Decorrelate(Method):
    """Transform quantizers (module doc): plain KLT, and whitened in the
    output-error metric when the layer has full statistics."""

    name = "decorrelate"
    order = 40

    def candidates(self, tensor: TensorInput, ctx: TensorContext, lossless_bytes: int) -> list[Option]:
        stats, view = ctx.stats, ctx.view
        if not applies(tensor, stats, view):
            return []
        assert view is not None
        out = []
        kinds = [False] + ([True] if stats is not None and stats.hessian is not None else [])
        for whitened in kinds:
            fitted = fit_basis(tensor, stats, view, whitened)

            def candidate(alpha: float) -> tuple[Any, Quantized]:
                params = TransformParams(alpha, whitened)
                return params, quantize_transform(tensor, params, stats, fitted)

            out += sweep(ALPHA_EXPONENTS, tensor.numel, lossless_bytes, candidate)
        return out

    def quantize(self, tensor: TensorInput, params: TransformParams, ctx: TensorContext) -> Quantized:
        assert ctx.view is not None
        fitted = fit_basis(tensor, ctx.stats, ctx.view, params.whitened)
        return quantize_transform(tensor, params, ctx.stats, fitted)

    def encode(self, tensor: TensorInput, params: TransformParams, ctx: TensorContext) -> Recipe:
        if not applies(tensor, ctx.stats, ctx.view):
            raise UnsupportedError(f"tensor {tensor.name!r}: no matrix view the transform stage can rebuild")
        return self.quantize(tensor, params, ctx).recipe
