"""The package's exceptions, and the error codes of the native C API.

Every failure is an `L2CError`; its subclass says what kind of failure it is
(bad option, bad model, corrupt payload, unsupported op or dtype, I/O), and
errors reported by the native library carry the C API's code. Messages name
the file and tensor involved and, for options, the valid choices.
"""

from __future__ import annotations

import enum


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


class OptionError(L2CError):
    """A compression option (a keyword argument or its CLI flag) is unknown or out of range."""


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
