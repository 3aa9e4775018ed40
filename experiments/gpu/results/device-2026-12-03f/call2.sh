#!/usr/bin/env bash
# Visit: the new v6 default (no L2 promotion, evict-first copies, reduction as a programmatic
# dependent launch): every gpu test, candidates, memcheck and racecheck (device-check stages),
# dense A/B against v6 s3, the serial reduction, no hint and the old 256-byte promotion; plan
# waves; attention benchmarks (dense, all layers, sparse) and top-k beside torch; L2 counters.
set -u
mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
V=$PWD/.carry/visit
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/b; mkdir -p $O; cat REVISION > $O/revision.txt
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
for v in default v6s3 v6s2serial v6s2nohint v6s2p256; do
  el dense $v; timeout 60 build/bin/kvlab_kernel_bench --only dense --quick --version $v --out $O/dense_$v.tsv > $O/dense_$v.log 2>&1; echo "rc=$?"; grep 'TABLE dense 1' $O/dense_$v.log
done
el plans; timeout 80 build/bin/kvlab_kernel_bench --only plans --quick --out $O/plans_default.tsv > $O/plans_default.log 2>&1; echo "rc=$?"; grep 'TABLE plan' $O/plans_default.log
el bench; timeout 150 build/bin/kvlab_kernel_bench --quick --out $O/bench_kernels.tsv > $O/bench_kernels.log 2>&1; echo "rc=$?"; grep 'TABLE dense\|TABLE sparse\|TABLE topk' $O/bench_kernels.log | head -60
el torch; timeout 150 python3 experiments/gpu/bench_torch.py --quick --kernels-tsv $O/bench_kernels.tsv --out $O/bench_torch.tsv > $O/bench_torch.log 2>&1; echo "rc=$?"; grep -i "TABLE torch dense\|TABLE ratio\|TABLE torch topk" $O/bench_torch.log | head -40
el ncu
M="lts__ltcfabric2ltc_cycles_active.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum,lts__t_sectors_srcunit_ltcfabric.sum,lts__t_sectors.sum,gpu__time_duration.sum"
timeout 60 ncu --clock-control none --metrics $M --kernel-name regex:sparse_decode --launch-skip 4 --launch-count 2 build/bin/kvlab_kernel_bench --only profile > $O/ncu_default_512k.txt 2>&1; echo "ncu rc=$?"
grep -E "^  [a-zA-Z_].*\(|lts__|dram__|gpu__time" $O/ncu_default_512k.txt | awk '{print $1, $(NF)}' | head -24
for stage in tests candidates sanitizer; do
  el $stage; timeout 200 scripts/device-check.sh --build-dir build --out $O/dc_$stage --only $stage > /dev/null 2>&1; echo "rc=$?"; cat $O/dc_$stage/summary.txt
done
el done
cd $OUT && tar czf b.tgz b && rm -rf b
