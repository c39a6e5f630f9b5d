"""Layer-local calibration statistics: the second moment of each weight's input.

For a weight W seen by its consumer as G groups of matrices W_g (rows × d),
the consumer's output error from a perturbation ΔW is ΔW_g·x_g for every input
vector x_g (an im2col patch for Conv, a row of A for MatMul/Gemm). Its mean
squared size is tr(ΔW_g · H_g · ΔW_gᵀ) with H_g = E[x_g x_gᵀ]: the
GPTQ/OBQ proxy of how much a weight error matters *through the data*.

Statistics are streamed: onnxruntime runs the model with the consumers'
inputs exposed as outputs, one batch at a time, and only the running H_g are
kept. Spatial positions are subsampled (an unbiased estimate of the mean) so
large feature maps cost a bounded amount of work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnx_l2c.measure.calibration import (Feeds, InputSpec, ScratchModel, batches, make_session,
                                          release_freed_memory)
from onnx_l2c.errors import L2CError
from onnx_l2c.progress import STATISTICS, Progress
from onnx_l2c.graph.edit import (BRANCH_OUTPUT_TAG, expose, expose_from_branch, if_branches, main_values,
                                 node_scopes)
from onnx_l2c.graph.model import WeightRef
from onnx_l2c.graph.ops import node_attr
from onnx_l2c.measure.layers import LayerStats, LayerView, layer_view, smoothed_row_weight

log = logging.getLogger(__name__)

MAX_FULL_DIM = 4096  # above this a full H (d×d) costs too much; keep its diagonal
POSITIONS_PER_SAMPLE = 512  # im2col positions (or MatMul rows) drawn per sample and layer
ACTIVATION_BUDGET = 256 << 20  # bytes of exposed activations per batch


@dataclass
class _Accumulator:
    weight: str
    stats: LayerStats
    # Two halves of the samples, kept apart so a method can fit on one half
    # and check on the other (see passes/gptq.py).
    totals: list[np.ndarray | None] = field(default_factory=lambda: [None, None])
    sums: list[np.ndarray | None] = field(default_factory=lambda: [None, None])  # Σ x (full H only)
    counts: list[int] = field(default_factory=lambda: [0, 0])
    positions: int = 0  # input vectors before subsampling (the layer's multiply-adds ÷ its weights)
    half: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))


def _conv_patches(x: np.ndarray, view: LayerView, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Sampled im2col patches of a Conv input: (positions, groups, cols), and
    the number of output positions they were sampled from."""
    node = view.node
    kernel = list(view.shape[2:])
    nsp = len(kernel)
    if x.ndim != nsp + 2:
        raise L2CError(f"Conv input {view.activation!r} has rank {x.ndim}, expected {nsp + 2}")
    if nsp == 1:  # treat 1-D as 2-D with height 1
        x = x[:, :, None, :]
    strides = node_attr(node, "strides", [1] * nsp)
    dil = node_attr(node, "dilations", [1] * nsp)
    pads = node_attr(node, "pads", [0] * (2 * nsp))
    auto = node_attr(node, "auto_pad", "NOTSET")
    spatial = list(x.shape[2:])
    if nsp == 1:
        kernel, strides, dil = [1] + kernel, [1] + strides, [1] + dil
        pads = [0, pads[0], 0, pads[1]]
    begin, end = [pads[0], pads[1]], [pads[2], pads[3]]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        for a in range(2):
            out = -(-spatial[a] // strides[a])
            total = max(0, (out - 1) * strides[a] + (kernel[a] - 1) * dil[a] + 1 - spatial[a])
            small, big = total // 2, total - total // 2
            begin[a], end[a] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        begin, end = [0, 0], [0, 0]
    # Channels-last and zero-padded in one copy, so each gathered patch column
    # is one contiguous C-vector.
    n, c, height, width = x.shape
    xp = np.zeros((n, begin[0] + height + end[0], begin[1] + width + end[1], c), dtype=np.float32)
    xp[:, begin[0]:begin[0] + height, begin[1]:begin[1] + width] = x.transpose(0, 2, 3, 1)
    outs = [(xp.shape[1 + a] - (kernel[a] - 1) * dil[a] - 1) // strides[a] + 1 for a in range(2)]
    total = n * outs[0] * outs[1]
    kk = kernel[0] * kernel[1]
    d = (c // view.groups) * kk
    # Enough vectors for a d×d estimate (≫ d over all samples), no more.
    take = min(total, int(np.clip(4 * d, 64, POSITIONS_PER_SAMPLE)) * n)
    flat = np.sort(rng.choice(total, size=take, replace=False)) if take < total else np.arange(total)
    ni, rem = np.divmod(flat, outs[0] * outs[1])
    oy, ox = np.divmod(rem, outs[1])
    g = view.groups
    if c % g:
        raise L2CError(f"Conv input {view.activation!r} has {c} channels, not a multiple of group {g}")
    # Kernel-position-major (contiguous writes); _finish permutes H back to the
    # weight's (channel, position) column order.
    patches = np.empty((take, kk, g, c // g), dtype=np.float32)
    k = 0
    for ky in range(kernel[0]):
        for kx in range(kernel[1]):
            patches[:, k] = xp[ni, oy * strides[0] + ky * dil[0], ox * strides[1] + kx * dil[1]].reshape(take, g, -1)
            k += 1
    if g == 1:
        return patches.reshape(take, 1, d), total
    return patches.transpose(0, 2, 1, 3).reshape(take, g, d), total


def conv_column_order(view: LayerView) -> np.ndarray:
    """perm with H_weight = H_patch[perm][:, perm]: weight column c·kk + k is
    patch column k·cg + c."""
    kk = int(np.prod(view.shape[2:]))
    cg = view.cols // kk
    c, k = np.divmod(np.arange(view.cols), kk)
    return k * cg + c


def _input_vectors(x: np.ndarray, acc: _Accumulator) -> np.ndarray | None:
    """The consumer's input vectors of one batch: (vectors, groups, cols),
    possibly a sample of them (all of them are counted in acc.positions)."""
    view = acc.stats.view
    if view.kind == "conv":
        patches, total = _conv_patches(x.astype(np.float32, copy=False), view, acc.rng)
        acc.positions += total
        return patches
    if view.kind in ("matmul", "gemm_kn", "gemm_nk"):
        a = x.T if view.trans_a else x
        rows = a.reshape(-1, a.shape[-1])
        if rows.shape[1] != view.cols:
            raise L2CError(f"{view.node.op_type} input {view.activation!r} has {rows.shape[1]} features, "
                           f"the weight expects {view.cols}")
        acc.positions += rows.shape[0]
        if rows.shape[0] > POSITIONS_PER_SAMPLE * 4:
            rows = rows[acc.rng.choice(rows.shape[0], POSITIONS_PER_SAMPLE * 4, replace=False)]
        return rows[:, None, :]
    return None


def _accumulate(acc: _Accumulator, x: np.ndarray) -> None:
    view = acc.stats.view
    if view.kind == "gather":
        idx = x.astype(np.int64).reshape(-1)
        idx = np.where(idx < 0, idx + view.rows, idx)
        idx = idx[(idx >= 0) & (idx < view.rows)]
        counts = np.bincount(idx, minlength=view.rows).astype(np.float64)
        _add(acc, counts, idx.size)
        return
    if view.kind == "conv_transpose":
        # Per-input-channel power, spread over the kernel positions (the
        # positions of a transposed conv overlap; their cross terms are dropped).
        xc = x.reshape(x.shape[0], x.shape[1], -1).astype(np.float64)
        power = (xc ** 2).mean(axis=(0, 2)).reshape(view.groups, -1)
        kk = view.cols // power.shape[1]
        diag = np.repeat(power, kk, axis=1) * x.shape[0]
        acc.positions += xc.shape[0] * xc.shape[2]
        _add(acc, diag, x.shape[0])
        return
    vecs = _input_vectors(x, acc)
    if vecs is None:
        return
    # float32 products (BLAS), float64 running sums: the batch sums are
    # accurate to ~1e-6 relative, plenty for a second-moment estimate.
    v = np.ascontiguousarray(vecs, dtype=np.float32)
    if view.cols > MAX_FULL_DIM:
        part = (v * v).sum(axis=0, dtype=np.float64)
    elif view.groups == 1:
        part = (v[:, 0, :].T @ v[:, 0, :])[None].astype(np.float64)
    else:
        vg = v.transpose(1, 2, 0)  # (groups, cols, vectors)
        part = np.matmul(vg, vg.transpose(0, 2, 1)).astype(np.float64)
    h = acc.half
    first = v.sum(axis=0, dtype=np.float64)
    acc.sums[h] = first if acc.sums[h] is None else acc.sums[h] + first
    _add(acc, part, v.shape[0])


def _add(acc: _Accumulator, part: np.ndarray, count: int) -> None:
    h = acc.half
    acc.totals[h] = part if acc.totals[h] is None else acc.totals[h] + part
    acc.counts[h] += count


def _finish(acc: _Accumulator) -> LayerStats | None:
    """The layer's statistics from its running sums. The sums are consumed:
    each half's total becomes that half's mean in place, so finishing a layer
    needs one more H (the full mean) and one permutation copy at a time."""
    stats, view = acc.stats, acc.stats.view
    parts = [(t, c) for t, c in zip(acc.totals, acc.counts) if t is not None and c > 0]
    sums = [(t, c) for t, c in zip(acc.sums, acc.counts) if t is not None and c > 0]
    acc.totals, acc.sums = [None, None], [None, None]
    if not parts:
        return None
    stats.vectors = sum(c for _, c in parts)
    stats.positions = acc.positions
    total = parts[0][0] + parts[1][0] if len(parts) == 2 else parts[0][0]  # the sums are ours to consume
    if view.kind == "gather":
        stats.row_weight = smoothed_row_weight(total)
        return stats
    total /= stats.vectors
    if view.kind == "conv_transpose" or view.cols > MAX_FULL_DIM:
        stats.diagonal = total
    else:
        stats.hessian = total
        if len(sums) == len(parts):
            mean = sums[0][0] + sums[1][0] if len(sums) == 2 else sums[0][0]
            mean /= stats.vectors
            stats.mean = mean
        if len(parts) == 2:
            for t, c in parts:
                t /= c
            stats.halves = (parts[0][0], parts[1][0])
            if len(sums) == 2:
                for t, c in sums:
                    t /= c
                stats.halves_mean = (sums[0][0], sums[1][0])
    del parts, sums
    if view.kind == "conv":
        perm = conv_column_order(view)
        square = (slice(None), perm[:, None], perm[None, :])  # H[:, perm][:, :, perm] in one copy
        if stats.hessian is not None:
            stats.hessian = stats.hessian[square]
        if stats.halves is not None:
            stats.halves = (stats.halves[0][square], stats.halves[1][square])
        if stats.diagonal is not None:
            stats.diagonal = np.ascontiguousarray(stats.diagonal[:, perm])
        if stats.mean is not None:
            stats.mean = np.ascontiguousarray(stats.mean[:, perm])
        if stats.halves_mean is not None:
            stats.halves_mean = tuple(np.ascontiguousarray(m[:, perm]) for m in stats.halves_mean)
    stats.store_moments()
    return stats


def collect_statistics(model: onnx.ModelProto, base_dir: Path, weights: list[WeightRef],
                       samples: Sequence[Feeds], inputs: list[InputSpec],
                       branches: bool = True, progress: Progress | None = None) -> dict[str, LayerStats]:
    """H = E[x xᵀ] for every weight whose consumer we model, from the samples
    (and separately from their first and second halves).

    Consumers inside the branches of main-graph If nodes count the runs that
    took their branch. With `branches`, values computed inside a branch are
    routed out through the If; if onnxruntime rejects that rewrite, the
    statistics are collected without them. `progress(done, total, "statistics")`
    follows the samples.
    """
    scratch_proto, accs, sources = _scratch_model(model, weights, inputs, branches)
    if not accs:
        return {}
    start = time.perf_counter()
    n_samples = 0
    with ScratchModel(scratch_proto, base_dir) as scratch:
        try:
            session = make_session(scratch)
        except L2CError as exc:
            if not branches or not any(BRANCH_OUTPUT_TAG in src.output for src in sources.values()):
                raise
            log.warning("statistics inside If branches skipped: %s", exc)
            return collect_statistics(model, base_dir, weights, samples, inputs, branches=False, progress=progress)
        out_names = [o.name for o in session.get_outputs()]
        if not samples:
            return {}
        # One sample first, to size the batches by their activation memory.
        per_sample = _run_and_accumulate(session, samples[0], out_names, accs, sources)
        release_freed_memory()
        done = 1
        if progress is not None:
            progress(done, len(samples), STATISTICS)
        max_batch = max(1, min(32, ACTIVATION_BUDGET // max(per_sample, 1)))
        mid = (len(samples) + 1) // 2
        for half, part in ((0, samples[1:mid]), (1, samples[mid:])):
            for group in accs.values():
                for acc in group:
                    acc.half = half
            for feeds, count in batches(part, inputs, max_batch):
                _run_and_accumulate(session, feeds, out_names, accs, sources)
                release_freed_memory()
                done += count
                if progress is not None:
                    progress(done, len(samples), STATISTICS)
        n_samples = len(samples)
        del session  # its buffers before the statistics are finished
    result: dict[str, LayerStats] = {}
    for group in accs.values():
        for acc in group:
            stats = _finish(acc)
            if stats is not None:
                result[acc.weight] = stats
    release_freed_memory()
    log.info("calibration statistics for %d weights from %d samples in %.1f s",
             len(result), n_samples, time.perf_counter() - start)
    return result


@dataclass(frozen=True)
class _Source:
    """Where the accumulators of one key read their input: a main-graph output
    (or feed), only on runs where `condition` (value name, expected bool) holds:
    the inputs of a weight inside an If branch count only when that branch ran."""

    output: str
    condition: tuple[str, bool] | None = None


def _scratch_model(model: onnx.ModelProto, weights: list[WeightRef], inputs: list[InputSpec],
                   branches: bool) -> tuple[onnx.ModelProto, dict[str, list[_Accumulator]], dict[str, _Source]]:
    """A copy of the model with every needed consumer input (and If
    condition) readable as an output, the accumulators by key, and where each
    key reads its values."""
    scratch_proto = onnx.ModelProto()
    scratch_proto.CopyFrom(model)
    graph = scratch_proto.graph
    readable = main_values(graph)
    branches_of = if_branches(graph)
    # The graph each consumer runs in (a weight of the main graph may be used
    # inside a subgraph), by its first output's name; None where ambiguous.
    scope = node_scopes(graph)
    accs: dict[str, list[_Accumulator]] = {}
    sources: dict[str, _Source] = {}
    for w in weights:
        view = layer_view(w)
        if view is None or not view.node.output:
            continue
        where = scope.get(view.node.output[0])
        branch = branches_of.get(where) if where is not None else None
        key = view.activation if where == "main" else f"{where}::{view.activation}"
        if key not in sources:
            if where == "main" or (branch is None and where is not None and view.activation in readable):
                sources[key] = _Source(view.activation)  # Loop/Scan bodies: outer values only
            elif branch is not None and branch[0].input and branch[0].input[0] in readable:
                node, taken = branch
                condition = (node.input[0], taken == "then_branch")
                if view.activation in readable:
                    sources[key] = _Source(view.activation, condition)
                else:
                    exposed = expose_from_branch(graph, branch, view.activation, w.dtype) if branches else None
                    if exposed is None:
                        continue
                    sources[key] = _Source(exposed, condition)
            else:
                continue  # not a value the main graph can read: no statistics
        seed = int.from_bytes(w.name.encode()[-8:].rjust(8, b"\0"), "little") % (2 ** 32)
        accs.setdefault(key, []).append(_Accumulator(w.name, LayerStats(view), rng=np.random.default_rng(seed)))
    feed_names = {s.name for s in inputs}
    needed = {src.output for src in sources.values()} | {src.condition[0] for src in sources.values() if src.condition}
    expose(graph, [name for name in sorted(needed) if name not in feed_names])
    return scratch_proto, accs, sources


def _run_and_accumulate(session: object, feeds: Feeds, out_names: list[str],
                        accs: dict[str, list[_Accumulator]], sources: dict[str, _Source]) -> int:
    try:
        values = session.run(None, feeds)  # type: ignore[attr-defined]
    except Exception as exc:  # onnxruntime raises its own exception types
        raise L2CError(f"calibration: onnxruntime failed on a sample: {exc}") from exc
    tensors = dict(zip(out_names, values))
    tensors.update(feeds)
    total = 0
    for key, group in accs.items():
        source = sources[key]
        if source.condition is not None:
            flag = np.asarray(tensors.get(source.condition[0], ()))
            if flag.size != 1 or bool(flag.reshape(-1)[0]) != source.condition[1]:
                continue  # the other branch ran
        x = tensors.get(source.output)
        if x is None:
            continue
        x = np.asarray(x)
        if x.size == 0:  # the other branch's placeholder
            continue
        total += x.nbytes
        for acc in group:
            _accumulate(acc, x)
    return total
