#!/usr/bin/env bash
# SmolLM2-135M decoded live on the GPU, in one visit to the device (binaries built elsewhere and
# carried: build/bin, build/lib; the model at models/SmolLM2-135M-Instruct.Q4_1.gguf):
#   speed      kvlab run --backend cuda, niah_single at 8K, 100 samples, 6 policies at about 15%
#              footprint (+ full attention's reference pass), 64 requests in flight; then the
#              same at batch 16 (32 samples) and batch 1 (4 samples) for decode tokens/s
#   agreement  kvlab_cuda_agreement: GPU greedy tokens against the CPU decoder's (float32),
#              teacher-forced, full attention, niah prompts at 2K/4K/8K (few samples: the CPU
#              side dominates; AGREE_SAMPLES="2048:20,4096:20,8192:20" for the full figure)
#   record     kvlab record --backend cuda tokens/s against --backend cpu
#   cli        tests/cli/live_cuda_gpu_test.sh: run at batch 1 = batch 32 = graphs on, record
#   hf         experiments/gpu/hf_reference.py when transformers, torch and gguf import
# SPEED_CONTEXT (8192), SPEED_SAMPLES ("100,32,4": batch 64, 16, 1) and SPEED_POLICIES (specs,
# space-separated) change the speed runs.
# Every part runs under `timeout` within one overall budget (BUDGET_S, default 510 s), most
# important first, so a slow part cannot eat the call; a part that no longer fits is skipped
# and says so. Writes into OUT (default $OUT, else results/live_cuda): one folder or log per
# part, summary.json and summary.txt (the TABLE lines, printed at the end).
#   experiments/gpu/live_cuda.sh [OUT]
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out="${1:-${OUT:-results/live_cuda}}"
mkdir -p "$out"
bin="${KVLAB_BIN:-build/bin}"
K="$bin/kvlab"
model="${KVLAB_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
export LD_LIBRARY_PATH="build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMP_WAIT_POLICY=passive
budget="${BUDGET_S:-510}"
t_start=$(date +%s)
summary="$out/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

# part NAME LIMIT_S MIN_S CMD...: runs CMD with its output in OUT/NAME.log under a timeout of
# LIMIT_S, or whatever is left of the budget; skipped when less than MIN_S is left.
part() {
  local name="$1" limit="$2" min="$3"
  shift 3
  local left=$((budget - ($(date +%s) - t_start)))
  if ((left < min)); then
    note "TABLE $name: skipped ($left s of the budget left, needs $min)"
    return 1
  fi
  ((limit > left)) && limit=$left
  local t0=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local secs=$(($(date +%s) - t0))
  echo "$name rc=$rc ${secs}s" >>"$out/parts.txt"
  if ((rc == 124 || rc == 137)); then note "TABLE $name: timed out after ${limit} s"; fi
  ((rc != 0 && rc != 124 && rc != 137)) && note "TABLE $name: failed rc=$rc: $(tail -n 2 "$out/$name.log" | tr '\n' ' ')"
  return $rc
}

[[ -x "$K" ]] || { echo "live_cuda: $K missing (build here and carry build/bin and build/lib)" >&2; exit 1; }
[[ -f "$model" ]] || { echo "live_cuda: $model missing (scripts/fetch-model.sh)" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1
note "TABLE gpu: $(head -n 1 "$out/gpu.txt")"

# Warm-up: the GPU idles at a low clock until loaded; this also checks that the decoder runs.
part warmup 30 10 "$K" generate --model "$model" --backend cuda --prompt "The capital of France is" --max-tokens 8 ||
  { note "TABLE warmup failed: nothing else runs"; exit 1; }
note "TABLE warmup: '$(head -n 1 "$out/warmup.log")' $(grep -o 'decode:.*' "$out/warmup.log" | head -c 300)"

# LSA's indexer for the speed run, trained on the shipped real trace (a few seconds).
"$K" indexer train --traces traces/data/smollm2_niah_single_2k.h5 --window 256 --sinks 64 --tau 16 --stride 4 \
  --epochs 10 --out "$out/indexer_real_2k.h5" --threads 4 >"$out/indexer.log" 2>&1 || note "TABLE indexer: training failed"
policies=(--policy full --policy sliding_window:window=1152,sinks=64 --policy random:budget=0.15
          --policy h2o:budget=0.15 --policy tova:budget=0.15)
[[ -f "$out/indexer_real_2k.h5" ]] &&
  policies+=(--policy "lsa:indexer=$out/indexer_real_2k.h5,window=256,sinks=64,budget=0.15,tau=16")
if [[ -n "${SPEED_POLICIES:-}" ]]; then  # space-separated specs in place of the six
  policies=()
  for p in ${SPEED_POLICIES}; do policies+=(--policy "$p"); done
fi

# speed: batch 64 over 100 samples first (the issue's figure), then batch 16 and 1.
context="${SPEED_CONTEXT:-8192}"
IFS=',' read -r -a speed_samples <<<"${SPEED_SAMPLES:-100,32,4}"
speed() {  # NAME BATCH SAMPLES LIMIT MIN
  local name="$1" batch="$2" samples="$3"
  part "$name" "$4" "$5" "$K" run --model "$model" --backend cuda --task niah_single --context-tokens "$context" \
    --samples "$samples" --max-tokens 16 "${policies[@]}" --batch "$batch" --json --out-dir "$out/$name"
  if [[ -f "$out/$name/config.json" ]]; then
    python3 - "$out/$name" "$name" <<'PY' | tee -a "$summary"
import json, sys
d, name = sys.argv[1], sys.argv[2]
c = json.load(open(d + "/config.json"))
r = json.load(open(d + "/results.json"))
dev = c.get("device", {})
print(f"TABLE {name}: {c['flags']['samples']} samples at {c['flags']['context-tokens']} tokens, {len(r)} policies, batch {c['batch']}: "
      f"{c['seconds']:.1f} s; decode {c['decode_tokens_per_s_overall']:.0f} tok/s over all sessions "
      f"({c['decode_steps_all_sessions']} steps, mean {dev.get('batch_mean', 0):.1f} sequences per pass, "
      f"{dev.get('pass_ms_mean', 0):.2f} ms per pass); prefill {c['prefill_tokens_per_s']:.0f} tok/s")
def f(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"
for p in r:
    print(f"TABLE {name}   {p['policy'][:60]:60s} acc {f(p['accuracy'], 2)} footprint {f(p['footprint_mean_ratio'])} "
          f"crit.recall {f(p['critical_recall'])} top1 {f(p['top1_agreement'])} step attention "
          f"{f(p['step_attention_ms'])} ms model {f(p['step_model_ms'])} ms stall {f(p['step_stall_ms'])} ms")
PY
  fi
}
speed speed_b64 64 "${speed_samples[0]}" 300 60

# agreement: per context, its own timeout.
IFS=',' read -r -a agree <<<"${AGREE_SAMPLES:-2048:6,4096:3,8192:2}"
for spec in "${agree[@]}"; do
  ctx="${spec%%:*}"
  n="${spec##*:}"
  part "agreement_$ctx" 75 20 "$bin/kvlab_cuda_agreement" --model "$model" --contexts "$ctx" --samples "$n" \
    --steps 16 --out "$out/agreement_$ctx.json"
  grep -h '^TABLE' "$out/agreement_$ctx.log" 2>/dev/null | tee -a "$summary"
done

# record: the GPU rate against the CPU's (the CPU on one sample and few steps).
part record_cuda 60 15 "$K" record --model "$model" --backend cuda --task niah_single --context-tokens 4096 \
  --samples 16 --steps 32 --out "$out/record_cuda.h5"
part record_cpu 75 30 "$K" record --model "$model" --backend cpu --task niah_single --context-tokens 4096 \
  --samples 1 --steps 8 --out "$out/record_cpu.h5"
python3 - "$out" <<'PY' | tee -a "$summary"
import re, sys
rates = {}
for b in ("cuda", "cpu"):
    try:
        m = re.search(r"decode ([0-9.]+) tok/s", open(f"{sys.argv[1]}/record_{b}.log").read())
        rates[b] = float(m.group(1)) if m else None
    except OSError:
        rates[b] = None
ratio = rates["cuda"] / rates["cpu"] if rates["cuda"] and rates["cpu"] else float("nan")
print(f"TABLE record: decode {rates['cuda']} tok/s on cuda (16 requests at 4K, one after another), "
      f"{rates['cpu']} tok/s on cpu: {ratio:.1f}x")
PY

speed speed_b16 16 "${speed_samples[1]}" 60 20
speed speed_b1 1 "${speed_samples[2]}" 60 20

part cli 90 40 bash tests/cli/live_cuda_gpu_test.sh "$K" "$PWD" "$out/cli"
[[ -f "$out/cli.log" ]] && note "TABLE cli: $(tail -n 1 "$out/cli.log")"

if python3 -c "import torch, transformers, gguf" >/dev/null 2>&1; then
  part hf 90 40 python3 experiments/gpu/hf_reference.py --kvlab "$K" --model "$model" --out "$out/hf"
  grep -h '^TABLE' "$out/hf.log" 2>/dev/null | tee -a "$summary"
else
  note "TABLE hf: skipped (python3 cannot import torch, transformers and gguf)"
fi

python3 - "$out" "$(($(date +%s) - t_start))" <<'PY'
import json, os, sys
out, seconds = sys.argv[1], int(sys.argv[2])
s = {"seconds": seconds, "parts": open(os.path.join(out, "parts.txt")).read().split("\n")[:-1]}
for name in ("speed_b64", "speed_b16", "speed_b1"):
    try:
        c = json.load(open(os.path.join(out, name, "config.json")))
        s[name] = {"seconds": c["seconds"], "batch": c["batch"], "decode_tokens_per_s": c["decode_tokens_per_s_overall"],
                   "prefill_tokens_per_s": c["prefill_tokens_per_s"], "device": c.get("device")}
    except (OSError, KeyError, ValueError):
        s[name] = None
for f in sorted(os.listdir(out)):
    if f.startswith("agreement_") and f.endswith(".json"):
        s[f[:-5]] = json.load(open(os.path.join(out, f)))
try:
    s["hf"] = json.load(open(os.path.join(out, "hf", "hf_reference.json")))
except (OSError, ValueError):
    s["hf"] = None
json.dump(s, open(os.path.join(out, "summary.json"), "w"), indent=2)
PY
echo "---- summary ($(($(date +%s) - t_start)) s) ----"
cat "$summary"
