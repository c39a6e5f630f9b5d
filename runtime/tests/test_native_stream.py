"""rANS / stream round trips through the native library (ctypes)."""
import numpy as np
import pytest

import l2c_native as n


def roundtrip(idx, alphabet, max_sb=0):
    idx = np.asarray(idx, np.int32)
    data = n.encode_stream(idx, alphabet, max_sb)
    out, used = n.decode_stream(data + b"\xAA\xBB", idx.size)  # trailing bytes ignored
    assert used == len(data)
    np.testing.assert_array_equal(out, idx)
    return data


CASES = {
    "empty": (np.zeros(0, np.int32), 1),
    "single_zero": (np.zeros(1000, np.int32), 4),
    "single_nonzero": (np.full(37, 5), 6),
    "two_extreme_skew": (np.r_[np.zeros(100000), [1]], 2),
    "two_extreme_skew_last": (np.r_[[1], np.zeros(99999)], 2),
    "uniform256": (np.random.default_rng(0).integers(0, 256, 100003), 256),
    "near_uniform256": (np.random.default_rng(1).integers(0, 250, 4097), 256),
    "laplace6": (np.clip(np.round(np.random.default_rng(2).laplace(31, 3, 77777)), 0, 63), 64),
    "large65536": (np.random.default_rng(3).integers(0, 65536, 300000), 65536),
    "sparse65536": (np.random.default_rng(4).choice([0, 7, 65535], 1001, p=[.9, .09, .01]), 65536),
    "tiny": (np.array([3, 1]), 4),
    "count7": (np.array([0, 1, 1, 0, 2, 2, 1]), 3),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_roundtrip(name):
    idx, alphabet = CASES[name]
    roundtrip(idx, alphabet)


@pytest.mark.parametrize("max_sb", [1, 2, 3, 8, 12, 16])
def test_max_scale_bits(max_sb):
    rng = np.random.default_rng(max_sb)
    for count in [1, 8, 9, 15, 17, 1000]:
        roundtrip(rng.integers(0, 2, count), 2, max_sb)
        roundtrip(rng.integers(0, 5, count), 5, max_sb)


def test_random_distributions():
    rng = np.random.default_rng(123)
    for _ in range(200):
        k = int(rng.integers(1, 300))
        p = rng.dirichlet(np.full(k, float(rng.choice([0.05, 0.5, 5]))))
        count = int(rng.integers(0, 5000))
        idx = rng.choice(k, size=count, p=p)
        roundtrip(idx, k)


def test_modes_and_size():
    assert n.encode_stream(np.zeros(10**6, np.int32), 16)[0] == 0      # constant
    d = n.encode_stream(np.full(10, 9), 16)
    assert d[0] == 0 and int.from_bytes(d[12:16], "little") == 10       # alphabet = index + 1
    u = np.random.default_rng(0).integers(0, 256, 10**5)
    assert n.encode_stream(u, 256)[0] == 1                              # stored beats rANS
    lap = np.clip(np.round(np.random.default_rng(0).laplace(31, 2, 10**6)), 0, 63).astype(np.int32)
    d = n.encode_stream(lap, 64)
    assert d[0] == 2
    p = np.bincount(lap) / lap.size
    ent = -(p[p > 0] * np.log2(p[p > 0])).sum() * lap.size / 8
    assert len(d) < ent * 1.003 + 200


def test_encode_rejects_bad_indices():
    with pytest.raises(n.L2CError):
        n.encode_stream(np.array([0, 4]), 4)
    with pytest.raises(n.L2CError):
        n.encode_stream(np.array([-1, 0]), 4)


def test_decode_rejects_corruption():
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 10, 5000)
    data = n.encode_stream(idx, 10)
    for cut in range(0, len(data), 7):
        with pytest.raises(n.L2CError):
            n.decode_stream(data[:cut], idx.size)
    with pytest.raises(n.L2CError):
        n.decode_stream(data, idx.size + 1)
