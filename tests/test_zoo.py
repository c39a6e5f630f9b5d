"""The zoo beyond EfficientNet: a real model whose weights live in Constant
nodes inside nested If subgraphs (silero VAD), and the side-by-side benchmark
end to end on a small real model (magika)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import onnx_l2c
from helpers import assert_close, run_custom_op, run_fast, run_plain
from onnx_l2c.models.compare import main as compare_main
from onnx_l2c.models.data_audio import run_silero
from onnx_l2c.models.evaluate import open_session
from onnx_l2c.models.zoo import zoo_path


def test_silero_vad_constant_nodes_in_subgraphs_round_trip(tmp_path: Path):
    original = zoo_path("silero_vad")
    out = tmp_path / "vad.onnx"
    result = onnx_l2c.compress(original, out, preset="lossless")
    assert len(result.tensors) >= 10  # weights are Constant nodes inside If branches
    # Real-shaped input: 2 clips of noise-like audio, run with the state carried over chunks.
    audio = np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32) * 0.1
    expected = run_silero(open_session(original, "plain"), audio)
    assert np.array_equal(expected, run_silero(open_session(out, "fast"), audio))
    plain = tmp_path / "plain.onnx"
    onnx_l2c.decompress(out, plain)
    assert np.array_equal(expected, run_silero(open_session(plain, "plain"), audio))
    assert_close([expected], [run_silero(open_session(out, "custom_op"), audio)], "silero via the custom op")


def test_bench_compare_quick_on_magika(tmp_path: Path):
    out = tmp_path / "results"
    code = compare_main(["--models", "magika", "--quick", "--peers", "zstd-19,fp16,ort-int8-per-channel",
                         "--runs", "2", "--out", str(out)])
    assert code == 0
    rows = json.loads((out / "compare.json").read_text())
    by_method = {(r["method"], json.dumps(r["params"], sort_keys=True)): r for r in rows}
    lossless = by_method[("onnx_l2c lossless", json.dumps({"preset": "lossless"}))]
    assert lossless["passes"] and lossless["metrics"]["label_agreement"] == 1.0 and lossless["ratio"] > 1.0
    default = by_method[("onnx_l2c safe (default)", json.dumps({}))]
    assert default["passes"] and default["ratio"] > 2.0  # on both sets
    assert {"zstd-19", "fp16", "ort-int8-per-channel"} <= {r["method"] for r in rows}
    assert all(r["ratio"] or r["error"] for r in rows)
    assert (out / "magika.png").is_file() and "Best ratio at the bar" in (out / "compare.md").read_text()


def test_bench_compare_quantized_rows_on_magikas_onnxruntime_variant(tmp_path: Path):
    """`bench compare --quantized only`: onnxruntime's dynamic (QOperator) int8
    variant of magika, onnx_l2c --preset lossless of it (the same outputs, its
    int8 weights within 1% of their order-0 entropy) and zstd -19 of it."""
    out = tmp_path / "results"
    assert compare_main(["--models", "magika", "--quantized", "only", "--variant-ratios", "1.5", "--runs", "2",
                         "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads((out / "compare.json").read_text())}
    variant, lossless, zstd = (rows["variant qop (onnxruntime)"], rows["onnx_l2c lossless of qop"],
                               rows["zstd-19 of qop"])
    assert variant["error"] is None and lossless["error"] is None and zstd["size_bytes"] > 0
    assert lossless["metrics"] == variant["metrics"] and lossless["metrics_other"] == variant["metrics_other"]
    p = lossless["params"]
    assert p["variant"] == "magika-qop" and p["integer_weight_bytes"] > 700_000
    assert p["integer_order0_bytes"] <= p["integer_payload_bytes"] <= 1.01 * p["integer_order0_bytes"]
    assert lossless["size_bytes"] < p["variant_bytes"] and p["ratio_over_variant"] > 1.15
    # a target over the variant: its int8 weights on coarser grids, scored against the float original
    target = rows["onnx_l2c target on qop"]
    assert target["error"] is None and target["params"]["requantized_tensors"] >= 1
    assert abs(target["ratio"] / (1.5 * variant["ratio"]) - 1) < 0.05
    assert target["metrics"]["label_agreement"] >= 0.95
    text = (out / "compare.md").read_text()
    assert "Already-quantized variants" in text and "Size targets over the variant" in text


def test_magika_with_fixing_and_unification_end_to_end(tmp_path: Path):
    """A real model through weight fixing alone and unification alone at a size target
    (calibrated on the task's calibration split, scored on its disjoint evaluation split),
    loaded by the zero-overhead loader; the reports carry the network-wide summaries."""
    from onnx_l2c.models.evaluate import evaluate
    from onnx_l2c.models.tasks import TASKS

    original = zoo_path("magika")
    planner = onnx_l2c.Planner(original, calibration_data=TASKS["magika"].calibration(32), methods="fixing")
    for methods, key in (("fixing", "fixing"), ("unify", "unify")):
        out = tmp_path / f"{methods}.onnx"
        if methods != "fixing":
            planner = planner.with_methods(methods)  # the calibration measurements are reused
        result = planner.compress(out, target_ratio=6)
        assert abs(result.ratio / 6 - 1) <= 0.03
        assert result.plan[key]["tensors"] >= 1
        score = evaluate("magika", original, out)
        assert score.metrics["label_agreement"] >= 0.95, (methods, score.metrics)
    assert result.plan["unify"]["unify_blocks"] + result.plan["unify"]["prune_blocks"] > 0


def test_bench_summary_lists_time_and_memory_regressions_against_a_baseline():
    from onnx_l2c.models.compare import Row, regressions

    base = [Row("m", "onnx_l2c target", {"target_ratio": 4, "peak_memory_mb": 1000}, convert_s=100.0),
            Row("m", "onnx_l2c lossless", {"preset": "lossless"}, convert_s=1.0)]
    new = [Row("m", "onnx_l2c target", {"target_ratio": 4, "peak_memory_mb": 1300}, convert_s=119.0),
           Row("m", "onnx_l2c lossless", {"preset": "lossless"}, convert_s=1.5),
           Row("m", "onnx_l2c target", {"target_ratio": 8, "peak_memory_mb": 9000}, convert_s=900.0)]  # no baseline
    found = regressions(new, base)
    assert len(found) == 2
    assert "peak MB 1300 vs 1000 (1.30x)" in found[0] and "conversion s 1.5 vs 1 (1.50x)" in found[1]


def test_bench_merge_replaces_rows_of_the_same_model_and_method():
    from onnx_l2c.models.compare import Row, merge_rows

    saved = [Row("m", "onnx_l2c a", {"r": 1}), Row("m", "onnx_l2c a", {"r": 2}), Row("m", "peer", {}),
             Row("n", "onnx_l2c a", {})]
    new = [Row("m", "onnx_l2c a", {"r": 3}), Row("m", "onnx_l2c b", {}), Row("n", "onnx_l2c b", {})]
    merged = [(r.model, r.method, r.params) for r in merge_rows(saved, new)]
    assert merged == [("m", "onnx_l2c a", {"r": 3}), ("m", "onnx_l2c b", {}), ("m", "peer", {}),
                      ("n", "onnx_l2c a", {}), ("n", "onnx_l2c b", {})]
    # size-target rows are replaced per ratio; a new ratio joins its method's rows in ratio order
    saved = [Row("m", "t", {"target_ratio": 4.0}), Row("m", "t", {"target_ratio": 8.0}), Row("m", "peer", {})]
    new = [Row("m", "t", {"target_ratio": 8.0, "x": 1}), Row("m", "t", {"target_ratio": 6.0})]
    merged = [(r.method, r.params) for r in merge_rows(saved, new)]
    assert merged == [("t", {"target_ratio": 4.0}), ("t", {"target_ratio": 6.0}), ("t", {"target_ratio": 8.0, "x": 1}),
                      ("peer", {})]


def test_bench_target_sets_have_distinct_keys_and_ratios_are_checked(capsys):
    import pytest

    from onnx_l2c.models.compare import ABLATION, main

    keys = [a.key for a in ABLATION if a.search == "lagrange"]
    assert len(keys) == len(set(keys))  # --ablation names one set each (the l2c phases by their option)
    assert {"rounding+mixed+l2c:transform", "rounding+mixed+l2c:all"} <= set(keys)
    for bad in ("8,x", "0.5"):
        with pytest.raises(SystemExit) as exc:
            main(["--ratios", bad, "--models", "magika"])
        assert exc.value.code == 2
        assert "--ratios" in capsys.readouterr().err


def test_zoo_modules_import_each_other_relatively():
    """models/ is installed as onnx_l2c.models: an absolute `models.` import
    works only from a source checkout (it broke `onnx-l2c zoo build`)."""
    import ast

    for path in sorted((Path(__file__).parent.parent / "models").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        absolute = [n.lineno for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) and n.level == 0 and (n.module or "").split(".")[0] == "models"
                    or isinstance(n, ast.Import) and any(a.name.split(".")[0] == "models" for a in n.names)]
        assert not absolute, f"{path.name}: absolute imports of models at lines {absolute}"


def test_zoo_calibration_writes_the_bench_feeds_that_compress_reads(tmp_path: Path, monkeypatch):
    """`onnx-l2c zoo calibration` writes a task's calibration feeds (ragged
    shapes too) as a folder of .npz files that `--calibration FOLDER` reads back
    unchanged, in order; it refuses a folder that already holds feeds."""
    import pytest

    from onnx_l2c.models import evaluate
    from onnx_l2c.models.tasks import Task
    from onnx_l2c.measure.calibration import InputSpec, iter_samples
    from onnx_l2c.cli import main as cli_main
    from onnx_l2c.errors import L2CError

    feeds = [{"ids": np.arange(n, dtype=np.int64)[None], "mask": np.ones((1, n), np.int64)} for n in (3, 5, 2)]
    fake = Task("fake", run=lambda s, split: None, metrics=lambda a, b: {}, headline="m", bar=1.0,
                calibration=lambda n: feeds[:n])
    monkeypatch.setitem(evaluate.TASKS, "fake", fake)
    folder = tmp_path / "calib"
    paths = evaluate.save_calibration("fake", folder, 2)
    assert [p.name for p in paths] == ["sample_0000.npz", "sample_0001.npz"]
    assert sorted(p.name for p in folder.iterdir()) == ["sample_0000.npz", "sample_0001.npz"]  # no temp files left
    back = list(iter_samples(folder, [InputSpec("ids", 2, True), InputSpec("mask", 2, True)]))
    assert len(back) == 2 and all(back[i].keys() == feeds[i].keys() for i in range(2))
    assert all(np.array_equal(back[i][k], feeds[i][k]) for i in range(2) for k in feeds[i])
    with pytest.raises(L2CError, match="already holds .npz files"):
        evaluate.save_calibration("fake", folder, 3)
    with pytest.raises(L2CError, match="at least 1"):
        evaluate.save_calibration("fake", tmp_path / "other", 0)
    # the CLI's error path (a message, exit status 1, no traceback)
    assert cli_main(["zoo", "calibration", "magika", str(tmp_path / "none"), "--samples", "0"]) == 1
