"""The float-domain stages after `affine`: the inverse decorrelating
transform (a small stored basis) and per-group power-of-two exponents."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..errors import PayloadError
from . import native
from .dtypes import FLOAT, FLOAT16
from .stages import BodyReader, Buffer, Stage, StageSummary, _is_int

if TYPE_CHECKING:
    from .payload import Recipe


@dataclass
class TransformStage(Stage):
    """Inverse decorrelating transform: tensor = C · basis (+ mean), in float32.

    C is the affine stage's output read as a rows × k matrix; basis is k × cols.
    Output element (r, j) lands at flat index r*cols + j (layout 0) or
    j*rows + r (layout 1). Per element: acc = 0; acc = acc + C[r, i]·basis[i, j]
    for i = 0..k-1 (separately rounded float32 operations, in that order);
    then acc = acc + mean[j].
    """

    kind: ClassVar[int] = 6
    name: ClassVar[str] = "transform"
    min_version: ClassVar[int] = 2
    consumes: ClassVar[Buffer] = Buffer.FLOAT32
    produces: ClassVar[Buffer] = Buffer.FLOAT32
    after: ClassVar[frozenset[str] | None] = frozenset({"affine", "exponent"})
    not_after: ClassVar[frozenset[str]] = frozenset({"expand"})
    MAX_BASIS: ClassVar[int] = 1 << 24  # k*cols: bounds the decoder's basis memory (64 MiB as float32)
    limits: ClassVar[dict[str, int]] = {"kMaxTransformBasis": MAX_BASIS}
    LAYOUTS: ClassVar[tuple[int, ...]] = (0, 1)
    BASIS_DTYPES: ClassVar[tuple[int, ...]] = (FLOAT, FLOAT16)

    rows: int
    k: int
    cols: int
    basis: np.ndarray  # float32 values, k*cols (row-major k × cols)
    layout: int = 0  # 0: (r, j) -> r*cols + j; 1: (r, j) -> j*rows + r
    basis_dtype: int = FLOAT  # stored as FLOAT or FLOAT16 (then the values must be exact in float16)
    mean: np.ndarray | None = None  # float32 [cols]

    def coded_elements(self) -> int | None:
        return self.rows * self.k

    def basis_float32(self) -> np.ndarray:
        """The basis as the decoder uses it: float32, flat row-major k × cols."""
        with np.errstate(over="ignore"):
            return np.ascontiguousarray(self.basis, dtype=np.float32).reshape(-1)

    def validate(self, recipe: "Recipe", count: int) -> None:
        rows, k, cols = self.rows, self.k, self.cols
        numel = recipe.numel
        if not _is_int(rows, k, cols):
            raise PayloadError(f"transform stage rows, k, cols must be integers, got {rows!r}, {k!r}, {cols!r}")
        if not 1 <= k <= cols:
            raise PayloadError(f"transform stage k = {k} must be in 1..cols ({cols})")
        if k * cols > self.MAX_BASIS:
            raise PayloadError(f"transform stage basis k*cols = {k}*{cols} exceeds {self.MAX_BASIS} values")
        if rows < 0 or rows * cols != numel:
            raise PayloadError(f"transform stage rows*cols = {rows}*{cols} does not match {numel} elements")
        if self.layout not in self.LAYOUTS:
            raise PayloadError(f"transform stage layout {self.layout} not in {self.LAYOUTS}")
        if self.basis_dtype not in self.BASIS_DTYPES:
            raise PayloadError(f"transform stage basis_dtype {self.basis_dtype}; valid: {FLOAT} (float32), "
                               f"{FLOAT16} (float16)")
        # Finite as float32, the type the decoder computes in (a float64 input may overflow it).
        basis = self.basis_float32()
        if basis.size != k * cols or not np.isfinite(basis).all():
            raise PayloadError(f"transform stage basis needs {k}*{cols} finite values, got {basis.size}")
        if self.basis_dtype == FLOAT16:
            with np.errstate(over="ignore"):
                half = basis.astype(np.float16).astype(np.float32)
            if not np.array_equal(half.view(np.uint32), basis.view(np.uint32)):
                raise PayloadError("transform stage basis_dtype float16 needs basis values exactly "
                                   "representable in float16")
        if self.mean is not None:
            with np.errstate(over="ignore"):
                mean = np.asarray(self.mean, dtype=np.float32).reshape(-1)
            if mean.size != cols or not np.isfinite(mean).all():
                raise PayloadError(f"transform stage mean needs {cols} finite values, got {mean.size}")

    def body(self, recipe: "Recipe", count: int) -> bytes:
        has_mean = self.mean is not None
        body = [struct.pack("<QIIBBBx", self.rows, self.k, self.cols, self.layout, self.basis_dtype,
                            int(has_mean))]
        basis = self.basis_float32()
        # validate() checked that float16 holds these values exactly
        with np.errstate(over="ignore"):
            stored = basis.astype("<f2") if self.basis_dtype == FLOAT16 else basis.astype("<f4")
        body.append(stored.tobytes())
        if has_mean:
            body.append(np.ascontiguousarray(self.mean, dtype="<f4").tobytes())
        return b"".join(body)

    def apply(self, buf: np.ndarray | None, recipe: "Recipe") -> np.ndarray:
        """Vectorised over (r, j) but in the decoder's per-element order:
        acc = 0; acc = acc + C[r, i]·B[i, j] for increasing i; acc = acc + mean[j].

        Each numpy float32 elementwise operation is one IEEE binary32 operation
        rounded to nearest even, as in the native loop, so the bits match;
        overflow to inf and inf − inf = NaN are the format's defined results.
        """
        assert buf is not None and buf.dtype == np.float32
        c = buf.reshape(self.rows, self.k)
        b = self.basis_float32().reshape(self.k, self.cols)
        acc = np.zeros((self.rows, self.cols), np.float32)
        product = np.empty_like(acc)
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            for i in range(self.k):
                np.multiply(c[:, i:i + 1], b[i:i + 1, :], out=product)
                np.add(acc, product, out=acc)
            if self.mean is not None:
                np.add(acc, np.asarray(self.mean, dtype=np.float32).reshape(1, -1), out=acc)
        if self.layout == 1:
            acc = acc.T  # (r, j) lands at j*rows + r
        return np.ascontiguousarray(acc).reshape(-1)

    @classmethod
    def coded_count(cls, body: BodyReader) -> int | None:
        rows, k = body.unpack("<QI")
        return rows * k

    @classmethod
    def parse(cls, body: BodyReader, recipe: "Recipe", count: int) -> "TransformStage":
        rows, k, cols, layout, basis_dtype, has_mean = body.unpack("<QIIBBBx")
        basis = body.array("<f2" if basis_dtype == FLOAT16 else "<f4", k * cols).astype(np.float32)
        mean = body.array("<f4", cols) if has_mean else None
        return cls(rows, k, cols, basis, layout, basis_dtype, mean)

    def summary(self, recipe: "Recipe") -> StageSummary:
        return StageSummary({"rank": int(self.k), "cols": int(self.cols), "mean": self.mean is not None},
                            f"rank {self.k} of {self.cols}" + (", mean" if self.mean is not None else ""))


def exponent_multipliers(exponents: np.ndarray) -> np.ndarray:
    """2^(−e) as float32 (exact: e ≤ 31)."""
    return np.ldexp(np.float32(1.0), -np.asarray(exponents, dtype=np.int32)).astype(np.float32)


@dataclass
class ExponentStage(Stage):
    """w = w · 2^(−e[g]) for the elements of group g of an (outer, groups, inner) layout.

    Per-group power-of-two refinement of the affine steps, e.g. finer steps for
    the often-used rows of an embedding table, at the cost of a few bits per
    group (the exponents are one entropy-coded stream). Multiplying by a power
    of two is one correctly rounded float32 operation (exact unless the
    result is subnormal).
    """

    kind: ClassVar[int] = 7
    name: ClassVar[str] = "exponent"
    min_version: ClassVar[int] = 3
    consumes: ClassVar[Buffer] = Buffer.FLOAT32
    produces: ClassVar[Buffer] = Buffer.FLOAT32
    after: ClassVar[frozenset[str] | None] = frozenset({"affine"})
    MAX_EXPONENT: ClassVar[int] = 31  # 2^-31 is a normal float32: every multiplier is exact
    MAX_GROUPS: ClassVar[int] = 1 << 24  # bounds the decoder's exponent table (16 MiB)
    limits: ClassVar[dict[str, int]] = {"kMaxExponent": MAX_EXPONENT, "kMaxExponentGroups": MAX_GROUPS}

    outer: int
    groups: int
    inner: int
    exponents: np.ndarray  # integers in [0, MAX_EXPONENT], [groups]

    def validate(self, recipe: "Recipe", count: int) -> None:
        outer, groups, inner = self.outer, self.groups, self.inner
        if not _is_int(outer, groups, inner):
            raise PayloadError(f"exponent stage outer, groups, inner must be integers, got {outer!r}, {groups!r}, "
                               f"{inner!r}")
        if not 1 <= groups <= self.MAX_GROUPS:
            raise PayloadError(f"exponent stage groups = {groups} must be in 1..{self.MAX_GROUPS}")
        if outer < 0 or inner < 0 or outer * groups * inner != count:
            raise PayloadError(f"exponent stage layout {outer}x{groups}x{inner} does not cover {count} elements")
        e = np.asarray(self.exponents)
        if e.size != groups or not np.issubdtype(e.dtype, np.integer):
            raise PayloadError(f"exponent stage needs {groups} integer exponents, got {e.size} of {e.dtype}")
        if e.size and (e.min() < 0 or e.max() > self.MAX_EXPONENT):
            raise PayloadError(f"exponent stage exponents must lie in [0, {self.MAX_EXPONENT}]")

    def body(self, recipe: "Recipe", count: int) -> bytes:
        e = np.ascontiguousarray(self.exponents, dtype=np.int32).reshape(-1)
        alphabet = int(e.max()) + 1 if e.size else 1
        return struct.pack("<QIQ", self.outer, self.groups, self.inner) + native.encode_stream(e, alphabet)

    def apply(self, buf: np.ndarray | None, recipe: "Recipe") -> np.ndarray:
        assert buf is not None and buf.dtype == np.float32
        mult = exponent_multipliers(self.exponents)
        with np.errstate(under="ignore"):
            w = buf.reshape(self.outer, self.groups, self.inner) * mult[None, :, None]
        return w.reshape(-1).astype(np.float32, copy=False)

    @classmethod
    def parse(cls, body: BodyReader, recipe: "Recipe", count: int) -> "ExponentStage":
        outer, groups, inner = body.unpack("<QIQ")
        return cls(outer, groups, inner, body.stream(groups))

    def summary(self, recipe: "Recipe") -> StageSummary:
        e = np.asarray(self.exponents).reshape(-1)
        hi = int(e.max()) if e.size else 0
        return StageSummary({"groups": int(self.groups), "exponent_max": hi},
                            f"{self.groups} groups, step × 2^-0..2^-{hi}")
