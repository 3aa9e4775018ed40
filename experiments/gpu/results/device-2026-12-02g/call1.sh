#!/usr/bin/env bash
# Nsight Compute: cuDNN SDPA's kernels and kvlab's split kernel at 512K x 1, the same sections.
set -u
mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
V=$PWD/.carry/visit
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD
O=$OUT/ncu; mkdir -p $O
which ncu > $O/ncu_version.txt 2>&1; ncu --version >> $O/ncu_version.txt 2>&1
SEC="--section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section Occupancy --section LaunchStats --section SchedulerStats --section WarpStateStats"
timeout 200 ncu --clock-control none $SEC --nvtx --nvtx-include "sdpa/" python3 $V/sdpa_profile.py 524288 1 > $O/ncu_sdpa_512k.txt 2>&1; echo "sdpa rc=$?"
timeout 200 ncu --clock-control none $SEC --kernel-name regex:sparse_decode --launch-skip 4 --launch-count 2 build/bin/kvlab_kernel_bench --only profile > $O/ncu_kvlab_512k.txt 2>&1; echo "kvlab rc=$?"
grep -E "^  [a-zA-Z_].*\(|DRAM Throughput|Memory Throughput|Duration|L2 Hit|L1/TEX Hit|Achieved Occupancy|Registers Per|Block Size|Grid Size|Issued Warp|No Eligible|Mem Busy|Max Bandwidth|Dynamic Shared" $O/ncu_sdpa_512k.txt | head -60
echo ======
grep -E "^  [a-zA-Z_].*\(|DRAM Throughput|Memory Throughput|Duration|L2 Hit|L1/TEX Hit|Achieved Occupancy|Registers Per|Block Size|Grid Size|Issued Warp|No Eligible|Mem Busy|Max Bandwidth|Dynamic Shared" $O/ncu_kvlab_512k.txt | head -60
cd $OUT && tar czf ncu.tgz ncu && rm -rf ncu
