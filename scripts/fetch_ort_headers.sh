#!/usr/bin/env bash
# Fetch the onnxruntime C/C++ API headers from Debian's libonnxruntime-dev
# (trixie) into a private cache folder, without root and without touching the
# system's apt sources.  Prints the include directory on stdout.
#
# The pip wheel of onnxruntime ships no headers; the native runtime does not
# link libonnxruntime (ORT_API_MANUAL_INIT), so headers are all it needs.
set -euo pipefail

cache="${ONNX_L2C_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/onnx_l2c}/ort-headers"
inc="$cache/root/usr/include/onnxruntime"
if [ -f "$inc/onnxruntime_c_api.h" ]; then
  echo "$inc"
  exit 0
fi

if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
  echo "fetch_ort_headers: apt-get/dpkg not found; set ONNXRUNTIME_INCLUDE_DIR to a folder holding onnxruntime_c_api.h" >&2
  exit 1
fi

work="$cache/apt"
mkdir -p "$work/sources" "$work/lists/partial" "$work/archives/partial" "$cache/root"

# Build a deb822 source from the machine's own Debian entry (its mirror and
# keyring), with the suite replaced by trixie.
src=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && src="$f" && break
done
uris="http://deb.debian.org/debian"
keyring="/usr/share/keyrings/debian-archive-keyring.gpg"
if [ -n "$src" ]; then
  u=$(awk '/^URIs:/{print $2; exit}' "$src")
  k=$(awk '/^Signed-By:/{print $2; exit}' "$src")
  [ -n "$u" ] && uris="$u"
  [ -n "$k" ] && keyring="$k"
fi
cat > "$work/sources/trixie.sources" <<SRC
Types: deb
URIs: $uris
Suites: trixie
Components: main
Signed-By: $keyring
SRC

apt_opts=(-o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$work/sources"
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
          -o "Dir::State::status=/dev/null" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=$(id -un)")
echo "fetch_ort_headers: downloading libonnxruntime-dev from Debian trixie" >&2
apt-get "${apt_opts[@]}" -qq update >&2
( cd "$work/archives" && apt-get "${apt_opts[@]}" -qq download libonnxruntime-dev >&2 )
deb=$(ls "$work/archives"/libonnxruntime-dev_*.deb | head -n 1)
dpkg -x "$deb" "$cache/root"
if [ ! -f "$inc/onnxruntime_c_api.h" ]; then
  echo "fetch_ort_headers: $deb did not contain onnxruntime_c_api.h" >&2
  exit 1
fi
echo "$inc"
