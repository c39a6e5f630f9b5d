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
from helpers import payload_bytes, run_fast, run_plain, save
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


def _convnet(rng: np.random.Generator) -> onnx.ModelProto:
    """x[N,3,16,16] → three 3x3 Conv+Relu layers (~56k weights)."""
    nodes, inits, prev, channels = [], [], "x", 3
    for i, out in enumerate([32, 64, 64]):
        w = (rng.standard_normal((out, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
        inits.append(tensor(f"W{i}", w))
        nodes += [helper.make_node("Conv", [prev, f"W{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, channels = f"r{i}", out
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", 64, 16, 16])], inits)
    return _model(graph)


def _table(rng: np.random.Generator) -> onnx.ModelProto:
    """A 4000x64 lookup table (Gather), as token embeddings are."""
    graph = helper.make_graph([helper.make_node("Gather", ["T", "ids"], ["y"])], "table",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
                              [tensor("T", rng.standard_normal((4000, 64)).astype(np.float32))])
    return _model(graph)


@pytest.mark.parametrize("kind", ["convnet", "table"])
def test_data_free_targets_land_within_3_percent_on_other_model_types(kind: str, tmp_path: Path, rng):
    model = save({"convnet": _convnet, "table": _table}[kind](rng), tmp_path / f"{kind}.onnx")
    for ratio in (4.0, 7.0, 10.0):
        result = onnx_l2c.compress(model, tmp_path / f"out{ratio:g}.onnx", target_ratio=ratio)
        assert abs(result.ratio / ratio - 1) <= 0.03, (ratio, result.ratio)


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
    ({"target_ratio": 8, "target_size": 1000}, "option target_size: give target_ratio=R or target_size=BYTES, "
                                                "not both"),
    ({"target_ratio": 0.5}, "option target_ratio: must be ≥ 1, got 0.5"),
    ({"target_ratio": 8, "methods": "uniform,telepathy"}, "option methods: unknown method(s) telepathy; "
                                                           "valid methods: mixed, uniform"),
    ({"target_ratio": 8, "search": "random"}, "option search: invalid choice 'random' (valid values: lagrange, path)"),
    ({"target_ratio": 8, "report": 3}, "option report: must be a path, got 3"),
])
def test_bad_target_options(deep: Path, tmp_path: Path, kwargs, message):
    with pytest.raises(L2CError) as info:
        onnx_l2c.compress(deep, tmp_path / "x.onnx", **kwargs)
    assert str(info.value).startswith(message)


def _method_option_values() -> list[tuple[str, object]]:
    """Every method's own option with a valid value."""
    from onnx_l2c.config import CORE_OPTIONS, Choice, all_options

    core = {s.name for s in CORE_OPTIONS}
    out = []
    for spec in all_options():
        if spec.name in core:
            continue
        if isinstance(spec.type, type) and issubclass(spec.type, Choice):
            value: object = next(iter(spec.type)).value
        else:
            value = spec.default if spec.default is not None else spec.minimum if spec.minimum else 0.1
        out.append((spec.name, value))
    return out


@pytest.mark.parametrize("name, value", _method_option_values())
def test_every_method_option_needs_a_target_and_its_method(name, value):
    from onnx_l2c.config import CompressOptions, option_owner

    with pytest.raises(onnx_l2c.OptionError) as info:
        CompressOptions.from_kwargs(**{name: value})
    assert info.value.option == name
    assert str(info.value) == (f"option {name}: has no effect without a size target: add target_ratio=R or "
                               f"target_size=BYTES, or drop {name}")
    owner = option_owner(name)
    others = "mixed" if owner != "mixed" else "uniform"
    with pytest.raises(onnx_l2c.OptionError) as info:
        CompressOptions.from_kwargs(target_ratio=4, methods=others, **{name: value})
    assert str(info.value) == (f"option {name}: belongs to method {owner}, which the selected methods ({others}) "
                               f"do not include: add {owner} to methods, or drop {name}")
    methods = owner if owner not in ("rounding", "l2c") else f"mixed,{owner}"
    opts = CompressOptions.from_kwargs(target_ratio=4, methods=methods, calibration_data="c.npz", **{name: value})
    assert opts.given == {"target_ratio", "methods", "calibration_data", name}


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": "fixing"}, "option methods: has no effect without a size target: add target_ratio=R or "
                            "target_size=BYTES, or drop methods"),
    ({"calibration_data": "c.npz"}, "option calibration_data: has no effect without a size target"),
    ({"calibration_samples": 8}, "option calibration_samples: has no effect without a size target"),
    ({"search": "path"}, "option search: has no effect without a size target"),
    ({"allow_target_miss": True}, "option allow_target_miss: has no effect without a size target"),
    ({"preset": "lossless", "bits": 4}, "option bits: not allowed with preset=lossless, which codes every weight "
                                        "bit-exactly: drop bits, or choose a lossy preset"),
    ({"preset": "lossless", "dead_zone": 0.1}, "option dead_zone: not allowed with preset=lossless"),
    ({"target_ratio": 4, "bits": 4}, "option bits: has no effect with a size target (target_ratio; the planner "
                                     "chooses each tensor's quantization): drop bits, or drop target_ratio"),
    ({"target_size": 999, "dead_zone": 0.1}, "option dead_zone: has no effect with a size target (target_size;"),
    ({"target_ratio": 4, "calibration_samples": 8}, "option calibration_samples: has no effect without "
                                                    "calibration_data: add calibration_data=PATH, or drop "
                                                    "calibration_samples"),
    ({"target_ratio": 4, "methods": "rounding,mixed"}, "option methods: method rounding needs calibration data and "
                                                       "would be left out: add calibration_data=PATH, or drop "
                                                       "rounding from methods"),
])
def test_options_without_effect_are_errors(tmp_path: Path, rng, kwargs, message):
    src = save(builders_mlp(rng), tmp_path / "m.onnx")
    with pytest.raises(onnx_l2c.OptionError) as info:
        onnx_l2c.compress(src, tmp_path / "o.onnx", **kwargs)
    assert str(info.value).startswith(message)
    assert list(tmp_path.iterdir()) == [src]


def builders_mlp(rng):
    from builders import mlp

    return mlp(rng)


def test_the_planner_takes_its_target_later(tmp_path: Path, rng):
    """A Planner's options are checked as for a target (which each compress call gives);
    with_methods keeps the method options of the methods that stay."""
    src = save(builders_mlp(rng), tmp_path / "m.onnx")
    planner = onnx_l2c.Planner(src, methods="mixed,unify", block="1x4", min_elements=1)
    result = planner.compress(tmp_path / "a.onnx", target_ratio=4)
    assert result.plan["data_free"] and result.ratio > 3
    assert result.options["block"] == "1x4"
    assert planner.with_methods("mixed").options.given == {"methods", "min_elements"}
    assert planner.with_methods("unify").options.option("block").value == "1x4"
    with pytest.raises(onnx_l2c.OptionError, match="^option bits: has no effect on a Planner"):
        onnx_l2c.Planner(src, bits=4)
    with pytest.raises(onnx_l2c.OptionError, match="^option fixing_delta: belongs to method fixing"):
        onnx_l2c.Planner(src, fixing_delta=0.1)
    with pytest.raises(onnx_l2c.OptionError, match="^Planner.compress needs target_ratio or target_size"):
        planner.compress(tmp_path / "b.onnx")


def test_an_unreachable_target_writes_nothing(tmp_path: Path, rng):
    """Out of the methods' reach: TargetError, the previous output untouched and no
    temporary file left; with allow_target_miss the smallest file, and a warning."""
    src = save(builders_mlp(rng), tmp_path / "m.onnx")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(onnx_l2c.TargetError) as info:
        onnx_l2c.compress(src, out, target_ratio=1000, min_elements=1)
    budget = int(src.stat().st_size / 1000)
    assert str(info.value).startswith(f"the target target_ratio=1000 ({budget} bytes) is out of reach of methods "
                                      "rounding,mixed,requantize: their smallest candidates give ")
    assert str(info.value).endswith("; nothing was written. Lower the target, add methods to methods, or give "
                                    "allow_target_miss=True to write that smallest file")
    assert sorted(p.name for p in out_dir.iterdir()) == ["o.onnx"] and out.read_bytes() == b"previous"
    with pytest.raises(onnx_l2c.TargetError, match=r"^the target target_size=100 is out of reach"):
        onnx_l2c.compress(src, out, target_size=100, min_elements=1)


def test_an_allowed_target_miss_writes_the_smallest_file(tmp_path: Path, rng, caplog):
    src = save(builders_mlp(rng), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    with caplog.at_level("WARNING", logger="onnx_l2c"):
        result = onnx_l2c.compress(src, out, target_ratio=1000, min_elements=1, allow_target_miss=True)
    assert result.plan["target_missed"] and result.ratio < 1000 and out.is_file()
    assert any("is out of reach of methods rounding,mixed" in r.getMessage() for r in caplog.records)
    assert any("out of reach" in n for n in result.plan["notes"])


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
    assert payload_bytes(tmp_path / "again.onnx.l2c") == payload_bytes(tmp_path / "safe.onnx.l2c")


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
    # by multiply-adds: EfficientNet-Lite0 keeps 32, PP-OCRv4 rec and det (736×736 pages) get fewer
    assert probe_samples(55, 4_616_960, 128, 0.362e9) == MAX_SAMPLES
    assert probe_samples(42, 2_673_769, 128, 0.693e9) == 24
    assert probe_samples(46, 1_158_528, 128, 3.749e9) == MIN_SAMPLES


def test_safe_preset_conflicts_name_what_to_drop(deep: Path, tmp_path: Path):
    with pytest.raises(onnx_l2c.OptionError, match=r"option bits: not allowed with preset=safe.*drop bits"):
        onnx_l2c.compress(deep, tmp_path / "x.onnx", preset="safe", bits=4)
    with pytest.raises(onnx_l2c.OptionError, match=r"option dead_zone: has no effect with the safe preset.*add bits"):
        onnx_l2c.compress(deep, tmp_path / "x.onnx", dead_zone=0.1)
    # --bits alone still chooses the fixed quantizer
    assert {t.method for t in onnx_l2c.compress(deep, tmp_path / "b.onnx", bits=6).tensors} == {"uniform"}
    assert not (tmp_path / "x.onnx").exists()


def test_planner_takes_targets_per_call_and_keeps_its_report(deep: Path, tmp_path: Path):
    with pytest.raises(onnx_l2c.OptionError, match="give target_ratio to Planner.compress"):
        onnx_l2c.Planner(deep, target_ratio=4)
    planner = onnx_l2c.Planner(deep, report=tmp_path / "r.json")
    planner.compress(tmp_path / "a.onnx", target_ratio=4)
    assert json.loads((tmp_path / "r.json").read_text())["plan"]["target_ratio"] == pytest.approx(4, rel=0.01)
    planner.compress(tmp_path / "b.onnx", target_ratio=6, report=tmp_path / "r6.json")  # a call's own wins
    assert (tmp_path / "r6.json").is_file()


def test_a_bad_output_path_fails_before_planning(deep: Path, tmp_path: Path):
    with pytest.raises(onnx_l2c.FileError, match="does not exist"):
        onnx_l2c.compress(deep, tmp_path / "missing" / "x.onnx")
    with pytest.raises(onnx_l2c.OptionError, match="overwrite the input"):
        onnx_l2c.compress(deep, deep, target_ratio=4)


def test_safe_report_names_its_bound_not_a_target(deep: Path, tmp_path: Path):
    from onnx_l2c.config import SAFE_MAX_DISTORTION

    result = onnx_l2c.compress(deep, tmp_path / "s.onnx", report=tmp_path / "s.json")
    assert result.plan["max_distortion"] == SAFE_MAX_DISTORTION and "target_bytes" not in result.plan
    assert json.loads((tmp_path / "s.json").read_text())["plan"]["max_distortion"] == SAFE_MAX_DISTORTION


def test_compress_reads_external_data_from_base_dir_never_the_working_directory(deep: Path, tmp_path: Path):
    model = onnx.load(str(deep))
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    proto = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    with pytest.raises(onnx_l2c.FileError, match="pass base_dir="):
        onnx_l2c.compress(proto, tmp_path / "x.onnx", preset="int8")
    result = onnx_l2c.compress(proto, tmp_path / "y.onnx", preset="int8", base_dir=folder)
    assert result.ratio > 3
    with pytest.raises(onnx_l2c.OptionError, match="base_dir is for an onnx.ModelProto"):
        onnx_l2c.compress(folder / "m.onnx", tmp_path / "z.onnx", base_dir=folder)
