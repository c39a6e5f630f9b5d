#!/usr/bin/env bash
# Coverage-guided fuzzing of the native payload parser and decoder
# (runtime/fuzz/fuzz_payload.cc) and of the sidecar index reader behind the
# C API's l2c_model_open (runtime/fuzz/fuzz_model.cc) with libFuzzer under
# ASan + UBSan; the payloads get four fifths of the time.
#
#   bash scripts/fuzz.sh            # 300 s, what CI runs (scripts/test.sh)
#   bash scripts/fuzz.sh 0          # build and run the regression seeds only
#   bash scripts/fuzz.sh 3600       # a longer run
#   FUZZ_JOBS=2 bash scripts/fuzz.sh 36000   # parallel workers, overnight
#
# The seed corpus is the golden payloads (tests/data/golden) plus the
# reproducers of fixed bugs (runtime/fuzz/seeds); the seeds are first run
# once each, as regression inputs. Findings (crash-*, leak-*, timeout-*) land
# in build/fuzz/ and fail the run. clang and its fuzzer runtime come from
# Debian's packages (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-300}"
jobs="${FUZZ_JOBS:-1}"
out=build/fuzz
mkdir -p "$out/corpus"

probe="$out/probe.cc"
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' > "$probe"
if ! clang++ -fsanitize=fuzzer "$probe" -o "$out/probe" 2>/dev/null; then
    echo "fuzz: installing clang and its fuzzer runtime (Debian: clang, libclang-rt-dev)"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    version="$($SUDO apt-cache depends clang | sed -n 's/.*Depends: clang-\([0-9]*\)$/\1/p' | head -1)"
    $SUDO apt-get install -y -q --no-install-recommends clang "libclang-rt-${version}-dev"
    clang++ -fsanitize=fuzzer "$probe" -o "$out/probe"
fi

sources=(runtime/src/payload.cc runtime/src/stream.cc runtime/src/crc32.cc runtime/src/quantize.cc
         runtime/src/c_api.cc runtime/src/model.cc)
for harness in fuzz_payload fuzz_model; do
    clang++ -std=c++17 -O1 -g -fno-omit-frame-pointer \
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
        -I runtime/include -I runtime/src \
        "runtime/fuzz/$harness.cc" "${sources[@]}" -o "$out/$harness"
done
mkdir -p "$out/corpus_model"
cp runtime/fuzz/seeds_model/*.bin "$out/corpus_model/"

cp tests/data/golden/*.bin runtime/fuzz/seeds/*.bin "$out/corpus/"
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
flags=(-rss_limit_mb=2560 -malloc_limit_mb=1024 -timeout=20 -max_len=65536 -artifact_prefix="$out/")

echo "fuzz: regression seeds"
"$out/fuzz_payload" "${flags[@]}" runtime/fuzz/seeds/*.bin tests/data/golden/*.bin
"$out/fuzz_model" "${flags[@]}" runtime/fuzz/seeds_model/*.bin

if [ "$seconds" -le 0 ]; then exit 0; fi
model_seconds=$(( seconds / 5 ))
payload_seconds=$(( seconds - model_seconds ))
echo "fuzz: ${payload_seconds} s payloads + ${model_seconds} s sidecar index, ${jobs} job(s)"
for run in "fuzz_payload $payload_seconds corpus" "fuzz_model $model_seconds corpus_model"; do
    set -- $run
    [ "$2" -gt 0 ] || continue
    if [ "$jobs" -gt 1 ]; then
        "$out/$1" "${flags[@]}" -max_total_time="$2" -fork="$jobs" "$out/$3"
    else
        "$out/$1" "${flags[@]}" -max_total_time="$2" -print_final_stats=1 "$out/$3"
    fi
done
