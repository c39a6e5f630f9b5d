"""Each zoo task's ``other`` split (issue 16): inputs from other sources than the
calibration and evaluation splits. Each builds deterministically, holds no
input of the other splits, has its size; the metrics carry their sample counts
and the room the bar leaves; a wrong split name is refused with the valid ones.
No model is compressed here."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from onnx_l2c.models.data import ALL_SPLITS, SplitError
from onnx_l2c.models.tasks import TASKS


def _digest(*arrays: object) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _row_hashes(x: np.ndarray) -> set[str]:
    return {hashlib.sha256(np.ascontiguousarray(r).tobytes()).hexdigest() for r in x}


# ----------------------------------------------------------------------------- the sets

def test_efficientnet_other_photos():
    from onnx_l2c.models import data

    x, names = data.imagenet_other()
    data._other_cached.cache_clear()
    again, _ = data.imagenet_other()
    assert _digest(x) == _digest(again)  # rebuilt from scratch: the same inputs
    assert x.shape == (240, 3, 224, 224) and x.dtype == np.float32 and len(names) == 240
    sources = set(data.other_photo_names())
    assert len(sources) == 101 and Counter(names)["grace_hopper"] == 40
    assert not sources & {n for s in data.SPLITS for n in data.photo_names(s)}
    seen = _row_hashes(data.imagenet_photos("calibration")) | _row_hashes(data.imagenet_photos("evaluation"))
    assert not _row_hashes(x) & seen and len(_row_hashes(x)) == 240


def test_minilm_other_sentences_and_unseen_tokens():
    from onnx_l2c.models import data_text
    from onnx_l2c.models.data import sentences

    texts, info = data_text.sentences_other(), data_text.sentences_other_info()
    rebuilt = data_text._build_minilm_other()
    assert rebuilt["sentence"].tolist() == texts and rebuilt["unseen_tokens"].tolist() == info["unseen_tokens"].tolist()
    assert len(texts) == 500 and len(set(texts)) == 500
    assert Counter(info["source"].tolist()) == {"man": 200, "readme": 150, "doc": 150}
    assert not set(texts) & (set(sentences("calibration")) | set(sentences("evaluation")))
    # the embedding rows calibration never saw are exercised: most sentences hold such a token
    assert int((info["unseen_tokens"] > 0).sum()) >= 250


def test_man_page_troff_is_read_as_prose():
    from onnx_l2c.models.data_text import man_paragraphs

    src = "\n".join([
        '.TH demo 7', '.SH NAME', 'demo \\- not prose', '.SH DESCRIPTION', 'The', '.BR sigaction (2)',
        'call uses \\fIflags\\fP such as', '.BR SA_RESTART .', '.PP', '.nf', 'int x = 1;', '.fi',
        'A second \\(lqparagraph\\(rq here.', '.SH SEE ALSO', '.BR signal (7)'])
    assert man_paragraphs(src) == ["The sigaction(2) call uses flags such as SA_RESTART.",
                                   'A second "paragraph" here.']


def test_magika_other_files():
    from onnx_l2c.models import data_files

    x, exts, keys = data_files.magika_other_inputs()
    a = data_files._other_arrays()
    assert _digest(x) == _digest(a["bytes"]) and x.shape[1] == 2048
    assert len(x) >= 200 and max(Counter(exts).values()) <= data_files.OTHER_PER_TYPE
    assert all(k.split("/", 1)[0] in {t for t, _ in data_files.OTHER_ROOTS} for k in keys)
    zoo = set()
    for s in data_files.SPLITS:
        zoo |= _row_hashes(data_files.magika_inputs(s)[0])
    assert not _row_hashes(x) & zoo and len(_row_hashes(x)) == len(x)


def test_magika_other_selection_is_deterministic():
    """A fresh build of the other split (into an empty cache) equals the cached one."""
    from onnx_l2c.models import data_files

    cached = data_files._other_arrays()
    rebuilt = data_files._build_other()
    assert _digest(rebuilt["bytes"]) == _digest(cached["bytes"])
    assert rebuilt["key"].tolist() == cached["key"].tolist()


def test_ocr_other_images_and_crops():
    from onnx_l2c.models import data_ocr

    imgs, crops = data_ocr.ocr_images("other"), data_ocr.ocr_crops("other")
    assert len(imgs) == data_ocr.OTHER_DET == 200 and len(crops) == data_ocr.OTHER_CROPS == 400
    assert max(max(i.shape[:2]) for i in imgs) <= data_ocr.OTHER_MAX_SIDE
    assert len(data_ocr.ocr_other_texts()) == 400
    # rendering is deterministic and is what the cache holds
    for i in (0, 7, 199):
        assert np.array_equal(data_ocr._render_other_det(i), data_ocr._render_other_det(i))
    for i in (0, 5, 399):
        crop, text = data_ocr._render_other_crop(i)
        assert np.array_equal(crop, crops[i]) and text == data_ocr.ocr_other_texts()[i]
    seen = set()
    for s in data_ocr.SPLITS:
        seen |= {hashlib.sha256(i.tobytes()).hexdigest() for i in data_ocr.ocr_images(s)}
        seen |= {hashlib.sha256(c.tobytes()).hexdigest() for c in data_ocr.ocr_crops(s)}
    assert not {hashlib.sha256(i.tobytes()).hexdigest() for i in imgs + crops} & seen
    # other faces than the splits' (matplotlib's DejaVu/STIX files)
    assert not {f.name for f in data_ocr._other_fonts()} & {f.name for f in data_ocr._fonts()}


def test_vad_other_clips():
    from onnx_l2c.models import data_audio

    a8, a16 = data_audio.vad_other_clips()
    assert a8.shape == (200, data_audio.CLIP_SAMPLES_8K) and a16.shape == (100, data_audio.CLIP_SAMPLES)
    info = data_audio.vad_other_info()
    assert set(np.unique(info["kind_8k"])) == {0, 1, 2, 3}  # non-speech, recorded prompts, flite, espeak
    cached = data_audio._other_arrays()
    with tempfile.TemporaryDirectory() as tmp:
        for rate, i, tag in ((8000, 3, "8k"), (8000, 8, "8k"), (16000, 2, "16k"), (16000, 6, "16k")):
            clip, kind, _ = data_audio._other_clip(rate, i, Path(tmp))
            assert np.array_equal(clip, cached[f"audio_{tag}"][i]) and kind == cached[f"kind_{tag}"][i]
    seen = set()
    for s in data_audio.SPLITS:
        seen |= _row_hashes(data_audio.vad_clips(s))
    assert not _row_hashes(a16) & seen


# ----------------------------------------------------------------------------- metrics and splits

def _synthetic_results(name: str, rng: np.random.Generator) -> tuple[object, object]:
    """(original's, candidate's) results in the task's own format, a few samples disagreeing."""
    if name == "efficientnet_lite0":
        ref = rng.standard_normal((240, 1000)).astype(np.float32)
        cand = ref.copy()
        cand[:3] = cand[:3][:, ::-1]  # 3 of 240 change their top-1
        return ref, cand
    if name == "minilm":
        emb = rng.standard_normal((500, 384)).astype(np.float32)
        unseen = np.arange(500) % 3 == 0
        return {"embeddings": emb, "unseen": unseen}, {"embeddings": emb * 1.5, "unseen": unseen}
    if name == "magika":
        from onnx_l2c.models.data_files import magika_labels

        scores = rng.dirichlet(np.ones(len(magika_labels())), 300)
        cand = scores.copy()
        cand[0] = cand[0][::-1]
        return {"scores": scores, "exts": ["py"] * 300}, {"scores": cand, "exts": ["py"] * 300}
    if name == "ocr_det":
        masks = [rng.random((32, 32)) > 0.7 for _ in range(20)]
        return [(np.packbits(m), m.shape) for m in masks], [(np.packbits(m), m.shape) for m in masks]
    if name == "ocr_rec":
        ref = [(f"line {i}", 0.9) for i in range(400)]
        return ref, ref[:-2] + [("x", 0.5), ("y", 0.5)]
    probs = rng.random((300, 128)).astype(np.float32)
    rate = np.array([8000] * 200 + [16000] * 100, np.int32)
    return {"probs": probs, "rate": rate}, {"probs": probs, "rate": rate}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_metrics_carry_samples_and_margin(name: str, rng: np.random.Generator):
    task = TASKS[name]
    ref, cand = _synthetic_results(name, rng)
    m = task.score(ref, cand)
    h = task.headline
    assert m[f"{h}_samples"] > 0
    if f"{h}_disagree" in m:  # an agreement: disagreements, Wilson interval, room under the bar
        assert m[f"{h}_wilson_low"] <= m[h] <= m[f"{h}_wilson_high"]
        n, d = int(m[f"{h}_samples"]), int(m[f"{h}_disagree"])
        allowed = d + int(m[f"{h}_margin_samples"])
        assert (n - allowed) / n >= task.bar > (n - allowed - 1) / n
    else:  # a mean: its interval and margin
        assert m[f"{h}_ci_low"] <= m[h] <= m[f"{h}_ci_high"] and m[f"{h}_margin"] == pytest.approx(m[h] - task.bar)
    if name == "efficientnet_lite0":  # 3 of 240 disagree; 99% allows 2
        assert (m["top1_agreement_disagree"], m["top1_agreement_margin_samples"]) == (3, -1)
    if name == "minilm":
        assert m["unseen_token_sentences"] == 167 and m["nn_agreement_samples"] == 500
    if name == "silero_vad":
        assert m["decision_agreement_8k_samples"] == 200 * 128 and m["decision_agreement_16k_samples"] == 100 * 128


@pytest.mark.parametrize("name", sorted(TASKS))
def test_unknown_split_is_refused_with_the_valid_ones(name: str):
    from onnx_l2c.models.evaluate import reference_results
    from onnx_l2c.models.zoo import zoo_path

    with pytest.raises(SplitError, match="valid splits: calibration, evaluation, other"):
        TASKS[name].run(None, "evalution")
    with pytest.raises(SplitError, match="valid splits"):
        reference_results(TASKS[name], zoo_path(name), "test")
    assert TASKS[name].splits == ALL_SPLITS


def test_eval_cli_scores_both_sets_with_their_sample_counts(capsys):
    """`onnx-l2c eval --split both` on the original against itself (magika: small and fast)."""
    from onnx_l2c.models.evaluate import main
    from onnx_l2c.models.zoo import zoo_path

    original = str(zoo_path("magika"))
    assert main([original, original, "--model", "magika", "--split", "both"]) == 0
    out = capsys.readouterr().out
    assert "magika [evaluation]" in out and "magika [other]" in out and "passes on evaluation and other: yes" in out
    assert "0 of " in out and "allows" in out and "95% CI" in out
    assert main([original, original, "--model", "magika", "--split", "other", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["split"] == "other" and res["passes"]
    assert res["metrics"]["label_agreement_margin_samples"] == res["metrics"]["label_agreement_samples"] // 100
    with pytest.raises(SystemExit):
        main([original, original, "--model", "magika", "--split", "bogus"])


def test_bench_compare_decides_on_the_worse_set_and_reads_saved_rows():
    from onnx_l2c.models.compare import Row, best_at_bar, markdown

    m = {"label_agreement": 0.996, "label_agreement_samples": 500.0, "label_agreement_disagree": 2.0,
         "label_agreement_margin_samples": 3.0}
    worse = {"label_agreement": 0.98, "label_agreement_samples": 600.0, "label_agreement_disagree": 12.0,
             "label_agreement_margin_samples": -6.0}
    rows = [Row("magika", "onnx_l2c t", {"target_ratio": 8.0}, ratio=8.0, metrics=m, metrics_other=worse,
                passes_eval=True, passes_other=False, passes=False),
            Row("magika", "onnx_l2c t", {"target_ratio": 6.0}, ratio=6.0, metrics=m, metrics_other=m,
                passes_eval=True, passes_other=True, passes=True)]
    assert best_at_bar(rows, True).ratio == 6.0  # 8x passes the evaluation split only
    saved = json.loads(json.dumps([{"model": "magika", "method": "onnx_l2c old", "params": {}, "ratio": 9.0,
                                    "metrics": {"label_agreement": 1.0}, "passes": True}]))
    old = Row(**saved[0])  # a row saved before the other split existed
    assert old.passes_eval is True and old.passes_other is None
    table = markdown(rows + [old])
    assert "2/500 (allows 5); 12/600 (allows 6)" in table and "no (other)" in table and "yes (eval only)" in table
