#!/usr/bin/env bash
# Call 3 of the LSA live visit: join the model, then the live table over the 12 cells (six tasks
# at 4K and 8K, 100 samples each) with LSA at a 64-token window, its budget per context set so
# that its footprint is the zoo's (0.18 at 4K, 0.165 at 8K), beside full, sliding_window (with
# sinks), snapkv, pyramidkv and h2o at 15%.
set -uo pipefail
t0=$(date +%s)
cp .carry/gguf/c /tmp/kvlab_model/c
mkdir -p /tmp/kv/models && cat /tmp/kvlab_model/a /tmp/kvlab_model/b /tmp/kvlab_model/c > /tmp/kv/models/SmolLM2-135M-Instruct.Q4_1.gguf
sha256sum /tmp/kv/models/SmolLM2-135M-Instruct.Q4_1.gguf
cd /tmp/kv
O=$OUT/x; mkdir -p $O
finish() { tar czf $OUT/lsa_live.tgz -C $OUT x; rm -rf $O; }
trap finish EXIT
I=experiments/lsa/real/results/indexer_real_1008.h5
Z="snapkv:budget=0.15 pyramidkv:budget=0.15 h2o:budget=0.15"
POLICIES="full sliding_window:window=550,sinks=64 $Z lsa:indexer=$I,budget=0.18,window=64,sinks=64,tau=16" \
  INDEXER=$I CONTEXTS=4096 SAMPLES=100 BUDGET_S=240 WORK=/tmp/lt4 bash experiments/gpu/live_table.sh $O/lt4 > $O/lt4.log 2>&1
tail -3 $O/lt4.log
left=$(( 575 - ($(date +%s) - t0) ))
POLICIES="full sliding_window:window=1151,sinks=64 $Z lsa:indexer=$I,budget=0.165,window=64,sinks=64,tau=16" \
  INDEXER=$I CONTEXTS=8100 SAMPLES=100 BUDGET_S=$left WORK=/tmp/lt8 bash experiments/gpu/live_table.sh $O/lt8 > $O/lt8.log 2>&1
tail -3 $O/lt8.log
echo "total $(( $(date +%s) - t0 )) s"
