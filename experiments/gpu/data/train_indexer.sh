#!/usr/bin/env bash
# Trains indexer_mix.h5, the LSA indexer the GPU capacity study uses (experiments/gpu): the
# LSA study's recipe (experiments/lsa/run_all.sh, step 2) on 60 mix and 4 x 30 remote-workload
# requests at 32K (seeds 3 and 4, disjoint from every test trace), backbone-free.
#   KVLAB=build/bin/kvlab experiments/gpu/data/train_indexer.sh [WORK_DIR]
# Took 48 s on this project's 2-core machine (2026-12-01); the checkpoint is 44 KB.
set -euo pipefail
K="${KVLAB:-build/bin/kvlab}"
K="$(cd "$(dirname "$K")" && pwd)/$(basename "$K")"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="${1:-results/gpu_indexer}"
mkdir -p "$work" && cd "$work"
traces=()
[[ -f mix.h5 ]] || "$K" trace gen --workload mix --context-tokens 32768 --steps 256 --requests 60 --seed 3 --out mix.h5
traces+=(mix.h5)
for w in needle multi_needle multi_hop diffuse; do
  [[ -f $w.h5 ]] || "$K" trace gen --workload $w --context-tokens 32768 --steps 256 --requests 30 --seed 4 --out $w.h5
  traces+=($w.h5)
done
"$K" indexer train --traces "${traces[@]}" --out indexer_mix.h5 --window 8192 --sinks 64 --tau 64 --stride 16 \
  --depth 0 --dim 64 --lr 0.003 --epochs 10 --patience 3 --loss listwise --negatives 256 --query-pool 8 --seed 0 \
  --threads 2
cp indexer_mix.h5 "$here/indexer_mix.h5"
