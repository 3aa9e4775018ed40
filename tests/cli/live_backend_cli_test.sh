#!/usr/bin/env bash
# kvlab generate | run | record --backend: flags are checked before the model loads, a machine
# without a usable GPU (or a build without CUDA) gets one line saying what was found and to
# use --backend cpu (exit 1), and, with the real model, `kvlab run --batch N` on the CPU gives
# the results of --batch 1 plus the throughput fields. The GPU runs are
# tests/cli/live_cuda_gpu_test.sh (label gpu).
# usage: live_backend_cli_test.sh PATH/TO/kvlab SOURCE_DIR
set -uo pipefail
kvlab="$1"
src="$2"
model="${KVLAB_MODEL:-${src}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvlab_live_backend_cli_test.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
export OMP_WAIT_POLICY=passive
source "$(dirname "${BASH_SOURCE[0]}")/expect_lib.sh"

absent="${work}/absent.gguf"
# What each command needs besides the flags under test.
declare -A needs=([generate]="--prompt hi" [run]="--policy full" [record]="--out ${work}/x.h5")
for sub in generate run record; do
  read -r -a extra <<<"${needs[${sub}]}"
  expect 0 "--backend" -- "${sub}" --help
  expect 2 "--backend must be cpu or cuda, got 'tpu'" -- "${sub}" --model "${absent}" --backend tpu "${extra[@]}"
  expect 2 "--cuda-graphs needs --backend cuda" -- "${sub}" --model "${absent}" --cuda-graphs on "${extra[@]}"
  expect 2 "--cuda-prefill needs --backend cuda" -- "${sub}" --model "${absent}" --cuda-prefill float32 "${extra[@]}"
  expect 2 "--cuda-prefill must be tensor or float32, got 'fp16'" -- "${sub}" --model "${absent}" --backend cuda \
    --cuda-prefill fp16 "${extra[@]}"
done
expect 2 "--batch must be between 1 and 4096" -- run --model "${absent}" --policy full --batch 0
expect 2 "--batch must be between 1 and 4096" -- record --model "${absent}" --out "${work}/x.h5" --batch 0

gpu_present=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then gpu_present=1; fi
if [[ ${gpu_present} -eq 0 ]]; then
  # The device is probed before the model is read: the absent model is not what fails.
  for sub in generate run record; do
    read -r -a extra <<<"${needs[${sub}]}"
    expect 1 "use --backend cpu" -- "${sub}" --model "${absent}" --backend cuda "${extra[@]}"
  done
  "${kvlab}" run --model "${absent}" --backend cuda --policy full 2>"${work}/err.txt"
  checks=$((checks + 1))
  grep -qE "no usable GPU \(.+\)|built without CUDA" "${work}/err.txt" || fail "the error does not say what was found: $(cat "${work}/err.txt")"
  [[ ! -e "${work}/x.h5" ]] || fail "a refused record wrote its --out"
fi

if [[ -f "${model}" ]]; then
  common=(--model "${model}" --task niah_single --context-tokens 200 --samples 2 --max-tokens 2 --policy full
          --policy sliding_window:window=64,sinks=16 --threads 1)
  "${kvlab}" run "${common[@]}" --batch 1 --out-dir "${work}/b1" >/dev/null 2>&1 || fail "run --batch 1"
  "${kvlab}" run "${common[@]}" --batch 2 --out-dir "${work}/b2" >/dev/null 2>&1 || fail "run --batch 2"
  json_check "${work}/b1/results.json" "all(k in p for p in d for k in ('prefill_tokens_per_s', 'decode_tokens_per_s', 'step_attention_ms', 'step_model_ms', 'step_stall_ms', 'step_batch_mean'))"
  json_check "${work}/b1/results.json" "all(p['step_attention_ms'] is None and p['decode_tokens_per_s'] > 0 for p in d)"
  json_check "${work}/b2/config.json" "d['batch'] == 2 and d['decode_tokens_per_s_overall'] > 0 and 'step_stall_ms' in d['speed_fields']"
  checks=$((checks + 1))
  python3 - "${work}/b1" "${work}/b2" <<'PY' || fail "run --batch 2 differs from --batch 1"
import json, sys
speed = {"prefill_tokens_per_s", "decode_tokens_per_s", "step_attention_ms", "step_model_ms", "step_stall_ms", "step_batch_mean"}
def load(d):
    r = [{k: v for k, v in p.items() if k not in speed} for p in json.load(open(d + "/results.json"))]
    return r, json.load(open(d + "/generations.json"))
assert load(sys.argv[1]) == load(sys.argv[2])
PY
  # record --batch: the same trace, byte for byte.
  rec=(--model "${model}" --task niah_single --context-tokens 200 --samples 2 --steps 2 --threads 1)
  "${kvlab}" record "${rec[@]}" --out "${work}/r1.h5" >/dev/null 2>&1 || fail "record --batch 1"
  "${kvlab}" record "${rec[@]}" --batch 2 --out "${work}/r2.h5" >"${work}/r2.txt" 2>&1 || fail "record --batch 2"
  checks=$((checks + 1))
  cmp -s "${work}/r1.h5" "${work}/r2.h5" || fail "record --batch 2 wrote another trace than --batch 1"
  grep -q "batch 2 (" "${work}/r2.txt" || fail "record does not report its batch: $(cat "${work}/r2.txt")"
else
  echo "live backend CLI: model absent, the run comparison skipped (scripts/fetch-model.sh)"
fi

echo "live backend CLI: ${checks} checks, ${failures} failures"
[[ ${failures} -eq 0 ]]
