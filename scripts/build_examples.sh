#!/usr/bin/env bash
# Build the C++ examples (runtime/examples: load_model, time_load) into OUTDIR
# against onnxruntime's C++ headers (Debian's, scripts/fetch_ort_headers.sh)
# and the installed onnxruntime wheel's library, and onnx_l2c's installed
# native library.  Usage: bash scripts/build_examples.sh OUTDIR
# Exit status 3: no onnxruntime headers to be had (the caller may skip).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: build_examples.sh OUTDIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cxx="${CXX:-$(command -v g++ || command -v c++ || true)}"
[ -n "$cxx" ] || { echo "build_examples: no C++ compiler" >&2; exit 3; }
inc="${ONNXRUNTIME_INCLUDE_DIR:-}"
if [ -z "$inc" ]; then
  inc="$(bash "$root/scripts/fetch_ort_headers.sh" | tail -n 1)" || { echo "build_examples: no onnxruntime headers" >&2; exit 3; }
fi
# the wheel's library, under the name its soname asks for; onnx_l2c's library
# (PYTHON: the interpreter whose packages to link, default python3)
libs="$(cd / && "${PYTHON:-python3}" -P -c '
import glob, os, onnxruntime, onnx_l2c
libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.1.*")))
print(libs[-1]); print(onnx_l2c.custom_op_library())')"
ort="$(printf '%s\n' "$libs" | sed -n 1p)"
l2c="$(printf '%s\n' "$libs" | sed -n 2p)"
ln -sf "$ort" "$out/libonnxruntime.so.1"
for name in load_model time_load; do
  "$cxx" -std=c++17 -O2 -Wall -Wextra -Werror "$root/runtime/examples/$name.cc" \
    -I "$inc" -I "$root/runtime/include" \
    "$l2c" "-Wl,-rpath,$(dirname "$l2c")" "$out/libonnxruntime.so.1" "-Wl,-rpath,$out" -o "$out/$name"
done
echo "$out"
