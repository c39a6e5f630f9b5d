"""Per-tensor sensitivity of the model's outputs, without labels.

The Fisher information of the model's own output distribution is the Hessian
of KL(original ‖ perturbed). For each weight alone we add Gaussian noise of a
known variance, run onnxruntime on calibration samples and read the output
divergence; divided by the expected layer-local error of that noise, it turns
a tensor's layer-local error tr(ΔW·H·ΔWᵀ) (or ‖ΔW‖²) into an estimate of the
output divergence it causes: KL for class distributions (probabilities, or
outputs named like logits), 1 − cosine for unit-norm embeddings, relative
squared error for everything else (maps, scores, states).

An already-quantized weight (int8/uint8 integers with a zero point) gets the
same noise in units of its stored step, rounded onto its integer grid; its
realized mean square stands for the variance.

Weights are fed as inputs of the same session (initializers listed as graph
inputs are overridable in onnxruntime), so one session serves every tensor.
Initializers of subgraphs (If branches, Loop/Scan bodies) are moved to the
main graph for this, where the subgraph reads them as outer-scope values.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnx_l2c.measure.calibration import (Feeds, InputSpec, ScratchModel, batches, make_session,
                                          release_freed_memory)
from onnx_l2c.errors import L2CError
from onnx_l2c.codec import (PACKED_BITS, STORAGE, bits_to_float32, integer_range, quantized_storage,
                            quantized_values)
from onnx_l2c.graph.edit import make_feedable
from onnx_l2c.graph.model import WeightRef, tensor_bits
from onnx_l2c.measure.layers import LayerStats
from onnx_l2c.progress import SENSITIVITY, Progress

log = logging.getLogger(__name__)

NOISE_REL = 0.05  # noise std relative to the tensor's rms
# How many samples the perturbation runs use: samples × probed tensors ×
# weight elements of the model stays under PROBE_BUDGET, and samples × probed
# tensors × the model's multiply-adds per sample under PROBE_MACS (from the
# statistics: each layer's input vectors × its weights), deterministic
# stand-ins for their time (a timed budget made the sample count, and so the
# output bytes, depend on the machine's load). EfficientNet-Lite0 (55
# tensors, 4.6 M weights, 0.36 G multiply-adds) gets 32 samples, a 22 M-weight
# transformer ~18, PP-OCRv4 rec 24 (0.69 G), and PP-OCRv4 det on 736×736
# pages the floor of 4 (46 tensors, 1.2 M weights but 3.7 G multiply-adds: a
# probe run took 0.3 s per sample here, 15× EfficientNet's).
PROBE_BUDGET = 16e9
PROBE_MACS = 7e11
MIN_SAMPLES, MAX_SAMPLES = 4, 32
# Samples per perturbation run: up to 16, fewer when their inputs add up to
# more than this. A detector's activations are tens of times its input, so
# 16 of its 736×736 images in one run took gigabytes; image classifiers at
# 224×224 and token inputs still run 16 at a time.
MAX_BATCH = 16
BATCH_INPUT_BYTES = 10 << 20
HELD_INPUT_BYTES = 64 << 20  # the probes' inputs are kept in memory up to this size, else read per probe


@dataclass
class Sensitivity:
    """scale[name]: output divergence per unit of layer-local error."""

    scale: dict[str, float] = field(default_factory=dict)
    measured: set[str] = field(default_factory=set)  # the rest use a fallback
    # perturbed, but the outputs did not move (e.g. a branch the samples never take)
    no_effect: set[str] = field(default_factory=set)
    divergences: dict[str, str] = field(default_factory=dict)  # output → divergence used
    samples: int = 0
    seconds: float = 0.0


def unit_error(w: WeightRef, stats: LayerStats | None) -> float:
    """Expected layer-local error of iid unit-variance noise on the tensor."""
    return stats.noise_error() if stats is not None else float(w.weight_count)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


_LOGIT_NAMES = ("logit", "class", "score")


def divergence_kind(name: str, y: np.ndarray) -> str:
    """The divergence that fits an output: KL for class distributions
    (probabilities, or outputs named like logits), 1 − cosine for unit-norm
    embeddings, relative squared error for everything else."""
    if not np.issubdtype(y.dtype, np.floating) or y.ndim < 2 or y.shape[-1] < 2:
        return "relative_mse"
    rows = y.reshape(-1, y.shape[-1]).astype(np.float64)
    if (rows >= 0).all() and np.allclose(rows.sum(axis=-1), 1.0, atol=1e-3):
        return "kl_probabilities"
    if any(key in name.lower() for key in _LOGIT_NAMES):
        return "kl_softmax"
    norms = np.linalg.norm(rows, axis=-1)
    if np.allclose(norms, 1.0, atol=1e-3) or "embed" in name.lower():
        return "cosine"
    return "relative_mse"


def _divergence(kind: str, ref: np.ndarray, out: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    out = out.astype(np.float64)
    if kind.startswith("kl"):
        ref, out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
        p = ref if kind == "kl_probabilities" else _softmax(ref)
        q = out if kind == "kl_probabilities" else _softmax(out)
        q = np.maximum(q, 1e-12)
        return float((p * (np.log(np.maximum(p, 1e-12)) - np.log(q))).sum(axis=-1).mean())
    if kind == "cosine":
        ref, out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
        dot = (ref * out).sum(axis=-1)
        norm = np.linalg.norm(ref, axis=-1) * np.linalg.norm(out, axis=-1)
        return float((1.0 - dot / np.maximum(norm, 1e-30)).mean())
    return float(((out - ref) ** 2).sum() / max((ref ** 2).sum(), 1e-30))


def probe_samples(probed: int, weight_elements: int, available: int, macs_per_sample: float = 0.0) -> int:
    """The number of calibration samples the sensitivity probes use
    (PROBE_BUDGET, and PROBE_MACS when the multiply-adds are known)."""
    n = PROBE_BUDGET / max(probed * weight_elements, 1)
    if macs_per_sample > 0:
        n = min(n, PROBE_MACS / max(probed * macs_per_sample, 1.0))
    return min(int(np.clip(n, MIN_SAMPLES, MAX_SAMPLES)), available)


def macs_per_sample(weights: list[WeightRef], stats: dict[str, LayerStats], samples: int) -> float:
    """Multiply-adds per sample of the weights' layers, from the statistics'
    input vector counts (0 when none were counted)."""
    total = sum(w.numel * stats[w.name].positions for w in weights if w.name in stats)
    return float(total) / max(samples, 1)


def measure_sensitivity(model: onnx.ModelProto, base_dir: Path, weights: list[WeightRef],
                        stats: dict[str, LayerStats], samples: Sequence[Feeds],
                        inputs: list[InputSpec], progress: Progress | None = None) -> Sensitivity:
    start = time.perf_counter()
    result = Sensitivity()
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    probe = make_feedable(proto, weights)
    if not probe or not samples:
        return result
    with ScratchModel(proto, base_dir) as scratch:
        session = make_session(scratch)
        out_names = [o.name for o in session.get_outputs()]

        def run(feeds: Feeds, extra: dict[str, np.ndarray]) -> list[np.ndarray]:
            try:
                return session.run(None, {**feeds, **extra})
            except Exception as exc:  # onnxruntime raises its own exception types
                raise L2CError(f"sensitivity: onnxruntime failed: {exc}") from exc

        n = probe_samples(len(probe), sum(w.numel for w in weights), len(samples),
                          macs_per_sample(weights, stats, len(samples)))
        first = sum(np.asarray(v).nbytes for v in samples[0].values())
        max_batch = int(np.clip(BATCH_INPUT_BYTES // max(first, 1), 1, MAX_BATCH))

        held = [f for f, _ in batches(samples[:n], inputs, max_batch)] if first * n <= HELD_INPUT_BYTES else None

        def probe_batches() -> Iterator[Feeds]:
            # Larger inputs are batched again for every probe rather than
            # held: a folder's samples are read from disk each time (32
            # detector images are 400 MB); the reference outputs stay.
            return iter(held) if held is not None else (f for f, _ in batches(samples[:n], inputs, max_batch))

        reference = [run(f, {}) for f in probe_batches()]
        kinds = {}
        for k, name in enumerate(out_names):
            y = np.asarray(reference[0][k])
            if np.issubdtype(y.dtype, np.floating):
                kinds[k] = divergence_kind(name, y)
                result.divergences[name] = kinds[k]
        for i, w in enumerate(probe):
            if progress is not None:
                progress(i, len(probe), SENSITIVITY)
            if w.dtype == onnx.TensorProto.BFLOAT16 or w.dtype in PACKED_BITS:
                continue  # numpy cannot feed bfloat16, onnxruntime no int4 array: they get the fallback
            bits = tensor_bits(w.tensor, base_dir)
            if w.zero_point is not None:  # an already-quantized weight: in units of its stored step
                stored = bits.view(STORAGE[w.dtype]).reshape(w.shape)
                values = quantized_values(stored, w.dtype, w.zero_point, w.field_bits).astype(np.float64)
            else:
                values = bits_to_float32(bits, w.dtype).reshape(w.shape).astype(np.float64)
            if not np.isfinite(values).all():
                continue
            rms = float(np.sqrt((values ** 2).mean()))
            if rms == 0.0:
                continue
            rng = np.random.default_rng(zlib.crc32(w.name.encode()))
            sigma = NOISE_REL * rms
            noisy = values + rng.standard_normal(values.shape) * sigma
            if w.zero_point is not None:
                # the noise rounded onto the integer grid (and clipped to the dtype):
                # its realized mean square, not sigma², is what the outputs saw
                low, high = integer_range(w.dtype, w.field_bits)
                noisy_integers = np.clip(np.round(noisy) + w.zero_point, low, high)
                sigma = float(np.sqrt(((noisy_integers - w.zero_point - values) ** 2).mean()))
                if sigma == 0.0:
                    continue
                feed = quantized_storage(noisy_integers, w.dtype, w.shape, w.field_bits)
            else:
                feed = noisy.astype(onnx.helper.tensor_dtype_to_np_dtype(w.dtype))
            div = 0.0
            for ref_run, feeds in zip(reference, probe_batches()):
                out_run = run(feeds, {w.name: feed})  # one batch's outputs at a time
                for k, kind in kinds.items():
                    div += _divergence(kind, np.asarray(ref_run[k]), np.asarray(out_run[k]))
            div /= max(len(reference), 1)
            release_freed_memory()  # this probe's outputs and noisy weights
            if not div > 0.0:
                result.no_effect.add(w.name)
                continue
            result.scale[w.name] = div / (sigma ** 2 * unit_error(w, stats.get(w.name)))
            result.measured.add(w.name)
        result.samples = n
        if progress is not None:
            progress(len(probe), len(probe), SENSITIVITY)
    result.seconds = time.perf_counter() - start
    log.info("sensitivity of %d tensors from %d samples in %.1f s", len(result.measured), result.samples,
             result.seconds)
    return result
