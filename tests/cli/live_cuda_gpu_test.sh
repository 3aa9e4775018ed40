#!/usr/bin/env bash
# kvlab generate | run | record --backend cuda on an sm_90 GPU with the real model: a greedy
# completion, `kvlab run` whose results (per policy) and generations (per request) are
# identical at --batch 1 and --batch 32 and with CUDA graphs on, the throughput fields, a
# recording that validates and is the same file at --batch 1 and 4, and the zoo policies that
# read the decoder's query vectors, key summaries or prefill observation (quest, infllm, snapkv,
# pyramidkv, ada_kv) against --backend cpu. Exits 77 (ctest: skipped) without a usable GPU or the model.
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

"${kvlab}" record --model "${model}" --backend cuda --task niah_single --context-tokens 1024 --samples 2 --steps 8 \
  --qk-vectors on --out "${work}/rec_qk.h5" >"${work}/rec_qk.txt" 2>&1 || fail "record --qk-vectors on: $(tail -3 "${work}/rec_qk.txt")"
expect 0 "" -- trace validate "${work}/rec_qk.h5"

# The zoo on both decoders, every request running all --max-tokens (--stop limit) so that both
# take the same steps. Footprint: each policy keeps what its budget allows, whichever chunks it
# picks, so it is the same on both. Recall: the GPU decoder's bf16 weights and KV move scores
# and keys in the 2nd-3rd digit, so a near-tie between chunks can fall the other way and a
# greedy token can differ late in a generation; the critical and mass recall of 4 requests x 7
# steps may then move by a few hundredths, not more (0.05).
zoo=(--model "${model}" --task niah_single --context-tokens 1024 --samples 4 --max-tokens 8 --stop limit --agreement off
     --policy quest:budget=0.3 --policy infllm:budget=0.3,sinks=64,window=128 --policy snapkv:budget=0.3
     --policy pyramidkv:budget=0.3 --policy ada_kv:budget=0.3)
"${kvlab}" run "${zoo[@]}" --backend cpu --out-dir "${work}/zoo_cpu" >"${work}/zoo_cpu.txt" 2>&1 ||
  fail "zoo run --backend cpu: $(tail -3 "${work}/zoo_cpu.txt")"
"${kvlab}" run "${zoo[@]}" --backend cuda --batch 4 --out-dir "${work}/zoo_cuda" >"${work}/zoo_cuda.txt" 2>&1 ||
  fail "zoo run --backend cuda: $(tail -3 "${work}/zoo_cuda.txt")"
checks=$((checks + 1))
python3 - "${work}/zoo_cpu/results.json" "${work}/zoo_cuda/results.json" <<'PY' || fail "zoo --backend cuda differs from --backend cpu"
import json, sys
cpu = {p["policy"]: p for p in json.load(open(sys.argv[1]))}
gpu = {p["policy"]: p for p in json.load(open(sys.argv[2]))}
bad = sorted(set(cpu) ^ set(gpu))
for name in sorted(set(cpu) & set(gpu)):
    c, g = cpu[name], gpu[name]
    print(f"zoo {name}: footprint {c['footprint_mean_ratio']:.4f} / {g['footprint_mean_ratio']:.4f}, critical recall "
          f"{c['critical_recall']:.4f} / {g['critical_recall']:.4f}, mass recall {c['mass_recall']:.4f} / {g['mass_recall']:.4f} (cpu / cuda)")
    if c["steps"] != g["steps"] or abs(c["footprint_mean_ratio"] - g["footprint_mean_ratio"]) > 1e-9:
        bad.append(name + " (steps or footprint)")
    if abs(c["critical_recall"] - g["critical_recall"]) > 0.05 or abs(c["mass_recall"] - g["mass_recall"]) > 0.05:
        bad.append(name + " (recall)")
if len(cpu) != 5:
    bad.append(f"{len(cpu)} policies in the CPU results, expected 5")
if bad:
    print("differs:", ", ".join(bad))
    sys.exit(1)
PY

if [[ -n "${keep}" ]]; then mkdir -p "${keep}" && cp -r "${work}/b1" "${work}/b32" "${work}/g32" "${work}/zoo_cpu" "${work}/zoo_cuda" "${work}"/*.txt "${keep}/"; fi
echo "live cuda CLI: ${checks} checks, ${failures} failures"
[[ ${failures} -eq 0 ]]
