"""A compressed model's session through its sidecar index (codec/index.py).

The writer stores, at the end of the sidecar, the plain graph (each weight an
external-data initializer at a virtual location) as edits of the model
file's bytes, and a table of the tensors. The native library rebuilds that
graph and decodes every tensor in parallel (`l2c_model_open_memory`, what
every onnxruntime binding calls); onnxruntime gets the tensors through
`add_external_initializers`. Nothing here parses protobuf or imports onnx:
onnx (with ml_dtypes, which it imports) takes most of a second to import,
several times a small model's whole session creation.
"""

from __future__ import annotations

import logging
import mmap
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from onnx_l2c.codec import PACKED_BITS, SIDECAR_SUFFIX, STORAGE, native, tensor_nbytes
from onnx_l2c.codec.index import read_index

log = logging.getLogger(__name__)

# Above this many decoded bytes InferenceSession goes through a temporary
# external-data model (low_memory) instead of holding the weights twice.
LOW_MEMORY_BYTES = 1 << 30


def indexed_session(path: Path, so: Any, max_decoded_bytes: int | None, low_memory: bool | None,
                    kwargs: dict[str, Any]) -> Any:
    """The session through the sidecar's index (codec/index.py), as every
    binding gets it from the C API: the plain graph the writer stored, the
    tensors decoded natively in parallel; no graph rewrite here. None where it
    does not apply (no sidecar beside the file or no index in it, a model
    file edited since, or a low-memory load): the caller rewrites the graph."""
    import onnxruntime as ort

    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    try:
        if not sidecar.is_file() or sidecar.stat().st_size == 0 or not path.is_file():
            return None
        fh = open(sidecar, "rb")
    except OSError:
        return None  # the caller's path reports it
    with fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        try:
            index = read_index(mapped)  # type: ignore[arg-type]
        except ValueError:
            index = None  # malformed: the native reader would refuse it; the caller's path reports the file
        if index is None:
            return None
        total = sum(tensor_nbytes(t.dtype, int(np.prod(t.dims, dtype=np.int64))) for t in index.tensors)
        if low_memory or (low_memory is None and total > LOW_MEMORY_BYTES):
            return None
        graph = path.read_bytes()
        if len(graph) != index.graph_size or zlib.crc32(graph) != index.graph_crc:
            log.info("%s: changed since it was compressed; rewriting its graph instead of the sidecar's", path)
            return None
        limit = 0 if max_decoded_bytes is None else (2 ** 64 - 1 if max_decoded_bytes == 0 else max_decoded_bytes)
        view = np.frombuffer(mapped, np.uint8)
        try:
            model = native.NativeModel(graph, view, limit, what=str(path))
        finally:
            del view  # before the map closes, error or not
        with model:
            tensors = model.tensors()
            values = [ort.OrtValue.ortvalue_from_numpy_with_onnx_type(native_memory(t), t.dtype) for t in tensors]
            if values:
                so.add_external_initializers([t.name for t in tensors], values)
            # onnxruntime copies the tensors while it creates the session
            # (tests/test_model_index.py pins it), so the model closes after
            return ort.InferenceSession(model.graph(), so, **kwargs)


def native_memory(t: native.ModelTensor) -> np.ndarray:
    """A natively decoded tensor as ortvalue_from_numpy_with_onnx_type takes it:
    numpy's shape over the bytes, and a packed dtype's bytes at the front of a
    numel-byte buffer (as load/compressed.py's _ort_memory)."""
    if t.dtype not in PACKED_BITS:
        return t.data.view(STORAGE[t.dtype]).reshape(t.dims)
    return packed_at_front(t.data, t.dims)


def packed_at_front(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Packed bytes at the front of a zeroed uint8 array of `shape` (one byte per element)."""
    memory = np.zeros(shape, np.uint8)
    memory.reshape(-1)[: packed.size] = packed
    return memory
