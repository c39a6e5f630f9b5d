#!/usr/bin/env bash
# Install what the tests need (scripts/setup.sh), then run the test suite.
# Real-model sweeps marked `slow` are left out; run them with `pytest -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The native decoder under libFuzzer + ASan + UBSan, bounded (FUZZ_SECONDS=0:
# the regression seeds only).
bash scripts/fuzz.sh "${FUZZ_SECONDS:-300}"
# -P: the tests import the installed package (onnx_l2c, with passes/ and models/
# installed as onnx_l2c.passes and onnx_l2c.models), never the source folders.
python3 -P -m pytest -m "not slow" "$@"
