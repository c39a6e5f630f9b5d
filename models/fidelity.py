"""Fidelity metrics comparing a reference model's outputs with a candidate's (pure numpy)."""

from __future__ import annotations

import numpy as np


def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D [N, C] array, got shape {a.shape}")
    return a


def _check_pair(ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, c = _as_2d(ref), _as_2d(cand)
    if r.shape != c.shape:
        raise ValueError(f"shape mismatch: {r.shape} vs {c.shape}")
    if r.shape[0] == 0:
        raise ValueError("empty batch")
    return r, c


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def top1_agreement(ref_logits: np.ndarray, cand_logits: np.ndarray) -> float:
    """Fraction of rows whose argmax class is the same in both."""
    r, c = _check_pair(ref_logits, cand_logits)
    return float(np.mean(r.argmax(axis=1) == c.argmax(axis=1)))


def top5_overlap(ref_logits: np.ndarray, cand_logits: np.ndarray, k: int = 5) -> float:
    """Mean over rows of |top-k(ref) ∩ top-k(cand)| / k."""
    r, c = _check_pair(ref_logits, cand_logits)
    k = min(k, r.shape[1])
    tr = np.argsort(-r, axis=1, kind="stable")[:, :k]
    tc = np.argsort(-c, axis=1, kind="stable")[:, :k]
    overlaps = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(tr, tc)]
    return float(np.mean(overlaps))


def mean_kl(ref_logits: np.ndarray, cand_logits: np.ndarray) -> float:
    """Mean over rows of KL(softmax(ref) || softmax(cand)) in nats."""
    r, c = _check_pair(ref_logits, cand_logits)
    lr, lc = _log_softmax(r), _log_softmax(c)
    kl = (np.exp(lr) * (lr - lc)).sum(axis=1)
    return float(np.mean(np.maximum(kl, 0.0)))


def cosine_stats(ref_emb: np.ndarray, cand_emb: np.ndarray) -> tuple[float, float]:
    """(mean, min) over rows of the cosine similarity between paired embeddings."""
    r, c = _check_pair(ref_emb, cand_emb)
    nr = np.linalg.norm(r, axis=1)
    nc = np.linalg.norm(c, axis=1)
    cos = (r * c).sum(axis=1) / np.maximum(nr * nc, 1e-12)
    return float(cos.mean()), float(cos.min())


# ------------------------------------------------------------------- confidence beside each metric
# How sure a fidelity claim is depends on how many samples decided it: the
# fields below say how many samples there were, how many disagreed and (for
# the headline, in tasks.Task.score) how many more the bar allows.

CONFIDENCE_SUFFIXES = ("_samples", "_disagree", "_wilson_low", "_wilson_high", "_margin_samples", "_below_bar",
                       "_ci_low", "_ci_high", "_margin")


def is_confidence_key(key: str, metrics: dict[str, float]) -> bool:
    """Whether `key` is a confidence field of another metric in `metrics` (not a metric itself)."""
    return any(key.endswith(s) and key[: -len(s)] in metrics for s in CONFIDENCE_SUFFIXES)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% for z = 1.96) of a proportion successes / n."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at k = 0 or k = n the exact bound is 0 or 1; rounding would put it a hair inside
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return float(lo), float(hi)


def agreement_fields(key: str, agree: np.ndarray) -> dict[str, float]:
    """`key` (the agreeing fraction) with its sample count, disagreements and Wilson 95% interval."""
    a = np.asarray(agree, dtype=bool).ravel()
    n, k = int(a.size), int(np.count_nonzero(a))
    lo, hi = wilson_interval(k, n)
    return {key: float(k / n) if n else float("nan"), f"{key}_samples": float(n), f"{key}_disagree": float(n - k),
            f"{key}_wilson_low": lo, f"{key}_wilson_high": hi}


def mean_fields(key: str, values: np.ndarray, bar: float | None = None) -> dict[str, float]:
    """`key` (the mean of per-sample values) with its sample count, a normal 95% interval of the
    mean and, given the bar, how many samples are below it on their own."""
    v = np.asarray(values, dtype=np.float64).ravel()
    n = int(v.size)
    mean = float(v.mean())
    half = 1.96 * float(v.std(ddof=1)) / np.sqrt(n) if n > 1 else 0.0
    out = {key: mean, f"{key}_samples": float(n), f"{key}_ci_low": mean - half, f"{key}_ci_high": mean + half}
    if bar is not None:
        out[f"{key}_below_bar"] = float(np.count_nonzero(v < bar))
    return out


def allowed_disagreements(n: int, bar: float) -> int:
    """The most disagreements among n samples that keep the agreeing fraction >= bar
    (with the same float comparison as the pass/fail test)."""
    d = int(np.floor(n * (1.0 - bar) + 1e-9))
    while d >= 0 and (n - d) / n < bar:
        d -= 1
    while d + 1 <= n and (n - d - 1) / n >= bar:
        d += 1
    return d
