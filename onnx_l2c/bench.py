"""`onnx-l2c bench runtime`: the codec and the load paths, measured.

For each model and preset: size and ratio; (a) entropy-coded size of the
quantizer symbols against their order-0 entropy (tables included) for tensors
of ≥ 64k symbols; (b) native decode throughput on one thread; (c) session
creation time, plain vs each load path; (d) per-run latency of each load path
against the original, median over interleaved runs; (e) the first session
creation in a fresh process (onnx_l2c's import included), plain vs fast.
Results go to `OUT/runtime.json` and `OUT/runtime.md`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_l2c.passes import TensorInput
from onnx_l2c.passes.base import entropy_bits
from onnx_l2c.passes import PresetQuantizer

from onnx_l2c.codec import SIDECAR_SUFFIX, native
from onnx_l2c.codec.index import read_index
from onnx_l2c.errors import FileError, OptionError
from onnx_l2c.graph.model import find_weights, load_model, tensor_bits
from onnx_l2c.load.compressed import CompressedModel
from onnx_l2c.load.session import InferenceSession, custom_op_library
from onnx_l2c.write.compress import compress

log = logging.getLogger(__name__)

_BIG = 65536


def parse_preset(text: str) -> dict[str, Any]:
    """A --presets entry: a preset name, `bits=N`, or `target=R` (a data-free size target)."""
    text = text.strip()
    key, _, value = text.partition("=")
    try:
        if key == "bits":
            return {"bits": int(value)}
        if key == "target":
            return {"target_ratio": float(value)}
    except ValueError:
        raise OptionError(f"--presets: {text!r} needs a number after '='") from None
    return {"preset": text}


def random_feeds(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the declared shapes (symbolic dims: batch 1, others 32)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds: dict[str, np.ndarray] = {}
    for i, inp in enumerate(sess.get_inputs()):
        shape = [d if isinstance(d, int) else (1 if j == 0 else 32) for j, d in enumerate(inp.shape)]
        if "int" in inp.type:
            dtype = np.int64 if "int64" in inp.type else np.int32
            if "mask" in inp.name:
                feeds[inp.name] = np.ones(shape, dtype=dtype)
            else:
                feeds[inp.name] = rng.integers(0, 100 if "type" not in inp.name else 1, size=shape).astype(dtype)
        elif "float16" in inp.type:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float16)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def coder_efficiency(model_path: Path, bits: int) -> dict[str, Any]:
    """(a) coded stream size vs order-0 entropy for quantized tensors ≥ 64k symbols."""
    model = load_model(model_path)
    quant = PresetQuantizer(bits=bits)
    rows = []
    for w in find_weights(model, _BIG).weights:
        t = TensorInput(w.name, w.dtype, w.shape, tensor_bits(w.tensor, model_path.parent), w.channel_axis)
        if not quant.applies_to(t):
            continue
        q, _, _ = quant.symbols_and_params(t)
        lo = int(q.min())
        coded = len(native.encode_stream((q - lo).reshape(-1), int(q.max()) - lo + 1))
        ideal = entropy_bits(q) / 8
        rows.append({"tensor": w.name, "symbols": int(q.size), "entropy_bytes": ideal, "coded_bytes": coded,
                     "overhead": coded / max(ideal, 1e-9) - 1})
    total_ideal = sum(r["entropy_bytes"] for r in rows)
    total_coded = sum(r["coded_bytes"] for r in rows)
    return {"bits": bits, "tensors": len(rows),
            "overhead_total": total_coded / max(total_ideal, 1e-9) - 1 if rows else None,
            "overhead_median": statistics.median(r["overhead"] for r in rows) if rows else None,
            "overhead_max": max(r["overhead"] for r in rows) if rows else None, "rows": rows}


def decode_throughput(path: Path, repeats: int = 3) -> dict[str, float]:
    """(b) single-thread native decode speed over every payload of a compressed model."""
    cm = CompressedModel(path)
    try:
        weights = sum(int(np.prod(native.payload_info(cm.payload(e)).dims, dtype=np.int64)) for e in cm.entries)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for e in cm.entries:
                cm.decode(e)
            best = min(best, time.perf_counter() - start)
    finally:
        cm.close()
    out = {"weights": weights, "seconds": best, "weights_per_s": weights / best if best > 0 else 0.0}
    out.update(model_open_throughput(path, weights, repeats))
    return out


def model_open_throughput(path: Path, weights: int, repeats: int = 3) -> dict[str, float]:
    """The C API's whole-model open through the sidecar index (l2c_model_open_memory:
    index, plain graph, every tensor decoded into fresh memory) on 1 and 2
    threads, in weights per second; nothing for a sidecar without an index."""
    graph = path.read_bytes()
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    data = sidecar.read_bytes() if sidecar.is_file() else b""
    if read_index(data) is None:
        return {}
    out = {}
    for threads in (1, 2):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            native.NativeModel(graph, data, threads=threads).close()
            best = min(best, time.perf_counter() - start)
        out[f"open_{threads}_weights_per_s"] = weights / best if best > 0 else 0.0
    return out


def _session(kind: str, path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    # No idle spinning: the latency runs alternate between four sessions on a
    # 2-core machine, and the threads of the session that just ran spun on
    # the cores the next one needed (ratios of 0.7-1.4x between identical
    # sessions).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if kind == "fast":
        return InferenceSession(path, so, providers=["CPUExecutionProvider"])
    if kind == "custom_op":
        so.register_custom_ops_library(custom_op_library())
    if kind == "plain_basic":
        # What onnxruntime can do with weights it cannot treat as constants
        # (the custom-op path): no layout transforms, no prepacking.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def load_and_latency(original: Path, compressed: Path, feeds: dict[str, np.ndarray], runs: int) -> dict[str, Any]:
    """(c) session creation and (d) per-run latency, interleaved across paths
    (creation runs/4 times, at least 5: a median of 3 moved by 0.2x between
    runs), and (e) the first load in a fresh process."""
    # The custom op hands the payloads' pages back once decoded (MADV_PAGEOUT,
    # custom_op.cc); the fast path's next load in the same process then takes
    # 1.5-2x as long (measured on EfficientNet-Lite0; without the madvise it
    # does not). A program uses one path: the plain/fast creations and the
    # fresh-process loads run before any custom-op session. (The fresh-process
    # loads come second: right after compress wrote the sidecar they took up
    # to 1.5x on MiniLM, 1.1-1.3x a few seconds later.)
    paths = {"plain": original, "fast": compressed, "custom_op": compressed, "plain_basic": original}
    create: dict[str, list[float]] = {k: [] for k in paths}
    sessions = {}
    first: dict[str, float] = {}
    for group in (("plain", "fast"), ("custom_op", "plain_basic")):
        for _ in range(max(5, runs // 4)):
            for kind in group:
                start = time.perf_counter()
                session = _session(kind, paths[kind])
                create[kind].append(time.perf_counter() - start)
                sessions[kind] = session  # the previous one is released outside the timing
        if not first:
            first = first_load(original, compressed, repeats=min(9, max(1, runs // 6)))
    for sess in sessions.values():  # warm-up
        sess.run(None, feeds)
    lat: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(runs):
        for kind, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feeds)
            lat[kind].append(time.perf_counter() - start)
    med_create = {k: statistics.median(v) for k, v in create.items()}
    med_lat = {k: statistics.median(v) for k, v in lat.items()}
    return {
        "create_s": med_create,
        "create_ratio": {k: med_create[k] / med_create["plain"] for k in paths},
        "latency_s": med_lat,
        "latency_ratio": {k: med_lat[k] / med_lat["plain"] for k in paths},
        "first_load_s": first,
        "first_load_ratio": first["fast"] / first["plain"],
    }


# One session in a fresh interpreter, as a program that loads one model sees
# it: onnxruntime already imported; timed from before `import onnx_l2c` (the
# fast path pays its own import) to the session existing.
_FIRST_LOAD = """
import sys, time
import onnxruntime as ort
kind, path = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if kind == "fast":
    import onnx_l2c
    onnx_l2c.InferenceSession(path, providers=["CPUExecutionProvider"])
else:
    ort.InferenceSession(path, providers=["CPUExecutionProvider"])
print(time.perf_counter() - start)
"""


def first_load(original: Path, compressed: Path, repeats: int) -> dict[str, float]:
    """Median seconds of the first session creation in a fresh process, plain
    and fast, alternating."""
    times: dict[str, list[float]] = {"plain": [], "fast": []}
    for _ in range(repeats):
        for kind, path in (("plain", original), ("fast", compressed)):
            done = subprocess.run([sys.executable, "-P", "-c", _FIRST_LOAD, kind, str(path)], capture_output=True,
                                  text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"first load of {path} ({kind}) failed: {done.stderr.strip()[-2000:]}")
            times[kind].append(float(done.stdout.split()[-1]))
    return {k: statistics.median(v) for k, v in times.items()}


def zstd19_bytes(model: Path) -> int | None:
    """Size of `zstd -19` of the model file (the lossless baseline), if zstandard is installed."""
    try:
        import zstandard
    except ImportError:
        return None
    return len(zstandard.ZstdCompressor(level=19).compress(model.read_bytes()))


def cpp_timing(timer: Path, original: Path, compressed: Path, feeds: dict[str, np.ndarray], runs: int,
               workdir: Path) -> dict[str, float]:
    """(f) creation and latency from C++ (runtime/examples/time_load.cc, built by
    scripts/build_examples.sh): the fast path without Python, as ratios."""
    specs = []
    for i, (name, value) in enumerate(feeds.items()):  # the model's input order
        path = workdir / f"input{i}.bin"
        np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<"), copy=False).tofile(path)
        specs.append(f"{path}:{'x'.join(str(d) for d in value.shape)}")
    done = subprocess.run([str(timer), str(original), str(compressed), str(runs), *specs], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{timer} on {compressed} failed: {done.stderr.strip()[-2000:]}")
    times = json.loads(done.stdout)
    return dict(times, create_ratio=times["create_fast_s"] / times["create_plain_s"],
                latency_ratio=times["latency_fast_s"] / times["latency_plain_s"])


def bench_model(model: Path, presets: list[str], runs: int, workdir: Path, zstd: bool,
                cpp_timer: Path | None = None) -> dict[str, Any]:
    feeds = random_feeds(model)
    # the file name only: results are shared, the machine's paths are not
    out: dict[str, Any] = {"model": model.name, "bytes": model.stat().st_size, "presets": {}}
    if zstd:
        size = zstd19_bytes(model)
        out["zstd19"] = {"bytes": size, "ratio": model.stat().st_size / size} if size else None
    for preset in presets:
        opts = parse_preset(preset)
        target = workdir / f"{model.stem}.{preset.replace('=', '')}.onnx"
        res = compress(model, target, **opts)
        entry: dict[str, Any] = {"ratio": res.ratio, "bytes": res.output_bytes, "compress_s": res.seconds}
        entry["decode"] = decode_throughput(target)
        entry["load"] = load_and_latency(model, target, feeds, runs)
        if cpp_timer is not None:
            entry["cpp"] = cpp_timing(cpp_timer, model, target, feeds, runs, workdir)
        bits = opts.get("bits") or (8 if opts.get("preset") == "int8" else None)  # targets mix widths: no row
        if bits:
            entry["coder"] = coder_efficiency(model, bits)
        out["presets"][preset] = entry
        log.info("%s %s: ratio %.2f", model.name, preset, res.ratio)
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| model | preset | ratio | size MB | coder overhead (total / median) | decode Mw/s (1 thread) |"
             " C API open Mw/s (1 / 2 threads) |"
             " create plain s | create fast × | create op × | first load plain s | first load fast × |"
             " latency plain ms | latency fast × | latency op × | latency plain, basic opt + no prepack × |"
             " C++ create fast × | C++ latency fast × |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.get("zstd19"):
            z = r["zstd19"]
            lines.append(f"| {Path(r['model']).stem} | zstd -19 (file) | {z['ratio']:.2f} | {z['bytes'] / 1e6:.2f} |"
                         " – | – | – | – | – | – | – | – | – | – | – | – | – | – |")
        for preset, e in r["presets"].items():
            coder = e.get("coder")
            ovh = (f"{100 * coder['overhead_total']:.2f}% / {100 * coder['overhead_median']:.2f}%"
                   if coder and coder["overhead_total"] is not None else "–")
            ld = e["load"]
            dec = e["decode"]
            opened = (f"{dec['open_1_weights_per_s'] / 1e6:.0f} / {dec['open_2_weights_per_s'] / 1e6:.0f}"
                      if "open_1_weights_per_s" in dec else "–")
            cpp = (f"{e['cpp']['create_ratio']:.2f} | {e['cpp']['latency_ratio']:.3f}" if "cpp" in e else "– | –")
            lines.append(
                f"| {Path(r['model']).stem} | {preset} | {e['ratio']:.2f} | {e['bytes'] / 1e6:.2f} | {ovh} | "
                f"{dec['weights_per_s'] / 1e6:.0f} | {opened} | {ld['create_s']['plain']:.3f} | "
                f"{ld['create_ratio']['fast']:.2f} | {ld['create_ratio']['custom_op']:.2f} | "
                f"{ld['first_load_s']['plain']:.3f} | {ld['first_load_ratio']:.2f} | "
                f"{1e3 * ld['latency_s']['plain']:.2f} | {ld['latency_ratio']['fast']:.3f} | "
                f"{ld['latency_ratio']['custom_op']:.3f} | {ld['latency_ratio']['plain_basic']:.3f} | {cpp} |")
    return "\n".join(lines) + "\n"


def run_runtime_bench(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    presets = [p for p in args.presets.split(",") if p]
    if not args.models and args.scale is None:
        raise OptionError("give models, --scale GB, or both")
    if args.cpp_timer is not None and not args.cpp_timer.is_file():
        raise FileError(f"--cpp-timer {args.cpp_timer}: no such file (build it: bash scripts/build_examples.sh DIR, "
                        "then pass DIR/time_load)")
    for model in args.models:
        if not Path(model).is_file():
            raise FileError(f"{model}: no such model file (bench runtime takes .onnx paths; for zoo models by "
                            "name: python -P -m onnx_l2c.models.bench_runtime --models NAME,...)")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.scale is not None:
        from onnx_l2c.bench_scale import run_scale_bench

        table, ok = run_scale_bench(args, out_dir)
        print(table)
        if not ok:
            return 1
        if not args.models:
            return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="l2c-bench-") as tmp:
        for model in args.models:
            results.append(bench_model(Path(model), presets, args.runs, Path(tmp), args.zstd, args.cpp_timer))
    meta = {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "native": native.version()}
    (out_dir / "runtime.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    table = markdown(results)
    (out_dir / "runtime.md").write_text(table)
    print(table)
    return 0
