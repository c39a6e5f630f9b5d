"""Converter behaviour on tiny models: every feature, every load path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import builders
import onnx_l2c
from helpers import DATA, assert_bit_identical, assert_close, decoded_by_custom_op, run_all_paths, run_plain, save
from onnx_l2c.codec import DOMAIN, bits_to_float32, reconstruct
from onnx_l2c.graph.model import iter_graphs
from onnx_l2c.load.compressed import CompressedModel
from onnx_l2c.passes import TensorInput
from onnx_l2c.passes import PresetQuantizer


def _feeds_mlp(rng, dtype=np.float32):
    return {"x": rng.standard_normal((5, 64)).astype(dtype)}


CASES = {
    "mlp_fp32": (lambda r: builders.mlp(r), lambda r: _feeds_mlp(r)),
    "mlp_fp16": (lambda r: builders.mlp(r, TensorProto.FLOAT16), lambda r: _feeds_mlp(r, np.float16)),
    "mlp_bf16": (lambda r: builders.mlp(r, TensorProto.BFLOAT16), lambda r: _feeds_mlp(r)),
    "conv": (builders.conv, lambda r: {"x": r.standard_normal((1, 8, 12, 12)).astype(np.float32)}),
    "shared": (builders.shared, lambda r: {"x": r.standard_normal((4, 32)).astype(np.float32)}),
    "constant": (builders.constant_node, lambda r: {"x": r.standard_normal((2, 32)).astype(np.float32)}),
    "if_true": (builders.subgraphs, lambda r: {"cond": np.array(True), "x": r.standard_normal((2, 16)).astype(np.float32)}),
    "if_false": (builders.subgraphs, lambda r: {"cond": np.array(False), "x": r.standard_normal((2, 16)).astype(np.float32)}),
    "embedding": (builders.embedding, lambda r: {"ids": r.integers(0, 100, (3, 5)).astype(np.int64)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lossless_is_bit_exact_on_every_path(case, tmp_path, rng):
    build, feeds_fn = CASES[case]
    src = save(build(rng), tmp_path / "model.onnx")
    feeds = feeds_fn(rng)
    expected = run_plain(src, feeds)
    out = tmp_path / "small.onnx"
    result = onnx_l2c.compress(src, out, preset="lossless", min_elements=1)
    assert result.tensors, "no weight was compressed"
    assert (tmp_path / "small.onnx.l2c").is_file()
    paths = run_all_paths(out, tmp_path, feeds)
    assert_bit_identical(expected, paths["fast"], f"{case} via the fast loader")
    assert_bit_identical(expected, paths["decompressed"], f"{case} decompressed")
    assert_close(expected, paths["custom_op"], f"{case} via the custom op")
    # The custom op itself decodes the exact bits.
    model = onnx.load(str(src))
    original = {t.name: t for t in model.graph.initializer}
    original |= {n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant"}
    for name, array in decoded_by_custom_op(out).items():
        expected_w = onnx.numpy_helper.to_array(original[name])
        np.testing.assert_array_equal(array, expected_w.astype(array.dtype), err_msg=name)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("bits,tolerance", [(8, 0.02), (4, 0.2)])
def test_quantized_outputs_stay_close(case, bits, tolerance, tmp_path, rng):
    build, feeds_fn = CASES[case]
    src = save(build(rng), tmp_path / "model.onnx")
    feeds = feeds_fn(rng)
    expected = run_plain(src, feeds)
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(src, out, bits=bits, min_elements=1)
    paths = run_all_paths(out, tmp_path, feeds)
    for path, got in paths.items():
        for a, b in zip(expected, got):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            rel = np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12)
            assert rel < tolerance, f"{case} {bits} bits via {path}: relative error {rel:.4f}"
    # The load paths run the same decoder: identical weights, so the fast
    # loader and the decompressed model agree bit for bit.
    assert_bit_identical(paths["fast"], paths["decompressed"], f"{case}: fast vs decompressed")
    assert_close(paths["fast"], paths["custom_op"], f"{case}: fast vs custom op")
    cm = CompressedModel(out)
    try:
        native = {e.name: cm.decode(e) for e in cm.entries}
    finally:
        cm.close()
    for name, array in decoded_by_custom_op(out).items():
        want = native[name] if native[name].dtype != np.uint16 else bits_to_float32(native[name], TensorProto.BFLOAT16)
        assert array.tobytes() == want.tobytes(), name


def test_python_reconstruction_equals_native_decode(tmp_path, rng):
    model = builders.mlp(rng, TensorProto.FLOAT16)
    src = save(model, tmp_path / "model.onnx")
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(src, out, bits=5, min_elements=1)
    quant = PresetQuantizer(bits=5, dead_zone=onnx_l2c.CompressOptions().dead_zone)
    cm = CompressedModel(out)
    try:
        decoded = {e.name: cm.decode(e) for e in cm.entries}
    finally:
        cm.close()
    checked = 0
    for init in model.graph.initializer:
        bits = np.frombuffer(init.raw_data, np.uint16) if init.raw_data else np.asarray(init.int32_data, np.uint16)
        t = TensorInput(init.name, init.data_type, tuple(init.dims), bits, 1 if init.name.startswith("W") else None)
        if not quant.applies_to(t):
            continue
        expected = reconstruct(quant.encode(t))
        np.testing.assert_array_equal(expected.view(np.uint16), decoded[init.name].view(np.uint16))
        checked += 1
    assert checked == 2


def test_shared_weight_is_coded_once(tmp_path, rng):
    src = save(builders.shared(rng), tmp_path / "model.onnx")
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(src, out, preset="lossless", min_elements=1)
    model = onnx.load(str(out), load_external_data=False)
    decodes = [n for n in model.graph.node if n.domain == DOMAIN]
    assert len(decodes) == 1 and decodes[0].output[0] == "W"
    assert sum(1 for n in model.graph.node if "W" in n.input) == 3
    assert len(onnx_l2c.inspect(out).rows) == 1


def test_subgraph_and_constant_weights_are_compressed(tmp_path, rng):
    src = save(builders.subgraphs(rng), tmp_path / "model.onnx")
    out = tmp_path / "small.onnx"
    result = onnx_l2c.compress(src, out, preset="lossless", min_elements=1)
    assert sorted(t.name for t in result.tensors) == ["We", "Wo", "Wt"]
    model = onnx.load(str(out), load_external_data=False)
    branches = {a.name: a.g for a in model.graph.node[-1].attribute}
    assert [n.op_type for n in branches["then_branch"].node][0] == "Decode"
    assert [n.op_type for n in branches["else_branch"].node][0] == "Decode"
    assert not list(branches["then_branch"].initializer)[0].name == "Wt"


def test_small_and_integer_tensors_are_kept(tmp_path, rng):
    src = save(builders.mlp(rng), tmp_path / "model.onnx")
    out = tmp_path / "small.onnx"
    result = onnx_l2c.compress(src, out, preset="int8", min_elements=1000)
    assert sorted(t.name for t in result.tensors) == ["W1", "W2"]  # b1 (128) is below the threshold
    assert result.skipped_small == 1


def test_a_model_with_nothing_to_code_is_written_unchanged(tmp_path, rng):
    """Every tensor below --min-elements: no payload, so the graph is not marked
    compressed and comes out as large as it went in (not 39 bytes larger)."""
    src = save(builders.mlp(rng), tmp_path / "model.onnx")
    out = tmp_path / "same.onnx"
    result = onnx_l2c.compress(src, out, preset="lossless", min_elements=10**9)
    assert not result.tensors and result.sidecar_bytes == 0
    assert out.read_bytes() == onnx.load(str(src)).SerializeToString()
    feeds = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    assert_bit_identical(run_plain(src, feeds), onnx_l2c.InferenceSession(out).run(None, feeds), "fast loader")


def test_external_data_input(tmp_path):
    src = DATA / "external" / "model.onnx"
    assert (DATA / "external" / "model.onnx.data").is_file()
    feeds = {"x": np.linspace(-1, 1, 2 * 64, dtype=np.float32).reshape(2, 64)}
    expected = run_plain(src, feeds)
    out = tmp_path / "small.onnx"
    result = onnx_l2c.compress(src, out, preset="lossless", min_elements=1)
    assert result.source_bytes == src.stat().st_size + (DATA / "external" / "model.onnx.data").stat().st_size
    paths = run_all_paths(out, tmp_path, feeds)
    assert_bit_identical(expected, paths["fast"], "external data via the fast loader")
    assert_bit_identical(expected, paths["decompressed"], "external data decompressed")
    assert_close(expected, paths["custom_op"], "external data via the custom op")


def test_model_proto_input(tmp_path, rng):
    model = builders.conv(rng)
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(model, out, preset="int8", min_elements=1)
    assert {r.name for r in onnx_l2c.inspect(out).rows} == {"W", "B"}


def test_decompress_external_data(tmp_path, rng):
    src = save(builders.mlp(rng), tmp_path / "model.onnx")
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(src, out, preset="lossless", min_elements=1)
    plain = tmp_path / "plain.onnx"
    onnx_l2c.decompress(out, plain, external_data=True)
    assert (tmp_path / "plain.onnx.data").is_file()
    feeds = _feeds_mlp(rng)
    assert_bit_identical(run_plain(src, feeds), run_plain(plain, feeds), "decompressed with external data")


def test_determinism(tmp_path, rng):
    src = save(builders.mlp(rng), tmp_path / "model.onnx")
    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}" / "small.onnx"
        out.parent.mkdir()
        onnx_l2c.compress(src, out, preset="int8", min_elements=1, workers=1 + k)
        outs.append((out.read_bytes(), (out.parent / "small.onnx.l2c").read_bytes()))
    assert outs[0] == outs[1]


def test_failed_run_leaves_no_output(tmp_path, rng):
    model = builders.mlp(rng)
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]  # corrupt W1
    src = tmp_path / "model.onnx"
    onnx.save(model, str(src))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(onnx_l2c.L2CError, match="W1"):
        onnx_l2c.compress(src, out_dir / "small.onnx", preset="int8", min_elements=1)
    assert list(out_dir.iterdir()) == []


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_bytes(b"\x00\xffthis is not a protobuf" * 10)
    with pytest.raises(onnx_l2c.L2CError, match="notes.onnx"):
        onnx_l2c.compress(bad, tmp_path / "small.onnx")


def test_option_errors_name_the_choices(tmp_path, rng):
    src = save(builders.mlp(rng), tmp_path / "model.onnx")
    with pytest.raises(onnx_l2c.OptionError) as info:
        onnx_l2c.compress(src, tmp_path / "s.onnx", preset="int3")
    assert str(info.value) == "option preset: invalid choice 'int3' (valid values: safe, lossless, int8)"
    assert info.value.option == "preset"
    with pytest.raises(onnx_l2c.OptionError) as info:
        onnx_l2c.compress(src, tmp_path / "s.onnx", bits=1)
    assert str(info.value) == "option bits: must be ≥ 2, got 1" and info.value.option == "bits"
    with pytest.raises(onnx_l2c.OptionError, match="^unknown option 'bitz'; valid options: preset, bits"):
        onnx_l2c.compress(src, tmp_path / "s.onnx", bitz=4)


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "onnx_l2c", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def _error_line(res: subprocess.CompletedProcess) -> str:
    """The one error line (argparse puts its usage before it); no traceback."""
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines and all(line.startswith(("usage:", " ")) for line in lines[:-1]), res.stderr
    return lines[-1]


@pytest.mark.parametrize("flags, message", [
    (["--target-ratio", "0.5"], "onnx-l2c compress: error: argument --target-ratio: must be ≥ 1, got 0.5"),
    (["--fixing-delta", "0.1"], "onnx-l2c compress: error: argument --fixing-delta: has no effect without a size "
                                "target: add --target-ratio R or --target-size BYTES, or drop --fixing-delta"),
    (["--calibration", "c.npz"], "onnx-l2c compress: error: argument --calibration: has no effect without a size "
                                 "target: add --target-ratio R or --target-size BYTES, or drop --calibration"),
    (["--calibration-samples", "8"], "onnx-l2c compress: error: argument --calibration-samples: has no effect "
                                     "without a size target: add --target-ratio R or --target-size BYTES, or drop "
                                     "--calibration-samples"),
    (["--search", "path"], "onnx-l2c compress: error: argument --search: has no effect without a size target: add "
                           "--target-ratio R or --target-size BYTES, or drop --search"),
    (["--methods", "fixing"], "onnx-l2c compress: error: argument --methods: has no effect without a size target: "
                              "add --target-ratio R or --target-size BYTES, or drop --methods"),
    (["--preset", "lossless", "--bits", "4"], "onnx-l2c compress: error: argument --bits: not allowed with --preset "
                                              "lossless, which codes every weight bit-exactly: drop --bits, or choose "
                                              "a lossy --preset"),
    (["--preset", "lossless", "--dead-zone", "0.1"], "onnx-l2c compress: error: argument --dead-zone: not allowed "
                                                     "with --preset lossless, which codes every weight bit-exactly: "
                                                     "drop --dead-zone, or choose a lossy --preset"),
    (["--target-ratio", "4", "--methods", "rounding,mixed", "--fixing-delta", "0.1"],
     "onnx-l2c compress: error: argument --fixing-delta: belongs to method fixing, which the selected methods "
     "(rounding,mixed) do not include: add fixing to --methods, or drop --fixing-delta"),
    (["--target-ratio", "4", "--target-size", "100"], "onnx-l2c compress: error: argument --target-size: give "
                                                      "--target-ratio R or --target-size BYTES, not both"),
    (["--target-ratio", "4", "--allow-target-miss", "--methods", "rounding"],
     "onnx-l2c compress: error: argument --methods: method rounding needs calibration data and would be left out: "
     "add --calibration PATH, or drop rounding from --methods"),
])
def test_cli_option_errors_name_the_flag_and_exit_2(tmp_path, rng, flags, message):
    src = save(builders.mlp(rng), tmp_path / "model.onnx")
    res = _cli("compress", str(src), str(tmp_path / "out.onnx"), *flags)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("usage: onnx-l2c compress ")
    assert _error_line(res) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_cli_unreachable_target(tmp_path, rng):
    """A target out of reach: exit 1, one line naming the flags, nothing written;
    --allow-target-miss writes the smallest file and warns, -q hides the warning."""
    src = save(builders.mlp(rng), tmp_path / "model.onnx")
    out = tmp_path / "out" / "small.onnx"
    out.parent.mkdir()
    res = _cli("compress", str(src), str(out), "--target-ratio", "1000", "--min-elements", "1")
    assert res.returncode == 1 and res.stdout == ""
    line = _error_line(res)
    assert line.startswith("onnx-l2c: error: the target --target-ratio 1000 (")
    assert "is out of reach of methods rounding,mixed,requantize: their smallest candidates give " in line
    assert line.endswith("; nothing was written. Lower the target, add methods to --methods, or give "
                         "--allow-target-miss to write that smallest file")
    assert list(out.parent.iterdir()) == []
    res = _cli("compress", str(src), str(out), "--target-ratio", "1000", "--min-elements", "1",
               "--allow-target-miss")
    assert res.returncode == 0, res.stderr
    assert "WARNING the target (" in res.stderr and "out of reach of methods rounding,mixed" in res.stderr
    assert "data-free:  no --calibration; distortion is each weight's relative error" in res.stdout
    assert "target:     missed: " in res.stdout and out.is_file()
    res = _cli("compress", str(src), str(out), "--target-ratio", "1000", "--min-elements", "1",
               "--allow-target-miss", "-q")
    assert res.returncode == 0 and res.stdout == "" and res.stderr == ""
    res = _cli("compress", str(src), str(out), "--target-ratio", "3", "--min-elements", "1")
    assert res.returncode == 0 and "data-free:  no --calibration" in res.stdout and "target:" not in res.stdout


def test_cli_one_line_errors(tmp_path, rng):
    src = save(builders.mlp(rng), tmp_path / "model.onnx")
    for args in (["compress", "missing.onnx", "o.onnx"], ["inspect", "missing.onnx"],
                 ["decompress", "missing.onnx", "o.onnx"]):
        res = _cli(*args, cwd=tmp_path)
        assert res.returncode == 1 and _error_line(res) == "onnx-l2c: error: missing.onnx: no such model file"
    res = _cli("bench", "runtime", "efficientnet_lite0", "--out", str(tmp_path / "b"))
    assert res.returncode == 1 and _error_line(res) == (
        "onnx-l2c: error: efficientnet_lite0: no such model file (bench runtime takes .onnx paths; for zoo models "
        "by name: python -P -m onnx_l2c.models.bench_runtime --models NAME,...)")
    res = _cli("inspect", str(src))
    assert res.returncode == 1 and _error_line(res) == (
        f"onnx-l2c: error: {src} is not an onnx_l2c-compressed model (no ai.onnx_l2c Decode nodes); compress it "
        "with onnx-l2c compress")
    res = _cli("eval", str(src), str(src), "--model", "minilm")
    assert res.returncode == 2 and _error_line(res) == (
        f"onnx-l2c eval: error: argument --model: {src} has inputs x, but task minilm feeds input_ids, "
        "attention_mask; valid tasks (their inputs): efficientnet_lite0 (input); minilm (input_ids, attention_mask); "
        "magika (bytes); ocr_det (x); ocr_rec (x); silero_vad (input, state, sr)")
    for group, commands in (("zoo", "build, calibration"), ("bench", "runtime, compare")):
        res = _cli(group)
        assert res.returncode == 2 and _error_line(res) == (
            f"onnx-l2c {group}: error: choose a command: {commands} (see `onnx-l2c {group} -h`)")


def test_cli_broken_pipe_exits_quietly(tmp_path, rng):
    """`onnx-l2c inspect x.onnx --json | head`: the reader goes away; no traceback."""
    src = save(builders.mlp(rng), tmp_path / "model.onnx")
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(src, out, bits=6, min_elements=1)
    # stdout is a pipe whose reader is gone: every write fails with EPIPE
    script = "\n".join(["import os, sys", "r, w = os.pipe()", "os.close(r)", "os.dup2(w, 1)",
                         "from onnx_l2c.cli import main",
                         f"code = main(['inspect', {str(out)!r}, '--json'])",
                         "sys.stderr.write(f'code={code}')"])
    res = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stderr == "code=1"


def test_cli_verbose_anywhere(tmp_path, rng):
    src = save(builders.mlp(rng), tmp_path / "model.onnx")
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((4, 64)).astype(np.float32))
    args = ["compress", str(src), str(tmp_path / "o.onnx"), "--target-ratio", "3", "--calibration",
            str(tmp_path / "c.npz"), "--min-elements", "1"]
    quiet = _cli(*args)
    assert quiet.returncode == 0 and "INFO" not in quiet.stderr
    for verbose in ([*args, "-v"], ["-v", *args], [*args[:2], "--verbose", *args[2:]]):
        res = _cli(*verbose)
        assert res.returncode == 0 and "INFO calibration statistics" in res.stderr, res.stderr
    # the commands of the zoo package (entry points) too
    for line, prog in ((["eval", "-h", "-v"], "eval"), (["-v", "eval", "-h"], "eval"),
                       (["zoo", "calibration", "--verbose", "-h"], "zoo calibration")):
        res = _cli(*line)
        assert res.returncode == 0 and res.stdout.startswith(f"usage: onnx-l2c {prog} "), res.stderr


def test_cli_help_is_current():
    from onnx_l2c.cli import _spec_help
    from onnx_l2c.config import all_options

    res = _cli("-h")
    assert "Commands: compress, inspect, decompress, bench, demo, eval, zoo." in res.stdout
    for spec in all_options():
        assert _spec_help(spec).count("(default:") <= 1, spec.name
    help_text = _cli("compress", "-h").stdout
    assert "(default: the allocator tries 0.01 to 0.2)" in " ".join(help_text.split())
    assert "--zoo" not in _cli("bench", "runtime", "-h").stdout
    eval_help = " ".join(_cli("eval", "-h").stdout.split())
    assert "original the original .onnx" in eval_help and "candidate the model to score" in eval_help


def test_inspect_says_what_each_method_did(tmp_path, rng):
    """Per tensor and in total: the codebook's unique values and entropy (checked
    against the decoded weights), the expand stage's block modes, the affine steps."""
    from onnx_l2c.codec.stages import entropy_of

    src = save(builders.mlp(rng), tmp_path / "model.onnx")
    fixed, unified, uniform = tmp_path / "fixed.onnx", tmp_path / "unified.onnx", tmp_path / "uniform.onnx"
    onnx_l2c.compress(src, fixed, target_ratio=8, methods="fixing", min_elements=1)
    onnx_l2c.compress(src, unified, target_ratio=8, methods="unify", min_elements=1)
    onnx_l2c.compress(src, uniform, bits=6, min_elements=1)

    res = onnx_l2c.inspect(fixed)
    cm = CompressedModel(fixed)
    try:
        decoded = {e.name: cm.decode(e) for e in cm.entries}
    finally:
        cm.close()
    coded = [r for r in res.rows if "codebook" in r.stages]
    assert coded
    for row in coded:
        values, counts = np.unique(decoded[row.name], return_counts=True)
        assert row.details["codebook"]["unique_values"] == values.size
        assert row.details["codebook"]["entropy_bits"] == pytest.approx(entropy_of(counts))
        assert row.notes["codebook"].startswith(f"{values.size} unique value")
    everything = np.concatenate([decoded[r.name].reshape(-1) for r in coded])
    values, counts = np.unique(everything, return_counts=True)
    assert res.totals["codebook"]["unique_values"] == values.size
    assert res.totals["codebook"]["entropy_bits"] == pytest.approx(entropy_of(counts))

    res = onnx_l2c.inspect(unified)
    rows = [r for r in res.rows if "expand" in r.stages]
    assert rows and all(sum(r.details["expand"][k] for k in ("kept", "unified", "pruned"))
                        == r.details["expand"]["blocks"] for r in rows)
    assert res.totals["expand"]["blocks"] == sum(r.details["expand"]["blocks"] for r in rows)

    res = _cli("inspect", str(uniform))  # W1 and W2 quantized, the bias b1 coded losslessly
    assert res.returncode == 0 and "affine: step " in res.stdout
    assert "affine (whole model): 2 tensors, step " in res.stdout
    doc = json.loads(_cli("inspect", str(uniform), "--json").stdout)
    assert set(doc["totals"]) == {"affine"} and doc["totals"]["affine"]["tensors"] == 2
    details = {t["name"]: t["details"] for t in doc["tensors"]}
    assert details["b1"] == {} and all(details[w]["affine"]["step_min"] > 0 for w in ("W1", "W2"))
    assert doc["totals"]["affine"]["step_min"] == min(details[w]["affine"]["step_min"] for w in ("W1", "W2"))
    doc = json.loads(_cli("inspect", str(fixed), "--json").stdout)
    assert doc["totals"]["codebook"]["unique_values"] == values.size


def test_inference_session_takes_bytes_and_model_protos(tmp_path, rng):
    """What onnxruntime.InferenceSession takes (a path or bytes), and an
    onnx.ModelProto; the sidecar is resolved in base_dir, never the working directory."""
    src = save(builders.mlp(rng), tmp_path / "model.onnx")
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(src, out, bits=6, min_elements=1)
    feeds = _feeds_mlp(rng)
    expected = onnx_l2c.InferenceSession(out).run(None, feeds)
    data = out.read_bytes()
    for model in (data, onnx.load(str(out), load_external_data=False)):
        got = onnx_l2c.InferenceSession(model, base_dir=tmp_path).run(None, feeds)
        assert_bit_identical(expected, got, type(model).__name__)
        with pytest.raises(onnx_l2c.FileError, match="cannot be found without base_dir: pass base_dir="):
            onnx_l2c.InferenceSession(model)
        with pytest.raises(onnx_l2c.FileError, match="small.onnx.l2c not found"):
            onnx_l2c.InferenceSession(model, base_dir=tmp_path / "elsewhere")
    with pytest.raises(onnx_l2c.OptionError, match="base_dir is for a model given as bytes"):
        onnx_l2c.InferenceSession(out, base_dir=tmp_path)
    with pytest.raises(onnx_l2c.ModelError, match="expected a model path, the model's bytes or an onnx.ModelProto, "
                                                  "got int"):
        onnx_l2c.InferenceSession(3)
    with pytest.raises(onnx_l2c.ModelError, match="not a readable ONNX model"):
        onnx_l2c.InferenceSession(b"\x00\xff not a model", base_dir=tmp_path)


def test_demo_leaves_no_folder_behind(tmp_path, monkeypatch):
    """`onnx-l2c demo` writes into a temporary folder (removed) unless --out names one."""
    from onnx_l2c.models import demo

    seen = []
    monkeypatch.setattr(demo, "_run", lambda args, out_dir: seen.append((out_dir, out_dir.is_dir())) or 0)
    monkeypatch.chdir(tmp_path)
    assert demo.main([]) == 0
    (folder, existed), = seen
    assert existed and not folder.exists() and list(tmp_path.iterdir()) == []
    assert demo.main(["--out", "kept"]) == 0
    assert seen[-1] == (Path("kept"), True) and (tmp_path / "kept").is_dir()


def test_cli_round_trip(tmp_path, rng):
    src = save(builders.conv(rng), tmp_path / "model.onnx")
    out = tmp_path / "small.onnx"
    res = _cli("compress", str(src), str(out), "--bits", "6", "--min-elements", "1", "--report", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stderr
    assert "ratio:" in res.stdout and "original:" in res.stdout
    assert (tmp_path / "r.json").is_file()
    res = _cli("compress", str(src), str(tmp_path / "q.onnx"), "--quiet")
    assert res.returncode == 0 and res.stdout == ""
    res = _cli("inspect", str(out))
    assert res.returncode == 0 and "entropy+affine" in res.stdout
    res = _cli("decompress", str(out), str(tmp_path / "plain.onnx"))
    assert res.returncode == 0 and (tmp_path / "plain.onnx").is_file()
    res = _cli("compress", str(src), str(tmp_path / "x.onnx"), "--preset", "fast")
    assert res.returncode != 0 and "invalid choice" in res.stderr
    res = _cli("compress", str(tmp_path / "missing.onnx"), str(tmp_path / "x.onnx"))
    assert res.returncode == 1 and "missing.onnx" in res.stderr


def test_cli_bench_runtime_runs(tmp_path, rng):
    src = save(builders.conv(rng), tmp_path / "model.onnx")
    res = _cli("bench", "runtime", str(src), "--presets", "lossless,bits=4", "--runs", "2", "--out", str(tmp_path / "b"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "b" / "runtime.json").is_file() and "| model |" in res.stdout


@pytest.mark.parametrize("case", ["mlp_fp16", "if_true", "embedding"])
def test_low_memory_sessions_match_the_fast_loader_and_leave_nothing(case, tmp_path, rng):
    """low_memory=True (decode into a temporary external-data model that
    onnxruntime loads itself) gives the same outputs, and removes its files."""
    build, feeds_fn = CASES[case]
    src = save(build(rng), tmp_path / "model.onnx")
    feeds = feeds_fn(rng)
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(src, out, preset="int8", min_elements=1)
    temp = tmp_path / "temp"
    temp.mkdir()
    fast = onnx_l2c.InferenceSession(out).run(None, feeds)
    low = onnx_l2c.InferenceSession(out, low_memory=True, temp_dir=temp).run(None, feeds)
    for a, b in zip(fast, low):
        np.testing.assert_array_equal(a, b)
    assert list(temp.iterdir()) == []


def test_decompress_writes_the_same_tensors_inline_and_as_external_data(tmp_path, rng):
    src = save(builders.subgraphs(rng), tmp_path / "model.onnx")
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(src, out, preset="int8", min_elements=1)
    tensors = {}
    for external in (False, True):
        plain = onnx_l2c.decompress(out, tmp_path / f"plain{external}.onnx", external_data=external)
        model = onnx.load(str(plain))
        tensors[external] = {t.name: onnx.numpy_helper.to_array(t) for ref in iter_graphs(model.graph)
                             for t in ref.graph.initializer}
    assert tensors[False].keys() == tensors[True].keys() and len(tensors[False]) >= 3
    for name, array in tensors[False].items():
        np.testing.assert_array_equal(array, tensors[True][name])


def test_the_scale_bench_measures_every_step(tmp_path, monkeypatch):
    """`bench runtime --scale` on a tiny chain: every step runs in its own
    process and reports time and peak memory."""
    from onnx_l2c import bench_scale

    monkeypatch.setattr(bench_scale, "_SIDE", (64, 256))
    result = bench_scale.run_scale(64 * 256 * 4 * 2 / 1e9, ["int8"], tmp_path, target_ratio=4, samples=4)
    steps = [r["step"] for r in result["rows"]]
    assert steps == ["plain", "compress", "fast", "fast_low_memory", "custom_op", "decompress", "planner"]
    for row in result["rows"]:
        assert "error" not in row, row
        assert row["wall_s"] > 0 and row["peak_bytes"] > 0
    assert "| fast_low_memory | int8 |" in bench_scale.markdown(result)


def test_cli_default_is_the_safe_preset_and_says_so(tmp_path, rng):
    src = save(builders.mlp(rng), tmp_path / "model.onnx")
    res = _cli("compress", str(src), str(tmp_path / "s.onnx"), "--min-elements", "16")
    assert res.returncode == 0, res.stderr
    assert "preset:     safe" in res.stdout and "ratio:" in res.stdout
    res = _cli("inspect", str(tmp_path / "s.onnx"))
    assert res.returncode == 0 and "entropy" in res.stdout


def test_plugin_command_option_errors_exit_2_naming_the_flag():
    res = _cli("demo", "--preset", "safe", "--bits", "4", "--no-target")
    assert res.returncode == 2, res.stderr
    assert "error: argument --bits: not allowed with --preset safe" in res.stderr
