"""Native payload decoding (every stage) against format.reconstruct / numpy, and rejection of
malformed payloads. Payloads come from format.serialize; malformed ones patch its output."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from helpers import assert_bit_identical, native_decode, patched, run_isolated, stage_offsets, with_crc
from onnx_l2c import L2CError
from onnx_l2c.codec import native
from onnx import TensorProto, helper
from onnx_l2c.codec import (BFLOAT16, BITS_DTYPE, DTYPE_NAMES, ELEM_BYTES, FLOAT, FLOAT16, FLOAT_DTYPES, PACKED_BITS,
                            STORAGE, AffineStage, CastStage, byte_planes, CodebookStage, EntropyStage, RawStage, Recipe,
                            pack_elements, patterns_to_storage, payload_version, reconstruct, serialize, tensor_nbytes)


def affine_recipe(shape=(6, 5, 4), axis=1, theta=0.25, has_offset=True, dtype=FLOAT, seed=0) -> Recipe:
    rng = np.random.default_rng(seed)
    q = np.round(rng.laplace(0, 4, int(np.prod(shape)))).astype(np.int32)
    ch = shape[axis]
    scale = rng.uniform(0.001, 0.1, ch).astype(np.float32)
    offset = rng.normal(0, 0.01, ch).astype(np.float32) if has_offset else None
    stages = [EntropyStage(q), AffineStage(int(np.prod(shape[:axis])), ch, int(np.prod(shape[axis + 1:])), theta,
                                           scale, offset)]
    if dtype != FLOAT:
        stages.append(CastStage(dtype))
    return Recipe(dtype, shape, stages)


def check(recipe: Recipe) -> np.ndarray:
    """Native decode of serialize(recipe) == reconstruct(recipe), bit for bit."""
    out = native_decode(serialize(recipe))
    assert_bit_identical([reconstruct(recipe)], [out], "native vs reconstruct")
    return out


def bf16_reference(x) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even (independent of format.float32_to)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


@pytest.mark.parametrize("has_offset", [False, True])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_affine_float32(axis, has_offset):
    recipe = affine_recipe(axis=axis, has_offset=has_offset)
    out = check(recipe)
    # the numpy formula of FORMAT.md, written out
    aff = recipe.stages[1]
    q = recipe.stages[0].symbols.reshape(aff.outer, aff.channels, aff.inner).astype(np.float32)
    ref = (q - np.sign(q) * np.float32(aff.theta)) * aff.scale[None, :, None]
    if has_offset:
        ref = ref + aff.offset[None, :, None]
    assert_bit_identical([ref.reshape(recipe.dims)], [out], "native vs FORMAT.md formula")


@pytest.mark.parametrize("shape,axis,theta,seed", [((257, 300), 0, 0.3, 3), ((300, 257), 1, 0.49, 4)])
def test_affine_large(shape, axis, theta, seed):
    check(affine_recipe(shape=shape, axis=axis, theta=theta, seed=seed))


@pytest.mark.parametrize("dtype", [FLOAT16, BFLOAT16])
def test_affine_cast(dtype):
    recipe = affine_recipe(shape=(64, 70), axis=0, dtype=dtype)
    out = check(recipe)
    w = reconstruct(Recipe(FLOAT, recipe.dims, recipe.stages[:2]))
    ref = w.astype(np.float16) if dtype == FLOAT16 else bf16_reference(w)
    assert_bit_identical([ref], [out], "native cast vs numpy")


@pytest.mark.parametrize("dtype", [FLOAT16, BFLOAT16])
def test_cast_edge_values(dtype):
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
    recipe = Recipe(dtype, (vals.size,), [EntropyStage(np.arange(vals.size)), CodebookStage(vals), CastStage(dtype)])
    out = check(recipe)
    with np.errstate(over="ignore"):
        ref = vals.astype(np.float16) if dtype == FLOAT16 else bf16_reference(vals)
    assert_bit_identical([ref], [out], "native cast vs numpy")


def test_codebook():
    vals = np.array([-1.5, 0.0, 2.25, 7.0], np.float32)
    sym = np.random.default_rng(0).integers(0, 4, (3, 3, 3))
    out = check(Recipe(FLOAT, sym.shape, [EntropyStage(sym.reshape(-1)), CodebookStage(vals)]))
    np.testing.assert_array_equal(out, vals[sym])
    bad = serialize(Recipe(FLOAT, (5,), [EntropyStage(np.arange(5)), CodebookStage(vals)]), check=False)
    expect(bad, "codebook index outside")


def raw_bits(dtype: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0, 0.05, (13, 17)).astype(np.float32)
    x.flat[:4] = [np.inf, -0.0, np.nan, 1e-40]
    if dtype == FLOAT:
        return x.view(np.uint32)
    if dtype == FLOAT16:
        return x.astype(np.float16).view(np.uint16)
    return (x.view(np.uint32) >> 16).astype(np.uint16)  # truncated bfloat16


@pytest.mark.parametrize("rotate", [0, 1, 5])
@pytest.mark.parametrize("dtype", [FLOAT, FLOAT16, BFLOAT16])
def test_raw(dtype, rotate):
    bits = raw_bits(dtype, rotate)
    out = check(Recipe(dtype, bits.shape, [RawStage(bits.reshape(-1), rotate)]))
    np.testing.assert_array_equal(out.view(bits.dtype), bits)


def test_scalar_and_empty():
    out = check(Recipe(FLOAT, (), [EntropyStage(np.array([3])), CodebookStage(np.array([0, 0, 0, 9.5]))]))
    assert out.shape == () and out == 9.5
    empty = Recipe(FLOAT, (0, 5), [EntropyStage(np.zeros(0)), AffineStage(0, 5, 1, 0.0, np.ones(5, np.float32))])
    assert check(empty).shape == (0, 5)


def test_info():
    info = native.payload_info(serialize(affine_recipe(shape=(6, 5, 4), dtype=FLOAT16)))
    assert (info.dtype, info.dims, info.nbytes) == (FLOAT16, (6, 5, 4), 240)


def expect(payload: bytes, pattern: str, code: int = 1) -> None:
    with pytest.raises(L2CError, match=pattern) as e:
        native_decode(payload)
    assert e.value.code == code


def _huge_stored() -> bytes:
    """A stored stream declaring 10^9 one-byte indices with no body, in a [1000000, 1000] tensor."""
    p = serialize(Recipe(FLOAT, (1, 1), [EntropyStage(np.zeros(1))]), check=False)  # constant stream: no body
    (_, body, _), = stage_offsets(p)
    p = patched(p, 8, struct.pack("<2Q", 1000000, 1000))
    return patched(p, body + 4, struct.pack("<BBBxQI", 1, 0, 0, 10**9, 256))


def _payload_cases():
    good = serialize(affine_recipe())
    crc_flip = bytearray(good)
    crc_flip[40] ^= 1
    cast = serialize(Recipe(FLOAT, (3,), [CastStage(FLOAT16)]), check=False)
    one = serialize(Recipe(FLOAT, (1, 1), [EntropyStage(np.zeros(1))]), check=False)
    return [
        ("crc", bytes(crc_flip), r"CRC mismatch \(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\)", 1),
        ("magic", b"PK\x03\x04" + bytes(40), "bad magic", 2),
        ("version", patched(good, 4, struct.pack("<H", 7)),
         r"unsupported format version 7 \(this library reads 1 to 5\)", 2),
        ("truncated", with_crc(good[:-14]), r"stage 2 \(affine\): body truncated: needs \d+ bytes, \d+ remain", 1),
        ("huge_stored", _huge_stored(), r"1000000000 stored 1-byte indices need .* only 0 remain", 1),
        ("huge_shape", patched(one, 8, struct.pack("<2Q", 2**21, 2**21)),
         r"declared shape \[2097152, 2097152\] exceeds 2\^40", 1),
        ("entropy_only", serialize(Recipe(FLOAT, (3,), [EntropyStage(np.arange(3))]), check=False),
         r"stage sequence \[entropy\] does not produce a float32", 1),
        ("unknown_kind", patched(cast, stage_offsets(cast)[0][1] - 8, b"\x09"), r"stage 1 \(unknown\): unknown stage kind 9",
         2),
        ("no_cast", serialize(Recipe(FLOAT16, (3,), [EntropyStage(np.arange(3)), CodebookStage(np.ones(3))]), check=False),
         "does not produce a float16", 1),
    ]


@pytest.mark.parametrize("payload,pattern,code", [c[1:] for c in _payload_cases()], ids=[c[0] for c in _payload_cases()])
def test_error_messages(payload, pattern, code):
    expect(payload, pattern, code)


FUZZ = """
    import pickle, struct, zlib
    import numpy as np
    from helpers import native_decode
    from onnx_l2c.errors import L2CError
    bad = []
    for k, p in enumerate(pickle.load(open(%r, "rb"))):
        native_decode(p)
        body = p[:-4]
        for cut in range(len(p)):
            try:
                native_decode(p[:cut])
                bad.append((k, "cut", cut, "decoded"))
            except L2CError:
                pass
        for i in range(len(body)):
            for bit in (0, 3, 7):
                b = bytearray(body)
                b[i] ^= 1 << bit
                try:
                    native_decode(bytes(b) + struct.pack("<I", zlib.crc32(bytes(b))))
                except L2CError as e:
                    if e.code not in (1, 2):
                        bad.append((k, "flip", i, bit, e.code))
    print("BAD", bad)
"""


def test_truncations_and_flips_never_crash(tmp_path):
    """Every truncation fails cleanly; every single-bit flip (CRC recomputed, so the parser is
    exercised) either decodes or fails cleanly. Runs in a child process: a crash fails the test."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 30).astype(np.float32)
    recipes = [affine_recipe(), affine_recipe(dtype=FLOAT16), affine_recipe(dtype=BFLOAT16, has_offset=False),
               Recipe(FLOAT, (40,), [EntropyStage(rng.integers(0, 4, 40)), CodebookStage(np.arange(1, 5))]),
               Recipe(FLOAT, (30,), [RawStage(x.view(np.uint32))]),
               Recipe(FLOAT16, (30,), [RawStage(x.astype(np.float16).view(np.uint16))]),
               Recipe(TensorProto.INT8, (30,), [RawStage(np.round(x * 9).astype(np.int8).view(np.uint8), 0)]),
               Recipe(TensorProto.INT64, (5,), [RawStage(np.arange(-2, 3).view(np.uint64), 0)]),
               Recipe(TensorProto.INT4, (29,), [RawStage((np.round(x[:29] * 3).astype(np.int64) & 15).astype(np.uint8), 0)]),
               Recipe(TensorProto.UINT2, (30,), [RawStage((np.arange(30) % 4).astype(np.uint8), 0)])]
    path = tmp_path / "payloads.pkl"
    path.write_bytes(pickle.dumps([serialize(r) for r in recipes]))
    proc = run_isolated(FUZZ % str(path))
    assert proc.returncode == 0, f"child crashed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip().splitlines()[-1] == "BAD []"


@pytest.mark.parametrize("recipe,pattern", [
    (Recipe(FLOAT, (3,), [EntropyStage(np.arange(3))]), "invalid stage sequence"),
    (Recipe(FLOAT16, (3,), [EntropyStage(np.arange(3)), CodebookStage(np.ones(3))]), "invalid stage sequence"),
    (Recipe(FLOAT, (5,), [EntropyStage(np.arange(5)), CodebookStage(np.ones(4))]), r"codebook symbols must lie"),
    (Recipe(FLOAT, (6,), [EntropyStage(np.arange(6)), AffineStage(1, 3, 2, 0.0, np.ones(1))]), "affine scale"),
    (Recipe(FLOAT, (6,), [EntropyStage(np.arange(6)), AffineStage(1, 4, 2, 0.0, np.ones(4))]), "does not cover"),
    (Recipe(FLOAT, (6,), [EntropyStage(np.arange(6)), AffineStage(1, 1, 6, 1.5, np.ones(1))]), "theta"),
    (Recipe(FLOAT, (6,), [EntropyStage(np.arange(6)), AffineStage(1, 1, 6, 0.0, np.array([np.inf]))]), "finite"),
])
def test_python_side_rejects_what_the_decoder_rejects(recipe, pattern):
    with pytest.raises(L2CError, match=pattern):
        serialize(recipe)
    with pytest.raises(L2CError, match=pattern):
        reconstruct(recipe)


RAW_ONLY_DTYPES = sorted(set(DTYPE_NAMES) - set(FLOAT_DTYPES))


@pytest.mark.parametrize("count", [0, 1, 4097])  # empty, one element, past one decode chunk
@pytest.mark.parametrize("dtype", RAW_ONLY_DTYPES, ids=[DTYPE_NAMES[d] for d in RAW_ONLY_DTYPES])
def test_raw_every_other_dtype(dtype, count):
    """Every ONNX dtype of 1, 2, 4 or 8 bytes is coded by the raw stage (payload
    version 5) and decodes to the same bytes natively and in numpy."""
    rng = np.random.default_rng(dtype)
    packed = PACKED_BITS.get(dtype)  # int4, uint4, float4e2m1, int2, uint2: one pattern per element
    width = packed or 8 * ELEM_BYTES[dtype]
    high = (1 << width) - 1 if packed else 1 << min(width, 63)
    bits = rng.integers(0, high, count, dtype=np.uint64, endpoint=True)
    bits[: count // 3] = rng.integers(0, 4, count // 3)  # skewed, as integer weights are
    bits = bits.astype(BITS_DTYPE[dtype])
    for rotate in [0] if packed else sorted({0, 1, width - 1}):
        recipe = Recipe(dtype, (count,), [RawStage(bits, rotate)])
        payload = serialize(recipe)
        assert payload_version(recipe) == 5 and struct.unpack_from("<H", payload, 4)[0] == 5
        out = check(recipe)
        assert out.dtype == np.dtype(STORAGE[dtype])
        np.testing.assert_array_equal(out.view(BITS_DTYPE[dtype]), bits)
        info = native.payload_info(payload)
        assert info.dtype == dtype and info.nbytes == tensor_nbytes(dtype, count)
        if packed:  # the native decoder's own bytes: packed as ONNX stores them, the first element low
            raw = np.empty(info.nbytes, np.uint8)
            native.decode_into(payload, raw)
            np.testing.assert_array_equal(raw, pack_elements(bits, packed))
            if count:
                ref = helper.make_tensor("t", dtype, (count,), patterns_to_storage(bits, dtype).astype(np.float32)
                                         if dtype == TensorProto.FLOAT4E2M1 else
                                         patterns_to_storage(bits, dtype).astype(np.int64))
                np.testing.assert_array_equal(raw, np.array(ref.int32_data, np.uint8))


def test_raw_dtype_errors():
    int8 = serialize(Recipe(TensorProto.INT8, (3,), [RawStage(np.array([1, 2, 3], np.uint8), 0)]))
    expect(with_crc(patched(int8, 4, struct.pack("<H", 4))[:-4]), r"dtype int8 in a version 4 payload \(needs version 5\)")
    expect(with_crc(patched(int8, 6, b"\x08")[:-4]), r"unsupported dtype 8 \(valid: 1 \(float32\)")  # string
    wide = serialize(Recipe(TensorProto.INT16, (3,), [RawStage(np.array([1, 2, 3], np.uint16), 0)]))
    expect(with_crc(patched(wide, 6, bytes([TensorProto.INT32]))[:-4]), r"elem_bytes 2 does not match dtype int32")
    lossy = serialize(Recipe(TensorProto.INT8, (3,), [EntropyStage(np.arange(3)), CodebookStage(np.ones(3))]),
                      check=False)
    expect(lossy, "does not produce a int8", 1)
    with pytest.raises(L2CError, match="ends with float32"):
        serialize(Recipe(TensorProto.INT8, (3,), [EntropyStage(np.arange(3)), CodebookStage(np.ones(3))]))
    with pytest.raises(L2CError, match="raw stage bits are int64, not the 4-byte integers of int32"):
        serialize(Recipe(TensorProto.INT32, (3,), [RawStage(np.arange(3), 0)]))  # numpy's default int64
    # packed dtypes: one stream of patterns below 2^bits, no rotation
    int4 = serialize(Recipe(TensorProto.INT4, (3,), [RawStage(np.array([1, 15, 3], np.uint8), 0)]))
    as_int2 = with_crc(patched(int4, 6, bytes([TensorProto.INT2]))[:-4])
    expect(as_int2, "alphabet above 4 for int2")
    raw_body = int4.index(bytes([5, 0, 0, 0])) + 8  # the raw stage's body: elem_bytes, rotate
    expect(with_crc(patched(int4, raw_body + 1, b"\x01")[:-4]), "rotate 1 with a packed dtype")
    with pytest.raises(L2CError, match="holds a pattern above 4 bits"):
        serialize(Recipe(TensorProto.UINT4, (2,), [RawStage(np.array([1, 16], np.uint8), 0)]))
    with pytest.raises(L2CError, match="has rotate 1; valid: 0"):
        serialize(Recipe(TensorProto.INT4, (2,), [RawStage(np.array([1, 2], np.uint8), 1)]))
    with pytest.raises(L2CError, match="output buffer has 3 bytes, the tensor needs 2"):
        native.decode_into(int4, np.empty(3, np.uint8))  # one byte per element is not what the decoder writes



def test_the_crc_agrees_with_zlib_at_every_length_and_alignment():
    """The payload CRC (runtime/src/crc32.cc: tables below 64 bytes and for
    the tail, carry-less multiply folding above where the CPU has it) equals
    zlib's for bodies of every length mod 64 and any start address; one
    flipped byte anywhere is caught."""
    rng = np.random.default_rng(7)
    for numel in [*range(1, 200), 1021, 4099, 65537, 300001]:
        bits = rng.integers(0, 256, numel).astype(np.uint8)
        payload = serialize(Recipe(TensorProto.UINT8, (numel,), [RawStage(bits)]))
        for shift in (0, 1, 5):  # the payload at several alignments inside a larger buffer
            buf = np.zeros(len(payload) + 8, np.uint8)
            buf[shift:shift + len(payload)] = np.frombuffer(payload, np.uint8)
            np.testing.assert_array_equal(native_decode(buf[shift:shift + len(payload)]), bits)
        bad = bytearray(payload)
        bad[len(bad) - 5 - int(rng.integers(0, numel))] ^= 1 << int(rng.integers(0, 8))  # in the stored bytes
        with pytest.raises(L2CError, match="CRC mismatch"):
            native_decode(bytes(bad))


def test_raw_planes_keep_to_the_compact_rans_scale():
    """The writer codes the byte planes of lossless weights at scale_bits <=
    COMPACT_SCALE_BITS, where the decoder's table stays in L1; the exponent
    plane of real-looking weights would otherwise pick 13 or 14."""
    w = (np.random.default_rng(3).laplace(0, 0.02, 200_000) * np.random.default_rng(4).uniform(0.1, 3, 200_000))
    recipe = Recipe(FLOAT, (w.size,), [RawStage(w.astype(np.float32).view(np.uint32))])
    body = recipe.stages[0].body(recipe, w.size)[4:]  # after elem_bytes, rotate, reserved
    scales = []
    for _ in range(4):
        _, used = native.decode_stream(body, w.size)
        if body[0] == 2:  # rANS
            scales.append(body[1])
        body = body[used:]
    assert scales and max(scales) <= native.COMPACT_SCALE_BITS
    exponents = byte_planes(recipe.stages[0].bits, 4, 1)[0]
    assert native.encode_stream(exponents, 256)[1] > native.COMPACT_SCALE_BITS  # what the cap changes
    check(recipe)


def test_the_dtype_numbers_are_onnxs():
    """codec/dtypes.py spells out TensorProto's numbers (onnx is not imported
    on the load path); they must be ONNX's own."""
    from onnx_l2c.codec import dtypes

    for name, number in vars(dtypes._T).items():
        assert getattr(TensorProto, name) == number, name
    assert set(DTYPE_NAMES) == set(vars(dtypes._T).values())
