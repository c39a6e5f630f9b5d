"""Calibration input: sample feeds from files or any iterable, and a session
that exposes intermediate tensors.

Accepted inputs (the shape of onnxruntime's `CalibrationDataReader`):

* a `.npz` file: one array per graph input, leading sample axis;
* a folder of `.npz` files: one feed dict per file, read in name order;
* any iterable of `{input_name: ndarray}` dicts, or an object with
  `get_next()` returning such dicts and then None (a `CalibrationDataReader`).

Statistics are streamed over the samples; the planner reads them several
times (`load_samples`): a folder's files are read when a pass reaches them
(one batch in memory), other sources are read once into memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from onnx_l2c.errors import L2CError

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
DEFAULT_SAMPLES = 128


class DataReader(Protocol):
    def get_next(self) -> Feeds | None: ...


CalibrationData = str | os.PathLike | Iterable[Feeds] | DataReader


@dataclass(frozen=True)
class InputSpec:
    name: str
    rank: int | None  # None when the graph does not say
    dynamic_batch: bool  # the leading dimension is symbolic or unknown


def graph_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers)."""
    init = {t.name for t in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in init:
            continue
        shape = value.type.tensor_type.shape if value.type.HasField("tensor_type") else None
        if shape is None or not value.type.tensor_type.HasField("shape"):
            out.append(InputSpec(value.name, None, True))
            continue
        dims = list(shape.dim)
        dynamic = not dims or not dims[0].HasField("dim_value") or dims[0].dim_value <= 0
        out.append(InputSpec(value.name, len(dims), dynamic))
    return out


def iter_samples(data: CalibrationData, inputs: list[InputSpec], limit: int = DEFAULT_SAMPLES) -> Iterator[Feeds]:
    """Up to `limit` single-sample feed dicts from any accepted input."""
    names = [spec.name for spec in inputs]
    count = 0
    for feeds in _raw_samples(data, inputs):
        if count >= limit:
            return
        yield _model_feeds(feeds, names, f"calibration sample {count}")
        count += 1
    if count == 0:
        raise L2CError(f"calibration data {_describe(data)} holds no samples")


class SampleFiles(Sequence[Feeds]):
    """The samples of a calibration folder, one `.npz` file each, read when a
    pass over them gets there: the set is never all in memory (128 detector
    images are about 1 GB)."""

    def __init__(self, files: list[Path], names: list[str]) -> None:
        self.files = files
        self.names = names

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return SampleFiles(self.files[index], self.names)
        path = self.files[index]
        return _model_feeds(_load_npz(path), self.names, f"calibration file {path}")


def load_samples(data: CalibrationData, inputs: list[InputSpec], limit: int = DEFAULT_SAMPLES) -> Sequence[Feeds]:
    """Up to `limit` samples that can be read several times: a folder's
    files when they are used (`SampleFiles`), anything else read once."""
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        samples = SampleFiles(_folder_files(Path(data))[:max(limit, 0)], [spec.name for spec in inputs])
        _ = samples[0]  # a readable first sample, or the error now
        return samples
    return list(iter_samples(data, inputs, limit))


def _model_feeds(feeds: Feeds, names: list[str], what: str) -> Feeds:
    """The model's inputs of one sample, or an error naming the sample."""
    missing = [n for n in names if n not in feeds]
    if missing:
        raise L2CError(f"{what}: missing graph input(s) {missing}; the model's inputs are {names}")
    return {n: np.asarray(feeds[n]) for n in names}


def _folder_files(path: Path) -> list[Path]:
    """A calibration folder's samples, one .npz each, in name order."""
    files = sorted(path.glob("*.npz"))
    if not files:
        raise L2CError(f"calibration folder {path} holds no .npz files")
    return files


def _describe(data: Any) -> str:
    return str(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__


def _raw_samples(data: CalibrationData, inputs: list[InputSpec]) -> Iterator[Feeds]:
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            for f in _folder_files(path):
                yield _load_npz(f)
            return
        if path.is_file():
            yield from _split_npz(path, _load_npz(path), inputs)
            return
        raise L2CError(f"calibration data {path}: no such file or folder")
    if hasattr(data, "get_next"):
        while (feeds := data.get_next()) is not None:
            yield _as_feeds(feeds, type(data).__name__)
        return
    if isinstance(data, dict):
        raise L2CError("calibration data is a single dict; pass a list of feed dicts, an .npz path or a reader")
    try:
        iterator = iter(data)
    except TypeError:
        raise L2CError(f"calibration data of type {type(data).__name__} is not a path, an iterable of feed "
                       "dicts or a CalibrationDataReader") from None
    for feeds in iterator:
        yield _as_feeds(feeds, type(data).__name__)


def _as_feeds(feeds: Any, source: str) -> Feeds:
    if not isinstance(feeds, dict):
        raise L2CError(f"calibration data {source} yielded {type(feeds).__name__}, not a dict of input arrays")
    return {str(k): np.asarray(v) for k, v in feeds.items()}


def _load_npz(path: Path) -> Feeds:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise L2CError(f"calibration file {path}: not a readable .npz ({exc})") from exc


def _split_npz(path: Path, arrays: Feeds, inputs: list[InputSpec]) -> Iterator[Feeds]:
    """One .npz with a leading sample axis → single-sample feeds.

    When an array has the input's rank, its leading axis is the model's batch
    axis and a sample keeps it (length 1); with one more dimension than the
    input, the leading axis is extra and is dropped.
    """
    specs = {s.name: s for s in inputs}
    counts = {k: v.shape[0] if v.ndim else -1 for k, v in arrays.items() if k in specs}
    if not counts:
        raise L2CError(f"calibration file {path}: no array named after a graph input "
                       f"{sorted(specs)}; it holds {sorted(arrays)}")
    if len(set(counts.values())) != 1 or -1 in counts.values():
        raise L2CError(f"calibration file {path}: arrays need one common leading sample axis, got "
                       + ", ".join(f"{k}: {arrays[k].shape}" for k in counts))
    n = next(iter(counts.values()))
    for i in range(n):
        sample = {}
        for k in counts:
            rank = specs[k].rank
            a = arrays[k]
            sample[k] = a[i] if rank is not None and a.ndim == rank + 1 else a[i:i + 1]
        yield sample


def batches(samples: Iterable[Feeds], inputs: list[InputSpec], max_batch: int) -> Iterator[tuple[Feeds, int]]:
    """Join consecutive samples of equal shapes into batches along axis 0
    when every input's batch axis is dynamic; yields (feeds, sample count)."""
    can_join = max_batch > 1 and all(s.dynamic_batch and s.rank is not None for s in inputs)
    pending: list[Feeds] = []

    def flush() -> tuple[Feeds, int]:
        joined = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
        return joined, len(pending)

    for feeds in samples:
        if not can_join:
            yield feeds, 1
            continue
        shapes = {k: v.shape for k, v in feeds.items()}
        if pending and (len(pending) >= max_batch or shapes != {k: v.shape for k, v in pending[0].items()}):
            yield flush()
            pending = []
        if any(v.ndim == 0 for v in feeds.values()):
            yield feeds, 1
            continue
        pending.append(feeds)
    if pending:
        yield flush()


class ScratchModel:
    """A modified copy of a model for onnxruntime, which reads its external
    data from the original model's folder (session config
    `session.model_external_initializers_file_folder_path`): nothing is
    written, and no symlink or copy has to pass onnxruntime's check that
    external data stays inside the model's folder."""

    def __init__(self, model: onnx.ModelProto, base_dir: Path) -> None:
        self.data = model.SerializeToString()
        self.base_dir = Path(base_dir).resolve()

    def close(self) -> None:
        self.data = b""

    def __enter__(self) -> "ScratchModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None on another C library."""
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> None:
    """Hand memory freed since the last call back to the system (glibc only).

    A calibration run allocates and frees hundreds of MB of activations in
    pieces of up to a few tens of MB. glibc serves those from its heaps once
    a larger block has been freed (its mmap threshold adapts upward), and
    keeps them resident after they are freed: on PP-OCRv4 det the planner's
    resident memory before its largest sample was 477 MB, and 208 MB with a
    trim after every run (the peak: 1117 → 1026 MB)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def make_session(scratch: ScratchModel, threads: int = 0) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(scratch.base_dir))
    # Basic optimizations keep the intermediate tensors we expose (no fusion
    # removes a Conv's input).
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    # No CPU arena: the arena keeps the largest batch's exposed activations
    # (hundreds of MB) for the session's life; without it they are freed
    # when the run's outputs are, and the planner's peak is the batch, not
    # the batch plus everything measured after it.
    so.enable_cpu_mem_arena = False
    try:
        return ort.InferenceSession(scratch.data, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        raise L2CError(f"onnxruntime cannot run the model for calibration: {exc}") from exc
