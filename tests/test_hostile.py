"""Hostile payloads and sidecars (issue 14): every stream is range-checked
against its stage's limits before use, through the native decoder and all
three load paths, each in a child process so a crash fails the test."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import assert_rejected_natively, patched, run_isolated, stage_offsets
from onnx_l2c.codec import (DOMAIN, FLOAT, FORMAT_VERSION, METADATA_KEY, OP_TYPE, AffineStage, EntropyStage, Recipe,
                            expand_stage, serialize)

CORRUPT = 1  # L2C_E_CORRUPT (runtime/include/onnx_l2c.h)


def _one_unified_block() -> bytes:
    """Four weights in one unified block of magnitude 3, all positive: each
    of its streams (modes, magnitudes, signs) is a constant stream."""
    q = np.array([3, 3, 3, 3], np.int32)
    stage = expand_stage(q, 1, 4, 1, 4, np.array([1], np.uint8))
    return serialize(Recipe(FLOAT, (4,), [stage, AffineStage(1, 1, 4, 0.0, np.ones(1, np.float32))]))


def _magnitudes_alphabet_at(payload: bytes) -> int:
    _, body, _ = stage_offsets(payload)[0]
    modes = body + 32  # outer, n, inner: u64; block: u32; kept_offset: i32
    mags = modes + 16  # the modes stream is constant: a 16-byte header, no body
    assert payload[mags] == 0  # constant
    return mags + 12  # mode, scale_bits, lanes, reserved, count:u64, then alphabet:u32


def _hostile_expand(alphabet: int) -> bytes:
    good = _one_unified_block()
    return patched(good, _magnitudes_alphabet_at(good), struct.pack("<I", alphabet))


def test_the_unified_block_fixture_decodes():
    from helpers import native_decode

    np.testing.assert_array_equal(native_decode(_one_unified_block()), [3, 3, 3, 3])


def test_stream_alphabets_and_magnitudes_are_range_checked():
    entropy = serialize(Recipe(FLOAT, (4,), [EntropyStage(np.full(4, 5, np.int32)),
                                             AffineStage(1, 1, 4, 0.0, np.ones(1, np.float32))]))
    _, body, _ = stage_offsets(entropy)[0]
    stream = body + 4  # after symbol_offset
    assert entropy[stream] == 0  # a constant stream
    assert_rejected_natively([
        # magnitude index 2^32 - 2 -> magnitude 2^32 - 1: decoded silently as -1 before
        ("magnitudes_2^32-1", _hostile_expand(0xFFFFFFFF), r"magnitudes: constant stream has invalid alphabet",
         CORRUPT),
        # magnitude 2^31 = INT_MIN: negated for a sign (undefined behaviour) before
        ("magnitudes_2^31", _hostile_expand(1 << 31), "invalid alphabet 2147483648", CORRUPT),
        ("magnitudes_65537", _hostile_expand(65537), r"invalid alphabet 65537 \(valid: 1\.\.65536\)", CORRUPT),
        ("entropy_constant_alphabet", patched(entropy, stream + 12, struct.pack("<I", 0xFFFFFFFF)),
         r"stage 1 \(entropy\): constant stream has invalid alphabet", CORRUPT),
    ])


def _decode_model(folder: Path, payload: bytes, dims: tuple[int, ...] = (4,)) -> Path:
    """y = x * W with W = Decode(payload) declared float32 `dims`, the payload in the sidecar."""
    folder.mkdir()
    sidecar = "m.onnx.l2c"
    (folder / sidecar).write_bytes(payload)
    p = TensorProto(name="W@" + sidecar, data_type=TensorProto.UINT8, dims=[len(payload)])
    from onnx_l2c.graph.edit import set_external

    set_external(p, sidecar, 0, len(payload))
    decode = helper.make_node(OP_TYPE, [p.name], ["W"], domain=DOMAIN, dtype=FLOAT, shape=list(dims), tensor="W",
                              sidecar=sidecar)
    shape = [1, 4] if dims == (4,) else list(dims)
    graph = helper.make_graph([decode, helper.make_node("Mul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [p])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.metadata_props.add(key=METADATA_KEY, value=str(FORMAT_VERSION))
    path = folder / "m.onnx"
    onnx.save(model, str(path))
    return path


LOAD_CHILD = r"""
import json, sys
import numpy as np
import onnxruntime as ort
import onnx_l2c
out = {}
for label, path in json.loads(sys.argv[1]):
    for mode in ("fast", "custom_op", "decompress"):
        try:
            x = {"x": np.ones((1, 4), np.float32)}
            if mode == "fast":
                y = onnx_l2c.InferenceSession(path).run(None, x)[0]
            elif mode == "custom_op":
                so = ort.SessionOptions()
                so.register_custom_ops_library(onnx_l2c.custom_op_library())
                y = ort.InferenceSession(path, so).run(None, x)[0]
            else:
                y = ort.InferenceSession(str(onnx_l2c.decompress(path, path + ".plain.onnx"))).run(None, x)[0]
            out[f"{label}/{mode}"] = ["ok", y.reshape(-1).tolist()]
        except Exception as exc:
            out[f"{label}/{mode}"] = [type(exc).__name__, str(exc)]
print(json.dumps(out))
"""


def test_hostile_expand_payloads_fail_on_every_load_path(tmp_path):
    cases = [("good", _decode_model(tmp_path / "good", _one_unified_block()))]
    for alphabet in (0xFFFFFFFF, 1 << 31):
        cases.append((f"mag{alphabet}", _decode_model(tmp_path / f"mag{alphabet}", _hostile_expand(alphabet))))
    proc = run_isolated("import sys; sys.argv = ['child', %r]\n" % json.dumps([(l, str(p)) for l, p in cases])
                        + LOAD_CHILD)
    assert proc.returncode == 0, f"child crashed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for mode in ("fast", "custom_op", "decompress"):
        assert results[f"good/{mode}"] == ["ok", [3.0, 3.0, 3.0, 3.0]], results[f"good/{mode}"]
        for label, _ in cases[1:]:
            kind, message = results[f"{label}/{mode}"]
            assert kind != "ok", f"{label}/{mode} decoded {message}"
            assert "invalid alphabet" in message and "W" in message, f"{label}/{mode}: {message}"
            if mode != "custom_op":
                assert kind == "PayloadError" and "m.onnx" in message, f"{label}/{mode}: {kind} {message}"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_sidecar_that_is_not_a_regular_file_is_refused(tmp_path):
    good = _decode_model(tmp_path / "pipe", _one_unified_block())
    sidecar = good.with_name("m.onnx.l2c")
    sidecar.unlink()
    os.mkfifo(sidecar)  # opening it for reading would block forever
    proc = run_isolated(f"""
        import onnx_l2c
        for call in (lambda: onnx_l2c.InferenceSession({str(good)!r}),
                     lambda: onnx_l2c.decompress({str(good)!r}, {str(good) + ".plain.onnx"!r}),
                     lambda: onnx_l2c.inspect({str(good)!r})):
            try:
                call()
                print("LOADED")
            except onnx_l2c.FileError as exc:
                print("FileError", exc)
    """, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("FileError") and "not a regular file" in line for line in lines), lines


def _huge_constant(dims: tuple[int, ...]) -> bytes:
    """A valid payload of ~100 bytes declaring float32 `dims`: one constant stream."""
    from onnx_l2c.codec import native

    numel = int(np.prod(dims))
    stream = native.encode_stream(np.zeros(1, np.int32), 1)  # constant, count 1
    stream = stream[:4] + struct.pack("<Q", numel) + stream[12:]  # the same constant, `numel` times
    body = struct.pack("<4sHBB", b"L2CP", 1, FLOAT, len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
    body += struct.pack("<B3x", 2)
    entropy = struct.pack("<i", 0) + stream
    affine = struct.pack("<QIQfB3x", 1, 1, numel, 0.0, 0) + struct.pack("<f", 1.0)
    body += struct.pack("<B3xI", 1, len(entropy)) + entropy + struct.pack("<B3xI", 2, len(affine)) + affine
    import zlib
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def test_decode_budget_refuses_tiny_payloads_that_declare_gigabytes(tmp_path):
    """A ~100-byte payload declaring 1 GiB: every load path refuses it before
    allocating (peak RSS stays small); an explicit budget admits it."""
    from onnx_l2c.codec import native

    dims = (1 << 14, 1 << 14)  # 2^28 float32 = 1 GiB
    payload = _huge_constant(dims)
    assert len(payload) < 120 and native.payload_info(payload).nbytes == 1 << 30
    model = _decode_model(tmp_path / "huge", payload, dims)
    proc = run_isolated(f"""
        import json
        from pathlib import Path
        import onnxruntime as ort
        import onnx_l2c
        from onnx_l2c.codec import native
        def peak_mb():  # VmHWM: unlike ru_maxrss it does not inherit the parent's peak across exec
            line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
            return int(line.split()[1]) / 1024
        out = {{}}
        calls = {{
            "fast": lambda: onnx_l2c.InferenceSession({str(model)!r}),
            "decompress": lambda: onnx_l2c.decompress({str(model)!r}, {str(model) + ".plain.onnx"!r}),
            "c_api": lambda: native.payload_info(open({str(model.with_name("m.onnx.l2c"))!r}, "rb").read(),
                                                 "m.onnx.l2c", 256 << 20),
        }}
        def custom_op():
            so = ort.SessionOptions()
            so.register_custom_ops_library(onnx_l2c.custom_op_library())
            ort.InferenceSession({str(model)!r}, so)
        calls["custom_op"] = custom_op
        for name, call in calls.items():
            try:
                call()
                out[name] = "LOADED"
            except Exception as exc:
                out[name] = f"{{type(exc).__name__}}: {{exc}}"
            out[name + "_rss_mb"] = peak_mb()
        out["rss_mb"] = peak_mb()
        print(json.dumps(out))
    """, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print({k: v for k, v in out.items() if k.endswith("rss_mb")})  # shown with pytest -s
    for name in ("fast", "decompress"):
        assert out[name].startswith("LimitError") and "max_decoded_bytes" in out[name] and "m.onnx" in out[name], out
    assert out["c_api"].startswith("LimitError") and "above the limit of 268435456" in out["c_api"], out
    assert "ONNX_L2C_MAX_DECODED_BYTES" in out["custom_op"] and "'W'" in out["custom_op"], out
    assert out["rss_mb"] < 600, out  # nothing of the declared GiB was allocated


def test_an_explicit_budget_admits_a_large_declared_tensor(tmp_path):
    payload = _huge_constant((1 << 12, 1 << 13))  # 128 MiB: within the default floor
    model = _decode_model(tmp_path / "ok", payload, (1 << 12, 1 << 13))
    import onnx_l2c

    with pytest.raises(onnx_l2c.L2CError, match="above the limit of 1000"):
        onnx_l2c.decompress(model, tmp_path / "plain.onnx", max_decoded_bytes=1000)
    with pytest.raises(onnx_l2c.OptionError, match="option max_decoded_bytes: must be an integer"):
        onnx_l2c.decompress(model, tmp_path / "plain.onnx", max_decoded_bytes=-1)
    out = onnx_l2c.decompress(model, tmp_path / "plain.onnx", max_decoded_bytes=0, external_data=True)
    assert out.with_name("plain.onnx.data").stat().st_size >= 128 << 20


@pytest.mark.parametrize("edit, error, message", [
    ("offset_text", "PayloadError", "bad external-data entry"),
    ("offset_negative", "PayloadError", "non-negative, got -8"),
    ("length_negative", "PayloadError", "non-negative, got -1"),
    ("no_location", "FileError", "has no location"),
    ("duplicate_output", "PayloadError", "is the output of two"),
    ("float_payload", "PayloadError", "the Decode op takes a 1-D uint8 tensor"),
    ("length_mismatch", "PayloadError", "length 7 for a 168-byte payload"),
])
def test_malformed_decode_entries_are_the_packages_errors(tmp_path, edit, error, message):
    import onnx_l2c

    path = _decode_model(tmp_path / edit, _one_unified_block())
    model = onnx.load(str(path), load_external_data=False)
    payload = model.graph.initializer[0]
    entries = {e.key: e for e in payload.external_data}
    if edit == "offset_text":
        entries["offset"].value = "abc"
    elif edit == "offset_negative":
        entries["offset"].value = "-8"
    elif edit == "length_negative":
        entries["length"].value = "-1"
    elif edit == "no_location":
        entries["location"].value = ""
    elif edit == "float_payload":
        payload.data_type = TensorProto.FLOAT
        payload.dims[:] = [len(_one_unified_block()) // 4]
    elif edit == "length_mismatch":
        entries["length"].value = "7"
    else:
        model.graph.node.insert(1, onnx.helper.make_node(OP_TYPE, [payload.name], ["W"], domain=DOMAIN, dtype=FLOAT,
                                                         shape=[4]))
    onnx.save(model, str(path))
    for call in (lambda: onnx_l2c.InferenceSession(path), lambda: onnx_l2c.decompress(path, tmp_path / "p.onnx"),
                 lambda: onnx_l2c.inspect(path)):
        with pytest.raises(onnx_l2c.L2CError, match=message) as info:
            call()
        assert type(info.value).__name__ == error and "m.onnx" in str(info.value)


def _pruned_blocks(n: int) -> bytes:
    """168 bytes: float32 [n] as n one-element expand blocks, all pruned (a
    constant modes stream; the other three streams empty)."""
    import zlib

    def constant(count: int) -> bytes:
        return struct.pack("<BBBxQI", 0, 0, 0, count, 1)

    expand = struct.pack("<QQQIi", 1, n, 1, 1, 0) + constant(n) + constant(0) + constant(0) + constant(0)
    affine = struct.pack("<QIQfB3x", 1, 1, n, 0.0, 0) + struct.pack("<f", 1.0)
    body = struct.pack("<4sHBB", b"L2CP", 4, FLOAT, 1) + struct.pack("<Q", n) + struct.pack("<B3x", 2)
    body += struct.pack("<B3xI", 8, len(expand)) + expand + struct.pack("<B3xI", 2, len(affine)) + affine
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def test_the_budget_is_checked_before_the_stages_are_parsed():
    """168 bytes declaring 2^32 one-element pruned blocks: counting the
    blocks took ~13 s in l2c_payload_info before any limit was applied; the
    budget now refuses the declared size right after the header."""
    import time

    import onnx_l2c
    from onnx_l2c.codec import native

    n = 1 << 32
    payload = _pruned_blocks(n)
    assert len(payload) == 168
    start = time.perf_counter()
    with pytest.raises(onnx_l2c.LimitError, match=r"declares 17179869184 decoded bytes \[4294967296\]"):
        native.payload_info(payload, "hostile", 256 << 20)
    assert time.perf_counter() - start < 5.0  # was ~13 s of block counting
    # Without a budget the parse is linear too: a constant modes stream gives
    # the block counts without a pass over 2^32 (or 2^40) blocks.
    for blocks in (n, 1 << 40):
        start = time.perf_counter()
        info = native.payload_info(_pruned_blocks(blocks), "hostile")
        assert info.dims == (blocks,) and time.perf_counter() - start < 1.0


def test_the_fuzzers_regression_seeds_are_refused():
    """runtime/fuzz/seeds: the reproducers of the bugs above, the fuzzer's
    regression inputs. Each stays refused: malformed, or above the budget."""
    from helpers import ROOT

    import onnx_l2c
    from onnx_l2c.codec import native

    seeds = sorted((ROOT / "runtime" / "fuzz" / "seeds").glob("*.bin"))
    built = {  # how each seed was made (rewrite the file when a builder changes)
        "expand_magnitude_2^32-1.bin": _hostile_expand(0xFFFFFFFF),
        "expand_magnitude_2^31.bin": _hostile_expand(1 << 31),
        "expand_one_unified_block.bin": _one_unified_block(),
        "constant_2^40_elements.bin": _huge_constant((1 << 20, 1 << 20)),
        "constant_512MiB.bin": _huge_constant((1 << 27,)),
        "expand_2^32_pruned_blocks.bin": _pruned_blocks(1 << 32),
    }
    assert {s.name: s.read_bytes() for s in seeds} == built
    for seed in seeds:
        data = seed.read_bytes()
        if seed.name == "expand_one_unified_block.bin":  # the valid neighbour of the magnitude bugs
            assert native.payload_info(data).dims == (4,)
            continue
        with pytest.raises((onnx_l2c.PayloadError, onnx_l2c.LimitError)):
            native.payload_info(data, seed.name, 256 << 20)


def test_the_custom_ops_budget_covers_every_payload_it_holds(tmp_path):
    """Three ~100-byte payloads declaring 128 MiB each: every one is within the
    per-payload rule (the 256 MiB floor), but together they are above the
    budget of their stored bytes. The custom op counts what all its live
    kernels hold and refuses the third before allocating it; closing a
    session gives its share back."""
    dims = (1 << 12, 1 << 13)  # 128 MiB of float32
    payload = _huge_constant(dims)
    folder = tmp_path / "three"
    folder.mkdir()
    sidecar = "m.onnx.l2c"
    (folder / sidecar).write_bytes(payload * 3)
    from onnx_l2c.graph.edit import set_external

    inits, nodes, prev = [], [], "x"
    for i in range(3):
        p = TensorProto(name=f"W{i}@{sidecar}", data_type=TensorProto.UINT8, dims=[len(payload)])
        set_external(p, sidecar, i * len(payload), len(payload))
        inits.append(p)
        nodes.append(helper.make_node(OP_TYPE, [p.name], [f"W{i}"], domain=DOMAIN, dtype=FLOAT, shape=list(dims),
                                      tensor=f"W{i}", sidecar=sidecar))
        nodes.append(helper.make_node("Mul", [prev, f"W{i}"], [f"y{i}"]))
        prev = f"y{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, list(dims))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    onnx.save(model, str(folder / "m.onnx"))
    one = _decode_model(tmp_path / "one", payload, dims)
    proc = run_isolated(f"""
        import json
        import onnxruntime as ort
        import onnx_l2c
        def peak_mb():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
        so = ort.SessionOptions()
        so.register_custom_ops_library(onnx_l2c.custom_op_library())
        out = {{}}
        try:
            ort.InferenceSession({str(folder / "m.onnx")!r}, so)
            out["three"] = "LOADED"
        except Exception as exc:
            out["three"] = str(exc)
        out["three_peak_mb"] = peak_mb()
        sessions = [ort.InferenceSession({str(one)!r}, so) for _ in range(2)]  # 256 MiB: the floor
        try:
            ort.InferenceSession({str(one)!r}, so)
            out["third_one"] = "LOADED"
        except Exception as exc:
            out["third_one"] = str(exc)
        del sessions
        ort.InferenceSession({str(one)!r}, so)  # the closed sessions gave their share back
        out["after_close"] = "LOADED"
        print(json.dumps(out))
    """, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "the Decode nodes of this process would hold 402653184 decoded bytes" in out["three"], out
    assert any(f"'W{i}'" in out["three"] for i in range(3)) and "ONNX_L2C_MAX_DECODED_BYTES" in out["three"], out
    assert out["three_peak_mb"] < 400, out  # two of the three allocated, not the third
    assert "would hold 402653184 decoded bytes" in out["third_one"], out
    assert out["after_close"] == "LOADED"
