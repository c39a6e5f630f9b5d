"""Golden bitstreams: the exact payload bytes of one tiny recipe per stage kind and stream mode,
and the exact bytes they decode to.

Each recipe is built from integer formulas (no RNG, no transcendental functions), so it is the
same on every platform and numpy version. The tests check that
  * serialize(recipe) produces the committed tests/data/golden/NAME.bin byte for byte,
  * the native decoder turns the committed bytes into the pinned output (sha256 in expected.json),
  * format.reconstruct(recipe) computes that same output.

Regenerate with `python tests/test_golden.py --regenerate`. Regenerating IS A FORMAT CHANGE (or an
encoder change): payloads written before it must still decode to the pinned outputs, so only do
it together with a format version bump or a deliberate encoder change, and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

if __name__ == "__main__":  # run as a script from anywhere
    sys.path[:0] = [str(Path(__file__).absolute().parents[1]), str(Path(__file__).absolute().parent)]

from helpers import native_decode, stage_offsets
from onnx_l2c.codec import (BFLOAT16, BITS_DTYPE, DTYPE_NAMES, FLOAT, FLOAT16, FLOAT_DTYPES, PACKED_BITS, STORAGE,
                            AffineStage, BlockMode, CastStage, CodebookStage, EntropyStage, ExpandStage, ExponentStage,
                            RawStage, Recipe, TransformStage, expand_blocks, expand_stage, reconstruct, serialize,
                            to_raw_bytes)

GOLDEN = Path(__file__).absolute().parent / "data" / "golden"
EXPECTED = GOLDEN / "expected.json"
MODE_CONSTANT, MODE_STORED, MODE_RANS = 0, 1, 2


def hashed(n: int, salt: int) -> np.ndarray:
    """n pseudo-random 32-bit values from a multiplicative hash (uint64 arithmetic, exact)."""
    i = np.arange(n, dtype=np.uint64)
    return (i * np.uint64(2654435761) + np.uint64(salt * 40503 + 12345)) % np.uint64(2**32)


def skewed(n: int, bits: int, salt: int) -> np.ndarray:
    """Symbols in (-2^(bits-1), 2^(bits-1)) concentrated near 0 (product of two uniform bytes)."""
    h = hashed(n, salt)
    mag = (((h >> np.uint64(16)) & np.uint64(0xFF)) * ((h >> np.uint64(24)) & np.uint64(0xFF))) >> np.uint64(17 - bits)
    return np.where((h >> np.uint64(3)) & np.uint64(1), -mag.astype(np.int64), mag.astype(np.int64)).astype(np.int32)


def f32(numerator, denominator) -> np.ndarray:
    """float32 of an exact ratio (one correctly rounded float64 division, then one rounding)."""
    return (np.asarray(numerator, np.float64) / denominator).astype(np.float32)


def floats(n: int, salt: int) -> np.ndarray:
    """float32 values with full mantissas plus special values: the raw stage's input."""
    x = f32(skewed(n, 12, salt).astype(np.int64) * 7919 + np.arange(n), 1_000_003)
    x[:8] = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, 3.4028235e38, -65504.0], np.float32)
    return x


def affine(dims, axis, q, theta, scale, offset=None, cast=None) -> Recipe:
    outer, inner = int(np.prod(dims[:axis])), int(np.prod(dims[axis + 1:]))
    stages = [EntropyStage(q), AffineStage(outer, dims[axis], inner, theta, scale, offset)]
    if cast is not None:
        stages.append(CastStage(cast))
    return Recipe(cast or FLOAT, dims, stages)


def transform(rows: int, k: int, cols: int, salt: int, basis: np.ndarray, layout: int = 0,
              basis_dtype: int = FLOAT, mean=None, cast=None) -> Recipe:
    """entropy + affine (one scale per coefficient column) + transform [+ cast] of a rows x cols matrix."""
    q = skewed(rows * k, 6, salt)
    scale = f32(np.arange(k) + 3, 256)
    stages = [EntropyStage(q), AffineStage(rows, k, 1, 0.25, scale),
              TransformStage(rows, k, cols, basis, layout, basis_dtype, mean)]
    if cast is not None:
        stages.append(CastStage(cast))
    dims = (rows, cols) if layout == 0 else (cols, rows)
    return Recipe(cast or FLOAT, dims, stages)


def recipes() -> dict[str, Recipe]:
    c6 = np.arange(6)
    big = f32(np.array([1, 3, 8192 * 4096, 5, 1, 7], np.int64), 4096)  # channel 2 overflows float16
    big[4] = np.float32(2.0**-20)  # channel 4 lands in float16 subnormals
    with np.errstate(over="ignore"):
        bits_f16 = floats(200, 5).astype(np.float16).view(np.uint16)
    bits_bf16 = (floats(200, 6).view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    basis_f32 = f32((hashed(30, 10) % np.uint64(20001)).astype(np.int64) - 10000, 4099)  # full mantissas
    basis_f16 = f32((hashed(64, 11) % np.uint64(2049)).astype(np.int64) - 1024, 1024)  # exact in float16
    return {
        "affine_theta_offset": affine((4, 6, 8), 1, skewed(192, 5, 1), 0.25, f32(c6 + 1, 128), f32(c6 - 3, 1000)),
        "codebook": Recipe(FLOAT, (10, 25), [EntropyStage((hashed(250, 2) >> np.uint64(28)).astype(np.int32)),
                                             CodebookStage(f32(np.arange(16) - 7, 7))]),
        "affine_cast_float16": affine((6, 30), 0, skewed(180, 5, 3), 0.125, big, cast=FLOAT16),
        "affine_cast_bfloat16": affine((3, 100), 0, skewed(300, 6, 4), 0.375, f32([1, 2, 5], 3),
                                       f32([1, -2, 3], 77), cast=BFLOAT16),
        "raw_float32": Recipe(FLOAT, (16, 16), [RawStage(floats(256, 7).view(np.uint32))]),
        "raw_float16": Recipe(FLOAT16, (200,), [RawStage(bits_f16)]),
        "raw_bfloat16": Recipe(BFLOAT16, (8, 25), [RawStage(bits_bf16)]),
        "stream_constant": Recipe(FLOAT, (7, 9), [EntropyStage(np.full(63, 5, np.int32)),
                                                  CodebookStage(f32(np.arange(8), 3))]),
        "stream_stored": affine((3, 100), 0, (hashed(300, 8) >> np.uint64(24)).astype(np.int32) - 128, 0.0,
                                f32([1, 2, 3], 256)),
        "stream_rans": affine((20, 20), 1, skewed(400, 5, 9), 0.45, f32(np.arange(20) + 10, 1024)),
        "transform_mean": transform(12, 3, 10, 12, basis_f32, mean=f32(np.arange(10) - 5, 7)),
        "transform_float16_layout1_cast": transform(9, 4, 16, 13, basis_f16, layout=1, basis_dtype=FLOAT16,
                                                    cast=FLOAT16),
        # per-row exponents over per-column steps (an embedding table's often-used rows finer)
        "exponent_rows_cast_float16": Recipe(FLOAT16, (12, 10), [
            EntropyStage(skewed(120, 6, 14)), AffineStage(12, 10, 1, 0.125, f32(np.arange(10) + 1, 64)),
            ExponentStage(1, 12, 10, (hashed(12, 15) % np.uint64(5)).astype(np.int32)), CastStage(FLOAT16)]),
        "exponent_transform": Recipe(FLOAT, (8, 10), [
            EntropyStage(skewed(24, 6, 16)), AffineStage(8, 3, 1, 0.25, f32(np.arange(3) + 3, 256)),
            ExponentStage(8, 3, 1, np.array([0, 2, 31], np.int32)), TransformStage(8, 3, 10, basis_f32)]),
        # micro-blocks: 3x3 kernels of a (4, 5, 3, 3) Conv weight, each pruned, unified or kept
        "expand_conv_kernels": Recipe(FLOAT, (4, 5, 3, 3), [
            expand(20, 9, 1, 9, 17), AffineStage(1, 4, 45, 0.25, f32(np.arange(4) + 5, 512))]),
        # 1x4 blocks along the rows of a (10, 6) MatMul weight (the last block of each column has 2),
        # with row exponents and a float16 cast
        "expand_blocks_exponent_float16": Recipe(FLOAT16, (10, 6), [
            expand(1, 10, 6, 4, 18), AffineStage(1, 1, 60, 0.125, f32([3], 64)),
            ExponentStage(1, 10, 6, (hashed(10, 19) % np.uint64(4)).astype(np.int32)), CastStage(FLOAT16)]),
        # every other dtype, raw only (format version 5)
        **{f"raw_{DTYPE_NAMES[d]}": Recipe(d, (7, 11), [RawStage(other_dtype_bits(d, 77, 20 + d), 0)])
           for d in OTHER_DTYPES},
    }


def other_dtype_bits(dtype: int, n: int, salt: int) -> np.ndarray:
    """Bits of a tensor of one of the dtypes coded losslessly only: small signed
    integers (as quantized weights and index tables are), 0/1 for bool, any
    byte for float8, full-mantissa values for double."""
    storage = np.dtype(STORAGE[dtype])
    if dtype in PACKED_BITS:  # one pattern per element, mostly near 0 (as int4 weights are)
        width = PACKED_BITS[dtype]
        return (skewed(n, width, salt).astype(np.int64) & ((1 << width) - 1)).astype(np.uint8)
    if storage == np.bool_:
        values = (hashed(n, salt) & np.uint64(1)).astype(np.bool_)
    elif storage == np.float64:
        values = floats(n, salt).astype(np.float64) * 3.0
    elif storage == np.uint8 and dtype != TensorProto.UINT8:  # float8: every bit pattern
        values = (hashed(n, salt) >> np.uint64(8)).astype(np.uint8)
    else:
        values = skewed(n, 8 if storage.itemsize == 1 else 12, salt).astype(storage)
    return values.view(BITS_DTYPE[dtype])


OTHER_DTYPES = sorted(set(DTYPE_NAMES) - set(FLOAT_DTYPES))


def expand(outer: int, n: int, inner: int, block: int, salt: int) -> ExpandStage:
    """An expand stage with every block mode, from hashed values."""
    ids, _ = expand_blocks(outer, n, inner, block)
    count = int(ids.max()) + 1
    modes = (hashed(count, salt) % np.uint64(3)).astype(np.uint8)
    mags = (hashed(count, salt + 100) % np.uint64(9)).astype(np.int32) + 1
    signs = np.where(hashed(ids.size, salt + 200) & np.uint64(1), -1, 1)
    m = modes[ids]
    q = np.where(m == BlockMode.PRUNE, 0, np.where(m == BlockMode.UNIFY, signs * mags[ids], skewed(ids.size, 5, salt)))
    return expand_stage(q, outer, n, inner, block, modes)


# the entropy stream mode each case is meant to pin (the encoder picks the mode)
STREAM_MODES = {"stream_constant": MODE_CONSTANT, "stream_stored": MODE_STORED, "stream_rans": MODE_RANS}


_PACKED_BY_STORAGE = {np.dtype(STORAGE[d]): d for d in PACKED_BITS}


def output_bytes(array: np.ndarray) -> bytes:
    """The decoded tensor's bytes as the native decoder writes them (little-endian; int4 & co packed)."""
    if array.dtype in _PACKED_BY_STORAGE:
        return to_raw_bytes(array, _PACKED_BY_STORAGE[array.dtype])
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def digest(array: np.ndarray) -> dict:
    return {"dtype": str(array.dtype), "shape": list(array.shape),
            "sha256": hashlib.sha256(output_bytes(array)).hexdigest()}


def regenerate() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, recipe in recipes().items():
        payload = serialize(recipe)
        assert len(payload) < 4096, f"{name}: {len(payload)} bytes"
        (GOLDEN / f"{name}.bin").write_bytes(payload)
        expected[name] = digest(native_decode(payload))
        assert expected[name] == digest(reconstruct(recipe)), name
        print(f"{name}: {len(payload)} bytes, output {expected[name]['sha256'][:16]}…")
    EXPECTED.write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(expected.items()))
                        + "\n}\n")


# ------------------------------------------------------------------- tests

NAMES = sorted(recipes())


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(EXPECTED.read_text())


def test_golden_set_is_complete(expected):
    assert sorted(expected) == NAMES
    assert sorted(p.stem for p in GOLDEN.glob("*.bin")) == NAMES
    kinds = {(r.dtype, tuple(type(s).__name__ for s in r.stages)) for r in recipes().values()}
    for dtype in DTYPE_NAMES:
        assert (dtype, ("RawStage",)) in kinds


@pytest.mark.parametrize("name", NAMES)
def test_serialize_is_golden(name):
    assert serialize(recipes()[name]) == (GOLDEN / f"{name}.bin").read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_native_decodes_golden(name, expected):
    assert digest(native_decode((GOLDEN / f"{name}.bin").read_bytes())) == expected[name]


@pytest.mark.parametrize("name", NAMES)
def test_reconstruct_is_golden(name, expected):
    assert digest(reconstruct(recipes()[name])) == expected[name]


@pytest.mark.parametrize("name", NAMES)
def test_payload_version(name):
    """The lowest version that holds the dtype and stages (FORMAT.md, Versions): 5 for a dtype
    other than float32/float16/bfloat16, else 4 with an expand stage, else 3 with an exponent
    stage, else 2 with a transform stage, else 1."""
    payload = (GOLDEN / f"{name}.bin").read_bytes()
    kinds = {kind for kind, _, _ in stage_offsets(payload)}
    other_dtype = payload[6] not in FLOAT_DTYPES
    assert other_dtype == (name in {f"raw_{DTYPE_NAMES[d]}" for d in OTHER_DTYPES})
    assert int.from_bytes(payload[4:6], "little") == (5 if other_dtype else 4 if 8 in kinds else 3 if 7 in kinds
                                                      else 2 if 6 in kinds else 1)
    assert (8 in kinds) == name.startswith("expand")
    assert (7 in kinds) == (name.startswith("exponent") or name == "expand_blocks_exponent_float16")
    assert (6 in kinds) == name.startswith("transform") or name == "exponent_transform"


@pytest.mark.parametrize("name", NAMES)
def test_parse_reads_back_every_golden(name):
    """codec.parse is the inverse of serialize: the golden bytes read back
    into a recipe that serializes to the same bytes and reconstructs the same
    tensor."""
    from onnx_l2c.codec import parse

    payload = (GOLDEN / f"{name}.bin").read_bytes()
    recipe = parse(payload)
    assert [type(s) for s in recipe.stages] == [type(s) for s in recipes()[name].stages]
    assert serialize(recipe) == payload
    assert digest(reconstruct(recipe)) == digest(reconstruct(recipes()[name]))


def test_stage_summaries_of_the_goldens():
    """Each stage describes itself (what `onnx-l2c inspect` shows)."""
    from onnx_l2c.codec import parse, summarize, summarize_totals

    def read(name):
        return summarize(parse((GOLDEN / f"{name}.bin").read_bytes()))

    codebook = read("codebook")["codebook"]
    symbols = (hashed(250, 2) >> np.uint64(28)).astype(np.int64)
    counts = np.bincount(symbols, minlength=16)
    p = counts[counts > 0] / counts.sum()
    assert codebook.fields == {"unique_values": int((counts > 0).sum()), "table_size": 16,
                               "entropy_bits": pytest.approx(float(-(p * np.log2(p)).sum()))}
    assert read("stream_constant")["codebook"].text == "1 unique value, entropy 0.00 bits/weight"
    affine = read("affine_theta_offset")["affine"].fields
    assert affine == {"steps": 6, "step_min": pytest.approx(1 / 128), "step_max": pytest.approx(6 / 128),
                      "theta": 0.25, "offset": True}
    expand = read("expand_conv_kernels")["expand"].fields
    assert expand["block"] == 9 and expand["blocks"] == 20
    assert expand["kept"] + expand["unified"] + expand["pruned"] == 20
    assert set(read("raw_float32")) == set()
    assert read("transform_mean")["transform"].fields == {"rank": 3, "cols": 10, "mean": True}
    # model-wide: codebook values counted across tensors, expand modes added up
    totals = summarize_totals([read("codebook"), read("stream_constant"), read("expand_conv_kernels"),
                               read("expand_blocks_exponent_float16")])
    both = codebook.tally + read("stream_constant")["codebook"].tally
    assert totals["codebook"].fields["unique_values"] == len(both) and totals["codebook"].fields["tensors"] == 2
    assert totals["expand"].fields["blocks"] == 20 + read("expand_blocks_exponent_float16")["expand"].fields["blocks"]


@pytest.mark.parametrize("name", sorted(STREAM_MODES))
def test_stream_modes(name):
    payload = (GOLDEN / f"{name}.bin").read_bytes()
    kind, body, _ = stage_offsets(payload)[0]
    assert kind == 1 and payload[body + 4] == STREAM_MODES[name]  # after the i32 symbol offset


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(f"usage: python {sys.argv[0]} --regenerate   (rewrites {GOLDEN}; this is a format change)")
    regenerate()
