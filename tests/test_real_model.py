"""Real pretrained models from PyPI packages, end to end (models/ zoo).

EfficientNet-Lite0 runs in CI; the larger MiniLM sweep is marked slow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zstandard

import onnx_l2c
from helpers import assert_close, run_custom_op, run_fast, run_plain
from onnx_l2c.models.data import imagenet_photos, minilm_feeds, sentences
from onnx_l2c.models.fidelity import cosine_stats, mean_kl, top1_agreement
from onnx_l2c.models.zoo import zoo_path


def _zstd19_bytes(path: Path) -> int:
    return len(zstandard.ZstdCompressor(level=19).compress(path.read_bytes()))


def _batched(run, path: Path, images: np.ndarray, batch: int = 25) -> np.ndarray:
    return np.concatenate([run(path, {"input": images[i:i + batch]})[0] for i in range(0, len(images), batch)])


@pytest.fixture(scope="module")
def effnet() -> Path:
    return zoo_path("efficientnet_lite0")


def test_efficientnet_lossless_beats_zstd_and_is_exact(effnet: Path, tmp_path: Path):
    out = tmp_path / "lossless.onnx"
    result = onnx_l2c.compress(effnet, out, preset="lossless")
    assert result.output_bytes < _zstd19_bytes(effnet)
    images = imagenet_photos("evaluation")[:8]
    ref = run_plain(effnet, {"input": images})[0]
    assert np.array_equal(ref, run_fast(out, {"input": images})[0])


def test_efficientnet_int8_keeps_predictions(effnet: Path, tmp_path: Path):
    out = tmp_path / "int8.onnx"
    result = onnx_l2c.compress(effnet, out, preset="int8")
    assert result.ratio > 4.0
    images = imagenet_photos("evaluation")
    ref = _batched(run_plain, effnet, images)
    fast = _batched(run_fast, out, images)
    # Measured on this split: 92% top-1 agreement, mean KL 0.013 (uniform 8-bit,
    # no calibration); the bars below catch regressions, not the project's goal.
    assert top1_agreement(ref, fast) >= 0.88
    assert mean_kl(ref, fast) <= 0.05
    assert_close([fast[:25]], [run_custom_op(out, {"input": images[:25]})[0]], "custom op vs fast loader")
    plain = tmp_path / "plain.onnx"
    onnx_l2c.decompress(out, plain)
    assert np.array_equal(fast[:25], run_plain(plain, {"input": images[:25]})[0])


@pytest.mark.slow
def test_minilm_lossless_and_int8(tmp_path: Path):
    model = zoo_path("minilm")
    out = tmp_path / "lossless.onnx"
    result = onnx_l2c.compress(model, out, preset="lossless")
    assert result.output_bytes < _zstd19_bytes(model)
    feeds = minilm_feeds(sentences("evaluation")[:64])
    ref = run_plain(model, feeds)[0]
    assert np.array_equal(ref, run_fast(out, feeds)[0])
    out8 = tmp_path / "int8.onnx"
    onnx_l2c.compress(model, out8, preset="int8")
    mean_cos, min_cos = cosine_stats(ref, run_fast(out8, feeds)[0])
    assert mean_cos >= 0.999 and min_cos >= 0.995


def test_eval_command_scores_a_compressed_model(effnet: Path, tmp_path: Path):
    import json
    import subprocess
    import sys

    out = tmp_path / "int8.onnx"
    onnx_l2c.compress(effnet, out, preset="int8")
    res = subprocess.run([sys.executable, "-P", "-m", "onnx_l2c", "eval", str(effnet), str(out), "--model",
                          "efficientnet_lite0", "--json"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["load"] == "fast" and 4.0 < report["ratio"] < 5.0
    assert 0.88 <= report["metrics"]["top1_agreement"] < 1.0 and report["headline"] == "top1_agreement"


def test_efficientnet_size_target_with_calibration(effnet: Path, tmp_path: Path):
    """A zoo model end to end at one target: calibration split in, the ratio
    measured on the written files, fidelity on the disjoint evaluation split."""
    calib = imagenet_photos("calibration")
    samples = [{"input": calib[i:i + 1]} for i in range(0, len(calib), 8)]  # 33 views of 11 photos
    out, report = tmp_path / "target.onnx", tmp_path / "target.json"
    result = onnx_l2c.compress(effnet, out, target_ratio=6, calibration_data=samples, calibration_samples=32,
                               report=report)
    assert abs(result.ratio / 6 - 1) <= 0.03
    assert not result.plan["data_free"] and result.plan["divergences"] == {"logits": "kl_softmax"}
    images = imagenet_photos("evaluation")
    ref = _batched(run_plain, effnet, images)
    got = _batched(run_fast, out, images)
    assert top1_agreement(ref, got) >= 0.75
    assert mean_kl(ref, got) <= 0.15


def _default_keeps_behaviour(name: str, tmp_path: Path) -> None:
    """`compress` with no options: the safe preset meets the model's bar on both evaluation sets."""
    from onnx_l2c.models.evaluate import evaluate

    original, out = zoo_path(name), tmp_path / f"{name}.onnx"
    result = onnx_l2c.compress(original, out)
    assert result.options["preset"] == "safe" and result.plan["data_free"]
    assert result.ratio > 2.0  # above fp16, the safe peer
    for split in ("evaluation", "other"):
        scored = evaluate(name, original, out, split=split)
        assert scored.passes, (split, scored.metrics)


def test_default_keeps_magika_behaviour(tmp_path: Path):
    _default_keeps_behaviour("magika", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "minilm", "ocr_det", "ocr_rec", "silero_vad"])
def test_default_keeps_every_zoo_models_behaviour(name: str, tmp_path: Path):
    _default_keeps_behaviour(name, tmp_path)
