"""`onnx_l2c.InferenceSession`: a compressed model in onnxruntime at the
original model's speed, and the custom-op library for the other path.

The sidecar index (load/indexed.py) is tried first; the graph rewrite
(load/compressed.py, which imports onnx) is imported only where the index
does not apply, so a model written by this version loads without importing
onnx at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx_l2c.codec import native
from onnx_l2c.load.indexed import indexed_session

if TYPE_CHECKING:
    import onnx


def custom_op_library() -> str:
    """Path of the native library to pass to `SessionOptions.register_custom_ops_library`."""
    return str(native.library_path())


def InferenceSession(path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview | onnx.ModelProto,
                     sess_options: Any = None, providers: Any = None, provider_options: Any = None, *,
                     base_dir: str | os.PathLike | None = None, max_decoded_bytes: int | None = None,
                     low_memory: bool | None = None,
                     temp_dir: str | os.PathLike | None = None, **kwargs: Any):  # noqa: N802 (mirrors onnxruntime)
    """An `onnxruntime.InferenceSession` of a compressed model, at the original model's speed.

    `path_or_bytes`: what onnxruntime takes (a path or the serialized model's
    bytes) or an `onnx.ModelProto`. The sidecar is found beside a model file;
    for bytes or a ModelProto, pass `base_dir=` (the folder the model was
    saved in), or get a FileError that asks for it.

    A model written with a sidecar index (onnx_l2c 0.2 and later) loads
    through it (load/indexed.py), without parsing its graph; other models,
    bytes, and models edited since they were written have their graph
    rewritten (load/compressed.py). Either way every payload is decoded once,
    and the tensors are handed to onnxruntime through
    `SessionOptions.add_external_initializers` (sess_options is modified).
    onnxruntime copies tensors handed over in memory, so session creation
    peaks at about twice the decoded weights. `low_memory=True` instead
    decodes them, a few at a time, into a temporary external-data model in
    `temp_dir` (default: the system's temp folder) that onnxruntime loads as
    it loads any model, deleted once the session exists: the peak is then
    about plain onnxruntime's on the original, for one write of the weights
    to disk (at 2.4 GB it is also faster: `bench runtime --scale`). None
    (default): low_memory when the weights decode to more than
    LOW_MEMORY_BYTES (1 GiB, load/indexed.py). `max_decoded_bytes`: the most
    bytes the weights may decode to (0: no limit; None: the default budget,
    see CompressedModel). Extra keyword arguments go to
    `onnxruntime.InferenceSession`.
    """
    import onnxruntime as ort

    so = sess_options if sess_options is not None else ort.SessionOptions()
    if isinstance(path_or_bytes, (str, os.PathLike)) and base_dir is None:
        session = indexed_session(Path(path_or_bytes), so, max_decoded_bytes, low_memory,
                                  dict(kwargs, providers=providers, provider_options=provider_options))
        if session is not None:
            return session
    from onnx_l2c.load.compressed import rewritten_session  # imports onnx: only where the index does not apply

    return rewritten_session(path_or_bytes, so, providers, provider_options, base_dir, max_decoded_bytes, low_memory,
                             temp_dir, **kwargs)
