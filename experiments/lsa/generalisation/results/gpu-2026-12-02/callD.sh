#!/usr/bin/env bash
# Visit 1b, call D: generalisation at GPU size (issue #11 item 4).
set -u
cd /tmp/kv || { echo "machine went cold: /tmp/kv missing"; exit 3; }
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive PYTHONPATH=/tmp/site KVLAB_MODEL=$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf
export PATH=$PWD/build/bin:$PATH
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
el generalisation
timeout 540 experiments/lsa/generalisation/run.sh --backend cuda --out /tmp/gen \
  --context 4096 --train-samples 167 --eval-samples 20 --steps 32 --batch 64 --threads 16 \
  --train-seed 1 --eval-seed 2 --budget 0.15 --lsa-window 256 --stride 16 \
  --live-samples 20 --max-tokens 64 --baseline-indexer experiments/lsa/real/results/indexer_real_1008.h5 > /tmp/gen.log 2>&1; echo "rc=$?"
tail -30 /tmp/gen.log; cp /tmp/gen.log /tmp/gen/
el done
find /tmp/gen -name '*.h5' -size +2M -delete
tar czf $OUT/gen.tgz -C /tmp gen; ls -la $OUT
