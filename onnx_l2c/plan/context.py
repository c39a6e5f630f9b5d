"""Planning a size target: calibrate → statistics → sensitivity → candidates
per tensor from every selected method → global allocation. The writer then
encodes each weight with the method whose candidate the plan chose for it.

Nothing here names a method: the selected methods come from the registry
(`onnx_l2c.passes.registry`), each proposes its candidates for a tensor in
registry order, and a candidate's parameters name the method that quantizes
and encodes them (`method_of`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import onnx

from onnx_l2c.codec import Recipe, serialize
from onnx_l2c.config import CompressOptions
from onnx_l2c.graph.model import WeightRef, tensor_bits
from onnx_l2c.measure.calibration import graph_inputs, load_samples
from onnx_l2c.measure.sensitivity import NOISE_REL, Sensitivity, measure_sensitivity, unit_error
from onnx_l2c.measure.layers import LayerStats, LayerView, layer_view
from onnx_l2c.measure.statistics import collect_statistics
from onnx_l2c.parallel import worker_pool
from onnx_l2c.passes import Knob, Lossless, Method, Params, TensorContext, TensorInput, method_of, registry
from onnx_l2c.plan import allocate
from onnx_l2c.plan.allocate import Allocation, Option, TensorChoices
from onnx_l2c.plan.bias import find_biases
from onnx_l2c.plan.sample import SAMPLED_ELEMENTS, ChannelSample, channel_sample
from onnx_l2c.progress import CANDIDATES, Progress

log = logging.getLogger(__name__)

PAYLOAD_OVERHEAD = 32  # average alignment padding per payload in the sidecar
# The sidecar index (codec/index.py) per weight: its name twice (the tensor
# table and the plain graph's inserted initializer) and dims, plus about this
# much (measured: 71 on EfficientNet-Lite0's 55; 112 leaves room, as a target
# is a maximum); and once its header and trailer.
INDEX_WEIGHT_BYTES = 112
INDEX_FIXED_BYTES = 64
DECODE_NODE_BYTES = 160  # graph bytes per replaced weight besides its name: Decode node, payload, value_info
FILL_TENSORS = 8  # the fill refines this many of the largest quantized tensors
FILL_SLACK = 0.005  # the fill stops when the budget left over is under this share
SHARED_FILL_STEPS = 6  # bisection steps of the shared step factor (uniform mode)


@dataclass
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    numel: int
    scale: float
    sensitivity_measured: bool
    statistics: str  # "full", "diagonal", "rows", "none"
    choices: TensorChoices


@dataclass(frozen=True)
class Encoding:
    """How the writer encodes one weight: the method's report name, whether it
    is lossless, the chosen parameters, and the recipe function; `applies`
    (None: always) says where it can (elsewhere the weight is coded lossless)."""

    method: str
    lossless: bool
    params: Params | None
    recipe: Callable[[TensorInput], Recipe]
    applies: Callable[[TensorInput], bool] | None = None

    def encode(self, tensor: TensorInput) -> Recipe:
        return self.recipe(tensor)

    def applies_to(self, tensor: TensorInput) -> bool:
        return self.applies is None or self.applies(tensor)


LOSSLESS = Encoding("lossless", True, None, Lossless().encode)


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
    options: CompressOptions = field(default_factory=CompressOptions)
    methods: tuple[Method, ...] = ()  # the selected methods that run (in candidate order)
    channel_samples: dict[str, ChannelSample] = field(default_factory=dict)  # the largest tensors, planned on a sample
    samples: Any = None  # the calibration samples, kept only for a refining method (the joint optimizer)

    def tensor_input(self, name: str) -> TensorInput:
        return tensor_input(self.weights[name], self.base_dir)

    def tensor_context(self, name: str) -> TensorContext:
        return TensorContext(self.fit_stats.get(name), self.views.get(name), self.options, self.max_abs)

    def trial(self, name: str, params: Params, grid: int | None = None) -> Option:
        """One candidate of one tensor as the allocation sees it: coded by the
        same code the final encode runs, on the tensor or, for the largest,
        on its channel sample with the size and error scaled up."""
        sample = self.channel_samples.get(name)
        if sample is None:
            tensor, ctx = self.tensor_input(name), self.tensor_context(name)
        else:
            tensor, ctx = sample.tensor, sample.context(self.options, self.max_abs)
        try:
            q = method_of(params).quantize(tensor, params, ctx)
        finally:
            if ctx.stats is not None:
                ctx.stats.forget()
        option = Option(len(q.payload), q.error, params, q.sparsity, grid)
        return sample.scaled(option) if sample is not None else option

    def encoding(self, name: str, option: Option) -> Encoding:
        """How the writer encodes `name` for the chosen option."""
        if option.params is None:
            return LOSSLESS
        params = option.params
        method = method_of(params)

        def recipe(tensor: TensorInput) -> Recipe:
            ctx = self.tensor_context(name)
            try:
                return method.encode(tensor, params, ctx)
            finally:
                if ctx.stats is not None:
                    ctx.stats.forget()

        return Encoding(method.name, False, params, recipe)

    def allocate(self, budget: int, search: str) -> Allocation:
        if not self.mixed:
            search = "shared_grid"
        choices = [t.choices for t in self.tensors.values()]
        available = max(budget - self.fixed_bytes, 0)
        return self._fill(allocate.SEARCHES[search](choices, available), available)

    def allocate_within(self, max_distortion: float) -> Allocation:
        """The fewest bytes whose estimated divergence stays within `max_distortion`."""
        return allocate.within_distortion([t.choices for t in self.tensors.values()], max_distortion)

    def _fill(self, alloc: Allocation, available: int) -> Allocation:
        """Spend what the discrete grid leaves over: refine the step (or weight
        fixing's zero floor and tolerance) of the largest tensors continuously,
        by bisection between the finest grid option that still fits and the
        next finer one, so the output lands on the budget."""
        if alloc.search == "shared_grid":
            return self._fill_shared(alloc, available)
        by_size = sorted((n for n, o in alloc.chosen.items() if o.params is not None),
                         key=lambda n: -alloc.chosen[n].bytes)
        for name in by_size[:FILL_TENSORS]:
            if available - alloc.total_bytes <= FILL_SLACK * available:
                break
            chosen = alloc.chosen[name]
            # the continuous knobs of the candidate's family (smaller = finer),
            # in the order its parameters declare them (e.g. weight fixing's
            # zero floor down to none at the same δ, and then on along δ)
            best = chosen
            for knob in chosen.params.knobs():
                best = self._refine(name, chosen, best, knob, available - alloc.total_bytes + chosen.bytes)
                if knob.linear and getattr(best.params, knob.name) > 0:
                    break  # the bisection stopped inside this knob's range
            if best is not chosen:
                scale = self.tensors[name].scale
                alloc.chosen[name] = best
                alloc.total_bytes += best.bytes - chosen.bytes
                alloc.distortion += scale * (best.error - chosen.error)
        return self._fill_discrete(alloc, available)

    def _fill_discrete(self, alloc: Allocation, available: int) -> Allocation:
        """Then spend what is left on the candidates without a continuous knob
        (an already-quantized weight's integer steps): greedily, the finer
        option that fits and removes the most divergence per byte, until none
        fits. Tensors whose choice has a knob were refined above and stay."""
        while available - alloc.total_bytes > FILL_SLACK * available:
            room = available - alloc.total_bytes
            best: tuple[float, str, Option] | None = None
            for name, chosen in alloc.chosen.items():
                if chosen.params is None or chosen.params.knobs():
                    continue
                scale = self.tensors[name].scale
                for o in self.tensors[name].choices.options:
                    extra = o.bytes - chosen.bytes
                    if 0 < extra <= room and o.error < chosen.error and (o.params is None or not o.params.knobs()):
                        gain = scale * (chosen.error - o.error) / extra
                        if best is None or gain > best[0]:
                            best = (gain, name, o)
            if best is None:
                break
            _, name, option = best
            chosen = alloc.chosen[name]
            alloc.chosen[name] = option
            alloc.total_bytes += option.bytes - chosen.bytes
            alloc.distortion += self.tensors[name].scale * (option.error - chosen.error)
        return alloc

    def _refine(self, name: str, chosen: Option, start: Option, knob: Knob, room: int) -> Option:
        """The finest option of `start`'s family along `knob` that codes in
        `room` bytes: the grid's bracket, then bisection (geometric toward
        half the value; linear toward 0 for a linear knob)."""
        p = start.params
        key = knob.name
        value = getattr(p, key)
        finer = sorted((o for o in self.tensors[name].choices.options
                        if o.params is not None and o.params.family == p.family
                        and all(getattr(o.params, s) == getattr(p, s) for s in knob.same)
                        and getattr(o.params, key) < value), key=lambda o: -getattr(o.params, key))

        def next_finer(v: float) -> float:
            return 0.0 if knob.linear else v / 2

        best, lo, hi = start, value, next_finer(value)
        for o in finer:
            if o.bytes <= room:
                best, lo, hi = o, getattr(o.params, key), next_finer(getattr(o.params, key))
            else:
                hi = getattr(o.params, key)
                break
        # none along a knob whose finest fitting value is already 0
        for _ in range(knob.steps if lo > 0 else 0):
            mid = 0.5 * (lo + hi) if knob.linear else float(np.sqrt(lo * hi))
            trial = self.trial(name, dataclasses.replace(p, **{key: mid}), chosen.grid)
            if trial.bytes <= room:
                lo, best = mid, trial
            else:
                hi = mid
        return best

    def _fill_shared(self, alloc: Allocation, available: int) -> Allocation:
        """Uniform mode: refine one step factor shared by every quantized tensor."""
        names = [n for n, o in alloc.chosen.items() if o.params is not None]
        if not names or available - alloc.total_bytes <= FILL_SLACK * available:
            return alloc
        lo, hi, best = 1.0, 0.5, None  # the grid is a whole octave apart at its fine end
        for _ in range(SHARED_FILL_STEPS):
            mid = float(np.sqrt(lo * hi))
            trial = dict(alloc.chosen)
            for name in names:
                o = trial[name]
                trial[name] = self.trial(name, dataclasses.replace(o.params, alpha=o.params.alpha * mid), o.grid)
            if sum(o.bytes for o in trial.values()) <= available:
                lo, best = mid, trial
            else:
                hi = mid
        if best is None:
            return alloc
        total = sum(o.bytes for o in best.values())
        dist = sum(self.tensors[n].scale * o.error for n, o in best.items())
        return Allocation(best, total, dist, alloc.search, alloc.multiplier)


def tensor_input(w: WeightRef, base_dir: Path) -> TensorInput:
    return TensorInput(w.name, w.dtype, w.shape, tensor_bits(w.tensor, base_dir), w.channel_axis, w.zero_point,
                       w.field_bits)


def lossless_option(tensor: TensorInput) -> Option:
    return Option(len(serialize(Lossless().encode(tensor))), 0.0, None)


def tensor_options(tensor: TensorInput, ctx: TensorContext, methods: tuple[Method, ...]) -> list[Option]:
    """Every candidate of one tensor: lossless, then each method's in registry
    order (every method prepares the context first, e.g. output-aware
    rounding's damping, which the step-grid quantizers then use)."""
    lossless = lossless_option(tensor)
    options = [lossless]
    if not np.isfinite(tensor.values).all():
        return options
    methods = tuple(m for m in methods if m.applies_to(tensor))  # float methods, or those of quantized weights
    for m in methods:
        m.prepare(tensor, ctx)
    for m in methods:
        try:
            options += m.candidates(tensor, ctx, lossless.bytes)
        finally:
            if ctx.stats is not None:
                ctx.stats.forget()  # what the method cached for its candidates
    return options


def selected_methods(opts: CompressOptions, data_free: bool) -> tuple[Method, ...]:
    """The selected methods in candidate order; without calibration data those
    that need it are left out (the data-free note says so)."""
    return tuple(m for name, m in registry().items()
                 if name in opts.methods and not (data_free and m.needs_calibration))


def build_context(model: onnx.ModelProto, base_dir: Path, weights: list[WeightRef], opts: CompressOptions,
                  workers: int, progress: Progress | None = None, measured: PlanContext | None = None,
                  reusable: bool = True, exact: Sequence[WeightRef] = ()) -> PlanContext:
    """Measure (or reuse `measured`'s statistics and sensitivities) and fit candidates.

    With `reusable=False` the measurements serve only this context: the
    uncentered H and per-half H of bias-corrected layers (whose methods fit
    on the centered ones) are dropped as soon as those exist, which halves
    the statistics' memory (another method set, through `measured`, could
    still need them). `exact`: the tensors the writer codes losslessly
    outside the plan, counted in the fixed bytes at their coded size."""
    chosen = [m for name, m in registry().items() if name in opts.methods]
    # The statistics (and bias correction) are of the float weights; an
    # already-quantized one (w.zero_point) is planned without them, its
    # errors in units of its stored step, and its sensitivity measured with
    # integer noise (measure_sensitivity).
    measurable = [w for w in weights if w.zero_point is None]
    # per-tensor choices unless every selected method shares one step grid position
    ctx = PlanContext(weights={w.name: w for w in weights}, base_dir=base_dir, options=opts,
                      mixed=any(m.per_tensor for m in chosen))
    t0 = time.perf_counter()
    samples = None
    if measured is not None:
        ctx.stats, ctx.sensitivity, ctx.data_free = measured.stats, measured.sensitivity, measured.data_free
        ctx.calibration_samples = measured.calibration_samples
        ctx.samples = measured.samples
        ctx.seconds = {k: v for k, v in measured.seconds.items() if k != "candidates"}
        ctx.notes = [n for n in measured.notes if n.startswith("data-free")]
    elif opts.calibration_data is not None:
        inputs = graph_inputs(model)
        samples = load_samples(opts.calibration_data, inputs, opts.calibration_samples)
        ctx.calibration_samples = len(samples)
        ctx.stats = collect_statistics(model, base_dir, measurable, samples, inputs, progress=progress)
        ctx.seconds["statistics"] = time.perf_counter() - t0
        ctx.data_free = False
    if measured is None and opts.calibration_data is None:
        ctx.notes.append("data-free: no calibration data, so distortion is the relative weight error of each "
                         "tensor (all tensors equally important) and rounding is to nearest")
    ctx.methods = selected_methods(opts, ctx.data_free)
    kinds = {w.name: _statistics_kind(ctx.stats.get(w.name)) for w in weights}
    # before the sensitivity runs, which read none of what this may drop
    _center_and_store(ctx, model, measurable, ctx.methods, reusable)
    if samples is not None:
        t1 = time.perf_counter()
        ctx.sensitivity = measure_sensitivity(model, base_dir, weights, ctx.stats, samples, inputs,
                                              progress=progress)
        ctx.seconds["sensitivity"] = time.perf_counter() - t1
        if reusable or any(m.refines for m in ctx.methods):  # a reused planner may add a refining method
            ctx.samples = samples
        del samples
    t2 = time.perf_counter()

    ctx.views = {w.name: layer_view(w) for w in weights}
    # noise_error was taken from the float64 moments when they were finished
    units = {w.name: unit_error(w, ctx.stats.get(w.name)) for w in weights}
    biases = set(ctx.bias_of.values())

    norms = {w.name: _norms(w, base_dir) for w in weights}  # one read of each weight: (mean w², max |w|)
    # weight fixing's one codebook for the whole network is anchored at its largest |w|
    ctx.max_abs = max((m for _, m in norms.values()), default=0.0)

    def work(w: WeightRef) -> tuple[WeightRef, list[Option]]:
        tensor = tensor_input(w, base_dir)
        if w.name in biases:  # corrected after quantization: kept exact
            return w, [lossless_option(tensor)]
        sample = None if tensor.quantized else channel_sample(tensor, ctx.views.get(w.name), ctx.fit_stats.get(w.name))
        if sample is None:
            return w, tensor_options(tensor, ctx.tensor_context(w.name), ctx.methods)
        del tensor
        ctx.channel_samples[w.name] = sample
        options = tensor_options(sample.tensor, sample.context(opts, ctx.max_abs), ctx.methods)
        return w, [sample.scaled(o) for o in options]

    results: list[tuple[WeightRef, list[Option]]] = []
    with worker_pool(workers) as pool:
        for i, item in enumerate(pool.map(work, weights)):
            results.append(item)
            if progress is not None:
                progress(i + 1, len(weights), CANDIDATES)
    ctx.seconds["candidates"] = time.perf_counter() - t2

    measured = ctx.sensitivity.scale if ctx.sensitivity is not None else {}
    # Tensors without a measurement (in subgraphs, bfloat16) get the median
    # divergence per unit of *relative* noise of the measured ones.
    rms2 = {name: ms for name, (ms, _) in norms.items()}
    rel = [measured[w.name] * rms2[w.name] * units[w.name]
           for w, _ in results if w.name in measured]
    fallback_rel = float(np.median(rel)) if rel else 1.0
    # Tensors whose noise did not move the outputs on the calibration samples
    # get the least measured sensitivity: compressed hardest, as the data
    # says, but not treated as free (other inputs may take their branch).
    no_effect = ctx.sensitivity.no_effect if ctx.sensitivity is not None else set()
    least_rel = float(np.min(rel)) if rel else 1.0
    for w, options in results:
        if w.name in measured:
            scale, is_measured = measured[w.name], True
        else:
            base_rel = least_rel if w.name in no_effect else fallback_rel
            scale = base_rel / max(rms2[w.name] * units[w.name], 1e-300)
            is_measured = False
        kind = kinds[w.name]
        ctx.tensors[w.name] = TensorPlan(w.name, w.shape, w.numel, scale, is_measured, kind,
                                         TensorChoices(w.name, scale, options))
    if ctx.channel_samples:
        sampled = sorted(ctx.channel_samples)
        ctx.notes.append(f"{len(sampled)} tensors of more than {SAMPLED_ELEMENTS} weights were planned on a sample "
                         "of their output channels (sizes and errors scaled up; the write codes them whole): "
                         + ", ".join(sampled[:8]) + ("…" if len(sampled) > 8 else ""))
    unmeasured = len(results) - len(rel) - len(no_effect)
    if not ctx.data_free and unmeasured > 0:
        ctx.notes.append(f"{unmeasured} tensors without a measured sensitivity use the median of the measured ones")
    if no_effect:
        ctx.notes.append(f"{len(no_effect)} tensors did not change the outputs on the calibration samples (e.g. "
                         "a branch the samples never take): they get the least measured sensitivity, so they are "
                         "compressed hardest but not treated as free: "
                         + ", ".join(sorted(no_effect)[:8]) + ("…" if len(no_effect) > 8 else ""))
    ctx.fixed_bytes = (_graph_estimate(model, weights, exact) + PAYLOAD_OVERHEAD * len(weights)
                       + exact_bytes(exact, base_dir))
    return ctx



def _center_and_store(ctx: PlanContext, model: onnx.ModelProto, weights: list[WeightRef],
                      methods: tuple[Method, ...], reusable: bool) -> None:
    """The statistics the methods fit on: for a layer whose bias absorbs the
    mean output shift (when a selected method corrects biases), its centered
    twin, stored in MOMENT_DTYPE like the others. Without `reusable` the
    uncentered H of such layers is dropped (only their mean is read again)."""
    ctx.fit_stats = dict(ctx.stats)
    if ctx.stats and any(m.corrects_bias for m in methods):
        ctx.bias_of = find_biases(model, weights, ctx.stats)
        for name in ctx.bias_of:
            ctx.fit_stats[name] = ctx.stats[name].centered()
            ctx.fit_stats[name].store_moments()
            if not reusable:
                ctx.stats[name].release_fit()
    for stats in ctx.stats.values():
        stats.store_moments()


def _statistics_kind(stats: LayerStats | None) -> str:
    """What the statistics of a layer hold, for the report."""
    if stats is None:
        return "none"
    return "full" if stats.hessian is not None else "diagonal" if stats.diagonal is not None else "rows"


def _norms(w: WeightRef, base_dir: Path) -> tuple[float, float]:
    """Mean square (1.0 when there is nothing finite) and largest magnitude of
    the finite values of a weight."""
    v = tensor_input(w, base_dir).values.astype(np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    return (float((v ** 2).mean()), float(np.abs(v).max())) if v.size else (1.0, 0.0)


def _inline_bytes(t: onnx.TensorProto) -> int:
    """What a tensor's data adds to the serialized graph, exactly (typed fields
    are varints: an int8 value in int32_data takes 1 or 2 bytes, not 4)."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return 0
    return max(t.ByteSize() - onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims).ByteSize(), 0)


def _graph_estimate(model: onnx.ModelProto, weights: list[WeightRef], exact: Sequence[WeightRef] = ()) -> int:
    """Bytes of the output graph: the model without its weights' data, plus a
    Decode node, payload initializer and value_info per weight; and the
    sidecar index's share (its entry per weight, its trailer)."""
    size = model.ByteSize() + (INDEX_FIXED_BYTES if weights or exact else 0)
    for w in weights:
        t = w.tensor
        size -= len(t.raw_data) + 4 * len(t.float_data) + 4 * len(t.int32_data)
        size += 6 * len(w.name) + DECODE_NODE_BYTES + 8 * len(w.shape) + INDEX_WEIGHT_BYTES
    for w in exact:
        size -= _inline_bytes(w.tensor)
        size += 6 * len(w.name) + DECODE_NODE_BYTES + 8 * len(w.shape) + INDEX_WEIGHT_BYTES
    return max(size, 0)


def exact_bytes(exact: Sequence[WeightRef], base_dir: Path) -> int:
    """The payload bytes of the tensors the writer codes losslessly and the
    plan does not choose for (integers, bool, float8: `WeightAnalysis.exact`):
    fixed, so the budget does not buy them, and known exactly before the write."""
    return sum(lossless_option(tensor_input(w, base_dir)).bytes + PAYLOAD_OVERHEAD for w in exact)


def budget_for(opts: CompressOptions, source_bytes: int) -> int:
    if opts.target_size is not None:
        return int(opts.target_size)
    assert opts.target_ratio is not None
    return max(1, int(source_bytes / opts.target_ratio))


def noise_note() -> str:
    return f"sensitivity: output divergence under Gaussian noise of {NOISE_REL:.0%} of each tensor's rms"
