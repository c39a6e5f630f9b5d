"""Which graph library carries onnx_l2c's graph layer: onnx-ir or onnx-graphsurgeon.

Builds one large external-data model (a chain of MatMul weights, 2.5 GB by
default) and, for each library in its own process, does what `compress` does
to a graph: load it, read every weight once (one at a time), rewrite each
weight into `W = Decode(W.payload)` with the payload stored in a sidecar, and
save the small graph. Reports wall time and peak RSS per step; plain
protobuf (`onnx.load(load_external_data=False)` + hand edits) is the baseline.

    python3 scripts/graph_library_bench.py [--gigabytes 2.5] [--workdir DIR]

onnx-graphsurgeon is not a dependency; the script skips it when it is not
installed (`pip install onnx-graphsurgeon` to include it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDE = 4096  # each weight is SIDE × SIDE float32 (64 MiB)
PAYLOAD = 4096  # bytes of payload written per weight (stands in for the coded bytes)


def build(path: Path, gigabytes: float) -> int:
    import numpy as np
    import onnx
    from onnx import TensorProto, external_data_helper, helper

    count = max(1, round(gigabytes * 1e9 / (SIDE * SIDE * 4)))
    data = path.with_suffix(".data")
    inits, nodes = [], []
    rng = np.random.default_rng(0)
    with open(data, "wb") as fh:
        for i in range(count):
            w = rng.standard_normal((SIDE, SIDE), dtype=np.float32) * 0.01
            offset = fh.tell()
            fh.write(w.tobytes())
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[SIDE, SIDE])
            _point_to(t, data.name, offset, w.nbytes)
            inits.append(t)
            nodes.append(helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"], [f"h{i}"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SIDE])],
                              [helper.make_tensor_value_info(f"h{count - 1}", TensorProto.FLOAT, [1, SIDE])],
                              initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return count


def _point_to(tensor, file: str, offset: int, length: int) -> None:
    """Make a TensorProto external data at (file, offset, length)."""
    from onnx import TensorProto, external_data_helper

    tensor.raw_data = b""  # set_external_data insists on a raw_data field
    external_data_helper.set_external_data(tensor, file, offset, length)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL


def _rss_mb() -> float:
    """Peak resident memory of this process so far (VmHWM: unlike ru_maxrss,
    it does not inherit the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write_sidecar(weights: dict[str, bytes], sidecar: Path) -> dict[str, tuple[int, int]]:
    spans = {}
    with open(sidecar, "wb") as fh:
        for name, payload in weights.items():
            spans[name] = (fh.tell(), len(payload))
            fh.write(payload)
    return spans


def run_protobuf(src: Path, out: Path) -> dict:
    import onnx
    from onnx import external_data_helper, helper

    steps = {}
    start = time.perf_counter()
    model = onnx.load(str(src), load_external_data=False)
    steps["load"] = (time.perf_counter() - start, _rss_mb())
    payloads = {}
    for t in model.graph.initializer:
        info = external_data_helper.ExternalDataInfo(t)
        with open(src.parent / info.location, "rb") as fh:
            fh.seek(info.offset)
            payloads[t.name] = fh.read(info.length)[:PAYLOAD]
    steps["read"] = (time.perf_counter() - start, _rss_mb())
    spans = _write_sidecar(payloads, out.with_suffix(".l2c"))
    graph = model.graph
    kept = []
    for t in graph.initializer:
        p = onnx.TensorProto(name=t.name + ".payload", data_type=onnx.TensorProto.UINT8, dims=[spans[t.name][1]])
        _point_to(p, out.with_suffix(".l2c").name, *spans[t.name])
        kept.append(p)
        graph.node.insert(0, helper.make_node("Decode", [p.name], [t.name], domain="ai.onnx_l2c"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(out))
    steps["rewrite+save"] = (time.perf_counter() - start, _rss_mb())
    return steps


def run_onnx_ir(src: Path, out: Path) -> dict:
    import numpy as np
    import onnx_ir as ir

    steps = {}
    start = time.perf_counter()
    model = ir.load(src)  # external tensors stay on disk (memory-mapped on access)
    steps["load"] = (time.perf_counter() - start, _rss_mb())
    payloads = {}
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        payloads[name] = tensor.tobytes()[:PAYLOAD]
        if isinstance(tensor, ir.ExternalTensor):
            tensor.release()  # drop the mapping: one weight resident at a time
    steps["read"] = (time.perf_counter() - start, _rss_mb())
    sidecar = out.with_suffix(".l2c")
    spans = _write_sidecar(payloads, sidecar)
    graph = model.graph
    for name in list(graph.initializers):
        weight = graph.initializers.pop(name)
        offset, length = spans[name]
        payload = ir.Value(name=name + ".payload", const_value=ir.ExternalTensor(
            sidecar.name, offset, length, ir.DataType.UINT8, shape=ir.Shape([length]),
            name=name + ".payload", base_dir=out.parent))
        graph.register_initializer(payload)
        decode = ir.Node("ai.onnx_l2c", "Decode", [payload])
        graph.insert_before(graph.node(0), decode)
        weight.replace_all_uses_with(decode.outputs[0])
        decode.outputs[0].name = name
    model.opset_imports["ai.onnx_l2c"] = 1
    ir.save(model, out)
    del np
    steps["rewrite+save"] = (time.perf_counter() - start, _rss_mb())
    return steps


def run_graphsurgeon(src: Path, out: Path) -> dict:
    import numpy as np
    import onnx
    import onnx_graphsurgeon as gs
    from onnx import external_data_helper

    steps = {}
    start = time.perf_counter()
    # LazyValues.load() calls numpy_helper.to_array without a base folder, so
    # external data must be loaded into the proto first: the whole model in RAM.
    graph = gs.import_onnx(onnx.load(str(src)))
    steps["load"] = (time.perf_counter() - start, _rss_mb())
    weights = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    payloads = {w.name: w.values.tobytes()[:PAYLOAD] for w in weights}
    steps["read"] = (time.perf_counter() - start, _rss_mb())
    sidecar = out.with_suffix(".l2c")
    spans = _write_sidecar(payloads, sidecar)
    for w in weights:
        payload = gs.Constant(w.name + ".payload", np.frombuffer(payloads[w.name], np.uint8))
        decoded = gs.Variable(w.name + ".decoded", dtype=w.dtype, shape=w.shape)
        graph.nodes.append(gs.Node("Decode", inputs=[payload], outputs=[decoded], domain="ai.onnx_l2c"))
        for consumer in list(w.outputs):
            for i, t in enumerate(list(consumer.inputs)):
                if t is w:
                    consumer.inputs[i] = decoded
        decoded.name, w.name = w.name, w.name + ".unused"
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    # gs embeds every constant: move the payloads to the sidecar by hand.
    for t in model.graph.initializer:
        base = t.name.removesuffix(".payload")
        if base in spans:
            _point_to(t, sidecar.name, *spans[base])
    onnx.save(model, str(out))
    steps["rewrite+save"] = (time.perf_counter() - start, _rss_mb())
    return steps


RUNNERS = {"protobuf": run_protobuf, "onnx-ir": run_onnx_ir, "onnx-graphsurgeon": run_graphsurgeon}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=2.5)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", nargs=3, metavar=("LIB", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        lib, src, out = args.child
        print(json.dumps(RUNNERS[lib](Path(src), Path(out))))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        src = Path(tmp) / "chain.onnx"
        count = build(src, args.gigabytes)
        size = src.stat().st_size + src.with_suffix(".data").stat().st_size
        print(f"model: {count} MatMul weights of {SIDE}x{SIDE} float32, {size / 1e9:.2f} GB external data")
        print("| library | load s | load peak MB | read all s | read peak MB | rewrite+save s | peak MB |")
        print("|---|---|---|---|---|---|---|")
        for lib in RUNNERS:
            if lib == "onnx-graphsurgeon":
                try:
                    import onnx_graphsurgeon  # noqa: F401
                except ImportError:
                    print(f"| {lib} | not installed | | | | | |")
                    continue
            out = Path(tmp) / lib / "out.onnx"
            out.parent.mkdir()
            proc = subprocess.run([sys.executable, __file__, "--child", lib, str(src), str(out)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"| {lib} | failed: {proc.stderr.strip().splitlines()[-1]} | | | | | |")
                continue
            s = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"| {lib} | {s['load'][0]:.2f} | {s['load'][1]:.0f} | {s['read'][0]:.2f} | {s['read'][1]:.0f} "
                  f"| {s['rewrite+save'][0]:.2f} | {s['rewrite+save'][1]:.0f} |")


if __name__ == "__main__":
    main()
