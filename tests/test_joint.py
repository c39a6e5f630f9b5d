"""The joint optimizer as a method (`--methods ...,l2c`, issue 15): it refines
the plan through the torch mirror, never ships a plan that scores worse on
its held-out calibration samples, honours its time budget, and falls back to
the post-training plan where the mirror lacks an op."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from builders import _model, tensor
from helpers import run_custom_op, run_fast, run_plain, save
import onnx_l2c
from onnx_l2c.errors import OptionError


def _classifier(rng: np.random.Generator, extra_op: str | None = None):
    """x[N,64] → MatMul+Relu → MatMul → Softmax: a small class distribution."""
    w0 = (rng.standard_normal((64, 256)) / 8).astype(np.float32)
    w1 = (rng.standard_normal((256, 16)) / 16).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W1"], ["z"])]
    last = "z"
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["z"], ["z2"], domain="com.microsoft"))
        last = "z2"
    nodes.append(helper.make_node("Softmax", [last], ["probs"], axis=-1))
    graph = helper.make_graph(nodes, "clf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 16])],
                              [tensor("W0", w0), tensor("W1", w1)])
    return _model(graph, opset=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
                  if extra_op else None)


def _samples(rng, n=16):
    return [{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(n)]


def test_the_joint_optimizer_refines_and_every_loader_reads_it(tmp_path: Path, rng):
    model = save(_classifier(rng), tmp_path / "clf.onnx")
    out = tmp_path / "small.onnx"
    # 9x: on this 20 K-weight toy, whether 20 steps beat the post-training plan on
    # the held-out half depends on the exact budget (with the sidecar index's few
    # hundred bytes: yes at 9x; no at 8x, 10x or 11x, where it keeps the plan)
    result = onnx_l2c.compress(model, out, target_ratio=9, calibration_data=_samples(rng),
                               methods="rounding,mixed,l2c", finetune_steps=20)
    summary = result.plan["l2c"]
    assert summary["tensors"] == 2 and summary["steps"] == 20
    assert summary["applied"] and summary["held_out_after"] < summary["held_out_before"]  # it helped here
    assert abs(summary["rate_after"] / summary["coded_after"] - 1) <= 0.02  # the estimate, against the coder
    assert any(n.startswith("joint optimizer") for n in result.plan["notes"])
    assert abs(result.ratio / 9 - 1) <= 0.03
    feeds = {"x": rng.standard_normal((3, 64)).astype(np.float32)}
    fast = run_fast(out, feeds)
    np.testing.assert_array_equal(fast, run_custom_op(out, feeds))
    plain = tmp_path / "plain.onnx"
    onnx_l2c.decompress(out, plain)
    np.testing.assert_array_equal(fast, run_plain(plain, feeds))


def test_a_spent_time_budget_keeps_the_post_training_plan(tmp_path: Path, rng):
    model = save(_classifier(rng), tmp_path / "clf.onnx")
    samples = _samples(rng)
    (tmp_path / "base").mkdir()
    (tmp_path / "l2c").mkdir()
    # the same file name: the graph's size (which names the sidecar) is part of the budget
    base = onnx_l2c.compress(model, tmp_path / "base" / "m.onnx", target_ratio=10, calibration_data=samples)
    refined = onnx_l2c.compress(model, tmp_path / "l2c" / "m.onnx", target_ratio=10, calibration_data=samples,
                                methods="rounding,mixed,l2c", finetune_minutes=0.0)
    assert refined.plan["l2c"]["steps"] == 0 and not refined.plan["l2c"]["applied"]
    assert (tmp_path / "base" / "m.onnx.l2c").read_bytes() == (tmp_path / "l2c" / "m.onnx.l2c").read_bytes()
    assert base.output_bytes == refined.output_bytes


def test_an_op_the_mirror_lacks_falls_back_with_a_note(tmp_path: Path, rng):
    """onnxruntime runs com.microsoft::Gelu; the mirror does not: the plan stands, the report says why."""
    model = save(_classifier(rng, extra_op="Gelu"), tmp_path / "clf.onnx")
    result = onnx_l2c.compress(model, tmp_path / "out.onnx", target_ratio=8, calibration_data=_samples(rng),
                               methods="rounding,mixed,l2c")
    notes = " ".join(result.plan["notes"])
    assert "joint optimizer skipped, post-training plan kept" in notes and "com.microsoft::Gelu" in notes


def test_device_and_phase_options_are_checked(tmp_path: Path, rng):
    model = save(_classifier(rng), tmp_path / "clf.onnx")
    with pytest.raises(OptionError, match="device"):
        onnx_l2c.compress(model, tmp_path / "a.onnx", target_ratio=8, calibration_data=_samples(rng),
                          methods="rounding,l2c", device="tpu")
    with pytest.raises(OptionError, match="phases"):
        onnx_l2c.compress(model, tmp_path / "a.onnx", target_ratio=8, calibration_data=_samples(rng),
                          methods="rounding,l2c", finetune_phases="weights-only")
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="no CUDA device"):
            onnx_l2c.compress(model, tmp_path / "a.onnx", target_ratio=8, calibration_data=_samples(rng),
                              methods="rounding,l2c", device="cuda")


def test_the_torch_divergences_equal_the_sensitivity_ones(rng):
    import torch
    from onnx_l2c.measure.sensitivity import _divergence
    from onnx_l2c.mirror.finetune import divergence
    logits = rng.standard_normal((3, 10)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for kind, ref in (("kl_probabilities", probs), ("kl_softmax", logits), ("cosine", logits),
                      ("relative_mse", logits)):
        out = ref + 0.05 * rng.standard_normal(ref.shape).astype(np.float32)
        if kind == "kl_probabilities":
            out = np.abs(out) / np.abs(out).sum(-1, keepdims=True)
        got = float(divergence(kind, torch.from_numpy(ref), torch.from_numpy(out)))
        assert got == pytest.approx(_divergence(kind, ref, out), rel=1e-6, abs=1e-12), kind


def test_normalized_descent_moves_the_largest_gradient_by_lr():
    import torch
    from onnx_l2c.mirror.finetune import NormalizedDescent
    p = torch.nn.Parameter(torch.zeros(4))
    opt = NormalizedDescent([p], lr=0.2)
    (p * torch.tensor([4.0, -2.0, 1.0, 0.0])).sum().backward()
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([-0.2, 0.1, -0.05, 0.0]))
    opt.zero_grad()
    assert p.grad is None


def test_fine_tuning_reports_its_steps_through_the_progress_callback(tmp_path: Path, rng):
    model = save(_classifier(rng), tmp_path / "clf.onnx")
    seen: list[tuple[int, int, str]] = []
    onnx_l2c.compress(model, tmp_path / "out.onnx", target_ratio=10, calibration_data=_samples(rng),
                      methods="rounding,mixed,l2c", finetune_steps=20,
                      progress=lambda done, total, name: seen.append((done, total, name)))
    steps = [(d, t, n) for d, t, n in seen if n.startswith("l2c: ")]
    assert [(d, t) for d, t, _ in steps] == [(10, 20), (20, 20)]
    assert all(key in steps[-1][2] for key in ("loss", "rate", "held_out", "lambda"))
    phases = [n.partition(": ")[0] for _, _, n in seen]
    # every phase reports, in order: the measurements, the candidates, the fine-tuning, the write
    assert list(dict.fromkeys(phases)) == ["statistics", "sensitivity", "candidates", "l2c", "writing"]


def test_the_cli_bar_gives_a_reporting_stage_its_own_bar(monkeypatch):
    from onnx_l2c.cli import _Bar
    bar = _Bar(True)
    bar(10, 20, "l2c: loss 1.2, rate 1")
    assert bar.bar.desc == "l2c" and bar.bar.total == 20 and bar.bar.n == 10
    bar(1, 3, "writing")
    assert bar.bar.desc == "writing" and bar.bar.total == 3 and bar.bar.n == 1
    bar.close()
