#!/usr/bin/env bash
# experiments/lsa/run_study_sharded.sh end to end on a tiny study of study_quick.toml's shape
# (make_study.py's windows and grid, 1-2 requests per trace): artifacts in rounds, cells on 2
# shards, merged results identical to one `kvlab sweep` process, the evals, REPORT.md with every
# section; a SIGTERM mid-run stops its shards and a second run completes with the same results;
# its progress (cells, indexers) is packed; a finished run re-run builds and computes nothing.
# usage: lsa_sharded_test.sh PATH/TO/kvlab SOURCE_DIR
set -uo pipefail

kvlab="$1"
src="$2"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvlab_lsa_sharded_test.XXXXXX")"
trap '[[ -n "${KEEP:-}" ]] || rm -rf "${work}"' EXIT
export OMP_WAIT_POLICY=passive
source "$(dirname "${BASH_SOURCE[0]}")/expect_lib.sh"
script="${src}/experiments/lsa/run_study_sharded.sh"

# The quick study's grid (fractions, contexts, taus, the six indexers) with the fewest requests.
python3 - "${src}/experiments/lsa" "${work}/tiny.toml" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import make_study
s = dict(make_study.SIZES["quick"])
s.update(mix_req={32768: 1, 131072: 1}, mix_steps={32768: 96, 131072: 96}, single_req=1, single_steps=96,
         train_mix32=1, train_rem32=2, ablation_rem32=1)
make_study.SIZES["tiny"] = s
make_study.write("tiny", sys.argv[2])
PY
# Indexer training in the tiny study: one epoch.
sed -i 's/"--epochs", "10"/"--epochs", "1"/' "${work}/tiny.toml"

run() {  # run OUT_DIR RESULTS: the script on 2 shards
  KVLAB="${kvlab}" JOBS=2 OUT_DIR="$1" RESULTS="$2" PACK="${work}/pack.tgz" bash "${script}" "${work}/tiny.toml"
}

# ---- interrupted, then resumed -----------------------------------------------------------------
checks=$((checks + 1))
KVLAB="${kvlab}" JOBS=2 OUT_DIR="${work}/sharded" RESULTS="${work}/committed" PACK="${work}/first.tgz" \
  bash "${script}" "${work}/tiny.toml" >"${work}/first.txt" 2>&1 &
pid=$!
for _ in $(seq 1 3000); do  # SIGTERM once the cells run
  grep -q "^\[[0-9]* s\] cells:" "${work}/first.txt" 2>/dev/null && break
  kill -0 "${pid}" 2>/dev/null || break
  sleep 0.1
done
kill -TERM "${pid}" 2>/dev/null
wait "${pid}"
rc=$?
if grep -q "^\[[0-9]* s\] done" "${work}/first.txt"; then
  echo "note: the first run finished before SIGTERM (rc ${rc}); the resume path was not exercised"
elif [[ ${rc} -ne 1 ]] || ! grep -q "stopped;" "${work}/first.txt"; then
  fail "SIGTERM: expected exit 1 and 'stopped;', got ${rc}: $(tail -3 "${work}/first.txt")"
fi
if grep -q "stopped;" "${work}/first.txt"; then  # the progress packed: indexers and their stamps, no traces
  checks=$((checks + 1))
  tar tzf "${work}/first_partial.tgz" > "${work}/partial.txt" 2>&1 || fail "no progress pack after SIGTERM"
  for stamp in "${work}"/sharded/artifacts/indexer*.json; do  # every indexer built, with its stamp
    listed="${stamp#/}"  # tar lists the paths without their leading /
    grep -q "${listed}$" "${work}/partial.txt" && grep -q "${listed%.json}.h5$" "${work}/partial.txt" ||
      fail "progress pack lacks $(basename "${stamp%.json}")"
  done
  ! grep -q "test_mix_32768.h5$" "${work}/partial.txt" || fail "progress pack holds a trace"
fi
checks=$((checks + 1))
sleep 0.5
if pgrep -f "kvlab sweep --config ${work}/tiny.toml" >/dev/null; then fail "shards still run after SIGTERM"; fi
checks=$((checks + 1))
run "${work}/sharded" "${work}/committed" >"${work}/second.txt" 2>&1 || fail "resumed run failed: $(tail -5 "${work}/second.txt")"
grep -q "done$" "${work}/second.txt" || fail "resumed run did not finish: $(tail -3 "${work}/second.txt")"

# ---- the same cells as one kvlab sweep process ---------------------------------------------------
checks=$((checks + 1))
"${kvlab}" sweep --config "${work}/tiny.toml" --out-dir "${work}/single" --threads 1 >/dev/null 2>"${work}/single.txt" ||
  fail "single-process sweep failed: $(tail -2 "${work}/single.txt")"
# Equal but for the artifact paths in the lsa specs (the folders differ).
sed "s|${work}/single/|${work}/sharded/|g" "${work}/single/results.json" > "${work}/single_as_sharded.json"
cmp -s "${work}/single_as_sharded.json" "${work}/sharded/results.json" || fail "sharded results differ from one process's"
cmp -s "${work}/sharded/results.json" "${work}/committed/results.json" || fail "RESULTS/results.json is not the sweep's"
json_check "${work}/sharded/results.json" 'len(d) == 112'

# ---- the report: every section from the sweep, evals of every indexer ----------------------------
checks=$((checks + 1))
for section in "## 1. Headline" "### mix, 128K tokens" "## 2. Footprint vs recall" "### diffuse, 32K tokens" \
               "## 3. τ sweep" "### multi_needle_32768" "## 4. Indexer alone" "| test_needle_32768 |" \
               "## 5. Indexer recipe" "| \`small_mlp_skip\` |" "## 6. Targets"; do
  grep -qF -- "${section}" "${work}/committed/REPORT.md" || fail "REPORT.md lacks '${section}'"
done
checks=$((checks + 1))
[[ $(ls "${work}/committed/eval" | wc -l) -eq 7 && $(ls "${work}/committed/ablation" | wc -l) -eq 24 ]] ||
  fail "expected 7 evals and 24 ablation evals: $(ls "${work}/committed/eval" "${work}/committed/ablation" | tr '\n' ' ')"
checks=$((checks + 1))
tar tzf "${work}/pack.tgz" > "${work}/pack.txt"
grep -q "committed/REPORT.md" "${work}/pack.txt" || fail "the pack lacks REPORT.md"
# The cells regroup as run_all.sh's replay files; the tau table holds the four taus, the headline lsa
# row its operating point at 32K (15%).
checks=$((checks + 1))
SRC="${src}" python3 - "${work}/committed/REPORT.md" <<'PY' || fail "REPORT.md tables are not the study's cells"
import json, os, re, sys
# run_all.sh's replay files, regrouped from the cells: every step's rows and no others.
sys.path.insert(0, os.path.join(os.environ["SRC"], "analysis"))
import lsa_report
rows = json.load(open(os.path.join(os.path.dirname(sys.argv[1]), "results.json")))
groups, fractions = lsa_report.sweep_groups(rows, "quick")
sizes = {k: len(v) for k, v in groups.items()}
want = {f"sweep_{s}": 1 + 5 * len(fractions) for s in ["mix_32768", "mix_131072", "local_32768", "needle_32768",
                                                        "multi_needle_32768", "multi_hop_32768", "diffuse_32768"]}
want.update({"headline_mix_32768": 6, "headline_mix_131072": 6, "tau_mix_32768": 4, "tau_multi_needle_32768": 4})
want.update({f"ablation_{w}_32768": 6 for w in ["needle", "multi_needle", "multi_hop", "diffuse"]})
assert sizes == want, sizes
md = open(sys.argv[1]).read()
tau = md.split("### mix_32768", 1)[1].split("###", 1)[0]
assert [int(t) for t in re.findall(r"^\| (\d+) \|", tau, re.M)] == [1, 16, 64, 256], tau
head = md.split("### mix, 32K tokens", 1)[1].split("###", 1)[0]
assert re.search(r"^\| lsa:budget=0\.15,sinks=64,tau=64,window=3776 \|", head, re.M), head
PY

# ---- a finished run, run again, builds and computes nothing --------------------------------------
checks=$((checks + 1))
eval_stamp=$(stat -c %Y.%i "${work}/sharded/eval/test_mix_32768.json")
run "${work}/sharded" "${work}/committed" >"${work}/third.txt" 2>&1 || fail "third run failed: $(tail -3 "${work}/third.txt")"
if grep -q "round" "${work}/third.txt" || ! grep -q "112 done, 0 to run" "${work}/third.txt" ||
   [[ "$(stat -c %Y.%i "${work}/sharded/eval/test_mix_32768.json")" != "${eval_stamp}" ]]; then
  fail "a finished study, run again, did work: $(cat "${work}/third.txt")"
fi

# ---- bad input: one line, exit 2 ----------------------------------------------------------------
checks=$((checks + 1))
out=$(KVLAB="${kvlab}" JOBS=0 bash "${script}" "${work}/tiny.toml" 2>&1)
[[ $? -eq 2 && "${out}" == *"JOBS=0 must be a positive integer"* ]] || fail "JOBS=0: ${out}"
checks=$((checks + 1))
out=$(KVLAB="${kvlab}" bash "${script}" "${work}/none.toml" 2>&1)
[[ $? -eq 2 && "${out}" == *"none.toml: no such study"* ]] || fail "missing study: ${out}"

echo "${checks} checks, ${failures} failures"
[[ ${failures} -eq 0 ]]
