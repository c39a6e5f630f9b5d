"""Property test: format.reconstruct(recipe) == native decode of serialize(recipe), bit for bit,
over random recipes (shapes up to 3-D, any channel axis, 2..12-bit symbols, theta in [0, 0.45],
with/without offset, codebooks, float32 / float16 / bfloat16 outputs, raw bits)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_bit_identical, native_decode
from onnx_l2c.codec import (BFLOAT16, FLOAT, FLOAT16, AffineStage, CastStage, CodebookStage, EntropyStage,
                             RawStage, Recipe, reconstruct, serialize)

CASES = 50


def random_floats(rng: np.random.Generator, n: int, spread: float) -> np.ndarray:
    """Finite float32 with full mantissas over several binades (occasionally huge or tiny)."""
    mag = np.exp2(rng.uniform(-spread, spread, n)) * rng.choice([1e-3, 1.0, 1e3, 1e-30, 1e30], p=[.3, .4, .2, .05, .05])
    return (mag * rng.choice([-1.0, 1.0], n)).astype(np.float32)


def random_recipe(seed: int) -> Recipe:
    rng = np.random.default_rng(seed)
    ndim = int(rng.integers(0, 4))
    dims = tuple(int(d) for d in rng.integers(1, 24, ndim))
    if ndim and rng.random() < 0.05:
        dims = dims[:-1] + (0,)  # empty tensor
    numel = int(np.prod(dims, dtype=np.int64))
    dtype = [FLOAT, FLOAT16, BFLOAT16][seed % 3]
    kind = ["affine", "affine", "codebook", "raw"][(seed // 3) % 4]
    if kind == "raw":
        width = np.uint32 if dtype == FLOAT else np.uint16
        bits = rng.integers(0, np.iinfo(width).max, numel, dtype=width, endpoint=True)
        return Recipe(dtype, dims, [RawStage(bits, rotate=int(rng.integers(0, 8)))])
    bits = int(rng.integers(2, 13))
    half = 2 ** (bits - 1)
    if kind == "codebook":
        size = int(rng.integers(1, 2**bits + 1))
        sym = rng.integers(0, size, numel).astype(np.int32)
        stages = [EntropyStage(sym), CodebookStage(random_floats(rng, size, 8))]
    else:
        sym = np.clip(np.round(rng.laplace(0, half / rng.uniform(2, 16), numel)), -half, half - 1).astype(np.int32)
        axis = int(rng.integers(0, ndim)) if ndim else 0
        outer = int(np.prod(dims[:axis], dtype=np.int64))
        channels = dims[axis] if ndim else 1
        inner = int(np.prod(dims[axis + 1:], dtype=np.int64))
        offset = random_floats(rng, channels, 4) if rng.random() < 0.5 else None
        theta = float(rng.uniform(0, 0.45)) if rng.random() < 0.9 else 0.0
        scale = np.abs(random_floats(rng, channels, 6))
        stages = [EntropyStage(sym), AffineStage(outer, channels, inner, theta, scale, offset)]
    if dtype != FLOAT:
        stages.append(CastStage(dtype))
    return Recipe(dtype, dims, stages)


@pytest.mark.parametrize("seed", range(CASES))
def test_reconstruct_equals_native(seed):
    recipe = random_recipe(seed)
    with np.errstate(over="ignore"):
        expected = reconstruct(recipe)
    assert_bit_identical([expected], [native_decode(serialize(recipe))], f"seed {seed}: {recipe.dims}")
