#!/usr/bin/env bash
# One visit to the GPU machine: build (or use binaries built here and carried), run the `gpu`
# tests, compute-sanitizer memcheck and racecheck over the kernels' tests, the GPU benchmarks,
# and print a short table last.
#
#   scripts/device-check.sh [--build-dir DIR] [--out DIR] [--skip-sanitizer] [--only NAME]
#
# On the device machine (device tool), with binaries built here:
#   cmake --build build -j2 && scripts/device-check.sh      (carry: build/bin, build/lib)
# The device machine installs nothing and has no HDF5/Eigen headers, so the usual way is to
# build here and carry build/bin and build/lib; binaries find libkvlab_core through
# LD_LIBRARY_PATH. With --build, it configures and builds the CUDA targets there instead.
#
# Outputs (under --out, default $OUT or experiments/gpu/results/latest): one log per stage,
# bench_*.json / *.tsv from the benchmarks, and summary.txt (the table printed last).
# Benchmarks are the executables and scripts named in BENCHES below; each writes its own
# results file into the output folder and prints its own table lines prefixed "TABLE ".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build_dir=build
out_dir="${OUT:-experiments/gpu/results/latest}"
sanitize=1
only=""
do_build=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) build_dir="$2"; shift 2 ;;
    --out) out_dir="$2"; shift 2 ;;
    --skip-sanitizer) sanitize=0; shift ;;
    --only) only="$2"; shift 2 ;;
    --build) do_build=1; shift ;;
    -h|--help) sed -n 2,18p "$0"; exit 0 ;;
    *) echo "device-check: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out_dir"
bin="$build_dir/bin"
export LD_LIBRARY_PATH="$build_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMP_WAIT_POLICY=passive
# Tests that read files of the tree (traces/data) look here: carried binaries were built
# against another machine's tree.
export KVLAB_SOURCE_DIR="${KVLAB_SOURCE_DIR:-$PWD}"
summary="$out_dir/summary.txt"
: >"$summary"
row() { printf '%-34s %s\n' "$1" "$2" | tee -a "$summary" >/dev/null; }

nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version --format=csv \
  >"$out_dir/gpu.txt" 2>&1 || echo "device-check: nvidia-smi failed" >&2
row "gpu" "$(tail -n 1 "$out_dir/gpu.txt")"
row "git" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo +dirty)"

if [[ $do_build -eq 1 ]]; then
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DKVLAB_CUDA=ON >"$out_dir/build.log" 2>&1 &&
    cmake --build "$build_dir" -j "$(nproc)" >>"$out_dir/build.log" 2>&1
  row "build" "rc=$?"
fi

want() { [[ -z "$only" || "$only" == "$1" ]]; }

# 1. The gpu tests.
if want tests; then
  if [[ -x "$bin/kvlab_gpu_tests" ]]; then
    "$bin/kvlab_gpu_tests" --gtest_brief=1 >"$out_dir/gpu_tests.log" 2>&1
    rc=$?
    row "gpu tests" "rc=$rc $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out_dir/gpu_tests.log" | tr '\n' ' ')"
  else
    row "gpu tests" "missing $bin/kvlab_gpu_tests"
  fi
fi

# 1b. Kernel versions not yet verified on a device (tests named *Candidate*, which skip unless
# KVLAB_GPU_CANDIDATES=1), in processes of their own so a fault cannot touch the verified runs.
if want candidates; then
  if [[ -x "$bin/kvlab_gpu_tests" ]]; then
    KVLAB_GPU_CANDIDATES=1 "$bin/kvlab_gpu_tests" --gtest_filter='*Candidate*' --gtest_brief=1 >"$out_dir/gpu_candidates.log" 2>&1
    rc=$?
    row "candidate kernel tests" "rc=$rc $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out_dir/gpu_candidates.log" | tr '\n' ' ')"
    if [[ $sanitize -eq 1 ]] && command -v compute-sanitizer >/dev/null 2>&1; then
      KVLAB_GPU_CANDIDATES=1 compute-sanitizer --tool memcheck --error-exitcode 99 "$bin/kvlab_gpu_tests" \
        --gtest_filter='*CandidateSanitize*' --gtest_brief=1 >"$out_dir/sanitizer_candidates.log" 2>&1
      rc=$?
      row "candidate memcheck" "rc=$rc $(grep -E 'ERROR SUMMARY' "$out_dir/sanitizer_candidates.log" | tail -n 1)"
    fi
  fi
fi

# 2. compute-sanitizer over the kernels' tests (a filter keeps it within minutes).
if want sanitizer && [[ $sanitize -eq 1 ]]; then
  if command -v compute-sanitizer >/dev/null 2>&1 && [[ -x "$bin/kvlab_gpu_tests" ]]; then
    for tool in memcheck racecheck; do
      # racecheck instruments every shared-memory access: over the trace executor's tests
      # (hundreds of launches of the tensor-core kernel) it takes minutes per test, so it
      # covers the kernels' own tests; memcheck covers the executor too.
      filter="${KVLAB_SANITIZE_FILTER:-*Sanitize*}"
      [[ $tool == racecheck && -z ${KVLAB_SANITIZE_FILTER:-} ]] && filter='*Sanitize*:-*ExecSanitize*'
      compute-sanitizer --tool "$tool" --error-exitcode 99 "$bin/kvlab_gpu_tests" \
        --gtest_filter="$filter" --gtest_brief=1 >"$out_dir/sanitizer_$tool.log" 2>&1
      rc=$?
      row "compute-sanitizer $tool" "rc=$rc $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out_dir/sanitizer_$tool.log" | tail -n 1)"
    done
  else
    row "compute-sanitizer" "not run (tool or tests missing)"
  fi
fi

# 3. Benchmarks: "name|command" (run from the repo root; $OUT_DIR is the output folder).
BENCHES=(
  "fetch|$bin/kvlab_fetch_bench --out \$OUT_DIR/bench_fetch.tsv"
  "cuda_decoder|\"$bin/kvlab_cuda_decoder_bench\" --out \"\$OUT_DIR/bench_cuda_decoder.json\""
  "kernels|$bin/kvlab_kernel_bench --out \$OUT_DIR/bench_kernels.tsv"
  "kernel_candidates|$bin/kvlab_kernel_bench --only candidates --out \$OUT_DIR/bench_kernel_candidates.tsv"
  "torch|PYTHONUNBUFFERED=1 python3 experiments/gpu/bench_torch.py --kernels-tsv \$OUT_DIR/bench_kernels.tsv --out \$OUT_DIR/bench_torch.tsv"
)
export OUT_DIR="$out_dir"
for entry in "${BENCHES[@]}"; do
  name="${entry%%|*}"
  cmd="${entry#*|}"
  want "$name" || continue
  bash -c "$cmd" >"$out_dir/bench_$name.log" 2>&1
  rc=$?
  row "bench $name" "rc=$rc"
  grep '^TABLE ' "$out_dir/bench_$name.log" | sed 's/^TABLE /  /' >>"$summary"
done

# 4. Peers built outside the repository (experiments/gpu/peers), when their binaries are carried.
peer_dir="${KVLAB_PEER_DIR:-.carry/peers}"
if want peers && [[ -x "$peer_dir/flashinfer_decode_bench" ]]; then
  "$peer_dir/flashinfer_decode_bench" >"$out_dir/peer_flashinfer.tsv" 2>"$out_dir/peer_flashinfer.log"
  row "peer flashinfer" "rc=$?"
  grep '^TABLE ' "$out_dir/peer_flashinfer.tsv" | sed 's/^TABLE /  /' >>"$summary"
fi

echo
echo "==== device-check summary ($out_dir) ===="
cat "$summary"
