#!/usr/bin/env bash
# Visit: v5 (warps sharing pages) candidate tests + sanitizers; dense points for default (v3),
# v5 s2, v5 s3 beside torch SDPA; the plan-waves sweep for v5 s2 (with 32K x 8).
set -u
mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/v5; mkdir -p $O
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version --format=csv > $O/gpu.txt 2>&1
cat REVISION >> $O/gpu.txt
el tests; KVLAB_GPU_CANDIDATES=1 timeout 120 build/bin/kvlab_gpu_tests --gtest_filter='*SharedPages*:SparseDecodeCandidate.EveryShape*' --gtest_brief=1 > $O/candidate_tests.log 2>&1; echo "rc=$?" >> $O/candidate_tests.log; grep -E '^\[  (PASSED|FAILED)|FAILED  \]|rc=' $O/candidate_tests.log | head
el memcheck; KVLAB_GPU_CANDIDATES=1 timeout 60 compute-sanitizer --tool memcheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecodeCandidateSanitize.SharedPages*' --gtest_brief=1 > $O/memcheck.log 2>&1; echo "rc=$?"; grep -E 'ERROR SUMMARY' $O/memcheck.log | tail -1
el racecheck; KVLAB_GPU_CANDIDATES=1 timeout 90 compute-sanitizer --tool racecheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecodeCandidateSanitize.SharedPages*' --gtest_brief=1 > $O/racecheck.log 2>&1; echo "rc=$?"; grep -E 'HAZARD|ERROR SUMMARY|RACECHECK SUMMARY' $O/racecheck.log | tail -2
for v in default v5s2 v5s3; do
  el dense $v; timeout 100 build/bin/kvlab_kernel_bench --only dense --quick --version $v --out $O/bench_kernels_$v.tsv > $O/bench_kernels_$v.log 2>&1; echo "rc=$?"; grep 'TABLE dense' $O/bench_kernels_$v.log
done
el torch; timeout 150 python3 experiments/gpu/bench_torch.py --quick --kernels-tsv $O/bench_kernels_default.tsv --out $O/bench_torch.tsv > $O/bench_torch.log 2>&1; echo "rc=$?"; grep -i "TABLE dense\|TABLE.*sdpa" $O/bench_torch.log | head -14
el plans; timeout 120 build/bin/kvlab_kernel_bench --only plans --quick --version v5s2 --out $O/bench_plans_v5s2.tsv > $O/bench_plans_v5s2.log 2>&1; echo "rc=$?"; grep 'TABLE plan' $O/bench_plans_v5s2.log
el done
cd $OUT && tar czf v5.tgz v5 && rm -rf v5
