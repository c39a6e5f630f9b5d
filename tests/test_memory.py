"""Bounded memory without changed numbers (issue 14, streaming at scale):
the planner's sliced elementwise passes and trimmed statistics give the same
values as the whole-array forms, and the custom op hands its payloads' pages
back after decoding them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from builders import _model, tensor
from helpers import payload_bytes, run_isolated, save
import onnx_l2c
from onnx_l2c.errors import OptionError
from onnx_l2c.measure.layers import MOMENT_DTYPE, LayerStats, LayerView
from onnx_l2c.measure.statistics import _Accumulator, _finish, conv_column_order
from onnx_l2c.passes import gptq, steps


def _whole_quantize_nearest(w: np.ndarray, step: np.ndarray, dead_zone: float) -> np.ndarray:
    a = np.abs(w) / step
    q = np.where(a < 0.5 + dead_zone, 0.0, np.floor(a + 0.5))
    return (np.sign(w) * np.minimum(q, gptq.QMAX)).astype(np.int32)


def _whole_shrink(v: np.ndarray, q: np.ndarray, step: np.ndarray) -> float:
    nz = q != 0
    s3 = step[None, :, None] if step.ndim == 1 else step
    s = np.broadcast_to(s3.astype(np.float64), q.shape)[nz]
    num = (s * s * (np.abs(q[nz]) - np.abs(v[nz]) / s)).sum()
    return float(np.float32(np.clip(num / (s * s).sum(), 0.0, steps.MAX_THETA)))


@pytest.mark.parametrize("shape, step_shape", [
    ((3000, 700, 1), (1, 700, 1)),  # a table's per-column steps
    ((5, 400, 1000), (1, 400, 1)),  # per-channel steps, a few rows per slice
    ((1, 64, 40000), (1, 64, 1)),  # one outer row: a single slice
    ((2100, 1000), (1000,)),  # steps broadcast from the right
    ((2100, 1000), (2100, 1)),  # steps sliced with the rows
])
def test_sliced_quantize_and_shrink_equal_the_whole_array_forms(rng, shape, step_shape):
    w = rng.standard_normal(shape) * np.linspace(0.5, 2.0, shape[-1])
    step = rng.uniform(0.05, 0.5, step_shape)
    assert w.size > gptq.CHUNK or shape[0] == 1
    for dead_zone in (0.0, 0.3):
        q = gptq.quantize_nearest(w, step, dead_zone)
        assert q.dtype == np.int32 and np.array_equal(q, _whole_quantize_nearest(w, step, dead_zone))
    if len(shape) == 3:
        q = gptq.quantize_nearest(w, step, 0.0)
        # the same sums in another order: equal to within float32 rounding
        assert steps.shrink(w, q, step) == pytest.approx(_whole_shrink(w, q, step), rel=1e-6)
        per_channel = step.reshape(-1)
        assert steps.shrink(w, q, per_channel) == pytest.approx(_whole_shrink(w, q, per_channel), rel=1e-6)
        assert steps.shrink(w, np.zeros_like(q), step) == 0.0


def test_finishing_the_statistics_gives_the_whole_array_values(rng):
    """_finish turns the running sums into mean, halves and their means in
    place, and permutes a Conv's H in one copy: the same values as before,
    H and its halves then stored in MOMENT_DTYPE (float32)."""
    node = helper.make_node("Conv", ["x", "W"], ["y"])
    view = LayerView("conv", 1, 4, 3 * 9, (4, 3, 3, 3), "x", node)
    totals = [rng.standard_normal((1, 27, 27)), rng.standard_normal((1, 27, 27))]
    sums = [rng.standard_normal((1, 27)), rng.standard_normal((1, 27))]
    counts = [7, 5]
    expected_h = (totals[0] + totals[1]) / 12
    expected_halves = [t / c for t, c in zip(totals, counts)]
    expected_mean = (sums[0] + sums[1]) / 12
    expected_halves_mean = [s / c for s, c in zip(sums, counts)]
    acc = _Accumulator("W", LayerStats(view), totals=[t.copy() for t in totals], sums=[s.copy() for s in sums],
                       counts=list(counts))
    stats = _finish(acc)
    perm = conv_column_order(view)
    assert acc.totals == [None, None] and acc.sums == [None, None]  # consumed
    assert stats.vectors == 12
    assert stats.hessian.dtype == MOMENT_DTYPE == np.float32
    assert np.array_equal(stats.hessian, expected_h[:, perm][:, :, perm].astype(np.float32))
    for got, want in zip(stats.halves, expected_halves):
        assert got.dtype == np.float32 and np.array_equal(got, want[:, perm][:, :, perm].astype(np.float32))
    assert stats.noise_error() == pytest.approx(4 * np.trace(expected_h[0]), rel=1e-13)  # from the float64 moments
    assert np.array_equal(stats.mean, expected_mean[:, perm])
    for got, want in zip(stats.halves_mean, expected_halves_mean):
        assert np.array_equal(got, want[:, perm])


def test_a_single_use_planner_trims_its_statistics_and_writes_the_same_bytes(tmp_path: Path, rng):
    """compress() plans once: the uncentered per-half statistics of a
    bias-corrected layer (H and per-half H) are dropped (its methods fit on
    the centered ones), the report still says its statistics were full,
    and the output is byte-identical to a reusable planner's."""
    from test_target import _relu_linear

    model = _relu_linear(rng)
    path = save(model, tmp_path / "rl.onnx")
    samples = [{"x": (rng.standard_normal((4, 96)) + 1.0).astype(np.float32)} for _ in range(24)]
    reusable = onnx_l2c.Planner(path, calibration_data=samples)
    single = onnx_l2c.Planner(path, calibration_data=samples, _single_use=True)
    assert single.context.bias_of == {"W": "b"}
    assert reusable.context.stats["W"].halves is not None
    trimmed = single.context.stats["W"]
    assert trimmed.hessian is None and trimmed.halves is None and trimmed.mean is not None
    assert single.context.fit_stats["W"].halves is not None
    # centered in float64 from the stored float32 moments, then stored like them
    from onnx_l2c.graph.model import find_weights
    from onnx_l2c.measure.calibration import graph_inputs
    from onnx_l2c.measure.statistics import collect_statistics

    measured = collect_statistics(model, tmp_path, find_weights(model, 16).weights, samples, graph_inputs(model))["W"]
    fit = single.context.fit_stats["W"]
    assert fit.hessian.dtype == MOMENT_DTYPE == np.float32 and fit.halves[1].dtype == np.float32
    assert np.array_equal(fit.hessian, (measured.hessian - np.einsum("gi,gj->gij", measured.mean, measured.mean))
                          .astype(np.float32))
    assert reusable.context.fit_stats["W"] is reusable.context.stats["W"].centered()  # one twin per layer
    with pytest.raises(OptionError, match="one compress call"):
        single.with_methods("uniform")
    assert single.context.tensors["W"].statistics == "full"
    a = reusable.compress(tmp_path / "a.onnx", target_ratio=6)
    b = single.compress(tmp_path / "b.onnx", target_ratio=6)
    c = onnx_l2c.compress(path, tmp_path / "c.onnx", target_ratio=6, calibration_data=samples)
    assert payload_bytes(a.sidecar) == payload_bytes(b.sidecar) == payload_bytes(c.sidecar)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="smaps and MADV_PAGEOUT are Linux's")
def test_the_custom_op_hands_back_its_payloads_pages(tmp_path: Path, rng):
    """onnxruntime maps the sidecar and keeps every payload initializer for the
    session's life; the op releases the pages it read, so after session
    creation the mapped sidecar is not resident (before: all of it, 0.8x the
    weights' size for lossless payloads)."""
    nodes, inits, prev = [], [], "x"
    for i in range(4):
        inits.append(tensor(f"W{i}", (rng.standard_normal((1024, 1024)) * 0.02).astype(np.float32)))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 1024])], inits)
    path = save(_model(graph), tmp_path / "chain.onnx")
    out = tmp_path / "small.onnx"
    result = onnx_l2c.compress(path, out, preset="lossless")
    sidecar_mb = result.sidecar.stat().st_size / 2 ** 20
    proc = run_isolated(f"""
        import json
        import numpy as np
        import onnxruntime as ort
        import onnx_l2c
        def sidecar_pages():  # (mappings of the sidecar, their resident MB) from /proc/self/smaps
            maps, rss, ours = 0, 0, False
            for line in open("/proc/self/smaps"):
                head = line.split()
                if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's first line
                    ours = line.rstrip().endswith({result.sidecar.name!r})
                    maps += ours
                elif ours and head[0] == "Rss:":
                    rss += int(head[1])
            return maps, rss / 1024
        so = ort.SessionOptions()
        so.register_custom_ops_library(onnx_l2c.custom_op_library())
        session = ort.InferenceSession({str(out)!r}, so)
        maps, resident = sidecar_pages()
        y = session.run(None, {{"x": np.ones((1, 1024), np.float32)}})[0]
        print(json.dumps({{"maps": maps, "resident_mb": resident, "finite": bool(np.isfinite(y).all())}}))
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    print(got, f"sidecar {sidecar_mb:.1f} MB")  # shown with pytest -s
    assert got["finite"]
    assert got["maps"] > 0, "onnxruntime no longer maps the sidecar: this test measures nothing"
    assert got["resident_mb"] < 0.1 * sidecar_mb, got  # a page at each payload's ends at most


def test_the_largest_tensors_are_planned_on_a_channel_sample(tmp_path: Path, rng, monkeypatch):
    """Above SAMPLED_ELEMENTS a tensor's candidates are fitted on every k-th
    output channel and scaled up; the written file still meets the target
    (the write codes the tensor whole) with an output error like whole planning's."""
    from test_target import _deep_mlp
    from helpers import run_fast, run_plain
    from onnx_l2c.plan import sample

    path = save(_deep_mlp(rng), tmp_path / "deep.onnx")
    held_out = {"x": rng.standard_normal((400, 128)).astype(np.float32)}
    reference = run_plain(path, held_out)[0]
    errors = {}
    for label, threshold in (("whole", 1 << 30), ("sampled", 1 << 14)):
        monkeypatch.setattr(sample, "SAMPLED_ELEMENTS", threshold)
        monkeypatch.setattr(sample, "SAMPLE_ELEMENTS", 1 << 12)
        monkeypatch.setattr(sample, "MIN_SAMPLED_CHANNELS", 16)
        out = tmp_path / f"{label}.onnx"
        result = onnx_l2c.compress(path, out, target_ratio=8)
        assert abs(result.ratio / 8 - 1) <= 0.03, (label, result.ratio)
        noted = [n for n in result.plan["notes"] if "sample of their output channels" in n]
        assert bool(noted) == (label == "sampled") and (not noted or noted[0].endswith(": W0"))
        errors[label] = float(np.abs(run_fast(out, held_out)[0] - reference).mean())
    assert errors["sampled"] <= 1.25 * errors["whole"], errors


def test_which_tensors_are_sampled(rng):
    from onnx_l2c.passes import TensorInput
    from onnx_l2c.plan import sample
    from onnx_l2c.plan.allocate import Option

    def tensor_of(shape, axis):
        bits = rng.standard_normal(shape).astype(np.float32).view(np.uint32).reshape(-1)
        return TensorInput("W", TensorProto.FLOAT, shape, bits, axis)

    big = tensor_of((4096, 4608), 1)  # MatMul B: output channels on axis 1
    node = helper.make_node("MatMul", ["x", "W"], ["y"])
    view = LayerView("matmul", 1, 4608, 4096, big.shape, "x", node)
    stats = LayerStats(view, hessian=np.eye(4096)[None])
    s = sample.channel_sample(big, view, stats)
    assert s is not None and s.tensor.shape == (4096, 922) and s.scale == 4608 / 922
    assert np.array_equal(s.tensor.values, big.values[:, ::5])
    assert s.stats.hessian is stats.hessian and s.stats.view.rows == 922 and s.view.shape == (4096, 922)
    assert s.scaled(Option(1000, 2.0, None)) == Option(round(1000 * 4608 / 922), 2.0 * 4608 / 922, None)
    gather = LayerView("gather", 1, 4096, 4608, big.shape, "ids", node)
    assert sample.channel_sample(big, gather, None) is None  # the table's rows are not the channel axis
    grouped = LayerView("conv", 2, 2304, 4096, big.shape, "x", node)
    assert sample.channel_sample(big, grouped, None) is None
    assert sample.channel_sample(tensor_of((2048, 4096), 1), None, None) is None  # not above the threshold
    assert sample.channel_sample(tensor_of((4608, 4096), None), None, None) is None  # no channel axis
    assert sample.channel_sample(tensor_of((2, 1 << 24), 0), None, None) is None  # too few channels


def test_a_gather_table_is_sampled_by_rows_in_usage_order(rng):
    """A token table's sample is systematic over its rows sorted by usage: the
    middle row of every k, so the sample's usage scaled by k is the table's
    (every k-th row in table order can miss or double the few rows most text uses)."""
    from onnx_l2c.passes import TensorInput
    from onnx_l2c.plan import sample

    rows, cols = 6000, 2048  # 12.3 M weights: sampled, stride 3
    table = TensorInput("E", TensorProto.FLOAT, (rows, cols),
                        rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint32).reshape(-1), 0)
    node = helper.make_node("Gather", ["E", "ids"], ["y"])
    view = LayerView("gather", 1, rows, cols, (rows, cols), "ids", node)
    usage = 1.0 / (1.0 + rng.permutation(rows))  # Zipf-like, in no particular row order
    usage /= usage.sum()
    s = sample.channel_sample(table, view, LayerStats(view, row_weight=usage))
    assert s is not None and s.scale == 3 and s.tensor.shape == (2000, cols) and s.view.rows == 2000
    keep = np.sort(np.argsort(-usage, kind="stable")[1::3])
    assert np.array_equal(s.tensor.values, table.values.reshape(rows, cols)[keep])
    assert np.array_equal(s.stats.row_weight, usage[keep]) and s.stats.view.rows == 2000
    assert abs(s.stats.row_weight.sum() * s.scale - 1) < 0.1
    assert sample.channel_sample(table, view, LayerStats(view, row_weight=usage[:100])) is None  # usage of another table


def test_encodes_in_flight_are_bounded_by_their_memory_not_the_bytes(tmp_path: Path, rng, monkeypatch):
    """The writer keeps fewer tensors in flight when their encodes would need
    more than WRITE_MEMORY together (one at a time at the extreme): the same
    files either way."""
    from test_target import _deep_mlp
    from onnx_l2c.write import compress as writing

    path = save(_deep_mlp(rng), tmp_path / "deep.onnx")
    outputs = {}
    for label, memory in (("default", writing.WRITE_MEMORY), ("one_at_a_time", 1)):
        monkeypatch.setattr(writing, "WRITE_MEMORY", memory)
        for kind, options in (("planned", {"target_ratio": 6}), ("int8", {"preset": "int8"})):
            out = tmp_path / label / f"{kind}.onnx"
            out.parent.mkdir(exist_ok=True)
            result = onnx_l2c.compress(path, out, **options)
            outputs[label, kind] = result.sidecar.read_bytes()
    for kind in ("planned", "int8"):
        assert outputs["default", kind] == outputs["one_at_a_time", kind]


def test_sensitivity_probes_read_a_folder_per_probe_with_the_same_result(tmp_path: Path, rng, monkeypatch):
    """The sensitivity probes hold their inputs only up to HELD_INPUT_BYTES:
    above it each probe batches a folder's samples again from the files (32
    detector images were 400 MB held for the whole phase), and one batch's
    outputs are scored at a time. The result is the one the same samples
    give from a list."""
    from builders import mlp
    from onnx_l2c.graph.model import find_weights
    from onnx_l2c.measure import calibration
    from onnx_l2c.measure import sensitivity
    from onnx_l2c.measure.sensitivity import measure_sensitivity

    model = mlp(rng)
    weights = find_weights(model, 16).weights
    inputs = calibration.graph_inputs(model)
    feeds = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(6)]
    for i, f in enumerate(feeds):
        np.savez(tmp_path / f"{i:03d}.npz", **f)
    loads = []
    real_load = calibration._load_npz
    monkeypatch.setattr(calibration, "_load_npz", lambda path: loads.append(path) or real_load(path))
    held = measure_sensitivity(model, tmp_path, weights, {}, calibration.load_samples(tmp_path, inputs), inputs)
    # one read to check the folder, one for the first sample's size, one pass to batch them all
    assert len(loads) == 1 + 1 + 6
    loads.clear()
    monkeypatch.setattr(sensitivity, "HELD_INPUT_BYTES", 0)
    from_files = measure_sensitivity(model, tmp_path, weights, {}, calibration.load_samples(tmp_path, inputs), inputs)
    probes = len(from_files.measured) + len(from_files.no_effect)
    assert probes == len(weights) == 3 and from_files.samples == 6
    assert len(loads) == 1 + 1 + 6 * (1 + probes)  # the reference, then a pass per probe
    from_list = measure_sensitivity(model, tmp_path, weights, {}, feeds, inputs)
    assert from_files.scale == from_list.scale == held.scale and from_files.scale



def test_the_factorization_gate_runs_a_piece_over_its_budget_alone():
    """Pieces that fit the budget run together; one over it waits for the
    others and holds off later ones (first come, first served) until done."""
    import threading
    gate = gptq.MemoryGate(budget=100)
    log: list[tuple[str, str]] = []
    lock = threading.Lock()
    small_in = threading.Event()
    release_small = threading.Event()

    def piece(name: str, nbytes: int, started: threading.Event | None = None,
              wait: threading.Event | None = None) -> None:
        with gate.hold(nbytes):
            with lock:
                log.append(("start", name))
            if started is not None:
                started.set()
            if wait is not None:
                assert wait.wait(10)
            with lock:
                log.append(("end", name))

    first = threading.Thread(target=piece, args=("small", 40, small_in, release_small))
    first.start()
    assert small_in.wait(10)
    big = threading.Thread(target=piece, args=("big", 300))
    big.start()
    while not gate._queue:  # the big piece is in line
        threading.Event().wait(0.01)
    late = threading.Thread(target=piece, args=("late", 10))
    late.start()
    threading.Event().wait(0.2)
    with lock:
        assert log == [("start", "small")]  # the late one fits, but waits its turn behind the big one
    release_small.set()
    for t in (first, big, late):
        t.join(10)
    assert log == [("start", "small"), ("end", "small"), ("start", "big"), ("end", "big"),
                   ("start", "late"), ("end", "late")]
    assert gate._in_flight == 0


@pytest.mark.parametrize("groups", [1, 3])
def test_inverse_cholesky_gives_the_factor_of_the_damped_inverse(rng, groups):
    """U (upper, C order) with UᵀU = (H + damping)⁻¹, the same values as the
    textbook sequence; a dead input (zero diagonal) is marked and kept out."""
    d = 40
    x = rng.standard_normal((groups, 200, d))
    x[:, :, 7] = 0.0  # input 7 never fires
    h = np.einsum("gnd,gne->gde", x, x) / 200
    u, dead = gptq.inverse_cholesky(h.copy(), damping=0.01)
    assert u.shape == (groups, d, d) and u.flags.c_contiguous and u.dtype == np.float64
    assert dead[:, 7].all() and dead.sum() == groups
    for k in range(groups):
        damped = h[k].copy()
        damped[7, :] = damped[:, 7] = 0.0
        damped[7, 7] = 1.0
        damped[np.arange(d), np.arange(d)] += 0.01 * np.diag(damped).mean()
        inv = np.linalg.inv(np.linalg.cholesky(damped))
        expected = np.linalg.cholesky(inv.T @ inv).T
        assert np.array_equal(u[k], expected)
        assert np.allclose(np.triu(u[k]), u[k])
        np.testing.assert_allclose(u[k].T @ u[k], np.linalg.inv(damped), rtol=1e-8, atol=1e-10)
