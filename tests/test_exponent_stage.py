"""The exponent stage (FORMAT.md, kind 7, format version 3).

* format.reconstruct == native decode of format.serialize, bit for bit, over random recipes
  (per-row and per-column layouts, exponents 0..31, every output dtype, with and without a
  transform stage after it, scales that push products into float32 subnormals);
* payloads without an exponent stage keep their version (1 or 2), byte for byte;
* malformed exponent payloads are rejected by the Python side (L2CError) and by the native
  decoder (in a child process, so a crash fails the test), and every truncation and bit flip
  fails cleanly.
"""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from helpers import (assert_bit_identical, assert_rejected_natively, native_decode, patched, run_isolated,
                     stage_offsets)
from onnx_l2c import L2CError
from onnx_l2c.codec import (BFLOAT16, FLOAT, FLOAT16, AffineStage, CastStage,
                             CodebookStage, EntropyStage, ExponentStage, Recipe, TransformStage, reconstruct,
                             serialize)
from test_transform_stage import FUZZ

CASES = 30
CORRUPT, VERSION = 1, 2  # L2C_E_* codes (runtime/include/onnx_l2c.h)


def exponent_recipe(seed: int) -> Recipe:
    rng = np.random.default_rng(2000 + seed)
    rows, cols = int(rng.integers(1, 40)), int(rng.integers(1, 30))
    q = np.round(rng.laplace(0, 8, rows * cols)).astype(np.int32)
    # tiny scales on some seeds: products by 2^-e land in float32 subnormals
    low = -140.0 if seed % 5 == 4 else -8.0
    scale = np.exp2(rng.uniform(low, 4, cols)).astype(np.float32)
    stages = [EntropyStage(q), AffineStage(rows, cols, 1, float(rng.uniform(0, 0.45)), scale)]
    top = int(rng.integers(0, ExponentStage.MAX_EXPONENT + 1))
    if seed % 2:
        stages.append(ExponentStage(1, rows, cols, rng.integers(0, top + 1, rows)))  # per row
    else:
        stages.append(ExponentStage(rows, cols, 1, rng.integers(0, top + 1, cols)))  # per column
    if seed % 3 == 0:  # the exponent stage also feeds a transform (rows x cols coefficients, k = cols)
        out_cols = cols + int(rng.integers(0, 5))
        stages.append(TransformStage(rows, cols, out_cols, rng.normal(size=(cols, out_cols)).astype(np.float32)))
    else:
        out_cols = cols
    dtype = [FLOAT, FLOAT16, BFLOAT16][seed % 3]
    if dtype != FLOAT:
        stages.append(CastStage(dtype))
    return Recipe(dtype, (rows, out_cols), stages)


@pytest.mark.parametrize("seed", range(CASES))
def test_reconstruct_equals_native(seed):
    recipe = exponent_recipe(seed)
    payload = serialize(recipe)
    assert struct.unpack_from("<H", payload, 4)[0] == ExponentStage.min_version
    with np.errstate(all="ignore"):
        expected = reconstruct(recipe)
    assert_bit_identical([expected], [native_decode(payload)], f"seed {seed}")


def test_values_are_scaled_by_powers_of_two():
    q = np.arange(-6, 6, dtype=np.int32)
    plain = [EntropyStage(q), AffineStage(3, 4, 1, 0.0, np.full(4, 0.5, np.float32))]
    base = reconstruct(Recipe(FLOAT, (3, 4), plain)).astype(np.float64)
    e = np.array([0, 1, 5])
    out = native_decode(serialize(Recipe(FLOAT, (3, 4), [*plain, ExponentStage(1, 3, 4, e)])))
    np.testing.assert_array_equal(out, base * 2.0 ** -e[:, None])


# ----------------------------------------------------------- malformed input

def _good() -> Recipe:
    return Recipe(FLOAT, (6, 4), [EntropyStage(np.arange(24, dtype=np.int32) % 5 - 2),
                                  AffineStage(6, 4, 1, 0.0, np.ones(4, np.float32)),
                                  ExponentStage(1, 6, 4, np.array([0, 1, 2, 3, 4, 5]))])


def _bad_payloads() -> list[tuple[str, bytes, str, int]]:
    """(label, payload, error pattern, native error code) for the native decoder."""
    good = serialize(_good())
    kind, body, size = stage_offsets(good)[2]
    assert kind == 7
    stream = body + 20  # after outer:u64 groups:u32 inner:u64
    big = serialize(Recipe(FLOAT, (40, 1), [EntropyStage(np.zeros(40, np.int32)),
                                             AffineStage(40, 1, 1, 0.0, np.ones(1, np.float32)),
                                             ExponentStage(1, 40, 1, np.arange(40) % 33 % 32)]))
    big_kind, big_body, _ = stage_offsets(big)[2]
    # exponent 32 encoded: rewrite the stream alphabet field (after mode, scale_bits, lanes, 0, count:u64)
    bad_alphabet = patched(big, big_body + 20 + 12, struct.pack("<I", 33))
    return [
        ("version_2", patched(good, 4, struct.pack("<H", 2)), "exponent stage needs format version 3", VERSION),
        ("groups_zero", patched(good, body + 8, struct.pack("<I", 0)), r"groups = 0 not in 1\.\.2\^24", CORRUPT),
        ("groups_huge", patched(good, body + 8, struct.pack("<I", (1 << 24) + 1)), r"not in 1\.\.2\^24", CORRUPT),
        ("layout", patched(good, body, struct.pack("<Q", 2)), r"outer\*groups\*inner = 2\*6\*4 does not match 24", CORRUPT),
        ("inner_overflow", patched(good, body + 12, struct.pack("<Q", 1 << 62)), "does not match 24 elements", CORRUPT),
        ("alphabet", bad_alphabet, "exponent alphabet above 32", CORRUPT),
        ("count", patched(good, stream + 4, struct.pack("<Q", 7)), "holds 7 indices, expected 6", CORRUPT),
        ("after_codebook", _kind_after_codebook(), "exponent needs float32 values from an affine stage", CORRUPT),
    ]


def _kind_after_codebook() -> bytes:
    """entropy + codebook + exponent: built by rewriting a valid payload's second stage kind."""
    recipe = Recipe(FLOAT, (6, 4), [EntropyStage(np.arange(24, dtype=np.int32) % 4),
                                    CodebookStage(np.arange(4, dtype=np.float32))])
    payload = bytearray(serialize(recipe))
    e = serialize(_good())
    kind, body, size = stage_offsets(e)[2]
    stage = e[body - 8:body + size]
    payload[8 + 8 * 2] = 3  # three stages
    payload = bytes(payload[:-4]) + stage
    payload = payload[:4] + struct.pack("<H", 3) + payload[6:]
    return patched(payload + b"\0\0\0\0", 0, b"L2CP")


def test_native_rejects_bad_exponents():
    assert_rejected_natively(_bad_payloads())


def test_truncations_and_flips_never_crash(tmp_path):
    recipes = [_good(), exponent_recipe(3), exponent_recipe(4)]
    path = tmp_path / "payloads.pkl"
    path.write_bytes(pickle.dumps([serialize(r) for r in recipes]))
    proc = run_isolated(FUZZ % str(path), timeout=300)
    assert proc.returncode == 0, f"child crashed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip().splitlines()[-1] == "BAD []"


def _ex(**changes) -> Recipe:
    fields = dict(outer=1, groups=6, inner=4, exponents=np.arange(6))
    fields.update(changes)
    return Recipe(FLOAT, (6, 4), [*_good().stages[:2], ExponentStage(**fields)])


@pytest.mark.parametrize("recipe,pattern", [
    (_ex(groups=0, exponents=np.zeros(0, np.int64)), r"groups = 0 must be in 1\.\."),
    (_ex(inner=3), r"exponent stage layout 1x6x3 does not cover 24 elements"),
    (_ex(exponents=np.arange(5)), "needs 6 integer exponents, got 5"),
    (_ex(exponents=np.full(6, 0.5)), "integer exponents"),
    (_ex(exponents=np.array([0, 1, 2, 3, 4, 32])), r"must lie in \[0, 31\]"),
    (_ex(exponents=np.array([0, 1, 2, 3, 4, -1])), r"must lie in \[0, 31\]"),
    (_ex(groups=6.0), "must be integers"),
    (Recipe(FLOAT, (6, 4), [_good().stages[0], CodebookStage(np.ones(5)), _good().stages[2]]),
     "invalid stage sequence"),
    (Recipe(FLOAT, (6, 4), [*_good().stages, _good().stages[2]]), "invalid stage sequence"),
])
def test_python_side_rejects_what_the_decoder_rejects(recipe, pattern):
    with pytest.raises(L2CError, match=pattern):
        serialize(recipe)
    with pytest.raises(L2CError, match=pattern):
        reconstruct(recipe)
