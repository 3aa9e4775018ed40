#!/usr/bin/env bash
# Visit 3, call 3: the model's last part; the live accuracy table through kvlab sweep on the GPU.
set -u
cd /tmp/kv || { echo "machine went cold: /tmp/kv missing"; exit 3; }
cat /tmp/kvlab_model/b1 $OLDPWD/.carry/b2/b > /tmp/kvlab_model/b && bash scripts/device-model.sh join || exit 4
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive KVLAB_MODEL=$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
O=$OUT/w3; mkdir -p $O
grep -c epochs experiments/live/accuracy_table_gpu.toml
el sweep; (timeout 300 build/bin/kvlab sweep --config experiments/live/accuracy_table_gpu.toml && build/bin/kvlab report results/live_study_gpu && python3 experiments/live/table.py results/live_study_gpu) > $O/sweep.log 2>&1; echo "rc=$?"; grep -E "val recall|^\|" $O/sweep.log | tail -30
tar czf $O/live_study_gpu.tgz results/live_study_gpu
el done
cd $OUT && tar czf w3.tgz w3 && rm -rf w3
