"""Fidelity evaluator: a candidate model against the original on a task's
evaluation split, its ``other`` split (inputs from other sources), or both.

    onnx-l2c eval ORIGINAL.onnx CANDIDATE.onnx --model NAME [--split evaluation|other|both|calibration]
    onnx-l2c zoo calibration NAME FOLDER [--samples 128]   # the task's calibration feeds

The candidate loads through onnx_l2c's fast loader or custom op when it is an
onnx_l2c model, else as plain ONNX (peers). The original's results are cached
per file hash and split. Size = the .onnx plus every file it references.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import pickle
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

# the feeds the bench calibrates on: compress's default count, so a saved folder
# (`zoo calibration`) reproduces a bench row with compress's defaults
from onnx_l2c.measure.calibration import DEFAULT_SAMPLES as CALIBRATION_SAMPLES
from onnx_l2c.errors import L2CError, ModelError
from onnx_l2c.files import AtomicOutputs

from .data import ALL_SPLITS, OTHER, check_split
from .data_cache import cache_root
from .fidelity import is_confidence_key
from .tasks import TASKS, Task

log = logging.getLogger(__name__)

LOAD_MODES = ("auto", "fast", "custom_op", "plain")
BOTH = "both"  # --split both: the evaluation and the other split, the candidate must pass both
SCORED_SPLITS = ("evaluation", OTHER)  # the sets a fidelity claim is made on


def model_size(path: Path) -> int:
    """Bytes a user stores: the .onnx plus every external data file it references."""
    from onnx_l2c.graph.model import model_bytes

    return model_bytes(path)


def is_l2c_model(path: Path) -> bool:
    from onnx_l2c.codec import DOMAIN

    model = onnx.load(str(path), load_external_data=False)
    return any(op.domain == DOMAIN for op in model.opset_import)


def open_session(path: Path, how: str = "auto"):
    """An onnxruntime session of `path`: fast loader, custom op or plain."""
    import onnxruntime as ort

    import onnx_l2c

    if how not in LOAD_MODES:
        raise ValueError(f"unknown load mode {how!r}; valid: {', '.join(LOAD_MODES)}")
    if how == "auto":
        how = "fast" if is_l2c_model(path) else "plain"
    providers = ["CPUExecutionProvider"]
    if how == "fast":
        return onnx_l2c.InferenceSession(path, providers=providers)
    so = ort.SessionOptions()
    if how == "custom_op":
        so.register_custom_ops_library(onnx_l2c.custom_op_library())
    return ort.InferenceSession(str(path), so, providers=providers)


def _sha16(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def reference_results(task: Task, original: Path, split: str = "evaluation") -> Any:
    """The original model's results on `split`, cached by file hash."""
    check_split(split, task.splits)
    cache = cache_root() / "refs" / f"{task.name}-v{task.data_version}-{_sha16(original)}-{split}.pkl"
    if cache.is_file():
        with open(cache, "rb") as fh:
            return pickle.load(fh)
    results = task.run(open_session(original, "plain"), split)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(results, fh)
    tmp.replace(cache)
    return results


@dataclass
class EvalResult:
    model: str
    candidate: str
    load: str
    size_bytes: int
    original_bytes: int
    metrics: dict[str, float] = field(default_factory=dict)
    headline: str = ""
    bar: float = 0.0
    seconds: float = 0.0
    split: str = "evaluation"

    @property
    def ratio(self) -> float:
        return self.original_bytes / max(self.size_bytes, 1)

    @property
    def passes(self) -> bool:
        return self.metrics.get(self.headline, float("-inf")) >= self.bar


def input_mismatch(name: str, path: Path) -> str | None:
    """Why task `name` cannot run the model at `path` (its graph inputs are
    not the task's), or None when they match."""
    from onnx_l2c.graph.model import load_model

    model = load_model(path)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    task = TASKS[name]
    if not task.inputs or set(inputs) == set(task.inputs):
        return None
    valid = "; ".join(f"{t.name} ({', '.join(t.inputs)})" for t in TASKS.values())
    return (f"{path} has inputs {', '.join(inputs) or 'none'}, but task {name} feeds {', '.join(task.inputs)}; "
            f"valid tasks (their inputs): {valid}")


def evaluate(name: str, original: Path, candidate: Path, how: str = "auto", split: str = "evaluation",
             reference: Any = None) -> EvalResult:
    if name not in TASKS:
        raise L2CError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    task = TASKS[name]
    for path in (original, candidate):
        mismatch = input_mismatch(name, path)
        if mismatch is not None:
            raise ModelError(mismatch)
    start = time.perf_counter()
    ref = reference if reference is not None else reference_results(task, original, split)
    load = how if how != "auto" else ("fast" if is_l2c_model(candidate) else "plain")
    cand = task.run(open_session(candidate, load), split)
    metrics = task.score(ref, cand)
    return EvalResult(name, str(candidate), load, model_size(candidate), model_size(original), metrics,
                      task.headline, task.bar, time.perf_counter() - start, split)


def _count(v: float) -> str:
    return f"{int(v)}" if float(v).is_integer() else f"{v:g}"


def confidence_text(metrics: dict[str, float], key: str, bar: float | None = None) -> str:
    """How many samples decided `key` and how much room the bar leaves, in words
    (empty when `metrics` has no confidence fields for it)."""
    m = metrics
    if f"{key}_disagree" in m:
        n, d = m[f"{key}_samples"], m[f"{key}_disagree"]
        text = (f"{_count(d)} of {_count(n)} disagree, 95% CI [{m[f'{key}_wilson_low']:.4f}, "
                f"{m[f'{key}_wilson_high']:.4f}]")
        if f"{key}_margin_samples" in m and bar is not None:
            margin = int(m[f"{key}_margin_samples"])
            text += f"; bar {bar} allows {int(d) + margin}: margin {margin:+d}"
        return text
    if f"{key}_ci_low" in m:
        text = f"{_count(m[f'{key}_samples'])} samples, 95% CI [{m[f'{key}_ci_low']:.5g}, {m[f'{key}_ci_high']:.5g}]"
        if f"{key}_below_bar" in m and bar is not None:
            text += f", {_count(m[f'{key}_below_bar'])} below {bar} on their own"
        if f"{key}_margin" in m:
            text += f"; margin {m[f'{key}_margin']:+.4g}"
        return text
    return ""


def format_result(res: EvalResult) -> list[str]:
    """The eval CLI's text for one result: a header line, then one line per metric with its confidence."""
    lines = [f"{res.model} [{res.split}]: {res.candidate} via {res.load}: size {res.size_bytes / 1e6:.2f} MB "
             f"(ratio {res.ratio:.2f}x)"]
    for key, value in res.metrics.items():
        if is_confidence_key(key, res.metrics):
            continue
        conf = confidence_text(res.metrics, key, res.bar if key == res.headline else None)
        mark = f"  (bar {res.bar}: {'pass' if res.passes else 'FAIL'})" if key == res.headline else ""
        lines.append(f"  {key:<24} {value:.5g}{mark}" + (f"  [{conf}]" if conf else ""))
    return lines


def save_calibration(name: str, folder: Path, samples: int) -> list[Path]:
    """The task's first `samples` calibration feeds (the ones the bench calibrates
    on, disjoint from evaluation) as one .npz per feed in `folder`, the layout
    `--calibration FOLDER` reads: so a bench row can be reproduced with the CLI.
    Refuses a folder that already holds .npz files (they would be read too)."""
    task = TASKS[name]
    if task.calibration is None:
        raise L2CError(f"zoo model {name} has no calibration split")
    if samples < 1:
        raise L2CError(f"--samples must be at least 1, got {samples}")
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.glob("*.npz")):
        raise L2CError(f"calibration folder {folder} already holds .npz files; pass an empty folder")
    feeds = task.calibration(samples)
    paths = [folder / f"sample_{i:04d}.npz" for i in range(len(feeds))]
    with AtomicOutputs() as out:
        for path, feed in zip(paths, feeds):
            with out.temp_for(path).open("wb") as f:
                np.savez(f, **feed)
        out.commit()
    return paths


def calibration_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onnx-l2c zoo calibration",
                                description="Write a zoo task's calibration feeds, one .npz per sample, to FOLDER "
                                            "(for `onnx-l2c compress --calibration FOLDER`).")
    p.add_argument("model", choices=sorted(TASKS))
    p.add_argument("folder", type=Path)
    p.add_argument("--samples", type=int, default=CALIBRATION_SAMPLES,
                   help=f"feeds to write (default: {CALIBRATION_SAMPLES}, as the bench)")
    args = p.parse_args(argv)
    paths = save_calibration(args.model, args.folder, args.samples)
    print(f"{args.model}: {len(paths)} calibration feeds in {args.folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onnx-l2c eval", description="Fidelity of CANDIDATE against ORIGINAL.")
    p.add_argument("original", type=Path, help="the original .onnx (its results on the split are cached)")
    p.add_argument("candidate", type=Path,
                   help="the model to score: an onnx_l2c-compressed .onnx or any plain ONNX model (a peer's)")
    p.add_argument("--model", required=True, choices=sorted(TASKS),
                   help="which zoo task's inputs and metrics (the models' inputs must be the task's)")
    p.add_argument("--load", default="auto", choices=LOAD_MODES,
                   help="how to load the candidate (auto: the fast loader for onnx_l2c models, else plain)")
    p.add_argument("--split", default="evaluation", choices=[*ALL_SPLITS, BOTH],
                   help="which inputs: the evaluation split (default), the other split (inputs from other "
                        "sources), both (the candidate passes only if it passes both), or calibration")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    for path in (args.original, args.candidate):
        mismatch = input_mismatch(args.model, path)  # a FileError for a missing file
        if mismatch is not None:
            p.error(f"argument --model: {mismatch}")
    splits = SCORED_SPLITS if args.split == BOTH else (args.split,)
    results = [evaluate(args.model, args.original, args.candidate, args.load, s) for s in splits]
    passes = all(r.passes for r in results)
    if args.json:
        payload = {r.split: asdict(r) | {"ratio": r.ratio, "passes": r.passes} for r in results}
        print(json.dumps(payload[splits[0]] if len(results) == 1 else payload | {"passes": passes}, indent=2))
    else:
        for res in results:
            print("\n".join(format_result(res)))
        if len(results) > 1:
            print(f"passes on {' and '.join(splits)}: {'yes' if passes else 'NO'}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
