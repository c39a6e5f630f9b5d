"""Declarative compression options.

One table describes every option once: the core options here
(`CORE_OPTIONS`) and each method's own (`Method.options`, declared in the
method's module). `all_options()` joins them; the CLI flags
(`onnx_l2c.cli`) and the keyword arguments of `onnx_l2c.compress` are both
generated from it, so they cannot drift apart. (`OPTIONS` is the same
table, built on first use.)
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_l2c.errors import OptionError


class Choice(str, enum.Enum):
    """A named choice; `parse` accepts the member or its value and names the valid ones."""

    @classmethod
    def parse(cls, value: "Choice | str") -> "Choice":
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            label = cls.__name__.lower()
            choices = ", ".join(p.value for p in cls)
            raise OptionError(f"unknown {label} {value!r}; valid {label} values: {choices}") from None


class Preset(Choice):
    """Named starting points; explicit options override them."""

    SAFE = "safe"  # data-free mixed precision within a fidelity estimate (SAFE_MAX_DISTORTION): the default
    LOSSLESS = "lossless"  # bit-exact: every weight coded by the `raw` stage
    INT8 = "int8"  # per-output-channel 8-bit, dead zone, entropy coded


class Search(Choice):
    """How the global allocator searches (see onnx_l2c/plan/allocate.py)."""

    LAGRANGE = "lagrange"  # one Lagrange multiplier across all tensors
    PATH = "path"  # FITCompress's greedy path through compression space


DEFAULT_METHODS = ("rounding", "mixed")

# The safe preset's fidelity estimate: the data-free planner's summed
# distortion (each weight's squared relative error, weighted by its
# sensitivity estimate) that the plan may not exceed. Measured on the zoo
# (README, "The default"): the largest value at which every model keeps its
# fidelity bar on both evaluation sets, with a margin.
SAFE_MAX_DISTORTION = 1e-4


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


CORE_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("preset", Preset, Preset.SAFE,
               "starting point: safe (data-free mixed precision that keeps the model's behaviour), "
               "lossless (bit-exact) or int8 (8-bit per-channel)"),
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
    OptionSpec("search", Search, Search.LAGRANGE,
               "global allocation search: lagrange (one multiplier) or path (FITCompress greedy path)"),
    OptionSpec("report", Path, None,
               "write a JSON report (per-tensor method, parameters, bits, sparsity, shares) and a PNG "
               "of the allocation beside it"),
)


_CORE_NAMES = frozenset(spec.name for spec in CORE_OPTIONS)


def all_options() -> tuple[OptionSpec, ...]:
    """The core options and every registered method's own options."""
    from onnx_l2c.passes import registry  # methods declare their options in their own modules

    specs = list(CORE_OPTIONS)
    owner = {spec.name: "onnx_l2c.config" for spec in specs}
    for m in registry().values():
        for spec in m.options:
            if spec.name in owner:
                raise AssertionError(f"option {spec.name!r} of method {m.name!r} is already defined by "
                                     f"{owner[spec.name]}")
            owner[spec.name] = f"method {m.name!r}"
            specs.append(spec)
    return tuple(specs)


def __getattr__(name: str) -> Any:
    if name == "OPTIONS":
        return all_options()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class CompressOptions:
    """Resolved options of one compression run (see `OPTIONS` for meanings)."""

    preset: Preset = Preset.SAFE
    bits: int | None = None
    dead_zone: float = 0.15
    min_elements: int = 1024
    workers: int = 0
    target_ratio: float | None = None
    target_size: int | None = None
    calibration_data: Any = None
    calibration_samples: int = 128
    methods: tuple[str, ...] = DEFAULT_METHODS
    search: Search = Search.LAGRANGE
    report: Path | None = None
    method_options: tuple[tuple[str, Any], ...] = ()  # the methods' own options that were given, by name

    def __post_init__(self) -> None:
        if self.target_ratio is not None and self.target_size is not None:
            raise OptionError("give target_ratio or target_size, not both")

    @property
    def has_target(self) -> bool:
        return self.target_ratio is not None or self.target_size is not None

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "CompressOptions":
        specs = {spec.name: spec for spec in all_options()}
        core = {spec.name for spec in CORE_OPTIONS}
        values: dict[str, Any] = {}
        owned: dict[str, Any] = {}
        for name, value in kwargs.items():
            spec = specs.get(name)
            if spec is None:
                valid = ", ".join(specs)
                raise OptionError(f"unknown option {name!r}; valid options: {valid}")
            if value is None:
                continue
            (values if name in core else owned)[name] = _coerce(spec, value)
        return cls(**values, method_options=tuple(sorted(owned.items())))

    def option(self, name: str) -> Any:
        """A method's own option: the value given, else its declared default."""
        given = dict(self.method_options)
        if name in given:
            return given[name]
        spec = next((s for s in all_options() if s.name == name and s.name not in _CORE_NAMES), None)
        if spec is None:
            raise OptionError(f"{name!r} is not a method option; method options: "
                              f"{', '.join(s.name for s in all_options() if s.name not in _CORE_NAMES)}")
        return spec.default

    @property
    def safe_plan(self) -> bool:
        """The safe preset without a size target or `bits`: planned data-free within SAFE_MAX_DISTORTION."""
        return self.preset is Preset.SAFE and self.bits is None and not self.has_target

    @property
    def quant_bits(self) -> int | None:
        """Bits for the uniform quantizer, or None (lossless, or the safe preset's plan)."""
        if self.bits is not None:
            return self.bits
        if self.preset is Preset.INT8:
            return 8
        return None

    def as_options(self) -> dict[str, Any]:
        """Keyword arguments that rebuild these options (method options flattened)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "method_options"}
        for spec in all_options():
            if spec.name not in _CORE_NAMES:
                out[spec.name] = self.option(spec.name)
        return out

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON values (for reports)."""
        out = {name: value.value if isinstance(value, Choice) else value
               for name, value in self.as_options().items()}
        out["methods"] = list(self.methods)
        out["report"] = str(self.report) if self.report is not None else None
        data = self.calibration_data
        out["calibration_data"] = (None if data is None else str(data) if isinstance(data, (str, Path))
                                   else type(data).__name__)
        return out


def _coerce(spec: OptionSpec, value: Any) -> Any:
    if isinstance(spec.type, type) and issubclass(spec.type, Choice):
        return spec.type.parse(value)
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
