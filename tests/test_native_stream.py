"""rANS / constant / stored streams (FORMAT.md "Stream") through the package's native binding."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from helpers import run_isolated
from onnx_l2c.codec import native
from onnx_l2c.codec.native import decode_stream, encode_stream
from onnx_l2c.errors import L2CError

MODE_CONSTANT, MODE_STORED, MODE_RANS = 0, 1, 2


def roundtrip(idx, alphabet: int, max_scale_bits: int = 0) -> bytes:
    idx = np.asarray(idx, np.int32)
    data = encode_stream(idx, alphabet, max_scale_bits)
    out, used = decode_stream(data + b"\xAA\xBB", idx.size)  # trailing bytes are not read
    assert used == len(data)
    np.testing.assert_array_equal(out, idx)
    return data


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


CASES = {
    "empty": lambda: (np.zeros(0, np.int32), 1),
    "single_zero": lambda: (np.zeros(1000, np.int32), 4),
    "single_nonzero": lambda: (np.full(37, 5), 6),
    "two_extreme_skew": lambda: (np.r_[np.zeros(100000), [1]], 2),
    "two_extreme_skew_last": lambda: (np.r_[[1], np.zeros(99999)], 2),
    "uniform256": lambda: (_rng(0).integers(0, 256, 100003), 256),
    "near_uniform256": lambda: (_rng(1).integers(0, 250, 4097), 256),
    "laplace64": lambda: (np.clip(np.round(_rng(2).laplace(31, 3, 77777)), 0, 63), 64),
    "large65536": lambda: (_rng(3).integers(0, 65536, 300000), 65536),
    "sparse65536": lambda: (_rng(4).choice([0, 7, 65535], 1001, p=[.9, .09, .01]), 65536),
    "tiny": lambda: (np.array([3, 1]), 4),
    "count7": lambda: (np.array([0, 1, 1, 0, 2, 2, 1]), 3),  # count not a multiple of 8 (lanes)
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_roundtrip(name):
    roundtrip(*CASES[name]())


@pytest.mark.parametrize("max_scale_bits", [1, 2, 3, 8, 12, 16])
def test_max_scale_bits(max_scale_bits):
    rng = _rng(max_scale_bits)
    for count in [1, 8, 9, 15, 17, 1000]:
        for alphabet in (2, 5):
            data = roundtrip(rng.integers(0, alphabet, count), alphabet, max_scale_bits)
            if data[0] == MODE_RANS:
                assert data[1] <= max_scale_bits


@pytest.mark.parametrize("alphabet", [40, 256, 300])
def test_small_and_large_rans_tables_decode_alike(alphabet):
    """A rANS stream of at most 256 symbols at scale_bits <= 12 decodes through
    a 4-byte table, any other through an 8-byte one (runtime/src/stream.cc):
    the same indices at either scale, in the unrolled loop and its tail."""
    rng = _rng(alphabet)
    p = 0.5 ** np.arange(alphabet, dtype=np.float64) + 1e-4  # rare symbols want a fine scale
    idx = rng.choice(alphabet, size=50003, p=p / p.sum()).astype(np.int32)
    scales = set()
    for max_scale_bits in (10, 12, 16):
        data = roundtrip(idx, alphabet, max_scale_bits)
        assert data[0] == MODE_RANS
        scales.add(data[1])
    assert min(scales) <= native.COMPACT_SCALE_BITS < max(scales)  # both tables (300 symbols: the 8-byte one)


def test_random_distributions():
    rng = _rng(123)
    for _ in range(200):
        k = int(rng.integers(1, 300))
        p = rng.dirichlet(np.full(k, float(rng.choice([0.05, 0.5, 5]))))
        roundtrip(rng.choice(k, size=int(rng.integers(0, 5000)), p=p), k)


def test_modes_and_size():
    assert encode_stream(np.zeros(10**6, np.int32), 16)[0] == MODE_CONSTANT
    d = encode_stream(np.full(10, 9), 16)
    assert d[0] == MODE_CONSTANT and struct.unpack_from("<I", d, 12)[0] == 10  # alphabet = index + 1
    assert encode_stream(_rng(0).integers(0, 256, 10**5), 256)[0] == MODE_STORED  # stored beats rANS
    lap = np.clip(np.round(_rng(0).laplace(31, 2, 10**6)), 0, 63).astype(np.int32)
    d = encode_stream(lap, 64)
    assert d[0] == MODE_RANS
    p = np.bincount(lap) / lap.size
    entropy_bytes = -(p[p > 0] * np.log2(p[p > 0])).sum() * lap.size / 8
    assert len(d) < entropy_bytes * 1.003 + 200


@pytest.mark.parametrize("idx", [[0, 4], [-1, 0]])
def test_encode_rejects_bad_indices(idx):
    with pytest.raises(L2CError):
        encode_stream(np.array(idx), 4)


def test_decode_rejects_corruption():
    """Every truncation of a rANS stream, and a count past its end, fail cleanly (in a child: a crash fails)."""
    proc = run_isolated("""
        import numpy as np
        from onnx_l2c.codec.native import decode_stream, encode_stream
        from onnx_l2c.errors import L2CError
        idx = np.random.default_rng(5).integers(0, 10, 5000)
        data = encode_stream(idx, 10)
        assert data[0] == 2, data[0]
        bad = []
        for cut in range(len(data)):
            try:
                decode_stream(data[:cut], idx.size)
                bad.append(cut)
            except L2CError:
                pass
        try:
            decode_stream(data, idx.size + 1)
            bad.append("count+1")
        except L2CError:
            pass
        print("BAD", bad)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "BAD []"
