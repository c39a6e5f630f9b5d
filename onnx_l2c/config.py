"""Declarative compression options.

One table (`OPTIONS`) describes every option once; the CLI flags
(`onnx_l2c.cli`) and the keyword arguments of `onnx_l2c.compress` are both
generated from it, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

from .errors import L2CError


class Preset(str, enum.Enum):
    """Named starting points; explicit options override them."""

    LOSSLESS = "lossless"  # bit-exact: every weight coded by the `raw` stage
    INT8 = "int8"  # per-output-channel 8-bit, dead zone, entropy coded

    @classmethod
    def parse(cls, value: "Preset | str") -> "Preset":
        if isinstance(value, Preset):
            return value
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise L2CError(f"unknown preset {value!r}; valid presets: {choices}") from None


@dataclass(frozen=True)
class OptionSpec:
    """One option: its name, type, default, bounds and help text."""

    name: str
    type: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None


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
)


@dataclass(frozen=True)
class CompressOptions:
    """Resolved options of one compression run (see `OPTIONS` for meanings)."""

    preset: Preset = Preset.INT8
    bits: int | None = None
    dead_zone: float = 0.15
    min_elements: int = 1024
    workers: int = 0

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "CompressOptions":
        specs = {spec.name: spec for spec in OPTIONS}
        values: dict[str, Any] = {}
        for name, value in kwargs.items():
            spec = specs.get(name)
            if spec is None:
                valid = ", ".join(specs)
                raise L2CError(f"unknown option {name!r}; valid options: {valid}")
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

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["preset"] = self.preset.value
        return out


def _coerce(spec: OptionSpec, value: Any) -> Any:
    if spec.type is Preset:
        return Preset.parse(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise L2CError(f"option {spec.name!r} must be a number, got {value!r}")
    if spec.type is int and int(value) != value:
        raise L2CError(f"option {spec.name!r} must be an integer, got {value!r}")
    value = spec.type(value)
    if spec.minimum is not None and value < spec.minimum:
        raise L2CError(f"option {spec.name!r} must be ≥ {spec.minimum}, got {value}")
    if spec.maximum is not None and value > spec.maximum:
        raise L2CError(f"option {spec.name!r} must be ≤ {spec.maximum}, got {value}")
    return value
