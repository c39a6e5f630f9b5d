"""The main job on the default real model, end to end.

    onnx-l2c demo [--model efficientnet_lite0|minilm] [--preset int8 | --bits N] [--target-ratio R | --no-target]
                  [--out FOLDER]

The compressed models go to a temporary folder, removed at the end, unless
--out names a folder to keep them in.

Builds the model from its PyPI packages (cached; EfficientNet-Lite0 by
default), compresses it with compress's default (the safe preset, no data)
and, beside it, to a size target calibrated on the task's calibration split
(`--target-ratio`, default DEMO_RATIOS), loads the result both ways (the zero-overhead loader
and the native custom op in a plain onnxruntime session), and prints the
ratio, the load times and the fidelity to the original on the evaluation
split (never seen by any calibration): top-1 agreement on the photos that
scikit-image ships, or embedding cosine on real sentences for MiniLM.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnx_l2c
from onnx_l2c.measure.calibration import DEFAULT_SAMPLES as CALIBRATION_SAMPLES  # compress's default

from .data import imagenet_photos, minilm_feeds, sentences
from .fidelity import cosine_stats, mean_kl, top1_agreement, top5_overlap
from .zoo import zoo_path


def _timed(make, repeats: int = 3):
    times, sess = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        sess = make()
        times.append(time.perf_counter() - start)
    return sess, statistics.median(times)


def _logits(sess: ort.InferenceSession, images: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([sess.run(None, {"input": images[i:i + batch]})[0] for i in range(0, len(images), batch)])


def _embeddings(sess: ort.InferenceSession, texts: list[str], batch: int = 32) -> np.ndarray:
    return np.concatenate([sess.run(None, minilm_feeds(texts[i:i + batch]))[0] for i in range(0, len(texts), batch)])


# The calibrated target shown beside the default: each model's largest
# measured ratio that meets its bar on both evaluation sets (README's table).
DEMO_RATIOS = {"efficientnet_lite0": 3.5, "minilm": 9.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onnx-l2c demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0", choices=["efficientnet_lite0", "minilm"],
                        help="the zoo model (default: efficientnet_lite0)")
    parser.add_argument("--preset", default=None, choices=[p.value for p in onnx_l2c.Preset],
                        help="compress's --preset (default: compress's default)")
    parser.add_argument("--bits", type=int, default=None, metavar="N", help="compress's --bits (a lossy preset)")
    parser.add_argument("--target-ratio", type=float, default=None, metavar="R",
                        help="the calibrated size target shown beside it (default: "
                             + ", ".join(f"{m} {r:g}" for m, r in DEMO_RATIOS.items()) + ")")
    parser.add_argument("--no-target", action="store_true", help="skip the calibrated size target")
    parser.add_argument("--out", type=Path, default=None, metavar="FOLDER",
                        help="keep the compressed models in FOLDER (default: a temporary folder, removed at the end)")
    args = parser.parse_args(argv)
    if args.no_target and args.target_ratio is not None:
        parser.error("argument --no-target: not allowed with --target-ratio")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        return _run(args, args.out)
    with tempfile.TemporaryDirectory(prefix="onnx_l2c-demo-") as folder:
        return _run(args, Path(folder))


def _run(args: argparse.Namespace, out_dir: Path) -> int:
    original = zoo_path(args.model)
    small = out_dir / f"{args.model}.l2c.onnx"
    result = onnx_l2c.compress(original, small, preset=args.preset, bits=args.bits)  # None: not given

    providers = ["CPUExecutionProvider"]
    plain, t_plain = _timed(lambda: ort.InferenceSession(str(original), providers=providers))
    fast, t_fast = _timed(lambda: onnx_l2c.InferenceSession(small, providers=providers))

    def custom_op_session():
        so = ort.SessionOptions()
        so.register_custom_ops_library(onnx_l2c.custom_op_library())
        return ort.InferenceSession(str(small), so, providers=providers)

    op, t_op = _timed(custom_op_session)

    if args.model == "minilm":
        texts = sentences("evaluation")
        ref, got_fast, got_op = (_embeddings(s, texts) for s in (plain, fast, op))
        what = f"{len(texts)} evaluation sentences"
    else:
        images = imagenet_photos("evaluation")
        ref, got_fast, got_op = (_logits(s, images) for s in (plain, fast, op))
        what = f"{len(images)} evaluation photos (scikit-image)"
    print(f"model:        {args.model} ({original})")
    if args.out is not None:
        print(f"compressed:   {small} (+ {small.name}.l2c)")
    given = " ".join(f for f in (f"--preset {args.preset}" if args.preset else "",
                                 f"--bits {args.bits}" if args.bits is not None else "") if f)
    print(f"compress:     {given or 'no options: the default'} (preset {result.options['preset']}"
          f"{', data-free plan' if result.plan is not None else ''})")
    print(f"size:         {result.source_bytes / 1e6:.2f} MB -> {result.output_bytes / 1e6:.2f} MB "
          f"(ratio {result.ratio:.2f}x), compressed in {result.seconds:.1f} s")
    print(f"load time:    plain {t_plain * 1e3:.0f} ms | onnx_l2c.InferenceSession {t_fast * 1e3:.0f} ms | "
          f"custom op {t_op * 1e3:.0f} ms (median of 3)")
    print(f"fidelity on {what}:")
    for label, got in (("fast loader", got_fast), ("custom op", got_op)):
        if args.model == "minilm":
            mean_cos, min_cos = cosine_stats(ref, got)
            print(f"  {label:<12} cosine to the original: mean {mean_cos:.4f}  min {min_cos:.4f}")
        else:
            print(f"  {label:<12} top-1 agreement {100 * top1_agreement(ref, got):.1f}%  "
                  f"top-5 overlap {100 * top5_overlap(ref, got):.1f}%  mean KL {mean_kl(ref, got):.2e}")
    # Same decoded weights; the custom-op path runs other conv/matmul kernels
    # (onnxruntime does not prepack weights a custom op produces), so logits
    # agree up to float summation order.
    diff = float(np.max(np.abs(got_fast - got_op)) / max(np.max(np.abs(got_fast)), 1e-30))
    print(f"fast loader vs custom op: max relative output difference {diff:.1e}")
    if not args.no_target:
        _calibrated(args, original, out_dir, ref, what)
    return 0 if diff < 1e-4 else 1


def _calibrated(args: argparse.Namespace, original: Path, out_dir: Path, ref: np.ndarray, what: str) -> None:
    """The same model at a size target calibrated on the task's calibration split (disjoint from evaluation)."""
    from .tasks import TASKS

    ratio = args.target_ratio if args.target_ratio is not None else DEMO_RATIOS[args.model]
    task = TASKS[args.model]
    assert task.calibration is not None
    small = out_dir / f"{args.model}.l2c-{ratio:g}x.onnx"
    print(f"calibrated:   --target-ratio {ratio:g} on {CALIBRATION_SAMPLES} calibration samples ...", flush=True)
    result = onnx_l2c.compress(original, small, target_ratio=ratio,
                               calibration_data=task.calibration(CALIBRATION_SAMPLES))
    sess = onnx_l2c.InferenceSession(small, providers=["CPUExecutionProvider"])
    if args.model == "minilm":
        got = _embeddings(sess, sentences("evaluation"))
        mean_cos, min_cos = cosine_stats(ref, got)
        score = f"cosine to the original: mean {mean_cos:.4f}  min {min_cos:.4f}"
    else:
        got = _logits(sess, imagenet_photos("evaluation"))
        score = f"top-1 agreement {100 * top1_agreement(ref, got):.1f}%  top-5 overlap {100 * top5_overlap(ref, got):.1f}%"
    print(f"  size {result.source_bytes / 1e6:.2f} MB -> {result.output_bytes / 1e6:.2f} MB (ratio {result.ratio:.2f}x), "
          f"compressed in {result.seconds:.1f} s")
    print(f"  fast loader  {score} ({what})")


if __name__ == "__main__":
    sys.exit(main())
