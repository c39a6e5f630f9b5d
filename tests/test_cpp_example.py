"""runtime/examples/load_model.cc (issue 18): a C++ program loads a
compressed model with onnxruntime's C++ API both ways (the C API's plain
graph + AddExternalInitializers, and the custom op), built here with g++
against Debian's onnxruntime headers (scripts/fetch_ort_headers.sh, which the
package build already ran) and the onnxruntime library of the installed
wheel; its outputs against Python's fast loader."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

import builders
import onnx_l2c
from helpers import ROOT, assert_close, save


def _ort_headers() -> Path:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "fetch_ort_headers.sh")], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"no onnxruntime C++ headers (scripts/fetch_ort_headers.sh: {proc.stderr.strip()[-300:]})")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    folder = tmp_path_factory.mktemp("cpp")
    # the wheel's library, under the name its soname asks for
    capi = Path(onnxruntime.__file__).parent / "capi"
    (library,) = sorted(capi.glob("libonnxruntime.so.1.*"))[-1:]
    (folder / "libonnxruntime.so.1").symlink_to(library)
    l2c = Path(onnx_l2c.custom_op_library())
    binary = folder / "load_model"
    subprocess.run([compiler, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror",
                    str(ROOT / "runtime" / "examples" / "load_model.cc"),
                    "-I", str(_ort_headers()), "-I", str(ROOT / "runtime" / "include"),
                    str(l2c), f"-Wl,-rpath,{l2c.parent}",
                    str(folder / "libonnxruntime.so.1"), f"-Wl,-rpath,{folder}", "-o", str(binary)],
                   check=True, capture_output=True, text=True, timeout=300)
    return binary


@pytest.mark.parametrize("preset", ["lossless", "int8"])
def test_the_cpp_example_loads_both_ways(example, tmp_path, rng, preset):
    src = save(builders.mlp(rng), tmp_path / "mlp.onnx")
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(src, out, preset=preset, min_elements=1000)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    x.tofile(tmp_path / "x.f32")
    proc = subprocess.run([str(example), str(out), onnx_l2c.custom_op_library(), str(tmp_path / "x.f32"),
                           str(tmp_path / "y"), "4", "64"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert "fast: session created" in proc.stdout and "custom op: session created" in proc.stdout
    expected = onnx_l2c.InferenceSession(out).run(None, {"x": x})[0]
    fast = np.fromfile(tmp_path / "y.fast.f32", np.float32).reshape(expected.shape)
    custom = np.fromfile(tmp_path / "y.custom_op.f32", np.float32).reshape(expected.shape)
    assert np.array_equal(fast.view(np.uint32), expected.view(np.uint32))  # bit for bit, as Python's fast loader
    assert_close([expected], [custom], "custom op")  # unfused kernels: rounding may differ


def test_the_cpp_example_reports_a_model_without_an_index(example, tmp_path):
    old = ROOT / "tests" / "data" / "models_v5" / "mlp_lossless.onnx"
    np.zeros((1, 64), np.float32).tofile(tmp_path / "x.f32")
    proc = subprocess.run([str(example), str(old), onnx_l2c.custom_op_library(), str(tmp_path / "x.f32"),
                           str(tmp_path / "y"), "1", "64"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "no index" in proc.stderr, proc.stderr


def test_the_c_api_refuses_a_path_that_is_not_a_regular_file(example, tmp_path):
    np.zeros((1, 64), np.float32).tofile(tmp_path / "x.f32")
    proc = subprocess.run([str(example), str(tmp_path), onnx_l2c.custom_op_library(), str(tmp_path / "x.f32"),
                           str(tmp_path / "y"), "1", "64"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "is not a regular file" in proc.stderr, proc.stderr
