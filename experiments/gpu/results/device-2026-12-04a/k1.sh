#!/usr/bin/env bash
# Visit: the fused-reduction candidate (v6s2fused): correctness and sanitizers, then the dense,
# all-layer and sparse points in full mode beside the default and torch (full), interleaved.
set -u
rm -rf /tmp/kv && mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/k; mkdir -p $O; cat REVISION > $O/revision.txt
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
finish() { cd $OUT && tar czf k.tgz k && rm -rf k; }
trap finish EXIT
el tests
KVLAB_GPU_CANDIDATES=1 timeout 150 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecode*' > $O/tests.log 2>&1; echo "rc=$?"; grep -E "PASSED|FAILED|SKIPPED \]" $O/tests.log | head -12
el memcheck
F='SparseDecodeCandidateSanitize.FusedReduction:SparseDecodeSanitize.*'
KVLAB_GPU_CANDIDATES=1 timeout 120 compute-sanitizer --tool memcheck build/bin/kvlab_gpu_tests --gtest_filter="$F" > $O/memcheck.log 2>&1; echo "rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED" $O/memcheck.log | tail -3
el racecheck
KVLAB_GPU_CANDIDATES=1 timeout 120 compute-sanitizer --tool racecheck build/bin/kvlab_gpu_tests --gtest_filter="$F" > $O/racecheck.log 2>&1; echo "rc=$?"; grep -E "HAZARD|RACECHECK SUMMARY|PASSED|FAILED" $O/racecheck.log | tail -3
el synccheck
KVLAB_GPU_CANDIDATES=1 timeout 120 compute-sanitizer --tool synccheck build/bin/kvlab_gpu_tests --gtest_filter="$F" > $O/synccheck.log 2>&1; echo "rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED" $O/synccheck.log | tail -3
for round in 1 2; do
  for v in default v6s2fused; do
    el "attention $v round $round"
    timeout 150 build/bin/kvlab_kernel_bench --only attention --version $v --out $O/att_${v}_$round.tsv > $O/att_${v}_$round.log 2>&1; echo "rc=$?"; grep -E "TABLE (dense|layers|sparse)" $O/att_${v}_$round.log | head -30
  done
  el "torch round $round"
  timeout 150 python3 experiments/gpu/bench_torch.py --kernels-tsv $O/att_default_$round.tsv --out $O/torch_$round.tsv > $O/torch_$round.log 2>&1; echo "rc=$?"; grep "TABLE ratio dense" $O/torch_$round.log
  (( $(date +%s) - t0 > 380 )) && break
done
el done
