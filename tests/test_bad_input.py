"""Hostile and broken inputs: every load path fails with a clear error naming
the file and tensor, never crashes, never decodes silently wrong.

Each load path runs in a child process, so a segfault fails the test.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import external_data_helper

import builders
import onnx_l2c
from helpers import patched, run_isolated, save

CHILD = r"""
import json, sys
import numpy as np
import onnxruntime as ort
import onnx_l2c

mode, cases = sys.argv[1], json.loads(sys.argv[2])
feeds = {"x": np.ones((2, 64), np.float32)}
results = {}
for label, path in cases:
    try:
        if mode == "fast":
            onnx_l2c.InferenceSession(path).run(None, feeds)
        elif mode == "custom_op":
            so = ort.SessionOptions()
            so.register_custom_ops_library(onnx_l2c.custom_op_library())
            ort.InferenceSession(path, so).run(None, feeds)
        else:
            onnx_l2c.decompress(path, path + ".plain.onnx")
        results[label] = None
    except Exception as exc:
        results[label] = f"{type(exc).__name__}: {exc}"
print(json.dumps(results))
"""

MODES = ["fast", "custom_op", "decompress"]


def _run(mode: str, cases: list[tuple[str, Path]]) -> dict[str, str | None]:
    code = "import sys; sys.argv = ['child', %r, %r]\n" % (mode, json.dumps([(l, str(p)) for l, p in cases])) + CHILD
    proc = run_isolated(code, timeout=300)
    assert proc.returncode == 0, f"{mode}: child crashed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compressed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("good")
    src = save(builders.mlp(np.random.default_rng(3)), tmp / "model.onnx")
    out = tmp / "small.onnx"
    onnx_l2c.compress(src, out, preset="int8", min_elements=1)
    return out


def _payloads(model_path: Path) -> dict[str, tuple[int, int]]:
    model = onnx.load(str(model_path), load_external_data=False)
    out = {}
    for t in model.graph.initializer:
        if external_data_helper.uses_external_data(t):
            info = external_data_helper.ExternalDataInfo(t)
            out[t.name.split("@")[0]] = (int(info.offset), int(info.length))
    return out


def _variant(src: Path, root: Path, label: str, sidecar: bytes | None) -> tuple[str, Path]:
    folder = root / label
    folder.mkdir()
    shutil.copy(src, folder / src.name)
    if sidecar is not None:
        (folder / (src.name + ".l2c")).write_bytes(sidecar)
    return label, folder / src.name


def test_corrupt_sidecars_fail_cleanly_everywhere(compressed: Path, tmp_path: Path):
    sidecar = (compressed.parent / (compressed.name + ".l2c")).read_bytes()
    payloads = _payloads(compressed)
    first, (off, length) = min(payloads.items(), key=lambda kv: kv[1][0])
    last = max(payloads.items(), key=lambda kv: kv[1][0])[0]
    cases: list[tuple[str, Path]] = []
    expect_tensor: dict[str, str] = {}

    # Truncation at many offsets (inside the header, stages and CRC of payloads;
    # not in the sidecar index after them, which only the C API needs:
    # test_model_index.py).
    end = max(o + n for o, n in payloads.values())
    for cut in sorted({0, 1, 5, 13, 40, off + length // 2, end - 1, end - 4}):
        label = f"truncated_{cut}"
        cases.append(_variant(compressed, tmp_path, label, sidecar[:cut]))
        expect_tensor[label] = None  # whichever tensor falls past the cut
    # Flipped bytes in header and body: the CRC must catch every one.
    for pos in sorted({0, 4, 6, 9, 30, 60, length // 3, length // 2, length - 10, length - 1}):
        label = f"flip_{pos}"
        data = bytearray(sidecar)
        data[off + pos] ^= 0x5A
        cases.append(_variant(compressed, tmp_path, label, bytes(data)))
        expect_tensor[label] = first
    payload = sidecar[off:off + length]
    for label, pos, new in [("bad_magic", 0, b"XXXX"), ("bad_version", 4, struct.pack("<H", 7)),
                            ("huge_shape", 8 + 0 * 8, struct.pack("<Q", 1 << 39))]:
        if label == "huge_shape":
            pos = 8  # first dim, right after magic, version, dtype, ndim
        data = sidecar[:off] + patched(payload, pos, new) + sidecar[off + length:]
        cases.append(_variant(compressed, tmp_path, label, data))
        expect_tensor[label] = first
    cases.append(_variant(compressed, tmp_path, "missing_sidecar", None))
    expect_tensor["missing_sidecar"] = None
    not_onnx = tmp_path / "not_onnx.onnx"
    not_onnx.write_bytes(b"\x12\x34garbage" * 50)
    cases.append(("not_onnx", not_onnx))

    for mode in MODES:
        results = _run(mode, cases)
        for label, _ in cases:
            err = results[label]
            assert err is not None, f"{mode}/{label}: loaded without error"
            if label == "not_onnx":
                continue
            assert "small.onnx" in err, f"{mode}/{label}: file not named: {err}"
            tensor = expect_tensor[label]
            if tensor is not None:
                assert tensor in err, f"{mode}/{label}: tensor {tensor!r} not named: {err}"
            else:
                assert any(t in err for t in payloads), f"{mode}/{label}: no tensor named: {err}"
    del last


def test_every_single_byte_flip_is_detected(compressed: Path):
    """Exhaustive over one payload, in process through the native decoder (CRC)."""
    from onnx_l2c.codec import native

    sidecar = (compressed.parent / (compressed.name + ".l2c")).read_bytes()
    off, length = min(_payloads(compressed).values())
    payload = bytearray(sidecar[off:off + length])
    info = native.payload_info(bytes(payload))
    out = np.empty(info.nbytes, np.uint8)
    for pos in range(0, length, max(1, length // 512)):
        payload[pos] ^= 0x01
        with pytest.raises(onnx_l2c.L2CError):
            native.decode_into(bytes(payload), out)
        payload[pos] ^= 0x01
    native.decode_into(bytes(payload), out)  # the intact payload still decodes


def test_graph_and_payload_disagree_on_shape(compressed: Path, tmp_path: Path):
    """A Decode node whose declared shape differs from its payload's (same size) is refused."""
    model = onnx.load(str(compressed), load_external_data=False)
    node = next(n for n in model.graph.node if n.op_type == "Decode")
    shape = next(a for a in node.attribute if a.name == "shape")
    shape.ints[:] = list(reversed(shape.ints))
    target = tmp_path / compressed.name
    onnx.save(model, str(target))
    shutil.copy(compressed.parent / (compressed.name + ".l2c"), tmp_path)
    with pytest.raises(onnx_l2c.L2CError, match=f"{node.output[0]}.*declares"):
        onnx_l2c.decompress(target, tmp_path / "plain.onnx")
