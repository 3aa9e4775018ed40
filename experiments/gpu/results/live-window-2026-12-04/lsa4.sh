#!/usr/bin/env bash
# Call 3 of the LSA window check: join the model, then LSA's window (64 / 128 / 256) on prompts
# of seed 1 (not the evaluation seed 0 the live tables use), budget 0.18 at 4K and 0.165 at 8K,
# next to full attention: does the window chosen on seed 0's cells hold on other prompts?
set -uo pipefail
t0=$(date +%s)
cp .carry/gguf/c /tmp/kvlab_model/c
mkdir -p /tmp/kv/models && cat /tmp/kvlab_model/a /tmp/kvlab_model/b /tmp/kvlab_model/c > /tmp/kv/models/SmolLM2-135M-Instruct.Q4_1.gguf
cd /tmp/kv
O=$OUT/x; mkdir -p $O
finish() { tar czf $OUT/lsa_window.tgz -C $OUT x; rm -rf $O; }
trap finish EXIT
I=experiments/lsa/real/results/indexer_real_1008.h5
for ctx in 4096 8100; do
  b=0.18; [[ $ctx == 8100 ]] && b=0.165
  P="full"; for w in 64 128 256; do P="$P lsa:indexer=$I,budget=$b,window=$w,sinks=64,tau=16"; done
  left=$(( 280 - ($(date +%s) - t0) ))
  POLICIES="$P" INDEXER=$I SEED=1 CONTEXTS=$ctx TASKS="niah_multikey niah_single fwe" SAMPLES=100 BUDGET_S=$left \
    WORK=/tmp/lw$ctx bash experiments/gpu/live_table.sh $O/lw$ctx > $O/lw$ctx.log 2>&1
  tail -2 $O/lw$ctx.log
done
echo "total $(( $(date +%s) - t0 )) s"
