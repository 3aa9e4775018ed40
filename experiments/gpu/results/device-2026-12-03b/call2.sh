#!/usr/bin/env bash
# Visit: reduction with 512 threads and v7 (default + shared-page candidate tests, sanitizers); dense
# points for default, v6 s2, v7 s2/s3, each with K/V interleaved in a slot and split into two pools,
# beside torch SDPA; ncu of v6 s2 (both layouts) and v7 s2.
set -u
mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
V=$PWD/.carry/visit
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/r2; mkdir -p $O
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version --format=csv > $O/gpu.txt 2>&1
cat REVISION >> $O/gpu.txt
el tests; KVLAB_GPU_CANDIDATES=1 timeout 150 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecode.*:SparseDecodeSanitize.*:SparseDecodeCandidate.Shared*:SparseDecodeCandidateSanitize.Shared*' --gtest_brief=1 > $O/tests.log 2>&1; echo "rc=$?" >> $O/tests.log; grep -E '^\[  (PASSED|FAILED)|FAILED  \]|rc=|Failure' $O/tests.log | head -20
el memcheck; KVLAB_GPU_CANDIDATES=1 timeout 60 compute-sanitizer --tool memcheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecodeSanitize*:SparseDecodeCandidateSanitize.Shared*' --gtest_brief=1 > $O/memcheck.log 2>&1; echo "rc=$?"; grep -E 'ERROR SUMMARY' $O/memcheck.log | tail -1
el racecheck; KVLAB_GPU_CANDIDATES=1 timeout 90 compute-sanitizer --tool racecheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecodeSanitize*:SparseDecodeCandidateSanitize.Shared*' --gtest_brief=1 > $O/racecheck.log 2>&1; echo "rc=$?"; grep -E 'RACECHECK SUMMARY' $O/racecheck.log | tail -1
for v in default v6s2 v7s2 v7s3; do for lay in interleaved split; do
  el dense $v $lay; timeout 100 build/bin/kvlab_kernel_bench --only dense --quick --version $v --layout $lay --out $O/bench_kernels_${v}_$lay.tsv > $O/bench_kernels_${v}_$lay.log 2>&1; echo "rc=$?"; grep 'TABLE dense' $O/bench_kernels_${v}_$lay.log
done; done
el torch; timeout 150 python3 experiments/gpu/bench_torch.py --quick --kernels-tsv $O/bench_kernels_default_interleaved.tsv --out $O/bench_torch.tsv > $O/bench_torch.log 2>&1; echo "rc=$?"; grep -i "TABLE ratio" $O/bench_torch.log | head -14
el ncu; SEC="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats"
for vl in "v6s2 interleaved" "v6s2 split" "v7s2 interleaved"; do set -- $vl; v=$1; lay=$2
timeout 100 ncu --clock-control none $SEC --kernel-name regex:sparse_decode --launch-skip 4 --launch-count 2 build/bin/kvlab_kernel_bench --only profile --version $v --layout $lay > $O/ncu_${v}_512k_$lay.txt 2>&1; echo "ncu rc=$?"
grep -E "^  [a-zA-Z_].*\(|DRAM Throughput|Duration|L2 Hit|Mem Busy|L2 Cache Throughput" $O/ncu_${v}_512k_$lay.txt | cut -c1-110 | head -16
done
el ncu-metrics
M="breakdown:lts__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_requests_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum,lts__t_sectors_op_read.sum,lts__t_sectors.sum,gpu__time_duration.sum"
timeout 100 ncu --clock-control none --metrics $M --nvtx --nvtx-include "sdpa/" python3 $V/sdpa_profile.py 524288 1 > $O/ncu_metrics_sdpa_512k.txt 2>&1; echo "sdpa rc=$?"
for v in v3s2 v6s2 v7s2; do
timeout 100 ncu --clock-control none --metrics $M --kernel-name regex:split --launch-skip 2 --launch-count 1 build/bin/kvlab_kernel_bench --only profile --version $v > $O/ncu_metrics_${v}_512k.txt 2>&1; echo "$v rc=$?"
done
for f in $O/ncu_metrics_*; do echo "== $f"; grep -E "^  [a-zA-Z_].*\(|lts__|dram__|gpu__time" $f | cut -c1-120 | head -40; done
el done
cd $OUT && tar czf r2.tgz r2 && rm -rf r2
