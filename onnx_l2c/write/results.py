"""What a compression returns: per-tensor reports and the run's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class TensorReport:
    name: str
    method: str
    dtype: str
    shape: tuple[int, ...]
    original_bytes: int
    payload_bytes: int
    rel_rmse: float  # ‖Ŵ − W‖ / ‖W‖ (0 for lossless)
    sparsity: float = 0.0  # fraction of weights decoded as exactly zero
    params: dict[str, Any] | None = None  # the method's parameters, when planned

    @property
    def bits_per_weight(self) -> float:
        numel = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        return 8.0 * self.payload_bytes / max(numel, 1)


@dataclass
class CompressResult:
    output: Path
    sidecar: Path
    source_bytes: int  # the input .onnx plus every external data file it references
    graph_bytes: int
    sidecar_bytes: int
    seconds: float
    options: dict[str, Any]
    tensors: list[TensorReport] = field(default_factory=list)
    skipped_small: int = 0
    plan: dict[str, Any] | None = None  # size-target planning summary (see onnx_l2c/write/report.py)

    @property
    def output_bytes(self) -> int:
        return self.graph_bytes + self.sidecar_bytes

    @property
    def ratio(self) -> float:
        return self.source_bytes / max(self.output_bytes, 1)
