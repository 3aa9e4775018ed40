#!/usr/bin/env bash
# Visit: v6 (tensor-copy tiles) candidate tests + sanitizers; dense points for default (v3) and
# v6 s2/s3/s4 beside torch SDPA; Nsight Compute on v6 s2 at 512K x 1.
set -u
mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
V=$PWD/.carry/visit
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/v6; mkdir -p $O
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version --format=csv > $O/gpu.txt 2>&1
cat REVISION >> $O/gpu.txt
el tests; KVLAB_GPU_CANDIDATES=1 timeout 150 build/bin/kvlab_gpu_tests --gtest_filter='*SharedPages*:SparseDecodeCandidate.EveryShape*:SparseDecode.*' --gtest_brief=1 > $O/candidate_tests.log 2>&1; echo "rc=$?" >> $O/candidate_tests.log; grep -E '^\[  (PASSED|FAILED)|FAILED  \]|rc=|Failure|error' $O/candidate_tests.log | head -30
el memcheck; KVLAB_GPU_CANDIDATES=1 timeout 60 compute-sanitizer --tool memcheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecodeCandidateSanitize.SharedPages*' --gtest_brief=1 > $O/memcheck.log 2>&1; echo "rc=$?"; grep -E 'ERROR SUMMARY' $O/memcheck.log | tail -1
el racecheck; KVLAB_GPU_CANDIDATES=1 timeout 90 compute-sanitizer --tool racecheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecodeCandidateSanitize.SharedPages*' --gtest_brief=1 > $O/racecheck.log 2>&1; echo "rc=$?"; grep -E 'HAZARD|ERROR SUMMARY|RACECHECK SUMMARY' $O/racecheck.log | tail -2
for v in default v6s2 v6s3 v6s4; do
  el dense $v; timeout 100 build/bin/kvlab_kernel_bench --only dense --quick --version $v --out $O/bench_kernels_$v.tsv > $O/bench_kernels_$v.log 2>&1; echo "rc=$?"; grep 'TABLE dense' $O/bench_kernels_$v.log
done
el torch; timeout 150 python3 experiments/gpu/bench_torch.py --quick --kernels-tsv $O/bench_kernels_default.tsv --out $O/bench_torch.tsv > $O/bench_torch.log 2>&1; echo "rc=$?"; grep -i "TABLE dense\|TABLE.*sdpa" $O/bench_torch.log | head -14
el ncu; SEC="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats"
timeout 120 ncu --clock-control none $SEC --kernel-name regex:sparse_decode --launch-skip 4 --launch-count 2 build/bin/kvlab_kernel_bench --only profile --version v6s2 > $O/ncu_v6s2_512k.txt 2>&1; echo "ncu rc=$?"
grep -E "^  [a-zA-Z_].*\(|DRAM Throughput|Memory Throughput|Duration|L2 Hit|Achieved Occupancy|Registers Per|Grid Size|Mem Busy|Dynamic Shared" $O/ncu_v6s2_512k.txt | head -30
el done
cd $OUT && tar czf v6.tgz v6 && rm -rf v6
