"""Payload decoding (every stage) and rejection of malformed payloads."""
import struct
import zlib

import numpy as np
import pytest

import l2c_native as n


def f16_bits(x):
    return np.asarray(x, np.float32).astype(np.float16).view(np.uint16)


def bf16_bits_ref(x):
    """float32 -> bfloat16 bits, round to nearest even (reference in numpy)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, np.float32))
    r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def make_affine(shape=(6, 5, 4), axis=1, theta=0.25, has_offset=True, dtype=1, seed=0):
    rng = np.random.default_rng(seed)
    q = np.round(rng.laplace(0, 4, int(np.prod(shape)))).astype(np.int32)
    outer = int(np.prod(shape[:axis]))
    ch = shape[axis]
    inner = int(np.prod(shape[axis + 1:]))
    scale = rng.uniform(0.001, 0.1, ch).astype(np.float32)
    off = rng.normal(0, 0.01, ch).astype(np.float32) if has_offset else None
    stages = [n.entropy_stage(q), n.affine_stage(outer, scale, inner, theta, off)]
    if dtype != 1:
        stages.append(n.cast_stage(dtype))
    ref = n.affine_reference(q, outer, scale, inner, theta, off).reshape(shape)
    return n.payload(dtype, shape, stages), ref


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("has_offset", [False, True])
def test_affine_float32(axis, has_offset):
    p, ref = make_affine(axis=axis, has_offset=has_offset)
    out = n.decode(p)
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))  # bit-exact


def test_affine_large_bitexact():
    p, ref = make_affine(shape=(257, 300), axis=0, theta=0.3, seed=3)
    np.testing.assert_array_equal(n.decode(p).view(np.uint32), ref.view(np.uint32))
    p, ref = make_affine(shape=(300, 257), axis=1, theta=0.49, seed=4)
    np.testing.assert_array_equal(n.decode(p).view(np.uint32), ref.view(np.uint32))


def test_cast_float16_bfloat16():
    p, ref = make_affine(shape=(64, 70), axis=0, dtype=10)
    np.testing.assert_array_equal(n.decode(p).view(np.uint16), f16_bits(ref))
    p, ref = make_affine(shape=(64, 70), axis=0, dtype=16)
    np.testing.assert_array_equal(n.decode(p), bf16_bits_ref(ref))


def test_cast_edge_values():
    """Codebook of awkward floats: subnormals, ties, overflow, max values."""
    vals = np.array([0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 1e10, -1e10, 2.0**-24, 2.0**-25,
                     2.0**-25 * 1.0000001, 3 * 2.0**-26, 2.0**-14, 2.0**-14 * (1 - 2.0**-11),
                     1.00048828125, 1.000732421875, 3.4028235e38, -3.4028235e38, 1.1754944e-38,
                     1e-45, 0.1, 1 / 3, -5.5e-5, 6.1e-5], np.float32)
    rng = np.random.default_rng(0)
    vals = np.concatenate([vals, rng.normal(0, 1, 200).astype(np.float32),
                           (rng.normal(0, 1, 200) * 1e-6).astype(np.float32),
                           rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    vals = vals[np.isfinite(vals)]
    sym = np.arange(vals.size)
    for dt in (10, 16):
        p = n.payload(dt, [vals.size], [n.entropy_stage(sym), n.codebook_stage(vals), n.cast_stage(dt)])
        out = n.decode(p)
        with np.errstate(over="ignore"):
            ref = f16_bits(vals) if dt == 10 else bf16_bits_ref(vals)
        np.testing.assert_array_equal(out.view(np.uint16), ref)


def test_codebook():
    vals = np.array([-1.5, 0.0, 2.25, 7.0], np.float32)
    sym = np.random.default_rng(0).integers(0, 4, (3, 3, 3))
    p = n.payload(1, sym.shape, [n.entropy_stage(sym), n.codebook_stage(vals)])
    np.testing.assert_array_equal(n.decode(p), vals[sym])
    bad = n.payload(1, [5], [n.entropy_stage([0, 1, 2, 3, 4]), n.codebook_stage(vals)])
    with pytest.raises(n.L2CError, match="codebook index outside"):
        n.decode(bad)


@pytest.mark.parametrize("dtype,npd,eb", [(1, np.float32, 4), (10, np.float16, 2), (16, np.uint16, 2)])
@pytest.mark.parametrize("rotate", [0, 1, 5])
def test_raw(dtype, npd, eb, rotate):
    x = np.random.default_rng(rotate).normal(0, 0.05, (13, 17)).astype(np.float32)
    if dtype == 10:
        x = x.astype(np.float16)
    bits = x.view(np.uint32 if eb == 4 else np.uint16)
    if dtype == 16:
        bits = (x.view(np.uint32) >> 16).astype(np.uint16)
    p = n.payload(dtype, x.shape, [n.raw_stage(bits, eb, rotate)])
    out = n.decode(p)
    np.testing.assert_array_equal(out.view(bits.dtype), bits)


def test_scalar_and_empty():
    p = n.payload(1, [], [n.entropy_stage([3]), n.codebook_stage([0, 0, 0, 9.5])])
    out = n.decode(p)
    assert out.shape == () and out == 9.5
    p = n.payload(1, [0, 5], [n.entropy_stage(np.zeros(0)), n.affine_stage(0, [1.0] * 5, 1, 0.0)])
    assert n.decode(p).shape == (0, 5)


def test_info():
    p, ref = make_affine(shape=(6, 5, 4), dtype=10)
    assert n.payload_info(p) == (10, (6, 5, 4), 240)


def expect(p, pattern, code=1):
    with pytest.raises(n.L2CError, match=pattern) as e:
        n.decode(p)
    assert e.value.code == code


def test_error_messages():
    p, _ = make_affine()
    flipped = bytearray(p)
    flipped[40] ^= 1
    expect(bytes(flipped), r"CRC mismatch \(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\)")
    expect(b"PK\x03\x04" + bytes(40), "bad magic", 2)
    body = p[:-4]
    v7 = body[:4] + struct.pack("<H", 7) + body[6:]
    expect(v7 + struct.pack("<I", zlib.crc32(v7)), r"unsupported format version 7 \(this library reads 1\)", 2)
    # truncated stage body (CRC recomputed so that the parser sees it)
    t = body[:-10]
    expect(t + struct.pack("<I", zlib.crc32(t)), r"stage 2 \(affine\): body truncated: needs \d+ bytes, \d+ remain")
    huge = n.payload(1, [1000000, 1000], [n.stage(1, struct.pack("<i", 0) + struct.pack("<BBBxQI", 1, 0, 0, 10**9, 256))])
    expect(huge, r"1000000000 stored 1-byte indices need .* only 0 remain")
    expect(n.payload(1, [2**21, 2**21], [n.entropy_stage([0])]), r"declared shape \[2097152, 2097152\] exceeds 2\^40")
    expect(n.payload(1, [3], [n.entropy_stage([0, 1, 2])]), r"stage sequence \[entropy\] does not produce a float32")
    expect(n.payload(1, [3], [n.stage(9, b"")]), r"stage 1 \(unknown\): unknown stage kind 9", 2)
    expect(n.payload(10, [3], [n.entropy_stage([0, 1, 2]), n.codebook_stage([1, 2, 3])]),
           r"does not produce a float16")


def all_payloads():
    ps = [make_affine()[0], make_affine(dtype=10)[0], make_affine(dtype=16, has_offset=False)[0]]
    sym = np.random.default_rng(1).integers(0, 4, 40)
    ps.append(n.payload(1, [40], [n.entropy_stage(sym), n.codebook_stage([1, 2, 3, 4])]))
    x = np.random.default_rng(2).normal(0, 1, 30).astype(np.float32)
    ps.append(n.payload(1, [30], [n.raw_stage(x.view(np.uint32), 4)]))
    ps.append(n.payload(10, [30], [n.raw_stage(x.astype(np.float16).view(np.uint16), 2)]))
    return ps


def test_truncations_and_flips_never_crash():
    """Every truncation and every single-bit flip (with a recomputed CRC so the
    parser is exercised) either decodes or raises a clean error."""
    for p in all_payloads():
        body = p[:-4]
        for cut in range(len(p)):
            with pytest.raises(n.L2CError):
                n.decode(p[:cut])
        for i in range(len(body)):
            for bit in (0, 3, 7):
                b = bytearray(body)
                b[i] ^= 1 << bit
                q = bytes(b) + struct.pack("<I", zlib.crc32(bytes(b)))
                try:
                    n.decode(q)
                except n.L2CError as e:
                    assert e.code in (1, 2)
