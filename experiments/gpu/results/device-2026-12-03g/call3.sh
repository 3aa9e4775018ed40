#!/usr/bin/env bash
# Visit: plans of at most 3 waves and the 1024-thread reduction: attention benchmarks (dense,
# all layers, sparse, top-k) beside torch, the default against the serial reduction, plan waves,
# ncu of the split kernel and the reduction at 512K x 1; every gpu test; memcheck and racecheck
# over the sparse-decode sanitize tests.
set -u
mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/c; mkdir -p $O; cat REVISION > $O/revision.txt
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version --format=csv > $O/gpu.txt 2>&1
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
el bench; timeout 150 build/bin/kvlab_kernel_bench --quick --out $O/bench_kernels.tsv > $O/bench_kernels.log 2>&1; echo "rc=$?"; grep 'TABLE dense\|TABLE sparse\|TABLE topk.*cooperative\|TABLE topk n=1M' $O/bench_kernels.log | head -60
el torch; timeout 150 python3 experiments/gpu/bench_torch.py --quick --kernels-tsv $O/bench_kernels.tsv --out $O/bench_torch.tsv > $O/bench_torch.log 2>&1; echo "rc=$?"; grep -i "TABLE ratio dense" $O/bench_torch.log | head -12
el serial; timeout 60 build/bin/kvlab_kernel_bench --only dense --quick --version v6s2serial --out $O/dense_v6s2serial.tsv > $O/dense_v6s2serial.log 2>&1; echo "rc=$?"; grep 'TABLE dense 1' $O/dense_v6s2serial.log
el plans; timeout 80 build/bin/kvlab_kernel_bench --only plans --quick --out $O/plans_default.tsv > $O/plans_default.log 2>&1; echo "rc=$?"; grep 'TABLE plan' $O/plans_default.log
el ncu
M="lts__ltcfabric2ltc_cycles_active.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_ltcfabric.sum,gpu__time_duration.sum"
timeout 60 ncu --clock-control none --metrics $M --kernel-name regex:sparse_decode --launch-skip 4 --launch-count 2 build/bin/kvlab_kernel_bench --only profile > $O/ncu_default_512k.txt 2>&1; echo "ncu rc=$?"
grep -E "^  [a-zA-Z_].*\(|lts__|dram__|gpu__time" $O/ncu_default_512k.txt | awk '{print $1, $(NF)}' | head -16
el tests; timeout 150 build/bin/kvlab_gpu_tests --gtest_brief=1 > $O/gpu_tests.log 2>&1; echo "rc=$?"; grep -E '^\[  (PASSED|FAILED|SKIPPED) |FAILED  \]' $O/gpu_tests.log | head
el memcheck; timeout 100 compute-sanitizer --tool memcheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecode*Sanitize*' --gtest_brief=1 > $O/memcheck.log 2>&1; echo "rc=$?"; grep -E 'ERROR SUMMARY|PASSED|FAILED  \]' $O/memcheck.log | tail -3
el racecheck; timeout 100 compute-sanitizer --tool racecheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecode*Sanitize*' --gtest_brief=1 > $O/racecheck.log 2>&1; echo "rc=$?"; grep -E 'RACECHECK SUMMARY|PASSED|FAILED  \]' $O/racecheck.log | tail -3
el done
cd $OUT && tar czf c.tgz c && rm -rf c
