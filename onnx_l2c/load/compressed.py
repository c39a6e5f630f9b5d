"""Compressed models read through their graph: the session where the sidecar
index does not apply (rewritten_session), decompress, inspect.

`rewritten_session` rewrites the small graph in memory — every Decode node
becomes an initializer declared as external data at a virtual location —
decodes all payloads once, in parallel, with the native decoder, and hands
the dense tensors to onnxruntime with `add_external_initializers`. Inference
then runs the original graph at the original speed. (`add_initializer` is
never used: constant folding and layout transforms would read the wrong
bytes.) Models with a sidecar index skip all of this (load/indexed.py).
"""

from __future__ import annotations

import logging
import mmap
import os
import itertools
import stat
import tempfile
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper

from onnx_l2c.codec import (DECODE_LIMIT_FLOOR, DECODE_LIMIT_RATIO, DOMAIN, DTYPE_NAMES, PACKED_BITS,
                            SIDECAR_SUFFIX, STORAGE, default_decode_limit, native, parse, summarize, summarize_totals,
                            tensor_nbytes, to_raw_bytes, to_stored)
from onnx_l2c.codec.index import read_index
from onnx_l2c.errors import (FileError, LimitError, ModelError, OptionError, OutOfMemoryError, PayloadError,
                             literal)
from onnx_l2c.files import AlignedWriter, AtomicOutputs
from onnx_l2c.graph.edit import (VIRTUAL_LOCATION, DecodeNode, decode_nodes, hoistable, read_names, restore_weights,
                                  set_external)
from onnx_l2c.graph.model import embed_external, iter_graphs, load_model
from onnx_l2c.load.indexed import LOW_MEMORY_BYTES, packed_at_front

log = logging.getLogger(__name__)

_PROTO_LIMIT = 2**31 - 64 * 2**20  # stay clear of protobuf's 2 GB ceiling


@dataclass
class DecodeEntry:
    """One Decode node of a compressed model and the file its payload is in
    (the sidecar; the model itself for a payload stored inline)."""

    decode: DecodeNode
    file: Path

    @property
    def name(self) -> str:  # the decoded tensor
        return self.decode.name

    @property
    def offset(self) -> int:
        return self.decode.offset

    @property
    def length(self) -> int:
        return self.decode.length


ModelSource = str | os.PathLike | bytes | bytearray | memoryview | onnx.ModelProto


class CompressedModel:
    """A compressed model's graph plus access to its payloads (memory-mapped)."""

    def __init__(self, model: ModelSource, max_decoded_bytes: int | None = None, *,
                 base_dir: str | os.PathLike | None = None) -> None:
        """`model`: a path, the serialized model's bytes, or an onnx.ModelProto.
        Sidecars are resolved in the model file's folder, or for bytes and a
        ModelProto in `base_dir` (the folder the model was saved in), and must
        lie inside it. `max_decoded_bytes`: what all payloads together may
        decode to (0: no limit); None: max(DECODE_LIMIT_FLOOR,
        DECODE_LIMIT_RATIO × their stored bytes)."""
        self.path: Path | None = None
        if isinstance(model, onnx.ModelProto):
            self.model, self.label = model, "onnx.ModelProto"
        elif isinstance(model, (bytes, bytearray, memoryview)):
            self.model, self.label = _parse_model(bytes(model)), f"model bytes ({len(model)})"
        elif isinstance(model, (str, os.PathLike)):
            if base_dir is not None:
                raise OptionError("base_dir is for a model given as bytes or an onnx.ModelProto; a model file's "
                                  "sidecar is always resolved in the file's own folder: drop base_dir")
            self.path = Path(model)
            self.model, self.label = load_model(self.path), str(self.path)
            base_dir = self.path.parent
        else:
            raise ModelError(f"expected a model path, the model's bytes or an onnx.ModelProto, got "
                             f"{literal(type(model).__name__)}")
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.entries = self._entries()
        self._maps: dict[Path, tuple[object, mmap.mmap | None]] = {}
        self._nbytes: dict[str, int] = {}  # per tensor, once its declaration passed the native check
        if max_decoded_bytes is not None and (isinstance(max_decoded_bytes, bool)
                                              or not isinstance(max_decoded_bytes, int) or max_decoded_bytes < 0):
            raise OptionError(f"must be an integer ≥ 0 (0 = no limit), got {literal(repr(max_decoded_bytes))}",
                              "max_decoded_bytes")
        stored = sum(e.length for e in self.entries)
        self.max_decoded_bytes = default_decode_limit(stored) if max_decoded_bytes is None else max_decoded_bytes

    def folder(self, what: str) -> Path:
        """The folder external files are resolved in; a FileError naming
        `base_dir` for a model given in memory without one."""
        if self.base_dir is None:
            raise FileError(f"{self.label}: {what} cannot be found without base_dir: pass base_dir=, the folder "
                            "the model was saved in (its sidecar lies beside it)")
        return self.base_dir

    def _entries(self) -> list[DecodeEntry]:
        entries: list[DecodeEntry] = []
        for found in decode_nodes(self.model, self.label):
            if found.location is None:
                entries.append(DecodeEntry(found, self.path or Path(self.label)))
                continue
            base = self.folder(f"tensor {found.name!r} in sidecar {found.location!r}").resolve()
            location = Path(found.location)
            file = (base / location).resolve()
            if location.is_absolute() or not file.is_relative_to(base):
                raise FileError(f"{self.label}: tensor {found.name!r}: sidecar location "
                                f"{found.location!r} is outside the model's folder")
            entries.append(DecodeEntry(found, file))
        return entries

    def payload(self, entry: DecodeEntry) -> np.ndarray:
        """The payload bytes of `entry`, read in place from the memory-mapped sidecar."""
        if entry.decode.inline is not None:
            return np.frombuffer(entry.decode.inline, dtype=np.uint8)
        if entry.file not in self._maps:
            self._maps[entry.file] = self._map(entry)
        size, mapped = self._maps[entry.file]
        if entry.offset < 0 or entry.length <= 0 or entry.offset + entry.length > size:
            raise PayloadError(f"{entry.file}: tensor {entry.name!r}: payload [{entry.offset}, "
                           f"{entry.offset + entry.length}) lies outside the {size}-byte sidecar (truncated?)")
        return np.frombuffer(mapped, dtype=np.uint8, count=entry.length, offset=entry.offset)

    def _map(self, entry: DecodeEntry) -> tuple[int, mmap.mmap | None]:
        # Non-blocking open, then fstat: a named pipe or device is refused
        # without blocking on it (and without a race between check and open).
        try:
            fd = os.open(entry.file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            raise FileError(f"{self.label}: sidecar {entry.file} not found "
                            f"(it holds tensor {entry.name!r})") from None
        except OSError as exc:
            raise FileError(f"{self.label}: cannot read sidecar {entry.file} (tensor {entry.name!r}): {exc}") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise FileError(f"{self.label}: sidecar {entry.file} (tensor {entry.name!r}) is not a regular file")
            try:
                mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if info.st_size else None
            except OSError as exc:
                raise FileError(f"{self.label}: cannot map sidecar {entry.file}: {exc}") from exc
            return info.st_size, mapped
        finally:
            os.close(fd)

    def where(self, entry: DecodeEntry) -> str:
        return f"{entry.file.name}: tensor {entry.name!r}"

    def decode(self, entry: DecodeEntry) -> np.ndarray:
        """Decode one tensor into its numpy storage (`codec.STORAGE`: the bits of bfloat16 and float8), shaped."""
        payload = self.payload(entry)
        where = self.where(entry)
        dtype, dims = self.declared(entry)
        self._within_budget(self.nbytes(entry), where)
        try:
            out = np.empty(dims, dtype=STORAGE[dtype])
        except MemoryError as exc:
            raise OutOfMemoryError(f"{where}: cannot allocate the declared shape {list(dims)}: {exc}") from exc
        # The custom op's check: the payload must hold exactly the declared
        # tensor (refused right after its header), then one validating pass.
        native.decode_declared(payload, dtype, out, where)
        return out

    def declared(self, entry: DecodeEntry) -> tuple[int, tuple[int, ...]]:
        """The (dtype, shape) the node declares for `entry`, checked natively
        (the custom op's check: a PayloadError when invalid)."""
        self.nbytes(entry)
        return entry.decode.dtype, entry.decode.dims

    def nbytes(self, entry: DecodeEntry) -> int:
        """The bytes `entry` decodes to, as declared."""
        if entry.name not in self._nbytes:
            self._nbytes[entry.name] = native.check_declared(entry.decode.dtype, entry.decode.dims,
                                                             what=self.where(entry))
        return self._nbytes[entry.name]

    def _within_budget(self, total: int, what: str) -> None:
        if self.max_decoded_bytes and total > self.max_decoded_bytes:
            stored = sum(e.length for e in self.entries)
            raise LimitError(f"{what}: {total} decoded bytes declared, above the limit of {self.max_decoded_bytes} "
                             f"(max_decoded_bytes; the default is max({DECODE_LIMIT_FLOOR}, {DECODE_LIMIT_RATIO}× "
                             f"the {stored} stored bytes); pass a larger max_decoded_bytes, or 0 for no limit, "
                             "to load it)")

    def check_budget(self) -> int:
        """The bytes all tensors decode to, refused (LimitError) above
        `max_decoded_bytes` before anything is allocated."""
        total = sum(self.nbytes(entry) for entry in self.entries)
        self._within_budget(total, f"{self.label}: all payloads together")
        return total

    def decode_all(self, workers: int = 0) -> dict[str, np.ndarray]:
        """Every tensor, decoded in parallel across tensors (the GIL is released
        natively), after the whole model's declared size passed the budget."""
        return {e.name: a for e, a in self.iter_decoded(workers)}

    def iter_decoded(self, workers: int = 0) -> Iterator[tuple[DecodeEntry, np.ndarray]]:
        """(entry, tensor) in entry order, after the whole model's declared size
        passed the budget; at most `workers` tensors decode at once, and each
        payload's pages leave this process's memory once it is decoded, so a
        caller that drops each tensor holds only a few at a time."""
        self.check_budget()
        workers = workers or os.cpu_count() or 1
        with ThreadPoolExecutor(workers) as pool:
            pending: deque[tuple[DecodeEntry, Future[np.ndarray]]] = deque()
            entries = iter(self.entries)
            for entry in itertools.islice(entries, workers):
                pending.append((entry, pool.submit(self._decode_and_release, entry)))
            while pending:
                entry, future = pending.popleft()
                array = future.result()
                following = next(entries, None)
                if following is not None:
                    pending.append((following, pool.submit(self._decode_and_release, following)))
                yield entry, array
                del array

    def _decode_and_release(self, entry: DecodeEntry) -> np.ndarray:
        array = self.decode(entry)
        self._release(entry)
        return array

    def _release(self, entry: DecodeEntry) -> None:
        """Drop the payload's whole pages from this process's resident memory
        (the sidecar stays mapped; a later read faults them in again)."""
        mapped = self._maps.get(entry.file, (0, None))[1]
        if mapped is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = -(-entry.offset // mmap.PAGESIZE) * mmap.PAGESIZE
        end = (entry.offset + entry.length) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > start:
            mapped.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        for _, mapped in self._maps.values():
            if mapped is not None:
                try:
                    mapped.close()
                except BufferError:
                    pass  # numpy views still alive; the map closes when they go
        self._maps.clear()

    def strip(self, replace: dict[str, onnx.TensorProto], hoist: bool = False) -> onnx.ModelProto:
        """The model with every Decode node replaced by the initializer
        `replace[name]` (see graph.edit.restore_weights). Any other tensor
        still stored as external data (a payload something else reads, a
        weight the writer did not make) is read into the graph, since the
        result is loaded from bytes or written to another folder: its file
        would be looked for in the working directory or lost."""
        model = restore_weights(self.model, [e.decode for e in self.entries], replace, hoist)
        for ref in iter_graphs(model.graph):
            tensors = [t for t in ref.graph.initializer if t.name not in replace]
            tensors += [a.t for n in ref.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
            for tensor in tensors:
                if external_data_helper.uses_external_data(tensor):
                    embed_external(tensor, self.folder(f"tensor {tensor.name!r} (external data)"))
        return model


def _parse_model(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises several unrelated types on garbage
        raise ModelError(f"model bytes ({len(data)}): not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    return model


def _empty_tensor(entry: DecodeEntry) -> onnx.TensorProto:
    """The initializer that replaces `entry`'s Decode node, without its bytes yet."""
    return onnx.TensorProto(name=entry.name, data_type=entry.decode.dtype, dims=list(entry.decode.dims))


def rewritten_session(path_or_bytes: ModelSource, so: Any, providers: Any, provider_options: Any,
                      base_dir: str | os.PathLike | None, max_decoded_bytes: int | None, low_memory: bool | None,
                      temp_dir: str | os.PathLike | None, **kwargs: Any) -> Any:
    """`onnx_l2c.InferenceSession` (load/session.py) where the sidecar index
    does not apply: the graph is rewritten here, every Decode node becoming an
    initializer, and the payloads decoded one by one."""
    import onnxruntime as ort

    compressed = CompressedModel(path_or_bytes, max_decoded_bytes, base_dir=base_dir)
    try:
        if low_memory is None:
            low_memory = compressed.check_budget() > LOW_MEMORY_BYTES
        if low_memory:
            with tempfile.TemporaryDirectory(prefix="onnx_l2c-", dir=temp_dir,
                                             ignore_cleanup_errors=True) as folder:
                plain = _write_plain(compressed, Path(folder) / "model.onnx", external_data=True)
                return ort.InferenceSession(str(plain), so, providers=providers, provider_options=provider_options,
                                            **kwargs)
        arrays = compressed.decode_all()  # payload pages released as it goes
        # onnxruntime drops initializers no node reads before it applies external
        # ones (and then fails to find them), and applies them only in the main
        # graph: those few, and subgraph outputs (not hoisted), travel inline.
        used = read_names(compressed.model)
        declared: dict[str, onnx.TensorProto] = {}
        external: list[str] = []
        offset = 0
        for entry in compressed.entries:
            array = arrays[entry.name]
            tensor = _empty_tensor(entry)
            if entry.name not in used or not hoistable(entry.decode):  # kept in its subgraph: inline
                tensor.raw_data = to_raw_bytes(array, entry.decode.dtype)
            else:
                # A virtual location: the file never exists, onnxruntime takes
                # the bytes from add_external_initializers instead.
                nbytes = tensor_nbytes(entry.decode.dtype, array.size)  # packed for int4 and the like
                set_external(tensor, VIRTUAL_LOCATION, offset, nbytes)
                offset += nbytes
                external.append(entry.name)
            declared[entry.name] = tensor
        model = compressed.strip(declared, hoist=True)
        if external:
            # by the declared ONNX type: numpy has no bfloat16 or float8 (their bits are
            # uint16 / uint8 arrays), and a uint16 array may be either uint16 or bfloat16
            values = [ort.OrtValue.ortvalue_from_numpy_with_onnx_type(_ort_memory(arrays[n], declared[n].data_type),
                                                                      declared[n].data_type)
                      for n in external]
            so.add_external_initializers(external, values)
        data = model.SerializeToString()
        del model
        return ort.InferenceSession(data, so, providers=providers, provider_options=provider_options, **kwargs)
    finally:
        compressed.close()




def decompress(path: str | os.PathLike, output: str | os.PathLike, *,
               external_data: bool | None = None, max_decoded_bytes: int | None = None) -> Path:
    """Write a plain ONNX model (no custom op) with the decoded weights.

    `external_data`: None picks external data (`output.data`) only when the
    model would pass protobuf's 2 GB limit. `max_decoded_bytes`: as for
    `InferenceSession`.
    """
    compressed = CompressedModel(path, max_decoded_bytes)
    try:
        return _write_plain(compressed, Path(output), external_data)
    finally:
        compressed.close()


def _ort_memory(array: np.ndarray, dtype: int) -> np.ndarray:
    """The memory onnxruntime wraps for a tensor (ortvalue_from_numpy_with_onnx_type:
    numpy's shape, no copy). A packed dtype's tensor reads its bytes packed from
    the start of that memory, so they are packed into the front of a uint8 array
    of the tensor's shape (numel bytes: room for the packed ones)."""
    if dtype not in PACKED_BITS:
        return array
    return packed_at_front(to_stored(array, dtype), array.shape)


def _write_plain(compressed: CompressedModel, output: Path, external_data: bool | None) -> Path:
    """decompress's writer, on an open model (InferenceSession's low_memory path too)."""
    total = compressed.model.ByteSize() + compressed.check_budget()
    use_external = external_data if external_data is not None else total > _PROTO_LIMIT
    with AtomicOutputs() as outputs:
        # The output graph first, its restored initializers empty; each is
        # filled in place as its tensor decodes (a few in flight), so the
        # weights are never held twice (with external data, never at all).
        empty = {e.name: _empty_tensor(e) for e in compressed.entries}
        model = compressed.strip(empty)
        restored = {t.name: t for ref in iter_graphs(model.graph) for t in ref.graph.initializer
                    if t.name in empty}
        data_file = output.with_name(output.name + ".data")
        fh = open(outputs.temp_for(data_file), "wb") if use_external else None
        try:
            writer = AlignedWriter(fh) if fh else None
            for entry, array in compressed.iter_decoded():
                tensor = restored[entry.name]
                little = to_stored(array, entry.decode.dtype)  # int4 & co packed, as ONNX stores them
                if writer is not None:  # written from the array's own memory
                    offset, length = writer.add(memoryview(little).cast("B"))
                    set_external(tensor, data_file.name, offset, length)
                else:
                    tensor.raw_data = little.tobytes()
                del array, little
        finally:
            if fh:
                fh.close()
        outputs.temp_for(output).write_bytes(model.SerializeToString())
        outputs.commit()
    return output


@dataclass
class InspectRow:
    name: str
    dtype: str
    shape: tuple[int, ...]
    stages: tuple[str, ...]
    original_bytes: int
    payload_bytes: int
    # what each stage that has something to say did (`Stage.summary`), by stage name:
    # its fields, and one short line each
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def bits_per_weight(self) -> float:
        numel = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        return 8.0 * self.payload_bytes / max(numel, 1)


@dataclass
class InspectResult:
    path: Path
    graph_bytes: int
    sidecar_bytes: int
    rows: list[InspectRow]
    # the model-wide summary of each stage kind (`Stage.total`), by stage name
    totals: dict[str, dict[str, Any]] = field(default_factory=dict)
    total_notes: dict[str, str] = field(default_factory=dict)
    # the sidecar index (codec/index.py): bytes (record + trailer), tensors,
    # plain_graph_bytes, current (made for this .onnx's bytes); None without one
    index: dict[str, Any] | None = None

    @property
    def original_bytes(self) -> int:
        return sum(r.original_bytes for r in self.rows)

    @property
    def payload_bytes(self) -> int:
        return sum(r.payload_bytes for r in self.rows)


def _index_summary(path: Path, sidecars: set[Path]) -> dict[str, Any] | None:
    """What `inspect` says about the sidecar index (None: no single sidecar, or no index in it)."""
    if len(sidecars) != 1:
        return None
    (sidecar,) = sidecars
    data = sidecar.read_bytes() if sidecar.is_file() else b""
    try:
        index = read_index(data)
    except ValueError:
        return {"bytes": None, "tensors": None, "plain_graph_bytes": None, "current": False, "readable": False}
    if index is None:
        return None
    graph = path.read_bytes()
    return {"bytes": len(data) - index.offset, "tensors": len(index.tensors), "plain_graph_bytes": index.plain_size,
            "current": len(graph) == index.graph_size and zlib.crc32(graph) == index.graph_crc, "readable": True}


def inspect(path: str | os.PathLike, *, max_decoded_bytes: int | None = None) -> InspectResult:
    """Per-tensor description of a compressed model: each payload is validated
    natively, read back (`codec.parse`) and each stage says what it did
    (`Stage.summary`, and model-wide `Stage.total`). Reading the payloads
    back takes memory in proportion to the decoded weights, so the decode
    budget applies (`max_decoded_bytes`: as for `InferenceSession`). A model
    without Decode nodes that onnx_l2c never wrote is a ModelError."""
    compressed = CompressedModel(Path(path), max_decoded_bytes)
    try:
        assert compressed.path is not None
        if not compressed.entries and not any(op.domain == DOMAIN for op in compressed.model.opset_import):
            raise ModelError(f"{compressed.path} is not an onnx_l2c-compressed model (no {DOMAIN} Decode nodes); "
                             "compress it with onnx-l2c compress")
        compressed.check_budget()
        rows = []
        summaries = []
        for entry in compressed.entries:
            recipe = parse(compressed.payload(entry), compressed.where(entry), compressed.max_decoded_bytes)
            nbytes = tensor_nbytes(recipe.dtype, recipe.numel)
            stages = summarize(recipe)
            summaries.append(stages)
            rows.append(InspectRow(entry.name, DTYPE_NAMES[recipe.dtype], recipe.dims,
                                   tuple(type(s).name for s in recipe.stages), nbytes, entry.length,
                                   {k: v.fields for k, v in stages.items()}, {k: v.text for k, v in stages.items()}))
            del recipe
        totals = summarize_totals(summaries)
        sidecars = {e.file for e in compressed.entries if e.decode.location is not None}
        sidecar_bytes = sum(f.stat().st_size for f in sidecars if f.is_file())
        return InspectResult(compressed.path, compressed.path.stat().st_size, sidecar_bytes, rows,
                             {k: v.fields for k, v in totals.items()}, {k: v.text for k, v in totals.items()},
                             _index_summary(compressed.path, sidecars))
    finally:
        compressed.close()
