"""Global rate allocation: one candidate per tensor so the whole model meets a
size target at the least estimated output divergence.

Every tensor offers candidates (coded bytes, layer-local error); the tensor's
sensitivity turns error into estimated output divergence D. Two searches:

* `lagrange`: one multiplier λ across all tensors, each tensor taking the
  candidate minimizing D + λ·bytes; λ bisected to the budget (the L2C
  formulation). Optimal on the lower convex hull of each tensor's options.
* `path`: FITCompress's path planning: start with every tensor at its most
  precise candidate and repeatedly take the single step (one tensor to a
  smaller candidate) with the least divergence added per byte saved, until
  the budget is met. It can stop on candidates off the convex hull.

Without mixed precision (`uniform` mode) every tensor uses the same grid
position, and only that one shared knob is searched.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Option:
    """One candidate of one tensor."""

    bytes: int
    error: float  # layer-local error
    params: Any  # QuantParams, or None for lossless
    sparsity: float = 0.0
    grid: int | None = None  # position on the shared step grid (uniform mode)


@dataclass
class TensorChoices:
    name: str
    scale: float  # divergence per unit of layer-local error (sensitivity)
    options: list[Option] = field(default_factory=list)

    def distortion(self, option: Option) -> float:
        return self.scale * option.error


@dataclass
class Allocation:
    chosen: dict[str, Option]
    total_bytes: int
    distortion: float
    search: str
    multiplier: float | None = None


def _pick(t: TensorChoices, lam: float) -> Option:
    return min(t.options, key=lambda o: (t.distortion(o) + lam * o.bytes, o.bytes))


def lagrange(tensors: list[TensorChoices], budget: int) -> Allocation:
    """Smallest λ whose choices fit `budget` bytes (or the smallest choices)."""
    def total(lam: float) -> tuple[int, dict[str, Option]]:
        chosen = {t.name: _pick(t, lam) for t in tensors}
        return sum(o.bytes for o in chosen.values()), chosen

    lo, hi = 1e-30, 1e-30
    size, chosen = total(hi)
    if size <= budget:
        return _result(chosen, tensors, "lagrange", hi)
    while size > budget and hi < 1e30:
        lo, hi = hi, hi * 1e3
        size, chosen = total(hi)
    best = chosen
    for _ in range(200):  # bisection in log λ
        if hi / lo < 1 + 1e-9:
            break
        mid = math.sqrt(lo * hi)
        size, chosen = total(mid)
        if size <= budget:
            hi, best = mid, chosen
        else:
            lo = mid
    return _result(best, tensors, "lagrange", hi)


def within_distortion(tensors: list[TensorChoices], limit: float) -> Allocation:
    """Fewest bytes whose estimated divergence stays within `limit`: the
    largest λ whose choices keep the summed distortion at or below it (the
    dual of `lagrange`, for a fidelity goal instead of a size)."""
    def pick(lam: float) -> dict[str, Option]:
        return {t.name: _pick(t, lam) for t in tensors}

    def distortion(chosen: dict[str, Option]) -> float:
        return sum(t.distortion(chosen[t.name]) for t in tensors)

    lo = 1e-30
    best = pick(lo)
    if distortion(best) > limit:  # even the most precise choices exceed it: take them
        return _result(best, tensors, "lagrange", lo)
    hi = lo
    while hi < 1e30:
        hi *= 1e3
        chosen = pick(hi)
        if distortion(chosen) > limit:
            break
        lo, best = hi, chosen
    else:
        return _result(best, tensors, "lagrange", lo)
    for _ in range(200):  # bisection in log λ
        if hi / lo < 1 + 1e-9:
            break
        mid = math.sqrt(lo * hi)
        chosen = pick(mid)
        if distortion(chosen) <= limit:
            lo, best = mid, chosen
        else:
            hi = mid
    return _result(best, tensors, "lagrange", lo)


def path(tensors: list[TensorChoices], budget: int) -> Allocation:
    """Greedy steps from the most precise point, least ΔD per byte saved first."""
    order = {t.name: sorted(t.options, key=lambda o: (-o.bytes, t.distortion(o))) for t in tensors}
    current = {t.name: min(t.options, key=lambda o: (t.distortion(o), -o.bytes)) for t in tensors}
    by_name = {t.name: t for t in tensors}
    total = sum(o.bytes for o in current.values())

    def best_step(name: str) -> tuple[float, Option] | None:
        t, cur = by_name[name], current[name]
        best = None
        for o in order[name]:
            saved = cur.bytes - o.bytes
            if saved <= 0:
                continue
            cost = (t.distortion(o) - t.distortion(cur)) / saved
            if best is None or cost < best[0]:
                best = (cost, o)
        return best

    heap: list[tuple[float, str]] = []
    pending: dict[str, Option] = {}
    for name in current:
        step = best_step(name)
        if step is not None:
            pending[name] = step[1]
            heapq.heappush(heap, (step[0], name))
    while total > budget and heap:
        cost, name = heapq.heappop(heap)
        option = pending.pop(name, None)
        if option is None:
            continue
        total -= current[name].bytes - option.bytes
        current[name] = option
        step = best_step(name)
        if step is not None:
            pending[name] = step[1]
            heapq.heappush(heap, (step[0], name))
    return _result(current, tensors, "path", None)


def shared_grid(tensors: list[TensorChoices], budget: int) -> Allocation:
    """One shared grid position for every quantizable tensor (no mixed
    precision): the search when no selected method varies precision per tensor."""
    positions = sorted({o.grid for t in tensors for o in t.options if o.grid is not None})
    best: dict[str, Option] | None = None
    for g in positions:  # finest first: the first that fits is the answer
        chosen = {}
        for t in tensors:
            graded = [o for o in t.options if o.grid is not None]
            if graded:  # the shared position, or the nearest this tensor has
                chosen[t.name] = min(graded, key=lambda o: (abs(o.grid - g), -o.grid))
            else:
                chosen[t.name] = min(t.options, key=lambda o: o.bytes)
        best = chosen
        if sum(o.bytes for o in chosen.values()) <= budget:
            break
    if best is None:
        best = {t.name: min(t.options, key=lambda o: o.bytes) for t in tensors}
    return _result(best, tensors, "shared_grid", None)


def _result(chosen: dict[str, Option], tensors: list[TensorChoices], search: str,
            lam: float | None) -> Allocation:
    by_name = {t.name: t for t in tensors}
    dist = sum(by_name[n].distortion(o) for n, o in chosen.items())
    return Allocation(chosen, sum(o.bytes for o in chosen.values()), dist, search, lam)


SEARCHES = {"lagrange": lagrange, "path": path, "shared_grid": shared_grid}
