"""The package's exceptions, and the error codes of the native C API.

Every failure is an `L2CError`; its subclass says what kind of failure it is
(bad option, bad model, corrupt payload, unsupported op or dtype, I/O), and
errors reported by the native library carry the C API's code. Messages name
the file and tensor involved and, for options, the valid choices.
"""

from __future__ import annotations

import enum
import string
from collections.abc import Callable


class ErrorCode(enum.IntEnum):
    """The return codes of the C API (`L2C_*` in runtime/include/onnx_l2c.h; a test keeps them equal)."""

    OK = 0
    CORRUPT = 1  # malformed, truncated or CRC mismatch
    VERSION = 2  # bad magic or unsupported version / stage kind
    ARGUMENT = 3  # caller error: output buffer size, bad parameters
    MEMORY = 4  # allocation failed
    LIMIT = 5  # the declared decoded size exceeds the caller's budget (max_decoded_bytes)


class L2CError(Exception):
    """Any failure of onnx_l2c. `code` is the native library's code when it reported the failure."""

    code: ErrorCode | None = None

    def __init__(self, message: str, code: ErrorCode | int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = ErrorCode(code)


# Messages about options name them by placeholders, so that the API can say
# `target_ratio=R` and the CLI `--target-ratio R`: "{target_ratio}" is the
# option's name, "{target_ratio:R}" the option given a value (R: what to give).
# Text from elsewhere that goes into such a message passes through `literal`.
OptionNamer = Callable[[str, "str | None"], str]


def literal(value: object) -> str:
    """`value` as text inside a message with option placeholders (braces escaped)."""
    return str(value).replace("{", "{{").replace("}", "}}")


def keyword(name: str, value: str | None) -> str:
    """An option as the Python API spells it: `name` or `name=VALUE`."""
    return name if value is None else f"{name}={value}"


class _Named:
    def __init__(self, name: str, namer: OptionNamer) -> None:
        self.name, self.namer = name, namer

    def __format__(self, spec: str) -> str:
        return self.namer(self.name, spec or None)


class _Names(dict):
    def __init__(self, namer: OptionNamer) -> None:
        super().__init__()
        self.namer = namer

    def __missing__(self, name: str) -> _Named:
        return _Named(name, self.namer)


class NamesOptions:
    """An error whose message names options through placeholders (above);
    `detail(namer)` renders it for one interface."""

    template: str

    def detail(self, namer: OptionNamer = keyword) -> str:
        return string.Formatter().vformat(self.template, (), _Names(namer))


class OptionError(NamesOptions, L2CError):
    """A compression option (a keyword argument or its CLI flag) is unknown, out
    of range, in conflict with another, or has no effect where it was given.

    `option` is the option the error is about (its name in the option table,
    e.g. "target_ratio"), or None; the message is then "option NAME: DETAIL",
    where the CLI says "argument --FLAG: DETAIL" (`detail` with its flags)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        self.template = message
        self.option = option
        text = self.detail()
        super().__init__(f"option {option}: {text}" if option is not None else text)


class TargetError(NamesOptions, L2CError):
    """The size target cannot be reached by the selected methods (nothing is written)."""

    def __init__(self, message: str) -> None:
        self.template = message
        super().__init__(self.detail())


class ModelError(L2CError):
    """The input model is not one onnx_l2c can read or compress (or already compressed)."""


class PayloadError(L2CError):
    """A payload or the Decode node that points at it is malformed, truncated or fails its CRC."""

    code = ErrorCode.CORRUPT


class VersionError(PayloadError):
    """A payload of another format: bad magic, or a version or stage kind this library does not know."""

    code = ErrorCode.VERSION


class UnsupportedError(L2CError):
    """An op, dtype or stage sequence onnx_l2c does not handle."""


class NativeArgumentError(L2CError):
    """The native library was called with a buffer or parameter that does not fit (a caller's error)."""

    code = ErrorCode.ARGUMENT


class OutOfMemoryError(L2CError, MemoryError):
    """An allocation failed (the native decoder, or a declared tensor too large for this machine)."""

    code = ErrorCode.MEMORY


class LimitError(L2CError):
    """A payload (or a model's payloads together) would decode to more bytes than
    `max_decoded_bytes` allows: refused before allocating."""

    code = ErrorCode.LIMIT


class FileError(L2CError):
    """A file could not be read or written (missing, unreadable, outside the model's folder)."""


_BY_CODE: dict[ErrorCode, type[L2CError]] = {
    ErrorCode.CORRUPT: PayloadError, ErrorCode.VERSION: VersionError,
    ErrorCode.ARGUMENT: NativeArgumentError, ErrorCode.MEMORY: OutOfMemoryError,
    ErrorCode.LIMIT: LimitError,
}


def from_native(code: int, message: str) -> L2CError:
    """The exception for a nonzero C API return code."""
    try:
        kind = ErrorCode(code)
    except ValueError:
        return L2CError(f"{message} (unknown native error code {code})")
    return _BY_CODE.get(kind, L2CError)(message, kind)
