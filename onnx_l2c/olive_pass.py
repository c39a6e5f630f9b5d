"""onnx_l2c as a pass of an Olive workflow (issue 18; olive-ai 0.13).

A workflow names the pass by type, with onnx_l2c's own options as its
config (generated from the option table: every option, default None =
onnx_l2c's default, so only what the workflow sets is given):

    {"input_model": {"type": "ONNXModel", "model_path": "model.onnx"},
     "passes": {"compress": {"type": "OnnxL2CCompression", "target_ratio": 8,
                             "calibration_data": "calib/"}}}

Olive finds passes through its package config, so the workflow runs with
onnx_l2c's (Olive's own passes plus this one):

    olive.workflows.run(config, package_config=onnx_l2c.olive_pass.package_config())
    olive run --config workflow.json --package-config l2c_olive.json   # write_package_config("l2c_olive.json")

The pass's output is an `OnnxL2CModel`: the compressed model and its sidecar
in one folder, which Olive's evaluators open with the zero-overhead loader
(`onnx_l2c.InferenceSession`), so metrics and latency are of the compressed
model at the original's speed. Importing this module needs olive-ai.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

from olive.hardware import AcceleratorSpec, Device
from olive.model import ONNXModelHandler
from olive.model.config.registry import model_handler_registry
from olive.model.utils.onnx_utils import resolve_onnx_path
from olive.package_config import OlivePackageConfig
from olive.passes import Pass
from olive.passes.pass_config import BasePassConfig, PassConfigParam

from onnx_l2c.config import Choice, CompressOptions, OptionSpec, all_options
from onnx_l2c.errors import ModelError, OptionError

log = logging.getLogger(__name__)

PASS_TYPE = "OnnxL2CCompression"
MODEL_TYPE = "OnnxL2CModel"


def _olive_type(spec: OptionSpec) -> Any:
    """The JSON-friendly type of an option in a workflow config (None: onnx_l2c's default)."""
    if isinstance(spec.type, type) and issubclass(spec.type, Choice):
        return Optional[str]  # the choice's value, e.g. "lossless"
    if spec.type in (tuple, Path, object):
        return Optional[str]  # methods as "a,b"; report and calibration_data as paths
    return Optional[spec.type]


def _description(spec: OptionSpec) -> str:
    choices = ""
    if isinstance(spec.type, type) and issubclass(spec.type, Choice):
        choices = " (one of " + ", ".join(c.value for c in spec.type) + ")"
    text = spec.help.replace("{methods}", "see onnx_l2c.passes.registry()")
    return f"{text}{choices}; onnx_l2c's option {spec.name} (CLI {spec.cli_flag}), unset = its default"


def pass_config_params() -> dict[str, PassConfigParam]:
    """One Olive config parameter per onnx_l2c option."""
    return {spec.name: PassConfigParam(type_=_olive_type(spec), default_value=None, description=_description(spec))
            for spec in all_options()}


def _session_options(settings: dict[str, Any]) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    given = settings.get("session_options") or {}
    if given.get("intra_op_num_threads"):
        so.intra_op_num_threads = given["intra_op_num_threads"]
    if given.get("inter_op_num_threads"):
        so.inter_op_num_threads = given["inter_op_num_threads"]
    if given.get("graph_optimization_level") is not None:
        so.graph_optimization_level = ort.GraphOptimizationLevel(given["graph_optimization_level"])
    for key, value in (given.get("extra_session_config") or {}).items():
        so.add_session_config_entry(key, value)
    return so


@model_handler_registry(MODEL_TYPE)
class OnnxL2CModelHandler(ONNXModelHandler):
    """A compressed model (graph + sidecar in one folder) that Olive evaluates
    through onnx_l2c's zero-overhead loader."""

    def prepare_session(self, inference_settings: Optional[dict[str, Any]] = None, device: Device = Device.CPU,
                        execution_providers: Optional[Union[str, list[str]]] = None, rank: Optional[int] = None):
        import onnx_l2c

        settings = self.merge_inference_settings(inference_settings, execution_providers)
        providers = settings.get("execution_provider") or ["CPUExecutionProvider"]
        names = [p if isinstance(p, str) else p[0] for p in providers]
        options = settings.get("provider_options") or [
            {} if isinstance(p, str) else dict(p[1]) for p in providers]
        return onnx_l2c.InferenceSession(self.model_path, _session_options(settings), providers=names,
                                         provider_options=options)


class OnnxL2CCompression(Pass):
    """Compress an ONNX model's weights with onnx_l2c (lossless, the safe
    preset, or a size target); the output loads with onnx_l2c's loaders or
    the onnx_l2c custom op in any onnxruntime binding."""

    @classmethod
    def _default_config(cls, accelerator_spec: AcceleratorSpec) -> dict[str, PassConfigParam]:
        return pass_config_params()

    def _run_for_config(self, model: ONNXModelHandler, config: type[BasePassConfig],
                        output_model_path: str) -> OnnxL2CModelHandler:
        import onnx_l2c

        if not isinstance(model, ONNXModelHandler):
            raise ModelError(f"the {PASS_TYPE} pass takes an ONNX model, got {type(model).__name__}")
        source = Path(model.model_path)
        output = Path(resolve_onnx_path(output_model_path, source.name))
        output.parent.mkdir(parents=True, exist_ok=True)
        options = {name: getattr(config, name) for name in pass_config_params()
                   if getattr(config, name, None) is not None}
        try:
            CompressOptions.from_kwargs(**options)
        except OptionError as exc:
            # Olive stops a workflow on a ValueError (a user's config error) and only logs other failures
            raise ValueError(f"{PASS_TYPE} pass config: {exc}") from exc
        result = onnx_l2c.compress(source, output, **options)
        log.info("onnx_l2c: %s -> %s, %.2fx", source, output, result.ratio)
        return OnnxL2CModelHandler(model_path=str(output.parent), onnx_file_name=output.name,
                                   inference_settings=model.inference_settings,
                                   model_attributes=model.model_attributes)


def package_config() -> dict[str, Any]:
    """Olive's package config (its own passes) with the OnnxL2CCompression pass added."""
    config = json.loads(Path(OlivePackageConfig.get_default_config_path()).read_text())
    config["passes"][PASS_TYPE] = {"module_path": f"{__name__}.{OnnxL2CCompression.__name__}",
                                   "supported_providers": ["*"], "supported_accelerators": ["*"],
                                   "supported_precisions": ["*"], "supported_algorithms": [],
                                   "supported_quantization_encodings": []}
    return config


def write_package_config(path: str | os.PathLike) -> Path:
    """Write `package_config()` as JSON for `olive run --package-config PATH`."""
    path = Path(path)
    path.write_text(json.dumps(package_config(), indent=2))
    return path

