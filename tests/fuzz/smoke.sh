#!/usr/bin/env bash
# Build the GGUF fuzz target with clang's libFuzzer + AddressSanitizer (no cmake) and run it
# for a short while on a generated seed corpus. Exits 0 with a SKIP line when clang or
# libFuzzer is not available, non-zero when the fuzzer finds a crash.
# Usage: tests/fuzz/smoke.sh [seconds]   (default 20; KVLAB_FUZZ_DIR to keep the work dir)
set -euo pipefail

seconds="${1:-20}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cxx="${CLANGXX:-clang++}"

if ! command -v "${cxx}" > /dev/null 2>&1; then
  echo "SKIP: fuzz smoke: ${cxx} not found (apt-get install -y clang)"
  exit 0
fi
work="${KVLAB_FUZZ_DIR:-$(mktemp -d)}"
mkdir -p "${work}"
if [[ -z "${KVLAB_FUZZ_DIR:-}" ]]; then trap 'rm -rf "${work}"' EXIT; fi

# Probe: can this clang link a libFuzzer binary at all?
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' \
  > "${work}/probe.cpp"
if ! "${cxx}" -fsanitize=fuzzer,address "${work}/probe.cpp" -o "${work}/probe" 2> "${work}/probe.log"; then
  echo "SKIP: fuzz smoke: ${cxx} cannot link -fsanitize=fuzzer ($(head -n 1 "${work}/probe.log"))"
  exit 0
fi

echo "fuzz smoke: building gguf_fuzz with ${cxx} -fsanitize=fuzzer,address"
"${cxx}" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I "${root}" -I /usr/include/eigen3 \
  "${root}/tests/fuzz/gguf_fuzz.cpp" \
  "${root}"/backends/model/{gguf,dequant,llama_weights,tokenizer,utf8,unicode_tables}.cpp \
  -o "${work}/gguf_fuzz"

mkdir -p "${work}/corpus"
python3 "${root}/tests/fuzz/make_seeds.py" "${work}/corpus"

echo "fuzz smoke: running for ${seconds} s"
"${work}/gguf_fuzz" -max_total_time="${seconds}" -max_len=4096 -rss_limit_mb=2048 \
  -timeout=10 -print_final_stats=1 -artifact_prefix="${work}/" "${work}/corpus" \
  2> "${work}/fuzz.log" || {
  status=$?
  tail -n 40 "${work}/fuzz.log"
  echo "FAIL: fuzz smoke: the fuzzer stopped with status ${status}; artifacts in ${work}"
  trap - EXIT
  exit 1
}
runs="$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "${work}/fuzz.log" | grep -Eo '[0-9]+$' || echo '?')"
echo "PASS: fuzz smoke: ${runs} inputs in ${seconds} s, no crash"
