#!/usr/bin/env bash
# Indexer training against training-set size: the study's hand-tuned recipe and
# `kvlab indexer train`'s defaults on the same synthetic traces, evaluated on held-out ones.
#
#   KVLAB=build/bin/kvlab OUT=results/train_size experiments/lsa/train_size/run.sh
#
# Scaled down to run on 2 cores: 32K-token requests of 128 decode steps (the study: 256 steps,
# and 32K plus 128K contexts). Training sets of N requests are N/3 each of needle, multi_hop
# and diffuse (seed 2; request i depends only on the seed and i, so each set extends the
# smaller ones); test sets are 20 requests of each (seed 1002). Every indexer is evaluated
# with the study's label window (candidates outside the last 8192 tokens).
set -euo pipefail
KVLAB=${KVLAB:-build/bin/kvlab}
OUT=${OUT:-results/train_size}
THREADS=${THREADS:-2}
T="$OUT/traces"
mkdir -p "$T" "$OUT/eval"
WORKLOADS=(needle multi_hop diffuse)
declare -A PER=([20]=7 [100]=34 [300]=100 [1000]=334)
SIZES=(${SIZES:-20 100 300 1000})
gen() { [[ -f "$6" ]] || "$KVLAB" trace gen --workload "$1" --context-tokens "$2" --steps "$3" --requests "$4" --seed "$5" --out "$6" >/dev/null; }
for w in "${WORKLOADS[@]}"; do
  for n in "${SIZES[@]}"; do gen "$w" 32768 128 "${PER[$n]}" 2 "$T/train_${w}_${PER[$n]}.h5"; done
  gen "$w" 32768 128 20 1002 "$T/test_${w}.h5"
done
# The study's recipe (experiments/lsa/run_all.sh, step 2).
RECIPE=(--window 8192 --sinks 64 --tau 64 --stride 16 --depth 0 --dim 64 --lr 0.003 --epochs 10 --patience 3
        --loss listwise --negatives 256 --query-pool 8 --seed 0)
for n in "${SIZES[@]}"; do
  traces=(); for w in "${WORKLOADS[@]}"; do traces+=("$T/train_${w}_${PER[$n]}.h5"); done
  "$KVLAB" indexer train --traces "${traces[@]}" --out "$OUT/recipe_$n.h5" "${RECIPE[@]}" --threads "$THREADS" \
    --reference off > "$OUT/recipe_$n.out" 2> "$OUT/recipe_$n.log"
  # The defaults, asked the study's question (--window 8192 defines the labels, not the training).
  "$KVLAB" indexer train --traces "${traces[@]}" --out "$OUT/defaults_$n.h5" --window 8192 --threads "$THREADS" \
    > "$OUT/defaults_$n.out" 2> "$OUT/defaults_$n.log"
  for v in recipe defaults; do
    for w in "${WORKLOADS[@]}"; do
      "$KVLAB" indexer eval --indexer "$OUT/${v}_$n.h5" --trace "$T/test_$w.h5" --window 8192 --json \
        --threads "$THREADS" > "$OUT/eval/${v}_${n}_$w.json"
    done
  done
  echo "size $n done"
done
python3 "$(dirname "$0")/summarise.py" "$OUT"
