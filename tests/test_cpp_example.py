"""runtime/examples (issue 18): load_model.cc loads a compressed model with
onnxruntime's C++ API both ways (the C API's plain graph +
AddExternalInitializers, and the custom op), and time_load.cc times it
against the original; built by scripts/build_examples.sh with g++ against
Debian's onnxruntime headers (scripts/fetch_ort_headers.sh, which the package
build already ran) and the onnxruntime library of the installed wheel; the
outputs against Python's fast loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders
import onnx_l2c
from helpers import ROOT, assert_close, save


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    """The folder scripts/build_examples.sh built load_model and time_load into."""
    folder = tmp_path_factory.mktemp("cpp")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_examples.sh"), str(folder)], capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, PYTHON=sys.executable))
    if proc.returncode == 3:
        pytest.skip(f"cannot build the C++ examples here: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def example(examples) -> Path:
    return examples / "load_model"


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


def test_the_cpp_timer_reports_creation_and_latency(examples, tmp_path, rng):
    """time_load (bench runtime --cpp-timer) on a model with two inputs of
    different types, one of them int64; a wrong input count is a clear error."""
    w = rng.standard_normal((100, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["w", "ids"], ["e"]), helper.make_node("Add", ["e", "x"], ["y"])], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, (None,)),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, (None, 16))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (None, 16))], [numpy_helper.from_array(w, "w")])
    src = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
               tmp_path / "g.onnx")
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(src, out, preset="lossless")
    np.array([3, 7, 99], np.int64).tofile(tmp_path / "ids.bin")
    rng.standard_normal((3, 16)).astype(np.float32).tofile(tmp_path / "x.bin")
    args = [str(examples / "time_load"), str(src), str(out), "4", f"{tmp_path / 'ids.bin'}:3"]
    proc = subprocess.run([*args, f"{tmp_path / 'x.bin'}:3x16"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    times = json.loads(proc.stdout)
    assert set(times) == {"create_plain_s", "create_fast_s", "latency_plain_s", "latency_fast_s"}
    assert all(v > 0 for v in times.values())
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "the model has 2 inputs, 1 given" in proc.stderr, proc.stderr
