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
