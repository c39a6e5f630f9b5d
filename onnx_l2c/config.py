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

from onnx_l2c.errors import OptionError, literal


class Choice(str, enum.Enum):
    """A named choice; `parse` accepts the member or its value and names the valid ones."""

    @classmethod
    def parse(cls, value: "Choice | str", option: str | None = None) -> "Choice":
        """The member for `value`; `option` names the option it was given for (in the error)."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            label = cls.__name__.lower()
            choices = ", ".join(p.value for p in cls)
            if option is not None:
                raise OptionError(f"invalid choice {literal(repr(value))} (valid values: {choices})", option) from None
            raise OptionError(f"unknown {label} {literal(repr(value))}; valid {label} values: {choices}") from None


class Preset(Choice):
    """Named starting points; explicit options override them."""

    SAFE = "safe"  # data-free mixed precision within a fidelity estimate (SAFE_MAX_DISTORTION): the default
    LOSSLESS = "lossless"  # bit-exact: every weight coded by the `raw` stage
    INT8 = "int8"  # per-output-channel 8-bit, dead zone, entropy coded


class Search(Choice):
    """How the global allocator searches (see onnx_l2c/plan/allocate.py)."""

    LAGRANGE = "lagrange"  # one Lagrange multiplier across all tensors
    PATH = "path"  # FITCompress's greedy path through compression space


DEFAULT_METHODS = ("rounding", "mixed", "requantize")  # requantize: only already-quantized weights

# The safe preset's fidelity estimate: the data-free planner's summed
# distortion (each tensor's squared relative weight error, all tensors alike)
# that the plan may not exceed. Chosen on the zoo (README, "The default"):
# at 2e-5 EfficientNet-Lite0 loses 5 of its 240 `other` views (the bar allows
# 2), at 1e-5 one, and every other model keeps its bar on both sets.
SAFE_MAX_DISTORTION = 1e-5


def parse_methods(value: "str | tuple[str, ...] | list[str]") -> tuple[str, ...]:
    """Method names (comma-separated or a sequence), checked against the registered methods."""
    from onnx_l2c.passes import registry  # the methods register themselves; config only names the defaults

    known = registry()
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else [str(n) for n in value]
    names = [n for n in names if n]
    bad = [n for n in names if n not in known]
    if bad or not names:
        what = f"unknown method(s) {literal(', '.join(bad))}" if bad else "no method given"
        raise OptionError(f"{what}; valid methods: {', '.join(known)}", "methods")
    return tuple(dict.fromkeys(names))


class Scope(enum.Enum):
    """When an option means something. Given where it does not, it is an
    error that says what to add or drop (`CompressOptions.validate`)."""

    ALWAYS = "always"
    TARGET = "with a size target"  # the planner's options (every method's own options too)
    NO_TARGET = "without a size target"  # the fixed quantizer's options (the planner chooses per tensor)


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
    scope: Scope = Scope.ALWAYS  # a method's own options are always Scope.TARGET
    requires: str | None = None  # another option without which this one has no effect
    default_text: str | None = None  # what the default means, when it is not a plain value (help text)
    metavar: str | None = None  # the value's name in help and messages (default: from the type)

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def value_name(self) -> str:
        """The value's placeholder in help and messages (R, BYTES, PATH, ...)."""
        if self.metavar is not None:
            return self.metavar
        if self.type is tuple:
            return "LIST"
        if self.type in (Path, object):
            return "PATH"
        if isinstance(self.type, type) and issubclass(self.type, Choice):
            return "{" + ",".join(p.value for p in self.type) + "}"
        return self.type.__name__.upper()


CORE_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("preset", Preset, Preset.SAFE,
               "starting point: safe (data-free mixed precision that keeps the model's behaviour), "
               "lossless (bit-exact) or int8 (8-bit per-channel)", scope=Scope.NO_TARGET),
    OptionSpec("bits", int, None,
               "quantize matrix weights to this many bits per-channel (2-16); implies a lossy preset",
               minimum=2, maximum=16, scope=Scope.NO_TARGET, metavar="N"),
    OptionSpec("dead_zone", float, 0.15,
               "extra half-width of the zero bin, in quantization steps (0 = plain rounding)",
               minimum=0.0, maximum=0.5, scope=Scope.NO_TARGET, metavar="STEPS"),
    OptionSpec("min_elements", int, 1024,
               "initializers with fewer elements are left as they are",
               minimum=1, metavar="N"),
    OptionSpec("workers", int, 0,
               "threads for encoding (0 = one per CPU core)",
               minimum=0, metavar="N"),
    OptionSpec("target_ratio", float, None,
               "compress to this ratio (original bytes / output bytes, measured on the written files)",
               minimum=1.0, metavar="R"),
    OptionSpec("target_size", int, None,
               "compress to this many bytes (graph + sidecar)",
               minimum=1, metavar="BYTES"),
    OptionSpec("allow_target_miss", bool, False,
               "with a size target the methods cannot reach: write the smallest file they reach (and warn) "
               "instead of failing", scope=Scope.TARGET),
    OptionSpec("calibration_data", object, None,
               "calibration samples for a size target: an .npz (one array per graph input, leading sample "
               "axis) or a folder of per-sample .npz files; the API also takes any iterable of "
               "{input: array} dicts or a CalibrationDataReader", flag="--calibration", scope=Scope.TARGET),
    OptionSpec("calibration_samples", int, 128,
               "calibration samples to use", minimum=1, scope=Scope.TARGET, requires="calibration_data",
               metavar="N"),
    OptionSpec("methods", tuple, DEFAULT_METHODS,
               "comma-separated methods for a size target ({methods})", scope=Scope.TARGET),
    OptionSpec("search", Search, Search.LAGRANGE,
               "global allocation search for a size target: lagrange (one multiplier) or path (FITCompress "
               "greedy path)", scope=Scope.TARGET),
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


def option_owner(name: str) -> str | None:
    """The method that declares option `name` (None for a core option)."""
    from onnx_l2c.passes import registry

    return next((m.name for m in registry().values() if any(s.name == name for s in m.options)), None)


def __getattr__(name: str) -> Any:
    if name == "OPTIONS":
        return all_options()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class CompressOptions:
    """Resolved options of one compression run (see `OPTIONS` for meanings).

    Built from keyword arguments by `from_kwargs` (one compress call) or
    `for_planner` (a `Planner`, whose size target comes with each compress
    call); both record the options that were given (`given`) and `validate`
    them: an option given where it has no effect is an error that says what
    to add or drop."""

    preset: Preset = Preset.SAFE
    bits: int | None = None
    dead_zone: float = 0.15
    min_elements: int = 1024
    workers: int = 0
    target_ratio: float | None = None
    target_size: int | None = None
    allow_target_miss: bool = False
    calibration_data: Any = None
    calibration_samples: int = 128
    methods: tuple[str, ...] = DEFAULT_METHODS
    search: Search = Search.LAGRANGE
    report: Path | None = None
    method_options: tuple[tuple[str, Any], ...] = ()  # the methods' own options that were given, by name
    given: frozenset[str] = frozenset()  # the options the caller gave (core and method options)

    def __post_init__(self) -> None:
        if self.target_ratio is not None and self.target_size is not None:
            raise OptionError("give {target_ratio:R} or {target_size:BYTES}, not both", "target_size")

    @property
    def has_target(self) -> bool:
        return self.target_ratio is not None or self.target_size is not None

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "CompressOptions":
        """The options of one compress call (None values are not given), validated."""
        opts = cls._parse(kwargs)
        opts.validate(target_later=False)
        return opts

    @classmethod
    def for_planner(cls, **kwargs: Any) -> "CompressOptions":
        """The options of a Planner: validated as for a size target, which
        each of its compress calls gives."""
        for name in ("target_ratio", "target_size"):
            if kwargs.get(name) is not None:
                raise OptionError("a Planner takes its size target with each compress call: give {"
                                  + name + "} to Planner.compress", name)
        opts = cls._parse(kwargs)
        opts.validate(target_later=True)
        return opts

    @classmethod
    def _parse(cls, kwargs: dict[str, Any]) -> "CompressOptions":
        specs = {spec.name: spec for spec in all_options()}
        values: dict[str, Any] = {}
        owned: dict[str, Any] = {}
        for name, value in kwargs.items():
            spec = specs.get(name)
            if spec is None:
                valid = ", ".join(specs)
                raise OptionError(f"unknown option {literal(repr(name))}; valid options: {valid}")
            if value is None:
                continue
            (values if name in _CORE_NAMES else owned)[name] = _coerce(spec, value)
        given = frozenset(values) | frozenset(owned)
        return cls(**values, method_options=tuple(sorted(owned.items())), given=given)

    def validate(self, target_later: bool = False) -> None:
        """Refuse options that were given where they have no effect, and
        conflicting ones. `target_later`: a size target comes later (a Planner)."""
        specs = {spec.name: spec for spec in all_options()}
        targeted = self.has_target or target_later
        target = "target_size" if self.target_size is not None else "target_ratio"
        if self.given_value("preset") is Preset.LOSSLESS:
            for name in ("bits", "dead_zone"):
                if name in self.given:
                    raise OptionError("not allowed with {preset:lossless}, which codes every weight bit-exactly: "
                                      f"drop {{{name}}}, or choose a lossy {{preset}}", name)
        if self.given_value("preset") is Preset.SAFE and "bits" in self.given:
            raise OptionError("not allowed with {preset:safe}, which chooses each weight's precision: drop "
                              "{bits}, or drop {preset}", "bits")
        if (self.preset is Preset.SAFE and not targeted and "bits" not in self.given
                and "dead_zone" in self.given):
            raise OptionError("has no effect with the safe preset, which chooses each weight's quantizer: add "
                              "{bits:N} or {preset:int8}, or drop {dead_zone}", "dead_zone")
        for name in sorted(self.given, key=list(specs).index):
            spec = specs[name]
            owner = option_owner(name)
            if (spec.scope is Scope.TARGET or owner is not None) and not targeted:
                raise OptionError("has no effect without a size target: add {target_ratio:R} or "
                                  f"{{target_size:BYTES}}, or drop {{{name}}}", name)
            if spec.scope is Scope.NO_TARGET and targeted:
                if self.has_target:
                    raise OptionError(f"has no effect with a size target ({{{target}}}; the planner chooses each "
                                      f"tensor's quantization): drop {{{name}}}, or drop {{{target}}}", name)
                raise OptionError("has no effect on a Planner (it plans for a size target and chooses each "
                                  f"tensor's quantization): drop {{{name}}}", name)
            if spec.requires is not None and spec.requires not in self.given:
                need = specs[spec.requires]
                raise OptionError(f"has no effect without {{{need.name}}}: add {{{need.name}:{need.value_name}}}, "
                                  f"or drop {{{name}}}", name)
            if owner is not None and owner not in self.methods:
                raise OptionError(f"belongs to method {owner}, which the selected methods "
                                  f"({','.join(self.methods)}) do not include: add {owner} to {{methods}}, "
                                  f"or drop {{{name}}}", name)
        if "methods" in self.given and self.calibration_data is None:
            from onnx_l2c.passes import registry

            needing = [m for m in self.methods if registry()[m].needs_calibration]
            if needing:
                which = f"method {needing[0]} needs" if len(needing) == 1 else f"methods {', '.join(needing)} need"
                raise OptionError(f"{which} calibration data and would be left out: add {{calibration_data:PATH}}, "
                                  f"or drop {', '.join(needing)} from {{methods}}", "methods")

    def given_value(self, name: str) -> Any:
        """The value given for option `name`, or None when it was not given."""
        if name not in self.given:
            return None
        return self.option(name) if name not in _CORE_NAMES else getattr(self, name)

    def given_options(self) -> dict[str, Any]:
        """Keyword arguments that rebuild these options (only those that were given)."""
        return {name: self.given_value(name) for name in self.given}

    def option(self, name: str) -> Any:
        """A method's own option: the value given, else its declared default."""
        given = dict(self.method_options)
        if name in given:
            return given[name]
        spec = next((s for s in all_options() if s.name == name and s.name not in _CORE_NAMES), None)
        if spec is None:
            raise OptionError(f"{literal(repr(name))} is not a method option; method options: "
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
        """Every option's value, given or default (method options flattened)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("method_options", "given")}
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
    name = spec.name
    if isinstance(spec.type, type) and issubclass(spec.type, Choice):
        return spec.type.parse(value, name)
    if spec.type is tuple:
        return parse_methods(value)
    if spec.type is Path:
        if not isinstance(value, (str, Path)):
            raise OptionError(f"must be a path, got {literal(repr(value))}", name)
        return Path(value)
    if spec.type is object:
        return value
    if spec.type is bool:
        if not isinstance(value, bool):
            raise OptionError(f"must be True or False, got {literal(repr(value))}", name)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionError(f"must be a number, got {literal(repr(value))}", name)
    if spec.type is int and int(value) != value:
        raise OptionError(f"must be an integer, got {value!r}", name)
    value = spec.type(value)
    if spec.minimum is not None and value < spec.minimum:
        raise OptionError(f"must be ≥ {spec.minimum:g}, got {value:g}", name)
    if spec.maximum is not None and value > spec.maximum:
        raise OptionError(f"must be ≤ {spec.maximum:g}, got {value:g}", name)
    return value
