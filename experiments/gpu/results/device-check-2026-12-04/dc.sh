#!/usr/bin/env bash
# Visit: scripts/device-check.sh at the session's final code, every stage (tests, candidates,
# sanitizer, the fetch, decoder, kernel, candidate-kernel and torch benchmarks), each stage
# under its own time limit; one summary per stage. The kernels stage's TSV is copied into the
# torch stage's folder first, so that bench_torch.py prints the ratios in the same visit.
set -u
rm -rf /tmp/kv && mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/d; mkdir -p $O; cat REVISION > $O/revision.txt
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
finish() { cd $OUT && tar czf d.tgz d && rm -rf d; }
trap finish EXIT
for stage in tests candidates sanitizer fetch cuda_decoder kernels kernel_candidates torch; do
  el $stage
  if [[ $stage == torch ]]; then mkdir -p $O/torch && cp $O/kernels/bench_kernels.tsv $O/torch/ 2>/dev/null; fi
  timeout 150 scripts/device-check.sh --build-dir build --out $O/$stage --only $stage > $O/$stage.stdout 2>&1; echo "rc=$?"
  grep -v '^gpu \|^git ' $O/$stage/summary.txt | grep -v "sparse ctx=.*clustered" | head -40
done
el done
