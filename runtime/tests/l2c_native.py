"""Small ctypes binding of libonnx_l2c plus a payload builder (docs/FORMAT.md).

Test helper only: the real Python package has its own binding. The library is
found through $ONNX_L2C_LIB, else /tmp/l2cbuild/libonnx_l2c.so.
"""
import ctypes
import os
import struct
import zlib

import numpy as np

L2C_E = {0: "OK", 1: "CORRUPT", 2: "VERSION", 3: "ARGUMENT", 4: "MEMORY"}
ENTROPY, AFFINE, CODEBOOK, CAST, RAW = 1, 2, 3, 4, 5
NP_DTYPE = {1: np.float32, 10: np.float16, 16: None}  # bfloat16: returned as uint16 bits


class L2CError(Exception):
    def __init__(self, code, msg):
        super().__init__(f"{L2C_E.get(code, code)}: {msg}")
        self.code, self.msg = code, msg


def lib_path():
    return os.environ.get("ONNX_L2C_LIB", "/tmp/l2cbuild/libonnx_l2c.so")


_lib = None


def lib():
    global _lib
    if _lib is None:
        L = ctypes.CDLL(lib_path())
        u8p, szt, c = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
        L.l2c_version.restype = ctypes.c_char_p
        L.l2c_payload_info.argtypes = [u8p, szt, ctypes.POINTER(ctypes.c_int32),
                                       ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int64),
                                       ctypes.POINTER(ctypes.c_uint64), c, szt]
        L.l2c_decode.argtypes = [u8p, szt, ctypes.c_void_p, szt, c, szt]
        L.l2c_encode_stream.argtypes = [u8p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32,
                                        u8p, szt, ctypes.POINTER(szt), c, szt]
        L.l2c_decode_stream.argtypes = [u8p, szt, u8p, ctypes.c_uint64, ctypes.POINTER(szt), c, szt]
        _lib = L
    return _lib


def _buf(b):
    """(pointer, keepalive) for a bytes-like object."""
    a = np.frombuffer(b, dtype=np.uint8) if len(b) else np.zeros(1, np.uint8)
    return a.ctypes.data, a


def _check(rc, err):
    if rc:
        raise L2CError(rc, err.value.decode())


def encode_stream(indices, alphabet, max_scale_bits=0):
    idx = np.ascontiguousarray(indices, dtype=np.int32)
    err = ctypes.create_string_buffer(512)
    need = ctypes.c_size_t()
    rc = lib().l2c_encode_stream(idx.ctypes.data, idx.size, alphabet, max_scale_bits,
                                 None, 0, ctypes.byref(need), err, 512)
    if rc != 3:
        _check(rc, err)
    out = np.zeros(max(need.value, 1), np.uint8)
    _check(lib().l2c_encode_stream(idx.ctypes.data, idx.size, alphabet, max_scale_bits,
                                   out.ctypes.data, out.size, ctypes.byref(need), err, 512), err)
    return out[:need.value].tobytes()


def decode_stream(data, count):
    p, keep = _buf(data)
    out = np.zeros(max(count, 1), np.int32)
    used = ctypes.c_size_t()
    err = ctypes.create_string_buffer(512)
    _check(lib().l2c_decode_stream(p, len(data), out.ctypes.data, count, ctypes.byref(used), err, 512), err)
    return out[:count], used.value


def payload_info(payload):
    p, keep = _buf(payload)
    dt, nd = ctypes.c_int32(), ctypes.c_int32()
    dims = (ctypes.c_int64 * 8)()
    nb = ctypes.c_uint64()
    err = ctypes.create_string_buffer(512)
    _check(lib().l2c_payload_info(p, len(payload), ctypes.byref(dt), ctypes.byref(nd), dims,
                                  ctypes.byref(nb), err, 512), err)
    return dt.value, tuple(dims[:nd.value]), nb.value


def decode(payload):
    dtype, shape, nbytes = payload_info(payload)
    p, keep = _buf(payload)
    out = np.zeros(max(nbytes, 1), np.uint8)
    err = ctypes.create_string_buffer(512)
    _check(lib().l2c_decode(p, len(payload), out.ctypes.data, nbytes, err, 512), err)
    npd = NP_DTYPE[dtype] or np.uint16
    return out[:nbytes].view(npd).reshape(shape)


# ------------------------------------------------------------ payload building

def stage(kind, body):
    return struct.pack("<B3xI", kind, len(body)) + body


def payload(dtype, shape, stages, version=1):
    h = b"L2CP" + struct.pack("<HBB", version, dtype, len(shape))
    h += b"".join(struct.pack("<Q", d) for d in shape)
    h += struct.pack("<B3x", len(stages)) + b"".join(stages)
    return h + struct.pack("<I", zlib.crc32(h))


def entropy_stage(symbols):
    s = np.asarray(symbols, dtype=np.int64).ravel()
    off = int(s.min()) if s.size else 0
    alphabet = int(s.max()) - off + 1 if s.size else 1
    return stage(ENTROPY, struct.pack("<i", off) + encode_stream(s - off, alphabet))


def affine_stage(outer, scale, inner, theta, offset=None):
    scale = np.asarray(scale, np.float32)
    body = struct.pack("<QIQfB3x", outer, scale.size, inner, theta, offset is not None)
    body += scale.astype("<f4").tobytes()
    if offset is not None:
        body += np.asarray(offset, np.float32).astype("<f4").tobytes()
    return stage(AFFINE, body)


def codebook_stage(values):
    v = np.asarray(values, np.float32)
    return stage(CODEBOOK, struct.pack("<I", v.size) + v.astype("<f4").tobytes())


def cast_stage(target):
    return stage(CAST, struct.pack("<B3x", target))


def raw_stage(bits, elem_bytes, rotate=1):
    """bits: unsigned integer array of the exact element bits."""
    b = np.asarray(bits).ravel().astype(np.uint64)
    w = 8 * elem_bytes
    r = ((b << rotate) | (b >> (w - rotate))) & ((1 << w) - 1) if rotate else b
    body = struct.pack("<BB2x", elem_bytes, rotate)
    for k in range(elem_bytes):
        plane = (r >> (8 * (elem_bytes - 1 - k))) & 0xFF
        body += encode_stream(plane.astype(np.int32), 256)
    return stage(RAW, body)


def affine_reference(q, outer, scale, inner, theta, offset=None):
    """numpy float32 reference of the affine stage (FORMAT.md)."""
    q = np.asarray(q, np.int32).reshape(outer, -1, inner).astype(np.float32)
    theta = np.float32(theta)
    t = q - np.sign(q) * theta
    w = t * np.asarray(scale, np.float32)[None, :, None]
    if offset is not None:
        w = w + np.asarray(offset, np.float32)[None, :, None]
    return w.ravel()
