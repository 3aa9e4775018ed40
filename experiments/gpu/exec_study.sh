#!/usr/bin/env bash
# Trace-driven execution on the H200: the policies' plans carried out for real (kvlab replay
# --execute cuda), the timing model calibrated on one trace and checked on another, and the
# capacity / throughput table at llama3-8b shape (FlashMemory's table, for any policy).
#
#   KVLAB=build/bin/kvlab OUT=results/gpu_exec experiments/gpu/exec_study.sh [calibration|capacity|long|all]
#   ONLY=REGEX runs only the runs whose name matches (e.g. '^cap128k_(full_n7|lsa_n21_int4)$');
#   KVLAB_EXEC_PAGE_LISTS=full makes the executor rebuild its page lists every step, as it did
#   before they were kept across steps (backends/cuda/exec/NOTES.md).
#
# Parts (each writes <part>_*.json under OUT; analysis/gpu_exec_report.py makes the tables):
#   calibration  64K mix (fit) and 64K needle (check) traces, 3 policies, with a random-weight
#                llama3-8b step around the attention; kvlab calibrate fits and checks
#   capacity     128K: full at its HBM wall, lsa at the same N (bf16 mirror does not fit: fp8),
#                lsa at the host wall of a compressed mirror (int4), sliding_window
#   long         512K and 1M: full (refused at 1M: it cannot fit), lsa with an int4 mirror
# Traces are generated here (llama3-8b geometry, features on) and kept in OUT/traces.
set -uo pipefail
KVLAB=${KVLAB:-build/bin/kvlab}
OUT=${OUT:-results/gpu_exec}
IDX=${IDX:-experiments/gpu/data/indexer_mix.h5}
part=${1:-all}
mkdir -p "$OUT/traces"
TR="$OUT/traces"
SW="sliding_window:window=8192,sinks=64"
LSA10="lsa:indexer=$IDX,budget=0.1,window=8192,sinks=64"
LSA5="lsa:indexer=$IDX,budget=0.05,window=8192,sinks=64"
POOL=${POOL:-130}   # GB: the H200's 150 GB less 16 GB of weights and 4 GB of workspace
# lsa's summary tier (1/128 of the KV, per request) and index live beside the pool in HBM:
# at 21 requests of 128K that is 2.6 GB, so the lsa runs at the host wall take a smaller pool
# (they use 11-31 GiB of it).
POOL_LSA=${POOL_LSA:-100}

gen() {  # gen WORKLOAD CONTEXT STEPS REQUESTS SEED FILE
  [[ -f "$6" ]] || "$KVLAB" trace gen --geometry llama3-8b --workload "$1" --context-tokens "$2" --steps "$3" \
    --requests "$4" --seed "$5" --out "$6" >/dev/null || { echo "exec_study: trace gen $6 failed" >&2; exit 1; }
}

RUN_LIMIT=${RUN_LIMIT:-240}   # seconds per run: pinning ~94 GiB of mirrors alone takes ~60 s

gpu_idle() {  # waits (up to 60 s) until the previous run's process has released the GPU
  command -v nvidia-smi >/dev/null || return 0
  local used
  for _ in $(seq 60); do
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n 1)
    [[ -z $used || $used -lt 2048 ]] && return 0
    sleep 1
  done
  echo "exec_study: GPU still holds ${used} MiB after 60 s" >&2
}

run() {  # run NAME TRACE [replay flags...]: one replay --execute cuda, JSON + stderr kept
  local name="$1" trace="$2"
  shift 2
  [[ -n ${ONLY:-} && ! $name =~ $ONLY ]] && return 0   # ONLY=regex: rerun some runs
  gpu_idle
  local t0=$SECONDS
  # Each run has its own limit (a killed run must not leave the GPU to the next one busy).
  timeout -k 15 "$RUN_LIMIT" "$KVLAB" replay --trace "$trace" --execute cuda --threads 1 --json \
    --out-dir "$OUT/$name" "$@" >"$OUT/$name.json" 2>"$OUT/$name.err"
  local rc=$?
  [[ $rc -eq 124 || $rc -eq 137 ]] && echo "kvlab: error: killed after the run limit of ${RUN_LIMIT} s" >>"$OUT/$name.err"
  echo "TABLE exec $name rc=$rc $((SECONDS - t0)) s $(python3 - "$OUT/$name.json" <<'PY' 2>/dev/null
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    print("(no JSON)"); sys.exit()
for r in d:
    e = r.get("execution", {})
    print(f"| {r['policy'][:28]} fp={r['footprint_mean_ratio']:.3f} rec={r['critical_recall']:.3f} "
          f"step={e.get('step_ms_mean', 0):.2f}ms attn={e.get('attention_ms_mean', 0):.2f}ms "
          f"tok/s={e.get('decode_tokens_per_s', 0):.0f} (device-bound {e.get('decode_tokens_per_s_device_bound', 0):.0f}) "
          f"link={e.get('link_gbps', 0):.1f}GB/s "
          f"late={r['late_fetches']} pool={e.get('pool_peak_bytes', 0) / 2**30:.1f}GiB", end=" ")
PY
)"
  [[ $rc -eq 0 ]] || echo "TABLE exec $name error: $(tail -n 1 "$OUT/$name.err")"
}

if [[ $part == calibration || $part == all ]]; then
  # 64K keeps the pinned mirror (one per policy session, 8 GiB each) quick to pin.
  gen mix 65536 80 2 21 "$TR/cal_mix_64k.h5"
  gen needle 65536 80 2 22 "$TR/check_needle_64k.h5"
  for t in cal_mix_64k check_needle_64k; do
    run "calibration_$t" "$TR/$t.h5" --model-shape llama3-8b --hbm-pool-gb "$POOL" --mirror bf16 \
      --policy full --policy random:budget=0.1 --policy "lsa:indexer=$IDX,budget=0.2,window=2048,sinks=64" --steps-csv "$OUT/steps_$t.csv"
  done
  "$KVLAB" calibrate --steps "$OUT/steps_cal_mix_64k.csv" --check "$OUT/steps_check_needle_64k.csv" --json \
    >"$OUT/calibration_fit.json" 2>"$OUT/calibration_fit.err"
  "$KVLAB" calibrate --steps "$OUT/steps_cal_mix_64k.csv" --check "$OUT/steps_check_needle_64k.csv" |
    sed 's/^/TABLE calibrate /'
fi

if [[ $part == capacity || $part == all ]]; then
  gen mix 131072 80 1 31 "$TR/cap_mix_128k.h5"   # past tau = 64: one refresh fetches
  common=(--model-shape llama3-8b --hbm-pool-gb "$POOL")
  run cap128k_full_n7 "$TR/cap_mix_128k.h5" "${common[@]}" --mirror none --batch 7 --policy full
  run cap128k_full_n8 "$TR/cap_mix_128k.h5" "${common[@]}" --mirror none --batch 8 --policy full  # past the wall
  run cap128k_lsa_n7_fp8 "$TR/cap_mix_128k.h5" "${common[@]}" --mirror fp8 --batch 7 --policy "$LSA10"
  run cap128k_lsa_n7_bf16 "$TR/cap_mix_128k.h5" "${common[@]}" --mirror bf16 --batch 7 --policy "$LSA10"  # host wall
  run cap128k_lsa_n21_int4 "$TR/cap_mix_128k.h5" --model-shape llama3-8b --hbm-pool-gb "$POOL_LSA" --mirror int4:64 --batch 21 --policy "$LSA10"
  run cap128k_sw_n64 "$TR/cap_mix_128k.h5" "${common[@]}" --mirror none --batch 64 --policy "$SW"
fi

if [[ $part == long || $part == all ]]; then
  gen mix 524288 80 1 41 "$TR/cap_mix_512k.h5"
  gen mix 1048576 80 1 42 "$TR/cap_mix_1m.h5"
  common=(--model-shape llama3-8b --hbm-pool-gb "$POOL")
  run cap512k_full_n1 "$TR/cap_mix_512k.h5" "${common[@]}" --mirror none --batch 1 --policy full
  run cap512k_lsa_n4_int4 "$TR/cap_mix_512k.h5" --model-shape llama3-8b --hbm-pool-gb "$POOL_LSA" --mirror int4:64 --batch 4 --policy "$LSA5"
  run cap512k_sw_n48 "$TR/cap_mix_512k.h5" "${common[@]}" --mirror none --batch 48 --policy "$SW"
  run cap1m_full_n1 "$TR/cap_mix_1m.h5" "${common[@]}" --mirror none --batch 1 --policy full  # cannot fit
  run cap1m_lsa_n1_int4 "$TR/cap_mix_1m.h5" "${common[@]}" --mirror int4:64 --batch 1 --policy "$LSA5"
fi
