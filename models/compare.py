"""Side-by-side benchmark: onnx_l2c's presets beside the tools users pick today.

    onnx-l2c bench compare [--models efficientnet_lite0,minilm] [--quick]
    onnx-l2c bench compare ...

For every zoo model, in one run: this project's presets and bit widths and the
peers of models/peers.py (zstd, fp16, onnxruntime int8/int4, NNCodec). For each
result: size ratio, the task's fidelity metrics on the evaluation split,
conversion seconds, session-creation seconds and per-run latency against the
original. Tool failures are results with the exact error. Writes
OUT/compare.json, OUT/compare.md and OUT/<model>.png (size ratio on x, the
headline fidelity metric on y, one line per method).

Every result is scored on two sets: the task's evaluation split and its
``other`` split (inputs from other sources). A row meets the bar only if it
meets it on both (``passes_eval``, ``passes_other``, ``passes``), so "largest
ratio that meets the bar" is decided by the worse of the two; the table shows
how many samples decided each (disagreements and what the bar allows). Rows
saved before the other split existed load with ``passes_other`` unset and are
marked "eval only".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .evaluate import CALIBRATION_SAMPLES, SCORED_SPLITS, evaluate, model_size, open_session, reference_results
from .fidelity import is_confidence_key
from .tasks import TASKS
from .zoo import zoo_path

log = logging.getLogger(__name__)

OUR_SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("onnx_l2c safe (default)", {}),  # compress with no options
    ("onnx_l2c lossless", {"preset": "lossless"}),
    ("onnx_l2c uniform", {"preset": "int8"}),
    ("onnx_l2c uniform", {"bits": 6}),
    ("onnx_l2c uniform", {"bits": 5}),
    ("onnx_l2c uniform", {"bits": 4}),
]
QUICK_SETTINGS = [OUR_SETTINGS[0], OUR_SETTINGS[1], OUR_SETTINGS[2], OUR_SETTINGS[5]]

# A row's conversion time or peak memory this much above the baseline run's
# same row is a regression (`--baseline`, shown in the summary).
REGRESSION = 1.20

# Size targets (calibrated on the task's calibration split), as an ablation:
# each row adds one method to the one before, at the same target ratios.
QUICK_TARGET_RATIOS = (6.0,)
GOAL_RATIOS = (4.0, 6.0, 8.0, 10.0, 12.0, 16.0)
L2C_MINUTES = 10.0  # the joint optimizer's time budget per target in these rows


@dataclass(frozen=True)
class TargetSet:
    """One row group of the size-target ablation: methods (and their options) at several ratios."""

    label: str
    methods: str
    search: str
    ratios: tuple[float, ...]
    options: tuple[tuple[str, Any], ...] = ()  # compress options beyond the methods
    variant: str = ""  # told apart from another set of the same methods by this

    @property
    def key(self) -> str:
        """How --ablation names it: the methods joined by '+', then ':variant'."""
        return self.methods.replace(",", "+") + (f":{self.variant}" if self.variant else "")


ABLATION: list[TargetSet] = [
    TargetSet("onnx_l2c target: uniform", "uniform", "lagrange", (4.0, 6.0, 8.0)),
    TargetSet("onnx_l2c target: +rounding", "uniform,rounding", "lagrange", (4.0, 6.0, 8.0, 10.0)),
    TargetSet("onnx_l2c target: +mixed", "rounding,mixed", "lagrange",
              (4.0, 5.0, 6.0, 8.0, 9.0, 10.0, 11.0, 12.0, 16.0)),
    TargetSet("onnx_l2c target: +mixed, path search", "rounding,mixed", "path", (6.0, 10.0)),
    TargetSet("onnx_l2c target: +decorrelate", "rounding,mixed,decorrelate", "lagrange", (6.0, 10.0)),
    # each method of issue 5 alone (rate–fidelity curves), and every method together
    TargetSet("onnx_l2c target: fixing alone", "fixing", "lagrange", (4.0, 6.0, 8.0, 10.0)),
    TargetSet("onnx_l2c target: unify alone", "unify", "lagrange", (4.0, 6.0, 8.0, 10.0)),
    TargetSet("onnx_l2c target: rounding+unify", "rounding,unify", "lagrange", (6.0, 8.0, 10.0)),
    TargetSet("onnx_l2c target: all methods", "rounding,mixed,decorrelate,fixing,unify", "lagrange", (6.0, 8.0, 10.0)),
    # the joint optimizer (issue 15): its default (the transform: steps and dead zones), then the weights too;
    # each bounded by the 15 minutes a target may take
    TargetSet("onnx_l2c target: +l2c", "rounding,mixed,l2c", "lagrange", GOAL_RATIOS,
              (("finetune_phases", "transform"), ("finetune_minutes", L2C_MINUTES)), "transform"),
    TargetSet("onnx_l2c target: +l2c weights", "rounding,mixed,l2c", "lagrange", GOAL_RATIOS,
              (("finetune_phases", "all"), ("finetune_minutes", L2C_MINUTES)), "all"),
]
QUICK_ABLATION = [ABLATION[2]]


@dataclass
class Row:
    model: str
    method: str
    params: dict[str, Any]
    ratio: float | None = None
    size_bytes: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # on the evaluation split
    passes: bool | None = None  # meets the bar on every set it was scored on
    convert_s: float | None = None
    create_s: float | None = None
    latency_ratio: float | None = None
    error: str | None = None
    metrics_other: dict[str, float] = field(default_factory=dict)  # on the other split
    passes_eval: bool | None = None
    passes_other: bool | None = None  # None: not scored on the other split (a row saved before it existed)

    def __post_init__(self) -> None:
        if self.passes_eval is None and self.passes is not None and not self.metrics_other:
            self.passes_eval = self.passes  # a saved row from before the other split: its verdict was the evaluation's


def _timings(base: Any, candidate: Path, feeds: dict | None, runs: int) -> tuple[float, float | None]:
    """(median session-creation seconds of the candidate, its median latency / the original's
    session `base`; None without feeds)."""
    create = []
    for _ in range(3):
        start = time.perf_counter()
        sess = open_session(candidate)
        create.append(time.perf_counter() - start)
    if feeds is None:
        return statistics.median(create), None
    sess.run(None, feeds)
    lat_c, lat_o = [], []
    for _ in range(runs):
        for s, acc in ((base, lat_o), (sess, lat_c)):
            start = time.perf_counter()
            s.run(None, feeds)
            acc.append(time.perf_counter() - start)
    return statistics.median(create), statistics.median(lat_c) / statistics.median(lat_o)


def _measure(row: Row, name: str, original: Path, candidate: Path, ref: dict[str, Any], base: Any,
             feeds: dict | None, runs: int) -> Row:
    """Score `candidate` on both sets (`ref`: the original's results per split) and time it."""
    try:
        res = evaluate(name, original, candidate, split="evaluation", reference=ref["evaluation"])
        other = evaluate(name, original, candidate, split="other", reference=ref["other"])
        row.size_bytes, row.ratio, row.metrics, row.passes_eval = res.size_bytes, res.ratio, res.metrics, res.passes
        row.metrics_other, row.passes_other = other.metrics, other.passes
        row.passes = res.passes and other.passes
        row.create_s, row.latency_ratio = _timings(base, candidate, feeds, runs)
    except Exception as exc:  # a peer's model that does not load or run is a finding
        row.error = f"{type(exc).__name__}: {exc}"
    return row


def compare_model(name: str, workdir: Path, quick: bool, runs: int, peers: list[str] | None,
                  ablation: list[str] | None = None, ablation_only: bool = False,
                  ratios: tuple[float, ...] | None = None, quantized: str = "no",
                  variant_ratios: tuple[float, ...] = (), variants: tuple[str, ...] | None = None) -> list[Row]:
    import onnx_l2c
    from onnx_l2c.bench import random_feeds

    original = zoo_path(name)
    ref = {split: reference_results(TASKS[name], original, split) for split in SCORED_SPLITS}
    if quantized == "only":
        return variant_rows(name, workdir, ref, runs, variant_ratios, variants)
    feeds: dict | None = random_feeds(original)
    base = open_session(original, "plain")  # the latency reference, opened once per model
    try:
        base.run(None, feeds)
    except Exception as exc:  # e.g. audio shorter than the model's window: no latency column
        log.warning("%s: no latency measurement, the original does not run on a synthetic input: %s", name, exc)
        feeds = None
    rows: list[Row] = []
    for method, opts in ([] if ablation_only else QUICK_SETTINGS if quick else OUR_SETTINGS):
        target = workdir / name / f"l2c_{'_'.join(f'{k}{v}' for k, v in opts.items())}.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        row = Row(name, method, dict(opts))
        start = time.perf_counter()
        onnx_l2c.compress(original, target, **opts)
        row.convert_s = time.perf_counter() - start
        rows.append(_measure(row, name, original, target, ref, base, feeds, runs))
        log.info("%s %s %s: ratio %.2f %s", name, method, opts, row.ratio or 0, row.metrics)
    rows += _target_rows(name, original, workdir, quick, ref, base, feeds, runs, ablation, ratios)
    if quantized == "yes":
        rows += variant_rows(name, workdir, ref, runs, variant_ratios, variants)
    if ablation_only:
        return rows
    try:
        from .peers import run_peers
    except ImportError as exc:
        rows.append(Row(name, "peers", {}, error=f"models.peers unavailable: {exc}"))
        return rows
    for peer in run_peers(original, workdir / name / "peers", peers):
        row = Row(name, peer.method, dict(peer.params), convert_s=peer.seconds, error=peer.error)
        if peer.error is None and peer.path is None:  # size-only baseline (zstd)
            row.size_bytes = peer.size_bytes
            row.ratio = model_size(original) / peer.size_bytes if peer.size_bytes else None
        elif peer.error is None:
            row = _measure(row, name, original, peer.path, ref, base, feeds, runs)
            if peer.size_bytes:  # the peer's own notion of stored size (e.g. NNC bitstream + graph)
                row.size_bytes = peer.size_bytes
                row.ratio = model_size(original) / peer.size_bytes
        if row.error:  # exact error text, without this run's temporary folder
            row.error = row.error.replace(str(workdir), "$WORKDIR")
        rows.append(row)
        log.info("%s %s %s: ratio %s error %s", name, peer.method, peer.params, row.ratio, row.error)
    return rows


def integer_weight_bounds(model_path: Path) -> tuple[int, float]:
    """(bytes, order-0 entropy in bytes) of the integer initializers onnx_l2c codes
    (every dtype but the floating ones, at least `--min-elements` elements): each
    tensor's empirical order-0 entropy of its element patterns, no table costs."""
    import numpy as np

    from onnx_l2c.config import CompressOptions
    from onnx_l2c.graph.model import find_weights, load_model, tensor_bits

    model = load_model(model_path)
    raw, bound = 0, 0.0
    for w in find_weights(model, CompressOptions().min_elements).exact:
        bits = tensor_bits(w.tensor, model_path.parent)
        _, counts = np.unique(bits, return_counts=True)
        bound += float(-(counts * np.log2(counts / bits.size)).sum()) / 8
        raw += w.nbytes
    return raw, bound


def variant_rows(name: str, workdir: Path, ref: dict[str, Any], runs: int,
                 target_ratios: tuple[float, ...] = (), only: tuple[str, ...] | None = None) -> list[Row]:
    """The onnxruntime-quantized variants of zoo model `name` (models/variants.py):
    each variant itself, onnx_l2c --preset lossless of it and zstd -19 of it,
    with the order-0 bound of its integer weights, and `target_ratios` over it.
    Ratios are over the float original; fidelity is scored against the float
    original; session creation and latency of the lossless file against the
    variant's. `only`: these variants (default: all of the model's)."""
    import onnx_l2c
    from onnx_l2c.bench import random_feeds

    from .peers import peer_zstd
    from .variants import VARIANTS

    original = zoo_path(name)
    rows: list[Row] = []
    for vname, variant in VARIANTS.items():
        if variant.base != name or (only is not None and vname not in only):
            continue
        try:
            vpath = zoo_path(vname)
        except Exception as exc:  # onnxruntime's quantizer failing on a model is a finding
            rows.append(Row(name, f"variant {variant.kind} (onnxruntime)", {"variant": vname},
                            error=f"{type(exc).__name__}: {exc}"))
            continue
        feeds: dict | None = random_feeds(vpath)
        base = open_session(vpath, "plain")
        try:
            base.run(None, feeds)
        except Exception:  # noqa: BLE001 - no latency column, as for the float originals
            feeds = None
        variant_row = _measure(Row(name, f"variant {variant.kind} (onnxruntime)", {"variant": vname}), name,
                               original, vpath, ref, base, feeds, runs)
        rows.append(variant_row)
        target = workdir / name / f"{vname}_lossless.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        raw, bound = integer_weight_bounds(vpath)
        row = Row(name, f"onnx_l2c lossless of {variant.kind}", {"variant": vname})
        start = time.perf_counter()
        result = onnx_l2c.compress(vpath, target, preset="lossless")
        row.convert_s = time.perf_counter() - start
        row = _measure(row, name, original, target, ref, base, feeds, runs)
        coded = sum(t.payload_bytes for t in result.tensors if t.dtype not in ("float32", "float16", "bfloat16"))
        zstd = peer_zstd(vpath, workdir / name / f"{vname}_peers")
        row.params.update({
            "variant_bytes": model_size(vpath), "ratio_over_variant": round(model_size(vpath) / row.size_bytes, 4)
            if row.size_bytes else None,
            "zstd19_bytes": zstd.size_bytes, "integer_weight_bytes": raw, "integer_order0_bytes": round(bound),
            "integer_payload_bytes": coded,
            "create_ratio": round(row.create_s / variant_row.create_s, 3)
            if row.create_s and variant_row.create_s else None})
        rows.append(row)
        rows.append(Row(name, f"zstd-19 of {variant.kind}", {"variant": vname}, size_bytes=zstd.size_bytes,
                        ratio=model_size(original) / zstd.size_bytes if zstd.size_bytes else None,
                        convert_s=zstd.seconds, error=zstd.error))
        if variant.kind in ("qdq", "qop", "int4"):  # integer weights of quantized operators: coarser grids
            rows += _variant_target_rows(name, vname, variant.kind, vpath, workdir, ref, base, feeds, runs,
                                         target_ratios)
        log.info("%s: lossless %s bytes, zstd-19 %s, integer weights %d -> %d (order-0 bound %.0f)", vname,
                 row.size_bytes, zstd.size_bytes, raw, coded, bound)
    return rows


# Size targets over the quantized variant itself (its integer weights on
# coarser grids, passes/requantize.py), calibrated like the float rows.
VARIANT_TARGET_RATIOS = (1.25, 1.5, 1.75, 2.0)


def _variant_target_rows(name: str, vname: str, kind: str, vpath: Path, workdir: Path, ref: dict[str, Any],
                         base: Any, feeds: dict | None, runs: int, ratios: tuple[float, ...]) -> list[Row]:
    import onnx_l2c

    if not ratios:
        return []
    task = TASKS[name]
    rows: list[Row] = []
    label = f"onnx_l2c target on {kind}"
    try:
        start = time.perf_counter()
        samples = task.calibration(CALIBRATION_SAMPLES) if task.calibration is not None else None
        planner = onnx_l2c.Planner(vpath, calibration_data=samples, calibration_samples=CALIBRATION_SAMPLES)
        measure_s = time.perf_counter() - start
    except Exception as exc:  # a finding, as for the float rows
        return [Row(name, label, {"variant": vname}, error=f"{type(exc).__name__}: {exc}")]
    original = zoo_path(name)
    for ratio in ratios:
        row = Row(name, label, {"variant": vname, "target_ratio_over_variant": ratio})
        target = workdir / name / f"{vname}_target{ratio:g}.onnx"
        t0 = time.perf_counter()
        try:
            result = planner.compress(target, target_ratio=ratio, allow_target_miss=True)
        except Exception as exc:
            row.error = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            continue
        row.convert_s = measure_s + time.perf_counter() - t0
        row.params["requantized_tensors"] = sum(t.method == "requantize" for t in result.tensors)
        rows.append(_measure(row, name, original, target, ref, base, feeds, runs))
        log.info("%s target %.2f over the variant: ratio %.2f over float, %s", vname, ratio, row.ratio or 0,
                 row.metrics)
    return rows


def quantized_markdown(rows: list[Row]) -> str:
    """The lossless table of the quantized variants: onnx_l2c vs zstd -19 vs the
    order-0 bound of the integer weights, and the load-time cost."""
    lossless = [r for r in rows if r.method.startswith("onnx_l2c lossless of ") and "variant" in r.params]
    if not lossless:
        return ""
    out = ["### Already-quantized variants (onnxruntime's quantizer), lossless\n",
           "Ratios over the variant itself. Integer weights: the initializers of other dtypes than float of at "
           "least 1024 elements, coded (payload bytes) against their order-0 entropy (no table costs). create × and "
           "latency ×: the lossless file through the fast loader against the variant.\n",
           "| variant | variant MB | its ratio over float | onnx_l2c lossless | zstd -19 | onnx_l2c / zstd | "
           "integer weights MB | coded / order-0 bound | passes (variant vs float) | create × | latency × |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    variants = {r.params.get("variant"): r for r in rows if r.method.startswith("variant ")}
    for r in lossless:
        p = r.params
        v = variants.get(p["variant"])
        fmt = lambda x, f: f.format(x) if x is not None else ""  # noqa: E731
        zstd_ratio = p["variant_bytes"] / p["zstd19_bytes"] if p.get("zstd19_bytes") else None
        versus = r.size_bytes / p["zstd19_bytes"] if r.size_bytes and p.get("zstd19_bytes") else None
        bound = (p["integer_payload_bytes"] / p["integer_order0_bytes"]) if p.get("integer_order0_bytes") else None
        out.append(f"| {p['variant']} | {p['variant_bytes'] / 1e6:.2f} | {fmt(v and v.ratio, '{:.2f}')} | "
                   f"{fmt(p.get('ratio_over_variant'), '{:.3f}×')} | {fmt(zstd_ratio, '{:.3f}×')} | "
                   f"{fmt(versus, '{:.3f}')} | {p['integer_weight_bytes'] / 1e6:.2f} | {fmt(bound, '{:.3f}')} | "
                   f"{_verdict(v) if v else ''} | {fmt(p.get('create_ratio'), '{:.2f}')} | "
                   f"{fmt(r.latency_ratio, '{:.2f}')} |")
    targets = [r for r in rows if r.method.startswith("onnx_l2c target on ") and "variant" in r.params]
    if targets:
        out += ["", "Size targets over the variant (its int8 weights on coarser grids of their stored step, the same "
                "quantized operators): the largest ratio over the float original that meets the bar on both sets, "
                "beside the variant itself and onnx_l2c's best on the float model in the same rows.\n",
                "| variant | variant: ratio, passes | largest passing target (ratio over float) | "
                "onnx_l2c on float: largest passing ratio |",
                "|---|---|---|---:|"]
        for vname in dict.fromkeys(r.params["variant"] for r in targets):
            mine = [r for r in targets if r.params["variant"] == vname]
            v = variants.get(vname)
            ok = [r for r in mine if r.passes and r.ratio]
            best = max(ok, key=lambda r: r.ratio) if ok else None
            floats = best_at_bar([r for r in rows if r.model == mine[0].model], True)
            variant_text = f"{v.ratio:.2f}, {_verdict(v)}" if v and v.ratio else ""
            best_text = "none"
            if best is not None:
                best_text = f"{best.ratio:.2f} (target {best.params['target_ratio_over_variant']}× over the variant)"
            float_text = f"{floats.ratio:.2f}" if floats else "not in this run"
            out.append(f"| {vname} | {variant_text} | {best_text} | {float_text} |")
    return "\n".join(out) + "\n"


def _target_rows(name: str, original: Path, workdir: Path, quick: bool, ref: dict[str, Any], base: Any,
                 feeds: dict | None,
                 runs: int, ablation: list[str] | None = None, ratios: tuple[float, ...] | None = None) -> list[Row]:
    """The size-target ablation: one planner per method set (calibration
    statistics and sensitivities measured once per model), several ratios."""
    import onnx_l2c
    from onnx_l2c.passes import registry

    task = TASKS[name]
    if task.calibration is None:
        return []
    rows: list[Row] = []
    start = time.perf_counter()
    samples = task.calibration(CALIBRATION_SAMPLES)
    planners: dict[str, Any] = {}
    measure_s = 0.0
    settings = QUICK_ABLATION if quick else ABLATION
    if ablation is not None:  # method sets named by their key (e.g. fixing, rounding+unify, rounding+mixed+l2c:all)
        settings = [a for a in ABLATION if a.key in ablation]
    for group in settings:
        label, methods, search, options = group.label, group.methods, group.search, dict(group.options)
        planner_key = (methods, group.options)
        try:
            if planner_key not in planners:
                first = next(iter(planners.values()), None)
                planners[planner_key] = (first.with_methods(methods, **options) if first is not None else
                                         onnx_l2c.Planner(original, calibration_data=samples,
                                                          calibration_samples=CALIBRATION_SAMPLES, methods=methods,
                                                          **options))
                if first is None:
                    measure_s = time.perf_counter() - start
            planner = planners[planner_key]
        except Exception as exc:  # a model our planner cannot handle is a finding, like a peer's failure
            rows.append(Row(name, label, {"methods": methods, **options}, error=f"{type(exc).__name__}: {exc}"))
            continue
        fit_s = planner.context.seconds.get("candidates", 0.0)
        for ratio in (QUICK_TARGET_RATIOS if quick else ratios or group.ratios):
            params = {"target_ratio": ratio, "methods": methods, "search": search, **options}
            row = Row(name, label, params)
            target = workdir / name / f"l2c_target{ratio:g}_{group.key.replace(':', '_')}_{search}.onnx"
            target.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            try:
                # a ratio out of the methods' reach is a row of what they reach (its notes say so)
                result = planner.compress(target, target_ratio=ratio, search=search, allow_target_miss=True)
            except Exception as exc:
                row.error = f"{type(exc).__name__}: {exc}"
                rows.append(row)
                continue
            # conversion time as a user would see it for this one target:
            # calibration + sensitivity + candidate fitting + allocation and write
            row.convert_s = measure_s + fit_s + (time.perf_counter() - t0)
            row.params["peak_memory_mb"] = round(result.plan["peak_memory_bytes"] / 1e6)
            for method in registry().values():  # each summarizing or refining method's headline numbers
                key = method.summary_key or (method.name if method.refines else None)
                if key is not None and key in result.plan:
                    row.params.update(method.headline(result.plan[key]))
            rows.append(_measure(row, name, original, target, ref, base, feeds, runs))
            log.info("%s %s %s: ratio %.2f %s", name, label, params, row.ratio or 0, row.metrics)
    return rows


def best_at_bar(rows: list[Row], ours: bool) -> Row | None:
    """The largest-ratio row (ours or the peers') that meets the bar on every set it was scored on."""
    # the quantized variants' rows (onnxruntime's quantizer, then maybe onnx_l2c) are neither
    ok = [r for r in rows if r.passes and r.ratio and r.method.startswith("onnx_l2c") == ours
          and "variant" not in r.params]
    return max(ok, key=lambda r: r.ratio) if ok else None


def deciding_samples(metrics: dict[str, float], headline: str) -> str:
    """Short text of the samples that decided the headline: 'disagreeing/samples (bar allows N)'
    for an agreement, 'below the bar/samples, CI low' for a mean; '' without the fields."""
    m = metrics
    if f"{headline}_disagree" in m:
        d, n = int(m[f"{headline}_disagree"]), int(m[f"{headline}_samples"])
        allows = f" (allows {d + int(m[f'{headline}_margin_samples'])})" if f"{headline}_margin_samples" in m else ""
        return f"{d}/{n}{allows}"
    if f"{headline}_samples" in m:
        below = f"{int(m[f'{headline}_below_bar'])}/" if f"{headline}_below_bar" in m else ""
        return f"{below}{int(m[f'{headline}_samples'])} below, CI ≥ {m[f'{headline}_ci_low']:.4g}"
    return ""


def _verdict(r: Row) -> str:
    if r.passes is None:
        return ""
    if r.passes_other is None:
        return ("yes" if r.passes else "no") + " (eval only)"
    return "yes" if r.passes else "no (" + ", ".join(
        s for s, ok in (("eval", r.passes_eval), ("other", r.passes_other)) if ok is False) + ")"


def markdown(rows: list[Row]) -> str:
    out = []
    for name in dict.fromkeys(r.model for r in rows):
        task = TASKS[name]
        h = task.headline
        sub = [r for r in rows if r.model == name]
        out.append(f"### {name} (bar: {h} ≥ {task.bar} on the evaluation and the other split)\n")
        keys = list(dict.fromkeys(k for r in sub for k in r.metrics if not is_confidence_key(k, r.metrics)))
        out.append("| method | params | ratio | MB | " + " | ".join(keys) +
                   f" | {h} (other) | deciding samples: eval; other | passes | convert s | create s | latency × "
                   "| error |")
        out.append("|---|---|---:|---:|" + "---:|" * len(keys) + "---:|---|---|---:|---:|---:|---|")
        for r in sub:
            vals = " | ".join(f"{r.metrics[k]:.4g}" if k in r.metrics else "" for k in keys)
            fmt = lambda v, f: (f.format(v) if v is not None else "")  # noqa: E731
            err = (r.error or "").replace("|", "/").replace("\n", " ")[:160]
            other = f"{r.metrics_other[h]:.4g}" if h in r.metrics_other else ""
            deciding = "; ".join(x for x in (deciding_samples(r.metrics, h), deciding_samples(r.metrics_other, h)) if x)
            out.append(f"| {r.method} | {json.dumps(r.params)} | {fmt(r.ratio, '{:.2f}')} | "
                       f"{fmt(r.size_bytes and r.size_bytes / 1e6, '{:.2f}')} | {vals} | {other} | {deciding} | "
                       f"{_verdict(r)} | {fmt(r.convert_s, '{:.1f}')} | "
                       f"{fmt(r.create_s, '{:.3f}')} | {fmt(r.latency_ratio, '{:.2f}')} | {err} |")
        ours, peer = best_at_bar(sub, True), best_at_bar(sub, False)
        out.append("")
        out.append("Largest ratio meeting the bar on both sets, per method (the ablation at equal fidelity):\n")
        out.append(f"| method | ratio at the bar | {h} there (eval) | {h} there (other) | deciding samples: eval; other |")
        out.append("|---|---:|---:|---:|---|")
        for method in dict.fromkeys(r.method for r in sub):
            ok = [r for r in sub if r.method == method and r.passes and r.ratio]
            best = max(ok, key=lambda r: r.ratio) if ok else None
            if best is None:
                out.append(f"| {method} | none | | | |")
                continue
            other = f"{best.metrics_other[h]:.4g}" if h in best.metrics_other else "not scored"
            deciding = "; ".join(x for x in (deciding_samples(best.metrics, h),
                                             deciding_samples(best.metrics_other, h)) if x)
            out.append(f"| {method} | {best.ratio:.2f} | {best.metrics[h]:.4g} | {other} | {deciding} |")
        out.append("")
        out.append(f"Best ratio at the bar: onnx_l2c {f'{ours.ratio:.2f}x ({ours.params})' if ours else 'none'}; "
                   f"best peer {f'{peer.ratio:.2f}x ({peer.method} {peer.params})' if peer else 'none'}.\n")
    return "\n".join(out)


def plot(rows: list[Row], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # ours solid, peers dashed; a color and marker per series (more than 10 series)
    colors = plt.get_cmap("tab20").colors
    markers = "os^Dv<>PX*"
    for name in dict.fromkeys(r.model for r in rows):
        task = TASKS[name]
        fig, ax = plt.subplots(figsize=(9.5, 5))
        sub = [r for r in rows if r.model == name and r.ratio and task.headline in r.metrics]
        for i, method in enumerate(dict.fromkeys(r.method for r in sub)):
            pts = sorted((r.ratio, r.metrics[task.headline]) for r in sub if r.method == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)],
                    color=colors[i % len(colors)], linestyle="-" if method.startswith("onnx_l2c") else "--",
                    label=method)
            # the same rows on the other split: hollow markers, no line
            other = sorted((r.ratio, r.metrics_other[task.headline]) for r in sub
                           if r.method == method and task.headline in r.metrics_other)
            if other:
                ax.plot([p[0] for p in other], [p[1] for p in other], marker=markers[i % len(markers)],
                        linestyle="none", markerfacecolor="none", color=colors[i % len(colors)])
        ax.axhline(task.bar, color="gray", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ratios = [r.ratio for r in sub] or [1.0]
        ticks = [t for t in (0.5, 1, 1.5, 2, 3, 4, 6, 8, 10, 12, 16, 20, 32)
                 if min(ratios) * 0.9 <= t <= max(ratios) * 1.1]
        ax.set_xticks(ticks, [f"{t:g}×" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("size ratio (original / compressed)")
        ax.set_ylabel(task.headline)
        ax.set_title(f"{name}: fidelity vs size (hollow: the other split)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onnx-l2c bench compare", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(TASKS), help=f"comma-separated zoo models (default: {','.join(TASKS)})")
    p.add_argument("--peers", default=None, help="comma-separated peer methods (default: all)")
    p.add_argument("--quick", action="store_true", help="fewer settings of our own")
    p.add_argument("--runs", type=int, default=20, help="latency runs per result")
    known = ", ".join(dict.fromkeys(a.key for a in ABLATION))
    p.add_argument("--ablation", default=None, metavar="SETS",
                   help=f"comma-separated method sets of the size-target rows to run (default: all): {known}")
    p.add_argument("--ratios", default=None, metavar="R,R",
                   help="target ratios of the size-target rows, instead of each method set's own (e.g. 8,12)")
    p.add_argument("--ablation-only", action="store_true",
                   help="only the size-target rows: no presets, no peers (to add rows to an earlier run)")
    p.add_argument("--quantized", default="no", choices=("no", "yes", "only"),
                   help="rows of the models' onnxruntime-quantized variants (models/variants.py): the variant, "
                        "onnx_l2c --preset lossless of it, zstd -19 of it and the order-0 bound of its integer "
                        "weights (yes: besides the other rows; only: nothing else)")
    p.add_argument("--variant-ratios", default=",".join(f"{r:g}" for r in VARIANT_TARGET_RATIOS), metavar="R,R",
                   help="with --quantized: size targets over each variant itself (its weights on coarser "
                        "integer grids); 'none' for none (default: %(default)s)")
    p.add_argument("--variants", default=None, metavar="NAMES",
                   help="with --quantized: only these variants (comma-separated, e.g. minilm-int4; default: all of "
                        "each model's)")
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="write the compressed models under DIR and keep them (default: a temporary folder, removed)")
    p.add_argument("--merge", type=Path, default=None, metavar="JSON",
                   help="merge this run (or the --render JSON) into a saved compare.json: its rows replace the "
                        "saved rows of the same model, method and target ratio, the rest are kept (written to --out)")
    p.add_argument("--baseline", type=Path, default=None, metavar="JSON",
                   help="a saved compare.json (e.g. the committed docs/results/compare.json): rows whose conversion "
                        f"time or peak memory exceed the same row's there by more than {REGRESSION - 1:.0%} are "
                        "listed as regressions in the summary")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="only re-render compare.md and the plots from a saved compare.json (e.g. a partial run)")
    args = p.parse_args(argv)
    if args.render is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        # with --merge: a saved partial run into a saved full one
        return _merge_and_render([Row(**r) for r in json.loads(args.render.read_text())], args.merge, args.out,
                                 args.baseline)
    if args.ablation:
        bad = [a for a in args.ablation.split(",") if a not in known.split(", ")]
        if bad:
            p.error(f"unknown method set(s) {', '.join(bad)}; known: {known}")
    ratios: tuple[float, ...] | None = None
    if args.ratios:
        try:
            ratios = tuple(float(r) for r in args.ratios.split(",") if r)
        except ValueError:
            p.error(f"--ratios: expected comma-separated numbers ≥ 1, got {args.ratios!r}")
        if not ratios or min(ratios) < 1:
            p.error(f"--ratios: expected comma-separated numbers ≥ 1, got {args.ratios!r}")
    variant_ratios: tuple[float, ...] = ()
    if args.variant_ratios != "none":
        try:
            variant_ratios = tuple(float(r) for r in args.variant_ratios.split(",") if r)
        except ValueError:
            p.error(f"--variant-ratios: expected comma-separated numbers > 1 or 'none', got {args.variant_ratios!r}")
        if not variant_ratios or min(variant_ratios) <= 1:
            p.error(f"--variant-ratios: expected comma-separated numbers > 1 or 'none', got {args.variant_ratios!r}")
    names = [n for n in args.models.split(",") if n]
    variants: tuple[str, ...] | None = None
    if args.variants is not None:
        from .variants import VARIANTS

        variants = tuple(v for v in args.variants.split(",") if v)
        bad = [v for v in variants if v not in VARIANTS or VARIANTS[v].base not in names]
        if bad or not variants or args.quantized == "no":
            p.error(f"--variants: needs --quantized yes or only, and variants of --models; got {args.variants!r}, "
                    f"known: {', '.join(v for v in VARIANTS if VARIANTS[v].base in names)}")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep is not None
          else tempfile.TemporaryDirectory(prefix="l2c-compare-")) as tmp:
        for name in names:
            rows += compare_model(name, Path(tmp), args.quick, args.runs,
                                  args.peers.split(",") if args.peers else None,
                                  args.ablation.split(",") if args.ablation else None, args.ablation_only, ratios,
                                  args.quantized, variant_ratios, variants)
            # after every model, so a long run's finished models are never lost
            (args.out / "compare.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return _merge_and_render(rows, args.merge, args.out, args.baseline)


def regressions(rows: list[Row], baseline: list[Row]) -> list[str]:
    """One line per row whose conversion time or peak memory is more than
    REGRESSION times the same row's (model, method, parameters) in `baseline`."""
    def key(r: Row) -> tuple[str, str, str]:
        params = {k: v for k, v in r.params.items() if k != "peak_memory_mb"}
        return r.model, r.method, json.dumps(params, sort_keys=True, default=str)

    saved = {key(r): r for r in baseline}
    out = []
    for r in rows:
        b = saved.get(key(r))
        if b is None:
            continue
        for what, new, old in (("conversion s", r.convert_s, b.convert_s),
                               ("peak MB", r.params.get("peak_memory_mb"), b.params.get("peak_memory_mb"))):
            if new is not None and old and new > REGRESSION * old:
                out.append(f"{r.model} {r.method} {key(r)[2]}: {what} {new:.4g} vs {old:.4g} ({new / old:.2f}x)")
    return out


def _merge_and_render(rows: list[Row], merge: Path | None, out: Path, baseline: Path | None = None) -> int:
    """Merge `rows` into the saved run `merge` (if given, written back as
    out/compare.json), then write compare.md and the plots and print the table
    (with the regressions against `baseline`, if given)."""
    if merge is not None:
        rows = merge_rows([Row(**r) for r in json.loads(merge.read_text())], rows)
        (out / "compare.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    table = markdown(rows) + quantized_markdown(rows)
    if baseline is not None:
        found = regressions(rows, [Row(**r) for r in json.loads(baseline.read_text())])
        table += (f"\n## Regressions against {baseline.name} (more than {REGRESSION - 1:.0%} slower or larger)\n\n"
                  + ("\n".join(f"- {line}" for line in found) if found else "none") + "\n")
    (out / "compare.md").write_text(table)
    plot(rows, out)
    print(table)
    return 0


def _merge_key(row: Row) -> tuple[str, str, Any, Any, Any]:
    return (row.model, row.method, row.params.get("target_ratio"), row.params.get("variant"),
            row.params.get("target_ratio_over_variant"))


def merge_rows(saved: list[Row], new: list[Row]) -> list[Row]:
    """`saved` with its rows of every (model, method, target ratio) that `new`
    has replaced by `new`'s (rows without a target ratio: by model and
    method); models keep their order, a replaced row its place."""
    replaced = {_merge_key(r) for r in new}
    out: list[Row] = []
    placed: set[tuple[str, str, Any]] = set()
    for r in saved:
        key = _merge_key(r)
        if key not in replaced:
            out.append(r)
        elif key not in placed:
            out += [n for n in new if _merge_key(n) == key]
            placed.add(key)
    for key in dict.fromkeys(_merge_key(r) for r in new):
        if key in placed:
            continue
        group = [n for n in new if _merge_key(n) == key]
        same = [i for i, r in enumerate(out) if r.model == key[0] and r.method == key[1]]
        if same:  # another ratio of a saved method: in ratio order among its rows
            ratio = key[2] if key[2] is not None else float("inf")
            before = [i for i in same if (out[i].params.get("target_ratio") or 0) < ratio]
            at = (before[-1] + 1) if before else same[0]
        else:  # a new method goes after the model's onnx_l2c rows
            at = max((i for i, r in enumerate(out) if r.model == key[0] and r.method.startswith("onnx_l2c")),
                     default=len(out) - 1) + 1
        out[at:at] = group
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(main())
