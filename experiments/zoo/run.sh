#!/usr/bin/env bash
# The policy zoo at matched footprints: every synthetic workload at the given contexts, with
# query/key vectors and a prefill observation, replayed through the zoo and the baselines at
# budgets 5/10/15/20%; then the shipped real trace (mass only: the zoo's policies that need
# more stop with a one-line reason, recorded in the log; h2o and tova run there without their
# prompt scores, prompt_scores=false). Small by design (2 requests x 128
# steps per workload) so it runs on two shared cores.
#
# usage: experiments/zoo/run.sh [OUT] [CONTEXTS]   (default results/zoo, "32768 131072")
set -euo pipefail
KVLAB=${KVLAB:-build/bin/kvlab}
OUT=${1:-results/zoo}
CONTEXTS=${2:-"32768 131072"}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
BUDGETS="0.05 0.1 0.15 0.2"

policies_at() {  # budget context → --policy flags (matched footprint: the same budget share)
  local b=$1 ctx=$2 win
  win=$(python3 -c "print(max(int($b*$ctx) - 64, 0))")
  echo "--policy random:budget=$b --policy oracle_topk:budget=$b --policy sliding_window:window=$win,sinks=64" \
       "--policy h2o:budget=$b --policy tova:budget=$b --policy quest:budget=$b" \
       "--policy h2o:budget=$b,prompt_scores=false --policy tova:budget=$b,prompt_scores=false" \
       "--policy snapkv:budget=$b --policy pyramidkv:budget=$b --policy ada_kv:budget=$b"
}

for ctx in $CONTEXTS; do
  for w in local needle multi_needle multi_hop diffuse; do
    trace="$OUT/${w}_${ctx}.h5"
    [ -f "$trace" ] || "$KVLAB" trace gen --workload "$w" --context-tokens "$ctx" --steps 128 --requests 2 --seed 7 \
      --features off --qk-dim 16 --prefill-window 32 --out "$trace" > /dev/null
    "$KVLAB" replay --trace "$trace" --threads "$THREADS" --policy full --json > "$OUT/${w}_${ctx}_full.json"
    for b in $BUDGETS; do
      # shellcheck disable=SC2046
      "$KVLAB" replay --trace "$trace" --threads "$THREADS" $(policies_at "$b" "$ctx") --json > "$OUT/${w}_${ctx}_b$b.json"
      # InfLLM's fixed part (sinks, a window of a quarter of the budget, 4 representative keys per
      # chunk) may exceed the smallest budgets; that is reported, not hidden.
      win=$(python3 -c "print(int($b*$ctx/4))")
      "$KVLAB" replay --trace "$trace" --threads "$THREADS" --policy "infllm:budget=$b,sinks=64,window=$win" --json \
        > "$OUT/${w}_${ctx}_b${b}_infllm.json" 2> "$OUT/${w}_${ctx}_b${b}_infllm.err" || rm -f "$OUT/${w}_${ctx}_b${b}_infllm.json"
    done
  done
done

real=traces/data/smollm2_niah_single_2k.h5
for b in $BUDGETS; do
  win=$(python3 -c "print(max(int($b*2048) - 64, 0))")
  "$KVLAB" replay --trace "$real" --threads "$THREADS" --policy random:budget=$b --policy oracle_topk:budget=$b \
    --policy sliding_window:window=$win,sinks=64 --policy h2o:budget=$b,prompt_scores=false \
    --policy tova:budget=$b,prompt_scores=false --json \
    > "$OUT/real_niah_2048_b$b.json"
done
"$KVLAB" replay --trace "$real" --policy full --json > "$OUT/real_niah_2048_full.json"
for p in quest snapkv h2o; do  # h2o (and tova) need the prefill observation for their prompt scores
  "$KVLAB" replay --trace "$real" --policy "$p:budget=0.15" --json > /dev/null 2> "$OUT/real_niah_$p.err" || true
done
python3 analysis/zoo_report.py "$OUT"
