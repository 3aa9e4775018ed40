#!/usr/bin/env bash
# Visit: the fused reduction with float4 slots: correctness and memcheck, then dense points in
# full mode for the default and v6s2fused, interleaved, and torch (full) once.
set -u
rm -rf /tmp/kv && mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/k; mkdir -p $O; cat REVISION > $O/revision.txt
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
finish() { cd $OUT && tar czf k.tgz k && rm -rf k; }
trap finish EXIT
el tests
KVLAB_GPU_CANDIDATES=1 timeout 150 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecode*' > $O/tests.log 2>&1; echo "rc=$?"; grep -E "PASSED|FAILED" $O/tests.log | head -12
F='SparseDecodeCandidateSanitize.FusedReduction'
for tool in memcheck racecheck synccheck; do
  KVLAB_GPU_CANDIDATES=1 timeout 120 compute-sanitizer --tool $tool build/bin/kvlab_gpu_tests --gtest_filter="$F" > $O/$tool.log 2>&1; echo "$tool rc=$?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|FAILED" $O/$tool.log | tail -2
done
for round in 1 2; do
  for v in default v6s2fused; do
    el "dense $v round $round"
    timeout 100 build/bin/kvlab_kernel_bench --only attention --version $v --out $O/att_${v}_$round.tsv > $O/att_${v}_$round.log 2>&1; echo "rc=$?"; grep -E "TABLE (dense|sparse ctx=128K layers=1|sparse ctx=512K layers=1)" $O/att_${v}_$round.log | head -30
  done
done
el torch
timeout 150 python3 experiments/gpu/bench_torch.py --kernels-tsv $O/att_default_1.tsv --out $O/torch.tsv > $O/torch.log 2>&1; echo "rc=$?"; grep "TABLE ratio dense" $O/torch.log
el done
