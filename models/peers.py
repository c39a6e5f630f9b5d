"""Peer baselines the benchmark compares onnx_l2c against.

Each peer turns one ONNX model into what a user would store or download instead:

* ``zstd-19``: the .onnx file (plus any external data files) through zstandard level 19.
  Size only; nothing to load.
* ``fp16``: onnxconverter-common ``convert_float_to_float16(model, keep_io_types=True)``.
* ``ort-int8-per-channel`` / ``ort-int8-per-tensor``: onnxruntime ``quantize_dynamic`` with
  QInt8 weights, after onnxruntime's ``quant_pre_process`` (which its quantization docs
  recommend before quantizing; if it fails the raw model is quantized and
  ``details["preprocess"]`` says why).
* ``ort-int4-block32`` / ``ort-int4-block128``: onnxruntime ``MatMulNBitsQuantizer``, 4-bit
  symmetric weight-only blocks (MatMul weights only; a model without any records the
  error ``"no MatMul weights"``).
* ``nncodec``: Fraunhofer's NNCodec (MPEG NNC, DeepCABAC) over a QP sweep. The float
  weights (floating initializers with at least 2 elements, all finite) are encoded with
  ``nnc.compress`` as a dict of arrays (framework-agnostic path: tensors of rank >= 2 get
  ``qp``, 1-D ones the near-lossless ``nonweight_qp`` -75), decoded with
  ``nnc.decompress`` and written back into a copy of the model (same names, dtypes and
  shapes), so ``path`` is a plain ONNX model with the decoded weights. ``size_bytes`` is
  what would be shipped: the NNC bitstream plus the ONNX graph without those weights
  (both are written beside ``model.onnx`` as ``model.nnc`` and ``skeleton.onnx``).

A peer's failure is a result: ``error`` holds ``"<ExceptionType>: <message>"`` (prefixed by
the stage, e.g. ``"onnxruntime load: ..."``, when the conversion worked but the produced
model does not load or run in onnxruntime's CPU provider). ``path``/``size_bytes`` stay
set in that case so the artefact can be inspected; treat ``error is not None`` as failure.

Layout: ``workdir/<method>[_<param>]/model.onnx`` (``zstd-19/model.onnx.zst``,
``ort-int4-block32/``, ``nncodec_qp-38/``).

``python -P -m onnx_l2c.models.peers MODEL_NAME`` runs every peer on a zoo model and prints a table.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

NNCODEC_QPS: tuple[int, ...] = (-44, -40, -36, -32, -28)
INT4_BLOCK_SIZES: tuple[int, ...] = (32, 128)
METHODS: tuple[str, ...] = (
    "zstd-19", "fp16", "ort-int8-per-channel", "ort-int8-per-tensor",
    "ort-int4-block32", "ort-int4-block128", "nncodec",
)
_PROTOBUF_LIMIT = 2_000_000_000  # save with external data above this (protobuf's 2 GiB cap)
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclass
class PeerResult:
    method: str
    """One of :data:`METHODS`."""
    params: dict
    """Method parameters, e.g. ``{"qp": -38}`` or ``{"block_size": 32}``."""
    path: Path | None
    """The produced plain .onnx (onnxruntime loads it); None for zstd or when conversion failed."""
    size_bytes: int | None
    """What a user stores/downloads: .onnx plus external data (zstd: the compressed file;
    nncodec: NNC bitstream + weightless graph)."""
    seconds: float
    """Conversion time (nncodec: encoding; decoding time is in ``details``)."""
    error: str | None
    """Exact error text when the tool failed or its output did not load/run; None on success."""
    details: dict = field(default_factory=dict)
    """Extra facts: ``loaded``/``ran`` in onnxruntime, ``smoke_max_abs_diff`` of the first output
    against the original on a fixed synthetic input, per-peer notes."""

    @property
    def ok(self) -> bool:
        return self.error is None


# ------------------------------------------------------------------ helpers

def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def stored_size(path: Path) -> int:
    """Bytes of ``path`` plus every distinct external data file its tensors reference."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    total = path.stat().st_size
    seen: set[Path] = set()
    for t in _all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc is not None:
                f = (path.parent / loc).resolve()
                if f not in seen:
                    seen.add(f)
                    total += f.stat().st_size
    return total


def _external_files(path: Path) -> list[Path]:
    model = onnx.load(str(path), load_external_data=False)
    files: list[Path] = []
    for t in _all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc is not None and (path.parent / loc) not in files:
                files.append(path.parent / loc)
    return files


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        yield from g.initializer
        for n in g.node:
            for a in n.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    graphs.append(a.g)
                graphs.extend(a.graphs)


def _save(model: onnx.ModelProto, path: Path) -> None:
    """Save ``model`` to ``path``; weights go to ``<name>.data`` only past protobuf's 2 GiB cap."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > _PROTOBUF_LIMIT:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save(model, str(path))


def _fresh_dir(d: Path) -> Path:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


@contextlib.contextmanager
def _cwd(d: Path) -> Iterator[None]:
    """Run the block in ``d`` (created) so tools that write into the cwd write there."""
    d.mkdir(parents=True, exist_ok=True)
    prev = Path.cwd()
    os.chdir(d)
    try:
        yield
    finally:
        os.chdir(prev)


def _session(path: Path):  # noqa: ANN202 - onnxruntime.InferenceSession
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


_NP_OF_ORT = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def smoke_feeds(sess) -> dict[str, np.ndarray]:  # noqa: ANN001 - onnxruntime.InferenceSession
    """A fixed synthetic input for ``sess``: symbolic dims -> 1 (first) / 8 (others);
    floats ~ N(0,1) (seed 0), integers and bools all ones (a valid token id / full mask)."""
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (1 if i == 0 else 8)
                 for i, d in enumerate(inp.shape)]
        dtype = _NP_OF_ORT.get(inp.type)
        if dtype is None:
            raise TypeError(f"input {inp.name!r} has unsupported type {inp.type}")
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[inp.name] = np.ones(shape, dtype=dtype)
    return feeds


@dataclass
class _Reference:
    feeds: dict[str, np.ndarray]
    output: np.ndarray


def _reference(original: Path) -> _Reference | None:
    try:
        sess = _session(original)
        feeds = smoke_feeds(sess)
        return _Reference(feeds, np.asarray(sess.run(None, feeds)[0]))
    except Exception as exc:  # noqa: BLE001 - reported, peers still run
        log.warning("original model does not run on the smoke input: %s", _error_text(exc))
        return None


def _check_runs(result: PeerResult, ref: _Reference | None) -> None:
    """Load ``result.path`` in onnxruntime CPU and run it once; record failures as its error."""
    if result.path is None or result.error is not None:
        return
    try:
        sess = _session(result.path)
    except Exception as exc:  # noqa: BLE001
        result.details["loaded"] = False
        result.error = f"onnxruntime load: {_error_text(exc)}"
        return
    result.details["loaded"] = True
    if ref is None:
        # The original itself does not run on the synthetic input (dynamic spatial
        # dims, minimum audio length, ...): the evaluator's real inputs decide.
        return
    try:
        out = np.asarray(sess.run(None, ref.feeds)[0])
    except Exception as exc:  # noqa: BLE001
        result.details["ran"] = False
        result.error = f"onnxruntime run: {_error_text(exc)}"
        return
    result.details["ran"] = True
    if ref is not None and out.shape == ref.output.shape:
        diff = np.abs(out.astype(np.float64) - ref.output.astype(np.float64))
        result.details["smoke_max_abs_diff"] = float(diff.max()) if diff.size else 0.0


def _attempt(method: str, params: dict, fn: Callable[[PeerResult], None]) -> PeerResult:
    """Run one peer: ``fn`` fills ``path``/``size_bytes``/``details``; time it, catch failures."""
    result = PeerResult(method=method, params=dict(params), path=None, size_bytes=None,
                        seconds=0.0, error=None)
    t0 = time.perf_counter()
    try:
        fn(result)
    except (Exception, SystemExit) as exc:  # nncodec raises SystemExit on bad input
        result.error = _error_text(exc)
        result.path = None
        result.size_bytes = None
        log.warning("%s %s failed: %s", method, params or "", result.error)
    # fn may have set its own conversion time (excluding checks/decoding); else wall time
    if not result.seconds:
        result.seconds = time.perf_counter() - t0
    return result


# ------------------------------------------------------------------ peers

def peer_zstd(original: Path, workdir: Path, level: int = 19) -> PeerResult:
    """zstandard level ``level`` of the .onnx file (and its external data files, if any)."""
    def run(r: PeerResult) -> None:
        import zstandard

        out_dir = _fresh_dir(workdir / f"zstd-{level}")
        cctx = zstandard.ZstdCompressor(level=level)
        total = 0
        files: list[str] = []
        t0 = time.perf_counter()
        for src in [original, *_external_files(original)]:
            dst = out_dir / ("model.onnx.zst" if src == original else src.name + ".zst")
            # one-shot, as the zstd command line compresses a file: zstandard's
            # copy_stream came out 2% larger than `zstd -19` on a 23 MB model
            dst.write_bytes(cctx.compress(src.read_bytes()))
            total += dst.stat().st_size
            files.append(str(dst))
        r.seconds = time.perf_counter() - t0
        r.size_bytes = total
        r.details["files"] = files
        r.details["zstandard"] = zstandard.__version__

    return _attempt(f"zstd-{level}", {}, run)


def peer_fp16(original: Path, workdir: Path) -> PeerResult:
    """onnxconverter-common float16 conversion, inputs/outputs kept float32."""
    def run(r: PeerResult) -> None:
        from onnxconverter_common import float16

        out = _fresh_dir(workdir / "fp16") / "model.onnx"
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:  # one per truncated tiny value
            warnings.simplefilter("always")
            model = float16.convert_float_to_float16(onnx.load(str(original)), keep_io_types=True)
        _save(model, out)
        r.details["converter_warnings"] = len(caught)
        r.seconds = time.perf_counter() - t0
        r.path, r.size_bytes = out, stored_size(out)

    return _attempt("fp16", {}, run)


def peer_ort_int8(original: Path, workdir: Path, per_channel: bool) -> PeerResult:
    """onnxruntime dynamic quantization, QInt8 weights, after ``quant_pre_process``."""
    method = "ort-int8-per-channel" if per_channel else "ort-int8-per-tensor"

    def run(r: PeerResult) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process

        out_dir = _fresh_dir(workdir / method)
        out = out_dir / "model.onnx"
        pre = out_dir / "preprocessed.tmp.onnx"
        t0 = time.perf_counter()
        source = original
        failures: list[str] = []
        # Full pre-processing first; symbolic shape inference gives up on some dynamic
        # shapes ("Incomplete symbolic shape inference"), then do the rest without it.
        for skip_symbolic in (False, True):
            try:
                # on failure, symbolic shape inference dumps sym_shape_infer_temp.onnx plus a
                # uuid-named .data file into the working directory: keep that in scratch/
                with _cwd(out_dir / "scratch"):
                    quant_pre_process(str(original.resolve()), str(pre.resolve()),
                                      skip_symbolic_shape=skip_symbolic)
            except Exception as exc:  # noqa: BLE001 - noted, next option
                failures.append(f"skip_symbolic_shape={skip_symbolic}: {_error_text(exc)}")
                continue
            source = pre
            break
        if source is pre and not failures:
            r.details["preprocess"] = "ok"
        elif source is pre:
            r.details["preprocess"] = f"ok with skip_symbolic_shape=True ({failures[0]})"
        else:
            r.details["preprocess"] = f"failed, quantized the raw model ({'; '.join(failures)})"
        if failures:
            log.info("%s: %s", method, r.details["preprocess"])
        try:
            with _cwd(out_dir / "scratch"):
                quantize_dynamic(str(source.resolve()), str(out.resolve()), per_channel=per_channel,
                                 weight_type=QuantType.QInt8)
        finally:
            for f in out_dir.glob("preprocessed.tmp.onnx*"):
                f.unlink()
            shutil.rmtree(out_dir / "scratch", ignore_errors=True)
        r.seconds = time.perf_counter() - t0
        r.path, r.size_bytes = out, stored_size(out)

    return _attempt(method, {"per_channel": per_channel, "weight_type": "QInt8"}, run)


def matmul_weight_names(model: onnx.ModelProto) -> list[str]:
    """Names of 2-D float initializers used as the B input of a top-level MatMul."""
    inits = {t.name: t for t in model.graph.initializer}
    names = []
    for n in model.graph.node:
        if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits:
            t = inits[n.input[1]]
            if t.data_type in _FLOAT_TYPES and len(t.dims) == 2 and n.input[1] not in names:
                names.append(n.input[1])
    return names


def peer_ort_int4(original: Path, workdir: Path, block_size: int) -> PeerResult:
    """onnxruntime ``MatMulNBitsQuantizer``: 4-bit symmetric blocks of ``block_size`` (MatMulNBits)."""
    method = f"ort-int4-block{block_size}"

    def run(r: PeerResult) -> None:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        t0 = time.perf_counter()
        model = onnx.load(str(original))
        weights = matmul_weight_names(model)
        if not weights:
            raise ValueError("no MatMul weights")
        r.details["matmul_weights"] = len(weights)
        out = _fresh_dir(workdir / method) / "model.onnx"
        quant = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True)
        quant.process()
        quant.model.save_model_to_file(str(out),
                                       use_external_data_format=quant.model.model.ByteSize() > _PROTOBUF_LIMIT)
        r.seconds = time.perf_counter() - t0
        r.path, r.size_bytes = out, stored_size(out)

    return _attempt(method, {"bits": 4, "block_size": block_size, "symmetric": True}, run)


# ------------------------------------------------------------------ NNCodec

_NNC_FRAMEWORK_STUBS = ("nncodec.framework", "nncodec.framework.tensorflow_model",
                        "nncodec.framework.pytorch_model", "nncodec.framework.use_case_init")


def _nnc_compression() -> types.ModuleType:
    """``nncodec.nnc.compression`` (``compress``/``decompress`` of a dict of numpy arrays).

    Importing it also imports ``nncodec.framework`` (PyTorch/TF model adapters and the
    demo datasets: torchvision, pandas, opencv, ...), which ``compress``/``decompress`` of
    a parameter dict never use. nncodec is installed with ``--no-deps`` here (its metadata
    pins numpy<2 and pulls a newer torch), so when that import chain fails the framework
    package is stubbed just for the import; the codec itself (``nnc_core`` + the
    DeepCABAC C++ extension) only needs numpy.
    """
    try:
        from nncodec.nnc import compression
        return compression
    except ImportError as exc:
        first = _error_text(exc)
    added = []
    for name in _NNC_FRAMEWORK_STUBS:
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            added.append(name)
    pkg = sys.modules["nncodec.framework"]
    for name in _NNC_FRAMEWORK_STUBS[1:]:
        setattr(pkg, name.rsplit(".", 1)[1], sys.modules[name])
    try:
        from nncodec.nnc import compression
    except ImportError as exc:
        raise ImportError(f"{_error_text(exc)} (first attempt: {first})") from exc
    finally:
        for name in added:
            sys.modules.pop(name, None)
    log.info("nncodec: imported nnc.compression without nncodec.framework (%s)", first)
    return compression


def nnc_weight_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The tensors NNCodec encodes, by name: the finite floating-point weights of layers
    (Conv, ConvTranspose, MatMul, Gemm, Gather tables, LSTM/GRU/RNN; found by onnx_l2c's
    graph analysis, initializers and Constant nodes, in every subgraph) with >= 64 elements.

    Other float tensors are graph constants, not parameters (a Resize `scales`, an
    STFT padding helper, the -3.4e38 attention fill value): NNCodec's absolute-step
    quantizer would change the graph's shapes or semantics, and NNCodec's own use (a
    PyTorch state_dict) never sees them. They stay in the graph, counted in its size.
    """
    from onnx_l2c.graph.model import find_weights

    found: dict[str, onnx.TensorProto] = {}
    for w in find_weights(model, 64).weights:
        if w.channel_axis is not None and np.isfinite(numpy_helper.to_array(w.tensor)).all():
            found[w.name] = w.tensor
    return found


def peer_nncodec(original: Path, workdir: Path, qp: int, *,
                 _model: onnx.ModelProto | None = None) -> PeerResult:
    """NNCodec (DeepCABAC) at ``qp``: encode the weights, decode, write them back."""
    def run(r: PeerResult) -> None:
        import nncodec

        compression = _nnc_compression()
        r.details["nncodec"] = getattr(nncodec, "__version__", None) or _dist_version("nncodec")
        model = _model if _model is not None else onnx.load(str(original))
        tensors = nnc_weight_tensors(model)
        if not tensors:
            raise ValueError("no float weights")
        arrays = {n: numpy_helper.to_array(t) for n, t in tensors.items()}
        params = {n: a.astype(np.float32) for n, a in arrays.items()}
        out_dir = _fresh_dir(workdir / f"nncodec_qp{qp}")

        t0 = time.perf_counter()
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            bitstream = compression.compress(params, bitstream_path=None, qp=qp,
                                             return_bitstream=True, verbose=False)
        skeleton = onnx.ModelProto()  # the graph a user ships beside the bitstream
        skeleton.CopyFrom(model)
        for t in nnc_weight_tensors(skeleton).values():
            for key in ("raw_data", "float_data", "int32_data"):
                t.ClearField(key)
        skeleton_bytes = skeleton.SerializeToString()
        r.seconds = time.perf_counter() - t0

        (out_dir / "model.nnc").write_bytes(bytes(bitstream))
        (out_dir / "skeleton.onnx").write_bytes(skeleton_bytes)
        t1 = time.perf_counter()
        with contextlib.redirect_stdout(captured):
            decoded = compression.decompress(bytearray(bitstream))
        r.details["decode_seconds"] = time.perf_counter() - t1
        if captured.getvalue().strip():
            log.debug("nncodec output:\n%s", captured.getvalue())

        missing = sorted(set(arrays) - set(decoded))
        if missing:
            raise KeyError(f"nncodec decoded no tensor for {missing[:5]} ({len(missing)} missing)")
        rebuilt = onnx.ModelProto()
        rebuilt.CopyFrom(model)
        for name, t in nnc_weight_tensors(rebuilt).items():
            ref = arrays[name]
            dec = np.asarray(decoded[name], dtype=np.float32)
            if dec.size != ref.size:
                raise ValueError(f"nncodec decoded {name} with {dec.size} elements, expected {ref.size}")
            t.CopyFrom(numpy_helper.from_array(dec.reshape(ref.shape).astype(ref.dtype), t.name))
        out = out_dir / "model.onnx"
        _save(rebuilt, out)
        r.path = out
        r.size_bytes = len(bitstream) + len(skeleton_bytes)
        r.details.update(bitstream_bytes=len(bitstream), skeleton_bytes=len(skeleton_bytes),
                         encoded_tensors=len(arrays),
                         encoded_params=int(sum(a.size for a in arrays.values())))

    return _attempt("nncodec", {"qp": qp}, run)


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------ driver

def run_peers(original: Path, workdir: Path, methods: list[str] | None = None,
              nncodec_qps: tuple[int, ...] = NNCODEC_QPS) -> list[PeerResult]:
    """Run the peers in ``methods`` (default: all of :data:`METHODS`) on ``original``.

    Outputs go to ``workdir/<method>[_<param>]/``. Every produced model is loaded and run
    once in onnxruntime's CPU provider; a failure there becomes the result's ``error``.
    """
    original = Path(original)
    workdir = Path(workdir)
    wanted = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown peer method(s) {unknown}; known: {', '.join(METHODS)}")
    workdir.mkdir(parents=True, exist_ok=True)
    ref = _reference(original)
    original_size = stored_size(original)

    jobs: list[Callable[[], PeerResult]] = []
    for m in wanted:
        if m.startswith("zstd-"):
            jobs.append(lambda m=m: peer_zstd(original, workdir, int(m.split("-")[1])))
        elif m == "fp16":
            jobs.append(lambda: peer_fp16(original, workdir))
        elif m.startswith("ort-int8-"):
            jobs.append(lambda m=m: peer_ort_int8(original, workdir, m.endswith("per-channel")))
        elif m.startswith("ort-int4-block"):
            jobs.append(lambda m=m: peer_ort_int4(original, workdir, int(m.removeprefix("ort-int4-block"))))
        elif m == "nncodec":
            loaded = onnx.load(str(original))
            for qp in nncodec_qps:
                jobs.append(lambda qp=qp: peer_nncodec(original, workdir, qp, _model=loaded))

    results = []
    for job in jobs:
        r = job()
        _check_runs(r, ref)
        if r.size_bytes:
            r.details["ratio"] = original_size / r.size_bytes
        log.info("%-22s %-14s size=%s %.1fs %s", r.method, _fmt_params(r.params), r.size_bytes,
                 r.seconds, r.error or "ok")
        results.append(r)
    return results


def _fmt_params(params: dict) -> str:
    if "qp" in params:
        return f"qp={params['qp']}"
    if "block_size" in params:
        return f"block={params['block_size']}"
    return ""


def format_table(original: Path, results: list[PeerResult]) -> str:
    """A plain-text table: method, params, bytes, ratio, seconds, loaded/ran, smoke diff, error."""
    orig = stored_size(original)
    rows = [("method", "params", "bytes", "ratio", "seconds", "loads+runs", "smoke max|d|", "error")]
    for r in results:
        runs = {True: "yes", False: "no"}.get(r.details.get("ran", r.details.get("loaded")), "-")
        diff = r.details.get("smoke_max_abs_diff")
        rows.append((
            r.method, _fmt_params(r.params),
            str(r.size_bytes) if r.size_bytes else "-",
            f"{orig / r.size_bytes:.2f}" if r.size_bytes else "-",
            f"{r.seconds:.1f}", runs,
            f"{diff:.3g}" if diff is not None else "-",
            r.error or "",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"original {original} {orig} bytes"]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1])
    for r in results:
        if r.details.get("preprocess", "ok") != "ok":
            lines.append(f"note {r.method}: preprocess {r.details['preprocess']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .data_cache import cache_root
    from .zoo import zoo_path

    p = argparse.ArgumentParser(description="Run the peer baselines on a zoo model.")
    p.add_argument("model", help="zoo model name (models/zoo.py), or a path to an .onnx file")
    p.add_argument("--workdir", type=Path, default=None,
                   help="output folder (default: <cache>/peers/<model>)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=None)
    p.add_argument("--qps", type=int, nargs="+", default=list(NNCODEC_QPS), help="NNCodec QPs")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in (__package__ or "onnx_l2c.models", "__main__"):
        logging.getLogger(name).setLevel(logging.INFO)
    candidate = Path(a.model)
    if candidate.suffix == ".onnx" and candidate.is_file():
        original, stem = candidate, candidate.stem
    else:
        original, stem = zoo_path(a.model), a.model
    workdir = a.workdir or cache_root() / "peers" / stem
    results = run_peers(original, workdir, a.methods, tuple(a.qps))
    print(format_table(original, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
