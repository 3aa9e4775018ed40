#!/usr/bin/env bash
# Visit: v6's L2 variants (promotion 256 B / none / 128 B, evict-first copies): candidate tests,
# dense points for each beside torch SDPA, ordered slots, plan waves for v6, and L2 counters
# (with write/other sectors and the fabric's sources) for each variant and cuDNN at 512K x 1.
set -u
mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
V=$PWD/.carry/visit
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/a; mkdir -p $O; cat REVISION > $O/revision.txt
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version --format=csv > $O/gpu.txt 2>&1
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
el tests; KVLAB_GPU_CANDIDATES=1 timeout 90 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecode.*:SparseDecodeCandidate.TensorTiles*:SparseDecodeCandidateSanitize.TensorTiles*' --gtest_brief=1 > $O/tests.log 2>&1; echo "rc=$?" >> $O/tests.log; grep -E '^\[  (PASSED|FAILED|SKIPPED)|FAILED  \]|rc=' $O/tests.log | head
for v in v6s2 v6s2np v6s2p128 v6s2ef v6s2npef; do
  el dense $v; timeout 60 build/bin/kvlab_kernel_bench --only dense --quick --version $v --out $O/dense_$v.tsv > $O/dense_$v.log 2>&1; echo "rc=$?"; grep 'TABLE dense 1' $O/dense_$v.log
done
el ordered; timeout 60 build/bin/kvlab_kernel_bench --only dense --quick --version v6s2 --slots ordered --out $O/dense_v6s2_ordered.tsv > $O/dense_v6s2_ordered.log 2>&1; echo "rc=$?"; grep 'TABLE dense 1' $O/dense_v6s2_ordered.log
el plans; timeout 80 build/bin/kvlab_kernel_bench --only plans --quick --version v6s2 --out $O/plans_v6s2.tsv > $O/plans_v6s2.log 2>&1; echo "rc=$?"; grep 'TABLE plan' $O/plans_v6s2.log
el torch; timeout 120 python3 experiments/gpu/bench_torch.py --quick --kernels-tsv $O/dense_v6s2.tsv --out $O/bench_torch.tsv > $O/bench_torch.log 2>&1; echo "rc=$?"; grep -i "TABLE torch dense\|TABLE ratio" $O/bench_torch.log | head -20
el ncu
M="lts__ltcfabric2ltc_cycles_active.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum,lts__t_sectors_op_read.sum,lts__t_sectors_op_write.sum,lts__t_sectors_op_atom.sum,lts__t_sectors_op_red.sum,lts__t_sectors.sum,lts__t_sectors_srcunit_ltcfabric.sum,lts__t_sectors_srcunit_ltcfabric_lookup_hit.sum,lts__t_sectors_srcunit_tex.sum,lts__t_sectors_srcunit_tex_lookup_hit.sum,lts__t_requests_srcunit_tex_op_read.sum,gpu__time_duration.sum"
timeout 60 ncu --clock-control none --metrics $M --nvtx --nvtx-include "sdpa/" python3 $V/sdpa_profile.py 524288 1 > $O/ncu_sdpa_512k.txt 2>&1; echo "sdpa rc=$?"
for v in v6s2 v6s2np v6s2p128 v6s2ef v6s2npef; do
timeout 60 ncu --clock-control none --metrics $M --kernel-name regex:split --launch-skip 2 --launch-count 1 build/bin/kvlab_kernel_bench --only profile --version $v > $O/ncu_${v}_512k.txt 2>&1; echo "$v rc=$?"
done
for f in $O/ncu_*_512k.txt; do echo "== $f"; grep -E "^  [a-zA-Z_].*\(|lts__|dram__|gpu__time" $f | awk '{print $1, $(NF)}' | head -24; done
el done
cd $OUT && tar czf a.tgz a && rm -rf a
