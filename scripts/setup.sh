#!/usr/bin/env bash
# Everything onnx_l2c and its real-model zoo need, on a fresh machine (idempotent):
# the package with its native runtime, torch (CPU, pinned), the zoo's packages,
# the zoo's no-deps extras and the Debian packages its evaluation data needs.
#   bash scripts/setup.sh [--with-nncodec]   # NNCodec peer for `onnx-l2c bench compare` (~1 min build)
set -euo pipefail
cd "$(dirname "$0")/.."
pip=(python3 -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
"${pip[@]}" ".[test]" -r models/requirements.txt
PYTHON=python3 bash scripts/install_model_extras.sh
bash scripts/install_system_deps.sh
if [ "${1:-}" = "--with-nncodec" ]; then
  # nncodec declares numpy<2 and torch/torchvision/opencv it does not need for
  # weight coding (models/peers.py uses its numpy path): install without deps.
  "${pip[@]}" --no-deps nncodec==2.1.3
fi
