"""The size-target report: what the planner chose per tensor and why.

JSON (`--report report.json`) with, per tensor, the method and its
parameters, bits per weight, sparsity, and its share of the coded size and of
the estimated output divergence; plus a PNG of the per-layer allocation
beside it (`report.png`).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx_l2c.files import AtomicOutputs

if TYPE_CHECKING:
    from onnx_l2c.plan.allocate import Allocation
    from onnx_l2c.config import CompressOptions
    from onnx_l2c.write.results import CompressResult
    from onnx_l2c.plan.context import PlanContext

log = logging.getLogger(__name__)


def peak_memory_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def plan_summary(ctx: "PlanContext", allocation: "Allocation", opts: "CompressOptions", budget: int,
                 source_bytes: int, max_distortion: float | None = None) -> dict[str, Any]:
    """The plan's summary for the report. With `max_distortion` (the safe
    preset) there is no size target: the bound stands in its place."""
    # Both searches on the same candidates and budget: which predicts less divergence.
    searches = {}
    compared = () if max_distortion is not None else ("lagrange", "path") if ctx.mixed else ("shared_grid",)
    for name in compared:
        alt = ctx.allocate(budget, name)
        searches[name] = {"predicted_divergence": alt.distortion, "payload_bytes": alt.total_bytes}
    target = ({"max_distortion": max_distortion} if max_distortion is not None
              else {"target_bytes": budget, "target_ratio": source_bytes / budget})
    return {
        **target,
        "search": allocation.search,
        "multiplier": allocation.multiplier,
        "predicted_divergence": allocation.distortion,
        "searches": searches,
        "methods": list(opts.methods),
        "data_free": ctx.data_free,
        "calibration_samples": ctx.calibration_samples,
        "sensitivity_samples": ctx.sensitivity.samples if ctx.sensitivity is not None else 0,
        "divergences": ctx.sensitivity.divergences if ctx.sensitivity is not None else {},
        "notes": ctx.notes,
        "bias_corrected": sorted(n for n in ctx.bias_of if (o := allocation.chosen.get(n)) is not None
                                 and o.params is not None),
        "seconds": ctx.seconds,
        "peak_memory_bytes": peak_memory_bytes(),
    }


def write_report(result: "CompressResult", ctx: "PlanContext | None", allocation: "Allocation | None",
                 path: Path) -> None:
    total_bytes = sum(t.payload_bytes for t in result.tensors) or 1
    dist = ({name: ctx.tensors[name].scale * opt.error for name, opt in allocation.chosen.items()}
            if ctx is not None and allocation is not None else {})
    total_dist = sum(dist.values()) or 1.0
    tensors = []
    for t in result.tensors:
        tp = ctx.tensors.get(t.name) if ctx is not None else None
        tensors.append({
            "name": t.name, "shape": list(t.shape), "dtype": t.dtype, "method": t.method,
            "params": t.params, "original_bytes": t.original_bytes, "payload_bytes": t.payload_bytes,
            "bits_per_weight": t.bits_per_weight, "sparsity": t.sparsity, "rel_rmse": t.rel_rmse,
            "size_share": t.payload_bytes / total_bytes,
            "distortion_share": dist.get(t.name, 0.0) / total_dist,
            "predicted_divergence": dist.get(t.name, 0.0),
            "sensitivity": tp.scale if tp else None,
            "sensitivity_measured": tp.sensitivity_measured if tp else False,
            "statistics": tp.statistics if tp else "none",
            "bias_corrected": bool(ctx is not None and t.name in ctx.bias_of and t.params is not None),
        })
    doc = {
        "output": result.output.name, "sidecar": result.sidecar.name,
        "source_bytes": result.source_bytes, "graph_bytes": result.graph_bytes,
        "sidecar_bytes": result.sidecar_bytes, "ratio": result.ratio, "seconds": result.seconds,
        "options": result.options, "plan": result.plan, "skipped_small": result.skipped_small,
        "tensors": tensors,
    }
    png = path.with_suffix(".png")
    with AtomicOutputs() as outputs:
        outputs.temp_for(path).write_text(json.dumps(doc, indent=2))
        try:
            _plot(tensors, result, outputs.temp_for(png))
        except ImportError:
            log.warning("matplotlib is not installed: no allocation plot %s", png)
        outputs.commit()


def _plot(tensors: list[dict[str, Any]], result: "CompressResult", path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(tensors)
    fig, axes = plt.subplots(3, 1, figsize=(max(8.0, 0.18 * n + 2), 8), sharex=True)
    x = range(n)
    colors = ["tab:gray" if t["method"] == "lossless" else
              ("tab:blue" if (t["params"] or {}).get("output_aware") else "tab:orange") for t in tensors]
    axes[0].bar(x, [t["bits_per_weight"] for t in tensors], color=colors)
    axes[0].set_ylabel("bits / weight")
    axes[0].set_title(f"{result.output.name}: {result.ratio:.2f}x "
                      "(blue: output-aware rounding, orange: nearest, gray: lossless)")
    axes[1].bar(x, [t["sparsity"] for t in tensors], color="tab:green")
    axes[1].set_ylabel("sparsity")
    axes[2].bar(x, [t["size_share"] for t in tensors], width=0.4, align="edge", label="size share")
    axes[2].bar([i - 0.4 for i in x], [t["distortion_share"] for t in tensors], width=0.4, align="edge",
                label="divergence share")
    axes[2].set_ylabel("share")
    axes[2].legend(loc="upper right")
    axes[2].set_xticks(list(x))
    axes[2].set_xticklabels([t["name"][-28:] for t in tensors], rotation=90, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
