#!/usr/bin/env bash
# Visit 1b, call B: light pack + first model half; the capacity rows with incremental page lists.
set -u
rm -rf /tmp/kv && mkdir -p /tmp/kv /tmp/kvlab_model && tar xJf .carry/lite/kvlab.tar.xz -C /tmp/kv && cp .carry/gguf/a /tmp/kvlab_model/a
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=/tmp/vB; mkdir -p $O
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
el capacity
ONLY='^cap128k_(full_n7|lsa_n21_int4)$' KVLAB=build/bin/kvlab OUT=$O/exec-pagelists timeout 420 experiments/gpu/exec_study.sh capacity > $O/capacity.log 2>&1; echo "rc=$?"
grep -E 'TABLE|rror' $O/capacity.log | tail -12
el done
rm -rf $O/exec-pagelists/traces
tar czf $OUT/vB.tgz -C /tmp vB; ls -la $OUT
