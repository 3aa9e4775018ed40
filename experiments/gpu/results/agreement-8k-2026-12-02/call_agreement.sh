#!/usr/bin/env bash
# Visit 2, call 3: the full pack and the 8K CPU references: 8K agreement on 20 prompts; the live
# accuracy table through kvlab sweep; LSA at the zoo's footprint on the cells it missed.
set -u
cd /tmp/kv || { echo "machine went cold: /tmp/kv missing"; exit 3; }
tar xJf $OLDPWD/.carry/pack/kvlab.tar.xz -C /tmp/kv
mkdir -p /tmp/agree && cp $OLDPWD/.carry/agree/* /tmp/agree/ && ls /tmp/agree | wc -l
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive KVLAB_MODEL=$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
O=$OUT/v2c; mkdir -p $O
el agreement; timeout 150 build/bin/kvlab_cuda_agreement --model $KVLAB_MODEL --contexts 8150 --samples 20 --steps 16 --reference /tmp/agree --out $O/agreement_8k.json > $O/agreement_8k.log 2>&1; echo "rc=$?"; tail -6 $O/agreement_8k.log
el sweep; (timeout 240 build/bin/kvlab sweep --config experiments/live/accuracy_table_gpu.toml && build/bin/kvlab report results/live_study_gpu && python3 experiments/live/table.py results/live_study_gpu) > $O/sweep.log 2>&1; echo "rc=$?"; tail -30 $O/sweep.log
tar czf $O/live_study_gpu.tgz results/live_study_gpu 2>/dev/null
el grid
I=experiments/lsa/real/results/indexer_real_1008.h5
POLICIES="full lsa:indexer=$I,budget=0.15,window=256,sinks=64,tau=16 lsa:indexer=$I,budget=0.18,window=256,sinks=64,tau=16 lsa:indexer=$I,budget=0.15,window=64,sinks=64,tau=16 lsa:indexer=$I,budget=0.18,window=64,sinks=64,tau=16 lsa:indexer=$I,budget=0.18,window=128,sinks=64,tau=16" \
  TASKS="niah_multikey niah_single fwe" CONTEXTS=4096 SAMPLES=100 BUDGET_S=200 bash experiments/gpu/live_table.sh $O/grid > $O/grid.log 2>&1; echo "rc=$?"; cat $O/grid/table.md | head -40
el done
cd $OUT && tar czf v2c.tgz v2c && rm -rf v2c
