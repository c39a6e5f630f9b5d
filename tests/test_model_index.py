"""The sidecar index (issue 18, docs/FORMAT.md "Sidecar index"): the plain
graph and every tensor from the C API (l2c_model_*), for any onnxruntime
binding; the Python fast loader through the same index; hostile indexes
refused without a crash; files of the previous format still load."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders
import onnx_l2c
from helpers import ROOT, assert_bit_identical, run_all_paths, run_isolated, run_plain, save
from onnx_l2c.codec import STORAGE
from onnx_l2c.codec.index import OP_COPY, TRAILER_BYTES, read_index
from onnx_l2c.codec.native import NativeModel
from onnx_l2c.errors import LimitError, PayloadError, VersionError
from onnx_l2c.graph.edit import VIRTUAL_LOCATION

GOLDEN_V5 = ROOT / "tests" / "data" / "models_v5"


def _mixed_model(rng: np.random.Generator) -> onnx.ModelProto:
    """float32 and float16 weights, an int8 QDQ weight and an int4 one (opset 21)."""
    w = rng.standard_normal((64, 96)).astype(np.float32) * 0.1
    h = rng.standard_normal((96, 48)).astype(np.float16)
    q8 = rng.integers(-127, 128, (48, 40), dtype=np.int8)
    q4 = np.clip(np.round(rng.laplace(0, 2.0, (40, 33))), -8, 7).astype(np.int64)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(h, "h"), numpy_helper.from_array(q8, "q8"),
             numpy_helper.from_array(np.float32(0.02), "s8"),
             helper.make_tensor("q4", TensorProto.INT4, q4.shape, q4.reshape(-1).tolist()),
             numpy_helper.from_array(np.float32(0.05), "s4")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("Cast", ["a"], ["a16"], to=TensorProto.FLOAT16),
             helper.make_node("MatMul", ["a16", "h"], ["b16"]),
             helper.make_node("Cast", ["b16"], ["b"], to=TensorProto.FLOAT),
             helper.make_node("DequantizeLinear", ["q8", "s8"], ["w8"]),
             helper.make_node("MatMul", ["b", "w8"], ["c"]),
             helper.make_node("DequantizeLinear", ["q4", "s4"], ["w4"]),
             helper.make_node("MatMul", ["c", "w4"], ["y"])]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (None, 64))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (None, 33))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("indexed")
    src = save(_mixed_model(np.random.default_rng(4)), folder / "mixed.onnx")
    out = folder / "small.onnx"
    result = onnx_l2c.compress(src, out, preset="lossless")
    assert {t.dtype for t in result.tensors} == {"float32", "float16", "int8", "int4"}
    return out


def _feeds(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((5, 64)).astype(np.float32)}


def _native(path: Path, **kwargs) -> NativeModel:
    return NativeModel(path.read_bytes(), path.with_name(path.name + ".l2c").read_bytes(), **kwargs)


def _session(model: NativeModel) -> ort.InferenceSession:
    """What a C/C++/C#/Java caller does with the C API: the tensors through
    AddExternalInitializers, the session from the plain graph's bytes."""
    so = ort.SessionOptions()
    tensors = model.tensors()
    values = []
    for t in tensors:
        if t.dtype == TensorProto.INT4:  # packed: onnxruntime reads the bytes from the front of the buffer
            memory = np.zeros(t.dims, np.uint8)
            memory.reshape(-1)[: t.data.size] = t.data
        else:
            memory = t.data.view(STORAGE[t.dtype]).reshape(t.dims)
        values.append(ort.OrtValue.ortvalue_from_numpy_with_onnx_type(memory, t.dtype))
    so.add_external_initializers([t.name for t in tensors], values)
    return ort.InferenceSession(model.graph(), so)


def test_the_c_api_gives_the_plain_graph_and_every_tensor_bit_for_bit(compressed, rng):
    plain_reference = compressed.parent / "plain.onnx"
    onnx_l2c.decompress(compressed, plain_reference)
    with _native(compressed) as model:
        graph = onnx.ModelProto()
        graph.ParseFromString(model.graph())
        assert not [n for n in graph.graph.node if n.domain == "ai.onnx_l2c"]
        assert not [o for o in graph.opset_import if o.domain == "ai.onnx_l2c"]
        external = {t.name: t for t in graph.graph.initializer if t.data_location == TensorProto.EXTERNAL}
        assert all(next(e.value for e in t.external_data if e.key == "location") == VIRTUAL_LOCATION
                   for t in external.values())
        tensors = model.tensors()
        assert sorted(external) == sorted(t.name for t in tensors) == ["h", "q4", "q8", "w"]
        expected = {t.name: t for t in onnx.load(str(plain_reference)).graph.initializer}
        for t in tensors:
            ref = expected[t.name]
            assert (t.dtype, t.dims) == (ref.data_type, tuple(ref.dims)) == (external[t.name].data_type,
                                                                            tuple(external[t.name].dims))
            assert t.data.tobytes() == ref.raw_data, t.name  # packed int4 included
        feeds = _feeds(rng)
        assert_bit_identical(run_plain(plain_reference, feeds), _session(model).run(None, feeds), "C API session")


def test_onnxruntime_copies_the_tensors_while_it_creates_the_session(compressed, rng):
    """The Python loader closes the native model once the session exists; this
    pins that onnxruntime no longer reads that memory then."""
    feeds = _feeds(rng)
    model = _native(compressed)
    tensors = model.tensors()
    session = _session(model)
    before = session.run(None, feeds)
    for t in tensors:
        t.data[:] = 0
    assert_bit_identical(before, session.run(None, feeds), "after the tensors' memory was zeroed")
    model.close()
    assert_bit_identical(before, session.run(None, feeds), "after the model was closed")


def _plain_outputs(compressed: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The decompressed model's outputs (not the custom op's: onnxruntime fuses
    the plain graph's int4 DequantizeLinear + MatMul, which rounds differently)."""
    plain = compressed.with_name("reference_plain.onnx")
    if not plain.exists():
        onnx_l2c.decompress(compressed, plain)
    return run_plain(plain, feeds)


def test_the_fast_loader_goes_through_the_index_without_rewriting_the_graph(compressed, rng, monkeypatch):
    feeds = _feeds(rng)
    expected = _plain_outputs(compressed, feeds)

    def no_rewrite(*args, **kwargs):
        raise AssertionError("the graph was parsed and rewritten in Python")

    monkeypatch.setattr("onnx_l2c.load.compressed.CompressedModel", no_rewrite)
    got = onnx_l2c.InferenceSession(compressed).run(None, feeds)
    assert_bit_identical(expected, got, "fast loader through the index")


def test_the_fast_loader_imports_neither_onnx_nor_ml_dtypes(compressed, rng):
    """onnx and ml_dtypes take most of a second to import, several times a
    small model's session creation: loading through the index needs neither
    (int4 weights included), and still runs the model."""
    x = rng.standard_normal((2, 64)).astype(np.float32)
    proc = run_isolated(f"""
        import sys
        import numpy as np
        import onnx_l2c
        session = onnx_l2c.InferenceSession({str(compressed)!r})
        y = session.run(None, {{"x": np.array({x.tolist()!r}, np.float32)}})[0]
        print(sorted(m for m in ("onnx", "ml_dtypes") if m in sys.modules), y.shape)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[-2] == "[] (2, 33)"


def test_threads_and_the_decode_budget(compressed):
    with _native(compressed, threads=1) as one, _native(compressed, threads=3) as three:
        assert [t.data.tobytes() for t in one.tensors()] == [t.data.tobytes() for t in three.tensors()]
    with pytest.raises(LimitError, match="max_decoded_bytes"):
        _native(compressed, max_decoded_bytes=1000)


def test_an_edited_model_file_is_refused_by_the_c_api_and_rewritten_by_the_python_loader(compressed, tmp_path, rng):
    folder = tmp_path / "edited"
    folder.mkdir()
    shutil.copy(compressed, folder / compressed.name)
    shutil.copy(compressed.with_name(compressed.name + ".l2c"), folder / (compressed.name + ".l2c"))
    model = onnx.load(str(folder / compressed.name), load_external_data=False)
    model.doc_string = "edited after compression"
    onnx.save(model, str(folder / compressed.name))
    with pytest.raises(PayloadError, match="changed after compression"):
        _native(folder / compressed.name)
    feeds = _feeds(rng)
    assert_bit_identical(_plain_outputs(compressed, feeds), onnx_l2c.InferenceSession(folder / compressed.name)
                         .run(None, feeds), "fast loader, edited file")


@pytest.mark.parametrize("name", ["mlp_lossless", "mlp_int8"])
def test_files_of_format_5_without_an_index_still_load(name, tmp_path):
    """Whole models written by the format-5 writer (tests/data/models_v5, kept
    as they were): every load path gives the outputs recorded then; the C
    API says there is no index."""
    path = GOLDEN_V5 / f"{name}.onnx"
    assert read_index(path.with_name(path.name + ".l2c").read_bytes()) is None
    io = np.load(GOLDEN_V5 / f"{name}_io.npz")
    feeds = {"x": io["x"]}
    paths = run_all_paths(path, tmp_path, feeds)
    assert_bit_identical([io["y"]], paths["fast"], "fast loader")
    assert_bit_identical([io["y"]], paths["custom_op"], "custom op")
    with pytest.raises(VersionError, match="no index"):
        _native(path)


def test_a_weight_that_a_subgraph_outputs_leaves_the_index_out(tmp_path, rng):
    """onnxruntime takes external initializers only in the main graph, and a
    subgraph output cannot be an outer value: no index (the C API says so),
    and the Python loader rewrites the graph as before."""
    big = rng.standard_normal((32, 64)).astype(np.float32)
    branch = helper.make_graph([], "then", [], [helper.make_tensor_value_info("k", TensorProto.FLOAT, (32, 64))],
                               [numpy_helper.from_array(big, "k")])
    other = helper.make_graph([helper.make_node("Constant", [], ["z"], value=numpy_helper.from_array(
        np.zeros((32, 64), np.float32), "zv"))], "else", [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, (32, 64))])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)]
    graph = helper.make_graph(nodes, "if", [helper.make_tensor_value_info("c", TensorProto.BOOL, ())],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (32, 64))])
    src = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
               tmp_path / "if.onnx")
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(src, out, preset="lossless")
    assert read_index(out.with_name(out.name + ".l2c").read_bytes()) is None
    with pytest.raises(VersionError, match="no index"):
        _native(out)
    feeds = {"c": np.array(True)}
    assert_bit_identical(run_plain(src, feeds), onnx_l2c.InferenceSession(out).run(None, feeds), "fast loader")


def test_the_index_costs_little_beside_the_payloads(compressed):
    side = compressed.with_name(compressed.name + ".l2c").read_bytes()
    index = read_index(side)
    inserted = sum(len(b) for kind, _, b in index.ops if kind != OP_COPY)
    copied = sum(b for kind, _, b in index.ops if kind == OP_COPY)
    assert copied > inserted  # the model file's records are reused, not stored again
    offset, length = struct.unpack_from("<QQ", side, len(side) - TRAILER_BYTES + 8)
    assert length + TRAILER_BYTES < 200 * len(index.tensors) + 400, (length, len(index.tensors))


HOSTILE_CHILD = """
import json, sys
from pathlib import Path
from onnx_l2c.codec.native import NativeModel
from onnx_l2c.errors import L2CError
graph = Path(sys.argv[1]).read_bytes()
cases = json.loads(Path(sys.argv[2]).read_text())
out = {}
for label, hexed in cases.items():
    try:
        with NativeModel(graph, bytes.fromhex(hexed), 64 << 20, 2) as m:
            m.graph(); m.tensors()
        out[label] = None
    except L2CError as e:
        out[label] = [e.code, str(e)]
print(json.dumps(out))
"""


def _refresh(side: bytearray, graph: bytes) -> bytes:
    """The sidecar with its index's graph fields and both CRCs made valid
    again, so the checks behind them are reached."""
    offset, length = struct.unpack_from("<QQ", side, len(side) - TRAILER_BYTES + 8)
    if offset + length + TRAILER_BYTES == len(side) and length >= 24:
        struct.pack_into("<QI", side, offset + 8, len(graph), zlib.crc32(graph))
        struct.pack_into("<I", side, len(side) - TRAILER_BYTES + 24, zlib.crc32(bytes(side[offset:offset + length])))
    return bytes(side)


def test_hostile_indexes_are_refused_without_a_crash(compressed, tmp_path):
    graph = compressed.read_bytes()
    side = compressed.with_name(compressed.name + ".l2c").read_bytes()
    offset, length = struct.unpack_from("<QQ", side, len(side) - TRAILER_BYTES + 8)
    rng = np.random.default_rng(0)
    cases: dict[str, str] = {}
    for cut in (1, 8, TRAILER_BYTES, TRAILER_BYTES + 5, TRAILER_BYTES + length // 2):
        cases[f"truncated by {cut}"] = side[:-cut].hex()
    for i in range(60):  # one byte of the index changed, CRCs and graph fields refreshed
        mutated = bytearray(side)
        at = offset + 20 + int(rng.integers(0, length - 20))
        mutated[at] ^= int(rng.integers(1, 256))
        cases[f"index byte {at - offset}"] = _refresh(mutated, graph).hex()
    for field, value in (("plain size", 2 ** 40), ("op count", 2 ** 31), ("tensor count", 2 ** 31)):
        mutated = bytearray(side)
        where = {"plain size": (offset + 20, "<Q"), "op count": (offset + 28, "<I"),
                 "tensor count": (offset + 32, "<I")}[field]
        struct.pack_into(where[1], mutated, where[0], value)
        cases[field] = _refresh(mutated, graph).hex()
    mutated = bytearray(side)
    struct.pack_into("<Q", mutated, len(side) - TRAILER_BYTES + 8, 2 ** 63)
    cases["index offset"] = bytes(mutated).hex()
    case_file = tmp_path / "cases.json"
    case_file.write_text(json.dumps(cases))
    proc = run_isolated(f"import sys; sys.argv = ['child', {str(compressed)!r}, {str(case_file)!r}]\n"
                        + HOSTILE_CHILD, timeout=300)
    assert proc.returncode == 0, f"child crashed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for label in ("truncated by 1", "truncated by 8", "plain size", "op count", "tensor count", "index offset"):
        assert results[label] is not None, label
        assert results[label][0] in (1, 2, 5), results[label]
    for label in ("plain size", "op count", "tensor count"):
        assert "sidecar index" in results[label][1], results[label]
    # a changed byte is either refused or still a valid index (e.g. a dim's high byte of an insert's text)
    assert sum(r is not None for r in results.values()) >= len(results) // 2


def test_the_fuzzers_model_seeds_are_the_current_index(compressed):
    """runtime/fuzz/seeds_model holds a whole model as the model fuzzer reads it
    (u32 graph size, graph, sidecar); it must be accepted by the current reader."""
    seed = (ROOT / "runtime" / "fuzz" / "seeds_model" / "mlp_int8.bin").read_bytes()
    (n,) = struct.unpack_from("<I", seed)
    with NativeModel(seed[4:4 + n], seed[4 + n:]) as model:
        assert len(model.tensors()) == 2


def test_a_large_payloads_crc_is_checked_beside_its_decode_and_wins(tmp_path, rng):
    """A payload of 1 MiB or more has its CRC checked by another task than its
    decode (runtime/src/model.cc); a damaged one still fails with the CRC's
    verdict, on one thread or several, and nothing decoded from it is kept."""
    w = rng.standard_normal((700, 700)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, (None, 700))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (None, 700))],
                              [numpy_helper.from_array(w, "w")])
    src = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
               tmp_path / "big.onnx")
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(src, out, preset="lossless")
    side = bytearray(out.with_name(out.name + ".l2c").read_bytes())
    (t,) = read_index(bytes(side)).tensors
    assert t.length >= 1 << 20
    with NativeModel(out.read_bytes(), bytes(side), threads=2) as model:
        assert model.tensors()[0].data.tobytes() == w.tobytes()
    side[t.offset + t.length // 2] ^= 0x40
    for threads in (1, 2):
        with pytest.raises(PayloadError, match="tensor 'w': CRC mismatch"):
            NativeModel(out.read_bytes(), bytes(side), threads=threads)


def test_tensors_of_2_mib_and_more_decode_into_their_own_mappings_bit_for_bit(tmp_path, rng):
    """A tensor of 2 MiB or more gets its own 2 MiB-aligned mapping, advised
    for huge pages over its whole 2 MiB blocks (runtime/src/model.cc,
    tensor_buffer): sizes just below, at and above one block, and above two,
    in float32 (lossless) and int8, on one thread and two."""
    sizes = {"under": (1 << 19) - 1, "exact": 1 << 19, "over": (1 << 19) + 3, "two": (1 << 20) + 12345}
    weights = {name: rng.standard_normal(n).astype(np.float32) for name, n in sizes.items()}
    nodes = [helper.make_node("Add", ["x", name], [f"y_{name}"]) for name in weights]
    weights["int8"] = rng.integers(-128, 128, (1 << 21) + 7).astype(np.int8)
    nodes.append(helper.make_node("Identity", ["int8"], ["y_int8"]))
    outputs = [helper.make_tensor_value_info(f"y_{name}", numpy_helper.from_array(w).data_type, (w.size,))
               for name, w in weights.items()]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1,))], outputs,
                              [numpy_helper.from_array(w, name) for name, w in weights.items()])
    src = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "b.onnx")
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(src, out, preset="lossless")
    side = out.with_name(out.name + ".l2c").read_bytes()
    for threads in (1, 2):
        with NativeModel(out.read_bytes(), side, threads=threads) as model:
            got = {t.name: t.data for t in model.tensors()}
            assert set(got) == set(weights)
            for name, w in weights.items():
                assert got[name].ctypes.data % 64 == 0
                assert got[name].tobytes() == w.tobytes(), name


def test_inspect_says_whether_the_c_api_can_open_the_model(compressed, tmp_path):
    import subprocess
    import sys

    def run(path: Path) -> str:
        proc = subprocess.run([sys.executable, "-P", "-m", "onnx_l2c", "inspect", str(path)], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    info = onnx_l2c.inspect(compressed).index
    assert info["current"] and info["tensors"] == 4 and info["bytes"] < 2000
    assert "loads at the original's speed from the C API" in run(compressed)
    assert onnx_l2c.inspect(GOLDEN_V5 / "mlp_lossless.onnx").index is None
    assert "sidecar index: none" in run(GOLDEN_V5 / "mlp_lossless.onnx")


def _with_record(side: bytes, record: bytes) -> bytes:
    """The sidecar's payloads with another index record and its trailer."""
    from onnx_l2c.codec.index import trailer

    offset = struct.unpack_from("<Q", side, len(side) - TRAILER_BYTES + 8)[0]
    return side[:offset] + record + trailer(offset, len(record), record)


def test_an_index_cannot_expand_or_reuse_what_the_files_hold(compressed):
    """Copies adding up to more than the model file (a small index that would
    build a huge graph), and two tensors on one payload (decoded twice: the
    work would not be linear in the files), are refused."""
    from onnx_l2c.codec.index import INDEX_MAGIC, IndexTensor, apply_delta, build_index

    graph = compressed.read_bytes()
    side = compressed.with_name(compressed.name + ".l2c").read_bytes()
    index = read_index(side)
    plain = apply_delta(graph, index.ops)
    copies = 40
    record = bytearray(INDEX_MAGIC + struct.pack("<B3x", 1))
    record += struct.pack("<QIQII", len(graph), zlib.crc32(graph), copies * len(graph), copies, 0)
    record += struct.pack("<BQQ", OP_COPY, 0, len(graph)) * copies
    with pytest.raises(PayloadError, match="copy more than the model file"):
        NativeModel(graph, _with_record(side, bytes(record)))
    first = index.tensors[0]
    twice = [first, IndexTensor("another", first.dtype, first.dims, first.offset, first.length)]
    with pytest.raises(PayloadError, match="overlap"):
        NativeModel(graph, _with_record(side, build_index(graph, plain, twice)))


def test_the_writer_copies_no_byte_of_the_model_file_twice():
    from onnx_l2c.codec.index import OP_INSERT, apply_delta, graph_delta

    model = onnx.ModelProto(ir_version=8, producer_name="x")
    model.graph.name = "g"
    model.opset_import.add(domain="", version=17)
    original = model.SerializeToString()
    model.graph.node.add(op_type="Relu", input=["a"], output=["b"])
    model.opset_import.add(domain="", version=17)  # a record the original holds once, wanted twice
    target = model.SerializeToString()
    ops = graph_delta(original, target)
    assert apply_delta(original, ops) == target
    assert sum(b for kind, _, b in ops if kind == OP_COPY) <= len(original)
    opset = onnx.OperatorSetIdProto(domain="", version=17).SerializeToString()
    assert any(kind == OP_INSERT and opset in b for kind, _, b in ops)
