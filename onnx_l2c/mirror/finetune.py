"""The joint optimizer's loop: fine-tune steps, dead zones and weights of the
planned tensors through the torch mirror, against the original model's own
outputs, under the planned size.

Starts exactly at the post-training result: each tuned tensor's parameters
are its continuous codes (starting at its planned symbols), its per-channel
steps and its dead zone, so the first forward pass decodes what the planner
would write, GPTQ's rounding included. The loss is the output divergence
(KL for class distributions, 1 − cosine for embeddings, relative squared
error otherwise; the teacher is onnxruntime on the original) relative to
its starting value, plus the relative squared error of a few layer outputs
against the original's (the same layers evaluated by a second mirror of the
original: every position of an activation is a target, which fits a small
calibration set less closely than the outputs alone), plus λ times the
estimated payload bytes relative to the planned bytes; λ follows the
constraint (dual ascent), so the tuned tensors end near the bytes the plan
gave them. Phases alternate as in the method: the transform (steps, dead
zones), then the weights with the transform frozen; or the transform alone.
A held-out part of the calibration samples picks the best state, and the
result is used only if it beats the post-training plan there. Everything
runs on one torch device (`FinetuneOptions.device`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from onnx_l2c.codec import FLOAT, AffineStage, CastStage, EntropyStage, Recipe
from onnx_l2c.errors import OptionError
from onnx_l2c.measure.sensitivity import divergence_kind
from onnx_l2c.mirror.graph import Mirror
from onnx_l2c.mirror.transform import quantize_codes, rate_bytes
from onnx_l2c.passes.gptq import quantize_nearest

log = logging.getLogger(__name__)
Tensor = torch.Tensor
Feeds = dict[str, np.ndarray]

HELD_OUT_FRACTION = 0.25  # of the calibration samples, never trained on
EVAL_EVERY = 10  # steps between held-out checks
BATCH = 8  # calibration samples per step
LR_TRANSFORM = 0.002  # largest move of a log step or the dead zone per step (0.005 and 0.01 oscillate)
LR_WEIGHTS = 0.2  # largest move of a continuous code per step (units of steps)
DUAL_RATE = 0.5  # λ ← λ·exp(DUAL_RATE·(rate / budget − 1)) each step
LAMBDA_START = 0.05
RATE_WINDOW = (0.98, 1.005)  # of the planned bytes: the states that may be chosen
TAP_COUNT = 16  # layer outputs matched to the original's as well (evenly spaced in graph order; 0: none)
TAP_WEIGHT = 1.0  # of their relative squared error, against the output term (both start at 1)


@dataclass
class TunedTensor:
    """One planned tensor the optimizer may change: its planned symbols in the
    (outer, channels, inner) view, per-channel steps, dead zone and θ."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    symbols: np.ndarray  # int32, (outer, channels, inner)
    step: np.ndarray  # float32, (channels,)
    dead_zone: float
    theta: float
    fixed_bytes: int  # the payload's bytes other than its entropy stream

    @property
    def view(self) -> tuple[int, int, int]:
        return tuple(self.symbols.shape)  # type: ignore[return-value]


@dataclass
class FinetuneOptions:
    steps: int = 100
    minutes: float | None = None  # wall-clock budget, checked before each step
    seed: int = 0
    weights: bool = True  # False: the transform alone (steps, dead zones), the weights kept
    device: str = "cpu"  # a torch device: where the mirror, the parameters and the teacher's outputs live


@dataclass
class FinetuneResult:
    recipes: dict[str, Recipe]  # empty when the post-training plan is kept
    held_out_before: float  # mean held-out divergence of the post-training plan
    held_out_after: float  # ... of the state that was chosen (equal to before when kept)
    rate_before: float  # estimated bytes of the tuned tensors, post-training
    rate_after: float
    steps: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def divergence(kind: str, ref: Tensor, out: Tensor) -> Tensor:
    """measure.sensitivity's divergences, in torch (differentiable in `out`)."""
    ref, out = ref.double(), out.double()
    if kind.startswith("kl"):
        ref, out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
        if kind == "kl_probabilities":
            p, log_q = ref, torch.log(out.clamp_min(1e-12))
        else:
            p, log_q = torch.softmax(ref, -1), torch.log_softmax(out, -1)
        return (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(-1).mean()
    if kind == "cosine":
        ref, out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
        return (1 - torch.nn.functional.cosine_similarity(out, ref, dim=-1, eps=1e-30)).mean()
    return ((out - ref) ** 2).sum() / (ref ** 2).sum().clamp_min(1e-30)


class NormalizedDescent:
    """Gradient descent whose largest move per tensor is `lr`: each tensor's
    gradient is divided by its largest magnitude. Unlike Adam, which moves
    every entry by about lr whatever its gradient (all codes of a tensor
    cross a rounding edge together after 0.5 / lr steps), only the entries
    with the largest gradients move far, so codes flip a few at a time."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float) -> None:
        self.params, self.lr = params, lr

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            scale = float(p.grad.abs().max())
            if scale > 0:
                p.sub_(p.grad, alpha=self.lr / scale)


class _State:
    """The trainable parameters: each tensor's continuous codes (in units of
    its planned steps, starting at the planned symbols), log steps and dead zone."""

    def __init__(self, tuned: list[TunedTensor], device: torch.device) -> None:
        self.tuned = tuned

        def param(array: np.ndarray | float) -> torch.nn.Parameter:
            return torch.nn.Parameter(torch.as_tensor(array, dtype=torch.float32).to(device))

        self.codes = {t.name: param(t.symbols) for t in tuned}
        self.log_steps = {t.name: param(np.log(t.step.astype(np.float32))) for t in tuned}
        self.dead_zones = {t.name: param(float(t.dead_zone)) for t in tuned}

    def decoded(self) -> tuple[dict[str, Tensor], list[tuple[TunedTensor, Tensor]]]:
        weights: dict[str, Tensor] = {}
        codes: list[tuple[TunedTensor, Tensor]] = []
        for t in self.tuned:
            dz = self.dead_zones[t.name].clamp(0.0, 0.95)
            value, code = quantize_codes(self.codes[t.name], self.log_steps[t.name].exp(), dz, t.theta, axis=1)
            weights[t.name] = value.reshape(t.shape)
            codes.append((t, code))
        return weights, codes

    def rate(self, codes: list[tuple[TunedTensor, Tensor]]) -> Tensor:
        return torch.stack([rate_bytes(code, t.fixed_bytes) for t, code in codes]).sum()

    def snapshot(self) -> dict[str, Any]:
        return {"codes": {k: v.detach().cpu().clone() for k, v in self.codes.items()},
                "log_steps": {k: v.detach().cpu().clone() for k, v in self.log_steps.items()},
                "dead_zones": {k: v.detach().cpu().clone() for k, v in self.dead_zones.items()}}

    def recipes(self, snap: dict[str, Any]) -> dict[str, Recipe]:
        out: dict[str, Recipe] = {}
        for t in self.tuned:
            u = snap["codes"][t.name].numpy().astype(np.float64)
            step = snap["log_steps"][t.name].exp().numpy().astype(np.float32)
            dz = float(snap["dead_zones"][t.name].clamp(0.0, 0.95))
            q = quantize_nearest(u, np.ones(1), dz)  # the codes' own rounding and dead zone, in steps
            outer, channels, inner = t.view
            stages = [EntropyStage(q.reshape(-1)), AffineStage(outer, channels, inner, t.theta, step)]
            if t.dtype != FLOAT:
                stages.append(CastStage(t.dtype))
            out[t.name] = Recipe(t.dtype, t.shape, stages)
        return out


def _teacher(model: onnx.ModelProto, base_dir: Path, samples: Sequence[Feeds]) -> list[list[np.ndarray]]:
    from onnx_l2c.measure.calibration import ScratchModel, make_session

    with ScratchModel(model, base_dir) as scratch:
        session = make_session(scratch)
        return [session.run(None, dict(feeds)) for feeds in samples]


def finetune(model: onnx.ModelProto, original: onnx.ModelProto, base_dir: Path, tuned: list[TunedTensor],
             frozen: dict[str, np.ndarray], samples: Sequence[Feeds], options: FinetuneOptions,
             progress: Callable[[int, int, dict[str, float]], None] | None = None) -> FinetuneResult:
    """Fine-tune `tuned` in `model` (as it will be written) with every other
    planned weight at its decoded value (`frozen`, name → array), against
    `original`'s outputs; see the module doc."""
    start = time.perf_counter()
    if len(samples) < 2:
        raise OptionError("the joint optimizer needs at least 2 calibration samples (one is held out)",
                          "calibration_samples")
    torch.manual_seed(options.seed)
    # every k-th sample held out: calibration folders are often in order of
    # kind (file type, speaker...), and a tail would hold out only the last kinds
    every = max(2, int(round(1 / HELD_OUT_FRACTION)))
    held_idx = list(range(every - 1, len(samples), every))
    train_idx = [i for i in range(len(samples)) if i not in set(held_idx)]
    teacher = _teacher(original, base_dir, samples)
    device = torch.device(options.device)
    mirror = Mirror(model, base_dir).to_device(device)
    names = mirror.output_names
    kinds = [divergence_kind(n, y) for n, y in zip(names, teacher[0])]
    fixed = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in frozen.items()}
    state = _State(tuned, device)

    layers = [n for n in mirror.layer_outputs(t.name for t in tuned) if n not in set(names)]
    if TAP_COUNT and layers:
        picks = np.unique(np.linspace(0, len(layers) - 1, min(TAP_COUNT, len(layers))).round().astype(int))
        taps = [layers[k] for k in picks]
        teacher_mirror = Mirror(original, base_dir).to_device(device)
    else:
        taps = []

    def distortion(i: int, weights: dict[str, Tensor], tapped: bool = False) -> tuple[Tensor, Tensor]:
        got = mirror(samples[i], overrides=fixed | weights, taps=taps if tapped else ())
        terms = [divergence(k, torch.from_numpy(np.asarray(ref)).to(device), got[n])
                 for n, k, ref in zip(names, kinds, teacher[i]) if np.issubdtype(np.asarray(ref).dtype, np.floating)]
        inner = torch.zeros((), dtype=torch.float64, device=device)
        if tapped and taps:
            with torch.no_grad():
                ref = teacher_mirror(samples[i], taps=taps)
            errors = [divergence("relative", ref[n], got[n]) for n in taps
                      if got[n].is_floating_point() and got[n].shape == ref[n].shape]
            inner = torch.stack(errors).mean() if errors else inner
        return torch.stack(terms).mean(), inner

    def held_out() -> float:
        with torch.no_grad():
            weights, _ = state.decoded()
            return float(np.mean([float(distortion(i, weights)[0]) for i in held_idx]))

    with torch.no_grad():
        _, codes = state.decoded()
        rate_before = float(state.rate(codes))
    before = held_out()
    train_ref = max(before, 1e-12)
    budget = rate_before
    best = (before, state.snapshot(), rate_before)
    lam = LAMBDA_START
    transform_params = list(state.log_steps.values()) + list(state.dead_zones.values())
    weight_params = [state.codes[t.name] for t in tuned]
    opt_transform = NormalizedDescent(transform_params, LR_TRANSFORM)
    opt_weights = NormalizedDescent(weight_params, LR_WEIGHTS)  # codes: in steps
    order = np.random.default_rng(options.seed).permutation(train_idx).tolist() if train_idx else held_idx
    phase_len = max(1, options.steps // 4)
    nonfinite: set[str] = set()
    tap_ref: float | None = None
    done = 0
    for done in range(1, options.steps + 1):
        if options.minutes is not None and time.perf_counter() - start > 60 * options.minutes:
            done -= 1
            break
        weights_phase = options.weights and ((done - 1) // phase_len) % 2 == 1
        batch = [order[(BATCH * (done - 1) + k) % len(order)] for k in range(min(BATCH, len(order)))]
        opt_transform.zero_grad()
        opt_weights.zero_grad()
        weights, codes = state.decoded()
        rate_t = state.rate(codes)
        # one sample per forward and backward (their shapes may differ, and only one sample's activations
        # are held: a batch of 8 at once took 17 GB on OCR det), into the decoded weights as leaves; then
        # one backward from the weights and the rate to the parameters
        leaves = {name: w.detach().requires_grad_() for name, w in weights.items()}
        if taps and tap_ref is None:
            with torch.no_grad():
                tap_ref = max(float(np.mean([float(distortion(i, leaves, tapped=True)[1]) for i in batch])), 1e-12)
        fit = inner = 0.0
        for i in batch:
            out, layer_error = distortion(i, leaves, tapped=True)
            part = out / (len(batch) * train_ref)
            if taps:
                part = part + TAP_WEIGHT * layer_error / (len(batch) * tap_ref)
            part.backward()
            fit += float(out.detach()) / (len(batch) * train_ref)
            inner += float(layer_error.detach()) / len(batch)
        rate_term = lam * rate_t / budget
        reached = [(weights[n], leaf.grad) for n, leaf in leaves.items() if leaf.grad is not None]
        torch.autograd.backward([rate_term, *(w for w, _ in reached)],
                                [torch.ones_like(rate_term), *(g for _, g in reached)])
        loss = fit + float(rate_term.detach()) + (TAP_WEIGHT * inner / tap_ref if taps and tap_ref else 0.0)
        if not math.isfinite(loss):
            log.warning("joint optimizer step %d: non-finite loss; step skipped", done)
            continue
        for t in tuned:  # e.g. a sqrt at 0 downstream (an STFT magnitude): that entry's gradient is dropped
            for p in (state.codes[t.name], state.log_steps[t.name], state.dead_zones[t.name]):
                if p.grad is not None and not torch.isfinite(p.grad).all():
                    if t.name not in nonfinite:
                        log.info("joint optimizer: non-finite gradients of %s set to 0", t.name)
                        nonfinite.add(t.name)
                    p.grad.nan_to_num_(0.0, 0.0, 0.0)
        (opt_weights if weights_phase else opt_transform).step()
        rate = float(rate_t.detach())
        lam = float(np.clip(lam * math.exp(DUAL_RATE * (rate / budget - 1.0)), 1e-3, 1e3))
        if done % EVAL_EVERY == 0 or done == options.steps:
            score = held_out()
            with torch.no_grad():
                _, now_codes = state.decoded()
                now_rate = float(state.rate(now_codes))
            # a state far under the planned bytes would miss the target (and be dropped by the writer)
            if RATE_WINDOW[0] * budget <= now_rate <= RATE_WINDOW[1] * budget and score < best[0]:
                best = (score, state.snapshot(), now_rate)
            log.info("joint optimizer step %d/%d: loss %.4g, rate %.4f of the plan, held-out %.4f of the plan's, "
                     "lambda %.3g", done, options.steps, loss, now_rate / budget,
                     score / max(before, 1e-30), lam)
            if progress is not None:
                progress(done, options.steps, {"loss": loss, "rate": now_rate / budget,
                                               "held_out": score / max(before, 1e-30), "lambda": lam})
    seconds = time.perf_counter() - start
    notes = []
    if best[0] >= before:
        notes.append(f"joint optimizer: no state beat the post-training plan on the {len(held_idx)} held-out "
                     f"samples ({before:.4g}); the post-training plan is kept")
        return FinetuneResult({}, before, before, rate_before, rate_before, done, seconds, notes)
    notes.append(f"joint optimizer: held-out divergence {before:.4g} -> {best[0]:.4g} over {len(held_idx)} "
                 f"samples, {done} steps in {seconds:.0f} s")
    return FinetuneResult(state.recipes(best[1]), before, best[0], rate_before, best[2], done, seconds, notes)
