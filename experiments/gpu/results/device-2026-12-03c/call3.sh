#!/usr/bin/env bash
# Visit: every gpu test with v6 as the default (default process, then the candidates' process),
# memcheck over every *Sanitize* test, racecheck over the sparse decode sanitize tests (candidates
# included); kernel benchmarks (default: dense, all layers, sparse, top-k; v3 s2 dense) beside torch.
set -u
mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/t; mkdir -p $O; cat REVISION > $O/revision.txt
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version --format=csv > $O/gpu.txt 2>&1
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
el tests; timeout 200 build/bin/kvlab_gpu_tests --gtest_brief=1 > $O/gpu_tests.log 2>&1; echo "rc=$?" >> $O/gpu_tests.log; grep -E '^\[  (PASSED|FAILED|SKIPPED)|FAILED  \]|rc=' $O/gpu_tests.log | head
el candidates; KVLAB_GPU_CANDIDATES=1 timeout 200 build/bin/kvlab_gpu_tests --gtest_filter='*Candidate*' --gtest_brief=1 > $O/candidate_tests.log 2>&1; echo "rc=$?" >> $O/candidate_tests.log; grep -E '^\[  (PASSED|FAILED|SKIPPED)|FAILED  \]|rc=' $O/candidate_tests.log | head
el memcheck; timeout 150 compute-sanitizer --tool memcheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='*Sanitize*' --gtest_brief=1 > $O/memcheck.log 2>&1; echo "rc=$?"; grep -E 'ERROR SUMMARY|PASSED|FAILED  \]' $O/memcheck.log | tail -3
el racecheck; KVLAB_GPU_CANDIDATES=1 timeout 150 compute-sanitizer --tool racecheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecode*Sanitize*' --gtest_brief=1 > $O/racecheck.log 2>&1; echo "rc=$?"; grep -E 'RACECHECK SUMMARY|PASSED|FAILED  \]' $O/racecheck.log | tail -3
el bench; timeout 200 build/bin/kvlab_kernel_bench --quick --out $O/bench_kernels.tsv > $O/bench_kernels.log 2>&1; echo "rc=$?"; grep 'TABLE' $O/bench_kernels.log | head -60
el v3; timeout 100 build/bin/kvlab_kernel_bench --only dense --quick --version v3s2 --out $O/bench_kernels_v3s2.tsv > $O/bench_kernels_v3s2.log 2>&1; echo "rc=$?"; grep 'TABLE dense' $O/bench_kernels_v3s2.log
el torch; timeout 150 python3 experiments/gpu/bench_torch.py --quick --kernels-tsv $O/bench_kernels.tsv --out $O/bench_torch.tsv > $O/bench_torch.log 2>&1; echo "rc=$?"; grep -i "TABLE ratio\|TABLE torch" $O/bench_torch.log | head -30
el done
cd $OUT && tar czf t.tgz t && rm -rf t
