"""Declarative compression options.

One table (`OPTIONS`) describes every option once; the CLI flags
(`onnx_l2c.cli`) and the keyword arguments of `onnx_l2c.compress` are both
generated from it, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_l2c.errors import OptionError


class _Choice(str, enum.Enum):
    """A named choice; `parse` accepts the member or its value and names the valid ones."""

    @classmethod
    def parse(cls, value: "_Choice | str") -> "_Choice":
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            label = cls.__name__.lower()
            choices = ", ".join(p.value for p in cls)
            raise OptionError(f"unknown {label} {value!r}; valid {label} values: {choices}") from None


class Preset(_Choice):
    """Named starting points; explicit options override them."""

    LOSSLESS = "lossless"  # bit-exact: every weight coded by the `raw` stage
    INT8 = "int8"  # per-output-channel 8-bit, dead zone, entropy coded


class Search(_Choice):
    """How the global allocator searches (see onnx_l2c/plan/allocate.py)."""

    LAGRANGE = "lagrange"  # one Lagrange multiplier across all tensors
    PATH = "path"  # FITCompress's greedy path through compression space


class BlockShape(_Choice):
    """Micro-block shapes of unification: 1×N runs along a weight's input
    channels, or a Conv's whole spatial kernel (e.g. 3×3)."""

    B1X2 = "1x2"
    B1X4 = "1x4"
    B1X8 = "1x8"
    B1X16 = "1x16"
    KERNEL = "kernel"

    @property
    def length(self) -> int | None:
        """Elements along the input channels (None for the kernel shape)."""
        return None if self is BlockShape.KERNEL else int(self.value.split("x")[1])


DEFAULT_METHODS = ("rounding", "mixed")


def parse_methods(value: "str | tuple[str, ...] | list[str]") -> tuple[str, ...]:
    """Method names (comma-separated or a sequence), checked against the registered methods."""
    from onnx_l2c.passes import registry  # the methods register themselves; config only names the defaults

    known = registry()
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else [str(n) for n in value]
    names = [n for n in names if n]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise OptionError(f"unknown method(s) {bad or names!r} for option 'methods' (--methods); "
                          f"valid methods: {', '.join(known)}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class OptionSpec:
    """One option: its name, type, default, bounds and help text."""

    name: str
    type: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    flag: str | None = None  # CLI flag when it differs from --name
    cli: bool = True  # False: API only


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("preset", Preset, Preset.INT8,
               "starting point: lossless (bit-exact) or int8 (8-bit per-channel)"),
    OptionSpec("bits", int, None,
               "quantize matrix weights to this many bits per-channel (2-16); implies a lossy preset",
               minimum=2, maximum=16),
    OptionSpec("dead_zone", float, 0.15,
               "extra half-width of the zero bin, in quantization steps (0 = plain rounding)",
               minimum=0.0, maximum=0.5),
    OptionSpec("min_elements", int, 1024,
               "initializers with fewer elements are left as they are",
               minimum=1),
    OptionSpec("workers", int, 0,
               "threads for encoding (0 = one per CPU core)",
               minimum=0),
    OptionSpec("target_ratio", float, None,
               "compress to this ratio (original bytes / output bytes, measured on the written files)",
               minimum=1.0),
    OptionSpec("target_size", int, None,
               "compress to this many bytes (graph + sidecar)",
               minimum=1),
    OptionSpec("calibration_data", object, None,
               "calibration samples: an .npz (one array per graph input, leading sample axis) or a folder "
               "of per-sample .npz files; the API also takes any iterable of {input: array} dicts or a "
               "CalibrationDataReader", flag="--calibration"),
    OptionSpec("calibration_samples", int, 128,
               "calibration samples to use", minimum=1),
    OptionSpec("methods", tuple, DEFAULT_METHODS,
               "comma-separated methods for a size target ({methods})"),
    OptionSpec("fixing_delta", float, None,
               "weight fixing: relative tolerance δ of the shared power-of-two codebook (default: the "
               "allocator tries 0.01 to 0.2)", minimum=0.001, maximum=0.5),
    OptionSpec("pow2_order", int, 0,
               "weight fixing: starting order of the codebook (0 = single powers of two; each order adds a "
               "term; raised where no value is close enough)", minimum=0, maximum=3),
    OptionSpec("block", BlockShape, None,
               "unification: micro-block shape, 1xN along input channels or kernel (a Conv's spatial kernel) "
               "(default: the allocator tries 1x4, 1x8 and, for spatial Conv weights, kernel)"),
    OptionSpec("search", Search, Search.LAGRANGE,
               "global allocation search: lagrange (one multiplier) or path (FITCompress greedy path)"),
    OptionSpec("report", Path, None,
               "write a JSON report (per-tensor method, parameters, bits, sparsity, shares) and a PNG "
               "of the allocation beside it"),
)


@dataclass(frozen=True)
class CompressOptions:
    """Resolved options of one compression run (see `OPTIONS` for meanings)."""

    preset: Preset = Preset.INT8
    bits: int | None = None
    dead_zone: float = 0.15
    min_elements: int = 1024
    workers: int = 0
    target_ratio: float | None = None
    target_size: int | None = None
    calibration_data: Any = None
    calibration_samples: int = 128
    methods: tuple[str, ...] = DEFAULT_METHODS
    fixing_delta: float | None = None
    pow2_order: int = 0
    block: BlockShape | None = None
    search: Search = Search.LAGRANGE
    report: Path | None = None

    def __post_init__(self) -> None:
        if self.target_ratio is not None and self.target_size is not None:
            raise OptionError("give target_ratio or target_size, not both")

    @property
    def has_target(self) -> bool:
        return self.target_ratio is not None or self.target_size is not None

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "CompressOptions":
        specs = {spec.name: spec for spec in OPTIONS}
        values: dict[str, Any] = {}
        for name, value in kwargs.items():
            spec = specs.get(name)
            if spec is None:
                valid = ", ".join(specs)
                raise OptionError(f"unknown option {name!r}; valid options: {valid}")
            if value is None:
                continue
            values[name] = _coerce(spec, value)
        return cls(**values)

    @property
    def quant_bits(self) -> int | None:
        """Bits for the uniform quantizer, or None for the lossless preset."""
        if self.bits is not None:
            return self.bits
        if self.preset is Preset.INT8:
            return 8
        return None

    def as_options(self) -> dict[str, Any]:
        """Keyword arguments that rebuild these options."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["preset"] = self.preset.value
        out["search"] = self.search.value
        out["block"] = self.block.value if self.block is not None else None
        out["methods"] = list(self.methods)
        out["report"] = str(self.report) if self.report is not None else None
        data = self.calibration_data
        out["calibration_data"] = (None if data is None else str(data) if isinstance(data, (str, Path))
                                   else type(data).__name__)
        return out


def _coerce(spec: OptionSpec, value: Any) -> Any:
    if spec.type is Preset:
        return Preset.parse(value)
    if spec.type is Search:
        return Search.parse(value)
    if spec.type is BlockShape:
        return BlockShape.parse(value)
    if spec.type is tuple:
        return parse_methods(value)
    if spec.type is Path:
        if not isinstance(value, (str, Path)):
            raise OptionError(f"option {spec.name!r} must be a path, got {value!r}")
        return Path(value)
    if spec.type is object:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionError(f"option {spec.name!r} must be a number, got {value!r}")
    if spec.type is int and int(value) != value:
        raise OptionError(f"option {spec.name!r} must be an integer, got {value!r}")
    value = spec.type(value)
    if spec.minimum is not None and value < spec.minimum:
        raise OptionError(f"option {spec.name!r} must be ≥ {spec.minimum}, got {value}")
    if spec.maximum is not None and value > spec.maximum:
        raise OptionError(f"option {spec.name!r} must be ≤ {spec.maximum}, got {value}")
    return value
