#!/usr/bin/env bash
# sha256, wall time and peak memory of `onnx-l2c compress` on two zoo models
# with each preset and a calibrated 8x target: run it with the old and the new
# code's Python on the same OUTDIR calibration folders to show a refactor
# changes no output byte.
#   bash scripts/conversion_fingerprint.sh OUTDIR [PYTHON]   # PYTHON: whose onnx_l2c runs (default python3)
set -euo pipefail
out=$1; py=${2:-python3}
mkdir -p "$out"; cd "$out"
for m in efficientnet_lite0 magika; do
  src=$("$py" -P -c "from onnx_l2c.models.zoo import zoo_path; print(zoo_path('$m'))" 2>/dev/null \
        || ls "${ONNX_L2C_CACHE:-$HOME/.cache/onnx_l2c}/zoo/$m.onnx")
  [ -d "calib_$m" ] || "$py" -P -m onnx_l2c zoo calibration "$m" "calib_$m"
  for mode in lossless int8 t8; do
    case $mode in
      lossless) args=(--preset lossless);;
      int8) args=(--preset int8);;
      t8) args=(--target-ratio 8 --calibration "calib_$m");;
    esac
    /usr/bin/time -v "$py" -P -m onnx_l2c compress "$src" "${m}_$mode.onnx" "${args[@]}" -q 2> "time_${m}_$mode.txt" \
      || { cat "time_${m}_$mode.txt"; exit 1; }
  done
done
sha256sum ./*.onnx ./*.onnx.l2c > sha256.txt
cat sha256.txt
grep -H "Elapsed\|Maximum resident" time_*.txt
