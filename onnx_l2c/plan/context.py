"""Planning a size target: calibrate → statistics → sensitivity → candidates
per tensor → global allocation. The pipeline then encodes each weight with
the method the plan chose for it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from onnx_l2c.passes import TensorInput, WeightTransform
from onnx_l2c.passes import decorrelate, fixing, mixed, unify
from onnx_l2c.passes.lossless import Lossless

from onnx_l2c.plan import allocate
from onnx_l2c.plan.allocate import Allocation, Option, TensorChoices
from onnx_l2c.measure.calibration import graph_inputs, iter_samples
from onnx_l2c.config import BlockShape, CompressOptions
from onnx_l2c.codec import serialize
from onnx_l2c.graph.model import WeightRef, tensor_bits
from onnx_l2c.measure.sensitivity import NOISE_REL, Sensitivity, measure_sensitivity, unit_error
from onnx_l2c.measure.statistics import LayerStats, LayerView, collect_statistics, layer_view

log = logging.getLogger(__name__)

PAYLOAD_OVERHEAD = 32  # average alignment padding per payload in the sidecar


@dataclass
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    numel: int
    scale: float
    sensitivity_measured: bool
    statistics: str  # "full", "diagonal", "rows", "none"
    choices: TensorChoices


@dataclass
class PlanContext:
    """Everything measured once; `allocate` can then be run for any budget."""

    tensors: dict[str, TensorPlan] = field(default_factory=dict)
    stats: dict[str, LayerStats] = field(default_factory=dict)
    sensitivity: Sensitivity | None = None
    data_free: bool = True
    calibration_samples: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    fixed_bytes: int = 0  # graph estimate + padding: what the budget does not buy
    weights: dict[str, WeightRef] = field(default_factory=dict)
    base_dir: Path = Path(".")
    mixed: bool = True  # per-tensor choices; without it one shared step grid position
    views: dict[str, LayerView | None] = field(default_factory=dict)
    # Bias correction: weight → the bias its consumer adds; for those weights
    # the quantizers see the centered statistics (see LayerStats.centered).
    bias_of: dict[str, str] = field(default_factory=dict)
    fit_stats: dict[str, LayerStats] = field(default_factory=dict)
    max_abs: float = 0.0  # largest |w| of the network: the top of weight fixing's shared codebook

    def quantize(self, name: str, params: Any) -> mixed.Quantized:
        """One candidate of one tensor (the same code the final encode runs)."""
        tensor = _tensor_input(self.weights[name], self.base_dir)
        stats = self.fit_stats.get(name)
        if isinstance(params, fixing.FixingParams):
            return _fix_candidate(tensor, stats, self.max_abs, params)
        if isinstance(params, unify.UnifyParams):
            try:
                return unify.quantize(tensor, params, stats, self.views[name], held_out=True)
            finally:
                if stats is not None:
                    unify.release(stats)
        if isinstance(params, decorrelate.TransformParams):
            view = self.views[name]
            assert view is not None
            fitted = decorrelate.fit_basis(tensor, stats, view, params.whitened)
            return decorrelate.quantize_transform(tensor, params, stats, fitted)
        try:
            return mixed.quantize(tensor, params, stats, held_out=True)
        finally:
            if stats is not None:
                mixed.release(stats)

    def allocate(self, budget: int, search: str) -> Allocation:
        if not self.mixed:
            search = "uniform"
        choices = [t.choices for t in self.tensors.values()]
        available = max(budget - self.fixed_bytes, 0)
        return self._fill(allocate.SEARCHES[search](choices, available), available)

    def _fill(self, alloc: Allocation, available: int) -> Allocation:
        """Spend what the discrete grid leaves over: refine the step (or weight
        fixing's zero floor and tolerance) of the largest tensors continuously,
        by bisection between the finest grid option that still fits and the
        next finer one, so the output lands on the budget."""
        if alloc.search == "uniform":
            return self._fill_shared(alloc, available)
        by_size = sorted((n for n, o in alloc.chosen.items() if o.params is not None),
                         key=lambda n: -alloc.chosen[n].bytes)
        for name in by_size[:8]:
            if available - alloc.total_bytes <= 0.005 * available:
                break
            chosen = alloc.chosen[name]
            # the continuous knob of the candidate's family (smaller = finer):
            # the quantizer step α, weight fixing's tolerance δ, or its zero
            # floor (down to no floor at the same δ, and then on along δ)
            p = chosen.params
            knobs = ["alpha"] if hasattr(p, "alpha") else ["floor", "delta"] if p.floor > 0 else ["delta"]
            best = chosen
            for knob in knobs:
                best = self._refine(name, chosen, best, knob, available - alloc.total_bytes + chosen.bytes)
                if knob == "floor" and best.params.floor > 0:
                    break  # the bisection stopped inside the floor range
            if best is not chosen:
                scale = self.tensors[name].scale
                alloc.chosen[name] = best
                alloc.total_bytes += best.bytes - chosen.bytes
                alloc.distortion += scale * (best.error - chosen.error)
        return alloc

    def _refine(self, name: str, chosen: Option, start: Option, knob: str, room: int) -> Option:
        """The finest option of `start`'s family along `knob` that codes in
        `room` bytes: the grid's bracket, then bisection (geometric; linear for
        the zero floor, whose next finer value is no floor)."""
        p = start.params
        value = getattr(p, knob)
        finer = sorted((o for o in self.tensors[name].choices.options
                        if o.params is not None and o.params.family == p.family
                        and (knob != "floor" or o.params.delta == p.delta)
                        and getattr(o.params, knob) < value), key=lambda o: -getattr(o.params, knob))

        def next_finer(v: float) -> float:
            return 0.0 if knob == "floor" else v / 2

        best, lo, hi = start, value, next_finer(value)
        for o in finer:
            if o.bytes <= room:
                best, lo, hi = o, getattr(o.params, knob), next_finer(getattr(o.params, knob))
            else:
                hi = getattr(o.params, knob)
                break
        # fewer steps for fixing: each is a full progressive fixing of the
        # tensor; none along the floor once no floor fits
        for _ in range(7 if knob == "alpha" else 4 if lo > 0 else 0):
            mid = float(np.sqrt(lo * hi)) if knob != "floor" else 0.5 * (lo + hi)
            params = dataclasses.replace(p, **{knob: mid})
            q = self.quantize(name, params)
            if len(q.payload) <= room:
                lo, best = mid, Option(len(q.payload), q.error, params, q.sparsity, chosen.grid)
            else:
                hi = mid
        return best

    def _fill_shared(self, alloc: Allocation, available: int) -> Allocation:
        """Uniform mode: refine one step factor shared by every quantized tensor."""
        names = [n for n, o in alloc.chosen.items() if o.params is not None]
        if not names or available - alloc.total_bytes <= 0.005 * available:
            return alloc
        lo, hi, best = 1.0, 0.5, None  # the grid is a whole octave apart at its fine end
        for _ in range(6):
            mid = float(np.sqrt(lo * hi))
            trial = dict(alloc.chosen)
            for name in names:
                o = trial[name]
                params = dataclasses.replace(o.params, alpha=o.params.alpha * mid)
                q = self.quantize(name, params)
                trial[name] = Option(len(q.payload), q.error, params, q.sparsity, o.grid)
            if sum(o.bytes for o in trial.values()) <= available:
                lo, best = mid, trial
            else:
                hi = mid
        if best is None:
            return alloc
        total = sum(o.bytes for o in best.values())
        dist = sum(self.tensors[n].scale * o.error for n, o in best.items())
        return Allocation(best, total, dist, alloc.search, alloc.multiplier)

    def method_for(self, name: str, option: Option) -> WeightTransform:
        if option.params is None:
            return Lossless()
        if isinstance(option.params, fixing.FixingParams):
            return fixing.WeightFixing(option.params, self.max_abs, self.fit_stats.get(name))
        if isinstance(option.params, unify.UnifyParams):
            return unify.Unification(option.params, self.fit_stats.get(name), self.views[name])
        if isinstance(option.params, decorrelate.TransformParams):
            view = self.views[name]
            assert view is not None
            return decorrelate.Decorrelate(option.params, self.fit_stats.get(name), view)
        return mixed.MixedPrecision(option.params, self.fit_stats.get(name))


def _tensor_input(w: WeightRef, base_dir: Path) -> TensorInput:
    return TensorInput(w.name, w.dtype, w.shape, tensor_bits(w.tensor, base_dir), w.channel_axis)


def _sweep(exponents: tuple[int, ...], numel: int, lossless: int,
           candidate: Callable[[float], tuple[Any, mixed.Quantized]], grid: bool = False) -> list[Option]:
    """Candidates along a step grid α = 2^(k/2), finest first: those smaller than
    lossless, until one codes under STOP_BITS bits per weight. `candidate(α)`
    gives (params, quantized); grid=True records k for the shared-grid search."""
    out = []
    for k in exponents:
        params, q = candidate(2.0 ** (k / 2))
        size = len(q.payload)
        if size >= lossless:
            continue
        out.append(Option(size, q.error, params, q.sparsity, grid=k) if grid else
                   Option(size, q.error, params, q.sparsity))
        if 8 * size / max(numel, 1) < mixed.STOP_BITS:
            break
    return out


def _transform_options(tensor: TensorInput, stats: LayerStats | None, view: LayerView | None,
                       lossless: int) -> list[Option]:
    """Decorrelated candidates: plain KLT, and whitened in the output-error
    metric when the layer has full statistics."""
    if not decorrelate.applies(tensor, stats, view):
        return []
    assert view is not None
    out = []
    numel = int(np.prod(tensor.shape, dtype=np.int64))
    kinds = [False] + ([True] if stats is not None and stats.hessian is not None else [])
    for whitened in kinds:
        fitted = decorrelate.fit_basis(tensor, stats, view, whitened)

        def candidate(alpha: float) -> tuple[Any, mixed.Quantized]:
            params = decorrelate.TransformParams(alpha, whitened)
            return params, decorrelate.quantize_transform(tensor, params, stats, fitted)

        out += _sweep(mixed.ALPHA_EXPONENTS, numel, lossless, candidate)
    return out


def _fix_candidate(tensor: TensorInput, stats: LayerStats | None, max_abs: float,
                   params: fixing.FixingParams) -> mixed.Quantized:
    """One weight-fixing candidate. With full statistics the least-squares
    compensation is fitted on the first half of the samples and the error
    measured on the second (as for output-aware rounding)."""
    from onnx_l2c.codec import reconstruct

    fit, score = stats, stats
    if stats is not None and stats.hessian is not None and stats.halves is not None:
        fit = LayerStats(stats.view, hessian=stats.halves[0])
        score = LayerStats(stats.view, hessian=stats.halves[1])
    values = tensor.values.astype(np.float64)
    result = fixing.fix_tensor(values, params.delta, params.order, max_abs, fit, floor=params.floor)
    recipe = fixing.fixed_recipe(tensor, result.values)
    rec_values = tensor.decoded_values(reconstruct(recipe)).astype(np.float64)
    return mixed.Quantized(recipe, serialize(recipe), mixed.layer_error(rec_values - values, score),
                           float((rec_values == 0).mean()))


def _fixing_options(tensor: TensorInput, stats: LayerStats | None, max_abs: float, deltas: tuple[float, ...],
                    order: int, lossless: int) -> list[Option]:
    """Weight-fixing candidates, one per δ, and the zero floors at the coarsest δ."""
    out = []
    grid = [fixing.FixingParams(delta, order) for delta in deltas]
    grid += [fixing.FixingParams(max(deltas), order, floor) for floor in fixing.FIXING_FLOORS]
    for params in grid:
        q = _fix_candidate(tensor, stats, max_abs, params)
        if len(q.payload) < lossless:
            out.append(Option(len(q.payload), q.error, params, q.sparsity))
    return out


def _unify_options(tensor: TensorInput, stats: LayerStats | None, view: LayerView | None,
                   blocks: tuple[BlockShape, ...], damping: float | None, lossless: int,
                   fine: bool = False) -> list[Option]:
    """Unification candidates: per block shape that fits the tensor, a step grid
    (the selection's exchange rate λ follows the step); with `fine` (no other
    quantizer family covers the high rates) also the finer steps, once."""
    out = []
    numel = int(np.prod(tensor.shape, dtype=np.int64))
    for block in blocks:
        if unify.block_layout(tensor, view, block) is None:
            continue

        def candidate(alpha: float) -> tuple[Any, mixed.Quantized]:
            params = unify.UnifyParams(alpha, block, damping=damping)
            return params, unify.quantize(tensor, params, stats, view, held_out=True)

        exponents = unify.ALPHA_EXPONENTS
        if fine:
            exponents, fine = unify.FINE_ALPHA_EXPONENTS + exponents, False
        out += _sweep(exponents, numel, lossless, candidate)
    return out


def _options(tensor: TensorInput, stats: LayerStats | None, methods: tuple[str, ...],
             view: LayerView | None = None, max_abs: float = 0.0,
             fixing_deltas: tuple[float, ...] = fixing.FIXING_DELTAS, pow2_order: int = 0,
             blocks: tuple[BlockShape, ...] = unify.DEFAULT_BLOCKS) -> list[Option]:
    lossless = len(serialize(Lossless().encode(tensor)))
    options = [Option(lossless, 0.0, None)]
    if not np.isfinite(tensor.values).all():
        return options
    damping = mixed.output_aware_damping(tensor, stats) if "rounding" in methods else None
    if "mixed" in methods:
        # Per-tensor or per-channel steps, both with the chosen rounding; a
        # dead zone (pruning) with plain rounding, where it is cheap to try.
        per_channel = (False, True) if tensor.channel_axis is not None else (False,)
        families = [(pc, 0.0, damping, False, False) for pc in per_channel]
        families += [(False, dz, None, False, False) for dz in mixed.DEAD_ZONES if dz > 0]
        if damping is None and len(tensor.shape) == 2 and tensor.channel_axis == 0:
            families.append((True, 0.0, None, True, False))  # tables (Gather, Gemm transB): per-column steps
            if stats is not None and stats.row_weight is not None and stats.row_weight.size == tensor.shape[0]:
                # lookup tables: finer steps for the rows that inputs use often
                families.append((True, 0.0, None, True, True))
    elif {"uniform", "rounding"} & set(methods):
        families = [(tensor.channel_axis is not None, 0.0, damping, False, False)]
    else:
        families = []  # only other methods (fixing, decorrelate) were asked for
    numel = int(np.prod(tensor.shape, dtype=np.int64))
    try:
        for family in families:
            def candidate(alpha: float) -> tuple[Any, mixed.Quantized]:
                params = mixed.QuantParams(alpha, *family)
                return params, mixed.quantize(tensor, params, stats, held_out=True)

            options += _sweep(mixed.ALPHA_EXPONENTS, numel, lossless, candidate, grid=True)
    finally:
        if stats is not None:
            mixed.release(stats)
    if "decorrelate" in methods:
        options += _transform_options(tensor, stats, view, lossless)
    if "fixing" in methods:
        options += _fixing_options(tensor, stats, max_abs, fixing_deltas, pow2_order, lossless)
    if "unify" in methods:
        try:
            options += _unify_options(tensor, stats, view, blocks, damping, lossless, fine=not families)
        finally:
            if stats is not None:
                unify.release(stats)
    return options


def build_context(model: onnx.ModelProto, base_dir: Path, weights: list[WeightRef], opts: CompressOptions,
                  workers: int, progress: Any = None, measured: PlanContext | None = None) -> PlanContext:
    """Measure (or reuse `measured`'s statistics and sensitivities) and fit candidates."""
    ctx = PlanContext(weights={w.name: w for w in weights}, base_dir=base_dir,
                      # one shared step only for the uniform baseline (with or without rounding)
                      mixed=not set(opts.methods) <= {"uniform", "rounding"})
    t0 = time.perf_counter()
    if measured is not None:
        ctx.stats, ctx.sensitivity, ctx.data_free = measured.stats, measured.sensitivity, measured.data_free
        ctx.calibration_samples = measured.calibration_samples
        ctx.seconds = {k: v for k, v in measured.seconds.items() if k != "candidates"}
        ctx.notes = [n for n in measured.notes if n.startswith("data-free")]
    elif opts.calibration_data is not None:
        inputs = graph_inputs(model)
        samples = list(iter_samples(opts.calibration_data, inputs, opts.calibration_samples))
        ctx.calibration_samples = len(samples)
        ctx.stats = collect_statistics(model, base_dir, weights, samples, inputs)
        ctx.seconds["statistics"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        ctx.sensitivity = measure_sensitivity(model, base_dir, weights, ctx.stats, samples, inputs)
        ctx.seconds["sensitivity"] = time.perf_counter() - t1
        ctx.data_free = False
        del samples
    if measured is None and opts.calibration_data is None:
        ctx.notes.append("data-free: no calibration data, so distortion is the relative weight error of each "
                         "tensor (all tensors equally important) and rounding is to nearest")
    t2 = time.perf_counter()
    methods = opts.methods if not ctx.data_free else tuple(m for m in opts.methods if m != "rounding")

    ctx.views = {w.name: layer_view(w) for w in weights}
    ctx.fit_stats = dict(ctx.stats)
    if ctx.stats and "rounding" in methods:  # bias correction is part of output-aware rounding
        ctx.bias_of = find_biases(model, weights, ctx.stats)
        for name in ctx.bias_of:
            ctx.fit_stats[name] = ctx.stats[name].centered()
    biases = set(ctx.bias_of.values())

    deltas = (opts.fixing_delta,) if opts.fixing_delta is not None else fixing.FIXING_DELTAS
    blocks = (opts.block,) if opts.block is not None else unify.DEFAULT_BLOCKS
    norms = {w.name: _norms(w, base_dir) for w in weights}  # one read of each weight: (mean w², max |w|)
    # weight fixing's one codebook for the whole network is anchored at its largest |w|
    ctx.max_abs = max((m for _, m in norms.values()), default=0.0)

    def work(w: WeightRef) -> tuple[WeightRef, list[Option]]:
        tensor = _tensor_input(w, base_dir)
        if w.name in biases:  # corrected after quantization: kept exact
            return w, [Option(len(serialize(Lossless().encode(tensor))), 0.0, None)]
        return w, _options(tensor, ctx.fit_stats.get(w.name), methods, ctx.views[w.name], ctx.max_abs,
                           deltas, opts.pow2_order, blocks)

    results: list[tuple[WeightRef, list[Option]]] = []
    with ThreadPoolExecutor(workers) as pool:
        for i, item in enumerate(pool.map(work, weights)):
            results.append(item)
            if progress is not None:
                progress(i + 1, len(weights), item[0].name)
    ctx.seconds["candidates"] = time.perf_counter() - t2

    measured = ctx.sensitivity.scale if ctx.sensitivity is not None else {}
    # Tensors without a measurement (in subgraphs, bfloat16) get the median
    # divergence per unit of *relative* noise of the measured ones.
    rms2 = {name: ms for name, (ms, _) in norms.items()}
    rel = [measured[w.name] * rms2[w.name] * unit_error(w, ctx.stats.get(w.name))
           for w, _ in results if w.name in measured]
    fallback_rel = float(np.median(rel)) if rel else 1.0
    # Tensors whose noise did not move the outputs on the calibration samples
    # get the least measured sensitivity: compressed hardest, as the data
    # says, but not treated as free (other inputs may take their branch).
    no_effect = ctx.sensitivity.no_effect if ctx.sensitivity is not None else set()
    least_rel = float(np.min(rel)) if rel else 1.0
    for w, options in results:
        stats = ctx.stats.get(w.name)
        if w.name in measured:
            scale, is_measured = measured[w.name], True
        else:
            base_rel = least_rel if w.name in no_effect else fallback_rel
            scale = base_rel / max(rms2[w.name] * unit_error(w, stats), 1e-300)
            is_measured = False
        kind = ("none" if stats is None else "full" if stats.hessian is not None
                else "diagonal" if stats.diagonal is not None else "rows")
        ctx.tensors[w.name] = TensorPlan(w.name, w.shape, w.numel, scale, is_measured, kind,
                                         TensorChoices(w.name, scale, options))
    unmeasured = len(results) - len(rel) - len(no_effect)
    if not ctx.data_free and unmeasured > 0:
        ctx.notes.append(f"{unmeasured} tensors without a measured sensitivity use the median of the measured ones")
    if no_effect:
        ctx.notes.append(f"{len(no_effect)} tensors did not change the outputs on the calibration samples (e.g. "
                         "a branch the samples never take): they get the least measured sensitivity, so they are "
                         "compressed hardest but not treated as free: "
                         + ", ".join(sorted(no_effect)[:8]) + ("…" if len(no_effect) > 8 else ""))
    ctx.fixed_bytes = _graph_estimate(model, weights) + PAYLOAD_OVERHEAD * len(weights)
    return ctx


class Precomputed(WeightTransform):
    """A recipe already computed (for bias correction), reported as its method."""

    name = "precomputed"

    def __init__(self, recipe: Any, method: WeightTransform) -> None:
        self.recipe, self.name, self.lossless = recipe, method.name, method.lossless  # type: ignore[misc]
        self.params = getattr(method, "params", None)

    def applies_to(self, tensor: TensorInput) -> bool:
        return True

    def encode(self, tensor: TensorInput) -> Any:
        return self.recipe

    def rate_bits(self, tensor: TensorInput) -> float:
        return 8.0 * len(serialize(self.recipe))


def find_biases(model: onnx.ModelProto, weights: list[WeightRef], stats: dict[str, LayerStats]) -> dict[str, str]:
    """Weights whose consumer adds a float32 bias initializer of one value per
    output row, used by nothing else: Conv's B, Gemm's C (alpha = beta = 1),
    or the Add right after a MatMul."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            uses.setdefault(name, []).append(node)
    for value in graph.output:
        uses.setdefault(value.name, []).append(onnx.NodeProto())  # a graph output counts as a use

    def bias_ok(name: str, rows: int) -> bool:
        t = inits.get(name)
        return (t is not None and t.data_type == onnx.TensorProto.FLOAT and len(uses.get(name, [])) == 1
                and int(np.prod(t.dims, dtype=np.int64)) == rows and (len(t.dims) == 1 or max(t.dims) == rows))

    out: dict[str, str] = {}
    for w in weights:
        st = stats.get(w.name)
        node = w.consumer_node
        if (st is None or st.mean is None or node is None or w.graph.path != "main" or w.transposed
                or len(uses.get(w.name, [])) != 1 or node.input[w.consumer_input] != w.name):
            continue
        rows = st.view.groups * st.view.rows
        attrs = {a.name: a for a in node.attribute}
        bias = None
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
            bias = node.input[2]
        elif node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            if all(attrs[k].f == 1.0 for k in ("alpha", "beta") if k in attrs):
                bias = node.input[2]
        elif node.op_type == "MatMul":
            after = uses.get(node.output[0], [])
            if len(after) == 1 and after[0].op_type == "Add":
                others = [n for n in after[0].input if n != node.output[0]]
                bias = others[0] if len(others) == 1 else None
        if bias is not None and bias_ok(bias, rows) and bias not in out.values():
            out[w.name] = bias
    return out


def bias_corrections(ctx: PlanContext, chosen: dict[str, Option]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """New bias values (b − ΔW·E[x]) for every corrected weight, and the final
    recipes of those weights (so they are not encoded twice)."""
    from onnx import numpy_helper

    from onnx_l2c.codec import decode_native

    new_bias: dict[str, np.ndarray] = {}
    recipes: dict[str, Any] = {}
    for name, bias_name in ctx.bias_of.items():
        option = chosen.get(name)
        if option is None or option.params is None:
            continue
        w = ctx.weights[name]
        tensor = _tensor_input(w, ctx.base_dir)
        recipe = ctx.method_for(name, option).encode(tensor)
        payload = serialize(recipe)
        values = tensor.decoded_values(decode_native(payload, recipe)).astype(np.float64)
        stats = ctx.stats[name]
        delta = stats.view.to_matrix(values - tensor.values.astype(np.float64))
        shift = np.einsum("grd,gd->gr", delta, stats.mean).reshape(-1)
        bias = next(t for t in w.graph.graph.initializer if t.name == bias_name)
        b = numpy_helper.to_array(bias, base_dir=str(ctx.base_dir)).astype(np.float64)
        new_bias[bias_name] = (b.reshape(-1) - shift).astype(np.float32).reshape(b.shape)
        recipes[name] = recipe
    return new_bias, recipes


def _norms(w: WeightRef, base_dir: Path) -> tuple[float, float]:
    """Mean square (1.0 when there is nothing finite) and largest magnitude of
    the finite values of a weight."""
    from onnx_l2c.codec import bits_to_float32

    v = bits_to_float32(tensor_bits(w.tensor, base_dir), w.dtype).astype(np.float64)
    v = v[np.isfinite(v)]
    return (float((v ** 2).mean()), float(np.abs(v).max())) if v.size else (1.0, 0.0)


def _graph_estimate(model: onnx.ModelProto, weights: list[WeightRef]) -> int:
    """Bytes of the output graph: the model without its weights' data, plus a
    Decode node, payload initializer and value_info per weight."""
    size = model.ByteSize()
    for w in weights:
        t = w.tensor
        size -= len(t.raw_data) + 4 * len(t.float_data) + 4 * len(t.int32_data)
        size += 4 * len(w.name) + 160
    return max(size, 0)


def budget_for(opts: CompressOptions, source_bytes: int) -> int:
    if opts.target_size is not None:
        return int(opts.target_size)
    assert opts.target_ratio is not None
    return int(source_bytes / opts.target_ratio)


def noise_note() -> str:
    return f"sensitivity: output divergence under Gaussian noise of {NOISE_REL:.0%} of each tensor's rms"
