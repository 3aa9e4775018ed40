#!/usr/bin/env bash
# Visit: the reduction's CTA size by row length: sparse decode tests (default + candidates) and
# memcheck/racecheck over their sanitize tests; kernel benchmarks (dense, all layers, sparse) beside
# torch (the promotion variants, the ncu counters and the plan sweep were dropped for device time).
set -u
mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/t; mkdir -p $O; cat REVISION > $O/revision.txt
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version --format=csv > $O/gpu.txt 2>&1
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
el tests; KVLAB_GPU_CANDIDATES=1 timeout 120 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecode.*:SparseDecodeSanitize.*:SparseDecodeCandidate.TensorTiles*:SparseDecodeCandidateSanitize.TensorTiles*:SparseDecodeCandidate.LlamaShape*:*Cuda*' --gtest_brief=1 > $O/tests.log 2>&1; echo "rc=$?" >> $O/tests.log; grep -E '^\[  (PASSED|FAILED|SKIPPED)|FAILED  \]|rc=' $O/tests.log | head
el memcheck; timeout 100 compute-sanitizer --tool memcheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecode*Sanitize*' --gtest_brief=1 > $O/memcheck.log 2>&1; echo "rc=$?"; grep -E 'ERROR SUMMARY|PASSED|FAILED  \]' $O/memcheck.log | tail -3
el racecheck; timeout 100 compute-sanitizer --tool racecheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecode*Sanitize*' --gtest_brief=1 > $O/racecheck.log 2>&1; echo "rc=$?"; grep -E 'RACECHECK SUMMARY|PASSED|FAILED  \]' $O/racecheck.log | tail -3
el bench; timeout 150 build/bin/kvlab_kernel_bench --only attention --quick --out $O/bench_kernels.tsv > $O/bench_kernels.log 2>&1; echo "rc=$?"; grep 'TABLE dense\|TABLE sparse' $O/bench_kernels.log | head -40
el torch; timeout 150 python3 experiments/gpu/bench_torch.py --quick --kernels-tsv $O/bench_kernels.tsv --out $O/bench_torch.tsv > $O/bench_torch.log 2>&1; echo "rc=$?"; grep -i "TABLE ratio\|TABLE torch dense" $O/bench_torch.log | head -30
el done
cd $OUT && tar czf t.tgz t && rm -rf t
