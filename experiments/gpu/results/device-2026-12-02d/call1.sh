#!/usr/bin/env bash
# Visit 1, call 1: unpack, gpu tests, candidate kernels (tests, memcheck, racecheck), sanitizer,
# candidate/plan benches, Nsight Compute on the default kernel.
set -u
mkdir -p /tmp/kv /tmp/kvlab_model && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/v1c1; mkdir -p $O
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version --format=csv > $O/gpu.txt 2>&1
el tests; timeout 150 build/bin/kvlab_gpu_tests --gtest_brief=1 > $O/gpu_tests.log 2>&1; echo "rc=$?" >> $O/gpu_tests.log
grep -E '^\[  (PASSED|FAILED|SKIPPED)|FAILED  \]' $O/gpu_tests.log | head -20
el candidates; KVLAB_GPU_CANDIDATES=1 timeout 120 build/bin/kvlab_gpu_tests --gtest_filter='*Candidate*' --gtest_brief=1 > $O/candidates.log 2>&1; echo "rc=$?" >> $O/candidates.log
grep -E '^\[  (PASSED|FAILED)|FAILED  \]|Failure|rc=' $O/candidates.log | head -20
el cand-memcheck; KVLAB_GPU_CANDIDATES=1 timeout 90 compute-sanitizer --tool memcheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='*CandidateSanitize*' --gtest_brief=1 > $O/cand_memcheck.log 2>&1; echo "rc=$?"; grep 'ERROR SUMMARY' $O/cand_memcheck.log
el cand-racecheck; KVLAB_GPU_CANDIDATES=1 timeout 90 compute-sanitizer --tool racecheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='*CandidateSanitize*' --gtest_brief=1 > $O/cand_racecheck.log 2>&1; echo "rc=$?"; grep 'SUMMARY' $O/cand_racecheck.log
el memcheck; timeout 150 compute-sanitizer --tool memcheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='*Sanitize*' --gtest_brief=1 > $O/memcheck.log 2>&1; echo "rc=$?"; grep -E 'ERROR SUMMARY|FAILED  \]' $O/memcheck.log | tail -3
el bench-candidates; timeout 120 build/bin/kvlab_kernel_bench --only candidates --out $O/cand.tsv > $O/cand_bench.log 2>&1; echo "rc=$?"; grep TABLE $O/cand_bench.log | grep -v topk
el plans; timeout 90 build/bin/kvlab_kernel_bench --only plans --out $O/plans.tsv > $O/plans.log 2>&1; echo "rc=$?"; grep TABLE $O/plans.log
el ncu; for skip in 2 6; do timeout 60 ncu --kernel-name regex:split_mma --launch-skip $skip --launch-count 1 --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats build/bin/kvlab_kernel_bench --only profile > $O/ncu_$skip.txt 2>&1; echo "ncu rc=$?"; done
grep -E 'DRAM Throughput|Memory Throughput|Duration|Achieved Occupancy|Stall|Registers|Mem Busy|Max Bandwidth|L2 Hit|Warp Cycles Per Issued' $O/ncu_2.txt | head -30
el done
