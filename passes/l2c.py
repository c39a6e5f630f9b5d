"""The joint optimizer ("L2C"): after the allocation, fine-tune the planned
steps, dead zones and weights of the step-grid tensors together, through a
differentiable torch mirror of the whole graph, against the original model's
outputs on the calibration samples and a differentiable estimate of the
coded size (onnx_l2c/mirror/finetune.py).

It proposes no candidates of its own: `--methods rounding,mixed,l2c` plans
with the other methods and then refines their result. The output goes
through the same `entropy` + `affine` stages, so every loader reads it
unchanged. Needs calibration data and torch (`pip install "onnx-l2c[torch]"`);
a model with an op the mirror lacks keeps the post-training plan, with a
note in the report.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from onnx_l2c.codec import AffineStage, CastStage, EntropyStage, Recipe, reconstruct, serialize
from onnx_l2c.config import Choice, OptionSpec
from onnx_l2c.errors import OptionError, UnsupportedError

from .base import Method, Option, Quantized, Refined, RefineJob, TensorContext, TensorInput
from .steps import QuantParams


class Device(Choice):
    """Where the joint optimizer runs."""

    CPU = "cpu"
    CUDA = "cuda"
    AUTO = "auto"  # CUDA when torch sees one, else the CPU


class Phases(Choice):
    """What the joint optimizer fine-tunes."""

    ALL = "all"  # the transform, then the weights with the transform frozen, alternating
    TRANSFORM = "transform"  # per-channel steps and the dead zone only


def torch_device(device: Device) -> str:
    """The torch device for --device: auto takes CUDA when torch sees one."""
    import torch

    if device is Device.CPU:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device is Device.CUDA:
        raise OptionError("cuda: torch sees no CUDA device (valid: cpu, cuda, auto; auto falls back to the CPU)",
                          "device")
    return "cpu"


class JointOptimizer(Method):
    name: ClassVar[str] = "l2c"
    order: ClassVar[int] = 90
    needs_calibration: ClassVar[bool] = True
    refines: ClassVar[bool] = True
    options: ClassVar[tuple[OptionSpec, ...]] = (
        OptionSpec("finetune_steps", int, 100,
                   "joint optimizer (l2c): gradient steps, 8 calibration samples each", minimum=1, metavar="N"),
        OptionSpec("finetune_minutes", float, None,
                   "joint optimizer (l2c): a time budget in minutes, checked before each step",
                   minimum=0.0, metavar="MINUTES", default_text="none: only the step count bounds it"),
        OptionSpec("finetune_phases", Phases, Phases.TRANSFORM,
                   "joint optimizer (l2c): transform (per-channel steps and dead zones; the default) or all (then "
                   "the weights too, alternating; on the zoo it fit the calibration samples and lost fidelity on "
                   "other inputs)"),
        OptionSpec("device", Device, Device.AUTO,
                   "joint optimizer (l2c): where it runs; auto = CUDA when torch sees one, else the CPU"),
    )

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        out = {"l2c_applied": summary.get("applied", False), "l2c_steps": summary.get("steps"),
               "l2c_seconds": round(float(summary.get("seconds", 0.0)), 1)}
        before, after = summary.get("held_out_before"), summary.get("held_out_after")
        if before:
            out["l2c_held_out"] = round(after / before, 4)  # of the post-training plan's divergence
        if summary.get("coded_after"):  # the differentiable rate estimate against the coder's bytes
            out["l2c_rate_estimate_error"] = round(summary["rate_after"] / summary["coded_after"] - 1, 4)
        return out

    def candidates(self, tensor: TensorInput, ctx: TensorContext, lossless_bytes: int) -> list[Option]:
        return []  # it refines the other methods' plan

    def quantize(self, tensor: TensorInput, params: Any, ctx: TensorContext) -> Quantized:
        raise AssertionError("l2c proposes no candidates")

    def encode(self, tensor: TensorInput, params: Any, ctx: TensorContext) -> Recipe:
        raise AssertionError("l2c proposes no candidates")

    def refine(self, job: RefineJob) -> Refined | None:
        from onnx_l2c.mirror.finetune import FinetuneOptions, TunedTensor, finetune  # torch, imported on use

        device = torch_device(Device.parse(job.options.option("device")))
        tuned: list[TunedTensor] = []
        planned_bytes: dict[str, int] = {}  # each tuned tensor's payload as planned, serialized once
        frozen: dict[str, np.ndarray] = {}
        for name, recipe in job.recipes.items():
            tensor = job.tensors[name]
            params = job.params.get(name)
            stages = recipe.stages
            plain = [type(s) for s in stages if not isinstance(s, CastStage)] == [EntropyStage, AffineStage]
            if isinstance(params, QuantParams) and not params.row_exponents and plain \
                    and stages[1].offset is None:
                entropy, affine = stages[0], stages[1]
                symbols = np.asarray(entropy.symbols, np.int32).reshape(affine.outer, affine.channels, affine.inner)
                stream = len(entropy.body(recipe, symbols.size)) - 4  # less the stage's 4-byte symbol offset
                planned_bytes[name] = len(serialize(recipe))
                tuned.append(TunedTensor(name, tensor.dtype, tensor.shape, symbols,
                                         np.asarray(affine.scale, np.float32), params.dead_zone,
                                         float(affine.theta), planned_bytes[name] - stream))
            else:
                frozen[name] = tensor.decoded_values(reconstruct(recipe))
        if not tuned:
            return Refined({}, ["joint optimizer: no step-grid tensors in the plan to fine-tune"])
        options = FinetuneOptions(steps=job.options.option("finetune_steps"),
                                  minutes=job.options.option("finetune_minutes"),
                                  weights=Phases.parse(job.options.option("finetune_phases")) is Phases.ALL,
                                  device=device)
        try:
            result = finetune(job.model, job.original, job.base_dir, tuned, frozen, job.samples, options, job.progress)
        except UnsupportedError as exc:  # an op or dtype the mirror lacks: the post-training plan stands
            return Refined({}, [f"joint optimizer skipped, post-training plan kept: {exc}"])
        # the estimate beside the entropy coder's real bytes for the same tensors
        coded_before = sum(planned_bytes.values())
        coded_after = coded_before + sum(len(serialize(r)) - planned_bytes[n] for n, r in result.recipes.items())
        summary = {"held_out_before": result.held_out_before, "held_out_after": result.held_out_after,
                   "rate_before": result.rate_before, "rate_after": result.rate_after,
                   "coded_before": coded_before, "coded_after": coded_after, "steps": result.steps,
                   "seconds": result.seconds, "tensors": len(tuned), "applied": bool(result.recipes)}
        return Refined(result.recipes, result.notes, summary)
