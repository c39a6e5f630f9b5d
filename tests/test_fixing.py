"""Weight fixing to a shared power-of-two codebook (passes/fixing.py): codebook construction per
order, the progressive fixing schedule, least-squares compensation on calibration statistics, and
the codebook payload decoded natively."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from helpers import native_decode
from onnx_l2c import L2CError
from onnx_l2c.codec import serialize
from onnx_l2c.measure.layers import LayerStats, LayerView
from onnx_l2c.config import CompressOptions
from onnx_l2c.passes.base import TensorContext, TensorInput
from onnx_l2c.passes.fixing import (FIXING_FLOORS, SCHEDULE, FixingParams, WeightFixing, build_codebook, fix_tensor, fixed_recipe, nearest,
                           pow2_approx, relative_distance)


def test_order_zero_is_powers_of_two_mirrored_with_zero():
    book = build_codebook(0.75, 0.05, 0)
    mags = book[book > 0]
    assert np.array_equal(book, np.sort(book)) and np.array_equal(-book[::-1], book)
    assert (book == 0).sum() == 1
    assert np.array_equal(np.log2(mags), np.round(np.log2(mags)))
    assert mags.max() == 1.0 and mags.min() <= 0.75 * 2.0 ** -12 * 2


def test_orders_are_nested_and_reach_the_tolerance():
    rng = np.random.default_rng(0)
    x = np.exp(rng.uniform(np.log(2.0 ** -10), 0.0, 20000))
    previous = None
    worst = []
    for order in range(4):
        book = build_codebook(1.0, 0.05, order)
        if previous is not None:
            assert np.isin(previous, book).all(), f"order {order} drops values of order {order - 1}"
        worst.append(relative_distance(x, book[nearest(x, book)]).max())
        previous = book
    assert worst[0] == pytest.approx(1 / 3, abs=0.01)  # powers of two: within 1/3 relative
    assert worst == sorted(worst, reverse=True)
    assert worst[3] <= 0.05 * 1.05  # order 3 follows the δ grid


def test_pow2_approx_terms():
    assert pow2_approx(np.array([0.75]), 0)[0] == 1.0  # 2^round(log2 0.75) = 1
    assert pow2_approx(np.array([0.75]), 1)[0] == 0.75  # 1 - 0.25
    assert pow2_approx(np.array([5.0 / 16]), 1)[0] == 5.0 / 16  # 0.25 + 0.0625


@pytest.mark.parametrize("kwargs,message", [
    ({"delta": 0.0}, r"^option fixing_delta: must be in \(0, 1\), got 0.0$"),
    ({"delta": 1.0}, r"must be in \(0, 1\)"),
    ({"order": 4}, r"^option pow2_order: must be in 0\.\.3, got 4$"),
])
def test_bad_codebook_parameters(kwargs, message):
    args = {"max_abs": 1.0, "delta": 0.05, "order": 0} | kwargs
    with pytest.raises(L2CError, match=message):
        build_codebook(**args)


def test_schedule_fixes_everything_to_the_codebook(rng):
    w = rng.standard_normal((48, 40)) * 0.1
    max_abs = float(np.abs(w).max())
    result = fix_tensor(w, 0.05, 0, max_abs)
    book = build_codebook(max_abs, 0.05, result.order)
    assert np.isin(result.values.astype(np.float32), book).all()
    fractions = [s[0] for s in result.steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for (fraction, _), (done, tol, _) in zip(SCHEDULE, result.steps):
        assert done >= fraction - 1e-9
    tolerances = [s[1] for s in result.steps]
    assert tolerances == sorted(tolerances, reverse=True) and tolerances[-1] == pytest.approx(0.05)
    assert len(np.unique(result.values)) < len(book)



def test_zero_floor_fixes_small_weights_to_zero_and_lowers_the_entropy(rng):
    w = rng.standard_normal((64, 48)) * 0.1
    max_abs, rms = float(np.abs(w).max()), float(np.sqrt(np.mean(w * w)))

    def entropy(v):
        p = np.unique(v, return_counts=True)[1] / v.size
        return float(-(p * np.log2(p)).sum())

    plain = fix_tensor(w, 0.2, 0, max_abs)
    bits = [entropy(plain.values)]
    for floor in (0.25, 0.5, 1.0):
        floored = fix_tensor(w, 0.2, 0, max_abs, floor=floor)
        below = np.abs(w) < floor * rms
        assert (floored.values[below] == 0).all()
        assert np.isin(floored.values.astype(np.float32), build_codebook(max_abs, 0.2, floored.order)).all()
        bits.append(entropy(floored.values))
    assert bits == sorted(bits, reverse=True) and bits[-1] < 0.6 * bits[0], bits


def test_fill_refines_the_floor_down_to_no_floor_and_then_delta(tmp_path, rng):
    """Targets between the floor candidates and the no-floor ones land (the fill
    bisects the floor at the coarsest δ, then δ)."""
    import onnx_l2c
    from helpers import save
    from test_target import _deep_mlp, _samples

    model = save(_deep_mlp(rng), tmp_path / "deep.onnx")
    planner = onnx_l2c.Planner(model, calibration_data=_samples(rng), methods="fixing")
    floors = {o.params.floor for t in planner.context.tensors.values() for o in t.choices.options if o.params}
    assert floors == {0.0, *FIXING_FLOORS}
    for ratio in (7.0, 9.0, 12.0):
        result = planner.compress(tmp_path / f"r{ratio:g}.onnx", target_ratio=ratio)
        assert abs(result.ratio / ratio - 1) <= 0.03, (ratio, result.ratio)


def _layer(rng, rows=24, d=32):
    """A MatMul weight (d x rows) and the second moment of strongly correlated inputs."""
    mix = rng.standard_normal((d, d)) * 0.3 + np.eye(d)
    x = rng.standard_normal((4000, d)) @ mix
    h = (x.T @ x / len(x))[None]
    node = helper.make_node("MatMul", ["x", "W"], ["y"])
    view = LayerView("matmul", 1, rows, d, (d, rows), "x", node)
    return rng.standard_normal((d, rows)) * 0.2, LayerStats(view, hessian=h)


def test_least_squares_compensation_lowers_the_output_error(rng):
    w, stats = _layer(rng)
    max_abs = float(np.abs(w).max())
    plain = fix_tensor(w, 0.1, 0, max_abs)
    compensated = fix_tensor(w, 0.1, 0, max_abs, stats)
    err_plain = stats.weighted_error(plain.values - w)
    err_comp = stats.weighted_error(compensated.values - w)
    assert err_comp < 0.8 * err_plain, (err_comp, err_plain)


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_codebook_payload_decodes_natively(rng, dtype):
    """Stored as indices into the used values of the shared table; decoded natively, every weight is
    a codebook value (rounded to float16 for a float16 tensor)."""
    storage = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    values = (rng.standard_normal((16, 12)) * 0.3).astype(storage)
    bits = values.view(np.uint16 if dtype == TensorProto.FLOAT16 else np.uint32).reshape(-1)
    tensor = TensorInput("w", dtype, values.shape, bits, 0)
    ctx = TensorContext(None, None, CompressOptions(methods=("fixing",)))
    recipe = WeightFixing().encode(tensor, FixingParams(0.05, 1), ctx)
    decoded = native_decode(serialize(recipe))
    book = build_codebook(float(np.abs(values.astype(np.float32)).max()), 0.05, 3).astype(storage)
    assert np.isin(decoded, book).all()
    assert recipe.stages[1].values.size == len(np.unique(decoded))  # only the used values are stored
    again = fixed_recipe(tensor, decoded.astype(np.float64))
    assert np.array_equal(native_decode(serialize(again)), decoded)


def test_fixing_in_the_global_allocation(tmp_path, rng):
    """`--methods fixing` hits a size target with codebook payloads only; the report gives the
    network's unique values and entropy; with rounding+mixed beside it the allocator may mix both."""
    import json

    import onnx_l2c
    from helpers import run_fast, run_plain, save
    from test_target import _deep_mlp, _samples

    model = save(_deep_mlp(rng), tmp_path / "deep.onnx")
    samples = _samples(rng)
    out, report = tmp_path / "fixed.onnx", tmp_path / "fixed.json"
    result = onnx_l2c.compress(model, out, target_ratio=6, calibration_data=samples, methods="fixing",
                               report=report)
    assert abs(result.ratio / 6 - 1) <= 0.03
    doc = json.loads(report.read_text())
    assert {t["method"] for t in doc["tensors"]} == {"fixing"}
    assert {"delta", "pow2_order"} <= set(doc["tensors"][0]["params"])
    summary = doc["plan"]["fixing"]
    assert summary["tensors"] == 3 and summary["weights"] == sum(np.prod(t["shape"]) for t in doc["tensors"])
    assert 2 <= summary["unique_values"] < 2000 and 0 < summary["entropy_bits_per_weight"] < 8
    assert 4 * summary["unique_values"] <= summary["table_bytes"] <= 3 * 4 * summary["unique_values"]
    held_out = {"x": rng.standard_normal((100, 128)).astype(np.float32)}
    ref, got = run_plain(model, held_out)[0], run_fast(out, held_out)[0]
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.8
    both = onnx_l2c.compress(model, tmp_path / "both.onnx", target_ratio=6, calibration_data=samples,
                             methods="rounding,mixed,fixing")
    assert abs(both.ratio / 6 - 1) <= 0.03


def test_fixing_options_from_the_cli_table():
    from onnx_l2c.config import CompressOptions

    opts = CompressOptions.from_kwargs(target_ratio=8, methods="fixing", fixing_delta=0.05, pow2_order=1)
    assert opts.option("fixing_delta") == 0.05 and opts.option("pow2_order") == 1
    with pytest.raises(L2CError, match=r"^option pow2_order: must be ≤ 3, got 4$"):
        CompressOptions.from_kwargs(pow2_order=4)
    with pytest.raises(L2CError, match=r"^option fixing_delta: must be ≥ 0.001, got 0$"):
        CompressOptions.from_kwargs(fixing_delta=0.0)


def test_planner_reuse_after_a_fixing_target(tmp_path, rng):
    """A Planner compresses twice in a row with fixing chosen (regression: the second call failed)."""
    import onnx_l2c
    from helpers import save
    from test_target import _deep_mlp, _samples

    model = save(_deep_mlp(rng), tmp_path / "deep.onnx")
    planner = onnx_l2c.Planner(model, calibration_data=_samples(rng), methods="fixing")
    first = planner.compress(tmp_path / "a.onnx", target_ratio=8)
    second = planner.compress(tmp_path / "b.onnx", target_ratio=6)
    assert first.plan["fixing"]["tensors"] >= 2 and second.plan["fixing"]["tensors"] >= 2
    assert abs(first.ratio / 8 - 1) <= 0.03 and abs(second.ratio / 6 - 1) <= 0.03
    # a target beyond the method's smallest candidates is an error that writes nothing ...
    with pytest.raises(onnx_l2c.TargetError, match=r"out of reach of methods fixing: .*allow_target_miss=True"):
        planner.compress(tmp_path / "c.onnx", target_ratio=200)
    assert not (tmp_path / "c.onnx").exists() and not (tmp_path / "c.onnx.l2c").exists()
    # ... or, when allowed, the smallest file, with the miss in the notes
    far = planner.compress(tmp_path / "c.onnx", target_ratio=200, allow_target_miss=True)
    assert far.ratio < 150 and any("out of reach of methods fixing" in n for n in far.plan["notes"])
    assert far.plan["target_missed"] and (tmp_path / "c.onnx").is_file()
