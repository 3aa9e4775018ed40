#!/usr/bin/env bash
# The sanitizer run of CI, without cmake: compiles core/, traces/, backends/replay/, indexer/ and
# policies/ once with clang, AddressSanitizer and UBSan (-fno-sanitize-recover: any report is a
# failure), then
#   1. links and runs the core, traces and policies unit tests against those objects;
#   2. links the trace-reader and checkpoint libFuzzer targets, seeds them with small valid
#      traces (dense and sparse, from kvlab's writer and from plain h5py) and checkpoints, and
#      fuzzes each for SECONDS.
# (`make sanitize` runs the whole suite under the sanitizers with g++; it takes far longer.)
# Exits 0 with a SKIP line when clang cannot link libFuzzer, non-zero on any failure.
# Usage: tests/fuzz/sanitize_smoke.sh SECONDS KVLAB PYTHON HDF5_INCLUDE_DIRS HDF5_LIBRARIES
#   (the HDF5 lists are ;-separated, as CMake gives them; KVLAB_FUZZ_DIR keeps the work dir)
set -euo pipefail

seconds="$1"
kvlab="$2"
python="$3"
IFS=';' read -r -a hdf5_includes <<<"$4"
IFS=';' read -r -a hdf5_libs <<<"$5"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cxx="${CLANGXX:-clang++}"

if ! command -v "${cxx}" >/dev/null 2>&1; then
  echo "SKIP: sanitize smoke: ${cxx} not found (apt-get install -y clang)"
  exit 0
fi
work="${KVLAB_FUZZ_DIR:-$(mktemp -d)}"
mkdir -p "${work}"
if [[ -z "${KVLAB_FUZZ_DIR:-}" ]]; then trap 'rm -rf "${work}"' EXIT; fi

echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' >"${work}/probe.cpp"
if ! "${cxx}" -fsanitize=fuzzer,address "${work}/probe.cpp" -o "${work}/probe" 2>"${work}/probe.log"; then
  echo "SKIP: sanitize smoke: ${cxx} cannot link -fsanitize=fuzzer ($(head -n 1 "${work}/probe.log"))"
  exit 0
fi

# ---- build: every library source once, into an archive the two targets link from ----------
flags=(-std=c++20 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
  -DNDEBUG -I "${root}" -I /usr/include/eigen3)
for dir in "${hdf5_includes[@]}"; do [[ -n "${dir}" ]] && flags+=(-I "${dir}"); done
launcher=()
command -v ccache >/dev/null 2>&1 && launcher=(ccache)
mkdir -p "${work}/obj"
mapfile -t sources < <(cd "${root}" && find core traces backends/replay indexer -name '*.cpp' -not -path 'traces/tasks/*' |
  sort)
mapfile -t policies < <(cd "${root}" && find policies -name '*.cpp' | sort)
mapfile -t tests < <(cd "${root}" && find tests/core tests/traces tests/policies -maxdepth 1 -name '*_test.cpp' | sort)
echo "sanitize smoke: compiling ${#sources[@]} sources with ${cxx} -fsanitize=address,undefined"
pending=()
for source in "${sources[@]}" "${policies[@]}" "${tests[@]}"; do
  extra=()
  [[ ${source} == tests/* ]] && extra=(-I "${root}/tests" -I "${root}/tests/policies"
    -DKVLAB_SOURCE_DIR=\"${root}\" -DKVLAB_BINARY_DIR=\"${work}\")
  "${launcher[@]}" "${cxx}" "${flags[@]}" -fsanitize=fuzzer-no-link "${extra[@]}" -c "${root}/${source}" \
    -o "${work}/obj/${source//\//_}.o" &
  pending+=($!)
  if ((${#pending[@]} >= 2)); then
    wait "${pending[0]}"
    pending=("${pending[@]:1}")
  fi
done
for job in "${pending[@]}"; do wait "${job}"; done
rm -f "${work}/libkvlab_fuzz.a"
ar rcs "${work}/libkvlab_fuzz.a" $(for s in "${sources[@]}"; do echo "${work}/obj/${s//\//_}.o"; done)
obj() { for s in "$@"; do echo "${work}/obj/${s//\//_}.o"; done; }
# Registrations are static objects nothing refers to: link them directly, not from the archive.
mapfile -t policy_objs < <(obj "${policies[@]}")
libs=("${work}/libkvlab_fuzz.a" "${hdf5_libs[@]}" -fopenmp -lpthread -ldl)

# ---- 1. unit tests -------------------------------------------------------------------------
"${cxx}" "${flags[@]}" $(obj "${tests[@]}") "${policy_objs[@]}" /usr/lib/x86_64-linux-gnu/libgtest_main.a \
  /usr/lib/x86_64-linux-gnu/libgtest.a "${libs[@]}" -o "${work}/sanitized_tests"
echo "sanitize smoke: running ${#tests[@]} unit test files under ASan + UBSan"
if ! (cd "${work}" && ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 OMP_WAIT_POLICY=passive \
  ./sanitized_tests --gtest_brief=1 >"${work}/unit.log" 2>&1); then
  grep -E "ERROR: AddressSanitizer|runtime error|FAILED|Failure" "${work}/unit.log" | head -n 20
  tail -n 40 "${work}/unit.log"
  echo "FAIL: sanitize smoke: unit tests failed under the sanitizers; log in ${work}/unit.log"
  trap - EXIT
  exit 1
fi
echo "sanitize smoke: $(grep -E '^\[  PASSED  \]' "${work}/unit.log" | head -n 1)"

# ---- 2. fuzz targets ---------------------------------------------------------------------
for target in trace checkpoint; do
  "${cxx}" "${flags[@]}" -fsanitize=fuzzer "${root}/tests/fuzz/${target}_fuzz.cpp" "${policy_objs[@]}" \
    "${libs[@]}" -o "${work}/${target}_fuzz"
done

# ---- seeds -------------------------------------------------------------------------------
mkdir -p "${work}/trace_corpus" "${work}/checkpoint_corpus"
gen=(trace gen --context-tokens 192 --steps 4 --chunk-tokens 32 --d-query 4 --d-key 4 --requests 1)
"${kvlab}" "${gen[@]}" --storage dense --out "${work}/trace_corpus/dense.h5" >/dev/null
"${kvlab}" "${gen[@]}" --storage sparse --heads per-head --out "${work}/trace_corpus/sparse.h5" >/dev/null
if "${python}" -c "import h5py" 2>/dev/null; then
  "${python}" "${root}/tests/cli/craft_traces.py" "${work}/crafted"
  cp "${work}/crafted/minimal_dense.h5" "${work}/crafted/minimal_sparse.h5" "${work}/crafted/unsorted_row.h5" \
    "${work}/trace_corpus/"
fi
"${kvlab}" trace gen --workload needle --context-tokens 2048 --steps 40 --d-query 4 --d-key 4 \
  --out "${work}/train.h5" >/dev/null
"${kvlab}" indexer train --traces "${work}/train.h5" --out "${work}/checkpoint_corpus/linear.h5" --window 512 \
  --tau 16 --stride 8 --depth 0 --dim 4 --epochs 1 --threads 1 >/dev/null 2>&1
"${kvlab}" indexer train --traces "${work}/train.h5" --out "${work}/checkpoint_corpus/mlp.h5" --window 512 \
  --tau 16 --stride 8 --depth 1 --width 4 --dim 4 --epochs 1 --threads 1 >/dev/null 2>&1

# ---- fuzz --------------------------------------------------------------------------------
status=0
for target in trace checkpoint; do
  echo "sanitize smoke: ${target}_fuzz for ${seconds} s"
  if ! "${work}/${target}_fuzz" -max_total_time="${seconds}" -max_len=65536 -rss_limit_mb=2048 -timeout=20 \
    -print_final_stats=1 -artifact_prefix="${work}/${target}-" "${work}/${target}_corpus" \
    2>"${work}/${target}.log"; then
    tail -n 40 "${work}/${target}.log"
    echo "FAIL: sanitize smoke: ${target}_fuzz found a crash; artifacts in ${work}"
    trap - EXIT
    status=1
    continue
  fi
  runs="$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "${work}/${target}.log" | grep -Eo '[0-9]+$' || echo '?')"
  echo "${target}_fuzz: ${runs} inputs in ${seconds} s, no crash"
done
[[ ${status} -eq 0 ]] && echo "PASS: sanitize smoke"
exit "${status}"
