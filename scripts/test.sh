#!/usr/bin/env bash
# Install the package (building the native runtime) with what the tests and the
# real-model zoo need, then run the test suite. Real-model sweeps marked
# `slow` are left out; run them with `pytest -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check torch==2.13.0
python3 -m pip install --quiet --disable-pip-version-check ".[test]" -r models/requirements.txt
python3 -m pytest -m "not slow" "$@"
