"""The method protocol, the registry, and the machinery methods share.

Every lossy method is one module with one `Method` subclass (DESIGN.md §3):
it declares its name and flags, proposes candidates for a tensor
(`candidates`), quantizes one candidate (`quantize`, the same code the final
encode runs), emits the stages that decode it (`encode`) and summarizes what
it did over the network (`summary`). Subclassing registers it; the planner,
the writer, the report and the CLI's `--methods` iterate over `registry()`
and never name a method. (Its tuning options, e.g. weight fixing's δ, are
still rows of the one option table in onnx_l2c/config.py.)

Adding a method: a new module in passes/ (the package imports every module)
with a `Method` subclass and its parameter dataclass (a `Params` subclass
whose `method` is the method's name), plus its tests.
"""

from __future__ import annotations

import abc
from importlib import import_module
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from onnx_l2c.codec import FLOAT_DTYPES, Recipe, bits_to_float32, quantized_values, reconstruct, serialize
from onnx_l2c.errors import OptionError, literal
from onnx_l2c.plan.allocate import Option

if TYPE_CHECKING:
    from onnx_l2c.config import CompressOptions, OptionSpec
    from onnx_l2c.measure.layers import LayerStats, LayerView

# The step grid of the allocator: α = 2^(k/2) · rms, candidates finest first,
# until one codes under STOP_BITS bits per weight.
STOP_BITS = 0.25
CG_STEPS = 4  # conjugate-gradient iterations of each least-squares compensation


@dataclass
class TensorInput:
    """One weight as a method sees it."""

    name: str
    dtype: int  # onnx.TensorProto data type (FLOAT, FLOAT16, BFLOAT16; INT8/UINT8 for a quantized weight)
    shape: tuple[int, ...]
    bits: np.ndarray  # exact bit patterns, flat (uint32 / uint16 / uint8)
    channel_axis: int | None  # output-channel axis from the consuming op; None = not a matrix weight
    # An already-quantized weight (int8/uint8/int4/uint4): its zero point, int32 broadcastable to
    # the shape. Its values are then the integers less the zero point: the weight in
    # units of its stored step (the scale is left out: errors are relative).
    zero_point: np.ndarray | None = None
    # MatMulNBits' B: uint8 elements each holding 8 / field_bits integers (values unpack them)
    field_bits: int | None = None

    @property
    def quantized(self) -> bool:
        return self.zero_point is not None

    @property
    def values(self) -> np.ndarray:
        """The weight as float32 (exact for every supported dtype), shaped."""
        if self.quantized:
            return self.integer_values(self.bits)
        return bits_to_float32(self.bits, self.dtype).reshape(self.shape)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def weight_count(self) -> int:
        """How many weights it holds: its elements, or the integers packed in them."""
        return self.numel * (8 // self.field_bits) if self.field_bits else self.numel

    def integer_values(self, stored: np.ndarray) -> np.ndarray:
        """A quantized weight's stored integers (bits or storage) less the zero point, as float32, shaped
        (the last axis unpacked for `field_bits`)."""
        assert self.zero_point is not None
        return quantized_values(np.asarray(stored).reshape(self.shape), self.dtype, self.zero_point,
                                self.field_bits).astype(np.float32)

    def decoded_values(self, decoded: np.ndarray) -> np.ndarray:
        """A decoded version of this weight (what `reconstruct` or the native
        decoder returns: float32, float16, or bfloat16 bits; a quantized weight's
        integers) as float32, shaped."""
        if self.quantized:
            return self.integer_values(decoded)
        return bits_to_float32(np.asarray(decoded).view(self.bits.dtype), self.dtype).reshape(self.shape)


@dataclass
class RefineJob:
    """What a refining method gets: the model as it will be written (bias
    corrections applied), the planned recipe and parameters of every lossy
    tensor, and the calibration samples."""

    model: Any  # onnx.ModelProto, as it will be written (bias corrections applied)
    original: Any  # onnx.ModelProto: the teacher
    base_dir: Any  # pathlib.Path
    tensors: dict[str, TensorInput]
    recipes: dict[str, Recipe]
    params: dict[str, "Params | None"]
    samples: Any  # a sequence of feed dicts
    options: "CompressOptions"
    progress: Any = None  # callable(done, total, metrics) or None


@dataclass
class Refined:
    recipes: dict[str, Recipe]  # the tensors whose recipe changes
    notes: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Quantized:
    """One candidate coded: its recipe, payload, layer-local error and sparsity."""

    recipe: Recipe
    payload: bytes
    error: float  # layer-local: tr(ΔW·H·ΔWᵀ) with statistics, else ‖ΔW‖²
    sparsity: float


def layer_error(delta: np.ndarray, stats: "LayerStats | None") -> float:
    """The layer-local error of a weight error; `delta` is consumed (a
    float64 delta is squared in place where no H is involved)."""
    if stats is not None:
        return stats.weighted_error(delta, consume=True)
    if delta.dtype != np.float64:
        delta = delta.astype(np.float64)
    np.square(delta, out=delta)
    return float(delta.sum())


def weight_delta(tensor: TensorInput, decoded: np.ndarray) -> np.ndarray:
    """decoded − original in float64, with one float64 array (the float32
    original is widened exactly, element by element)."""
    delta = decoded.astype(np.float64)
    delta -= tensor.values
    return delta


def coded(tensor: TensorInput, recipe: Recipe, score: "LayerStats | None") -> Quantized:
    """Serialize a recipe and measure its exact reconstruction error on `score`."""
    payload = serialize(recipe)
    decoded = tensor.decoded_values(reconstruct(recipe))
    sparsity = float((decoded == 0).mean())
    delta = weight_delta(tensor, decoded)
    del decoded
    return Quantized(recipe, payload, layer_error(delta, score), sparsity)


def channel_view(values: np.ndarray, axis: int | None) -> np.ndarray:
    """Reshape to (outer, channels, inner) around the channel axis."""
    shape = values.shape
    if axis is None or not shape:
        return values.reshape(1, 1, -1)
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return values.reshape(outer, shape[axis], inner)


def split_halves(stats: "LayerStats | None") -> tuple["LayerStats | None", "LayerStats | None"]:
    """(fit, score) statistics of a held-out candidate: with full statistics and
    two halves, fit on the first half of the samples and score on the second
    (fitting and scoring on the same samples flatters a fit several-fold on
    layers with few input vectors per dimension); else the same statistics."""
    if stats is not None and stats.hessian is not None and stats.halves is not None:
        return stats.half(0), stats.half(1)
    return stats, stats


@dataclass(frozen=True)
class Knob:
    """A continuous parameter of a candidate family that the allocator's fill
    refines by bisection (smaller = finer, more bytes)."""

    name: str
    steps: int  # bisection steps (each one quantizes the tensor)
    linear: bool = False  # bisect linearly toward 0 (else geometrically toward half the value)
    same: tuple[str, ...] = ()  # grid options of the bracket must share these parameters


class Params:
    """A candidate's parameters (frozen dataclasses); `method` names the method that quantizes them."""

    method: ClassVar[str]

    @property
    def family(self) -> tuple:
        """Candidates of one family differ only in their knobs."""
        raise NotImplementedError

    def knobs(self) -> tuple[Knob, ...]:
        return ()

    def describe(self) -> dict[str, Any]:
        """The parameters as the report shows them."""
        raise NotImplementedError


@dataclass
class TensorContext:
    """What a method may read about one tensor while fitting its candidates."""

    stats: "LayerStats | None"  # calibration statistics (bias-centered where the bias is corrected)
    view: "LayerView | None"  # the weight as its consumer's matrices
    options: "CompressOptions"
    max_abs: float = 0.0  # largest |w| of the network (weight fixing's shared codebook)
    damping: float | None = None  # output-aware rounding's GPTQ damping for this tensor (None: nearest)
    step_families: bool = False  # a method already offered the plain step-grid quantizers
    notes: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, "Method"] = {}


class Method(abc.ABC):
    """One compression method (module doc). Subclasses register on definition."""

    name: ClassVar[str]
    order: ClassVar[int]  # candidates of all methods are listed in this order (ties in the allocation)
    summary_key: ClassVar[str | None] = None  # the plan report's key for `summary`
    # the method's own options (CLI flags and compress() keywords; read with
    # `ctx.options.option(name)`), named so they cannot clash with another's
    options: ClassVar[tuple[OptionSpec, ...]] = ()
    needs_calibration: ClassVar[bool] = False  # dropped (with a note) when there is no calibration data
    corrects_bias: ClassVar[bool] = False  # the planner folds the mean output shift into the consumer's bias
    # False for methods whose candidates all share one step grid position
    # (the uniform baseline): with only such methods the allocator searches
    # that one shared knob instead of choosing per tensor.
    per_tensor: ClassVar[bool] = True
    # True for a method that refines the whole plan after the allocation
    # (the joint optimizer): the planner keeps the calibration samples for it
    # and calls `refine` with every planned recipe.
    refines: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # (ABCMeta sets __abstractmethods__ only after this hook runs: look for them here)
        if any(getattr(getattr(cls, n, None), "__isabstractmethod__", False) for n in dir(cls)):
            return  # a shared base of methods, not a method
        if cls.name in _REGISTRY:
            raise AssertionError(f"method {cls.name!r} registered twice")
        _REGISTRY[cls.name] = cls()

    def applies_to(self, tensor: TensorInput) -> bool:
        """Whether this method proposes candidates for `tensor`: the float weights
        (a method for already-quantized weights says otherwise)."""
        return tensor.dtype in FLOAT_DTYPES and not tensor.quantized

    def prepare(self, tensor: TensorInput, ctx: TensorContext) -> None:
        """Set what this method contributes to the tensor's context before any candidates."""

    @abc.abstractmethod
    def candidates(self, tensor: TensorInput, ctx: TensorContext, lossless_bytes: int) -> list[Option]:
        """This method's candidates of `tensor`, each smaller than lossless."""

    @abc.abstractmethod
    def quantize(self, tensor: TensorInput, params: Any, ctx: TensorContext) -> Quantized:
        """One candidate, scored on held-out samples where the method fits to data."""

    @abc.abstractmethod
    def encode(self, tensor: TensorInput, params: Any, ctx: TensorContext) -> Recipe:
        """The final recipe of the chosen candidate (fitted on all samples)."""

    def refine(self, job: "RefineJob") -> "Refined | None":
        """Recipes that replace some planned ones (methods with `refines`)."""
        return None

    def summary(self, recipes: list[Recipe]) -> dict[str, Any] | None:
        """A network-wide summary of the recipes this method encoded, for the report."""
        return None

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The few numbers of `summary` that one benchmark row shows (keys
        prefixed with the method's name)."""
        return {}


def registry() -> dict[str, Method]:
    """Every registered method by name, in candidate order."""
    import_module(__name__.rpartition(".")[0])  # the package imports every method module, which registers it

    return dict(sorted(_REGISTRY.items(), key=lambda item: item[1].order))


def method(name: str) -> Method:
    methods = registry()
    try:
        return methods[name]
    except KeyError:
        raise OptionError(f"unknown method {literal(repr(name))}; valid methods: {', '.join(methods)}") from None


def method_of(params: Params) -> Method:
    """The method that quantizes these parameters."""
    return method(params.method)


def sweep(exponents: tuple[int, ...], numel: int, lossless: int, candidate: Any, grid: bool = False) -> list[Option]:
    """Candidates along a step grid α = 2^(k/2), finest first: those smaller than
    lossless, until one codes under STOP_BITS bits per weight. `candidate(α)`
    gives (params, quantized); grid=True records k for the shared-grid search."""
    out = []
    for k in exponents:
        params, q = candidate(2.0 ** (k / 2))
        size = len(q.payload)
        if size >= lossless:
            continue
        out.append(Option(size, q.error, params, q.sparsity, grid=k) if grid else
                   Option(size, q.error, params, q.sparsity))
        if 8 * size / max(numel, 1) < STOP_BITS:
            break
    return out


def compensate(w0: np.ndarray, flat: np.ndarray, free: np.ndarray, stats: "LayerStats", view: "LayerView") -> np.ndarray:
    """Least squares on the layer's statistics: the free weights minimize
    tr(ΔW·H·ΔWᵀ) with the fixed ones held (a few conjugate-gradient steps)."""
    assert stats.hessian is not None
    h = np.asarray(stats.hessian, dtype=np.float64)  # widened once, not in each product below
    w_ref = view.to_matrix(w0)
    x = view.to_matrix(flat.reshape(w0.shape))
    mask = view.to_matrix(free.reshape(w0.shape).astype(np.float64)) > 0.5
    # minimize f(x) = tr((x - w)H(x - w)ᵀ) over the free entries: gradient 2(x - w)H
    r = -np.where(mask, np.matmul(x - w_ref, h), 0.0)
    p = r.copy()
    rr = float((r * r).sum())
    for _ in range(CG_STEPS):
        if rr <= 1e-30:
            break
        ap = np.where(mask, np.matmul(p, h), 0.0)
        denom = float((p * ap).sum())
        if denom <= 0:
            break
        alpha = rr / denom
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = float((r * r).sum())
        p = r + (rr_new / rr) * p
        rr = rr_new
    return view.from_matrix(x).reshape(-1)


def entropy_bits(symbols: np.ndarray) -> float:
    """Order-0 empirical entropy of a symbol array, in bits (total)."""
    _, counts = np.unique(np.asarray(symbols).reshape(-1), return_counts=True)
    if counts.size <= 1:
        return 0.0
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())
