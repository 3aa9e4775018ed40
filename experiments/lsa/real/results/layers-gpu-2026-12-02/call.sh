#!/usr/bin/env bash
# Visit 2, call 4: the multi-layer indexer study on GPU recordings, and its gpu test.
set -u
cd /tmp/kv || { echo "machine went cold: /tmp/kv missing"; exit 3; }
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive KVLAB_MODEL=$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
O=$OUT/v2d; mkdir -p $O
el test; timeout 60 build/bin/kvlab_gpu_tests --gtest_filter='CudaRecordFeatureLayers.*' > $O/test.log 2>&1; echo "rc=$?"; grep -E 'PASSED|FAILED|SKIPPED' $O/test.log | head
el layers; TASKS="niah_single niah_multikey niah_multivalue vt cwe fwe" CONTEXTS=4096 TRAIN_A=25 TRAIN_B=25 EVAL=16 THREADS=16 VARIANTS="l15 max concat l8 l22" timeout -s TERM 480 experiments/lsa/real/layers_study.sh /tmp/layers > $O/layers.log 2>&1; echo "rc=$?"; tail -20 $O/layers.log
rm -rf /tmp/layers/rec; cp /tmp/layers/table.md $O/ 2>/dev/null; tar czf $O/layers.tgz -C /tmp layers
el done
cd $OUT && tar czf v2d.tgz v2d && rm -rf v2d
