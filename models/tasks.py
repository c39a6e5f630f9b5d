"""Evaluation tasks: how to run a zoo model on its real inputs and score a
candidate against the original.

A `Task` runs an onnxruntime session over one split of its inputs and returns
whatever the model's outputs are (`run`), and turns the original's and a
candidate's results into metrics (`metrics`). The headline metric and its bar
(issue 3's fidelity bars) decide "same behaviour".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .fidelity import cosine_stats, mean_kl, top1_agreement, top5_overlap

Session = Any  # onnxruntime.InferenceSession (or anything with .run)


@dataclass(frozen=True)
class Task:
    name: str
    run: Callable[[Session, str], Any]  # (session, split) -> results
    metrics: Callable[[Any, Any], dict[str, float]]  # (original results, candidate results) -> metrics
    headline: str  # metric key the fidelity bar applies to
    bar: float  # candidate passes when metrics[headline] >= bar


def _batched(sess: Session, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def _effnet_run(sess: Session, split: str) -> np.ndarray:
    from .data import imagenet_photos

    images = imagenet_photos(split)
    return _batched(sess, [{"input": images[i:i + 25]} for i in range(0, len(images), 25)])


def _classifier_metrics(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    return {"top1_agreement": top1_agreement(ref, cand), "top5_overlap": top5_overlap(ref, cand),
            "mean_kl": mean_kl(ref, cand)}


def _minilm_run(sess: Session, split: str) -> np.ndarray:
    from .data import minilm_feeds, sentences

    texts = sentences(split)
    return _batched(sess, [minilm_feeds(texts[i:i + 32]) for i in range(0, len(texts), 32)])


def _embedding_metrics(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    mean_cos, min_cos = cosine_stats(ref, cand)
    # nearest-neighbour retrieval agreement: each embedding's nearest other
    # embedding is the same for both models
    def nn(e: np.ndarray) -> np.ndarray:
        sims = e @ e.T
        np.fill_diagonal(sims, -np.inf)
        return sims.argmax(axis=1)

    return {"mean_cosine": mean_cos, "min_cosine": min_cos, "nn_agreement": float(np.mean(nn(ref) == nn(cand)))}


TASKS: dict[str, Task] = {
    "efficientnet_lite0": Task("efficientnet_lite0", _effnet_run, _classifier_metrics, "top1_agreement", 0.99),
    "minilm": Task("minilm", _minilm_run, _embedding_metrics, "mean_cosine", 0.99),
}
