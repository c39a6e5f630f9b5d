"""Evaluation tasks: how to run a zoo model on its real inputs and score a
candidate against the original.

A `Task` runs an onnxruntime session over one split of its inputs and returns
whatever the model's outputs are (`run`), and turns the original's and a
candidate's results into metrics (`metrics`; `score` adds how much room the
bar leaves). The headline metric and its bar (issue 3's fidelity bars) decide
"same behaviour".

Splits: ``calibration`` and ``evaluation`` (disjoint, from one pool of
sources) and ``other`` (issue 16: inputs gathered from other sources, so that a
claim made on the evaluation split is checked on data nobody chose with it).
Every agreement metric comes with its sample count, the number of samples that
disagree and a Wilson 95% interval; mean metrics with a 95% interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import ALL_SPLITS, OTHER, check_split
from .fidelity import agreement_fields, allowed_disagreements, mean_fields, mean_kl, top5_overlap

Session = Any  # onnxruntime.InferenceSession (or anything with .run)


@dataclass(frozen=True)
class Task:
    name: str
    run: Callable[[Session, str], Any]  # (session, split) -> results
    metrics: Callable[[Any, Any], dict[str, float]]  # (original results, candidate results) -> metrics
    headline: str  # metric key the fidelity bar applies to
    bar: float  # candidate passes when metrics[headline] >= bar
    # bump when the inputs of any split change: cached reference results are keyed by it (and the split)
    data_version: str = "1"
    # calibration(n): up to n feed dicts from the calibration split (disjoint from evaluation)
    calibration: Callable[[int], list[dict[str, np.ndarray]]] | None = None
    inputs: tuple[str, ...] = ()  # the graph inputs the task feeds (checked before a run)
    splits: tuple[str, ...] = ALL_SPLITS

    def __post_init__(self) -> None:
        # every run goes through the split check, so a typo names the valid splits
        # instead of failing deep inside a data module
        run, splits = self.run, self.splits

        def checked(session: Session, split: str) -> Any:
            check_split(split, splits)
            return run(session, split)

        object.__setattr__(self, "run", checked)

    def score(self, ref: Any, cand: Any) -> dict[str, float]:
        """`metrics` plus the headline's room under the bar: for an agreement,
        ``<headline>_margin_samples`` (how many more samples may disagree; negative:
        that many too many); for a mean, ``<headline>_margin`` (value - bar)."""
        m = {k: float(v) for k, v in self.metrics(ref, cand).items()}
        h = self.headline
        if f"{h}_disagree" in m:
            n = int(m[f"{h}_samples"])
            m[f"{h}_margin_samples"] = float(allowed_disagreements(n, self.bar) - int(m[f"{h}_disagree"]))
        elif h in m:
            m[f"{h}_margin"] = m[h] - self.bar
        return m


def _spread(items: list, n: int) -> list:
    """n items spread evenly over the list (so every source photo/file/clip is represented)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n)]


def _effnet_calibration(n: int) -> list[dict[str, np.ndarray]]:
    from .data import imagenet_photos

    images = imagenet_photos("calibration")
    return _spread([{"input": images[i:i + 1]} for i in range(len(images))], n)


def _minilm_calibration(n: int) -> list[dict[str, np.ndarray]]:
    from .data import minilm_feeds, sentences

    return [minilm_feeds([s]) for s in _spread(sentences("calibration"), n)]


def _magika_calibration(n: int) -> list[dict[str, np.ndarray]]:
    from .data_files import magika_inputs

    x, _, _ = magika_inputs("calibration")
    return _spread([{"bytes": x[i:i + 1]} for i in range(len(x))], n)


def _ocr_det_calibration(n: int) -> list[dict[str, np.ndarray]]:
    from .data_ocr import ocr_det_inputs

    return _spread([{"x": x} for x in ocr_det_inputs("calibration")], n)


def _ocr_rec_calibration(n: int) -> list[dict[str, np.ndarray]]:
    from .data_ocr import ocr_rec_batches

    batches, _ = ocr_rec_batches("calibration")
    return _spread([{"x": x[i:i + 1]} for x in batches for i in range(len(x))], n)


def _vad_calibration(n: int) -> list[dict[str, np.ndarray]]:
    """Recorded steps of the stateful loop (input chunk with context, state) over calibration clips."""
    import onnxruntime as ort

    from .data_audio import CHUNK, CONTEXT, SAMPLE_RATE, vad_clips
    from .zoo import zoo_path

    sess = ort.InferenceSession(str(zoo_path("silero_vad")), providers=["CPUExecutionProvider"])
    clips = np.ascontiguousarray(vad_clips("calibration"), dtype=np.float32)
    clips = clips[np.linspace(0, len(clips) - 1, min(8, len(clips))).astype(int)]
    steps = clips.shape[1] // CHUNK
    sr = np.array(SAMPLE_RATE, dtype=np.int64)
    state = np.zeros((2, len(clips), 128), np.float32)
    context = np.zeros((len(clips), CONTEXT), np.float32)
    feeds = []
    for t in range(steps):
        inp = np.concatenate([context, clips[:, t * CHUNK:(t + 1) * CHUNK]], axis=1)
        feeds.append({"input": inp, "state": state, "sr": sr})
        _, state = sess.run(["output", "stateN"], {"input": inp, "state": state, "sr": sr})
        context = inp[:, -CONTEXT:]
    return _spread(feeds, n)


def _batched(sess: Session, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def _effnet_run(sess: Session, split: str) -> np.ndarray:
    from .data import imagenet_other, imagenet_photos

    images = imagenet_other()[0] if split == OTHER else imagenet_photos(split)
    return _batched(sess, [{"input": images[i:i + 25]} for i in range(0, len(images), 25)])


def _classifier_metrics(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    r, c = np.asarray(ref), np.asarray(cand)
    if r.shape != c.shape or r.ndim != 2:
        raise ValueError(f"expected two [N, C] logits of one shape, got {r.shape} and {c.shape}")
    return {**agreement_fields("top1_agreement", r.argmax(1) == c.argmax(1)), "top5_overlap": top5_overlap(r, c),
            "mean_kl": mean_kl(r, c)}


MINILM_BAR = 0.99


def _minilm_run(sess: Session, split: str) -> np.ndarray | dict[str, np.ndarray]:
    """Sentence embeddings [N, 384]; on ``other`` with, per sentence, whether it holds a
    token the calibration split never used (``unseen``)."""
    from .data import minilm_feeds, sentences
    from .data_text import sentences_other, sentences_other_info

    texts = sentences_other() if split == OTHER else sentences(split)
    emb = _batched(sess, [minilm_feeds(texts[i:i + 32]) for i in range(0, len(texts), 32)])
    if split == OTHER:
        return {"embeddings": emb, "unseen": sentences_other_info()["unseen_tokens"] > 0}
    return emb


def _embedding_metrics(ref: np.ndarray | dict, cand: np.ndarray | dict) -> dict[str, float]:
    unseen = ref.get("unseen") if isinstance(ref, dict) else None
    r = np.asarray(ref["embeddings"] if isinstance(ref, dict) else ref, np.float64)
    c = np.asarray(cand["embeddings"] if isinstance(cand, dict) else cand, np.float64)
    if r.shape != c.shape or r.ndim != 2:
        raise ValueError(f"expected two [N, D] embeddings of one shape, got {r.shape} and {c.shape}")
    cos = (r * c).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1), 1e-12)

    # nearest-neighbour retrieval agreement: each embedding's nearest other
    # embedding is the same for both models
    def nn(e: np.ndarray) -> np.ndarray:
        sims = e @ e.T
        np.fill_diagonal(sims, -np.inf)
        return sims.argmax(axis=1)

    out = {**mean_fields("mean_cosine", cos, MINILM_BAR), "min_cosine": float(cos.min()),
           **agreement_fields("nn_agreement", nn(r) == nn(c))}
    if unseen is not None:  # the sentences whose embedding rows calibration never saw
        mask = np.asarray(unseen, dtype=bool)
        out["unseen_token_sentences"] = float(mask.sum())
        if mask.any():
            out["mean_cosine_unseen"] = float(cos[mask].mean())
            out["min_cosine_unseen"] = float(cos[mask].min())
    return out


TASKS: dict[str, Task] = {
    "efficientnet_lite0": Task("efficientnet_lite0", _effnet_run, _classifier_metrics, "top1_agreement", 0.99, "2",
                               _effnet_calibration, inputs=("input",)),
    "minilm": Task("minilm", _minilm_run, _embedding_metrics, "mean_cosine", MINILM_BAR, "2", _minilm_calibration,
                   inputs=("input_ids", "attention_mask")),
}


# --------------------------------------------------------------------------- models shipped as ONNX on PyPI
# magika (content type from file bytes), ocr_det / ocr_rec (RapidOCR PP-OCRv4),
# silero_vad (voice activity, stateful). Inputs: models/data_files.py,
# models/data_ocr.py, models/data_audio.py.

def _magika_run(sess: Session, split: str) -> dict[str, Any]:
    from .data_files import magika_inputs, magika_other_inputs

    x, exts, _ = magika_other_inputs() if split == OTHER else magika_inputs(split)
    scores = np.concatenate([sess.run(None, {"bytes": x[i:i + 256]})[0] for i in range(0, len(x), 256)])
    return {"scores": scores, "exts": exts}


def _magika_metrics(ref: dict[str, Any], cand: dict[str, Any]) -> dict[str, float]:
    from .data_files import expected_labels, magika_labels, magika_output_labels

    labels = np.array(magika_labels())
    r, c = np.asarray(ref["scores"], np.float64), np.asarray(cand["scores"], np.float64)
    lr, lc = labels[r.argmax(1)], labels[c.argmax(1)]
    want = expected_labels(ref["exts"])

    def accuracy(pred: np.ndarray) -> float:
        return float(np.mean([p in w for p, w in zip(pred, want)]))

    pr, pc = np.clip(r, 1e-12, 1), np.clip(c, 1e-12, 1)
    return {
        **agreement_fields("label_agreement", lr == lc),
        **agreement_fields("output_label_agreement",
                           np.array(magika_output_labels(r)) == np.array(magika_output_labels(c))),
        "accuracy_ref": accuracy(lr),
        "accuracy_cand": accuracy(lc),
        "mean_kl": float(np.mean(np.maximum((pr * (np.log(pr) - np.log(pc))).sum(1), 0.0))),
        "max_abs_score_diff": float(np.max(np.abs(r - c))),
    }


def _ocr_det_run(sess: Session, split: str) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Per image: the text mask (probability > 0.3, as DBPostProcess), bit-packed, and its shape."""
    from .data_ocr import DET_THRESH, ocr_det_inputs

    out = []
    for x in ocr_det_inputs(split):
        mask = sess.run(None, {"x": x})[0][0, 0] > DET_THRESH
        out.append((np.packbits(mask), mask.shape))
    return out


OCR_DET_BAR = 0.95


def _ocr_det_metrics(ref: list, cand: list) -> dict[str, float]:
    ious, agree, frac_r, frac_c = [], [], [], []
    for (pr, shape_r), (pc, shape_c) in zip(ref, cand, strict=True):
        if tuple(shape_r) != tuple(shape_c):
            raise ValueError(f"detector output shapes differ: {shape_r} vs {shape_c}")
        n = int(np.prod(shape_r))
        mr = np.unpackbits(pr, count=n).astype(bool)
        mc = np.unpackbits(pc, count=n).astype(bool)
        union = int(np.count_nonzero(mr | mc))
        ious.append(1.0 if union == 0 else np.count_nonzero(mr & mc) / union)
        agree.append(float(np.mean(mr == mc)))
        frac_r.append(float(mr.mean()))
        frac_c.append(float(mc.mean()))
    return {**mean_fields("mean_iou", np.array(ious), OCR_DET_BAR), "min_iou": float(np.min(ious)),
            "pixel_agreement": float(np.mean(agree)),
            "text_fraction_ref": float(np.mean(frac_r)), "text_fraction_cand": float(np.mean(frac_c))}


def _ocr_rec_run(sess: Session, split: str) -> list[tuple[str, float]]:
    """Per text crop (in crop order): RapidOCR's CTC-decoded (text, mean confidence)."""
    from .data_ocr import ctc_decode, ocr_rec_batches

    batches, order = ocr_rec_batches(split)
    out: list[tuple[str, float]] = [("", 0.0)] * len(order)
    pos = 0
    for x in batches:
        for text_conf in ctc_decode(sess.run(None, {"x": x})[0]):
            out[int(order[pos])] = (text_conf[0], float(text_conf[1]))
            pos += 1
    return out


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _ocr_rec_metrics(ref: list[tuple[str, float]], cand: list[tuple[str, float]]) -> dict[str, float]:
    if len(ref) != len(cand):
        raise ValueError(f"result count mismatch: {len(ref)} vs {len(cand)}")
    edits = sum(_edit_distance(r[0], c[0]) for r, c in zip(ref, cand))
    chars = sum(len(r[0]) for r in ref)
    return {**agreement_fields("string_agreement", np.array([r[0] == c[0] for r, c in zip(ref, cand)])),
            "cer": edits / max(chars, 1),
            "mean_confidence_ref": float(np.mean([r[1] for r in ref])),
            "mean_confidence_cand": float(np.mean([c[1] for c in cand]))}


def _vad_run(sess: Session, split: str) -> np.ndarray | dict[str, np.ndarray]:
    """Speech probability per chunk [N clips, 128], state/context carried across chunks
    (16 kHz: 512-sample chunks; ``other`` adds 8 kHz clips, 256-sample chunks: then a
    dict of the probabilities of all clips and each clip's sample rate)."""
    from .data_audio import SAMPLE_RATE, SAMPLE_RATE_8K, run_silero, vad_clips, vad_other_clips

    if split != OTHER:
        return run_silero(sess, vad_clips(split))
    a8, a16 = vad_other_clips()
    probs = np.concatenate([run_silero(sess, a8, sample_rate=SAMPLE_RATE_8K), run_silero(sess, a16)])
    rate = np.array([SAMPLE_RATE_8K] * len(a8) + [SAMPLE_RATE] * len(a16), np.int32)
    return {"probs": probs, "rate": rate}


def _vad_metrics(ref: np.ndarray | dict, cand: np.ndarray | dict) -> dict[str, float]:
    rate = ref.get("rate") if isinstance(ref, dict) else None
    r = np.asarray(ref["probs"] if isinstance(ref, dict) else ref, np.float64)
    c = np.asarray(cand["probs"] if isinstance(cand, dict) else cand, np.float64)
    if r.shape != c.shape:
        raise ValueError(f"shape mismatch: {r.shape} vs {c.shape}")
    d = np.abs(r - c)
    # samples are chunks (neighbouring chunks of a clip are not independent)
    out = {**agreement_fields("decision_agreement", (r > 0.5) == (c > 0.5)),
           "mean_abs_prob_diff": float(d.mean()), "max_abs_prob_diff": float(d.max()),
           "speech_fraction_ref": float(np.mean(r > 0.5)), "speech_fraction_cand": float(np.mean(c > 0.5))}
    if rate is not None:
        for sr in sorted(set(np.asarray(rate).tolist())):
            m = np.asarray(rate) == sr
            out.update(agreement_fields(f"decision_agreement_{sr // 1000}k", (r[m] > 0.5) == (c[m] > 0.5)))
    return out


TASKS.update({
    "magika": Task("magika", _magika_run, _magika_metrics, "label_agreement", 0.99, calibration=_magika_calibration,
                   inputs=("bytes",)),
    "ocr_det": Task("ocr_det", _ocr_det_run, _ocr_det_metrics, "mean_iou", OCR_DET_BAR,
                    calibration=_ocr_det_calibration, inputs=("x",)),
    "ocr_rec": Task("ocr_rec", _ocr_rec_run, _ocr_rec_metrics, "string_agreement", 0.98,
                    calibration=_ocr_rec_calibration, inputs=("x",)),
    "silero_vad": Task("silero_vad", _vad_run, _vad_metrics, "decision_agreement", 0.99,
                       calibration=_vad_calibration, inputs=("input", "state", "sr")),
})
