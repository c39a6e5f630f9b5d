"""A torch module to a compressed model in one call (issue 18).

    onnx_l2c.export(module, (x,), "small.onnx", target_ratio=8, calibration_data=[(x1,), (x2,)])

runs `torch.onnx.export` into a temporary folder next to the output, then
`onnx_l2c.compress` with the same options. The exporter: torch's dynamo
exporter (`torch.export` + onnxscript), the one torch recommends, and where
it cannot capture the module, the TorchScript exporter; the log says which
one produced the model, and why the first one was not used. torch is
imported here only: it is not a dependency of the rest of onnx_l2c.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_l2c.config import Choice, CompressOptions
from onnx_l2c.errors import L2CError, ModelError, UnsupportedError
from onnx_l2c.progress import Progress
from onnx_l2c.write.compress import check_output, compress
from onnx_l2c.write.results import CompressResult

log = logging.getLogger(__name__)


class Exporter(Choice):
    """Which torch exporter `export` runs."""

    AUTO = "auto"  # dynamo, and TorchScript where dynamo fails (said in the log)
    DYNAMO = "dynamo"  # torch.onnx.export(..., dynamo=True) only
    TORCHSCRIPT = "torchscript"  # torch.onnx.export(..., dynamo=False) only


def _to_numpy(value: Any, where: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (on any device, with or without grad)
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise L2CError(f"{where}: {type(value).__name__} is not a tensor or array") from exc


def calibration_feeds(samples: Iterable[Any], input_names: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """Calibration samples given the way the module is called — a tuple of
    positional tensors (or one tensor) per sample, like `args` — as feed dicts
    of the exported graph's inputs, in order. Dicts pass through (values
    converted to numpy)."""
    feeds = []
    for i, sample in enumerate(samples):
        where = f"calibration sample {i}"
        if isinstance(sample, Mapping):
            feeds.append({str(k): _to_numpy(v, f"{where}, input {k!r}") for k, v in sample.items()})
            continue
        values = tuple(sample) if isinstance(sample, (tuple, list)) else (sample,)
        if len(values) != len(input_names):
            raise L2CError(f"{where}: {len(values)} tensors for the exported model's {len(input_names)} inputs "
                           f"{list(input_names)}; give one per input (as in args) or a dict by input name")
        feeds.append({name: _to_numpy(v, f"{where}, input {name!r}") for name, v in zip(input_names, values)})
    return feeds


def _graph_input_names(path: Path) -> list[str]:
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name not in initializers]


def _torch_export(module: Any, args: tuple[Any, ...], path: Path, dynamo: bool, kwargs: dict[str, Any] | None,
                  input_names: Sequence[str] | None, output_names: Sequence[str] | None,
                  dynamic_shapes: Any, dynamic_axes: Any, opset_version: int | None) -> None:
    import torch

    # verbose=False: torch's own progress lines would go to stdout, which the CLI owns
    common: dict[str, Any] = {"kwargs": kwargs, "input_names": input_names, "output_names": output_names,
                              "opset_version": opset_version, "verbose": False}
    if dynamo:
        # external_data: weights beside the graph (a >2 GB model cannot be one protobuf); compress reads them
        torch.onnx.export(module, args, str(path), dynamo=True, dynamic_shapes=dynamic_shapes,
                          external_data=True, **common)
    else:
        torch.onnx.export(module, args, str(path), dynamo=False, dynamic_axes=dynamic_axes, **common)
    if not path.is_file():
        raise ModelError(f"torch.onnx.export (dynamo={dynamo}) wrote no model at {path}")


def export(module: Any, args: Any, output: str | os.PathLike, *, kwargs: dict[str, Any] | None = None,
           input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
           dynamic_shapes: Any = None, dynamic_axes: Any = None, opset_version: int | None = None,
           exporter: Exporter | str = Exporter.AUTO, progress: Progress | None = None,
           **options: Any) -> CompressResult:
    """Export the torch `module` called with `args` (a tuple of positional
    arguments, or one tensor) and `kwargs` to ONNX, then compress it into
    `output` (+ `output.l2c`) with `options` (those of `onnx_l2c.compress`).

    `dynamic_shapes` goes to the dynamo exporter, `dynamic_axes` to the
    TorchScript one (give both for `exporter="auto"` with dynamic sizes).
    `calibration_data` may also hold samples the way the module is called:
    a tuple of tensors (or one tensor) per sample, matched to the graph's
    inputs in order. The exported model is removed once compressed."""
    kind = Exporter.parse(exporter, "exporter")
    output = Path(output)
    check_output(None, output)
    CompressOptions.from_kwargs(**options)  # an option error now, not after the export
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise UnsupportedError("onnx_l2c.export needs torch (pip install torch==2.13.0 --index-url "
                               "https://download.pytorch.org/whl/cpu); onnx_l2c.compress takes an exported "
                               ".onnx without it") from exc
    call_args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    with tempfile.TemporaryDirectory(prefix=".l2c-export-", dir=output.parent) as tmp:
        exported = Path(tmp) / (output.stem + ".onnx")
        order = [True, False] if kind is Exporter.AUTO else [kind is Exporter.DYNAMO]
        failures: list[str] = []
        for dynamo in order:
            name = "dynamo" if dynamo else "TorchScript"
            try:
                _torch_export(module, call_args, exported, dynamo, kwargs, input_names, output_names,
                              dynamic_shapes, dynamic_axes, opset_version)
            except Exception as exc:  # noqa: BLE001 - torch raises many types; each is reported, none hidden
                failures.append(f"the {name} exporter: {type(exc).__name__}: {str(exc).strip()[:500]}")
                if dynamo and kind is Exporter.AUTO:
                    log.warning("the dynamo exporter failed (%s: %s); exporting with the TorchScript exporter",
                                type(exc).__name__, str(exc).strip().splitlines()[0][:200] if str(exc).strip()
                                else "")
                for leftover in Path(tmp).iterdir():  # a partial model or its data: the next try starts clean
                    leftover.unlink()
                continue
            log.info("exported with the %s exporter to a temporary model", name)
            break
        else:
            raise ModelError(f"torch.onnx.export failed for {type(module).__name__}: " + "; ".join(failures))
        data = options.get("calibration_data")
        if data is not None and not isinstance(data, (str, os.PathLike, Mapping)) and not hasattr(data, "get_next"):
            options["calibration_data"] = calibration_feeds(data, _graph_input_names(exported))
        return compress(exported, output, progress=progress, **options)
