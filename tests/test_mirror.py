"""The torch mirror of an ONNX graph (issue 15): outputs equal onnxruntime's
on the zoo models, on the ONNX backend's model and node tests, and on small
generated graphs with If, LSTM and Constant-node weights; gradients reach the
weights; a missing op is one clear error naming it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnx_l2c.errors import L2CError, ModelError, UnsupportedError
from onnx_l2c.mirror import Mirror, supported_ops
from onnx_l2c.models.tasks import TASKS
from onnx_l2c.models.zoo import zoo_path

BACKEND = Path(onnx.__file__).parent / "backend" / "test" / "data"
RTOL = 1e-5  # the bar: ‖mirror − onnxruntime‖ / ‖onnxruntime‖ per output


def _relative_error(mirror: Mirror, model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> float:
    session = ort.InferenceSession(str(model) if isinstance(model, Path) else model.SerializeToString())
    expected = session.run(None, feeds)
    with torch.no_grad():
        got = mirror(feeds)
    worst = 0.0
    for name, ref in zip(mirror.output_names, expected):
        out = got[name].numpy()
        assert out.shape == ref.shape, name
        if ref.dtype.kind != "f":
            assert np.array_equal(out, ref), name
            continue
        worst = max(worst, float(np.linalg.norm(out.astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-30)))
    return worst


@pytest.mark.parametrize("name", ["efficientnet_lite0", "magika", "minilm", "ocr_det", "ocr_rec", "silero_vad"])
def test_the_zoo_models_match_onnxruntime(name):
    path = zoo_path(name)
    model = onnx.load(str(path), load_external_data=False)
    mirror = Mirror(model, path.parent)
    feeds = TASKS[name].calibration(2)[-1] if name != "silero_vad" else {
        "input": np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32) * 0.1,
        "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}
    assert _relative_error(mirror, path, feeds) <= RTOL


def _backend_models() -> list[Path]:
    found = []
    for kind in ("pytorch-converted", "pytorch-operator"):
        found += sorted(p for p in (BACKEND / kind).iterdir() if (p / "model.onnx").is_file())
    return found


@pytest.mark.parametrize("case", _backend_models(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_onnx_backend_models_match_onnxruntime(case: Path):
    """Every pytorch-converted and pytorch-operator model of onnx's backend
    test data that onnxruntime runs (the others are opset 6 or less)."""
    model = onnx.load(str(case / "model.onnx"))
    data = sorted(case.glob("test_data_set_*"))[0]
    inputs = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(data.glob("input_*.pb"))]
    try:
        session = ort.InferenceSession(str(case / "model.onnx"))
        feeds = dict(zip([i.name for i in session.get_inputs()], inputs))
        session.run(None, feeds)
    except Exception:  # noqa: BLE001 - onnxruntime's own refusal of an old model: not the mirror's case
        pytest.skip("onnxruntime does not run this model")
    assert _relative_error(Mirror(model, case), case / "model.onnx", feeds) <= RTOL


# Node tests whose expected output the mirror misses, and why.
NODE_MISMATCHES = {
    "test_averagepool_2d_ceil_last_window_starts_on_pad": "the stored output has 4 digits",
}


def test_the_onnx_node_tests_pass_or_fail_clearly():
    """onnx's own per-operator cases (its reference outputs) for every op the
    mirror has: each matches to 1e-4 of the output's range, or fails with the
    package's error naming what is missing (a dtype torch lacks, an op's
    variant)."""
    from onnx.backend.test.case import node

    supported = set(supported_ops())
    ok, refused, wrong = 0, 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
    for case in cases:
        graph = case.model.graph
        if not case.data_sets or any(n.op_type not in supported or n.domain not in ("", "ai.onnx")
                                     for n in graph.node):
            continue
        inputs, outputs = case.data_sets[0]
        try:
            with torch.no_grad():
                mirror = Mirror(case.model)
                got = mirror(dict(zip([i.name for i in graph.input], inputs)))
        except (UnsupportedError, ModelError):
            refused += 1
            continue
        for name, ref in zip(mirror.output_names, outputs):
            out, ref = got[name].numpy(), np.asarray(ref)
            if out.shape != ref.shape:
                wrong.append(case.name)
                break
            if ref.dtype.kind == "f":
                out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
                finite = np.isfinite(ref64)
                scale = max(np.abs(ref64[finite]).max(initial=0.0), 1e-6)
                if not np.array_equal(np.isfinite(out64), finite) or \
                        np.abs(out64[finite] - ref64[finite]).max(initial=0.0) > 1e-4 * scale:
                    wrong.append(case.name)
                    break
            elif not np.array_equal(out, ref):
                wrong.append(case.name)
                break
        else:
            ok += 1
    assert sorted(wrong) == sorted(NODE_MISMATCHES)
    assert ok >= 780, (ok, refused)


# --- generated graphs: control flow, recurrent, Constant weights, gradients -----------------

def _vad_like(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv → LSTM → If whose branches hold their weights in Constant nodes."""
    conv_w = rng.standard_normal((8, 1, 3)).astype(np.float32) * 0.3
    lstm_w = rng.standard_normal((1, 32, 8)).astype(np.float32) * 0.3
    lstm_r = rng.standard_normal((1, 32, 8)).astype(np.float32) * 0.3
    lstm_b = rng.standard_normal((1, 64)).astype(np.float32) * 0.1

    def branch(name: str, scale: float) -> onnx.GraphProto:
        head = numpy_helper.from_array((rng.standard_normal((8, 1)) * scale).astype(np.float32), f"{name}_w")
        return helper.make_graph(
            [helper.make_node("Constant", [], [f"{name}_head"], value=head),
             helper.make_node("MatMul", ["last", f"{name}_head"], [f"{name}_y"])],
            name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)])

    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], pads=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Transpose", ["r"], ["seq"], perm=[2, 0, 1]),
        helper.make_node("LSTM", ["seq", "lstm_w", "lstm_r", "lstm_b"], ["", "h", "cell"], hidden_size=8),
        helper.make_node("Squeeze", ["h", "axis0"], ["last"]),
        helper.make_node("If", ["flag"], ["y"], then_branch=branch("fast", 1.0), else_branch=branch("slow", 0.5)),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((conv_w, "conv_w"), (lstm_w, "lstm_w"), (lstm_r, "lstm_r"),
                                                          (lstm_b, "lstm_b"), (np.array([0], np.int64), "axis0"))]
    graph = helper.make_graph(nodes, "vad_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 16]),
                                                  helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_if_lstm_and_constant_node_weights_match_and_take_gradients(rng):
    model = _vad_like(rng)
    x = rng.standard_normal((2, 1, 16)).astype(np.float32)
    trainable = ["conv_w", "lstm_w", "fast_head", "slow_head"]
    mirror = Mirror(model, trainable=trainable)
    for flag in (True, False):
        assert _relative_error(mirror, model, {"x": x, "flag": np.array(flag)}) <= RTOL
    loss = mirror({"x": x, "flag": np.array(True)})["y"].square().sum()
    loss.backward()
    grads = {name: mirror.weight(name).grad for name in trainable}
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in ("conv_w", "lstm_w", "fast_head"))
    assert grads["slow_head"] is None  # the branch not taken


def test_layer_outputs_are_the_values_the_weights_produce_and_taps_return_them(rng):
    model = _vad_like(rng)
    mirror = Mirror(model)
    # the Conv reads conv_w; the LSTM reads its weights; the If's branch weights are not in the main graph
    assert mirror.layer_outputs(["conv_w", "lstm_w"]) == ["c"]  # the LSTM's first output is unused (empty)
    assert mirror.layer_outputs(["conv_w"]) == ["c"]
    assert mirror.layer_outputs(["fast_head"]) == []
    # a weight reached through weight-only nodes (a Transpose of it) still counts; a constant alone does not
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    k = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "k")
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["w"], ["wt"]), helper.make_node("MatMul", ["x", "wt"], ["h"]),
         helper.make_node("MatMul", ["h", "k"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w, k])
    small = Mirror(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert small.layer_outputs(["w"]) == ["h"]
    assert small.layer_outputs(["k"]) == ["y"]
    x = rng.standard_normal((2, 3)).astype(np.float32)
    got = small({"x": x}, taps=["h"])
    np.testing.assert_allclose(got["h"].numpy(), x @ numpy_helper.to_array(w).T, rtol=1e-6)
    assert set(got) == {"y", "h"}


def test_to_device_moves_constants_parameters_and_feeds(rng):
    """What --device cuda relies on, checked on torch's meta device (no data,
    but a CPU tensor mixed into an op there is an error, as on CUDA)."""
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "fc")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("MatMul", ["f", "fc"], ["z"]), helper.make_node("Softmax", ["z"], ["y"], axis=-1)], "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w, fc])
    mirror = Mirror(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), trainable=["w"])
    mirror.to_device("meta")
    assert mirror.weight("w").device.type == "meta"
    out = mirror({"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}, taps=["c"])
    assert out["y"].device.type == "meta" and tuple(out["y"].shape) == (2, 4)
    assert out["c"].device.type == "meta"


def test_overrides_replace_weights_as_onnxruntime_would_see_them(rng):
    model = _vad_like(rng)
    x = rng.standard_normal((2, 1, 16)).astype(np.float32)
    mirror = Mirror(model, trainable=["conv_w"])
    new = rng.standard_normal((8, 1, 3)).astype(np.float32)
    with torch.no_grad():
        got = mirror({"x": x, "flag": np.array(True)}, overrides={"conv_w": torch.from_numpy(new)})["y"].numpy()
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    edited.graph.initializer[0].CopyFrom(numpy_helper.from_array(new, "conv_w"))
    expected = ort.InferenceSession(edited.SerializeToString()).run(None, {"x": x, "flag": np.array(True)})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_missing_op_is_one_error_naming_it():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["a"]),
                               helper.make_node("Det", ["a"], ["b"], name="det"),
                               helper.make_node("FusedGemm", ["a", "a"], ["y"], domain="com.microsoft")],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedError, match=r"no implementation of Det \(node 'det'\), com.microsoft::FusedGemm"):
        Mirror(model)


def test_bad_trainable_names_and_missing_inputs_are_clear(rng):
    model = _vad_like(rng)
    with pytest.raises(ModelError, match="not a float initializer"):
        Mirror(model, trainable=["nope"])
    with pytest.raises(ModelError, match="needs the inputs"):
        Mirror(model)({"x": np.zeros((2, 1, 16), np.float32)})
    assert issubclass(UnsupportedError, L2CError)


# --- the unified transform and the rate estimate --------------------------------------------

def _layer(rng, shape=(32, 64), scale=0.05):
    w = rng.laplace(0, scale, shape).astype(np.float32)
    rms = np.sqrt((w.reshape(shape[0], -1) ** 2).mean(axis=1))
    return w, rms


def test_the_transform_decodes_what_the_affine_stage_decodes(rng):
    from onnx_l2c.mirror.transform import fake_quantize
    from onnx_l2c.passes.gptq import dequantize, quantize_nearest
    w, rms = _layer(rng, (16, 8, 3, 3))
    for mult, dz, theta in ((0.3, 0.0, 0.0), (1.0, 0.25, 0.1), (2.0, 0.6, 0.3)):
        step = (rms * mult).astype(np.float32)
        decoded, codes = fake_quantize(torch.from_numpy(w), torch.from_numpy(step), torch.tensor(dz), theta, axis=0)
        q = quantize_nearest(w, step[:, None, None, None], dz)
        np.testing.assert_allclose(decoded.detach().numpy(), dequantize(q, step[:, None, None, None], theta),
                                   rtol=1e-6, atol=1e-8)
        assert np.array_equal(codes.detach().numpy(), q)


def test_the_surrogate_gradients_match_finite_differences(rng):
    """The backward pass of the straight-through transform is the gradient of
    its smooth surrogate (soft=True); torch checks that gradient against
    finite differences on a tiny layer, for weights, steps and dead zone."""
    from onnx_l2c.mirror.transform import fake_quantize
    w = torch.tensor(rng.laplace(0, 0.05, (3, 5)), dtype=torch.float64, requires_grad=True)
    step = torch.tensor([0.04, 0.05, 0.06], dtype=torch.float64, requires_grad=True)
    dz = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    x = torch.tensor(rng.standard_normal((4, 3)), dtype=torch.float64)

    def loss(w, step, dz):
        decoded, _ = fake_quantize(w, step, dz, 0.1, axis=0, soft=True)
        return ((x @ decoded) ** 2).sum()

    assert torch.autograd.gradcheck(loss, (w, step, dz), eps=1e-6, atol=1e-5)
    decoded, _ = fake_quantize(w, step, dz, 0.1, axis=0)  # the hard forward: gradients reach all three
    ((x @ decoded) ** 2).sum().backward()
    for t in (w, step, dz):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_the_rate_estimate_tracks_the_coder_within_2_percent(rng):
    """Estimated against real payload bytes (entropy + affine stages) for
    tensors of 1 k to 590 k weights, five steps and two dead zones."""
    from onnx_l2c.codec import FLOAT, AffineStage, EntropyStage, Recipe, native, serialize
    from onnx_l2c.mirror.transform import fake_quantize, rate_bytes
    from onnx_l2c.passes.gptq import quantize_nearest
    worst = 0.0
    for shape in ((16, 8, 3, 3), (64, 64), (128, 1152), (32, 16, 1, 1), (384, 1536)):
        w, rms = _layer(rng, shape)
        for mult in (0.05, 0.2, 0.5, 1.0, 2.0):
            for dz in (0.0, 0.3):
                step = (rms * mult).astype(np.float32)
                per_channel = step.reshape((-1,) + (1,) * (len(shape) - 1))
                q = quantize_nearest(w, per_channel, dz).reshape(-1)
                real = len(serialize(Recipe(FLOAT, shape, [EntropyStage(q), AffineStage(1, shape[0], w.size // shape[0],
                                                                                      0.1, step)])))
                stream = len(native.encode_stream(q - q.min(), int(q.max() - q.min()) + 1))
                _, codes = fake_quantize(torch.from_numpy(w), torch.from_numpy(step), torch.tensor(dz), 0.1, axis=0)
                estimate = float(rate_bytes(codes, real - stream))
                worst = max(worst, abs(estimate - real) / real)
    assert worst <= 0.02


def test_rate_and_distortion_pull_a_tiny_layer_in_opposite_directions(rng):
    """Gradient steps on the step size alone: the rate term makes the grid
    coarser (fewer bytes), the output error makes it finer (less error)."""
    from onnx_l2c.mirror.transform import fake_quantize, rate_bytes
    w0, rms = _layer(rng, (32, 64))
    w = torch.from_numpy(w0)
    x = torch.tensor(rng.standard_normal((256, 32)), dtype=torch.float32)
    reference = x @ w

    def run(weight_rate: float, weight_error: float, start: float) -> tuple[float, float, float, float]:
        log_step = torch.tensor(np.log(rms * start), dtype=torch.float32, requires_grad=True)
        opt = torch.optim.Adam([log_step], lr=0.05)
        first = None
        for _ in range(40):
            decoded, codes = fake_quantize(w, log_step.exp(), torch.tensor(0.0), 0.0, axis=0)
            error = ((x @ decoded - reference) ** 2).mean() / reference.square().mean()
            rate = rate_bytes(codes) / w.numel()
            first = first or (float(rate.detach()), float(error.detach()))
            opt.zero_grad()
            (weight_rate * rate + weight_error * error).backward()
            opt.step()
        return first[0], float(rate.detach()), first[1], float(error.detach())

    for start in (0.5, 2.0):  # steps of 0.5 and 2 rms
        rate0, rate1, _, _ = run(1.0, 0.0, start)
        assert rate1 < 0.8 * rate0
        _, _, error0, error1 = run(0.0, 1.0, start)
        assert error1 < 0.5 * error0


def test_float16_weights_take_overrides_in_their_own_dtype(rng):
    w = rng.standard_normal((8, 4)).astype(np.float16)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 8)).astype(np.float16)
    assert _relative_error(Mirror(model), model, {"x": x}) <= 1e-3  # float16 arithmetic
    new = rng.standard_normal((8, 4)).astype(np.float32)  # what the joint optimizer hands over
    with torch.no_grad():
        got = Mirror(model)({"x": x}, overrides={"W": torch.from_numpy(new)})["y"]
    assert got.dtype == torch.float16
    np.testing.assert_allclose(got.float().numpy(), (x.astype(np.float32) @ new.astype(np.float16).astype(np.float32)),
                               rtol=2e-3, atol=2e-3)
