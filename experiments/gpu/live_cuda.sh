#!/usr/bin/env bash
# SmolLM2-135M decoded live on the GPU, in one visit to the device (binaries built elsewhere and
# carried: build/bin, build/lib; the model at models/SmolLM2-135M-Instruct.Q4_1.gguf). Parts,
# most important first, each under its own `timeout` within one overall budget (BUDGET_S,
# default 340 s; a part that no longer fits is skipped and says so):
#   1 tests      the gpu tests of the live decoder (graph timing, bitwise batch invariance of
#                the decoder and of the engine at batch 1 and 32, sliding_window's and lsa's
#                resident sets against the CPU backend's step by step) and
#                tests/cli/live_cuda_gpu_test.sh (the CLI on the real model: run at batch 1 =
#                batch 32 = graphs on, generate, record)
#   2 hf         experiments/gpu/hf_reference.py: top-1 and relative logit error against Hugging
#                Face transformers on the same GGUF at positions up to 8K (needs torch,
#                transformers and gguf importable)
#   3 agreement  kvlab_cuda_agreement: GPU greedy tokens against the CPU decoder's (float32),
#                teacher-forced, full attention, niah prompts (AGREE_SAMPLES, default
#                "2048:4,4096:4,8150:3"; 16 steps, so 8150 is the largest context the model's
#                8K holds; the CPU side dominates)
#   4 speed      kvlab run --backend cuda, niah_single at 8100 tokens (+ 15 decoded: inside the
#                model's 8K), 6 policies at about 15% footprint
#                (+ full attention's reference pass): SPEED_SAMPLES ("64,16,2") samples at batch
#                64, 16 and 1 (requests in flight); decode tokens/s over all sessions
#   5 record     kvlab record --backend cuda tokens/s against --backend cpu
# PARTS ("tests hf agreement speed record") picks parts. Everything goes into WORK (default /tmp/kvlab_live_cuda); after every part WORK is packed into
# OUT/live.tgz (traces and logit dumps left out) and OUT/summary.txt is rewritten, so a timeout
# still returns what was done. The TABLE summary is printed last.
#   experiments/gpu/live_cuda.sh [OUT]          (OUT defaults to $OUT, else results/live_cuda)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/live_env.sh"
out="${1:-${OUT:-results/live_cuda}}"
work="${WORK:-/tmp/kvlab_live_cuda}"
rm -rf "$work"
mkdir -p "$out" "$work"
export KVLAB_MODEL="$model"
budget="${BUDGET_S:-340}"
t_start=$(date +%s)
summary="$work/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
parts="${PARTS:-tests hf agreement speed record}"  # which parts run (e.g. PARTS="speed record")
want() { [[ " $parts " == *" $1 "* ]]; }
pack() {
  tar czf "$out/live.tgz.tmp" --exclude='*.h5' --exclude='*.npy' -C "$(dirname "$work")" "$(basename "$work")" 2>/dev/null &&
    mv "$out/live.tgz.tmp" "$out/live.tgz"
  cp "$summary" "$out/summary.txt"
}

# part NAME LIMIT_S MIN_S CMD...: CMD with its output in WORK/NAME.log under a timeout of
# LIMIT_S, or what is left of the budget; skipped when less than MIN_S is left.
part() {
  local name="$1" limit="$2" min="$3"
  shift 3
  local left=$((budget - ($(date +%s) - t_start)))
  if ((left < min)); then
    note "TABLE $name: skipped ($left s of the budget left, needs $min)"
    return 1
  fi
  ((limit > left)) && limit=$left
  local t0
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$work/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(($(date +%s) - t0))s (limit ${limit}s)" >>"$work/parts.txt"
  if ((rc == 124 || rc == 137)); then
    note "TABLE $name: timed out after ${limit} s"
  elif ((rc != 0)); then
    note "TABLE $name: failed rc=$rc: $(tail -n 2 "$work/$name.log" | tr '\n' ' ' | head -c 400)"
  fi
  return $rc
}

[[ -x "$K" ]] || { echo "live_cuda: $K missing (build here and carry build/bin and build/lib)" >&2; exit 1; }
[[ -f "$model" ]] || { echo "live_cuda: $model missing (scripts/fetch-model.sh)" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv,noheader >"$work/gpu.txt" 2>&1
note "TABLE gpu: $(head -n 1 "$work/gpu.txt")"

# ---- 1. tests (they also warm the GPU up from its idle clock) ----
if want tests; then
part gpu_tests 60 15 "$bin/kvlab_gpu_tests" --gtest_brief=1 \
  --gtest_filter='CudaLlamaDecoder.Graph*:CudaLlamaDecoder.StepsAreBitwise*:CudaDecoderBatching.*:CudaDecoderInterface.*:CudaDecoderSmolLm2.*'
note "TABLE gpu_tests: $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$work/gpu_tests.log" | tr '\n' ' ')"
grep -h '^\[ \(timing\|invariance\|batching\|residency\) \]' "$work/gpu_tests.log" | sed 's/^/TABLE   /' | tee -a "$summary"
part cli 40 20 bash "$root/tests/cli/live_cuda_gpu_test.sh" "$K" "$root" "$work/cli"
[[ -f "$work/cli.log" ]] && note "TABLE cli: $(tail -n 1 "$work/cli.log")"
pack
fi

# ---- 2. Hugging Face reference ----
if ! want hf; then
  :
elif python3 -c "import torch, transformers, gguf" >/dev/null 2>&1; then
  part hf 60 30 python3 "$root/experiments/gpu/hf_reference.py" --kvlab "$K" --model "$model" --out "$work/hf"
  grep -h '^TABLE' "$work/hf.log" 2>/dev/null | tee -a "$summary"
else
  note "TABLE hf: skipped ($(python3 -c 'import torch, transformers, gguf' 2>&1 | tail -n 1))"
fi
pack

# ---- 3. agreement with the CPU decoder, per context under its own timeout ----
agree=()
want agreement && IFS=',' read -r -a agree <<<"${AGREE_SAMPLES:-2048:4,4096:4,8150:3}"
for spec in "${agree[@]}"; do
  ctx="${spec%%:*}"
  n="${spec##*:}"
  part "agreement_$ctx" $((12 + ctx / 100)) 12 "$bin/kvlab_cuda_agreement" --model "$model" --contexts "$ctx" \
    --samples "$n" --steps 16 --out "$work/agreement_$ctx.json"
  grep -h '^TABLE' "$work/agreement_$ctx.log" 2>/dev/null | tee -a "$summary"
  pack
done

# ---- 4. speed ----
if want speed; then
# LSA's indexer, trained on the shipped real trace (a few seconds).
"$K" indexer train --traces "$root/traces/data/smollm2_niah_single_2k.h5" --window 256 --sinks 64 --tau 16 --stride 4 \
  --out "$work/indexer_real_2k.h5" --threads 4 >"$work/indexer.log" 2>&1 || note "TABLE indexer: training failed"
policies=(--policy full --policy sliding_window:window=1152,sinks=64 --policy random:budget=0.15
          --policy h2o:budget=0.15 --policy tova:budget=0.15)
[[ -f "$work/indexer_real_2k.h5" ]] &&
  policies+=(--policy "lsa:indexer=$work/indexer_real_2k.h5,window=256,sinks=64,budget=0.15,tau=16")
if [[ -n "${SPEED_POLICIES:-}" ]]; then  # space-separated specs in place of the six
  policies=()
  for p in ${SPEED_POLICIES}; do policies+=(--policy "$p"); done
fi
context="${SPEED_CONTEXT:-8100}"
IFS=',' read -r -a speed_samples <<<"${SPEED_SAMPLES:-64,16,2}"
speed() {  # NAME BATCH SAMPLES LIMIT MIN
  local name="$1" batch="$2" samples="$3"
  part "$name" "$4" "$5" "$K" run --model "$model" --backend cuda --task niah_single --context-tokens "$context" \
    --samples "$samples" --max-tokens 16 "${policies[@]}" --batch "$batch" --json --out-dir "$work/$name"
  [[ -f "$work/$name/config.json" ]] || return
  python3 - "$work/$name" "$name" <<'PY' | tee -a "$summary"
import json, sys
d, name = sys.argv[1], sys.argv[2]
c = json.load(open(d + "/config.json"))
r = json.load(open(d + "/results.json"))
dev = c.get("device", {})
def f(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"
def flag(k):
    v = c["flags"][k]
    return v[0] if isinstance(v, list) else v
print(f"TABLE {name}: {flag('samples')} samples at {flag('context-tokens')} tokens, {len(r)} policies, "
      f"batch {c['batch']}: {c['seconds']:.1f} s; decode {c['decode_tokens_per_s_overall']:.0f} tok/s over all sessions "
      f"({c['decode_steps_all_sessions']} steps, prefill time excluded), {dev.get('decode_tokens_per_s_in_passes', 0):.0f} "
      f"tok/s in passes ({dev.get('passes', 0)} passes, mean {dev.get('batch_mean', 0):.1f} sequences, "
      f"{dev.get('pass_ms_mean', 0):.2f} ms device / {dev.get('pass_wall_ms_mean', 0):.2f} ms host each: "
      f"prepare {dev.get('pass_host_prepare_ms_mean', 0):.1f}, launch {dev.get('pass_host_launch_ms_mean', 0):.1f}, "
      f"wait {dev.get('pass_host_wait_ms_mean', 0):.1f}, unpack {dev.get('pass_host_unpack_ms_mean', 0):.1f} ms); "
      f"prefill {c['prefill_tokens_per_s']:.0f} tok/s")
for p in r:
    print(f"TABLE {name}   {p['policy'][:48]:48s} acc {f(p['accuracy'], 2)} footprint {f(p['footprint_mean_ratio'])} "
          f"crit.recall {f(p['critical_recall'])} top1 {f(p['top1_agreement'])} step attention "
          f"{f(p['step_attention_ms'], 4)} ms model {f(p['step_model_ms'], 4)} ms stall {f(p['step_stall_ms'])} ms")
PY
}
speed speed_b64 64 "${speed_samples[0]}" 75 30
pack
speed speed_b16 16 "${speed_samples[1]}" 20 10
speed speed_b1 1 "${speed_samples[2]}" 15 8
pack
fi

# ---- 5. recording rate: the GPU against the CPU (one request, few steps) ----
if want record; then
part record_cuda 15 8 "$K" record --model "$model" --backend cuda --task niah_single --context-tokens 4096 \
  --samples 16 --steps 32 --batch 16 --out "$work/record_cuda.h5"
part record_cpu 20 10 "$K" record --model "$model" --backend cpu --task niah_single --context-tokens 2048 \
  --samples 1 --steps 8 --out "$work/record_cpu.h5"
python3 - "$work" <<'PY' | tee -a "$summary"
import re, sys
# The GPU's rate over the whole recording (prefill included, 16 requests at once) against the
# CPU's decode-only rate: a conservative ratio.
def rate(backend, pattern):
    try:
        m = re.search(pattern, open(f"{sys.argv[1]}/record_{backend}.log").read())
        return float(m.group(1)) if m else None
    except OSError:
        return None
cuda_overall = rate("cuda", r"\(([0-9.]+) tok/s, prefill included\)")
cuda = rate("cuda", r"([0-9.]+) tok/s in passes")
cpu = rate("cpu", r"decode ([0-9.]+) tok/s per request")
cpu_overall = rate("cpu", r"\(([0-9.]+) tok/s, prefill included\)")
ratio = f"{cuda / cpu:.1f}x" if cuda and cpu else "n/a"
overall = f"{cuda_overall / cpu_overall:.1f}x" if cuda_overall and cpu_overall else "n/a"
print(f"TABLE record: decode cuda {cuda} tok/s in passes (16 requests at 4K in flight) vs cpu {cpu} tok/s "
      f"(1 request at 2K): {ratio}; prefill included: {cuda_overall} vs {cpu_overall} tok/s: {overall}")
PY
fi

python3 - "$work" "$(($(date +%s) - t_start))" <<'PY'
import json, os, sys
work, seconds = sys.argv[1], int(sys.argv[2])
try:
    ran = open(os.path.join(work, "parts.txt")).read().split("\n")[:-1]
except OSError:
    ran = []
s = {"seconds": seconds, "parts": ran}
for name in ("speed_b64", "speed_b16", "speed_b1"):
    try:
        c = json.load(open(os.path.join(work, name, "config.json")))
        s[name] = {k: c.get(k) for k in ("seconds", "batch", "decode_tokens_per_s_overall", "prefill_tokens_per_s",
                                         "decode_steps_all_sessions", "device")}
    except (OSError, ValueError):
        s[name] = None
for f in sorted(os.listdir(work)):
    if f.startswith("agreement_") and f.endswith(".json"):
        s[f[:-5]] = json.load(open(os.path.join(work, f)))
try:
    s["hf"] = json.load(open(os.path.join(work, "hf", "hf_reference.json")))
except (OSError, ValueError):
    s["hf"] = None
json.dump(s, open(os.path.join(work, "summary.json"), "w"), indent=2)
PY
note "TABLE total: $(($(date +%s) - t_start)) s"
pack
echo "---- summary ----"
cat "$summary"
