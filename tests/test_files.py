"""Crash-safe writes: the sidecar lands before the graph that references it,
a killed run's temporary files are removed by the next run, and outputs get
the permissions of a normal file write."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import builders
import onnx
import pytest

import onnx_l2c
from onnx_l2c.files import AtomicOutputs, remove_stale_temps


def _model(tmp_path: Path, rng) -> Path:
    src = tmp_path / "model.onnx"
    onnx.save(builders.mlp(rng), str(src))
    return src


def test_sidecar_is_committed_before_the_graph(tmp_path, rng, monkeypatch):
    src = _model(tmp_path, rng)
    order: list[str] = []
    real = os.replace

    def record(a, b):
        order.append(Path(b).name)
        real(a, b)

    monkeypatch.setattr(os, "replace", record)
    onnx_l2c.compress(src, tmp_path / "small.onnx", preset="int8", min_elements=1)
    assert order == ["small.onnx.l2c", "small.onnx"]
    order.clear()
    onnx_l2c.decompress(tmp_path / "small.onnx", tmp_path / "plain.onnx", external_data=True)
    assert order == ["plain.onnx.data", "plain.onnx"]


def test_outputs_follow_the_umask(tmp_path, rng):
    src = _model(tmp_path, rng)
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        out = tmp_path / f"m{mask:o}.onnx"
        code = (f"import os, onnx_l2c; os.umask({mask}); "
                f"onnx_l2c.compress({str(src)!r}, {str(out)!r}, preset='lossless')")
        subprocess.run([sys.executable, "-P", "-c", code], check=True)
        for path in (out, out.with_name(out.name + ".l2c")):
            assert stat.S_IMODE(path.stat().st_mode) == mode, (path, oct(path.stat().st_mode))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(tmp_path, rng):
    src = _model(tmp_path, rng)
    out = tmp_path / "small.onnx"
    dead = _dead_pid()
    stale = [tmp_path / f".small.onnx.l2c-{dead}.abc123.tmp", tmp_path / f".small.onnx.l2c.l2c-{dead}.x.tmp"]
    live = tmp_path / f".small.onnx.l2c-{os.getppid()}.keep.tmp"  # a live process's file stays
    other = tmp_path / ".other.onnx.l2c-1.x.tmp"  # another output's: not ours to touch
    for path in (*stale, live, other):
        path.write_bytes(b"partial")
    onnx_l2c.compress(src, out, preset="int8", min_elements=1)
    assert not any(p.exists() for p in stale)
    assert live.exists() and other.exists()
    assert remove_stale_temps(out) == []


def test_a_kill_mid_write_leaves_the_old_outputs_intact(tmp_path, rng):
    """SIGKILL while the sidecar is being written: the previous outputs stay
    as they were (loadable), and the next run cleans up the leftovers."""
    src = _model(tmp_path, rng)
    out = tmp_path / "small.onnx"
    onnx_l2c.compress(src, out, preset="int8", min_elements=1)
    before = (out.read_bytes(), out.with_name("small.onnx.l2c").read_bytes())
    code = f"""
import os, sys, time
import onnx_l2c.files as files
real = files.AlignedWriter.add
def slow(self, data):
    offset = real(self, data)
    self._fh.flush()
    print("writing", flush=True)
    time.sleep(60)
    return offset
files.AlignedWriter.add = slow
import onnx_l2c
onnx_l2c.compress({str(src)!r}, {str(out)!r}, preset="lossless", min_elements=1)
"""
    proc = subprocess.Popen([sys.executable, "-P", "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = list(tmp_path.glob(".small.onnx*.tmp"))
    assert leftovers  # the killed run's partial sidecar
    assert (out.read_bytes(), out.with_name("small.onnx.l2c").read_bytes()) == before
    onnx_l2c.InferenceSession(out)  # still the previous, complete model
    onnx_l2c.compress(src, out, preset="int8", min_elements=1)
    assert not any(p.exists() for p in leftovers)


def test_an_exception_removes_every_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with AtomicOutputs() as outputs:
            outputs.temp_for(tmp_path / "a.bin").write_bytes(b"x")
            outputs.temp_for(tmp_path / "b.bin").write_bytes(b"y")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder_is_a_file_error(tmp_path):
    with pytest.raises(onnx_l2c.FileError, match="does not exist"):
        AtomicOutputs().temp_for(tmp_path / "nope" / "a.onnx")
