"""ctypes binding to the native runtime (runtime/, libonnx_l2c).

The same shared library is the onnxruntime custom-op library, so Python and
every other onnxruntime binding run one decoder.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FileError, NativeArgumentError, from_native
from .dtypes import PACKED_BITS, STORAGE, unpack_elements


@functools.cache
def _packed_storage() -> dict[np.dtype, int]:
    """Storage arrays of the packed dtypes (ml_dtypes, imported here at first
    use) hold one element per byte; the decoder writes them packed, as
    onnxruntime and ONNX store them."""
    return {np.dtype(STORAGE[d]): w for d, w in PACKED_BITS.items()}

_ERR_LEN = 1024
MAX_DIMS = 8


def _library_name() -> str:
    if sys.platform == "win32":
        return "onnx_l2c.dll"
    if sys.platform == "darwin":
        return "libonnx_l2c.dylib"
    return "libonnx_l2c.so"


def _candidates() -> list[Path]:
    name = _library_name()
    found: list[Path] = []
    env = os.environ.get("ONNX_L2C_LIBRARY")
    if env:
        found.append(Path(env))
    package = Path(__file__).absolute().parents[1]
    found.append(package / "lib" / name)
    # a source checkout built by `pip install .` (scikit-build-core's build dir)
    found.extend(sorted(package.parent.glob(f"build/*/{name}")))
    # the installed package, when this module runs from a source checkout
    for key in ("platlib", "purelib"):
        found.append(Path(sysconfig.get_paths()[key]) / "onnx_l2c" / "lib" / name)
    return found


@functools.cache
def library_path() -> Path:
    """Path of the native shared library (also the custom-op library)."""
    for path in _candidates():
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in _candidates())
    raise FileError(
        f"native library {_library_name()} not found (tried {tried}); "
        "install the package with `pip install .` or set ONNX_L2C_LIBRARY"
    )


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(library_path()))
    u8p = ctypes.POINTER(ctypes.c_uint8)
    lib.l2c_version.restype = ctypes.c_char_p
    lib.l2c_format_version.restype = ctypes.c_int
    lib.l2c_payload_info.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32),
        ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_uint64), ctypes.c_char_p, ctypes.c_size_t,
    ]
    lib.l2c_payload_info_limit.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64, ctypes.POINTER(ctypes.c_int32),
        ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_uint64),
        ctypes.c_char_p, ctypes.c_size_t,
    ]
    lib.l2c_decode.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
    ]
    lib.l2c_check_declared.argtypes = [
        ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), ctypes.c_int64, ctypes.c_uint64,
        ctypes.POINTER(ctypes.c_uint64), ctypes.c_char_p, ctypes.c_size_t,
    ]
    lib.l2c_decode_declared.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), ctypes.c_int64,
        ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
    ]
    lib.l2c_encode_stream.argtypes = [
        ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32, u8p, ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p, ctypes.c_size_t,
    ]
    lib.l2c_decode_stream.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_uint64, ctypes.POINTER(ctypes.c_size_t),
        ctypes.c_char_p, ctypes.c_size_t,
    ]
    i64, f64 = ctypes.c_int64, ctypes.c_double
    lib.l2c_gptq_block.argtypes = [
        ctypes.c_void_p, i64, i64, i64, i64, i64, ctypes.c_void_p, ctypes.c_void_p, f64, f64, f64,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
    ]
    lib.l2c_model_open_memory.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64, ctypes.c_int,
        ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_size_t,
    ]
    lib.l2c_model_graph.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    lib.l2c_model_graph.restype = ctypes.c_void_p
    lib.l2c_model_tensor_count.argtypes = [ctypes.c_void_p]
    lib.l2c_model_tensor_count.restype = ctypes.c_size_t
    lib.l2c_model_tensor.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_int32),
        ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.POINTER(ctypes.c_int64)),
        ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_uint64),
    ]
    lib.l2c_model_close.argtypes = [ctypes.c_void_p]
    lib.l2c_model_close.restype = None
    for fn in (lib.l2c_payload_info, lib.l2c_payload_info_limit, lib.l2c_decode, lib.l2c_check_declared,
               lib.l2c_decode_declared, lib.l2c_encode_stream, lib.l2c_decode_stream, lib.l2c_gptq_block,
               lib.l2c_model_open_memory, lib.l2c_model_tensor):
        fn.restype = ctypes.c_int
    return lib


@dataclass(frozen=True)
class ModelTensor:
    """One decoded tensor of a NativeModel: its bytes as onnxruntime takes them
    (packed types two to a byte), in the model's native memory."""

    name: str
    dtype: int  # ONNX TensorProto data type
    dims: tuple[int, ...]
    data: np.ndarray  # uint8, the tensor's bytes; valid until the model is closed


class NativeModel:
    """A compressed model opened through its sidecar index (`l2c_model_open_memory`):
    the plain graph's bytes and every tensor decoded natively, in parallel.
    Raises VersionError for a sidecar without an index."""

    def __init__(self, graph: bytes | memoryview | np.ndarray, sidecar: bytes | memoryview | np.ndarray,
                 max_decoded_bytes: int = 0, threads: int = 0, what: str = "model") -> None:
        self._handle: int | None = None  # before anything can fail: __del__ reads it
        g_addr, g_size, g_keep = _address(graph)
        s_addr, s_size, s_keep = _address(sidecar)
        handle = ctypes.c_void_p()
        err = ctypes.create_string_buffer(_ERR_LEN)
        code = _lib().l2c_model_open_memory(g_addr, g_size, s_addr, s_size, max_decoded_bytes, threads,
                                            ctypes.byref(handle), err, _ERR_LEN)
        # no reference to the caller's buffers may ride on the error's traceback
        # (a memory map could not be closed while one is exported)
        del g_keep, s_keep, graph, sidecar
        _check(code, err, what)
        self._handle = handle.value

    def graph(self) -> bytes:
        """The plain graph (a serialized ModelProto), copied."""
        size = ctypes.c_size_t()
        addr = _lib().l2c_model_graph(self._live(), ctypes.byref(size))
        return ctypes.string_at(addr, size.value) if size.value else b""

    def tensors(self) -> list[ModelTensor]:
        lib, handle = _lib(), self._live()
        out = []
        for i in range(lib.l2c_model_tensor_count(handle)):
            name, dtype, ndim = ctypes.c_char_p(), ctypes.c_int32(), ctypes.c_int32()
            dims, data, nbytes = ctypes.POINTER(ctypes.c_int64)(), ctypes.c_void_p(), ctypes.c_uint64()
            code = lib.l2c_model_tensor(handle, i, ctypes.byref(name), ctypes.byref(dtype), ctypes.byref(ndim),
                                        ctypes.byref(dims), ctypes.byref(data), ctypes.byref(nbytes))
            if code != 0:
                raise NativeArgumentError(f"l2c_model_tensor({i}) failed with code {code}")
            memory = (ctypes.c_uint8 * nbytes.value).from_address(data.value) if nbytes.value else None
            array = np.ctypeslib.as_array(memory) if memory is not None else np.zeros(0, np.uint8)
            out.append(ModelTensor(name.value.decode("utf-8"), dtype.value,
                                   tuple(int(dims[d]) for d in range(ndim.value)), array))
        return out

    def _live(self) -> int:
        if self._handle is None:
            raise NativeArgumentError("the native model is closed")
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            _lib().l2c_model_close(self._handle)
            self._handle = None

    def __enter__(self) -> NativeModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _check(code: int, err: ctypes.Array, what: str) -> None:
    """Raise the package's exception for a nonzero return code (its subclass follows the code)."""
    if code != 0:
        raise from_native(code, f"{what}: {err.value.decode('utf-8', 'replace')}")


def _address(buf: np.ndarray | bytes | memoryview) -> tuple[int, int, object]:
    """Address and size of a contiguous read-only buffer, plus a keep-alive."""
    arr = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr.ctypes.data, arr.nbytes, arr


def version() -> str:
    return _lib().l2c_version().decode()


@dataclass(frozen=True)
class PayloadInfo:
    """What a payload's header declares (after its CRC was verified)."""

    dtype: int  # onnx.TensorProto data type
    dims: tuple[int, ...]
    nbytes: int  # size of the decoded tensor


def payload_info(payload: np.ndarray | bytes | memoryview, what: str = "payload",
                 max_decoded_bytes: int = 0) -> PayloadInfo:
    """The validated header of a payload; with `max_decoded_bytes` (> 0), a
    LimitError when its decoded tensor would be larger."""
    addr, size, _keep = _address(payload)
    dtype = ctypes.c_int32()
    ndim = ctypes.c_int32()
    dims = (ctypes.c_int64 * MAX_DIMS)()
    nbytes = ctypes.c_uint64()
    err = ctypes.create_string_buffer(_ERR_LEN)
    code = _lib().l2c_payload_info_limit(addr, size, max_decoded_bytes, ctypes.byref(dtype), ctypes.byref(ndim),
                                         dims, ctypes.byref(nbytes), err, _ERR_LEN)
    _check(code, err, what)
    return PayloadInfo(dtype.value, tuple(int(d) for d in dims[: ndim.value]), int(nbytes.value))


def decode_into(payload: np.ndarray | bytes | memoryview, out: np.ndarray, what: str = "payload") -> None:
    """Decode a whole payload into `out` (C-contiguous, exactly the decoded size).

    ctypes releases the GIL for the call, so threads decode in parallel.
    """
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise NativeArgumentError(f"{what}: output buffer must be writable and C-contiguous")
    addr, size, _keep = _address(payload)
    err = ctypes.create_string_buffer(_ERR_LEN)
    target = _decode_target(out)
    code = _lib().l2c_decode(addr, size, target.ctypes.data, target.nbytes, err, _ERR_LEN)
    _check(code, err, what)
    _unpack_into(out, target)


def _decode_target(out: np.ndarray) -> np.ndarray:
    """The buffer the decoder writes: `out` itself, or packed bytes for a packed dtype's storage."""
    width = _packed_storage().get(out.dtype)
    return np.empty((out.size * width + 7) // 8, np.uint8) if width else out


def _unpack_into(out: np.ndarray, target: np.ndarray) -> None:
    if target is not out:
        out.reshape(-1).view(np.uint8)[:] = unpack_elements(target, _packed_storage()[out.dtype], out.size)


def _dims_array(dims: tuple[int, ...]) -> ctypes.Array:
    return (ctypes.c_int64 * max(len(dims), 1))(*dims)


def check_declared(dtype: int, dims: tuple[int, ...], what: str = "tensor", max_decoded_bytes: int = 0) -> int:
    """The bytes of the tensor a graph declares (a Decode node's dtype and
    shape), after the one native check every load path runs: a PayloadError
    for an invalid declaration, a LimitError above `max_decoded_bytes` (> 0)."""
    nbytes = ctypes.c_uint64()
    err = ctypes.create_string_buffer(_ERR_LEN)
    code = _lib().l2c_check_declared(dtype, _dims_array(dims), len(dims), max_decoded_bytes, ctypes.byref(nbytes),
                                     err, _ERR_LEN)
    _check(code, err, what)
    return int(nbytes.value)


def decode_declared(payload: np.ndarray | bytes | memoryview, dtype: int, out: np.ndarray,
                    what: str = "payload") -> None:
    """Decode a payload into `out`, whose shape is what the graph declares
    (with `dtype`): the payload must hold exactly that tensor (the custom op's
    check, l2c_decode_declared). Releases the GIL, like decode_into."""
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise NativeArgumentError(f"{what}: output buffer must be writable and C-contiguous")
    addr, size, _keep = _address(payload)
    dims = tuple(out.shape)
    err = ctypes.create_string_buffer(_ERR_LEN)
    target = _decode_target(out)
    code = _lib().l2c_decode_declared(addr, size, dtype, _dims_array(dims), len(dims), 0, target.ctypes.data,
                                      target.nbytes, err, _ERR_LEN)
    _check(code, err, what)
    _unpack_into(out, target)


# rANS streams of at most 256 symbols up to this scale decode through a table
# that stays in L1 (runtime/src/stream.h, kCompactScaleBits): about 20% faster,
# for well under 0.01% in size on the byte planes of float weights.
COMPACT_SCALE_BITS = 12


def encode_stream(indices: np.ndarray, alphabet: int, max_scale_bits: int = 0) -> bytes:
    """Entropy-code indices in [0, alphabet) as one FORMAT.md Stream, with
    rANS scale_bits at most max_scale_bits (0: 16)."""
    idx = np.ascontiguousarray(indices, dtype=np.int32).reshape(-1)
    err = ctypes.create_string_buffer(_ERR_LEN)
    out_size = ctypes.c_size_t()
    cap = 64 + 2 * idx.size + 16 * 1024
    for _ in range(2):
        out = (ctypes.c_uint8 * cap)()
        code = _lib().l2c_encode_stream(idx.ctypes.data, idx.size, alphabet, max_scale_bits, out, cap,
                                        ctypes.byref(out_size), err, _ERR_LEN)
        if code == 0:
            return bytes(memoryview(out)[: out_size.value])
        if out_size.value <= cap:
            break
        cap = out_size.value
    _check(code, err, "encode_stream")
    raise AssertionError("unreachable")


def decode_stream(data: bytes, count: int) -> tuple[np.ndarray, int]:
    """Decode one Stream; returns (indices, bytes consumed)."""
    addr, size, _keep = _address(data)
    out = np.empty(count, dtype=np.int32)
    consumed = ctypes.c_size_t()
    err = ctypes.create_string_buffer(_ERR_LEN)
    code = _lib().l2c_decode_stream(addr, size, out.ctypes.data, count, ctypes.byref(consumed), err, _ERR_LEN)
    _check(code, err, "decode_stream")
    return out, int(consumed.value)


def gptq_block(w: np.ndarray, u: np.ndarray, step: np.ndarray, theta: float, dead_zone: float, qmax: int,
               start: int, end: int, q: np.ndarray, err_block: np.ndarray,
               forced: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Output-aware rounding of columns [start, end) of w (groups, rows, d),
    in place (onnx_l2c.h, l2c_gptq_block): symbols into q, each column's
    scaled error into err_block (groups, rows, end − start). ctypes drops
    the GIL for the call, so the planner's threads round in parallel."""
    g, r, d = w.shape
    arrays = {"w": (w, np.float64, (g, r, d)), "u": (u, np.float64, (g, d, d)), "step": (step, np.float64, (g, r)),
              "q": (q, np.int32, (g, r, d)), "err_block": (err_block, np.float64, (g, r, end - start))}
    if forced is not None:
        arrays["forced mask"] = (forced[0], np.uint8, (g, r, d))
        arrays["forced symbols"] = (forced[1], np.int32, (g, r, d))
    for name, (a, dtype, shape) in arrays.items():
        if a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous:
            raise NativeArgumentError(f"gptq_block: {name} must be a C-contiguous {np.dtype(dtype).name} array of "
                                      f"shape {shape}, got {a.dtype} {a.shape}")
    for name in ("w", "q", "err_block"):
        if not arrays[name][0].flags.writeable:
            raise NativeArgumentError(f"gptq_block: {name} must be writable")
    mask, symbols = (forced[0].ctypes.data, forced[1].ctypes.data) if forced is not None else (None, None)
    err = ctypes.create_string_buffer(_ERR_LEN)
    code = _lib().l2c_gptq_block(w.ctypes.data, g, r, d, start, end, u.ctypes.data, step.ctypes.data, float(theta),
                                 float(dead_zone), float(qmax), mask, symbols, q.ctypes.data, err_block.ctypes.data,
                                 err, _ERR_LEN)
    _check(code, err, "gptq_block")
