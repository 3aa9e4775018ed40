#!/usr/bin/env bash
# Call 2 of the LSA label visit: join the model, record 4K training sets on the GPU, train
# indexers whose positives come from critical sets of mass p = 0.9 / 0.5 / 0.3, replay the
# held-out recordings, and run them live next to full, snapkv and pyramidkv.
set -uo pipefail
t0=$(date +%s)
cp .carry/gguf/c /tmp/kvlab_model/c
mkdir -p /tmp/kv/models && cat /tmp/kvlab_model/a /tmp/kvlab_model/b /tmp/kvlab_model/c > /tmp/kv/models/SmolLM2-135M-Instruct.Q4_1.gguf
sha256sum /tmp/kv/models/SmolLM2-135M-Instruct.Q4_1.gguf
cd /tmp/kv
source experiments/gpu/live_env.sh
O=$OUT/x; mkdir -p $O
W=/tmp/lab
finish() { cp -r $W/summary.txt $W/logs $W/parts.txt $O/ 2>/dev/null; cp $W/indexer_*.h5 $O/ 2>/dev/null;
           tar czf $OUT/lsa_labels.tgz -C $OUT x; rm -rf $O; }
trap finish EXIT
# 1 record: 6 tasks at 4K, 84 train requests per task (25 of seed 1000, 59 of seed 2000), 16 held out (seed 0)
WORK=$W CONTEXTS=4096 PARTS=record BUDGET_S=150 bash experiments/lsa/real/record_train.sh $O/rec > $O/record.log 2>&1
echo "record done $(( $(date +%s) - t0 )) s"; tail -3 $O/record.log
# 2 train
for p in 0.9 0.5 0.3; do
  s=$(date +%s)
  $K indexer train --traces $W/recordings/train_a/*.h5 $W/recordings/train_b/*.h5 --tau 16 --window 64 --sinks 64 \
    --stride 16 --critical-mass $p --threads 16 --out $W/indexer_p$p.h5 > $O/train_p$p.log 2>&1
  echo "train p=$p rc=$? $(( $(date +%s) - s )) s"; grep -E '^  (untrained|trained|bilinear|lsa_oracle)' $O/train_p$p.log
done
I0=experiments/lsa/real/results/indexer_real_1008.h5
LSA="budget=0.18,window=64,sinks=64,tau=16"
# 3 replay of the held-out recordings at p 0.9 critical recall
for f in $W/recordings/eval/*.h5; do
  b=$(basename $f .h5)
  $K replay --trace $f --policy "sliding_window:window=550,sinks=64" --policy "lsa_oracle:$LSA" \
    --policy "lsa:indexer=$I0,$LSA" --policy "lsa:indexer=$W/indexer_p0.9.h5,$LSA" \
    --policy "lsa:indexer=$W/indexer_p0.5.h5,$LSA" --policy "lsa:indexer=$W/indexer_p0.3.h5,$LSA" \
    --threads 16 --json --out-dir $O/replay/$b > $O/replay_$b.log 2>&1 || echo "replay $b failed: $(tail -1 $O/replay_$b.log)"
done
echo "replay done $(( $(date +%s) - t0 )) s"
# 4 live, 100 samples per task at 4K
left=$(( 570 - ($(date +%s) - t0) ))
POLICIES="full snapkv:budget=0.15 pyramidkv:budget=0.15 lsa:indexer=$I0,$LSA lsa:indexer=$W/indexer_p0.9.h5,$LSA lsa:indexer=$W/indexer_p0.5.h5,$LSA lsa:indexer=$W/indexer_p0.3.h5,$LSA" \
  INDEXER=$I0 TASKS="niah_multikey niah_single niah_multivalue fwe vt cwe" CONTEXTS=4096 SAMPLES=100 BUDGET_S=$left \
  WORK=/tmp/lt bash experiments/gpu/live_table.sh $O/lt > $O/lt.log 2>&1
tail -40 $O/lt.log
echo "total $(( $(date +%s) - t0 )) s"
