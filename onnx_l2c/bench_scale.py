"""`onnx-l2c bench runtime --scale GB`: streaming at scale, measured.

Builds one large external-data model (a chain of MatMul weights, each
4096×16384 or 16384×4096 float32, 2.5 GB by default) and runs, each step in
its own process: plain onnxruntime on the original (the reference), then for
each preset `compress`, the fast loader, the custom op and `decompress`
(with one inference for the loaders; the fast loader also with
`low_memory=True`), and optionally the calibrated planner
(`--scale-target-ratio`). Every step reports its wall time, seconds per GB
of weights, and its peak resident memory (VmHWM, which unlike ru_maxrss is
not inherited across exec) as a multiple W of the weights' size. Results go
to `OUT/scale.json` and `OUT/scale.md`.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SIDE = (4096, 16384)

# Each step's child: does `step`, then prints {"wall_s", "peak_bytes"} as JSON.
_CHILD = r"""
import json, sys, time
import numpy as np
args = json.loads(sys.argv[1])
def peak():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
start = time.perf_counter()
feeds = {"x": np.ones((1, args["input"]), np.float32)}
step = args["step"]
import onnxruntime as ort
import onnx_l2c
if step == "plain":
    ort.InferenceSession(args["original"]).run(None, feeds)
elif step == "compress":
    onnx_l2c.compress(args["original"], args["compressed"], **args["options"])
elif step == "planner":
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((1, args["input"])).astype(np.float32)} for _ in range(args["samples"])]
    onnx_l2c.compress(args["original"], args["compressed"], target_ratio=args["target_ratio"],
                      calibration_data=samples, **args["options"])
elif step == "fast":
    onnx_l2c.InferenceSession(args["compressed"]).run(None, feeds)
elif step == "fast_low_memory":
    onnx_l2c.InferenceSession(args["compressed"], low_memory=True, temp_dir=args["workdir"]).run(None, feeds)
elif step == "custom_op":
    so = ort.SessionOptions()
    so.register_custom_ops_library(onnx_l2c.custom_op_library())
    ort.InferenceSession(args["compressed"], so).run(None, feeds)
elif step == "decompress":
    onnx_l2c.decompress(args["compressed"], args["plain"])
print(json.dumps({"wall_s": time.perf_counter() - start, "peak_bytes": peak()}))
"""


def build_chain(path: Path, gigabytes: float) -> int:
    """A chain of MatMuls whose weights (external data beside `path`) add up to
    about `gigabytes` GB; returns the weights' bytes."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from onnx_l2c.graph.edit import set_external

    per = _SIDE[0] * _SIDE[1] * 4
    count = max(1, round(gigabytes * 1e9 / per))
    data = path.with_name(path.name + ".data")
    inits, nodes = [], []
    rng = np.random.default_rng(0)
    with open(data, "wb") as fh:
        for i in range(count):
            shape = _SIDE if i % 2 == 0 else _SIDE[::-1]
            w = (rng.standard_normal(shape, dtype=np.float32) * 0.01).astype(np.float32)
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=list(shape))
            set_external(t, data.name, fh.tell(), w.nbytes)
            fh.write(w.tobytes())
            inits.append(t)
            nodes.append(helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"], [f"h{i}"]))
    out_side = _SIDE[1] if count % 2 else _SIDE[0]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, _SIDE[0]])],
                              [helper.make_tensor_value_info(f"h{count - 1}", TensorProto.FLOAT, [1, out_side])],
                              initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return count * per


def _run_step(args: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-P", "-c", textwrap.dedent(_CHILD), json.dumps(args)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        log.warning("scale step %s failed (rc %d): %s", args["step"], proc.returncode, proc.stderr[-2000:])
        return {"error": f"rc {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_scale(gigabytes: float, presets: list[str], workdir: Path, target_ratio: float | None = None,
              samples: int = 128) -> dict[str, Any]:
    """Every step on one generated model; peaks as multiples of the weights' bytes."""
    from onnx_l2c.bench import parse_preset

    original = workdir / "chain.onnx"
    weights = build_chain(original, gigabytes)
    gb = weights / 1e9
    rows: list[dict[str, Any]] = []

    def record(step: str, preset: str, args: dict[str, Any]) -> None:
        log.info("scale: %s %s", step, preset)
        result = _run_step({"step": step, "original": str(original), "input": _SIDE[0], **args})
        if "peak_bytes" in result:
            result["peak_w"] = result["peak_bytes"] / weights
            result["s_per_gb"] = result["wall_s"] / gb
        rows.append({"step": step, "preset": preset, **result})

    record("plain", "-", {})
    for preset in presets:
        compressed = workdir / f"{preset.replace('=', '')}.onnx"
        options = parse_preset(preset)
        record("compress", preset, {"compressed": str(compressed), "options": options})
        for step in ("fast", "fast_low_memory", "custom_op", "decompress"):
            record(step, preset, {"compressed": str(compressed), "plain": str(workdir / "plain.onnx"),
                                  "workdir": str(workdir)})
        for leftover in workdir.glob("plain.onnx*"):
            leftover.unlink()
    if target_ratio:
        compressed = workdir / "planned.onnx"
        record("planner", f"target_ratio={target_ratio:g}, {samples} samples",
               {"compressed": str(compressed), "target_ratio": target_ratio, "samples": samples, "options": {}})
    return {"weights_bytes": weights, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Weights: {result['weights_bytes'] / 2**30:.2f} GiB ({result['weights_bytes'] / 1e9:.2f} GB); "
             "peak = VmHWM of the step's process; W = the weights' size",
             "", "| step | preset | wall s | s/GB | peak GiB | peak W |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['step']} | {r['preset']} | failed: {r['error']} | | | |")
            continue
        lines.append(f"| {r['step']} | {r['preset']} | {r['wall_s']:.1f} | {r['s_per_gb']:.1f} | "
                     f"{r['peak_bytes'] / 2**30:.2f} | {r['peak_w']:.2f} |")
    return "\n".join(lines) + "\n"


def run_scale_bench(args: argparse.Namespace, out_dir: Path) -> tuple[str, bool]:
    """The table, and whether every step succeeded."""
    presets = [p for p in args.presets.split(",") if p]
    with tempfile.TemporaryDirectory(prefix="l2c-scale-", dir=args.scale_workdir) as tmp:
        result = run_scale(args.scale, presets, Path(tmp), args.scale_target_ratio, args.scale_samples)
    (out_dir / "scale.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (out_dir / "scale.md").write_text(table)
    return table, all("error" not in r for r in result["rows"])
