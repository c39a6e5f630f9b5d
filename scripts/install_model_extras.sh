#!/usr/bin/env bash
# Python packages of the model zoo that cannot go in models/requirements.txt:
# rapidocr-onnxruntime 1.4.4 ships the PP-OCRv4 ONNX models (zoo: ocr_det, ocr_rec) but
# requires opencv-python; we use opencv-python-headless (pinned in models/requirements.txt)
# instead, so it is installed without dependencies. Run after
# `pip install -r models/requirements.txt`. Idempotent.
set -euo pipefail
PY="${PYTHON:-python}"
if "$PY" -c "import importlib.metadata as m; assert m.version('rapidocr-onnxruntime') == '1.4.4'" 2>/dev/null; then
    echo "install_model_extras: rapidocr-onnxruntime 1.4.4 already installed"
    exit 0
fi
"$PY" -m pip install --no-deps rapidocr-onnxruntime==1.4.4
