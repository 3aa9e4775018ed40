#!/usr/bin/env bash
# Visit: the benchmarks' warm-up over every rotated set: dense points of kvlab and torch, --quick
# and full, in one visit.
set -u
mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/e; mkdir -p $O; cat REVISION > $O/revision.txt
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
el quick; timeout 60 build/bin/kvlab_kernel_bench --only dense --quick --out $O/dense_quick.tsv > $O/dense_quick.log 2>&1; echo "rc=$?"
timeout 90 python3 experiments/gpu/bench_torch.py --quick --kernels-tsv $O/dense_quick.tsv --out $O/torch_quick.tsv > $O/torch_quick.log 2>&1; echo "rc=$?"; grep "TABLE ratio dense" $O/torch_quick.log
el full; timeout 90 build/bin/kvlab_kernel_bench --only dense --out $O/dense_full.tsv > $O/dense_full.log 2>&1; echo "rc=$?"
timeout 150 python3 experiments/gpu/bench_torch.py --kernels-tsv $O/dense_full.tsv --out $O/torch_full.tsv > $O/torch_full.log 2>&1; echo "rc=$?"; grep "TABLE ratio dense" $O/torch_full.log
el done
cd $OUT && tar czf e.tgz e && rm -rf e
