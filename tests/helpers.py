"""Test helpers: the three ways to run a compressed model, and crash-isolated runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnx_l2c

DATA = Path(__file__).parent / "data"


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
    """Run Python code in a child process, so a crash fails the test instead of the run."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
