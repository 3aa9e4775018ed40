#!/usr/bin/env bash
# Visit: scripts/device-check.sh at the session's final code, every stage (tests, candidates,
# sanitizer, the fetch, decoder, kernel, candidate-kernel and torch benchmarks), each stage
# under its own time limit; one summary per stage.
set -u
mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/d; mkdir -p $O; cat REVISION > $O/revision.txt
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
for stage in tests candidates sanitizer fetch cuda_decoder kernels kernel_candidates torch; do
  el $stage; timeout 150 scripts/device-check.sh --build-dir build --out $O/$stage --only $stage > $O/$stage.stdout 2>&1; echo "rc=$?"
  grep -v '^gpu \|^git ' $O/$stage/summary.txt | head -40
done
el done
cd $OUT && tar czf d.tgz d && rm -rf d
