"""Test helpers: the three ways to run a compressed model, and crash-isolated runs."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnx_l2c
from onnx_l2c.codec import STORAGE, native, parse_header

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).absolute().parents[1]


def run_plain(path: Path | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_fast(path: Path | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = onnx_l2c.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_custom_op(path: Path | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.register_custom_ops_library(onnx_l2c.custom_op_library())
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_all_paths(compressed: Path, tmp_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Outputs of the fast loader, the custom op and the decompressed model."""
    plain = tmp_path / (compressed.stem + ".plain.onnx")
    onnx_l2c.decompress(compressed, plain)
    return {
        "fast": run_fast(compressed, feeds),
        "custom_op": run_custom_op(compressed, feeds),
        "decompressed": run_plain(plain, feeds),
    }


def decoded_by_custom_op(compressed: Path) -> dict[str, np.ndarray]:
    """The main graph's weights as the custom op decodes them inside onnxruntime
    (bfloat16 widened to float32).

    Runs a model holding only the Decode nodes, with their outputs as graph
    outputs, saved beside the compressed model so the sidecar resolves.
    """
    from onnx_l2c.codec import DOMAIN

    model = onnx.load(str(compressed), load_external_data=False)
    model.ir_version = max(model.ir_version, 4)  # initializers need not be graph inputs
    graph = model.graph
    decodes = [n for n in graph.node if n.domain == DOMAIN]
    payloads = [t for t in graph.initializer if t.name in {n.input[0] for n in decodes}]
    types = {v.name: v for v in graph.value_info}
    outputs = []
    casts = []
    for n in decodes:
        info = types[n.output[0]]
        if info.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16:
            # numpy has no bfloat16: widen (exactly) to float32
            casts.append(onnx.helper.make_node("Cast", [n.output[0]], [n.output[0] + ":f32"], to=onnx.TensorProto.FLOAT))
            outputs.append(onnx.helper.make_tensor_value_info(n.output[0] + ":f32", onnx.TensorProto.FLOAT, None))
        else:
            outputs.append(info)
    for field in (graph.node, graph.input, graph.output, graph.initializer):
        del field[:]
    graph.node.extend(decodes + casts)
    graph.initializer.extend(payloads)
    graph.output.extend(outputs)
    probe = compressed.with_name(compressed.stem + ".probe.onnx")
    onnx.save(model, str(probe))
    so = ort.SessionOptions()
    so.register_custom_ops_library(onnx_l2c.custom_op_library())
    sess = ort.InferenceSession(str(probe), so, providers=["CPUExecutionProvider"])
    names = [o.name.removesuffix(":f32") for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {})))


def assert_close(expected: list[np.ndarray], got: list[np.ndarray], what: str, rtol: float = 1e-4) -> None:
    """Equal up to float summation order (the custom-op path runs other kernels:
    onnxruntime does not prepack or re-layout weights that a custom op produces)."""
    assert len(expected) == len(got), what
    for i, (a, b) in enumerate(zip(expected, got)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: output {i} {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        if a.dtype.kind != "f":
            assert np.array_equal(a, b), f"{what}: output {i} differs"
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        scale = max(float(np.max(np.abs(a64), initial=0.0)), 1e-30)
        err = float(np.max(np.abs(a64 - b64), initial=0.0))
        assert err <= rtol * scale, f"{what}: output {i} max error {err:.3g} vs scale {scale:.3g}"


def assert_bit_identical(expected: list[np.ndarray], got: list[np.ndarray], what: str) -> None:
    assert len(expected) == len(got), what
    for i, (a, b) in enumerate(zip(expected, got)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: output {i} {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        if a.dtype.kind == "f":
            assert np.array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}")), f"{what}: output {i} differs"
        else:
            assert np.array_equal(a, b), f"{what}: output {i} differs"


def run_isolated(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run Python code in a child process, so a crash fails the test instead of the run.

    The child imports the installed onnx_l2c and these helpers, wherever pytest runs."""
    prelude = f"import sys; sys.path[:0] = [{str(ROOT / 'tests')!r}]\n"
    return subprocess.run([sys.executable, "-P", "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


NATIVE_ERRORS_CHILD = """
import json, sys
from helpers import native_decode
from onnx_l2c.errors import L2CError
out = {}
for label, hexed in json.loads(sys.argv[1]).items():
    try:
        native_decode(bytes.fromhex(hexed))
        out[label] = None
    except L2CError as e:
        out[label] = [e.code, str(e)]
print(json.dumps(out))
"""


def assert_rejected_natively(cases: list[tuple[str, bytes, str, int]]) -> None:
    """Every (label, payload, message pattern, error code) is rejected by the native decoder
    with that code and a message matching the pattern; decoded in a child process, so a
    crash fails the test."""
    import json
    import re

    code = "import sys; sys.argv = ['child', %r]\n" % json.dumps({c[0]: c[1].hex() for c in cases})
    proc = run_isolated(code + NATIVE_ERRORS_CHILD)
    assert proc.returncode == 0, f"child crashed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for label, _, pattern, err_code in cases:
        got = results[label]
        assert got is not None, f"{label}: accepted"
        assert got[0] == err_code and re.search(pattern, got[1]), f"{label}: {got}"


# ------------------------------------------------------------ native payloads


def native_decode(payload: bytes | np.ndarray) -> np.ndarray:
    """Decode a payload with the native library: float32 / float16 / uint16 bits for bfloat16."""
    info = native.payload_info(payload)
    out = np.empty(int(np.prod(info.dims, dtype=np.int64)), STORAGE[info.dtype])  # int4 & co: one per byte, unpacked
    native.decode_into(payload, out)
    return out.reshape(info.dims)


def with_crc(body: bytes) -> bytes:
    """Payload bytes (without CRC) plus a valid CRC, so the checks behind the CRC are exercised."""
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def patched(payload: bytes, pos: int, new: bytes) -> bytes:
    """Payload with bytes replaced at `pos` and a valid CRC."""
    return with_crc(payload[:pos] + new + payload[pos + len(new):-4])


def stage_offsets(payload: bytes) -> list[tuple[int, int, int]]:
    """(kind, body offset, body size) of each stage of a well-formed payload (FORMAT.md layout)."""
    return list(parse_header(payload).stages)


def payload_bytes(sidecar: Path) -> bytes:
    """A sidecar's payloads, without the index after them: the index records
    its graph file's size and CRC, and that file names the sidecar, so two
    runs that differ only in the output's name differ there."""
    from onnx_l2c.codec.index import TRAILER_BYTES, TRAILER_MAGIC

    data = sidecar.read_bytes()
    if len(data) >= TRAILER_BYTES and data[-TRAILER_BYTES:-TRAILER_BYTES + 8] == TRAILER_MAGIC:
        return data[:struct.unpack_from("<Q", data, len(data) - TRAILER_BYTES + 8)[0]]
    return data


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
