#!/usr/bin/env bash
# The closed-loop accuracy table (experiments/live/README.md): niah_single with full attention
# at 2K and 4K, and every non-oracle policy at about 15% footprint; LSA with an indexer trained
# on the shipped real trace (traces/data/), with and without summary entries in attention.
# Results land in $OUT_DIR (default results/live/<run>/: results.json, generations.json,
# config.json).
# usage: experiments/live/accuracy_table.sh [KVLAB] [SAMPLES]
set -euo pipefail
kvlab="${1:-build/bin/kvlab}"
samples="${2:-8}"
out="${OUT_DIR:-results/live}"
# On a busy machine OpenMP's spinning threads stall each other at every parallel region.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

# LSA's indexer, trained on the recorded real trace (2K prompts, seed 0; the runs below use
# other prompts: 4K, and seed 1 for the summaries comparison).
indexer="${out}/indexer_real_2k.h5"
"${kvlab}" indexer train --traces traces/data/smollm2_niah_single_2k.h5 --out "${indexer}" \
  --window 256 --sinks 64 --tau 16 --stride 4
lsa="lsa:indexer=${indexer},window=256,sinks=64,budget=0.15,tau=16"

"${kvlab}" run --task niah_single --context-tokens 2048 --samples "${samples}" --max-tokens 16 \
  --policy full --policy sliding_window:window=256,sinks=64 --policy random:budget=0.15 \
  --out-dir "${out}/niah_single_2k"

"${kvlab}" run --task niah_single --context-tokens 4096 --samples "${samples}" --max-tokens 16 \
  --policy full --policy sliding_window:window=576,sinks=64 --policy random:budget=0.15 --policy "${lsa}" \
  --out-dir "${out}/niah_single_4k"

# Summary entries in attention: LSA with its 128:1 tier attended, against the same policy with
# no summary tier (summary_ratio=0; the bytes it frees go to chunks).
"${kvlab}" run --task niah_single --context-tokens 4096 --samples "${samples}" --seed 1 --max-tokens 16 \
  --policy full --policy "${lsa}" --policy "${lsa},summary_ratio=0" \
  --out-dir "${out}/niah_single_4k_lsa_summaries"
