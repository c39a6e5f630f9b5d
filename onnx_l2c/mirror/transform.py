"""The joint optimizer's differentiable pieces: the unified quantize-and-prune
transform and the estimate of its coded size.

The transform is the `affine` stage's quantizer (passes/gptq.py:
`quantize_nearest`, `dequantize`): with a per-channel step s, a dead zone
d and the decoder's offset θ, q = sign(w)·round(|w|/s) where |w|/s ≥ ½ + d,
else 0, decoded as (q − sign(q)·θ)·s. Pruning is the dead zone: its edge is
e = (½ + d)·s. The forward pass gives exactly those values; the backward
pass is a straight-through estimator: rounding passes its gradient through,
and the dead zone's hard mask takes the gradient of a sigmoid of width
`TEMPERATURE` steps around the edge, so steps, the dead zone and the weights
(or their continuous codes, `quantize_codes`) all get gradients.
`soft=True` evaluates that surrogate itself (what the backward pass
differentiates), for checking the gradients numerically.

The rate is what the `entropy` stage's rANS stream will take: the ideal code
length of the symbols under their own histogram (counted exactly in the
forward pass; differentiated through a triangular soft histogram of the
continuous codes |w|/s) plus the stream's header and frequency table and the
payload's fixed bytes, mirroring the encoder's own size estimate
(runtime/src/stream.cc). It only guides: the real coder writes the file.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from onnx_l2c.passes.gptq import QMAX

Tensor = torch.Tensor
# Width of the dead zone's surrogate sigmoid, in steps. Narrower (0.1, 0.25)
# makes the edge's gradient dominate and a step fitted to the output error
# alone runs away from 2x rms; 0.5 and 1 converge from 0.5x and 2x alike.
TEMPERATURE = 0.5
LANES = 8
# stream header, data_size and the lanes' states, less what the states carry:
# each final state holds ~2 bytes of the code, each lane's own 16-bit word
# rounding costs ~1 (measured against the encoder: tests/test_mirror.py)
STREAM_FIXED = 16 + 8 + 4 * LANES - LANES
MAX_SCALE_BITS = 16
RANS_L = 1 << 16


def _per_channel(t: Tensor, w: Tensor, axis: int | None) -> Tensor:
    """A per-channel parameter shaped to broadcast against w along `axis`."""
    if axis is None or t.numel() == 1:
        return t.reshape(())
    shape = [1] * w.dim()
    shape[axis] = -1
    return t.reshape(shape)


def quantize_codes(u: Tensor, step: Tensor, dead_zone: Tensor, theta: float, axis: int | None = None,
                   soft: bool = False) -> tuple[Tensor, Tensor]:
    """(decoded weight, signed codes) from continuous codes u (weights in
    units of their step): q = sign(u)·round(|u|) where |u| ≥ ½ + d, else 0,
    decoded as (q − sign(q)·θ)·s.

    The joint optimizer trains u, the steps and the dead zone: a step then
    scales its channel's decoded weights without moving any code, so its
    gradient is exact; rounding and the dead zone's edge pass straight-through
    gradients to u and d. step: per channel along `axis` (or one)."""
    s = _per_channel(step, u, axis)
    dz = _per_channel(dead_zone, u, axis)
    a = u.abs()
    edge = 0.5 + dz
    soft_mask = torch.sigmoid((a - edge) / TEMPERATURE)
    if soft:
        level, mask = a, soft_mask
    else:
        rounded = torch.clamp(torch.floor(a + 0.5), max=QMAX)
        level = a + (rounded - a).detach()
        hard = (a >= edge).to(u.dtype)
        mask = soft_mask + (hard - soft_mask).detach()
    sign = torch.sign(u)
    return sign * mask * (level - theta) * s, sign * mask * level


def fake_quantize(w: Tensor, step: Tensor, dead_zone: Tensor, theta: float, axis: int | None = None,
                  soft: bool = False) -> tuple[Tensor, Tensor]:
    """`quantize_codes` of the weights themselves (u = w / s): the affine
    stage's quantizer as a function of w, with straight-through gradients to
    w, the steps (through the codes, as LSQ) and the dead zone."""
    return quantize_codes(w / _per_channel(step, w, axis), step, dead_zone, theta, axis, soft)


def _varint_size(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.int64)
    return 1 + (v >= 1 << 7) + (v >= 1 << 14) + (v >= 1 << 21) + (v >= 1 << 28)


def stream_overhead(counts: np.ndarray, present: np.ndarray) -> tuple[float, int]:
    """(extra bits over the ideal code length, bytes of header and table) of
    the rANS stream the encoder would write for these symbol counts, with the
    scale_bits it would pick (frequencies rounded, the most frequent symbol
    absorbing the rounding: close to, not exactly, the encoder's own)."""
    n = int(counts.sum())
    gaps = np.diff(present, prepend=present[0]) - 1
    gaps[0] = present[0]
    needed = max(1, math.ceil(math.log2(len(counts))))
    best: tuple[float, float, int] | None = None
    ideal = float(-(counts * np.log2(counts / n)).sum())
    for sb in range(needed, MAX_SCALE_BITS + 1):
        freq = np.maximum(np.rint(counts * (1 << sb) / n), 1)
        largest = int(np.argmax(freq))  # the encoder spreads the rounding error; here the largest takes it
        freq[largest] += (1 << sb) - freq.sum()
        if freq[largest] < 1:
            continue
        bits = float((counts * (sb - np.log2(freq))).sum()) + 0.004 * ((1 << sb) / RANS_L) ** 2 * n
        table = int(_varint_size(len(counts))) + int(_varint_size(gaps).sum() + _varint_size(freq - 1).sum())
        total = STREAM_FIXED + table + bits / 8
        if best is None or total < best[0]:
            best = (total, bits - ideal, table)
    assert best is not None
    return best[1], STREAM_FIXED + best[2]


def rate_bytes(codes: Tensor, fixed_bytes: int = 0) -> Tensor:
    """Estimated bytes of the entropy stream of these codes (from
    `fake_quantize`) plus `fixed_bytes` (the payload's other bytes), as a
    differentiable scalar."""
    flat = codes.reshape(-1)
    n = flat.numel()
    hard = torch.floor(flat.detach().abs() + 0.5) * torch.sign(flat.detach())  # the symbols the coder sees
    low = int(hard.min())
    symbols = (hard - low).to(torch.int64)
    span = int(symbols.max()) + 1
    hard_counts = torch.bincount(symbols, minlength=span).to(flat.dtype)
    # triangular soft histogram of the continuous codes: the gradient path
    position = (flat - low).clamp(0, span - 1)
    below = torch.floor(position.detach()).to(torch.int64).clamp(max=span - 1)
    frac = position - below
    above = (below + 1).clamp(max=span - 1)
    soft_counts = torch.zeros(span, dtype=flat.dtype, device=flat.device).index_add(0, below, 1 - frac)
    soft_counts = soft_counts.index_add(0, above, frac)
    counts = soft_counts + (hard_counts - soft_counts).detach()
    present = hard_counts > 0
    if int(present.sum()) < 2:  # a constant stream: its header only
        return torch.zeros((), dtype=flat.dtype) * flat.sum() + 16 + fixed_bytes
    used = counts[present]
    ideal_bits = -(used * torch.log2(used / n)).sum()
    extra_bits, overhead = stream_overhead(hard_counts[present].cpu().numpy().astype(np.float64),
                                           np.nonzero(present.cpu().numpy())[0])
    stored = 16 + n * (1 if span <= 256 else 2)
    estimate = (ideal_bits + extra_bits) / 8 + overhead
    if float(estimate.detach()) >= stored:  # the encoder would store the indices raw
        return torch.zeros((), dtype=flat.dtype) * flat.sum() + stored + fixed_bytes
    return estimate + fixed_bytes
