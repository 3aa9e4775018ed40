#!/usr/bin/env bash
# kvlab replay --execute: every flag is checked before anything runs, and a machine without a
# usable GPU (or a build without CUDA) gets one line saying so. The GPU run itself is a `gpu`
# test (tests/backends/cuda/exec_gpu_test.cpp) and a study (experiments/gpu/exec_study.sh).
set -u
kvlab="$1"
work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect_lib.sh"

"${kvlab}" trace gen --workload mix --context-tokens 2048 --steps 4 --requests 1 --seed 1 --out "${work}/t.h5" \
  >/dev/null || fail "trace gen"
t="${work}/t.h5"
expect 2 "--steps-csv needs --execute cuda" -- replay --trace "$t" --policy full --steps-csv "${work}/s.csv"
expect 2 "--model-shape needs --execute cuda" -- replay --trace "$t" --policy full --model-shape llama3-8b
expect 2 "--execute: unknown backend 'tpu'" -- replay --trace "$t" --policy full --execute tpu
if ! "${kvlab}" replay --trace "$t" --policy full --execute cuda 2>&1 | grep -q "built without CUDA"; then
  # Flags are checked before the device is probed, so these hold with or without a GPU.
  expect 2 "--batch must be between 1 and 4096" -- replay --trace "$t" --policy full --execute cuda --batch 0
  expect 2 "--arrival must be measured or modelled" -- replay --trace "$t" --policy full --execute cuda --arrival soon
  expect 2 "--mirror" -- replay --trace "$t" --policy full --execute cuda --mirror fp5
  expect 2 "does not match the trace's geometry" -- replay --trace "$t" --policy full --execute cuda \
    --model-shape llama3-8b
  expect 2 "unknown model 'gpt2'" -- replay --trace "$t" --policy full --execute cuda --model-shape gpt2
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
    expect 1 "--execute cuda needs an sm_90 GPU" -- replay --trace "$t" --policy full --execute cuda
  fi
else
  expect 2 "built without CUDA" -- replay --trace "$t" --policy full --execute cuda
fi
[[ ! -e "${work}/s.csv" ]] || fail "a refused run wrote its --steps-csv"

echo "execute CLI: ${checks} checks, ${failures} failures"
[[ ${failures} -eq 0 ]]
