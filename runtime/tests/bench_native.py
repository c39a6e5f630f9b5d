"""Decode throughput: python bench_native.py [count]."""
import sys
import time

import numpy as np

import ctypes

import l2c_native as n


def decoder(payload):
    """A closure decoding payload into one reused (already touched) buffer."""
    dtype, shape, nbytes = n.payload_info(payload)
    src = np.frombuffer(payload, np.uint8)
    out = np.ones(nbytes, np.uint8)
    err = ctypes.create_string_buffer(256)
    f = n.lib().l2c_decode

    def run():
        assert f(src.ctypes.data, src.size, out.ctypes.data, nbytes, err, 256) == 0, err.value
    return run


def stream_decoder(data, count):
    src = np.frombuffer(data, np.uint8)
    out = np.ones(count, np.int32)
    used = ctypes.c_size_t()
    err = ctypes.create_string_buffer(256)
    f = n.lib().l2c_decode_stream

    def run():
        assert f(src.ctypes.data, src.size, out.ctypes.data, count, ctypes.byref(used), err, 256) == 0
    return run


def best_of(f, reps=5):
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        t.append(time.perf_counter() - t0)
    return min(t)


def main(count=16 << 20):
    rng = np.random.default_rng(0)
    for b in (1.0, 2.0, 4.0):
        idx = np.clip(np.round(rng.laplace(31, b, count)), 0, 63).astype(np.int32)
        data = n.encode_stream(idx, 64)
        p = np.bincount(idx, minlength=64) / count
        ent = -(p[p > 0] * np.log2(p[p > 0])).sum()
        out, _ = n.decode_stream(data, count)
        assert np.array_equal(out, idx)
        t = best_of(stream_decoder(data, count))
        print(f"stream laplace b={b}: H={ent:.3f} bits, coded {8 * len(data) / count:.3f} bits/sym, "
              f"scale_bits={data[1]}, decode {count / t / 1e6:.0f} M sym/s")
        shape = (count // 1024, 1024)
        scale = rng.uniform(1e-3, 1e-2, shape[0]).astype(np.float32)
        pl = n.payload(1, shape, [n.entropy_stage(idx.reshape(shape) - 31),
                                  n.affine_stage(1, scale, 1024, 0.2)])
        t = best_of(decoder(pl))
        print(f"  payload entropy+affine -> float32: {count / t / 1e6:.0f} M weights/s "
              f"(incl. CRC)")
        pl16 = n.payload(10, shape, [n.entropy_stage(idx.reshape(shape) - 31),
                                     n.affine_stage(1, scale, 1024, 0.2), n.cast_stage(10)])
        t = best_of(decoder(pl16))
        print(f"  payload entropy+affine+cast -> float16: {count / t / 1e6:.0f} M weights/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 16 << 20)
