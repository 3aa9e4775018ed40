#!/usr/bin/env bash
# Visit 1, call 2: calibration rows and lsa fp8 x 7 capacity with incremental page lists.
set -u
cd /tmp/kv || { echo "machine went cold: /tmp/kv missing"; exit 3; }
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/v1b; mkdir -p $O
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
el exec; (export KVLAB=build/bin/kvlab OUT=$O/exec RUN_LIMIT=130; timeout 280 experiments/gpu/exec_study.sh calibration; ONLY='^cap128k_lsa_n7_fp8$' timeout 240 experiments/gpu/exec_study.sh capacity) > $O/exec.log 2>&1; echo "rc=$?"; grep TABLE $O/exec.log
rm -rf $O/exec/traces $O/exec/*/ 2>/dev/null; ls $O/exec | head -30
el done
cd $OUT && tar czf v1b.tgz v1b && rm -rf v1b
