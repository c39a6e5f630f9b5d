"""Weight fixing to a shared power-of-two codebook (Weight Fixing Networks).

One codebook for the whole network: magnitudes that are sums of few powers of
two (order 0: a single power of two, multiplier-free; order n: n + 1 signed
terms), one near every point of a geometric grid whose ratio
(1 + δ)/(1 − δ) puts every magnitude in range within relative distance δ of a
grid point; mirrored, plus zero.

Fixing is progressive, as in the method: a schedule of fixed fractions with
tolerances shrinking to δ. At each step the codebook values that are nearest
to the most free weights are taken first, and a value's weights are fixed in
order of relative distance |w − c|/|w| while their running mean stays within
the step's tolerance; where nothing qualifies at the current order, the order
is raised. A candidate may also fix the weights below a floor (a multiple of
the tensor's rms) to zero before the first step: relative tolerance keeps
tiny weights on tiny powers of two, which costs bits where they matter least,
so the floor is what lets fixing reach low rates (~1.4–2.4 bits per weight
instead of ≥ 3.5 at the coarsest δ on MiniLM's matrices). Between steps, in
place of retraining, the still-free weights of a layer are moved by least
squares on the calibration statistics (minimum tr(ΔW·H·ΔWᵀ) with the fixed
weights held), so they absorb the error of the fixed ones. The result is
stored as indices into the tensor's used part of the shared table
(`codebook` stage), entropy coded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from onnx_l2c.codec import FLOAT, CastStage, CodebookStage, EntropyStage, Recipe
from onnx_l2c.config import OptionSpec
from onnx_l2c.errors import OptionError, UnsupportedError
from onnx_l2c.measure.layers import LayerStats

from .base import (Knob, Method, Option, Params, Quantized, TensorContext, TensorInput, coded, compensate,
                   split_halves)

# (fraction of the tensor fixed after the step, tolerance as a multiple of δ)
SCHEDULE: tuple[tuple[float, float], ...] = (
    (0.3, 8.0), (0.5, 6.0), (0.65, 4.0), (0.8, 3.0), (0.9, 2.0), (0.95, 1.5), (0.975, 1.2), (1.0, 1.0))
MAX_ORDER = 3
SMALLEST = 2.0 ** -12  # smallest nonzero magnitude, relative to the network's max |w|


def pow2_approx(x: np.ndarray, order: int) -> np.ndarray:
    """Nearest-first greedy approximation of positive x by a sum of order + 1
    signed powers of two (each term 2^round(log2 |residual|))."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    residual = x.copy()
    for _ in range(order + 1):
        nz = residual != 0
        term = np.zeros_like(x)
        term[nz] = np.sign(residual[nz]) * np.exp2(np.round(np.log2(np.abs(residual[nz]))))
        out += term
        residual = x - out
    return out


def build_codebook(max_abs: float, delta: float, order: int, smallest: float = SMALLEST) -> np.ndarray:
    """Sorted float32 codebook: ±(sums of at most order + 1 powers of two near
    a geometric grid from smallest·max_abs to max_abs), and 0."""
    if not 0.0 < delta < 1.0:
        raise OptionError(f"must be in (0, 1), got {delta}", "fixing_delta")
    if not 0 <= order <= MAX_ORDER:
        raise OptionError(f"must be in 0..{MAX_ORDER}, got {order}", "pow2_order")
    if not np.isfinite(max_abs) or max_abs <= 0:
        return np.zeros(1, np.float32)
    ratio = (1.0 + delta) / (1.0 - delta)
    lo = max_abs * smallest
    n = int(np.ceil(np.log(max_abs / lo) / np.log(ratio))) + 1
    grid = lo * ratio ** np.arange(n + 1)
    # every lower order too, so raising the order only adds values
    mags = np.unique(np.concatenate([pow2_approx(grid, k) for k in range(order + 1)]).astype(np.float32))
    mags = mags[mags > 0]
    return np.concatenate([-mags[::-1], np.zeros(1, np.float32), mags]).astype(np.float32)


def nearest(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest codebook value (codebook sorted ascending)."""
    idx = np.clip(np.searchsorted(codebook, values), 1, len(codebook) - 1)
    left, right = codebook[idx - 1], codebook[idx]
    return np.where(np.abs(values - left) <= np.abs(right - values), idx - 1, idx)


def relative_distance(values: np.ndarray, targets: np.ndarray) -> np.ndarray:
    mag = np.abs(values)
    return np.where(mag > 0, np.abs(values - targets) / np.where(mag > 0, mag, 1.0), 0.0)


@dataclass
class FixingResult:
    values: np.ndarray  # fixed weights (float64, the tensor's shape)
    order: int  # highest codebook order used
    steps: list[tuple[float, float, int]]  # (fraction fixed, tolerance, order) after each step


def fix_tensor(values: np.ndarray, delta: float, order: int, max_abs: float,
               stats: LayerStats | None = None, max_order: int = MAX_ORDER, floor: float = 0.0) -> FixingResult:
    """Progressively fix one tensor to the shared codebook (see the module doc);
    weights with |w| < floor·rms(w) are fixed to zero first."""
    w0 = np.asarray(values, dtype=np.float64)
    view = stats.view if stats is not None and stats.hessian is not None else None
    flat = w0.reshape(-1).copy()
    n = flat.size
    free = np.ones(n, dtype=bool)
    if floor > 0 and n:
        below = np.abs(flat) < floor * np.sqrt(np.mean(flat * flat))
        flat[below] = 0.0
        free[below] = False
    books = {o: build_codebook(max_abs, delta, o).astype(np.float64) for o in range(order, max_order + 1)}
    current = order
    steps: list[tuple[float, float, int]] = []
    for fraction, tol_mult in SCHEDULE:
        tol = tol_mult * delta
        target = int(np.ceil(fraction * n))
        while int((~free).sum()) < target:
            need = target - int((~free).sum())
            fixed_now = _fix_step(flat, free, books[current], tol, need, final=False)
            if fixed_now:
                continue
            if current < max_order:
                current += 1  # nothing qualifies at this order: finer codebook
                continue
            _fix_step(flat, free, books[current], np.inf, need, final=True)
        if view is not None and free.any():
            flat = compensate(w0, flat, free, stats, view)
        steps.append((float((~free).mean()) if n else 1.0, tol, current))
    return FixingResult(flat.reshape(w0.shape), current, steps)


def _fix_step(flat: np.ndarray, free: np.ndarray, book: np.ndarray, tol: float, need: int, final: bool) -> int:
    """Fix up to `need` free weights: codebook values with the most free
    weights nearest first; each value's weights by increasing relative
    distance while their running mean stays ≤ tol. Returns how many were fixed."""
    idx_free = np.flatnonzero(free)
    if idx_free.size == 0 or need <= 0:
        return 0
    v = flat[idx_free]
    near = nearest(v, book)
    dist = relative_distance(v, book[near])
    # Grouped by value with a stable radix sort (a 16-bit key), each group
    # sorted by distance only when it is visited: the order of a full
    # lexsort((dist, near)), at a fifth of its cost on a token table.
    key = near.astype(np.int16) if book.size <= np.iinfo(np.int16).max else near
    by_value = np.argsort(key, kind="stable")
    del key
    per_value = np.bincount(near, minlength=book.size)
    values = np.flatnonzero(per_value)  # the group of values[g] is by_value[starts[g]:ends[g]]
    counts = per_value[values]
    ends = np.cumsum(counts)
    starts = ends - counts
    fixed = 0
    for g in np.argsort(-counts, kind="stable"):
        if fixed >= need:
            break
        a, b = starts[g], ends[g]
        members = by_value[a:b]
        members = members[np.argsort(dist[members], kind="stable")]
        if final:
            take = b - a
        else:
            running = np.cumsum(dist[members]) / np.arange(1, b - a + 1)
            ok = np.flatnonzero(running <= tol)
            take = int(ok[-1]) + 1 if ok.size else 0
        take = min(take, need - fixed)
        if take <= 0:
            continue
        sel = idx_free[members[:take]]
        flat[sel] = book[values[g]]
        free[sel] = False
        fixed += take
    return fixed


@dataclass(frozen=True)
class FixingParams(Params):
    method: ClassVar[str] = "fixing"

    delta: float
    order: int = 0
    floor: float = 0.0  # weights below floor·rms are fixed to zero first

    @property
    def family(self) -> tuple:
        return ("fixing", self.order)

    def knobs(self) -> tuple[Knob, ...]:
        # the zero floor down to none at the same δ, then on along δ (fewer
        # steps than a step grid: each is a full progressive fixing)
        delta = Knob("delta", steps=4)
        return (Knob("floor", steps=4, linear=True, same=("delta",)), delta) if self.floor > 0 else (delta,)

    def describe(self) -> dict[str, float | int]:
        return {"delta": self.delta, "pow2_order": self.order, "zero_floor": self.floor}


def fixed_recipe(tensor: TensorInput, fixed: np.ndarray) -> Recipe:
    """entropy + codebook (the used values of the shared table) [+ cast]."""
    used, symbols = np.unique(fixed.astype(np.float32).reshape(-1), return_inverse=True)
    stages = [EntropyStage(symbols.astype(np.int32)), CodebookStage(used.astype(np.float32))]
    if tensor.dtype != FLOAT:
        stages.append(CastStage(tensor.dtype))
    return Recipe(tensor.dtype, tensor.shape, stages)


FIXING_DELTAS = (0.01, 0.02, 0.05, 0.1, 0.2)  # the allocator's candidates when no δ is given
# Zero floors (× the tensor's rms) the allocator also tries, at the coarsest δ
# of its candidates: the low-rate end of fixing.
FIXING_FLOORS = (0.25, 0.5, 1.0)


def fix_candidate(tensor: TensorInput, stats: LayerStats | None, max_abs: float, params: FixingParams) -> Quantized:
    """One weight-fixing candidate. With full statistics the least-squares
    compensation is fitted on the first half of the samples and the error
    measured on the second (as for output-aware rounding)."""
    fit, score = split_halves(stats)
    result = fix_tensor(tensor.values.astype(np.float64), params.delta, params.order, max_abs, fit,
                        floor=params.floor)
    return coded(tensor, fixed_recipe(tensor, result.values), score)


class WeightFixing(Method):
    """Progressive fixing of each tensor to the network's power-of-two codebook."""

    name = "fixing"
    order = 50
    summary_key = "fixing"
    options = (
        OptionSpec("fixing_delta", float, None,
                   "weight fixing: relative tolerance δ of the shared power-of-two codebook", minimum=0.001,
                   maximum=0.5, metavar="DELTA", default_text="the allocator tries 0.01 to 0.2"),
        OptionSpec("pow2_order", int, 0,
                   "weight fixing: starting order of the codebook (0 = single powers of two; each order adds a "
                   "term; raised where no value is close enough)", minimum=0, maximum=3, metavar="N"),
    )

    def candidates(self, tensor: TensorInput, ctx: TensorContext, lossless_bytes: int) -> list[Option]:
        """One candidate per δ, and the zero floors at the coarsest δ."""
        delta, order = ctx.options.option("fixing_delta"), ctx.options.option("pow2_order")
        deltas = (delta,) if delta is not None else FIXING_DELTAS
        grid = [FixingParams(d, order) for d in deltas]
        grid += [FixingParams(max(deltas), order, floor) for floor in FIXING_FLOORS]
        out = []
        for params in grid:
            q = fix_candidate(tensor, ctx.stats, ctx.max_abs, params)
            if len(q.payload) < lossless_bytes:
                out.append(Option(len(q.payload), q.error, params, q.sparsity))
        return out

    def quantize(self, tensor: TensorInput, params: FixingParams, ctx: TensorContext) -> Quantized:
        return fix_candidate(tensor, ctx.stats, ctx.max_abs, params)

    def encode(self, tensor: TensorInput, params: FixingParams, ctx: TensorContext) -> Recipe:
        values = tensor.values.astype(np.float64)
        if not np.isfinite(values).all():
            raise UnsupportedError(f"tensor {tensor.name!r}: non-finite values cannot be fixed to a codebook")
        max_abs = ctx.max_abs if ctx.max_abs > 0 else float(np.abs(values).max(initial=0.0))
        result = fix_tensor(values, params.delta, params.order, max_abs, ctx.stats, floor=params.floor)
        return fixed_recipe(tensor, result.values)

    def summary(self, recipes: list[Recipe]) -> dict[str, Any] | None:
        return codebook_summary(recipes) if recipes else None

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        # the network's codebook where weight fixing was chosen
        return {"fixing_unique_values": summary["unique_values"],
                "fixing_bits_per_weight": round(summary["entropy_bits_per_weight"], 3),
                "fixing_table_bytes": summary["table_bytes"]}


def codebook_summary(recipes: list[Recipe]) -> dict[str, float | int]:
    """Unique values and the whole-network entropy (bits per weight) of the
    weights coded by fixing: the value histogram over all of them; and the
    bytes the payloads spend on their slices of the shared table (each
    payload carries the float32 values it uses, so it decodes on its own)."""
    counts: dict[float, int] = {}
    table_bytes = 0
    for recipe in recipes:
        symbols, book = recipe.stages[0], recipe.stages[1]
        assert isinstance(symbols, EntropyStage) and isinstance(book, CodebookStage)
        used = np.bincount(np.asarray(symbols.symbols).reshape(-1), minlength=len(book.values))
        table_bytes += 4 * len(book.values)
        for value, count in zip(np.asarray(book.values, np.float32).tolist(), used.tolist()):
            counts[value] = counts.get(value, 0) + count
    total = sum(counts.values())
    p = np.array([c for c in counts.values() if c > 0], dtype=np.float64) / max(total, 1)
    return {"tensors": len(recipes), "weights": total, "unique_values": int((p > 0).sum()),
            "entropy_bits_per_weight": float(-(p * np.log2(p)).sum()) if total else 0.0,
            "table_bytes": table_bytes}
