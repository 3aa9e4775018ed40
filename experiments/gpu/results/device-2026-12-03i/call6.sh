#!/usr/bin/env bash
# Visit: plans whose items fill their last wave (and need not be a multiple of 4 units under v6):
# dense points (quick and full) beside torch's full run, the waves sweep with 32K x 1 and 128K x 1.
set -u
mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/f; mkdir -p $O; cat REVISION > $O/revision.txt
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
el dense; timeout 60 build/bin/kvlab_kernel_bench --only dense --out $O/dense_full.tsv > $O/dense_full.log 2>&1; echo "rc=$?"; grep "TABLE dense 1" $O/dense_full.log
timeout 120 python3 experiments/gpu/bench_torch.py --kernels-tsv $O/dense_full.tsv --out $O/torch_full.tsv > $O/torch_full.log 2>&1; echo "rc=$?"; grep "TABLE ratio dense" $O/torch_full.log
el plans; timeout 60 build/bin/kvlab_kernel_bench --only plans --quick --out $O/plans.tsv > $O/plans.log 2>&1; echo "rc=$?"; grep "TABLE plan" $O/plans.log
el done
cd $OUT && tar czf f.tgz f && rm -rf f
