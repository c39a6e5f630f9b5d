"""Every edit onnx_l2c makes to a graph, on onnx's protobuf API and its
`external_data_helper`.

* write: a weight becomes `W = Decode(W.payload)` with the payload as
  external data in the sidecar (`replace_with_decode`, `drop_initializers`,
  `mark_compressed`);
* load: each Decode node found (`decode_nodes`) and turned back into an
  initializer (`restore_weights`);
* measure: weights made feedable for the sensitivity probes
  (`make_feedable`), values exposed as outputs for the statistics, also from
  inside an If branch (`expose`, `if_branches`, `expose_from_branch`).

Why protobuf and not onnx-ir or onnx-graphsurgeon (measured by
scripts/graph_library_bench.py; README, "Graph layer"): graphsurgeon must
load all external data into memory, and onnx-ir's round trip changes the
bytes of every zoo model and its import (sympy) adds ~0.27 s to the load
path. Reading the model without its external data keeps protobuf as lazy.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import external_data_helper, numpy_helper

from onnx_l2c.codec import DOMAIN, FORMAT_VERSION, METADATA_KEY, OP_TYPE, OPSET
from onnx_l2c.errors import FileError, PayloadError
from onnx_l2c.graph.model import GraphRef, WeightRef, iter_graphs, iter_scopes, sparse_to_dense
from onnx_l2c.graph.ops import DEFAULT_DOMAINS

BRANCH_OUTPUT_TAG = "::l2c_stat::"
SPARSE_PAYLOAD_LIMIT = 1 << 31  # bytes; inline data (what a sparse Constant stands for) stops at 2 GB anyway  # in the names of If outputs added to read values computed in a branch


def set_external(tensor: onnx.TensorProto, location: str, offset: int | None = None, length: int | None = None) -> None:
    """Store `tensor` as external data at (location, offset, length); its inline bytes are dropped."""
    tensor.raw_data = b""  # set_external_data insists on a raw_data field
    external_data_helper.set_external_data(tensor, location, offset, length)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL


def defined_names(graph: onnx.GraphProto) -> set[str]:
    """Every value name a graph or its subgraphs define or output (for picking unused names)."""
    names: set[str] = set()
    for ref in iter_graphs(graph):
        g = ref.graph
        names |= {t.name for t in g.initializer} | {v.name for v in g.input} | {v.name for v in g.output}
        for node in g.node:
            names.update(node.output)
    return names


def unique_name(base: str, used: set[str]) -> str:
    """`base`, or `base_k` for the first k that is not in `used`; added to `used`."""
    name, k = base, 1
    while name in used:
        name = f"{base}_{k}"
        k += 1
    used.add(name)
    return name


# --- write: weight → Decode(payload) -------------------------------------------------

def replace_with_decode(w: WeightRef, offset: int, length: int, sidecar_name: str, used: set[str]) -> str:
    """Make `w` the output of a Decode node reading its payload at [offset,
    offset + length) of the sidecar. Returns the payload initializer's name.
    The weight's own initializer stays until `drop_initializers`."""
    graph = w.graph.graph
    # The payload's name carries the sidecar's: onnxruntime's own errors about
    # external data (truncated or missing file) then name both file and tensor.
    payload_name = unique_name(f"{w.name}@{sidecar_name}", used)
    payload = onnx.TensorProto(name=payload_name, data_type=onnx.TensorProto.UINT8, dims=[length])
    set_external(payload, sidecar_name, offset, length)
    graph.initializer.append(payload)
    # Type and shape twice: value_info for every ONNX tool, and the dtype/shape
    # attributes that the op's own type inference reads.
    node = onnx.helper.make_node(OP_TYPE, [payload_name], [w.name], name=unique_name(f"l2c_decode/{w.name}", used),
                                 domain=DOMAIN, dtype=w.dtype, shape=list(w.shape), tensor=w.name,
                                 sidecar=sidecar_name)
    graph.value_info.append(onnx.helper.make_tensor_value_info(w.name, w.dtype, list(w.shape)))
    if w.constant_node is not None:
        # In place of the Constant, so the node order stays topological.
        w.constant_node.CopyFrom(node)
    else:
        graph.node.insert(0, node)
        # An initializer that is also a graph input (IR < 4 style) is now a
        # node output; it can no longer be overridden by a feed.
        for i, value in enumerate(graph.input):
            if value.name == w.name:
                del graph.input[i]
                break
    return payload_name


def drop_initializers(model: onnx.ModelProto, names: set[str]) -> None:
    """Remove the initializers called `names` from every graph."""
    for ref in iter_graphs(model.graph):
        graph = ref.graph
        keep = [t for t in graph.initializer if t.name not in names]
        if len(keep) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(keep)


def mark_compressed(model: onnx.ModelProto) -> None:
    """Import the Decode op's domain and record the format version in the metadata."""
    if not any(op.domain == DOMAIN for op in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, OPSET))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = str(FORMAT_VERSION)
            return
    model.metadata_props.add(key=METADATA_KEY, value=str(FORMAT_VERSION))


# --- load: Decode(payload) → weight ---------------------------------------------------

@dataclass
class DecodeNode:
    """One Decode node of a compressed model, what it declares and where its payload lives."""

    name: str  # the decoded tensor
    graph: GraphRef
    node: onnx.NodeProto
    payload: onnx.TensorProto
    dtype: int  # the node's dtype attribute (not yet range-checked: codec.native.check_declared does)
    dims: tuple[int, ...]  # its shape attribute
    location: str | None  # the sidecar, relative to the model's folder; None: stored inline
    offset: int
    length: int
    inline: bytes | None = None  # the payload bytes when stored in the graph
    chain: tuple[str, ...] = ()  # the node's input, then any Identity outputs, to the payload's own name


def declaration(node: onnx.NodeProto, what: str) -> tuple[int, tuple[int, ...]]:
    """The (dtype, shape) a Decode node declares: its required attributes
    `dtype` (an int) and `shape` (ints), as the custom op reads them."""
    attrs = {a.name: a for a in node.attribute}
    dtype, shape = attrs.get("dtype"), attrs.get("shape")
    if dtype is None or dtype.type != onnx.AttributeProto.INT or shape is None \
            or shape.type != onnx.AttributeProto.INTS:
        got = ", ".join(f"{a.name}: {onnx.AttributeProto.AttributeType.Name(a.type)}" for a in (dtype, shape) if a)
        raise PayloadError(f"{what}: the node needs the attributes dtype (INT: an ONNX data type) and shape (INTS); "
                           f"it has {got or 'neither'}")
    return int(dtype.i), tuple(int(d) for d in shape.ints)


def _payload_extent(payload: onnx.TensorProto, what: str) -> tuple[str | None, int, int, bytes | None]:
    """(location, offset, length, inline bytes) of a payload initializer, with
    onnxruntime's reading of the entry: a missing offset is 0, a missing or
    zero length is the tensor's size, any other length must equal it."""
    size = int(payload.dims[0])
    if not external_data_helper.uses_external_data(payload):
        try:
            data = numpy_helper.to_array(payload).tobytes()
        except ValueError as exc:
            raise PayloadError(f"{what}: unreadable inline payload ({exc})") from None
        if len(data) != size:
            raise PayloadError(f"{what}: the inline payload holds {len(data)} bytes for dims [{size}]")
        return None, 0, size, data
    try:
        info = external_data_helper.ExternalDataInfo(payload)
        offset, length = int(info.offset or 0), int(info.length or 0)
    except ValueError as exc:  # offset/length that are not integers
        raise PayloadError(f"{what}: bad external-data entry ({exc})") from None
    if not info.location:
        raise FileError(f"{what} has no location")
    length = length or size
    if offset < 0 or length != size:
        raise PayloadError(f"{what}: external data offset {offset} / length {length} for a {size}-byte payload "
                           "(need offset >= 0 and length = its size)")
    return info.location, offset, length, None


def _sparse_to_dense(sparse: onnx.SparseTensorProto, what: str) -> onnx.TensorProto:
    """A Constant node's `sparse_value` as the dense payload onnxruntime makes
    of it (graph.model.sparse_to_dense), checked to be 1-D uint8 first."""
    dims = [int(d) for d in sparse.dims]
    if len(dims) != 1 or dims[0] < 0:
        raise PayloadError(f"{what}: a sparse payload of dims {dims}; the Decode op takes a 1-D uint8 tensor")
    if dims[0] > SPARSE_PAYLOAD_LIMIT:  # what a few index bytes may make this loader allocate
        raise PayloadError(f"{what}: a sparse payload of {dims[0]} bytes; at most {SPARSE_PAYLOAD_LIMIT} are read")
    if sparse.values.data_type != onnx.TensorProto.UINT8:
        raise PayloadError(f"{what}: a sparse payload of "
                           f"{onnx.helper.tensor_dtype_to_string(sparse.values.data_type)} values; the Decode op "
                           "takes a 1-D uint8 tensor")
    try:
        dense = sparse_to_dense(sparse)
    except ValueError as exc:
        raise PayloadError(f"{what}: sparse payload: {exc}") from None
    return numpy_helper.from_array(dense)


def _constant_value(node: onnx.NodeProto, what: str) -> onnx.TensorProto | None:
    """The tensor a Constant node holds (onnxruntime makes it an initializer
    when it loads the graph, whatever the optimization level); None when its
    value is not a tensor (a list of ints, a string...): not a uint8 payload."""
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
            return tensor
        if attr.name == "sparse_value" and attr.type == onnx.AttributeProto.SPARSE_TENSOR:
            return _sparse_to_dense(attr.sparse_tensor, what)
    return None


@dataclass
class _ScopeIndex:
    """One graph's names, looked up per Decode node and per chain link."""

    inputs: set[str]
    initializers: dict[str, onnx.TensorProto]
    producers: dict[str, onnx.NodeProto]  # node output -> the (first) node that writes it

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> _ScopeIndex:
        producers: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for out in node.output:
                producers.setdefault(out, node)
        inits: dict[str, onnx.TensorProto] = {}
        for t in graph.initializer:
            inits.setdefault(t.name, t)
        return cls({v.name for v in graph.input}, inits, producers)


def _resolve_payload(name: str, scopes: tuple[_ScopeIndex, ...],
                     what: str) -> tuple[onnx.TensorProto, tuple[str, ...]] | str:
    """The constant tensor the value `name` is, as onnxruntime sees it from a
    node in scopes[0] (then the enclosing graphs), and the names along the
    way; or why it is not one.

    Constant: an initializer, a Constant node, or an Identity chain to one of
    those (onnxruntime's constant folding, on unless graph optimizations are
    disabled, hands the custom op the tensor at the chain's start). A graph
    input or any other node's output hides an outer name and is not constant.
    """
    chain: list[str] = []
    seen: set[str] = set()
    while True:
        if name in seen:
            return "in a cycle of Identity nodes, not a constant initializer"
        chain.append(name)
        seen.add(name)
        for depth, scope in enumerate(scopes):
            if name in scope.inputs:
                return "a graph input, not a constant initializer"
            if name in scope.initializers:
                return scope.initializers[name], tuple(chain)
            node = scope.producers.get(name)
            if node is not None:
                break
        else:
            return "not an initializer of the node's graph or an outer one"
        if node.domain not in DEFAULT_DOMAINS or node.op_type not in ("Constant", "Identity"):
            return f"the output of a {node.op_type} node, not a constant initializer"
        if node.op_type == "Constant":
            tensor = _constant_value(node, what)
            if tensor is None:
                return "a Constant node whose value is not a tensor"
            tensor.name = name
            return tensor, tuple(chain)
        if len(node.input) != 1:
            return "the output of a malformed Identity node"
        name, scopes = node.input[0], scopes[depth:]


def decode_nodes(model: onnx.ModelProto, where: str) -> list[DecodeNode]:
    """Every Decode node of every graph, checked to read one 1-D uint8
    constant (an initializer of its graph or an outer one, a Constant node, or
    an Identity chain to one; not a graph input: see _resolve_payload),
    to declare its output by attributes, and to agree with the graph's
    value_info on the output's element type (`where` names the model in
    errors). The custom op accepts the same nodes: onnxruntime hands it the
    payload as a constant exactly in these cases."""
    found: list[DecodeNode] = []
    seen: set[str] = set()
    indexes: dict[int, tuple[onnx.GraphProto, _ScopeIndex]] = {}  # by id(); the graph kept so the id stays its

    def index(graph: onnx.GraphProto) -> _ScopeIndex:
        if id(graph) not in indexes:
            indexes[id(graph)] = (graph, _ScopeIndex.of(graph))
        return indexes[id(graph)][1]

    for ref, outer in iter_scopes(model.graph):
        types = {v.name: v.type for v in list(ref.graph.value_info) + list(ref.graph.output)}
        for node in ref.graph.node:
            if node.domain != DOMAIN or node.op_type != OP_TYPE:
                continue
            if len(node.input) != 1 or len(node.output) != 1:
                raise PayloadError(f"{where}: node {node.name!r} (output {list(node.output)}) is not a well-formed "
                                   f"{DOMAIN}::{OP_TYPE} (one payload in, one tensor out)")
            resolved = _resolve_payload(node.input[0], tuple(index(g) for g in (ref.graph,) + outer),
                                        f"{where}: payload {node.input[0]!r} of tensor {node.output[0]!r}")
            if isinstance(resolved, str):
                raise PayloadError(f"{where}: payload {node.input[0]!r} of tensor {node.output[0]!r} is {resolved}; "
                                   "the Decode op takes a constant initializer")
            payload, chain = resolved
            what = f"{where}: payload {payload.name!r} of tensor {node.output[0]!r}"
            if payload.data_type != onnx.TensorProto.UINT8 or len(payload.dims) != 1:
                raise PayloadError(f"{what} is {onnx.helper.tensor_dtype_to_string(payload.data_type)} "
                                   f"{list(payload.dims)}; the Decode op takes a 1-D uint8 tensor")
            dtype, dims = declaration(node, f"{where}: tensor {node.output[0]!r}")
            declared = types.get(node.output[0])
            if declared is not None and declared.tensor_type.elem_type not in (0, dtype):
                raise PayloadError(f"{where}: tensor {node.output[0]!r}: value_info gives element type "
                                   f"{declared.tensor_type.elem_type}, the node's attribute dtype {dtype}")
            location, offset, length, inline = _payload_extent(payload, what)
            if node.output[0] in seen:
                raise PayloadError(f"{where}: tensor {node.output[0]!r} is the output of two "
                                   f"{DOMAIN}::{OP_TYPE} nodes")
            seen.add(node.output[0])
            found.append(DecodeNode(node.output[0], ref, node, payload, dtype, dims, location, offset, length, inline,
                                    chain))
    return found


def read_names(model: onnx.ModelProto) -> set[str]:
    """Names some node of any graph reads, and the main graph's outputs."""
    used = {name for ref in iter_graphs(model.graph) for n in ref.graph.node for name in n.input}
    return used | {v.name for v in model.graph.output}


def hoistable(e: DecodeNode) -> bool:
    """Whether the weight of `e` may move to the main graph: not when it is
    an output of its subgraph (onnxruntime refuses a subgraph output that is
    an outer-scope value)."""
    return e.graph.path == "main" or all(v.name != e.name for v in e.graph.graph.output)


def _drop_unread(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove, from `graph` and its subgraphs, the initializers and the
    Identity or Constant nodes that define one of `names` (the payloads and
    their Identity chains) once nothing reads them any more. Reference counts
    and a work list: linear in the graph, however long a chain."""
    reads: dict[str, int] = {}
    defined: dict[str, list[tuple[int, str, int]]] = {}  # name -> (graph, "node"/"init", index)
    graphs = [ref.graph for ref in iter_graphs(graph)]
    for gi, g in enumerate(graphs):
        for name in [i for n in g.node for i in n.input] + [v.name for v in g.output]:
            reads[name] = reads.get(name, 0) + 1
        for k, n in enumerate(g.node):
            if n.op_type in ("Identity", "Constant") and n.domain in DEFAULT_DOMAINS and len(n.output) == 1 \
                    and n.output[0] in names:
                defined.setdefault(n.output[0], []).append((gi, "node", k))
        for k, t in enumerate(g.initializer):
            if t.name in names:
                defined.setdefault(t.name, []).append((gi, "init", k))
    drop: set[tuple[int, str, int]] = set()
    todo = [name for name in defined if not reads.get(name)]
    while todo:
        for where in defined.pop(todo.pop(), []):
            drop.add(where)
            gi, kind, k = where
            for i in graphs[gi].node[k].input if kind == "node" else ():
                reads[i] -= 1
                if not reads[i] and i in defined:
                    todo.append(i)
    for gi, g in enumerate(graphs):
        for kind, entries in (("node", g.node), ("init", g.initializer)):
            if any((gi, kind, k) in drop for k in range(len(entries))):
                kept = [e for k, e in enumerate(entries) if (gi, kind, k) not in drop]
                del entries[:]
                entries.extend(kept)


def restore_weights(model: onnx.ModelProto, nodes: list[DecodeNode],
                    replace: dict[str, onnx.TensorProto], hoist: bool = False) -> onnx.ModelProto:
    """A copy of `model` with every Decode node in `nodes` replaced by the
    initializer `replace[name]`, and the compressed marks removed.

    hoist: put every replacement that `hoistable` allows in the main graph
    (subgraphs see it as an outer-scope value). onnxruntime applies
    add_external_initializers only to main-graph initializers.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_graph: dict[str, list[str]] = {}
    for e in nodes:
        by_graph.setdefault("main" if hoist and hoistable(e) else e.graph.path, []).append(e.name)
    decoded = {e.name for e in nodes}
    for ref in iter_graphs(out.graph):
        graph = ref.graph
        kept_nodes = [n for n in graph.node
                      if not (n.domain == DOMAIN and n.op_type == OP_TYPE and n.output[0] in decoded)]
        if len(kept_nodes) != len(graph.node):
            del graph.node[:]
            graph.node.extend(kept_nodes)
    _drop_unread(out.graph, {name for e in nodes for name in e.chain})
    for ref in iter_graphs(out.graph):
        graph = ref.graph
        restored = [replace[n] for n in by_graph.get(ref.path, [])]
        graph.initializer.extend(restored)
        if ref.path == "main" and out.ir_version < 4:
            # IR < 4 requires every initializer to be listed as a graph input.
            graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                               for t in restored)
    keep = [op for op in out.opset_import if op.domain != DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    props = [p for p in out.metadata_props if p.key != METADATA_KEY]
    del out.metadata_props[:]
    out.metadata_props.extend(props)
    return out


# Where the plain graph's decoded weights "are": a file that never exists;
# onnxruntime takes their bytes from AddExternalInitializers instead.
VIRTUAL_LOCATION = "onnx_l2c.virtual"


def plain_graph(model: onnx.ModelProto, nodes: list[DecodeNode]) -> onnx.ModelProto | None:
    """The zero-overhead loaders' graph: every Decode node gone and its weight a
    main-graph initializer stored as external data at VIRTUAL_LOCATION (no
    offset or length: bytes the sidecar index would carry for every weight),
    which onnxruntime replaces by the tensors given to AddExternalInitializers
    (it checks name, dtype and dims). None when some weight cannot be given that way:
    onnxruntime applies them only to initializers of the main graph that a node
    reads (a weight no node reads, or a subgraph output, stays inline; the
    Python loader then inlines it at load)."""
    used = read_names(model)
    if any(e.name not in used or not hoistable(e) for e in nodes):
        return None
    replace = {}
    for e in nodes:
        tensor = onnx.TensorProto(name=e.name, data_type=e.dtype, dims=list(e.dims))
        set_external(tensor, VIRTUAL_LOCATION)
        replace[e.name] = tensor
    return restore_weights(model, nodes, replace, hoist=True)


# --- measure: feed weights, expose values ---------------------------------------------

def _definition_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """How many times each value name is defined (initializer, graph input,
    node output) over the graph and all its subgraphs."""
    counts: dict[str, int] = {}
    for ref in iter_graphs(graph):
        g = ref.graph
        names = [t.name for t in g.initializer] + [v.name for v in g.input]
        names += [o for node in g.node for o in node.output if o]
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _hoist(w: WeightRef, sub: onnx.GraphProto | None, main: onnx.GraphProto, definitions: dict[str, int]) -> bool:
    """Make a weight a main-graph initializer (so it can be fed): a Constant
    node (of any graph) becomes one, and a subgraph initializer moves there;
    a subgraph then reads it from the outer scope. Only for names defined
    once in the whole model, so no other value is shadowed."""
    if sub is None or definitions.get(w.name, 0) != 1:
        return False
    moved = onnx.TensorProto()
    if w.constant_node is None:
        tensor = next((t for t in sub.initializer if t.name == w.name), None)
        if tensor is None:
            return False
        moved.CopyFrom(tensor)
        sub.initializer.remove(tensor)
    else:
        node = next((n for n in sub.node if n.op_type == "Constant" and list(n.output) == [w.name]), None)
        if node is None:
            return False
        moved.CopyFrom(w.tensor)
        moved.name = w.name
        sub.node.remove(node)
    main.initializer.append(moved)
    return True


def make_feedable(model: onnx.ModelProto, weights: list[WeightRef]) -> list[WeightRef]:
    """Edit `model` (a copy) so each weight can be fed as a main-graph input
    overriding its initializer; returns the weights for which that worked."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    declared = {v.name for v in graph.input}
    subgraphs = {ref.path: ref.graph for ref in iter_graphs(graph)}
    definitions = _definition_counts(graph)
    fed: list[WeightRef] = []
    for w in weights:
        if w.graph.path == "main" and w.constant_node is None:
            if w.name not in inits:
                continue
        elif not _hoist(w, subgraphs.get(w.graph.path), graph, definitions):
            continue
        if w.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(w.name, w.dtype, list(w.shape)))
        fed.append(w)
    return fed


def node_scopes(graph: onnx.GraphProto) -> dict[str, str | None]:
    """The graph path each node runs in, by its first output's name; None
    where two nodes share that name."""
    scope: dict[str, str | None] = {}
    for ref in iter_graphs(graph):
        for node in ref.graph.node:
            if node.output:
                scope[node.output[0]] = ref.path if node.output[0] not in scope else None
    return scope


def main_values(graph: onnx.GraphProto) -> set[str]:
    """The values the main graph can read: inputs, initializers, node outputs."""
    return ({v.name for v in graph.input} | {t.name for t in graph.initializer}
            | {o for node in graph.node for o in node.output})


def expose(graph: onnx.GraphProto, names: list[str]) -> None:
    """Make each value in `names` an output of the main graph (if it is not one yet)."""
    present = {o.name for o in graph.output}
    for name in names:
        if name not in present:
            graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)


def if_branches(graph: onnx.GraphProto) -> dict[str, tuple[onnx.NodeProto, str]]:
    """Subgraph path (as iter_graphs names it) -> (If node of the main
    graph, branch attribute), for paths that name exactly one branch."""
    found: dict[str, list[tuple[onnx.NodeProto, str]]] = {}
    for node in graph.node:
        if node.op_type != "If" or node.domain not in DEFAULT_DOMAINS:
            continue
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found.setdefault(f"main/{node.name or node.op_type}.{attr.name}", []).append((node, attr.name))
    return {path: hits[0] for path, hits in found.items() if len(hits) == 1}


def expose_from_branch(graph: onnx.GraphProto, branch: tuple[onnx.NodeProto, str] | None, name: str,
                       dtype: int) -> str | None:
    """Make a value computed inside one branch of a main-graph If readable:
    the branch gets it as an extra output, the other branch an empty tensor of
    the same type, and the If node (and the main graph) one more output.
    Readers skip the empty tensor (samples that took the other branch).
    Returns the new main-graph output name."""
    if branch is None:
        return None
    node, taken = branch
    graphs = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
    if set(graphs) != {"then_branch", "else_branch"}:
        return None
    inside = graphs[taken]
    if not any(name in n.output for n in inside.node):
        return None
    out_name = f"{node.output[0]}{BRANCH_OUTPUT_TAG}{name}"
    empty = f"{out_name}::empty"
    other = graphs["else_branch" if taken == "then_branch" else "then_branch"]
    inside.output.append(onnx.helper.make_tensor_value_info(name, dtype, None))
    other.node.append(onnx.helper.make_node("Constant", [], [empty],
                                            value=onnx.helper.make_tensor(empty, dtype, [0], [])))
    other.output.append(onnx.helper.make_tensor_value_info(empty, dtype, None))
    node.output.append(out_name)
    graph.output.append(onnx.ValueInfoProto(name=out_name))
    return out_name
