#!/usr/bin/env bash
# Tests of the kvlab executable as a user sees it: --help of every subcommand, exit codes
# (0 ok, 1 failure, 2 usage), one-line error messages naming the file/flag/parameter at fault,
# JSON/CSV outputs, atomic result files and thread-count independence.
# usage: cli_test.sh PATH/TO/kvlab
set -uo pipefail

kvlab="$1"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvlab_cli_test.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect_lib.sh"

# ---- help and usage ---------------------------------------------------------------------
expect 0 "usage: kvlab" -- --help
expect 0 "kvlab " -- --version
expect 2 "unknown command 'frobnicate'" -- frobnicate
checks=$((checks + 1))
"${kvlab}" >/dev/null 2>&1
[[ $? -eq 2 ]] || fail "kvlab without arguments should exit 2"
for sub in "trace gen" "trace info" "trace validate" "trace stats" replay policies "policy check" demo bench; do
  # shellcheck disable=SC2086
  expect 0 "usage: kvlab ${sub}" -- ${sub} --help
done
expect 0 "gen" -- trace --help
expect 2 "trace: unknown subcommand 'frob'" -- trace frob
expect 2 "unknown policy subcommand 'frob'" -- policy frob --policy full

# ---- traces -----------------------------------------------------------------------------
trace="${work}/mix.h5"
expect 0 "wrote ${trace}" -- trace gen --workload mix --context-tokens 4096 --steps 16 --requests 3 --seed 7 \
  --out "${trace}"
[[ -f "${trace}" ]] || fail "trace gen did not create ${trace}"
ls "${work}" | grep -q 'tmp' && fail "trace gen left a temporary file: $(ls "${work}")"
expect 0 "smollm2-135m" -- trace info "${trace}"
expect 0 "" -- trace info "${trace}" --json
cp "${work}/out.txt" "${work}/info.json"
json_check "${work}/info.json" 'len(d["requests"]) == 3 and d["geometry"]["chunk_tokens"] == 64'
json_check "${work}/info.json" 'all(r["qk_dim"] == 0 and r["prefill_window"] == 0 for r in d["requests"])'
# The zoo's optional inputs show in trace info: qk_dim and the prefill window.
qk_trace="${work}/qk.h5"
expect 0 "wrote ${qk_trace}" -- trace gen --workload needle --context-tokens 2048 --steps 4 --requests 1 --seed 3 \
  --qk-dim 16 --prefill-window 8 --out "${qk_trace}"
expect 0 "qk_dim  prefill" -- trace info "${qk_trace}"
expect 0 "" -- trace info "${qk_trace}" --json
cp "${work}/out.txt" "${work}/qk_info.json"
json_check "${work}/qk_info.json" 'd["requests"][0]["qk_dim"] == 16 and d["requests"][0]["prefill_window"] == 8'
expect 0 "valid" -- trace validate "${trace}"
expect 0 "" -- trace stats "${trace}" --window 1024 --sinks 64
expect 0 "" -- trace stats "${trace}" --json
cp "${work}/out.txt" "${work}/stats.json"
json_check "${work}/stats.json" 'len(d["requests"]) == 3 and d["window_tokens"] == 8192'

expect 2 "--workload" -- trace gen --workload nosuch --out "${work}/x.h5"
expect 2 "--context-tokens" -- trace gen --context-tokens lots --out "${work}/x.h5"
expect 2 "--out" -- trace gen --workload mix
expect 2 "--heads" -- trace gen --heads some --out "${work}/x.h5"
expect 2 "--bogus" -- trace gen --bogus 1 --out "${work}/x.h5"
expect 2 "unexpected argument" -- trace info "${trace}" extra
expect 2 "missing argument FILE" -- trace info
expect 1 "${work}/missing.h5" -- trace info "${work}/missing.h5"
echo "this is not an HDF5 file" >"${work}/garbage.h5"
expect 1 "${work}/garbage.h5" -- trace info "${work}/garbage.h5"
expect 1 "${work}/garbage.h5" -- trace validate "${work}/garbage.h5"
expect 1 "${work}/garbage.h5" -- replay --trace "${work}/garbage.h5" --policy full

# ---- policies ---------------------------------------------------------------------------
expect 0 "sliding_window" -- policies
grep -q "^full" "${work}/out.txt" || fail "kvlab policies does not list full"
grep -q "window (int, default 8192)" "${work}/out.txt" || fail "kvlab policies does not show parameter defaults"
expect 0 "PASS" -- policy check --policy sliding_window
expect 0 "4/4 checks passed" -- policy check --policy oracle_topk:budget=0.2 --trace "${trace}" --requests 2 --steps 16
expect 1 "nosuch.h5" -- policy check --policy full --trace "${work}/nosuch.h5"
expect 2 "unknown policy 'nosuch'" -- policy check --policy nosuch
expect 2 "--policy" -- policy check

# ---- replay -----------------------------------------------------------------------------
expect 0 "sliding_window:sinks=64,window=1024" -- replay --trace "${trace}" --policy full \
  --policy sliding_window:window=1024
expect 0 "" -- replay --trace "${trace}" --policy full --policy sliding_window:window=1024 --json --threads 1
cp "${work}/out.txt" "${work}/r1.json"
json_check "${work}/r1.json" 'len(d) == 2 and all(k in d[0] for k in ["policy","oracle","requests","steps","footprint_mean_ratio","footprint_peak_bytes","full_peak_bytes","critical_recall","mass_recall","fetch_bytes","late_fetches"])'
json_check "${work}/r1.json" 'd[0]["requests"] == 3 and d[0]["steps"] == 48 and abs(d[0]["footprint_mean_ratio"] - 1) < 1e-9 and abs(d[0]["critical_recall"] - 1) < 1e-9'
json_check "${work}/r1.json" 'd[1]["footprint_mean_ratio"] < 0.5 and d[1]["oracle"] is False'
json_check "${work}/r1.json" 'd[0]["resolved_fraction"] == 1 and d[0]["resolved_requests"] == 3 and d[0]["resolved_recall"] == 0.95 and d[0]["remote_requests"] + d[0]["local_requests"] == 3'
expect 0 "" -- replay --trace "${trace}" --policy full --policy sliding_window:window=1024 --json --threads 3
checks=$((checks + 1))
cmp -s "${work}/out.txt" "${work}/r1.json" || fail "replay results depend on --threads"

out_dir="${work}/run"
expect 0 "" -- replay --trace "${trace}" --policy sliding_window --csv "${work}/r.csv" --out-dir "${out_dir}" \
  --critical-mass 0.8 --link-gbps=25 --resolved-recall 0.9
for f in results.csv results.json config.json; do
  checks=$((checks + 1))
  [[ -s "${out_dir}/${f}" ]] || fail "--out-dir did not write ${f}"
done
checks=$((checks + 1))
ls "${out_dir}" "${work}" | grep -q '\.tmp\.' && fail "temporary files left behind: $(ls "${out_dir}")"
checks=$((checks + 1))
head -1 "${work}/r.csv" | grep -q '^policy,name,oracle,requests,steps,footprint_mean_ratio' ||
  fail "CSV header: $(head -1 "${work}/r.csv")"
checks=$((checks + 1))
cmp -s "${work}/r.csv" "${out_dir}/results.csv" || fail "--csv and --out-dir results.csv differ"
json_check "${out_dir}/config.json" 'd["engine"]["critical_mass"] == 0.8 and d["engine"]["link_bytes_per_s"] == 25e9'
json_check "${out_dir}/config.json" 'd["engine"]["resolved_recall"] == 0.9 and d["engine"]["resolved_step_share"] == 0.99'
json_check "${out_dir}/results.json" 'd[0]["resolved_recall"] == 0.9'
json_check "${out_dir}/config.json" 'd["policies"][0]["spec"] == "sliding_window:sinks=64,window=8192" and d["trace"]["path"].endswith("mix.h5")'
json_check "${out_dir}/config.json" '"git_revision" in d and "kvlab_version" in d and d["geometry"]["model"] == "smollm2-135m"'
json_check "${out_dir}/config.json" 'd["flags"]["critical-mass"] == ["0.8"] and d["flags"]["threads"] == ["0"]'

expect 2 "--bogus" -- replay --trace "${trace}" --policy full --bogus
expect 2 "--resolved-recall must be in (0, 1]" -- replay --trace "${trace}" --policy full --resolved-recall 1.5
expect 2 "--trace" -- replay --policy full
expect 2 "--policy" -- replay --trace "${trace}"
expect 2 "unknown policy 'nosuch'" -- replay --trace "${trace}" --policy nosuch
expect 2 "nokey" -- replay --trace "${trace}" --policy sliding_window:nokey=3
expect 2 "window" -- replay --trace "${trace}" --policy sliding_window:window=wide
expect 2 "--critical-mass" -- replay --trace "${trace}" --policy full --critical-mass 1.5
expect 2 "--critical-mass" -- replay --trace "${trace}" --policy full --critical-mass abc
expect 2 "--threads" -- replay --trace "${trace}" --policy full --threads -1
expect 2 "--json takes no value" -- replay --trace "${trace}" --policy full --json=yes
expect 2 "--trace given more than once" -- replay --trace "${trace}" --trace "${trace}" --policy full
expect 1 "${work}/missing.h5" -- replay --trace "${work}/missing.h5" --policy full
echo "a file, not a folder" >"${work}/afile"
expect 1 "${work}/afile/r.csv" -- replay --trace "${trace}" --policy full --csv "${work}/afile/r.csv"

# ---- demo (small) -----------------------------------------------------------------------
expect 0 "oracle_topk" -- demo --out-dir "${work}/demo" --requests 2 --context-tokens 4096 --steps 16
# Two workloads, each with its own result files; the table leaves out default parameters and
# a summary compares the recall of the window, lsa and the oracles across them.
for w in mix needle; do
  for f in results.csv results.json config.json; do
    checks=$((checks + 1))
    [[ -s "${work}/demo/${w}/${f}" ]] || fail "demo did not write ${w}/${f}"
  done
  json_check "${work}/demo/${w}/config.json" "d['workload']['workload'] == '${w}'"
done
json_check "${work}/demo/mix/results.json" 'len(d) >= 3 and all(r["requests"] == 2 for r in d)'
# 10% of 4096 tokens = 409 tokens, minus the 64 sink tokens.
json_check "${work}/demo/mix/results.json" 'any(r["policy"] == "sliding_window:sinks=64,window=345" for r in d)'
json_check "${work}/demo/needle/results.json" 'all(r["footprint_mean_ratio"] <= 0.1 + 0.02 for r in d if ":budget=" in r["policy"] or "budget=0.1" in r["policy"])'
checks=$((checks + 1))
grep -qE '^sliding_window:window=345 ' "${work}/out.txt" || fail "demo table: no 'sliding_window:window=345' row"
checks=$((checks + 1))
grep -qE '^critical recall by workload:' "${work}/out.txt" || fail "demo: no recall summary by workload"
expect 2 "--workloads: 'mix' given twice" -- demo --out-dir "${work}/demo" --workloads mix,mix
expect 2 "--workload: unknown workload 'haystack'" -- demo --out-dir "${work}/demo" --workloads mix,haystack

# ---- bench (tiny) -----------------------------------------------------------------------
expect 0 "ratio" -- bench --cache-dir "${work}/bench" --context-tokens 8192 --steps 8 --multi-requests 2 \
  --multi-context-tokens 4096
json_check "${work}/bench/bench.json" 'd["single"]["ratio"] > 0 and d["single"]["cells"] == 8 * 30 * 129 and d["multi"]["requests"] == 2'

echo "cli_test: ${checks} checks, ${failures} failed"
[[ ${failures} -eq 0 ]]
