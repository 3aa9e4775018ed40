#!/usr/bin/env bash
# Visit 1 (no model): unpack the full pack; dense replay across 2 cores first (quiet host); gpu
# tests at HEAD; memcheck over *Sanitize*; the dense kernel with automatic plan waves beside
# torch; calibration rows and lsa fp8 x 7 capacity with incremental page lists.
set -u
mkdir -p /tmp/kv /tmp/kvlab_model && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/v1; mkdir -p $O
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version --format=csv > $O/gpu.txt 2>&1
nproc >> $O/gpu.txt; uptime >> $O/gpu.txt
el replay-scaling; timeout 170 scripts/replay-scaling.sh $O/replay-scaling.json > $O/replay-scaling.log 2>&1; echo "rc=$?"; tail -4 $O/replay-scaling.log
el tests; timeout 150 build/bin/kvlab_gpu_tests --gtest_brief=1 > $O/gpu_tests.log 2>&1; echo "rc=$?" >> $O/gpu_tests.log
grep -E '^\[  (PASSED|FAILED|SKIPPED)|FAILED  \]|rc=' $O/gpu_tests.log | head -20
el memcheck; timeout 120 compute-sanitizer --tool memcheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='*Sanitize*' --gtest_brief=1 > $O/memcheck.log 2>&1; echo "rc=$?"; grep -E 'ERROR SUMMARY|FAILED  \]' $O/memcheck.log | tail -3
el dense; timeout 100 build/bin/kvlab_kernel_bench --only dense --quick --out $O/bench_kernels.tsv > $O/bench_kernels.log 2>&1; echo "rc=$?"; grep TABLE $O/bench_kernels.log | head -20
el torch; timeout 150 python3 experiments/gpu/bench_torch.py --quick --kernels-tsv $O/bench_kernels.tsv --out $O/bench_torch.tsv > $O/bench_torch.log 2>&1; echo "rc=$?"; grep -i "TABLE.*\(ratio\|sdpa\)" $O/bench_torch.log | head -30
el ordered; timeout 90 build/bin/kvlab_kernel_bench --only dense --quick --slots ordered --out $O/bench_kernels_ordered.tsv > $O/bench_kernels_ordered.log 2>&1; echo "rc=$?"; grep 'TABLE dense 1' $O/bench_kernels_ordered.log
el done
cd $OUT && tar czf v1.tgz v1 && rm -rf v1
