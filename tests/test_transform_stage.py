"""The transform stage (FORMAT.md, kind 6, format version 2).

* format.reconstruct == native decode of format.serialize, bit for bit, over random transform
  recipes (k = 1, k = cols, both layouts, float32 / float16 bases, with and without mean, every
  output dtype, value ranges wide enough to overflow), and both == FORMAT.md's per-element
  formula written out with numpy float32 scalars;
* a model whose MatMul weights are transform payloads runs through the fast loader, the custom op
  and decompress, with the outputs of the same model holding the reconstructed weights;
* malformed transform payloads are rejected by the Python side (L2CError) and by the native
  decoder, the fast loader and the custom op (in a child process, so a crash fails the test).
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

import onnx_l2c
from helpers import (assert_bit_identical, assert_close, decoded_by_custom_op, native_decode, patched,
                     run_custom_op, run_fast, run_isolated, run_plain, stage_offsets, with_crc)
from onnx_l2c import L2CError
from onnx_l2c.codec import native
from onnx_l2c.codec import (BFLOAT16, DOMAIN, FLOAT, FLOAT16, FORMAT_VERSION, 
                             OP_TYPE, OPSET, PAYLOAD_ALIGN, AffineStage, CastStage,
                             CodebookStage, EntropyStage, Recipe, TransformStage, describe, float32_to,
                             payload_version, reconstruct, serialize)

CASES = 40


def random_floats(rng: np.random.Generator, n: int, spread: float, extreme: bool = False) -> np.ndarray:
    """Finite float32 with full mantissas over 2·spread binades; `extreme` adds magnitudes near
    1e±30 whose products overflow to inf (and whose sums then give NaN)."""
    mag = np.exp2(rng.uniform(-spread, spread, n))
    if extreme:
        mag = mag * rng.choice([1e-30, 1e-3, 1.0, 1e3, 1e30], n, p=[.1, .2, .4, .2, .1])
    return (mag * rng.choice([-1.0, 1.0], n)).astype(np.float32)


def in_float16(values: np.ndarray) -> np.ndarray:
    """float32 values that float16 holds exactly (clipped to its finite range, then rounded)."""
    return np.clip(values, -65504, 65504).astype(np.float16).astype(np.float32)


def transform_recipe(rows: int, k: int, cols: int, *, layout: int = 0, basis_dtype: int = FLOAT,
                     mean: bool = True, dtype: int = FLOAT, seed: int = 0, spread: float = 3.0,
                     extreme: bool = False, affine_axis: int = 1) -> Recipe:
    """entropy + affine + transform [+ cast] of a rows x cols matrix (cols x rows with layout 1).

    affine_axis picks the affine channels over the rows x k coefficients: 0 one per row,
    1 one per coefficient column (a KLT's per-component scale), 2 a single channel."""
    rng = np.random.default_rng(seed)
    q = np.clip(np.round(rng.laplace(0, 16, rows * k)), -2048, 2047).astype(np.int32)
    outer, channels, inner = [(1, rows, k), (rows, k, 1), (1, 1, rows * k)][affine_axis]
    scale = np.abs(random_floats(rng, channels, spread, extreme))
    offset = random_floats(rng, channels, spread) if rng.random() < 0.3 else None
    theta = float(rng.uniform(0, 0.45))
    basis = random_floats(rng, k * cols, spread, extreme)
    if basis_dtype == FLOAT16:
        basis = in_float16(basis)
    mean_values = random_floats(rng, cols, spread + 2, extreme) if mean else None
    stages = [EntropyStage(q), AffineStage(outer, channels, inner, theta, scale, offset),
              TransformStage(rows, k, cols, basis.reshape(k, cols), layout, basis_dtype, mean_values)]
    if dtype != FLOAT:
        stages.append(CastStage(dtype))
    return Recipe(dtype, (rows, cols) if layout == 0 else (cols, rows), stages)


def random_recipe(seed: int) -> Recipe:
    rng = np.random.default_rng(1000 + seed)
    cols = int(rng.integers(1, 40))
    rows = 0 if seed == 7 else int(rng.integers(1, 30))  # one empty tensor
    k = [1, cols, int(rng.integers(1, cols + 1)), int(rng.integers(1, cols + 1))][seed % 4]
    affine_axis = int(rng.integers(0, 3)) if rows else 1  # the native decoder needs >= 1 affine channel
    return transform_recipe(rows, k, cols, layout=int(rng.integers(0, 2)),
                            basis_dtype=[FLOAT, FLOAT16][int(rng.integers(0, 2))], mean=bool(rng.random() < 0.5),
                            dtype=[FLOAT, FLOAT16, BFLOAT16][seed % 3], seed=seed,
                            spread=float(rng.uniform(1, 12)), extreme=seed % 5 == 4,
                            affine_axis=affine_axis)


def reconstructed(recipe: Recipe) -> np.ndarray:
    with np.errstate(all="ignore"):  # extreme cases overflow, as the format defines
        return reconstruct(recipe)


def formula(recipe: Recipe) -> np.ndarray:
    """FORMAT.md's transform, element by element with numpy float32 scalars (one rounding per
    operation), then the cast: an independent reference for reconstruct and the native decoder."""
    entropy, affine, tf = recipe.stages[:3]
    coefs = reconstructed(Recipe(FLOAT, (tf.rows * tf.k,), [entropy, affine]))
    basis = np.asarray(tf.basis, np.float32).reshape(-1)
    out = np.empty(tf.rows * tf.cols, np.float32)
    with np.errstate(all="ignore"):
        for r in range(tf.rows):
            for j in range(tf.cols):
                acc = np.float32(0.0)
                for i in range(tf.k):
                    acc = acc + coefs[r * tf.k + i] * basis[i * tf.cols + j]
                if tf.mean is not None:
                    acc = acc + np.float32(tf.mean[j])
                out[r * tf.cols + j if tf.layout == 0 else j * tf.rows + r] = acc
        if recipe.dtype != FLOAT:
            out = float32_to(out, recipe.dtype)
    if recipe.dtype == FLOAT16:
        out = out.view(np.float16)
    return out.reshape(recipe.dims)


# ------------------------------------------------------- bit-exact decoding

@pytest.mark.parametrize("seed", range(CASES))
def test_reconstruct_equals_native(seed):
    recipe = random_recipe(seed)
    payload = serialize(recipe)
    assert struct.unpack_from("<H", payload, 4)[0] == TransformStage.min_version
    tf = recipe.stages[2]
    what = f"seed {seed}: rows {tf.rows} k {tf.k} cols {tf.cols} layout {tf.layout} basis {tf.basis_dtype}"
    assert_bit_identical([reconstructed(recipe)], [native_decode(payload)], what)


@pytest.mark.parametrize("seed", range(0, CASES, 3))
def test_formula(seed):
    recipe = random_recipe(seed)
    assert_bit_identical([formula(recipe)], [native_decode(serialize(recipe))], f"seed {seed}: formula vs native")


@pytest.mark.parametrize("rows,k,cols,layout", [(700, 30, 300, 0), (700, 30, 300, 1), (100, 200, 200, 0),
                                                (3, 1, 5000, 1), (5000, 2, 3, 0)])
def test_blocks_and_tiles(rows, k, cols, layout):
    """Shapes spanning several coefficient blocks and column tiles of the native loop."""
    recipe = transform_recipe(rows, k, cols, layout=layout, seed=rows + k)
    assert_bit_identical([reconstructed(recipe)], [native_decode(serialize(recipe))], f"{rows}x{k}x{cols}")


def test_float16_basis_is_stored_as_float16():
    recipe = transform_recipe(4, 3, 5, basis_dtype=FLOAT16, mean=False, seed=3)
    payload = serialize(recipe)
    _, body, size = stage_offsets(payload)[2]
    assert size == 20 + 2 * 15
    rows, k, cols, layout, basis_dtype, has_mean, reserved = struct.unpack_from("<QIIBBBB", payload, body)
    assert (rows, k, cols, layout, basis_dtype, has_mean, reserved) == (4, 3, 5, 0, FLOAT16, 0, 0)
    stored = np.frombuffer(payload, "<f2", 15, body + 20).astype(np.float32)
    np.testing.assert_array_equal(stored, np.asarray(recipe.stages[2].basis).reshape(-1))


def test_versions_and_describe():
    recipe = transform_recipe(4, 2, 3, dtype=BFLOAT16)
    assert payload_version(recipe) == TransformStage.min_version == 2
    assert describe(serialize(recipe)).stages == ("entropy", "affine", "transform", "cast")
    plain = Recipe(FLOAT, (4, 3), [EntropyStage(np.arange(12)), AffineStage(1, 1, 12, 0.0, np.ones(1, np.float32))])
    assert payload_version(plain) == FORMAT_VERSION == 1
    assert struct.unpack_from("<H", serialize(plain), 4)[0] == 1
    # the decoder reads a version-2 payload without a transform stage too
    v2 = patched(serialize(plain), 4, struct.pack("<H", 2))
    assert_bit_identical([reconstruct(plain)], [native_decode(v2)], "version 2 without transform")
    assert native._lib().l2c_format_version() == 5  # the newest version it reads (the dtypes besides the floats)


# ------------------------------------------------ a model with transform weights

SIDECAR = "model.onnx.l2c"


def weight_recipes() -> dict[str, Recipe]:
    """w1 [24, 16] float32 (layout 0, mean); w2 [16, 8] float16 (layout 1: the transform
    decorrelates w2's columns, float16 basis, cast)."""
    return {"w1": transform_recipe(24, 5, 16, seed=11, spread=2),
            "w2": transform_recipe(8, 3, 16, layout=1, basis_dtype=FLOAT16, mean=False, dtype=FLOAT16, seed=12,
                                   spread=2)}


def matmul_graph(weights: list[onnx.TensorProto], decodes: list[onnx.NodeProto],
                 value_info: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    """y = (x @ w1) @ float(w2)."""
    nodes = decodes + [h.make_node("MatMul", ["x", "w1"], ["h"]), h.make_node("Cast", ["w2"], ["w2f"], to=TP.FLOAT),
                       h.make_node("MatMul", ["h", "w2f"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [3, 24])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [3, 8])], weights, value_info=value_info)
    opsets = [h.make_opsetid("", 17)] + ([h.make_opsetid(DOMAIN, OPSET)] if decodes else [])
    return h.make_model(g, opset_imports=opsets, ir_version=9)


def write_compressed(folder: Path, payloads: dict[str, tuple[bytes, int, tuple[int, ...]]]) -> Path:
    """The converter's layout (FORMAT.md): Decode nodes over payload initializers stored as
    external data in model.onnx.l2c, at PAYLOAD_ALIGN-aligned offsets."""
    folder.mkdir(parents=True, exist_ok=True)
    blob = bytearray()
    inits, decodes, infos = [], [], []
    for name, (payload, dtype, dims) in payloads.items():
        blob += b"\0" * (-len(blob) % PAYLOAD_ALIGN)
        offset = len(blob)
        blob += payload
        init = onnx.TensorProto(name=f"{name}@{SIDECAR}", data_type=TP.UINT8, dims=[len(payload)])
        init.data_location = TP.EXTERNAL
        for key, value in (("location", SIDECAR), ("offset", str(offset)), ("length", str(len(payload)))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
        inits.append(init)
        decodes.append(h.make_node(OP_TYPE, [init.name], [name], name=f"l2c_decode/{name}", domain=DOMAIN,
                                   dtype=dtype, shape=list(dims), tensor=name, sidecar=SIDECAR))
        infos.append(h.make_tensor_value_info(name, dtype, list(dims)))
    (folder / SIDECAR).write_bytes(bytes(blob))
    path = folder / "model.onnx"
    onnx.save(matmul_graph(inits, decodes, infos), str(path))
    return path


def test_model_with_transform_weights(tmp_path):
    recipes = weight_recipes()
    compressed = write_compressed(tmp_path / "compressed",
                                  {n: (serialize(r), r.dtype, r.dims) for n, r in recipes.items()})
    weights = {n: reconstruct(r) for n, r in recipes.items()}
    plain = tmp_path / "plain.onnx"
    onnx.save(matmul_graph([nh.from_array(w, n) for n, w in weights.items()], [], []), str(plain))
    feeds = {"x": np.random.default_rng(5).standard_normal((3, 24)).astype(np.float32)}
    expected = run_plain(plain, feeds)
    assert_bit_identical(expected, run_fast(compressed, feeds), "fast loader")
    decompressed = tmp_path / "decompressed.onnx"
    onnx_l2c.decompress(compressed, decompressed)
    assert_bit_identical(expected, run_plain(decompressed, feeds), "decompressed")
    assert_close(expected, run_custom_op(compressed, feeds), "custom op")
    # the custom op itself decodes the exact bits
    decoded = decoded_by_custom_op(compressed)
    assert sorted(decoded) == ["w1", "w2"]
    for name, array in decoded.items():
        assert_bit_identical([weights[name]], [array], f"{name} decoded by the custom op")
    rows = {row.name: row for row in onnx_l2c.inspect(compressed).rows}
    assert rows["w2"].stages == ("entropy", "affine", "transform", "cast")


# ------------------------------------------------------------- bad input

def base_payload(mean: bool = True, basis_dtype: int = FLOAT) -> tuple[bytes, int]:
    """A valid [6, 4] transform payload (rows 6, k 2, cols 4) and its transform body offset."""
    payload = serialize(transform_recipe(6, 2, 4, basis_dtype=basis_dtype, mean=mean, seed=21))
    return payload, stage_offsets(payload)[2][1]


def at(payload: bytes, pos: int, fmt: str, *values) -> bytes:
    return patched(payload, pos, struct.pack(fmt, *values))


def unchecked(stages, dtype: int = FLOAT, dims=(6, 4)) -> bytes:
    return serialize(Recipe(dtype, dims, stages), check=False)


def bad_payloads() -> list[tuple[str, bytes, str, int]]:
    """(label, payload, message pattern, L2C_E_* code) of malformed transform payloads."""
    good, body = base_payload()
    f16, body16 = base_payload(basis_dtype=FLOAT16)
    no_mean, _ = base_payload(mean=False)
    aff = AffineStage(6, 2, 1, 0.0, np.ones(2, np.float32))
    q = EntropyStage(np.arange(12) % 5)
    tf = TransformStage(6, 2, 4, np.ones(8, np.float32))
    affine_body = stage_offsets(good)[1][1]
    w = r"stage 3 \(transform\): "
    return [
        ("k_above_cols", at(good, body + 8, "<I", 5), w + r"k = 5 must be in 1\.\.cols \(4\)", 1),
        ("k_zero", at(good, body + 8, "<I", 0), w + r"k = 0 must be in 1\.\.cols \(4\)", 1),
        ("rows_cols_numel", at(good, body, "<Q", 7), w + r"rows\*cols = 7\*4 does not match 24 elements", 1),
        ("rows_overflow", at(good, body, "<Q", 2**62), w + r"rows\*cols = \d+\*4 does not match 24 elements", 1),
        ("huge_basis", at(good, body + 8, "<II", 5000, 5000), w + r"basis k\*cols = 5000\*5000 exceeds 2\^24", 1),
        ("huge_basis_u32", at(good, body + 8, "<II", 2**32 - 1, 2**32 - 1),
         w + r"basis k\*cols = 4294967295\*4294967295 exceeds 2\^24", 1),
        ("basis_inf", at(good, body + 20 + 4, "<f", np.inf), w + r"basis\[1\] is not finite", 1),
        ("basis_nan", at(good, body + 20 + 28, "<f", np.nan), w + r"basis\[7\] is not finite", 1),
        ("basis_f16_inf", at(f16, body16 + 20 + 2 * 3, "<H", 0x7C00), w + r"basis\[3\] is not finite", 1),
        ("basis_f16_nan", at(f16, body16 + 20, "<H", 0xFE00), w + r"basis\[0\] is not finite", 1),
        ("mean_nan", at(good, body + 20 + 32 + 8, "<f", np.nan), w + r"mean\[2\] is not finite", 1),
        ("version_1", at(good, 4, "<H", 1), w + "the transform stage needs format version 2, the payload is "
                                                "version 1", 2),
        ("version_6", at(good, 4, "<H", 6), r"unsupported format version 6 \(this library reads 1 to 5\)", 2),
        ("truncated_basis", unchecked([q, aff, TransformStage(6, 2, 4, np.ones(7, np.float32))]),
         w + r"truncated: needs 32 bytes, 28 remain", 1),
        ("truncated_mean", unchecked([q, aff, TransformStage(6, 2, 4, np.ones(8, np.float32), mean=np.ones(3))]),
         w + r"truncated: needs 48 bytes, 44 remain", 1),
        ("truncated_header", with_crc(no_mean[:body - 4] + struct.pack("<I", 10) + bytes(10)),
         w + r"truncated: needs 4 bytes, 2 remain", 1),
        ("extra_basis", unchecked([q, aff, TransformStage(6, 2, 4, np.ones(9, np.float32))]),
         w + "4 unused bytes at the end of the body", 1),
        ("layout_2", at(good, body + 16, "<B", 2), w + "layout 2 is not 0 or 1", 1),
        ("basis_dtype_16", at(good, body + 17, "<B", 16), w + r"basis_dtype 16 is not 1 \(float32\) or 10", 1),
        ("has_mean_2", at(good, body + 18, "<B", 2), w + "has_mean must be 0 or 1", 1),
        ("reserved", at(good, body + 19, "<B", 1), w + "reserved byte is not zero", 1),
        ("after_codebook", unchecked([q, CodebookStage(np.arange(5, dtype=np.float32)), tf]),
         w + "transform needs float32 coefficients from an affine stage", 1),
        ("transform_first", unchecked([tf]), r"stage 1 \(transform\): transform needs float32 coefficients", 1),
        ("two_transforms", unchecked([q, aff, tf, tf]), r"stage 4 \(transform\): more than one transform stage", 1),
        ("after_cast", unchecked([q, aff, CastStage(FLOAT16), tf], FLOAT16),
         r"stage 4 \(transform\): transform needs float32 coefficients", 1),
        ("no_cast", unchecked([q, aff, tf], FLOAT16), r"does not produce a float16 tensor", 1),
        # the affine stage covers rows*k = 12 coefficients, not numel = 24
        ("affine_covers_numel", at(good, affine_body, "<Q", 12),
         r"stage 2 \(affine\): outer\*channels\*inner = 12\*2\*1 does not match 12 elements", 1),
    ]


CHILD = r"""
import json, sys
import numpy as np
import onnxruntime as ort
import onnx_l2c
from helpers import native_decode
from onnx_l2c.codec import native
from onnx_l2c.errors import L2CError

payloads, models = json.loads(sys.argv[1]), json.loads(sys.argv[2])
results = {"native": {}, "info": {}, "fast": {}, "custom_op": {}}
for label, hexed in payloads.items():
    for mode, fn in (("native", native_decode), ("info", native.payload_info)):
        try:
            fn(bytes.fromhex(hexed))
            results[mode][label] = None
        except L2CError as exc:
            results[mode][label] = [exc.code, str(exc)]
feeds = {"x": np.ones((3, 24), np.float32)}
for label, path in models.items():
    for mode in ("fast", "custom_op"):
        try:
            if mode == "fast":
                onnx_l2c.InferenceSession(path).run(None, feeds)
            else:
                so = ort.SessionOptions()
                so.register_custom_ops_library(onnx_l2c.custom_op_library())
                ort.InferenceSession(path, so).run(None, feeds)
            results[mode][label] = None
        except Exception as exc:
            results[mode][label] = f"{type(exc).__name__}: {exc}"
print(json.dumps(results))
"""

# cases also run as the w1 weight of a model, through the fast loader and the custom op
MODEL_CASES = ["k_above_cols", "rows_cols_numel", "huge_basis", "basis_inf", "version_1", "truncated_basis",
               "two_transforms"]


def test_native_rejects_bad_transforms(tmp_path):
    cases = bad_payloads()
    assert len({c[0] for c in cases}) == len(cases)
    ok = weight_recipes()
    models = {}
    for label in MODEL_CASES:
        payload = next(c[1] for c in cases if c[0] == label)
        weights = {"w1": (payload, FLOAT, (24, 16))}  # declared as the good model's w1
        weights["w2"] = (serialize(ok["w2"]), FLOAT16, ok["w2"].dims)
        models[label] = str(write_compressed(tmp_path / label, weights))
    code = ("import sys; sys.argv = ['child', %r, %r]\n"
            % (json.dumps({c[0]: c[1].hex() for c in cases}), json.dumps(models)) + CHILD)
    proc = run_isolated(code, timeout=300)
    assert proc.returncode == 0, f"child crashed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for label, _, pattern, err_code in cases:
        for mode in ("native", "info"):
            got = results[mode][label]
            assert got is not None, f"{mode}/{label}: accepted"
            assert got[0] == err_code and re.search(pattern, got[1]), \
                f"{mode}/{label}: code {got[0]}, {got[1]!r} does not match {pattern!r}"
    for label in MODEL_CASES:
        for mode in ("fast", "custom_op"):
            err = results[mode][label]
            assert err is not None, f"{mode}/{label}: loaded without error"
            assert "w1" in err, f"{mode}/{label}: tensor not named: {err}"


FUZZ = """
    import pickle, struct, zlib
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
            for bit in (0, 3, 6, 7):
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
    """Every truncation fails cleanly; every single-bit flip (CRC recomputed, so the parser sees
    it) decodes or fails cleanly. In a child process: a crash fails the test."""
    recipes = [transform_recipe(6, 2, 4, seed=31),
               transform_recipe(5, 3, 4, layout=1, basis_dtype=FLOAT16, mean=False, dtype=FLOAT16, seed=32),
               transform_recipe(4, 1, 3, dtype=BFLOAT16, affine_axis=0, seed=33)]
    path = tmp_path / "payloads.pkl"
    path.write_bytes(pickle.dumps([serialize(r) for r in recipes]))
    proc = run_isolated(FUZZ % str(path))
    assert proc.returncode == 0, f"child crashed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip().splitlines()[-1] == "BAD []"


def _tf(**changes) -> Recipe:
    """A valid [6, 4] float32 transform recipe with some TransformStage fields changed."""
    fields = dict(rows=6, k=2, cols=4, basis=np.ones(8, np.float32), layout=0, basis_dtype=FLOAT, mean=None)
    fields.update(changes)
    coded = fields["rows"] * fields["k"]
    stages = [EntropyStage(np.arange(coded) % 3), AffineStage(1, 1, coded, 0.0, np.ones(1, np.float32)),
              TransformStage(**fields)]
    return Recipe(FLOAT, (6, 4), stages)


@pytest.mark.parametrize("recipe,pattern", [
    (_tf(k=5, basis=np.ones(20)), r"transform stage k = 5 must be in 1\.\.cols \(4\)"),
    (_tf(k=0, basis=np.ones(0)), r"transform stage k = 0 must be in 1\.\.cols"),
    (_tf(rows=7), r"transform stage rows\*cols = 7\*4 does not match 24 elements"),
    (_tf(rows=4, cols=6, k=4096, basis=np.ones(1)), r"k = 4096 must be in 1\.\.cols \(6\)"),
    (_tf(rows=1, k=4097, cols=4097, basis=np.ones(1)), rf"basis k\*cols = 4097\*4097 exceeds {TransformStage.MAX_BASIS}"),
    (_tf(basis=np.ones(7)), r"transform stage basis needs 2\*4 finite values, got 7"),
    (_tf(basis=np.array([1, 2, np.inf, 4, 5, 6, 7, 8])), "transform stage basis needs 2\\*4 finite values"),
    (_tf(basis=np.full(8, 1e39)), "transform stage basis needs 2\\*4 finite values"),  # inf as float32
    (_tf(basis=np.full(8, np.nan)), "finite values"),
    (_tf(basis=np.full(8, 0.1), basis_dtype=FLOAT16), "exactly representable in float16"),
    (_tf(basis=np.full(8, 70000.0), basis_dtype=FLOAT16), "exactly representable in float16"),
    (_tf(basis_dtype=BFLOAT16), "transform stage basis_dtype 16"),
    (_tf(layout=2), r"transform stage layout 2 not in \(0, 1\)"),
    (_tf(mean=np.ones(3)), "transform stage mean needs 4 finite values, got 3"),
    (_tf(mean=np.array([0, 1, np.nan, 2])), "transform stage mean needs 4 finite values"),
    (_tf(rows=6.0), "must be integers"),
    (Recipe(FLOAT, (6, 4), [EntropyStage(np.arange(12) % 3), CodebookStage(np.ones(3)),
                            TransformStage(6, 2, 4, np.ones(8))]), "invalid stage sequence"),
    (Recipe(FLOAT16, (6, 4), _tf().stages), "invalid stage sequence"),
    (Recipe(FLOAT, (6, 4), [*_tf().stages, TransformStage(6, 2, 4, np.ones(8))]), "invalid stage sequence"),
    (Recipe(FLOAT, (6, 4), [EntropyStage(np.arange(24) % 3), *_tf().stages[1:]]),
     "entropy stage has 24 symbols for 12 elements"),
    (Recipe(FLOAT, (6, 4), [_tf().stages[0], AffineStage(1, 1, 24, 0.0, np.ones(1)), _tf().stages[2]]),
     "affine stage layout 1x1x24 does not cover 12 elements"),
])
def test_python_side_rejects_what_the_decoder_rejects(recipe, pattern):
    with pytest.raises(L2CError, match=pattern):
        serialize(recipe)
    with pytest.raises(L2CError, match=pattern):
        reconstruct(recipe)


def test_float16_basis_accepts_exact_values():
    """Exactly representable float16 values pass, including ±0, subnormals and ±65504."""
    basis = np.array([0.0, -0.0, 2.0**-24, -(2.0**-20), 65504.0, -65504.0, 1.5, np.float16(0.1)], np.float32)
    recipe = _tf(basis=basis, basis_dtype=FLOAT16)
    assert_bit_identical([reconstruct(recipe)], [native_decode(serialize(recipe))], "float16 edge values")


def test_every_float16_basis_value_converts_exactly():
    """All 63488 finite float16 values as a 1 x 63488 basis (k = 1, coefficient 1): the decoder's
    float16 -> float32 conversion (subnormals included) is exact. 0 + b turns -0 into +0."""
    half = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    basis = half[np.isfinite(half)].astype(np.float32)
    cols = basis.size
    recipe = Recipe(FLOAT, (1, cols), [EntropyStage(np.ones(1, np.int32)),
                                       AffineStage(1, 1, 1, 0.0, np.ones(1, np.float32)),
                                       TransformStage(1, 1, cols, basis, 0, FLOAT16)])
    out = native_decode(serialize(recipe)).reshape(-1)
    assert_bit_identical([np.float32(0.0) + basis], [out], "float16 basis values")
    assert_bit_identical([reconstruct(recipe).reshape(-1)], [out], "reconstruct")
