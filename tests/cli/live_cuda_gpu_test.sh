#!/usr/bin/env bash
# kvlab generate | run | record --backend cuda on an sm_90 GPU with the real model: a greedy
# completion, `kvlab run` whose results (per policy) and generations (per request) are
# identical at --batch 1 and --batch 32 and with CUDA graphs on, the throughput fields, and a
# recording that validates and is the same file at --batch 1 and 4. Exits 77 (ctest: skipped) without a usable GPU or the model.
# usage: live_cuda_gpu_test.sh PATH/TO/kvlab SOURCE_DIR [OUT_DIR]
set -uo pipefail
kvlab="$1"
src="$2"
model="${KVLAB_MODEL:-${src}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvlab_live_cuda_gpu_test.XXXXXX")"
keep="${3:-}"
trap 'rm -rf "${work}"' EXIT
export OMP_WAIT_POLICY=passive
source "$(dirname "${BASH_SOURCE[0]}")/expect_lib.sh"

if [[ ! -f "${model}" ]]; then echo "SKIP: model file absent (scripts/fetch-model.sh)"; exit 77; fi
if ! "${kvlab}" generate --model "${model}" --backend cuda --prompt "The capital of France is" --max-tokens 4 \
    >"${work}/gen.txt" 2>"${work}/gen.err"; then
  if grep -qE "no usable GPU|built without CUDA" "${work}/gen.err"; then echo "SKIP: $(cat "${work}/gen.err")"; exit 77; fi
  fail "generate --backend cuda: $(cat "${work}/gen.err")"
fi
checks=$((checks + 1))
grep -q "Paris" "${work}/gen.txt" || fail "generate --backend cuda did not say Paris: $(cat "${work}/gen.txt")"
grep -qE "stall 0(\.0+)? ms" "${work}/gen.err" || fail "generate --backend cuda gave no step time split: $(cat "${work}/gen.err")"

common=(--model "${model}" --backend cuda --task niah_single --context-tokens 1024 --samples 32 --max-tokens 8
        --policy full --policy sliding_window:window=256,sinks=64 --policy random:budget=0.3)
"${kvlab}" run "${common[@]}" --batch 1 --out-dir "${work}/b1" >"${work}/b1.txt" 2>&1 || fail "run --batch 1: $(tail -3 "${work}/b1.txt")"
"${kvlab}" run "${common[@]}" --batch 32 --out-dir "${work}/b32" >"${work}/b32.txt" 2>&1 || fail "run --batch 32: $(tail -3 "${work}/b32.txt")"
"${kvlab}" run "${common[@]}" --batch 32 --cuda-graphs on --out-dir "${work}/g32" >"${work}/g32.txt" 2>&1 ||
  fail "run --batch 32 --cuda-graphs on: $(tail -3 "${work}/g32.txt")"
json_check "${work}/b32/results.json" "all(p['step_stall_ms'] == 0 and p['step_attention_ms'] > 0 and p['step_model_ms'] > 0 and p['prefill_tokens_per_s'] > 0 for p in d)"
json_check "${work}/b32/config.json" "d['device']['batch_max'] > 3 and d['batch'] == 32"
json_check "${work}/b1/config.json" "d['device']['batch_max'] == 3"
for other in b32 g32; do
  checks=$((checks + 1))
  python3 - "${work}/b1" "${work}/${other}" <<'PY' || fail "run ${other} differs from --batch 1"
import json, sys
speed = {"prefill_tokens_per_s", "decode_tokens_per_s", "step_attention_ms", "step_model_ms", "step_stall_ms", "step_batch_mean"}
def load(d):
    r = [{k: v for k, v in p.items() if k not in speed} for p in json.load(open(d + "/results.json"))]
    return r, json.load(open(d + "/generations.json"))
a, b = load(sys.argv[1]), load(sys.argv[2])
if a != b:
    for x, y in zip(a[0], b[0]):
        for k in x:
            if x[k] != y.get(k): print("differs:", x["policy"], k, x[k], y.get(k))
    sys.exit(1)
PY
done

"${kvlab}" record --model "${model}" --backend cuda --task niah_single --context-tokens 1024 --samples 4 --steps 16 \
  --out "${work}/rec.h5" >"${work}/rec.txt" 2>&1 || fail "record --backend cuda: $(tail -3 "${work}/rec.txt")"
expect 0 "" -- trace validate "${work}/rec.h5"
"${kvlab}" record --model "${model}" --backend cuda --task niah_single --context-tokens 1024 --samples 4 --steps 16 \
  --batch 4 --out "${work}/rec4.h5" >"${work}/rec4.txt" 2>&1 || fail "record --batch 4: $(tail -3 "${work}/rec4.txt")"
checks=$((checks + 1))
cmp -s "${work}/rec.h5" "${work}/rec4.h5" || fail "record --backend cuda --batch 4 wrote another trace than --batch 1"

if [[ -n "${keep}" ]]; then mkdir -p "${keep}" && cp -r "${work}/b1" "${work}/b32" "${work}/g32" "${work}"/*.txt "${keep}/"; fi
echo "live cuda CLI: ${checks} checks, ${failures} failures"
[[ ${failures} -eq 0 ]]
