"""Already-quantized variants of the zoo models, made with onnxruntime's own
quantizer, as users ship them (issue 17: onnx_l2c must code and compress
these too).

Kinds (the ones each model has are in ``VARIANTS``, with why the others are not):

* ``<model>-qop``: QOperator, dynamic: ``quantize_dynamic`` with per-channel
  QInt8 weights after ``quant_pre_process`` (ConvInteger / MatMulInteger /
  DynamicQuantizeLSTM ...), the peers' ``ort-int8-per-channel``.
* ``<model>-qdq``: QDQ, static: ``quantize_static`` with per-channel QInt8
  weights and QUInt8 activations (QuantizeLinear/DequantizeLinear pairs),
  calibrated with MinMax on the task's calibration split
  (``STATIC_CALIBRATION_SAMPLES`` feeds; disjoint from evaluation).
* ``minilm-int4``: ``MatMulNBitsQuantizer``, 4-bit symmetric blocks of 32
  (the peers' ``ort-int4-block32``).

Each is scored against the float original with the base model's task:
``onnx-l2c eval ZOO/<model>.onnx ZOO/<variant>.onnx --model <model>``.
Built into ``<cache>/zoo/`` by ``onnx-l2c zoo build <variant>``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

STATIC_CALIBRATION_SAMPLES = 32


@dataclass(frozen=True)
class Variant:
    name: str
    base: str  # the zoo model it is made from (its task scores it)
    kind: str  # "qop", "qdq" or "int4"
    build: Callable[[Path, Path], None]  # (float original, output path)


class VariantBuildError(RuntimeError):
    """onnxruntime's quantizer failed on the model (the variant does not exist)."""


def _peer_output(method_run: Callable[[Path, Path], object], original: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="onnx_l2c-variant-") as tmp:
        result = method_run(original, Path(tmp))
        error, path = getattr(result, "error"), getattr(result, "path")
        if error is not None or path is None:
            raise VariantBuildError(error or "no model produced")
        shutil.copyfile(path, out)


def build_qop(original: Path, out: Path) -> None:
    from .peers import peer_ort_int8

    _peer_output(lambda src, tmp: peer_ort_int8(src, tmp, per_channel=True), original, out)


def build_int4(original: Path, out: Path) -> None:
    from .peers import peer_ort_int4

    _peer_output(lambda src, tmp: peer_ort_int4(src, tmp, 32), original, out)


def _static_builder(base: str) -> Callable[[Path, Path], None]:
    def build(original: Path, out: Path) -> None:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from .tasks import TASKS

        task = TASKS[base]
        if task.calibration is None:
            raise VariantBuildError(f"{base} has no calibration split")
        feeds = task.calibration(STATIC_CALIBRATION_SAMPLES)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(feeds)

            def get_next(self) -> dict | None:
                return next(self._it, None)

        with tempfile.TemporaryDirectory(prefix="onnx_l2c-variant-") as tmp:
            source = original
            pre = Path(tmp) / "pre.onnx"
            for skip_symbolic in (False, True):
                try:
                    quant_pre_process(str(original.resolve()), str(pre), skip_symbolic_shape=skip_symbolic)
                except Exception as exc:  # noqa: BLE001 - the raw model is quantized instead, logged
                    log.info("%s-qdq: quant_pre_process(skip_symbolic_shape=%s) failed: %s", base, skip_symbolic,
                             exc)
                    continue
                source = pre
                break
            try:
                quantize_static(str(source), str(Path(tmp) / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                                per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                                calibrate_method=CalibrationMethod.MinMax)
            except Exception as exc:
                raise VariantBuildError(f"quantize_static: {type(exc).__name__}: {exc}") from exc
            shutil.copyfile(Path(tmp) / "q.onnx", out)

    return build


# The variants onnxruntime's quantizer makes usable: the model loads, runs,
# and keeps at least 0.8 of the float original's headline metric on the
# evaluation split (measured with `onnx-l2c eval`; below a model's own bar is
# kept, as users ship such models). Left out, on 2026-12-07 with onnxruntime
# 1.32: efficientnet_lite0-qop (top-1 agreement 0.40), minilm-qdq (mean
# cosine 0.58: static activation ranges do not fit a transformer), magika-qdq
# (quantize_static raises "truth value of an array ... is ambiguous"),
# ocr_rec-qop (string agreement 0.006), ocr_det-qdq and ocr_rec-qdq (invalid
# graphs: an int32 bias DequantizeLinear onnxruntime refuses), and both
# silero_vad variants (its weights live in If branches, which the quantizer
# leaves float: nothing is quantized).
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("efficientnet_lite0-qdq", "efficientnet_lite0", "qdq", _static_builder("efficientnet_lite0")),
    Variant("minilm-qop", "minilm", "qop", build_qop),
    Variant("minilm-int4", "minilm", "int4", build_int4),
    Variant("magika-qop", "magika", "qop", build_qop),
    Variant("ocr_det-qop", "ocr_det", "qop", build_qop),
)}
