"""onnx_l2c as an Olive pass (issue 18): a workflow JSON names
OnnxL2CCompression, Olive runs it and evaluates the compressed model
through onnx_l2c's loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import builders
from helpers import assert_bit_identical, run_plain, save

olive_workflows = pytest.importorskip("olive.workflows", reason="olive-ai is not installed (pip install olive-ai)")

from onnx_l2c.olive_pass import MODEL_TYPE, PASS_TYPE, package_config, pass_config_params, write_package_config  # noqa: E402


def _workflow(tmp_path: Path, model: Path, pass_config: dict) -> dict:
    return {
        "input_model": {"type": "ONNXModel", "model_path": str(model)},
        "systems": {"local": {"type": "LocalSystem",
                              "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [{"name": "dummy", "type": "DummyDataContainer",
                          "load_dataset_config": {"input_shapes": [[2, 64]], "input_names": ["x"],
                                                  "input_types": ["float32"]}}],
        "evaluators": {"latency": {"metrics": [{"name": "latency", "type": "latency", "sub_types": [{"name": "avg"}],
                                                "data_config": "dummy"}]}},
        "passes": {"compress": dict(pass_config, type=PASS_TYPE)},
        "evaluator": "latency", "host": "local", "target": "local",
        "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out"), "log_severity_level": 3,
    }


def _output_model(tmp_path: Path) -> Path:
    config = json.loads((tmp_path / "out" / "model_config.json").read_text())
    assert config["type"] == MODEL_TYPE.lower()
    return Path(config["config"]["model_path"]) / config["config"]["onnx_file_name"]


@pytest.fixture()
def mlp(tmp_path, rng) -> Path:
    return save(builders.mlp(rng), tmp_path / "mlp.onnx")


def test_a_workflow_compresses_losslessly_and_evaluates_the_compressed_model(tmp_path, mlp, rng):
    olive_workflows.run(_workflow(tmp_path, mlp, {"preset": "lossless"}), package_config=package_config())
    out = _output_model(tmp_path)
    assert out.with_name(out.name + ".l2c").stat().st_size > 0  # the sidecar travels with the graph
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["latency-avg"]["value"] > 0  # Olive ran the compressed model (through OnnxL2CModelHandler)
    import onnx_l2c

    feeds = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    assert_bit_identical(run_plain(mlp, feeds), onnx_l2c.InferenceSession(out).run(None, feeds), "Olive's output")


def test_a_workflow_takes_a_size_target_with_calibration_from_the_config(tmp_path, mlp, rng):
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.standard_normal((16, 64)).astype(np.float32))
    workflow = _workflow(tmp_path, mlp, {"target_ratio": 4, "calibration_data": str(calib), "methods": "mixed"})
    olive_workflows.run(workflow, package_config=package_config())
    out = _output_model(tmp_path)
    size = out.stat().st_size + out.with_name(out.name + ".l2c").stat().st_size
    assert mlp.stat().st_size / size >= 4 * 0.99


def test_the_pass_config_is_the_option_table_and_errors_name_the_option(tmp_path, mlp):
    import onnx_l2c

    params = pass_config_params()
    assert set(params) == {spec.name for spec in onnx_l2c.OPTIONS}
    assert all(p.default_value is None for p in params.values())  # unset = onnx_l2c's own default
    assert "lossless" in params["preset"].description and "--target-ratio" in params["target_ratio"].description
    written = write_package_config(tmp_path / "l2c_olive.json")
    passes = json.loads(written.read_text())["passes"]
    assert passes[PASS_TYPE]["module_path"] == "onnx_l2c.olive_pass.OnnxL2CCompression"
    assert len(passes) > 10  # Olive's own passes stay available
    with pytest.raises(ValueError, match="OnnxL2CCompression pass config: option methods: has no effect without a "
                                         "size target"):
        olive_workflows.run(_workflow(tmp_path, mlp, {"methods": "mixed"}), package_config=package_config())
