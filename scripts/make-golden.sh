#!/usr/bin/env bash
# Regenerates the golden regression data: a tiny checked-in trace and the metrics every
# baseline policy gets on it. Run only when a change of metrics is intended, and say why in
# the commit. usage: scripts/make-golden.sh [path/to/kvlab]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
kvlab="${1:-build/bin/kvlab}"
out=tests/data/golden
mkdir -p "${out}"
"${kvlab}" trace gen --workload mix --context-tokens 2048 --steps 32 --requests 3 --seed 7 \
  --out "${out}/tiny_mix.h5"
# Policies and specs: keep in sync with tests/backends/golden_test.cpp (it reads them from here).
"${kvlab}" replay --trace "${out}/tiny_mix.h5" --threads 1 --json \
  --policy full \
  --policy sliding_window:window=512,sinks=64 \
  --policy oracle_topk:budget=0.25 \
  --policy random:budget=0.25,seed=3 \
  --policy lsa_oracle:budget=0.5,window=512,tau=8 >"${out}/expected.json"
echo "wrote ${out}/tiny_mix.h5 and ${out}/expected.json"
