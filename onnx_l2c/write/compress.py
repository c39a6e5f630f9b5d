"""Compression pipeline: load → analyse → encode each weight → write.

Weights are encoded in parallel (a bounded window of tensors in flight, so
memory stays proportional to a few tensors, not the model) and written in a
fixed order, so the same input and options give byte-identical outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_l2c.codec import DOMAIN, DTYPE_NAMES, SIDECAR_SUFFIX, Recipe, decode_native, serialize
from onnx_l2c.codec.index import MAX_NAME_BYTES, MAX_PLAIN_BYTES, IndexTensor, build_index, trailer
from onnx_l2c.config import SAFE_MAX_DISTORTION, CompressOptions, option_owner, parse_methods
from onnx_l2c.errors import FileError, L2CError, ModelError, OptionError, PayloadError, TargetError, literal
from onnx_l2c.files import AlignedWriter, AtomicOutputs
from onnx_l2c.graph.model import (WeightRef, embed_external, external_files, find_weights, iter_graphs, load_model,
                                  model_bytes, tensor_bits)
from onnx_l2c.graph.edit import (decode_nodes, defined_names, drop_initializers, mark_compressed, plain_graph,
                                  replace_with_decode)
from onnx_l2c.parallel import worker_pool
from onnx_l2c.passes import PresetQuantizer, TensorInput, registry
from onnx_l2c.passes.base import RefineJob
from onnx_l2c.plan.bias import bias_corrections
from onnx_l2c.plan.context import LOSSLESS, Encoding
from onnx_l2c.progress import WRITING, Progress
from onnx_l2c.write.results import CompressResult, TensorReport

log = logging.getLogger(__name__)

# Re-allocations when the written output misses the budget (the graph's size is estimated).
WRITE_ATTEMPTS = 3
WRITE_MEMORY = 1 << 30  # bytes of working memory the encodes in flight may need together (one always runs)
PLANNED_ENCODE_COPIES = 8  # a planned lossy encode's working memory, in multiples of its tensor's bytes
BUDGET_TOLERANCE = 0.01  # re-allocate when the output misses the budget by more
REFINED_TOLERANCE = 0.03  # a refined plan's output is kept this near the budget (re-allocating drops it)
OUT_OF_REACH = 1.03  # an output this far over the budget: the target is out of the methods' reach (TargetError)


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + SIDECAR_SUFFIX)


def _preset_encoding(opts: CompressOptions) -> Encoding | None:
    """The presets' fixed quantizer (no size target), or None for lossless."""
    bits = opts.quant_bits
    if bits is None:
        return None
    quantizer = PresetQuantizer(bits=bits, dead_zone=opts.dead_zone)
    return Encoding(quantizer.name, False, None, quantizer.encode, quantizer.applies_to)


_METRIC_CHUNK = 1 << 20  # elements: float64 temporaries of a few MiB, not of the whole tensor


def _error_and_sparsity(ref: np.ndarray, rec: np.ndarray) -> tuple[float, float]:
    """‖rec − ref‖ / ‖ref‖ and the share of zeros in rec, in float64, a chunk
    at a time (a 1 GB weight would otherwise need 4 GB of temporaries)."""
    ref, rec = ref.reshape(-1), rec.reshape(-1)
    err = norm = 0.0
    zeros = 0
    for i in range(0, ref.size, _METRIC_CHUNK):
        a = ref[i:i + _METRIC_CHUNK].astype(np.float64)
        d = rec[i:i + _METRIC_CHUNK].astype(np.float64) - a
        err += float(d @ d)
        norm += float(a @ a)
        zeros += int(np.count_nonzero(rec[i:i + _METRIC_CHUNK] == 0))
    return float(np.sqrt(err) / max(np.sqrt(norm), 1e-30)), zeros / max(ref.size, 1)


def _encode(w: WeightRef, base_dir: Path, encoding: Encoding) -> tuple[bytes, Recipe, TensorReport]:
    bits = tensor_bits(w.tensor, base_dir)
    tensor = TensorInput(w.name, w.dtype, w.shape, bits, w.channel_axis, w.zero_point, w.field_bits)
    if not encoding.applies_to(tensor):
        encoding = LOSSLESS
    recipe = encoding.encode(tensor)
    payload = serialize(recipe)
    rel, sparsity = 0.0, 0.0
    if not encoding.lossless:
        rel, sparsity = _error_and_sparsity(tensor.values, tensor.decoded_values(decode_native(payload, recipe)))
    params = encoding.params.describe() if encoding.params is not None else None
    report = TensorReport(w.name, encoding.method, DTYPE_NAMES[w.dtype], w.shape, w.nbytes, len(payload), rel,
                          sparsity, params)
    return payload, recipe, report


@dataclass
class _Source:
    proto: onnx.ModelProto
    src_dir: Path
    source_bytes: int
    path: Path | None


def _load_source(model: str | os.PathLike | onnx.ModelProto, base_dir: str | os.PathLike | None) -> _Source:
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        src_dir = Path(base_dir) if base_dir is not None else Path(".")
        files = external_files(proto, src_dir)
        # external data is read from base_dir, never from the working directory
        if base_dir is None and files:
            raise FileError("the ModelProto keeps weights in external data files: pass base_dir=, the folder "
                            "they lie in")
        source_bytes = proto.ByteSize() + sum(f.stat().st_size for f in files if f.is_file())
        source = _Source(proto, src_dir, source_bytes, None)
    else:
        if base_dir is not None:
            raise OptionError(f"{literal(model)}: base_dir is for an onnx.ModelProto; a model path's external "
                              "data is read from the model's own folder", "base_dir")
        path = Path(model)
        proto = load_model(path)
        source = _Source(proto, path.parent, model_bytes(path, proto), path)
    if any(op.domain == DOMAIN for op in proto.opset_import):
        raise ModelError(f"{model}: already compressed by onnx_l2c (uses domain {DOMAIN})")
    return source


def check_output(model: str | os.PathLike | onnx.ModelProto | None, output: Path) -> None:
    """The output's folder exists and the output is not the input model (a path; None or a ModelProto: none)."""
    if not output.parent.is_dir():
        raise FileError(f"{literal(output)}: the output folder {literal(output.parent)} does not exist")
    if isinstance(model, (str, os.PathLike)) and output.resolve() == Path(model).resolve():
        raise OptionError(f"{literal(output)}: output would overwrite the input model")


def compress(model: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike, *,
             base_dir: str | os.PathLike | None = None, progress: Progress | None = None,
             **options: Any) -> CompressResult:
    """Compress `model` into `output` (+ its sidecar `output.l2c`).

    `model` is a path or an `onnx.ModelProto` (whose external data, if any, is
    read relative to `base_dir`). Options: see `onnx_l2c.config.OPTIONS`.
    With `target_ratio` / `target_size` the model is calibrated and planned
    first (see `Planner`, which reuses that work across several targets); a
    target the selected methods cannot reach raises TargetError and writes
    nothing, unless `allow_target_miss=True` (then the smallest file they
    reach is written, with a warning).
    """
    start = time.perf_counter()
    opts = CompressOptions.from_kwargs(**options)
    output = Path(output)
    check_output(model, output)  # before minutes of planning, not after
    if opts.has_target:
        planner = Planner(model, base_dir=base_dir, progress=progress, _options=opts, _single_use=True)
        return planner.compress(output, target_ratio=opts.target_ratio, target_size=opts.target_size,
                                search=opts.search.value, report=opts.report,
                                allow_target_miss=opts.allow_target_miss or None, _start=start)
    if opts.safe_plan:
        planner = Planner(model, base_dir=base_dir, progress=progress, _options=opts, _single_use=True,
                          _safe=True)
        return planner.compress(output, report=opts.report, _start=start, _max_distortion=SAFE_MAX_DISTORTION)
    source = _load_source(model, base_dir)
    analysis = find_weights(source.proto, opts.min_elements)
    workers = opts.workers or os.cpu_count() or 1
    with AtomicOutputs() as outputs:
        result, _ = _write(source.proto, analysis, source.src_dir, output, opts, source.source_bytes, workers,
                           progress, start, None, outputs)
        outputs.commit()
    if opts.report is not None:
        from onnx_l2c.write.report import write_report

        write_report(result, None, None, opts.report)
    return result


class Planner:
    """Calibrate, measure sensitivities and fit every tensor's candidates once;
    then write the model at any number of size targets.

        planner = onnx_l2c.Planner("model.onnx", calibration_data=reader)
        for r in (6, 8, 10):
            planner.compress(f"small{r}.onnx", target_ratio=r)

    Options as for `compress` (targets, search, report and allow_target_miss
    are per call; the options that only mean something with a target are
    checked as if it were given).
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, *, base_dir: str | os.PathLike | None = None,
                 progress: Progress | None = None, _options: CompressOptions | None = None,
                 _reuse: "Planner | None" = None, _single_use: bool = False, _safe: bool = False,
                 **options: Any) -> None:
        from onnx_l2c.plan import context as planning

        self.options = _options if _options is not None else CompressOptions.for_planner(**options)
        self.progress = progress
        self.source = _reuse.source if _reuse is not None else _load_source(model, base_dir)
        self.workers = self.options.workers or os.cpu_count() or 1
        # for size targets, already-quantized weights are planned too (coarser integer
        # grids); the safe preset (`_safe`, no target) keeps them exact
        self.plan_quantized = not _safe
        analysis = find_weights(self.source.proto, self.options.min_elements, self.plan_quantized)
        self.context = planning.build_context(self.source.proto, self.source.src_dir, analysis.weights,
                                              self.options, self.workers, progress=progress,
                                              measured=_reuse.context if _reuse is not None else None,
                                              reusable=not _single_use, exact=analysis.exact)
        self.reusable = not _single_use

    def _refine(self, work: onnx.ModelProto, encodings: dict[str, Encoding],
                opts: CompressOptions) -> list[_Refinement]:
        return _refine_plan(self, work, encodings, opts)

    def with_methods(self, methods: str | tuple[str, ...], **options: Any) -> "Planner":
        """Another planner for the same model and calibration measurements,
        with other methods and method options (only the candidates are
        fitted again). The method options given before are kept for the
        methods that stay selected."""
        if not self.reusable:
            raise OptionError("this planner was built for one compress call (its measurements are trimmed); "
                              "build a Planner to reuse them with other methods")
        chosen = parse_methods(methods)
        kept = {name: value for name, value in self.options.given_options().items()
                if option_owner(name) in (None, *chosen)}
        opts = CompressOptions.for_planner(**(kept | options | {"methods": chosen}))
        return Planner(None, progress=self.progress, _options=opts, _reuse=self)  # type: ignore[arg-type]

    def compress(self, output: str | os.PathLike, *, target_ratio: float | None = None,
                 target_size: int | None = None, search: str | None = None,
                 report: str | os.PathLike | None = None, allow_target_miss: bool | None = None,
                 _start: float | None = None, _max_distortion: float | None = None) -> CompressResult:
        """Write `output` at one size target. A target the methods cannot reach
        raises TargetError and writes nothing, unless `allow_target_miss`.
        (`_max_distortion`, the safe preset: no target, but the fewest bytes
        whose estimated divergence stays within it.)"""
        from onnx_l2c.plan import context as planning
        from onnx_l2c.write.report import plan_summary, write_report

        start = _start if _start is not None else time.perf_counter()
        if target_ratio is None and target_size is None and _max_distortion is None:
            raise OptionError("Planner.compress needs target_ratio or target_size")
        updates: dict[str, Any] = {"target_ratio": target_ratio, "target_size": target_size}
        if report is not None:  # else the Planner's own report option, if any
            updates["report"] = report
        if search is not None:
            updates["search"] = search
        if allow_target_miss is not None:
            updates["allow_target_miss"] = allow_target_miss
        opts = CompressOptions.from_kwargs(**(self.options.given_options() | updates))
        output = Path(output)
        check_output(self.source.path, output)
        ctx = self.context
        budget = planning.budget_for(opts, self.source.source_bytes) if opts.has_target else 0
        result: CompressResult | None = None
        refinements: list[_Refinement] = []
        refined = False
        previous: dict | None = None
        fixed = ctx.fixed_bytes
        # Each attempt writes temporary files; only the last one's become the
        # output, and only once the target was reached (or a miss allowed).
        staged: AtomicOutputs | None = None
        try:
            # only the recipes of methods that summarize them are kept (a few arrays, not the model)
            summarizing = [m for m in registry().values() if m.summary_key is not None]
            summarized = {m.name for m in summarizing}
            for attempt in range(WRITE_ATTEMPTS):
                if _max_distortion is not None:
                    allocation = ctx.allocate_within(_max_distortion)
                    budget = allocation.total_bytes + ctx.fixed_bytes  # what the plan spends (for the report)
                else:
                    allocation = ctx.allocate(budget, opts.search.value)
                if previous is not None and allocation.chosen == previous:
                    break  # the candidates cannot get closer to the budget
                previous = dict(allocation.chosen)
                encodings = {name: ctx.encoding(name, option) for name, option in allocation.chosen.items()}
                new_bias, recipes = bias_corrections(ctx, allocation.chosen)
                for name, recipe in recipes.items():  # encoded once, for the bias correction
                    encodings[name] = dataclasses.replace(encodings[name], recipe=lambda _, r=recipe: r)
                work = onnx.ModelProto()
                work.CopyFrom(self.source.proto)
                for t in work.graph.initializer:
                    if t.name in new_bias:
                        t.CopyFrom(numpy_helper.from_array(new_bias[t.name], t.name))
                if attempt == 0:
                    refinements = self._refine(work, encodings, opts)
                refined = attempt == 0 and any(r.changed for r in refinements)
                work_analysis = find_weights(work, opts.min_elements, self.plan_quantized)
                if staged is not None:
                    staged.discard()
                staged = AtomicOutputs()
                result, encoded = _write(work, work_analysis, self.source.src_dir, output, opts,
                                         self.source.source_bytes, self.workers, self.progress, start, encodings,
                                         staged, summarized)
                # The payload sizes are exact; the graph's size was estimated.
                # Correct the estimate by what the written files show and
                # re-allocate if the output misses the budget by more than 1%.
                if _max_distortion is not None:
                    break  # no size to land on
                if abs(result.output_bytes - budget) <= BUDGET_TOLERANCE * budget or allocation.total_bytes == 0:
                    break
                if refined and abs(result.output_bytes - budget) <= REFINED_TOLERANCE * budget:
                    break  # re-allocating would drop the refinement
                predicted = allocation.total_bytes + ctx.fixed_bytes
                ctx.fixed_bytes += result.output_bytes - predicted
                log.info("output %d bytes for a budget of %d; re-allocating (attempt %d)", result.output_bytes,
                         budget, attempt + 2)
            assert result is not None and staged is not None
            if _max_distortion is None and result.output_bytes > OUT_OF_REACH * budget:
                # every tensor at its smallest candidate still does not fit
                reach = (f"out of reach of methods {','.join(opts.methods)}: their smallest candidates give "
                         f"{result.output_bytes} bytes (ratio {result.ratio:.2f})")
                if not opts.allow_target_miss:
                    target = (f"{{target_size:{opts.target_size}}}" if opts.target_size is not None
                              else f"{{target_ratio:{opts.target_ratio:g}}} ({budget} bytes)")
                    raise TargetError(f"the target {target} is {reach}; nothing was written. Lower the target, "
                                      "add methods to {methods}, or give {allow_target_miss:True} to write that "
                                      "smallest file")
                missed = f"the target ({budget} bytes, ratio {self.source.source_bytes / budget:.4g}) is {reach}"
                log.warning("%s; wrote that smallest file, as allowed", missed)
            else:
                missed = None
            result.plan = plan_summary(ctx, allocation, opts, budget, self.source.source_bytes, _max_distortion)
            for outcome in refinements:
                notes = outcome.notes
                if outcome.changed and not refined:
                    notes = [*notes, f"{outcome.key}: its result was dropped, the written size missed the target by "
                                     f"more than {REFINED_TOLERANCE:.0%} and the plan was re-allocated"]
                result.plan["notes"] = [*result.plan["notes"], *notes]
                if outcome.summary:
                    result.plan[outcome.key] = outcome.summary | {"applied": outcome.summary.get("applied", False)
                                                                  and refined}
            if missed is not None:
                result.plan["notes"] = [*result.plan["notes"], missed]
            result.plan["target_missed"] = missed is not None
            # network-wide summaries of the recipes each method encoded (e.g. weight
            # fixing's codebook, unification's blocks), under the method's report key
            for method in summarizing:
                if encoded.get(method.name):
                    summary = method.summary(encoded[method.name])
                    if summary is not None:
                        result.plan[method.summary_key] = summary
            staged.commit()
        finally:
            ctx.fixed_bytes = fixed  # the correction is specific to this output's names
            if staged is not None:
                staged.discard()  # what was not committed (a failed or superseded attempt)
        result.seconds = time.perf_counter() - start
        if opts.report is not None:
            write_report(result, ctx, allocation, opts.report)
        return result


@dataclass
class _Refinement:
    key: str  # the method's name: its summary's key in the plan report
    notes: list[str]
    summary: dict[str, Any]
    changed: bool  # some recipe was replaced


def _refine_plan(planner: "Planner", work: onnx.ModelProto, encodings: dict[str, Encoding],
                 opts: CompressOptions) -> list[_Refinement]:
    """Let the refining methods (the joint optimizer) replace planned recipes.
    Every lossy tensor is encoded here once (the writer then reuses it)."""
    ctx = planner.context
    refiners = [m for m in ctx.methods if m.refines]
    if not refiners or ctx.samples is None:
        return []
    tensors, recipes, params = {}, {}, {}
    for name, encoding in list(encodings.items()):
        if encoding.lossless:
            continue
        tensor = ctx.tensor_input(name)
        if not encoding.applies_to(tensor):
            continue
        recipe = encoding.encode(tensor)
        tensors[name], recipes[name], params[name] = tensor, recipe, encoding.params
        encodings[name] = dataclasses.replace(encoding, recipe=lambda _, r=recipe: r)
    out = []
    for method in refiners:
        report = planner.progress

        def progress(done: int, total: int, metrics: dict[str, float], label: str = method.name) -> None:
            if report is not None:  # the same callback as the write's, with the step's numbers as its text
                report(done, total, f"{label}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

        job = RefineJob(work, planner.source.proto, ctx.base_dir, tensors, recipes, params, ctx.samples, opts,
                        progress)
        outcome = method.refine(job)
        if outcome is None:
            continue
        for name, recipe in outcome.recipes.items():
            encodings[name] = dataclasses.replace(encodings[name], recipe=lambda _, r=recipe: r)
            recipes[name] = recipe
        out.append(_Refinement(method.name, outcome.notes, outcome.summary, bool(outcome.recipes)))
    return out


def _write_index(proto: onnx.ModelProto, data: bytes, output: Path, sidecar_tmp: Path) -> None:
    """End the sidecar with its index (codec/index.py): the tensors and the plain
    graph as edits of `data`, the model file's bytes. Left out (the zero-overhead
    C API then says so; the Python loader rewrites the graph itself) where
    onnxruntime could not take every weight through AddExternalInitializers."""
    try:
        nodes = decode_nodes(proto, str(output))
    except PayloadError as exc:  # e.g. one name decoded in two sibling subgraphs: the loaders refuse it too
        log.info("%s: no sidecar index (%s)", output.name, exc)
        return
    bad = next((e.name for e in nodes if not 0 < len(e.name.encode()) <= MAX_NAME_BYTES or "\0" in e.name), None)
    if bad is not None:
        log.info("%s: no sidecar index (tensor name %r: the index holds NUL-free names of 1 to %d bytes)",
                 output.name, bad[:80], MAX_NAME_BYTES)
        return
    plain = plain_graph(proto, nodes)
    if plain is None:
        log.info("%s: no sidecar index (a weight no node reads, or a subgraph output): the C API cannot load "
                 "it without the custom op", output.name)
        return
    plain_bytes = plain.SerializeToString()
    del plain
    if len(plain_bytes) > MAX_PLAIN_BYTES:
        log.info("%s: no sidecar index (the plain graph passes protobuf's 2 GiB)", output.name)
        return
    record = build_index(data, plain_bytes, [IndexTensor(e.name, e.dtype, e.dims, e.offset, e.length)
                                             for e in nodes])
    offset = sidecar_tmp.stat().st_size  # right after the last payload: the record is read bytewise, unaligned
    with open(sidecar_tmp, "ab") as fh:  # this run's own temporary sidecar, finished here
        fh.write(record)
        fh.write(trailer(offset, len(record), record))


def _write(proto: onnx.ModelProto, analysis: Any, src_dir: Path, output: Path, opts: CompressOptions,
           source_bytes: int, workers: int, progress: Progress | None, start: float,
           planned: dict[str, Encoding] | None, outputs: AtomicOutputs,
           summarized: frozenset[str] | set[str] = frozenset()) -> tuple[CompressResult, dict[str, list[Recipe]]]:
    """Encode every weight (the plan's encodings, else the preset's quantizer
    where it applies and lossless elsewhere) and write the graph and sidecar
    as temporary files of `outputs` (the caller commits them).
    Also returns the recipes of the methods in `summarized`, for their summaries."""
    weights = analysis.weights + analysis.exact
    exact = {id(w) for w in analysis.exact}  # not by name: sibling subgraphs may reuse one
    preset = _preset_encoding(opts)
    encoded: dict[str, list[Recipe]] = {}
    sidecar = sidecar_path(output)
    reports: list[TensorReport] = []
    used_names = defined_names(proto.graph)
    original_names = set(used_names)

    sidecar_tmp = outputs.temp_for(sidecar)
    with open(sidecar_tmp, "wb") as fh, worker_pool(workers) as pool:
        writer = AlignedWriter(fh)
        window: deque[tuple[WeightRef, Future, int]] = deque()
        todo = iter(weights)
        pending = next(todo, None)
        done = 0
        while True:
            # A few tensors in flight, and no more than their working
            # memory allows: a planned lossy encode holds several float64
            # copies of its tensor (GPTQ, the error on the statistics), so
            # tensors of hundreds of MB are encoded one at a time.
            while pending is not None and len(window) < 2 * workers:
                w = pending
                if id(w) in exact:
                    encoding = LOSSLESS
                elif planned is not None:
                    encoding = planned.get(w.name, LOSSLESS)
                else:
                    encoding = preset if preset is not None else LOSSLESS
                cost = w.nbytes * (PLANNED_ENCODE_COPIES if planned is not None and not encoding.lossless else 1)
                if window and sum(c for _, _, c in window) + cost > WRITE_MEMORY:
                    break
                window.append((w, pool.submit(_encode, w, src_dir, encoding), cost))
                pending = next(todo, None)
            if not window:
                break
            w, fut, _ = window.popleft()
            try:
                payload, recipe, report = fut.result()
            except L2CError:
                raise
            except (ValueError, TypeError, MemoryError, OverflowError) as exc:
                raise L2CError(f"tensor {w.name!r} in {w.graph.path}: encoding failed: "
                               f"{type(exc).__name__}: {exc}") from exc
            offset, length = writer.add(payload)
            replace_with_decode(w, offset, length, sidecar.name, used_names)
            if w.constant_node is None:
                for key in ("raw_data", "float_data", "int32_data", "int64_data", "uint64_data", "double_data"):
                    w.tensor.ClearField(key)  # free the bytes now; dropped below
            reports.append(report)
            if report.method in summarized:
                encoded.setdefault(report.method, []).append(recipe)
            done += 1
            if progress is not None:
                progress(done, len(weights), WRITING)
    drop_initializers(proto, {w.name for w in weights if w.constant_node is None})
    payload_names = set(used_names) - original_names
    for ref in iter_graphs(proto.graph):
        for t in ref.graph.initializer:
            if t.name not in payload_names:
                embed_external(t, src_dir)  # kept tensors travel inside the small graph
    if weights:  # with nothing coded the graph stays the original's, not one byte larger
        mark_compressed(proto)
    graph_tmp = outputs.temp_for(output)
    data = proto.SerializeToString()
    if weights:
        _write_index(proto, data, output, sidecar_tmp)
    graph_tmp.write_bytes(data)
    sidecar_bytes = sidecar_tmp.stat().st_size

    result = CompressResult(output=output, sidecar=sidecar, source_bytes=source_bytes, graph_bytes=len(data),
                            sidecar_bytes=sidecar_bytes, seconds=time.perf_counter() - start,
                            options=opts.as_dict(), tensors=reports, skipped_small=analysis.skipped_small)
    return result, encoded
