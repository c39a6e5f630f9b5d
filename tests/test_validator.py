"""One validator (issue 14): the fast loader, the custom op and `decompress`
accept and reject exactly the same Decode entries, and agree on what an
accepted one decodes to. Every case runs in one child process (a crash fails
the test), through all three paths."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import run_isolated
from onnx_l2c.codec import DOMAIN, FLOAT, FORMAT_VERSION, METADATA_KEY, OP_TYPE, AffineStage, EntropyStage, Recipe, \
    serialize
from onnx_l2c.graph.edit import set_external

SHAPE = (2, 3)
VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]  # what the good payload decodes to
SIDECAR = "m.onnx.l2c"


def _payload() -> bytes:
    stage = EntropyStage(np.arange(6, dtype=np.int32))
    return serialize(Recipe(FLOAT, SHAPE, [stage, AffineStage(1, 1, 6, 0.0, np.full(1, 0.5, np.float32))]))


PAYLOAD = _payload()


def _model() -> onnx.ModelProto:
    """W = Decode(payload), y = Identity(W): the graph declares W only through
    the node's attributes, so each case below decides what is declared."""
    p = TensorProto(name="W@" + SIDECAR, data_type=TensorProto.UINT8, dims=[len(PAYLOAD)])
    set_external(p, SIDECAR, 0, len(PAYLOAD))
    decode = helper.make_node(OP_TYPE, [p.name], ["W"], domain=DOMAIN, dtype=FLOAT, shape=list(SHAPE), tensor="W",
                              sidecar=SIDECAR)
    graph = helper.make_graph([decode, helper.make_node("Identity", ["W"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [p])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.metadata_props.add(key=METADATA_KEY, value=str(FORMAT_VERSION))
    return model


def _decode(m: onnx.ModelProto) -> onnx.NodeProto:
    return m.graph.node[0]


def _payload_init(m: onnx.ModelProto) -> onnx.TensorProto:
    return m.graph.initializer[0]


def _replace(entries, named: str, new: object | None) -> None:
    """Remove the entries called `named` (attributes by name, external-data
    entries by key) from a repeated field, then append `new` if given."""
    for e in [e for e in entries if getattr(e, "name", None) == named or getattr(e, "key", None) == named]:
        entries.remove(e)
    if new is not None:
        entries.append(new)


def _set_attr(m: onnx.ModelProto, name: str, value: object | None) -> None:
    _replace(_decode(m).attribute, name, None if value is None else helper.make_attribute(name, value))


def _external(m: onnx.ModelProto, key: str, value: str | None) -> None:
    entry = None if value is None else onnx.StringStringEntryProto(key=key, value=value)
    _replace(_payload_init(m).external_data, key, entry)


def _inline(m: onnx.ModelProto) -> None:
    p = _payload_init(m)
    del p.external_data[:]
    p.data_location = TensorProto.DEFAULT
    p.raw_data = PAYLOAD


def _float_payload(m: onnx.ModelProto) -> None:
    p = _payload_init(m)
    p.data_type = TensorProto.FLOAT
    p.dims[:] = [len(PAYLOAD) // 4]


def _two_d_payload(m: onnx.ModelProto) -> None:
    _payload_init(m).dims[:] = [len(PAYLOAD) // 2, 2]


def _graph_input(m: onnx.ModelProto) -> None:
    m.graph.input.append(helper.make_tensor_value_info(_payload_init(m).name, TensorProto.UINT8, [len(PAYLOAD)]))


def _duplicate_output(m: onnx.ModelProto) -> None:
    m.graph.node.insert(1, helper.make_node(OP_TYPE, [_payload_init(m).name], ["W"], domain=DOMAIN, dtype=FLOAT,
                                            shape=list(SHAPE)))


def _value_info(elem_type: int, shape: list[int]) -> Callable[[onnx.ModelProto], None]:
    return lambda m: m.graph.value_info.append(helper.make_tensor_value_info("W", elem_type, shape))


def _outer_scope_input(m: onnx.ModelProto) -> None:
    """As _outer_scope, the payload also a main-graph input: not a constant."""
    _outer_scope(m)
    _graph_input(m)


def _extra_input(m: onnx.ModelProto) -> None:
    _decode(m).input.append(_payload_init(m).name)


def _outer_scope(m: onnx.ModelProto) -> None:
    """A Decode node inside each branch of an If, the payload an initializer
    of the main graph: onnxruntime hands it to the op as a constant."""
    decode = _decode(m)
    branches = {}
    for branch in ("then_branch", "else_branch"):
        node = onnx.NodeProto()
        node.CopyFrom(decode)
        node.output[0] = "W_" + branch
        branches[branch] = helper.make_graph(
            [node], branch, [], [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    m.graph.initializer.append(cond)
    m.graph.node.remove(decode)
    m.graph.node.insert(0, helper.make_node("If", ["cond"], ["W"], **branches))


def _identity_chain(m: onnx.ModelProto) -> None:
    """Decode reads Identity(Identity(payload)): onnxruntime's constant
    folding hands the op the payload itself."""
    decode = _decode(m)
    payload = decode.input[0]
    m.graph.node.insert(0, helper.make_node("Identity", ["P1"], ["P2"]))
    m.graph.node.insert(0, helper.make_node("Identity", [payload], ["P1"]))
    decode.input[0] = "P2"


def _identity_in_branch(m: onnx.ModelProto) -> None:
    """As _outer_scope, each branch reading the outer payload through an Identity."""
    _outer_scope(m)
    for attr in m.graph.node[0].attribute:
        decode = attr.g.node[0]
        attr.g.node.insert(0, helper.make_node("Identity", [decode.input[0]], ["P_" + attr.name]))
        decode.input[0] = "P_" + attr.name


def _identity_cycle(m: onnx.ModelProto) -> None:
    decode = _decode(m)
    m.graph.node.insert(0, helper.make_node("Identity", ["P2"], ["P1"]))
    m.graph.node.insert(0, helper.make_node("Identity", ["P1"], ["P2"]))
    decode.input[0] = "P2"


def _constant_node(m: onnx.ModelProto) -> None:
    """The payload initializer (still external data) held by a Constant node instead."""
    payload = _payload_init(m)
    value = onnx.TensorProto()
    value.CopyFrom(payload)
    m.graph.initializer.remove(payload)
    m.graph.node.insert(0, helper.make_node("Constant", [], [payload.name], value=value))


def _sparse_constant(indices_edit: Callable[[np.ndarray], np.ndarray]) -> Callable[[onnx.ModelProto], None]:
    """The payload as a Constant node's sparse_value: its nonzero bytes, in
    reverse order (onnxruntime takes any order), indices edited by `indices_edit`."""
    def edit(m: onnx.ModelProto) -> None:
        payload = _payload_init(m)
        data = np.frombuffer(PAYLOAD, np.uint8)
        where = np.nonzero(data)[0][::-1]
        values = helper.make_tensor("values", TensorProto.UINT8, [len(where)], data[where].tobytes(), raw=True)
        indices = helper.make_tensor("indices", TensorProto.INT64, [len(where)], indices_edit(where).tolist())
        sparse = helper.make_sparse_tensor(values, indices, [len(PAYLOAD)])
        m.graph.initializer.remove(payload)
        m.graph.node.insert(0, helper.make_node("Constant", [], [payload.name], sparse_value=sparse))
    return edit


def _past_the_end(indices: np.ndarray) -> np.ndarray:
    out = indices.copy()
    out[0] = len(PAYLOAD)
    return out


def _edit(fn: Callable[[onnx.ModelProto], None]) -> Callable[[onnx.ModelProto, Path], None]:
    return lambda m, folder: fn(m)


def _sidecar(data: bytes) -> Callable[[onnx.ModelProto, Path], None]:
    def write(m: onnx.ModelProto, folder: Path) -> None:
        (folder / SIDECAR).write_bytes(data)
    return write


def _location(location: str) -> Callable[[onnx.ModelProto, Path], None]:
    def point(m: onnx.ModelProto, folder: Path) -> None:
        (folder.parent / "outside.l2c").write_bytes(PAYLOAD)
        _external(m, "location", location)
    return point


OK = "ok"
# label -> (edit, accepted). Accepted cases decode to VALUES on every path;
# rejected ones fail on every path, with the package's error on the Python ones.
CASES: dict[str, tuple[Callable[[onnx.ModelProto, Path], None], bool]] = {
    "good": (_edit(lambda m: None), True),
    "dtype_string": (_edit(lambda m: _set_attr(m, "dtype", "1")), False),
    "dtype_int64": (_edit(lambda m: _set_attr(m, "dtype", TensorProto.INT64)), False),
    "dtype_float16": (_edit(lambda m: _set_attr(m, "dtype", TensorProto.FLOAT16)), False),
    "dtype_missing": (_edit(lambda m: _set_attr(m, "dtype", None)), False),
    "shape_missing": (_edit(lambda m: _set_attr(m, "shape", None)), False),
    "shape_reversed": (_edit(lambda m: _set_attr(m, "shape", [3, 2])), False),
    "shape_flat": (_edit(lambda m: _set_attr(m, "shape", [6])), False),
    "shape_9_dims": (_edit(lambda m: _set_attr(m, "shape", [1] * 7 + [2, 3])), False),
    "shape_2^40_by_2^40": (_edit(lambda m: _set_attr(m, "shape", [1 << 40, 1 << 40])), False),
    "shape_negative": (_edit(lambda m: _set_attr(m, "shape", [-2, -3])), False),
    "shape_floats": (_edit(lambda m: _set_attr(m, "shape", [2.0, 3.0])), False),
    # onnxruntime reads a missing or zero length as the tensor's size
    "length_zero": (_edit(lambda m: _external(m, "length", "0")), True),
    "length_missing": (_edit(lambda m: _external(m, "length", None)), True),
    "length_plus_one": (_edit(lambda m: _external(m, "length", str(len(PAYLOAD) + 1))), False),
    "length_minus_one": (_edit(lambda m: _external(m, "length", str(len(PAYLOAD) - 1))), False),
    "offset_missing": (_edit(lambda m: _external(m, "offset", None)), True),
    "offset_past_end": (_edit(lambda m: _external(m, "offset", "1000")), False),
    "offset_text": (_edit(lambda m: _external(m, "offset", "abc")), False),
    "no_location": (_edit(lambda m: _external(m, "location", None)), False),
    "location_outside": (_location("../outside.l2c"), False),
    "location_absolute": (_location("/dev/zero"), False),
    "inline_payload": (_edit(_inline), True),
    "float_payload": (_edit(_float_payload), False),
    "two_d_payload": (_edit(_two_d_payload), False),
    "payload_is_graph_input": (_edit(_graph_input), False),
    "duplicate_output": (_edit(_duplicate_output), False),
    "extra_input": (_edit(_extra_input), False),
    "outer_scope_payload": (_edit(_outer_scope), True),
    # onnxruntime makes a Constant node an initializer, and folds Identity
    # chains to one (graph optimizations on, the default)
    "identity_chain": (_edit(_identity_chain), True),
    "identity_in_branch": (_edit(_identity_in_branch), True),
    "identity_of_graph_input": (_edit(lambda m: (_identity_chain(m), _graph_input(m))), False),
    "identity_cycle": (_edit(_identity_cycle), False),
    "constant_node": (_edit(_constant_node), True),
    "sparse_constant": (_edit(_sparse_constant(lambda i: i)), True),
    "sparse_index_past_end": (_edit(_sparse_constant(_past_the_end)), False),
    "outer_scope_graph_input": (_edit(_outer_scope_input), False),
    "value_info_agrees": (_edit(_value_info(TensorProto.FLOAT, list(SHAPE))), True),
    # onnxruntime's inference from the attributes overrides a value_info shape
    # (the op never sees it), so every path follows the attributes
    "value_info_other_shape": (_edit(_value_info(TensorProto.FLOAT, [3, 2])), True),
    "value_info_other_type": (_edit(_value_info(TensorProto.FLOAT16, list(SHAPE))), False),
    "truncated_sidecar": (_sidecar(PAYLOAD[:-9]), False),
    "corrupt_sidecar": (_sidecar(PAYLOAD[:40] + bytes([PAYLOAD[40] ^ 1]) + PAYLOAD[41:]), False),
}

CHILD = r"""
import json, sys
import onnxruntime as ort
import onnx_l2c
out = {}
for label, path in json.loads(sys.argv[1]):
    for mode in ("fast", "custom_op", "decompress"):
        try:
            if mode == "fast":
                y = onnx_l2c.InferenceSession(path).run(None, {})[0]
            elif mode == "custom_op":
                so = ort.SessionOptions()
                so.register_custom_ops_library(onnx_l2c.custom_op_library())
                y = ort.InferenceSession(path, so).run(None, {})[0]
            else:
                y = ort.InferenceSession(str(onnx_l2c.decompress(path, path + ".plain.onnx"))).run(None, {})[0]
            out[f"{label}/{mode}"] = ["ok", list(y.shape), y.reshape(-1).tolist()]
        except Exception as exc:
            l2c = isinstance(exc, onnx_l2c.L2CError)
            out[f"{label}/{mode}"] = [type(exc).__name__ if l2c else "other:" + type(exc).__name__, str(exc)]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> dict[str, list]:
    root = tmp_path_factory.mktemp("validator")
    paths = []
    for label, (edit, _) in CASES.items():
        folder = root / label
        folder.mkdir()
        (folder / SIDECAR).write_bytes(PAYLOAD)
        model = _model()
        edit(model, folder)
        onnx.save(model, str(folder / "m.onnx"))
        paths.append((label, str(folder / "m.onnx")))
    proc = run_isolated("import sys; sys.argv = ['child', %r]\n" % json.dumps(paths) + CHILD, timeout=300)
    assert proc.returncode == 0, f"child crashed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("label", list(CASES))
def test_the_three_load_paths_agree(verdicts, label):
    accepted = CASES[label][1]
    results = {mode: verdicts[f"{label}/{mode}"] for mode in ("fast", "custom_op", "decompress")}
    for mode, result in results.items():
        if accepted:
            assert result == ["ok", list(SHAPE), VALUES], f"{label}/{mode}: {result}"
            continue
        kind, message = result
        assert kind != "ok", f"{label}/{mode} was accepted: {result}"
        if mode == "custom_op":  # onnxruntime's own refusals name what it likes; the op's name the tensor
            assert "onnx_l2c Decode" not in message or "tensor 'W'" in message, f"{label}/{mode}: {message}"
        else:
            assert "W" in message, f"{label}/{mode} does not name the tensor: {message}"
            assert not kind.startswith("other:"), f"{label}/{mode}: not the package's error: {kind} {message}"
            assert "m.onnx" in message, f"{label}/{mode} does not name the file: {message}"


def _save(model: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir()
    (folder / SIDECAR).write_bytes(PAYLOAD)
    onnx.save(model, str(folder / "m.onnx"))
    return folder / "m.onnx"


def test_identity_chain_needs_constant_folding_in_the_custom_op(tmp_path):
    """With graph optimizations disabled onnxruntime does not fold the chain:
    the op refuses it and says why (the Python loaders accept the file)."""
    model = _model()
    _identity_chain(model)
    path = _save(model, tmp_path / "m")
    proc = run_isolated(f"""
        import onnxruntime as ort, onnx_l2c
        so = ort.SessionOptions()
        so.register_custom_ops_library(onnx_l2c.custom_op_library())
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            ort.InferenceSession({str(path)!r}, so)
        except Exception as exc:
            print("refused:", exc)
        """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused:" in proc.stdout and "tensor 'W'" in proc.stdout, proc.stdout
    assert "only when graph optimizations are enabled" in proc.stdout, proc.stdout


def test_decompress_drops_the_payload_chain_and_keeps_what_else_reads(tmp_path):
    """The restored graph holds the weight in place of the Decode node; the
    Identity nodes and the payload go unless something else still reads them."""
    from onnx_l2c import decompress
    model = _model()
    _identity_chain(model)
    plain = onnx.load(str(decompress(_save(model, tmp_path / "chain"), tmp_path / "chain.plain.onnx")))
    assert [n.op_type for n in plain.graph.node] == ["Identity"]  # y = Identity(W)
    assert [t.name for t in plain.graph.initializer] == ["W"]

    model = _model()
    _identity_chain(model)
    model.graph.output.append(helper.make_tensor_value_info("P1", TensorProto.UINT8, None))
    plain = onnx.load(str(decompress(_save(model, tmp_path / "shared"), tmp_path / "shared.plain.onnx")))
    assert [(n.op_type, list(n.input)) for n in plain.graph.node] == [("Identity", ["W@" + SIDECAR]),
                                                                       ("Identity", ["W"])]
    assert sorted(t.name for t in plain.graph.initializer) == ["W", "W@" + SIDECAR]
    kept = next(t for t in plain.graph.initializer if t.name == "W@" + SIDECAR)
    assert kept.raw_data == PAYLOAD  # read into the graph: the output lives in another folder


def test_other_folded_producers_are_refused_by_the_python_loaders(tmp_path):
    """onnxruntime may fold other operators into a constant payload (here a
    Concat of two initializers) and the custom op then accepts it; the Python
    loaders refuse such a file, naming the operator (docs/FORMAT.md)."""
    from onnx_l2c import InferenceSession, PayloadError, decompress
    model = _model()
    half = len(PAYLOAD) // 2
    decode = _decode(model)
    model.graph.initializer.pop()
    model.graph.initializer.extend([helper.make_tensor("A", TensorProto.UINT8, [half], PAYLOAD[:half], raw=True),
                                    helper.make_tensor("B", TensorProto.UINT8, [len(PAYLOAD) - half],
                                                       PAYLOAD[half:], raw=True)])
    decode.input[0] = "P"
    model.graph.node.insert(0, helper.make_node("Concat", ["A", "B"], ["P"], axis=0))
    path = _save(model, tmp_path / "concat")
    for load in (lambda: InferenceSession(path), lambda: decompress(path, tmp_path / "plain.onnx")):
        with pytest.raises(PayloadError, match="output of a Concat node"):
            load()
