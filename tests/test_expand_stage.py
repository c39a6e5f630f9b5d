"""The expand stage (FORMAT.md, kind 8, format version 4): micro-blocks → int32 symbols.

* format.reconstruct == native decode of format.serialize, bit for bit, over random recipes
  (every block mode, short last blocks, inner = 1 and > 1, slices larger than the decoder's
  chunk, every output dtype, with an exponent stage after the affine one);
* `expand_stage` builds the streams from symbols and modes, and rejects symbols the modes
  cannot hold;
* malformed expand payloads are rejected by the Python side (L2CError) and by the native
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
from onnx_l2c.codec import (BFLOAT16, FLOAT, FLOAT16, AffineStage, BlockMode, CastStage,
                             CodebookStage, EntropyStage, ExpandStage, ExponentStage, Recipe, TransformStage,
                             describe, expand_blocks, expand_stage, expand_symbols, reconstruct, serialize)
from test_transform_stage import FUZZ

CASES = 30
CORRUPT, VERSION = 1, 2  # L2C_E_* codes (runtime/include/onnx_l2c.h)


def structured(outer: int, n: int, inner: int, block: int, rng: np.random.Generator,
               p_modes=(1 / 3, 1 / 3, 1 / 3)) -> tuple[np.ndarray, np.ndarray]:
    """Random symbols that the given block layout can hold, and their modes."""
    ids, _ = expand_blocks(outer, n, inner, block)
    blocks = int(ids.max()) + 1 if ids.size else 0
    modes = rng.choice(3, blocks, p=p_modes).astype(np.uint8)
    mags = rng.integers(1, 40, blocks)
    signs = rng.choice([-1, 1], ids.size)
    free = np.round(rng.laplace(0, 6, ids.size)).astype(np.int32)
    m = modes[ids]
    q = np.where(m == BlockMode.PRUNE, 0, np.where(m == BlockMode.UNIFY, signs * mags[ids], free))
    return q.astype(np.int32), modes


def expand_recipe(seed: int) -> Recipe:
    rng = np.random.default_rng(3000 + seed)
    outer, n, inner = (int(v) for v in rng.integers(1, 14, 3))
    if seed % 4 == 0:
        inner = 1
    if seed % 10 == 9:  # more blocks than one decoder slice (4096 elements)
        outer, n, inner = 3, 700, 40
    block = int(rng.integers(1, min(n, 256) + 1)) if seed % 3 else min(n, 4)
    q, modes = structured(outer, n, inner, block, rng)
    scale = np.exp2(rng.uniform(-8, 2, n)).astype(np.float32)
    stages = [expand_stage(q, outer, n, inner, block, modes), AffineStage(outer, n, inner, 0.3, scale)]
    if seed % 5 == 1:
        stages.append(ExponentStage(outer, n, inner, rng.integers(0, 6, n)))
    dtype = [FLOAT, FLOAT16, BFLOAT16][seed % 3]
    if dtype != FLOAT:
        stages.append(CastStage(dtype))
    return Recipe(dtype, (outer, n, inner), stages)


@pytest.mark.parametrize("seed", range(CASES))
def test_reconstruct_equals_native(seed):
    recipe = expand_recipe(seed)
    payload = serialize(recipe)
    assert struct.unpack_from("<H", payload, 4)[0] == ExpandStage.min_version
    assert describe(payload).stages[0] == "expand"
    assert_bit_identical([reconstruct(recipe)], [native_decode(payload)], f"seed {seed}")


def test_blocks_decode_as_their_modes():
    # 2 rows of n = 6 with block 4: blocks (0,0) (0,1 short) (1,0) (1,1 short)
    stage = ExpandStage(2, 6, 1, 4, modes=np.array([BlockMode.UNIFY, BlockMode.KEEP, BlockMode.PRUNE,
                                                    BlockMode.UNIFY]),
                        magnitudes=np.array([3, 7]), signs=np.array([0, 1, 1, 0, 1, 0]), kept=np.array([5, -2]))
    expected = np.array([3, -3, -3, 3, 5, -2, 0, 0, 0, 0, -7, 7], np.int32)
    np.testing.assert_array_equal(expand_symbols(stage), expected)
    recipe = Recipe(FLOAT, (2, 6), [stage, AffineStage(1, 1, 12, 0.0, np.ones(1, np.float32))])
    np.testing.assert_array_equal(native_decode(serialize(recipe)).reshape(-1), expected.astype(np.float32))


def test_blocks_run_along_the_middle_axis():
    # (outer 1, n 4, inner 3), block 2: block (0, j, i) holds elements (j*2 + t)*3 + i
    ids, pos = expand_blocks(1, 4, 3, 2)
    np.testing.assert_array_equal(ids, [0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5])
    np.testing.assert_array_equal(pos, [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1])
    q = np.array([4, 1, 0, -4, 2, 0, 0, 6, -5, 0, -6, 5], np.int32)
    modes = np.array([BlockMode.UNIFY, BlockMode.KEEP, BlockMode.PRUNE, BlockMode.PRUNE, BlockMode.UNIFY,
                      BlockMode.UNIFY])
    stage = expand_stage(q, 1, 4, 3, 2, modes)
    np.testing.assert_array_equal(stage.magnitudes, [4, 6, 5])
    np.testing.assert_array_equal(stage.signs, [0, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(stage.kept, [1, 2])
    recipe = Recipe(FLOAT, (4, 3), [stage, AffineStage(4, 1, 3, 0.0, np.ones(1, np.float32))])
    np.testing.assert_array_equal(native_decode(serialize(recipe)).reshape(-1), q.astype(np.float32))


@pytest.mark.parametrize("q,modes,pattern", [
    (np.array([1, 2, 0, 0]), [BlockMode.UNIFY, BlockMode.PRUNE], "more than one magnitude"),
    (np.array([1, 1, 0, 3]), [BlockMode.UNIFY, BlockMode.PRUNE], "pruned block holds a nonzero"),
    (np.array([1, 1, 0, 3]), [BlockMode.UNIFY], "one mode per block"),
])
def test_expand_stage_rejects_symbols_the_modes_cannot_hold(q, modes, pattern):
    with pytest.raises(L2CError, match=pattern):
        expand_stage(q, 1, 4, 1, 2, np.array(modes))


def test_unified_zero_magnitude_is_rejected():
    stage = ExpandStage(1, 4, 1, 2, np.array([BlockMode.UNIFY, BlockMode.PRUNE]), np.array([0]),
                        np.array([0, 0]), np.zeros(0, np.int32))
    with pytest.raises(L2CError, match=r"magnitudes must lie in \[1, 65536\]"):
        serialize(Recipe(FLOAT, (4,), [stage, AffineStage(1, 1, 4, 0.0, np.ones(1, np.float32))]))


# ----------------------------------------------------------- malformed input

def _good() -> Recipe:
    q, modes = structured(2, 6, 3, 4, np.random.default_rng(5))
    return Recipe(FLOAT, (2, 6, 3), [expand_stage(q, 2, 6, 3, 4, modes),
                                     AffineStage(2, 6, 3, 0.0, np.ones(6, np.float32))])


def _streams(payload: bytes) -> list[int]:
    """Offsets of the four streams of the first (expand) stage."""
    _, body, _ = stage_offsets(payload)[0]
    pos, out = body + 32, []
    for _ in range(4):
        out.append(pos)
        mode, count = payload[pos], struct.unpack_from("<Q", payload, pos + 4)[0]
        alphabet = struct.unpack_from("<I", payload, pos + 12)[0]
        if mode == 0:
            size = 16
        elif mode == 1:
            size = 16 + count * (1 if alphabet <= 256 else 2)
        else:
            raise AssertionError("the malformed cases below use constant and stored streams only")
        pos += size
    return out


def _bad_payloads() -> list[tuple[str, bytes, str, int]]:
    """(label, payload, error pattern, native error code) for the native decoder."""
    # small enough that the encoder stores the streams (no rANS): fields are easy to patch
    stage = ExpandStage(2, 3, 1, 2, np.array([1, 0, 2, 1], np.uint8), np.array([3, 2]), np.array([0, 1, 1]),
                        np.array([4, 9]))
    good = serialize(Recipe(FLOAT, (2, 3), [stage, AffineStage(1, 1, 6, 0.0, np.ones(1, np.float32))]))
    _, body, _ = stage_offsets(good)[0]
    modes, mags, signs, kept = _streams(good)
    w = r"stage 1 \(expand\)"
    return [
        ("version_3", patched(good, 4, struct.pack("<H", 3)), w + ": the expand stage needs format version 4",
         VERSION),
        ("layout", patched(good, body, struct.pack("<Q", 3)), w + r": outer\*n\*inner = 3\*3\*1 does not match 6",
         CORRUPT),
        ("inner_overflow", patched(good, body + 16, struct.pack("<Q", 1 << 63)), "does not match 6 elements",
         CORRUPT),
        ("block_zero", patched(good, body + 24, struct.pack("<I", 0)), w + r": block 0 not in 1\.\.min", CORRUPT),
        ("block_over_n", patched(good, body + 24, struct.pack("<I", 4)), w + r": block 4 not in 1\.\.min", CORRUPT),
        ("mode_3", patched(good, modes + 16 + 1, b"\x03"), w + " modes: stored index 3 .* outside", CORRUPT),
        ("modes_alphabet", patched(good, modes + 12, struct.pack("<I", 4)), w + " modes: alphabet above 3", CORRUPT),
        ("modes_count", patched(good, modes + 4, struct.pack("<Q", 5)), "holds 5 indices, expected 4", CORRUPT),
        # one more unified block than the magnitudes stream holds
        ("mode_flip", patched(good, modes + 16 + 2, b"\x01"), w + " magnitudes: .*holds 2 indices, expected 3",
         CORRUPT),
        ("signs_alphabet", patched(good, signs + 12, struct.pack("<I", 3)), w + " signs: alphabet above 2", CORRUPT),
        ("kept_count", patched(good, kept + 4, struct.pack("<Q", 3)), w + " kept: .*holds 3 indices, expected 2",
         CORRUPT),
        ("kept_overflow", patched(good, body + 28, struct.pack("<i", 2 ** 31 - 2)), "overflows int32", CORRUPT),
        ("with_codebook", _expand_then(CodebookStage(np.arange(8, dtype=np.float32))),
         "codebook needs int32 symbols from an entropy stage", CORRUPT),
        ("not_first", _entropy_then_expand(), "expand must be the first stage", CORRUPT),
    ]


def _expand_then(stage) -> bytes:
    stage0 = ExpandStage(1, 4, 1, 2, np.array([1, 1], np.uint8), np.array([3, 2]), np.array([0, 1, 1, 0]),
                         np.zeros(0, np.int32))
    return serialize(Recipe(FLOAT, (4,), [stage0, stage]), check=False)


def _entropy_then_expand() -> bytes:
    stage = ExpandStage(1, 4, 1, 2, np.array([2, 2], np.uint8), np.zeros(0, np.int32), np.zeros(0, np.uint8),
                        np.arange(4))
    return serialize(Recipe(FLOAT, (4,), [EntropyStage(np.arange(4)), stage,
                                          AffineStage(1, 1, 4, 0.0, np.ones(1, np.float32))]), check=False)


def test_native_rejects_bad_expand_payloads():
    assert_rejected_natively(_bad_payloads())


def test_transform_after_expand_is_rejected_natively():
    q, modes = structured(4, 2, 1, 2, np.random.default_rng(1))
    payload = serialize(Recipe(FLOAT, (4, 3), [expand_stage(q, 4, 2, 1, 2, modes),
                                               AffineStage(4, 2, 1, 0.0, np.ones(2, np.float32)),
                                               TransformStage(4, 2, 3, np.ones(6, np.float32))]), check=False)
    assert_rejected_natively([("transform", payload, "transform cannot follow an expand stage", CORRUPT)])


def test_truncations_and_flips_never_crash(tmp_path):
    recipes = [_good(), expand_recipe(1), expand_recipe(2)]
    path = tmp_path / "payloads.pkl"
    path.write_bytes(pickle.dumps([serialize(r) for r in recipes]))
    proc = run_isolated(FUZZ % str(path), timeout=300)
    assert proc.returncode == 0, f"child crashed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip().splitlines()[-1] == "BAD []"


def _ex(**changes) -> Recipe:
    good = _good()
    fields = dict(vars(good.stages[0]))
    fields.update(changes)
    return Recipe(FLOAT, (2, 6, 3), [ExpandStage(**fields), good.stages[1]])


@pytest.mark.parametrize("recipe,pattern", [
    (_ex(inner=2), r"expand stage layout 2x6x2 does not cover 36 elements"),
    (_ex(block=0), r"block 0 must be in 1\.\.min\(n = 6, 256\)"),
    (_ex(block=7), r"block 7 must be in 1\.\.min"),
    (_ex(modes=np.zeros(3, np.uint8)), "needs 12 block modes"),
    (_ex(modes=np.full(12, 3, np.uint8)), "needs 12 block modes"),
    (_ex(signs=np.zeros(1, np.uint8)), "integer signs"),
    (_ex(kept=np.zeros(1, np.int32)), "integer kept"),
    (_ex(block=4.0), "must be integers"),
    (Recipe(FLOAT, (2, 6, 3), [_good().stages[0], CodebookStage(np.ones(5))]), "invalid stage sequence"),
    (Recipe(FLOAT16, (2, 6, 3), _good().stages), "invalid stage sequence"),
])
def test_python_side_rejects_what_the_decoder_rejects(recipe, pattern):
    with pytest.raises(L2CError, match=pattern):
        serialize(recipe)
    with pytest.raises(L2CError, match=pattern):
        reconstruct(recipe)
