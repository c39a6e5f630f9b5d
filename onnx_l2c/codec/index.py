"""The sidecar index (docs/FORMAT.md, "Sidecar index"): what a loader needs to
run a compressed model at the original's speed without parsing or rewriting
protobuf. Mirrored by runtime/src/model.cc (`l2c_model_open`).

At the end of the sidecar, after the payloads:

* the index record (right after the last payload): the tensors (name, dtype, dims, payload
  extent) and the **plain graph** as edit operations on the model file's own
  bytes: copy a range of the `.onnx`, or insert literal bytes. The plain
  graph is the model with each Decode node and its payload gone and the
  decoded weight an initializer stored as external data at a virtual
  location, which onnxruntime takes from `AddExternalInitializers` instead
  (before optimization: prepacking and layout transforms apply). The record
  names the model file's size and CRC-32, so an edited `.onnx` is refused.
* a 32-byte trailer: magic, the record's offset and length, its CRC-32.

The operations are found record by record on the protobuf wire format: the
plain graph differs from the model only in some records of the model and of
its main graph, so every unchanged record (a node, an initializer, the
graph's inputs) is one copy, and only the new initializers and the
re-measured graph header are inserted (a few hundred bytes per weight).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

SIDECAR_SUFFIX = ".l2c"  # the sidecar of OUT.onnx is OUT.onnx.l2c
INDEX_MAGIC = b"L2CX"
INDEX_VERSION = 1
TRAILER_MAGIC = b"L2CXEND\0"
TRAILER_BYTES = 32
OP_COPY = 1
OP_INSERT = 2
MAX_NAME_BYTES = 65535
# The plain graph is one protobuf message: onnxruntime refuses more than 2 GiB.
MAX_PLAIN_BYTES = (1 << 31) - 1
_MODEL_GRAPH_FIELD = 7  # ModelProto.graph


@dataclass(frozen=True)
class IndexTensor:
    name: str
    dtype: int  # ONNX TensorProto data type
    dims: tuple[int, ...]
    offset: int  # the payload's extent in the sidecar
    length: int


@dataclass(frozen=True)
class Index:
    offset: int  # of the record in the sidecar (the index is the sidecar's bytes from here on)
    graph_size: int
    graph_crc: int
    plain_size: int
    ops: tuple[tuple[int, int, int | bytes], ...]  # (OP_COPY, offset, length) or (OP_INSERT, 0, bytes)
    tensors: tuple[IndexTensor, ...]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _records(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, int, int, int]]:
    """The top-level fields of a serialized message as (field number, start,
    end, payload start): [start, end) is the whole record (tag, length and
    value); a length-delimited value starts at payload start."""
    end = len(data) if end is None else end
    out = []
    pos = start
    while pos < end:
        key, body = _read_varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, stop = _read_varint(data, body)
        elif wire == 1:
            stop = body + 8
        elif wire == 2:
            length, body = _read_varint(data, body)
            stop = body + length
        elif wire == 5:
            stop = body + 4
        else:
            raise ValueError(f"wire type {wire}")
        if stop > end:
            raise ValueError("record past the message's end")
        out.append((key >> 3, pos, stop, body))
        pos = stop
    return out


def graph_delta(original: bytes, target: bytes) -> list[tuple[int, int, bytes]]:
    """Operations that build `target` (the plain graph) from `original` (the
    model file): every record of the target's model and main graph that the
    original holds byte for byte is copied, the rest inserted. No byte of the
    original is copied twice (a repeated record is inserted): readers refuse
    copies that add up to more than the model file, so that a small index
    cannot expand into a large graph."""
    try:
        source = {original[s:e]: s for _, s, e, _ in _records(original)}
        graph_spans = [(b, e) for f, _, e, b in _records(original) if f == _MODEL_GRAPH_FIELD]
        for b, e in graph_spans:
            for _, s, stop, _ in _records(original, b, e):
                source.setdefault(original[s:stop], s)
        ops: list[tuple[int, int, bytes]] = []
        copied = bytearray(len(original))  # 1 where a byte has been copied

        def emit(record: bytes) -> None:
            at = source.get(record)
            if at is not None and copied.find(1, at, at + len(record)) >= 0:
                at = None
            if at is not None:
                copied[at:at + len(record)] = b"\x01" * len(record)
            if at is None:
                if ops and ops[-1][0] == OP_INSERT:
                    ops[-1] = (OP_INSERT, 0, ops[-1][2] + record)
                else:
                    ops.append((OP_INSERT, 0, record))
            elif ops and ops[-1][0] == OP_COPY and ops[-1][1] + ops[-1][2] == at:
                ops[-1] = (OP_COPY, ops[-1][1], ops[-1][2] + len(record))
            else:
                ops.append((OP_COPY, at, len(record)))

        for field, s, e, body in _records(target):
            if field == _MODEL_GRAPH_FIELD and target[s:e] not in source:
                emit(target[s:body])  # the graph's tag and its new length
                for _, gs, ge, _ in _records(target, body, e):
                    emit(target[gs:ge])
            else:
                emit(target[s:e])
    except ValueError:  # not protobuf as this parser reads it: the whole graph, inserted
        ops = [(OP_INSERT, 0, target)]
    return ops


def apply_delta(original: bytes, ops: list[tuple[int, int, bytes]] | tuple) -> bytes:
    """The plain graph (what the native reader does, for tests and tools)."""
    out = bytearray()
    for kind, a, b in ops:
        out += original[a:a + b] if kind == OP_COPY else b
    return bytes(out)


def build_index(graph: bytes, plain: bytes, tensors: list[IndexTensor]) -> bytes:
    """The index record for a model file `graph` whose plain graph is `plain`."""
    ops = graph_delta(graph, plain)
    if apply_delta(graph, ops) != plain:
        raise AssertionError("sidecar index: the graph delta does not rebuild the plain graph")
    out = bytearray(INDEX_MAGIC + struct.pack("<B3x", INDEX_VERSION))
    out += struct.pack("<QIQII", len(graph), zlib.crc32(graph), len(plain), len(ops), len(tensors))
    for kind, a, b in ops:
        if kind == OP_COPY:
            out += struct.pack("<BQQ", OP_COPY, a, b)
        else:
            out += struct.pack("<BI", OP_INSERT, len(b)) + b
    for t in tensors:
        name = t.name.encode()
        if not 0 < len(name) <= MAX_NAME_BYTES:
            raise ValueError(f"sidecar index: tensor name of {len(name)} bytes")
        out += struct.pack("<H", len(name)) + name + struct.pack("<IB", t.dtype, len(t.dims))
        out += struct.pack(f"<{len(t.dims)}Q", *t.dims) + struct.pack("<QQ", t.offset, t.length)
    return bytes(out)


def trailer(offset: int, length: int, record: bytes) -> bytes:
    """The sidecar's last 32 bytes, pointing at the index record."""
    return TRAILER_MAGIC + struct.pack("<QQI4x", offset, length, zlib.crc32(record))


def read_index(sidecar: bytes) -> Index | None:
    """The index of a sidecar (None: it has none, e.g. written before onnx_l2c
    0.2; ValueError: it is malformed). Trusting beyond that: the native reader
    is the one that validates."""
    if len(sidecar) < TRAILER_BYTES or sidecar[-TRAILER_BYTES:-TRAILER_BYTES + 8] != TRAILER_MAGIC:
        return None
    try:
        return _parse_index(sidecar)
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise ValueError(f"malformed sidecar index: {exc}") from exc


def _parse_index(sidecar: bytes) -> Index:
    offset, length, _ = struct.unpack_from("<QQI", sidecar, len(sidecar) - TRAILER_BYTES + 8)
    record = sidecar[offset:offset + length]
    pos = 8
    graph_size, graph_crc, plain_size, n_ops, n_tensors = struct.unpack_from("<QIQII", record, pos)
    pos += struct.calcsize("<QIQII")
    ops = []
    for _ in range(n_ops):
        kind = record[pos]
        if kind == OP_COPY:
            _, a, b = struct.unpack_from("<BQQ", record, pos)
            ops.append((OP_COPY, a, b))
            pos += 17
        else:
            (n,) = struct.unpack_from("<I", record, pos + 1)
            ops.append((OP_INSERT, 0, bytes(record[pos + 5:pos + 5 + n])))
            pos += 5 + n
    tensors = []
    for _ in range(n_tensors):
        (n,) = struct.unpack_from("<H", record, pos)
        name = bytes(record[pos + 2:pos + 2 + n]).decode()
        pos += 2 + n
        dtype, ndim = struct.unpack_from("<IB", record, pos)
        pos += 5
        dims = struct.unpack_from(f"<{ndim}Q", record, pos)
        pos += 8 * ndim
        off, ln = struct.unpack_from("<QQ", record, pos)
        pos += 16
        tensors.append(IndexTensor(name, dtype, tuple(dims), off, ln))
    return Index(offset, graph_size, graph_crc, plain_size, tuple(ops), tuple(tensors))
