#!/usr/bin/env bash
# Visit: every gpu test at HEAD (default process, then the candidates' process), memcheck over
# every *Sanitize* test, racecheck over the sparse decode sanitize tests (candidates included).
set -u
mkdir -p /tmp/kv && tar xJf .carry/pack/kvlab.tar.xz -C /tmp/kv
cd /tmp/kv
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
O=$OUT/t; mkdir -p $O; cat REVISION > $O/revision.txt
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
el tests; timeout 200 build/bin/kvlab_gpu_tests --gtest_brief=1 > $O/gpu_tests.log 2>&1; echo "rc=$?" >> $O/gpu_tests.log; grep -E '^\[  (PASSED|FAILED|SKIPPED)|FAILED  \]|rc=' $O/gpu_tests.log | head
el candidates; KVLAB_GPU_CANDIDATES=1 timeout 200 build/bin/kvlab_gpu_tests --gtest_filter='*Candidate*' --gtest_brief=1 > $O/candidate_tests.log 2>&1; echo "rc=$?" >> $O/candidate_tests.log; grep -E '^\[  (PASSED|FAILED|SKIPPED)|FAILED  \]|rc=' $O/candidate_tests.log | head
el memcheck; timeout 150 compute-sanitizer --tool memcheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='*Sanitize*' --gtest_brief=1 > $O/memcheck.log 2>&1; echo "rc=$?"; grep -E 'ERROR SUMMARY|PASSED|FAILED  \]' $O/memcheck.log | tail -3
el racecheck; KVLAB_GPU_CANDIDATES=1 timeout 150 compute-sanitizer --tool racecheck --error-exitcode 99 build/bin/kvlab_gpu_tests --gtest_filter='SparseDecode*Sanitize*' --gtest_brief=1 > $O/racecheck.log 2>&1; echo "rc=$?"; grep -E 'RACECHECK SUMMARY|PASSED|FAILED  \]' $O/racecheck.log | tail -3
el done
cd $OUT && tar czf t.tgz t && rm -rf t
