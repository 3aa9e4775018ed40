#!/usr/bin/env bash
# Visit 2, call 2: the model's second half; replay-vs-live fidelity on the GPU decoder.
set -u
cd /tmp/kv || { echo "machine went cold: /tmp/kv missing"; exit 3; }
cp $OLDPWD/.carry/gguf/b /tmp/kvlab_model/b && bash scripts/device-model.sh join || exit 4
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive KVLAB_MODEL=$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
F=/tmp/fid; mkdir -p $F $OUT/fid /tmp/agree
# The 8K CPU references the project machine did not finish: one single-threaded process per
# prompt (--shard I/20 runs prompt I alone), beside the fidelity run (which is mostly GPU work).
INDICES="${INDICES:-5 6 7 8 9 10 11 12 13 14 15 16 17 18 19}"
for i in $INDICES; do
  OMP_NUM_THREADS=1 timeout 500 build/bin/kvlab_cuda_agreement --model $KVLAB_MODEL --contexts 8150 --samples 20 --steps 16 \
    --shard $i/20 --write-reference /tmp/agree > /tmp/agree/log_$i.txt 2>&1 &
done
el fidelity; timeout -s TERM 520 experiments/fidelity/run.sh --out $F --tasks "niah_single niah_multikey vt cwe" --contexts "4096 8100" --samples 50 --backend cuda > $OUT/fid/run.log 2>&1; echo "rc=$?"
tail -3 $OUT/fid/run.log
el refs-wait; wait; cat /tmp/agree/log_*.txt | tail -12; ls /tmp/agree/*.bin | wc -l
el report; python3 analysis/fidelity_report.py $F > /dev/null 2>&1; ls $F | head -80
cd $F && tar czf $OUT/fid/fid.tgz --exclude='*.h5' . ; ls -la $OUT/fid
el done
