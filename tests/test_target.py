"""Size targets: the global allocator, data-free and calibrated planning, the report."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from builders import _model, tensor
from helpers import run_fast, run_plain, save
import onnx_l2c
from onnx_l2c.plan.allocate import Option, TensorChoices, lagrange, path, shared_grid, within_distortion
from onnx_l2c.errors import L2CError


def _deep_mlp(rng: np.random.Generator) -> onnx.ModelProto:
    """x[N,128] → 3 MatMul+Relu layers (~330k weights) → logits[N,10]; layers of different sensitivity."""
    dims = [128, 512, 384, 10]
    nodes, inits, prev = [], [], "x"
    for i in range(3):
        w = rng.standard_normal((dims[i], dims[i + 1])).astype(np.float32) / np.sqrt(dims[i])
        w *= 1.0 + np.linspace(0, 3, dims[i + 1], dtype=np.float32)  # channels of different scale
        inits.append(tensor(f"W{i}", w))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"]))
        prev = f"h{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Identity", [prev], ["logits"]))
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 128])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return _model(graph)


@pytest.fixture()
def deep(tmp_path: Path, rng) -> Path:
    return save(_deep_mlp(rng), tmp_path / "deep.onnx")


def _samples(rng, n=24):
    return [{"x": rng.standard_normal((2, 128)).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("ratio", [4.0, 7.0, 10.0])
def test_data_free_target_ratio_is_met_on_the_written_files(deep: Path, tmp_path: Path, ratio: float):
    out = tmp_path / "small.onnx"
    result = onnx_l2c.compress(deep, out, target_ratio=ratio)
    on_disk = out.stat().st_size + result.sidecar.stat().st_size
    assert on_disk == result.output_bytes
    assert abs(result.ratio / ratio - 1) <= 0.03
    assert result.plan["data_free"] and "data-free" in " ".join(result.plan["notes"])


def test_calibrated_target_with_report(deep: Path, tmp_path: Path, rng):
    out, report = tmp_path / "small.onnx", tmp_path / "report.json"
    samples = _samples(rng)
    result = onnx_l2c.compress(deep, out, target_ratio=8, calibration_data=samples, report=report)
    assert abs(result.ratio / 8 - 1) <= 0.03
    doc = json.loads(report.read_text())
    assert report.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plan = doc["plan"]
    assert not plan["data_free"] and plan["calibration_samples"] == 24
    assert plan["divergences"] == {"logits": "kl_softmax"}
    assert set(plan["searches"]) == {"lagrange", "path"}
    rows = {t["name"]: t for t in doc["tensors"]}
    assert set(rows) == {"W0", "W1", "W2"}
    assert sum(t["size_share"] for t in rows.values()) == pytest.approx(1.0)
    assert sum(t["distortion_share"] for t in rows.values()) == pytest.approx(1.0)
    for t in rows.values():
        assert t["sensitivity_measured"] and t["statistics"] == "full"
        assert t["params"]["alpha"] > 0 and 0 <= t["sparsity"] < 1
    # The calibrated plan keeps the model's decisions on held-out inputs.
    held_out = {"x": rng.standard_normal((200, 128)).astype(np.float32)}
    ref, got = run_plain(deep, held_out)[0], run_fast(out, held_out)[0]
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9


def test_calibration_beats_data_free_at_equal_size(deep: Path, tmp_path: Path, rng):
    samples = _samples(rng, 32)
    held_out = {"x": rng.standard_normal((300, 128)).astype(np.float32)}
    ref = run_plain(deep, held_out)[0]
    errors = {}
    for label, data in (("free", None), ("calibrated", samples)):
        out = tmp_path / f"{label}.onnx"
        onnx_l2c.compress(deep, out, target_ratio=10, calibration_data=data)
        errors[label] = float(((run_fast(out, held_out)[0] - ref) ** 2).mean())
    assert errors["calibrated"] < errors["free"]


def test_uniform_method_uses_one_step_grid_for_all(deep: Path, tmp_path: Path):
    out, report = tmp_path / "u.onnx", tmp_path / "u.json"
    onnx_l2c.compress(deep, out, target_ratio=6, methods="uniform", report=report)
    alphas = {t["params"]["alpha"] for t in json.loads(report.read_text())["tensors"] if t["params"]}
    assert len(alphas) == 1


def test_path_search_and_target_size(deep: Path, tmp_path: Path):
    out = tmp_path / "p.onnx"
    result = onnx_l2c.compress(deep, out, target_size=200_000, search="path")
    assert abs(result.output_bytes / 200_000 - 1) <= 0.03
    assert result.plan["search"] == "path"


@pytest.mark.parametrize("kwargs, message", [
    ({"target_ratio": 8, "target_size": 1000}, "not both"),
    ({"target_ratio": 0.5}, "must be ≥ 1.0"),
    ({"target_ratio": 8, "methods": "uniform,telepathy"}, "valid methods"),
    ({"target_ratio": 8, "search": "random"}, "valid search values"),
    ({"target_ratio": 8, "report": 3}, "must be a path"),
])
def test_bad_target_options(deep: Path, tmp_path: Path, kwargs, message):
    with pytest.raises(L2CError, match=message):
        onnx_l2c.compress(deep, tmp_path / "x.onnx", **kwargs)


def test_cli_target_with_npz_calibration(deep: Path, tmp_path: Path, rng):
    np.savez(tmp_path / "samples.npz", x=rng.standard_normal((16, 128)).astype(np.float32))
    out, report = tmp_path / "cli.onnx", tmp_path / "cli.json"
    proc = subprocess.run([sys.executable, "-P", "-m", "onnx_l2c", "compress", str(deep), str(out), "--target-ratio", "6",
                           "--calibration", str(tmp_path / "samples.npz"), "--methods", "rounding,mixed",
                           "--report", str(report)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(report.read_text())
    assert abs(doc["ratio"] / 6 - 1) <= 0.03 and doc["plan"]["calibration_samples"] == 16


def _random_choices(rng, n_tensors=4, n_options=5) -> list[TensorChoices]:
    out = []
    for i in range(n_tensors):
        sizes = np.sort(rng.integers(10, 1000, n_options))[::-1]
        errors = np.sort(rng.random(n_options))  # bigger = more precise: a convex-ish trade-off
        options = [Option(int(s), float(e), ("q", j), grid=j) for j, (s, e) in enumerate(zip(sizes, errors))]
        out.append(TensorChoices(f"t{i}", float(rng.random() + 0.1), options))
    return out


def test_allocators_respect_the_budget_and_lagrange_is_near_optimal(rng):
    for trial in range(20):
        tensors = _random_choices(rng)
        budget = int(sum(min(o.bytes for o in t.options) for t in tensors) * 1.5)
        best = min((sum(t.distortion(o) for t, o in zip(tensors, combo)), combo)
                   for combo in itertools.product(*(t.options for t in tensors))
                   if sum(o.bytes for o in combo) <= budget)
        for search in (lagrange, path, shared_grid):
            alloc = search(tensors, budget)
            assert alloc.total_bytes <= budget or search is shared_grid
        # λ search is optimal on the convex hull; allow the hull gap.
        assert lagrange(tensors, budget).distortion <= best[0] * 1.0 + max(t.scale for t in tensors) + 1e-12


def test_distortion_limit_takes_the_fewest_bytes_within_it(rng):
    for trial in range(20):
        tensors = _random_choices(rng)
        least = sum(min(t.distortion(o) for o in t.options) for t in tensors)
        limit = least * 3 + 1e-9
        alloc = within_distortion(tensors, limit)
        assert alloc.distortion <= limit
        fitting = [sum(o.bytes for o in combo) for combo in itertools.product(*(t.options for t in tensors))
                   if sum(t.distortion(o) for t, o in zip(tensors, combo)) <= limit]
        # the multiplier search is optimal on each tensor's convex hull: within one tensor's largest step of
        # the exhaustive optimum, never below it
        assert min(fitting) <= alloc.total_bytes <= min(fitting) + max(o.bytes for t in tensors for o in t.options)
    # a limit below what the most precise choices reach gives those choices
    tensors = _random_choices(rng)
    alloc = within_distortion(tensors, 0.0)
    assert alloc.chosen == {t.name: min(t.options, key=lambda o: (t.distortion(o), o.bytes)) for t in tensors}


def test_safe_default_is_planned_data_free_within_its_fidelity_estimate(deep: Path, tmp_path: Path, rng):
    from onnx_l2c.config import SAFE_MAX_DISTORTION

    result = onnx_l2c.compress(deep, tmp_path / "safe.onnx")  # no options: the safe preset
    assert result.plan["data_free"] and result.options["preset"] == "safe"
    assert 0 < result.plan["predicted_divergence"] <= SAFE_MAX_DISTORTION
    assert {t.method for t in result.tensors} == {"mixed"}
    # each weight within a fraction of a percent of its rms, while int8's outlier-wide steps are coarser
    assert max(t.rel_rmse for t in result.tensors) < 0.01
    int8 = onnx_l2c.compress(deep, tmp_path / "int8.onnx", preset="int8")
    assert result.ratio > 2.5 and sum(t.rel_rmse for t in result.tensors) < sum(t.rel_rmse for t in int8.tensors)
    x = rng.standard_normal((4, 128)).astype(np.float32)
    ref, got = run_plain(deep, {"x": x})[0], run_fast(tmp_path / "safe.onnx", {"x": x})[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.01
    # the same plan every time
    again = onnx_l2c.compress(deep, tmp_path / "again.onnx")
    assert (tmp_path / "again.onnx.l2c").read_bytes() == (tmp_path / "safe.onnx.l2c").read_bytes()


def test_planner_reuses_calibration_across_targets(deep: Path, tmp_path: Path, rng):
    planner = onnx_l2c.Planner(deep, calibration_data=_samples(rng, 16))
    sizes = []
    for ratio in (5.0, 9.0):
        result = planner.compress(tmp_path / f"r{ratio}.onnx", target_ratio=ratio)
        assert abs(result.ratio / ratio - 1) <= 0.03
        sizes.append(result.output_bytes)
    assert sizes[0] > sizes[1]
    with pytest.raises(L2CError, match="needs target_ratio or target_size"):
        planner.compress(tmp_path / "none.onnx")
    with pytest.raises(L2CError, match="overwrite the input"):
        planner.compress(deep, target_ratio=4)


def test_planner_with_other_methods_reuses_measurements(deep: Path, tmp_path: Path, rng):
    planner = onnx_l2c.Planner(deep, calibration_data=_samples(rng, 16))
    uniform_planner = planner.with_methods("uniform")
    assert uniform_planner.context.stats is planner.context.stats
    result = uniform_planner.compress(tmp_path / "u.onnx", target_ratio=6)
    assert abs(result.ratio / 6 - 1) <= 0.03 and result.plan["methods"] == ["uniform"]
    assert not result.plan["data_free"]


def _relu_linear(rng) -> onnx.ModelProto:
    """x → Relu (inputs with a large mean) → MatMul W → Add b → y."""
    w = rng.standard_normal((96, 512)).astype(np.float32) * 0.1
    b = rng.standard_normal(512).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["h"]),
         helper.make_node("Add", ["h", "b"], ["y"])], "rl",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 512])], [tensor("W", w), tensor("b", b)])
    return _model(graph)


def test_bias_correction_removes_the_mean_output_shift(tmp_path: Path, rng):
    from onnx_l2c.load.compressed import decompress
    from onnx import numpy_helper

    path = save(_relu_linear(rng), tmp_path / "rl.onnx")
    samples = [{"x": (rng.standard_normal((4, 96)) + 1.0).astype(np.float32)} for _ in range(32)]
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    result = onnx_l2c.compress(path, out, target_ratio=10, calibration_data=samples, report=report)
    assert result.plan["bias_corrected"] == ["W"]
    assert json.loads(report.read_text())["tensors"][0]["bias_corrected"] is True
    plain = tmp_path / "plain.onnx"
    decompress(out, plain)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(plain).graph.initializer}
    orig = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    x = np.maximum(np.concatenate([s["x"] for s in samples]).astype(np.float64), 0)
    mu = x.mean(axis=0)
    shift = (inits["W"] - orig["W"]).T.astype(np.float64) @ mu
    np.testing.assert_allclose(inits["b"], orig["b"] - shift, rtol=1e-5, atol=1e-6)
    held_out = {"x": (rng.standard_normal((4000, 96)) + 1.0).astype(np.float32)}
    err = run_fast(out, held_out)[0].astype(np.float64) - run_plain(path, held_out)[0]
    assert np.abs(err.mean(axis=0)).mean() < 0.25 * np.abs(shift).mean()


def test_divergence_fits_the_output(rng):
    from onnx_l2c.measure.sensitivity import _divergence, divergence_kind

    logits = rng.standard_normal((8, 10))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    emb = logits / np.linalg.norm(logits, axis=1, keepdims=True)
    assert divergence_kind("output", probs) == "kl_probabilities"
    assert divergence_kind("logits", logits) == "kl_softmax"
    assert divergence_kind("sentence_embedding", emb) == "cosine"
    assert divergence_kind("output", logits) == "relative_mse"
    assert divergence_kind("mask", rng.random((1, 1, 32, 32))) == "relative_mse"
    assert _divergence("cosine", emb, emb) == pytest.approx(0.0, abs=1e-12)
    assert _divergence("kl_softmax", logits, logits + 0.1) == pytest.approx(0.0, abs=1e-12)  # shift-invariant
    assert _divergence("kl_softmax", logits, 1.1 * logits) > 0


# ------------------------------------------------------- lookup tables

def _zipf_ids(rng, rows: int, n: int) -> np.ndarray:
    """Token-like ids: a Zipf law over a (fixed) shuffled vocabulary, most rows rare, a few very common."""
    ranks = np.minimum(rng.zipf(1.3, n), rows) - 1
    return np.random.default_rng(rows).permutation(rows)[ranks]


def test_smoothed_row_weight_keeps_good_turing_mass_for_unseen_rows():
    from onnx_l2c.measure.layers import smoothed_row_weight

    counts = np.array([5, 1, 1, 0, 0, 3, 0, 0], np.float64)  # 10 lookups, 2 singletons, 4 unseen rows
    w = smoothed_row_weight(counts)
    assert w.sum() == pytest.approx(1.0)
    assert w[counts == 0] == pytest.approx(np.full(4, 0.2 / 4))  # P(unseen) = 2/10
    assert w[0] == pytest.approx(0.8 * 5 / 10)
    np.testing.assert_allclose(smoothed_row_weight(np.array([2.0, 3.0])), [0.4, 0.6])  # all seen: frequencies


def test_row_exponents_refine_often_used_rows(rng):
    """At equal coded size, per-row exponents cut the usage-weighted error of a table, also for
    lookups the calibration never saw; the payload (format v3) decodes natively to the recipe."""
    from helpers import native_decode
    from onnx_l2c.codec import ExponentStage, reconstruct, serialize
    from onnx_l2c.measure.layers import LayerStats, LayerView, smoothed_row_weight
    from onnx_l2c.passes import steps
    from onnx_l2c.passes.base import TensorInput

    rows, cols = 3000, 32
    table = (rng.standard_normal((rows, cols)) * rng.uniform(0.5, 2, cols)).astype(np.float32)
    tensor = TensorInput("E", TensorProto.FLOAT, (rows, cols), table.view(np.uint32).reshape(-1), 0)
    view = LayerView("gather", 1, rows, cols, (rows, cols), "ids", helper.make_node("Gather", ["E", "ids"], ["y"]))
    calibration = np.bincount(_zipf_ids(rng, rows, 4000), minlength=rows)
    stats = LayerStats(view, row_weight=smoothed_row_weight(calibration))
    fresh = np.bincount(_zipf_ids(np.random.default_rng(7), rows, 4000), minlength=rows).astype(np.float64)

    def curve(by_row: bool) -> tuple[np.ndarray, np.ndarray]:
        sizes, errors = [], []
        for k in range(-6, 3):
            q = steps.quantize(tensor, steps.QuantParams(2.0 ** (k / 2), True, 0.0, None, True, by_row), stats)
            delta = reconstruct(q.recipe).astype(np.float64) - table
            sizes.append(len(q.payload))
            errors.append((fresh[:, None] * delta ** 2).sum() / fresh.sum())
        order = np.argsort(sizes)
        return np.array(sizes)[order], np.log(np.array(errors)[order])

    plain, refined = curve(False), curve(True)
    lo, hi = max(plain[0][0], refined[0][0]), min(plain[0][-1], refined[0][-1])
    for size in np.linspace(lo, hi, 5):
        ratio = np.exp(np.interp(size, *refined) - np.interp(size, *plain))
        assert ratio < 0.6, f"at {size:.0f} bytes the row exponents keep {ratio:.2f} of the error"
    q = steps.quantize(tensor, steps.QuantParams(0.5, True, 0.0, None, True, True), stats)
    stage = q.recipe.stages[2]
    assert isinstance(stage, ExponentStage) and stage.exponents.max() > 2
    assert stage.exponents[calibration == 0].max() == 0
    assert q.payload[4] == 3  # format version 3
    assert np.array_equal(native_decode(q.payload).view(np.uint32), reconstruct(q.recipe).view(np.uint32))


def test_table_target_picks_row_exponents_and_runs_everywhere(tmp_path: Path, rng):
    rows, cols = 4000, 16
    table = rng.standard_normal((rows, cols)).astype(np.float32)
    proj = (rng.standard_normal((cols, 8)) / 4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["e"]), helper.make_node("MatMul", ["e", "P"], ["y"])],
        "table", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8])], [tensor("E", table), tensor("P", proj)])
    model = save(_model(graph), tmp_path / "table.onnx")
    samples = [{"ids": _zipf_ids(rng, rows, 32).reshape(1, 32).astype(np.int64)} for _ in range(64)]
    out, report = tmp_path / "small.onnx", tmp_path / "report.json"
    result = onnx_l2c.compress(model, out, target_ratio=10, calibration_data=samples, report=report)
    assert abs(result.ratio / 10 - 1) <= 0.03
    row = next(t for t in json.loads(report.read_text())["tensors"] if t["name"] == "E")
    assert row["params"]["row_exponents"] and row["statistics"] == "rows"
    feed = {"ids": _zipf_ids(np.random.default_rng(3), rows, 32).reshape(1, 32).astype(np.int64)}
    fast, ref = run_fast(out, feed)[0], run_plain(model, feed)[0]
    assert np.abs(fast - ref).max() < 0.5 * np.abs(ref).max()
    from helpers import run_custom_op
    np.testing.assert_array_equal(run_custom_op(out, feed)[0], fast)


def test_sensitivity_reaches_subgraph_weights(tmp_path: Path, rng):
    """Weights inside If branches (initializers and Constant nodes) are perturbed through the
    outer scope; a branch the samples never take is reported, not treated as free."""
    from builders import subgraphs
    from onnx_l2c.measure.calibration import graph_inputs
    from onnx_l2c.graph.model import find_weights
    from onnx_l2c.measure.sensitivity import measure_sensitivity

    model = subgraphs(rng)
    weights = find_weights(model, 16).weights
    assert {w.name: w.graph.path != "main" for w in weights} == {"Wt": True, "We": True, "Wo": False}
    samples = [{"cond": np.array(True), "x": rng.standard_normal((2, 16)).astype(np.float32)} for _ in range(8)]
    result = measure_sensitivity(model, tmp_path, weights, {}, samples, graph_inputs(model))
    assert result.measured == {"Wt", "Wo"} and result.no_effect == {"We"}
    assert all(result.scale[name] > 0 for name in ("Wt", "Wo"))
    then = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    assert [t.name for t in then.initializer] == ["Wt"]  # the caller's model is intact


def test_calibrated_target_is_byte_reproducible_across_worker_counts(deep: Path, tmp_path: Path, rng):
    """Same model, data and options: the same bytes, whatever the worker
    count and the load on the machine (no timing or thread-order dependence)."""
    samples = _samples(rng)
    outputs = []
    for run, workers in enumerate((1, 2, 1)):
        (tmp_path / str(run)).mkdir()
        out = tmp_path / str(run) / "small.onnx"  # the same name: the graph names its sidecar
        onnx_l2c.compress(deep, out, target_ratio=8, calibration_data=samples, workers=workers,
                          methods="rounding,mixed,fixing,unify")
        outputs.append((out.read_bytes(), out.with_name(out.name + ".l2c").read_bytes()))
    assert outputs[0] == outputs[1] == outputs[2]


def test_sensitivity_sample_count_is_deterministic():
    from onnx_l2c.measure.sensitivity import MAX_SAMPLES, MIN_SAMPLES, probe_samples

    assert probe_samples(55, 4_616_960, 128) == MAX_SAMPLES  # EfficientNet-Lite0
    assert probe_samples(400, 100_000_000, 128) == MIN_SAMPLES  # a large model: the floor
    assert probe_samples(3, 10_000, 10) == 10  # never more than there are
