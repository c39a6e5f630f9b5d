#!/usr/bin/env bash
# Install what the tests need (scripts/setup.sh), then run the test suite.
# Real-model sweeps marked `slow` are left out; run them with `pytest -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m pytest -m "not slow" "$@"
