#!/usr/bin/env bash
# Visit 1b, call C: second model half; the live table with the zoo and the real indexer.
set -u
cd /tmp/kv || { echo "machine went cold: /tmp/kv missing"; exit 3; }
cp $OLDPWD/.carry/gguf/b /tmp/kvlab_model/b && bash scripts/device-model.sh join || exit 4
pip install --no-deps --target /tmp/site $OLDPWD/.carry/gguf/gguf-0.19.0-py3-none-any.whl > /dev/null 2>&1
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive PYTHONPATH=/tmp/site KVLAB_MODEL=$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
el live-table
ZOO=1 INDEXER=experiments/lsa/real/results/indexer_real_1008.h5 BUDGET_S=520 bash experiments/gpu/live_table.sh $OUT/lt > /tmp/lt.log 2>&1; echo "rc=$?"
tail -5 /tmp/lt.log; cp /tmp/lt.log $OUT/lt/
el done; ls -la $OUT/lt
