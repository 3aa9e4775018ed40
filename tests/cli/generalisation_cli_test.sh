#!/usr/bin/env bash
# experiments/lsa/generalisation/run.sh end to end without the model: given recordings (here
# synthetic needle traces with features, so the test takes seconds), it trains an indexer, replays
# both evaluation sets with lsa, sliding_window and lsa_oracle, writes REPORT.md, and a second
# run redoes nothing; bad options exit 2 before anything runs.
# usage: generalisation_cli_test.sh PATH/TO/kvlab SOURCE_DIR
set -uo pipefail

kvlab="$1"
src="$2"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvlab_generalisation_test.XXXXXX")"
trap '[[ -n "${KEEP:-}" ]] || rm -rf "${work}"' EXIT
export OMP_WAIT_POLICY=passive
source "$(dirname "${BASH_SOURCE[0]}")/expect_lib.sh"
script="${src}/experiments/lsa/generalisation/run.sh"

for set in train heldout train_eval; do
  mkdir -p "${work}/rec/${set}"
done
seed=1
for set in train heldout train_eval; do
  for workload in needle multi_hop; do
    "${kvlab}" trace gen --workload "${workload}" --context-tokens 4096 --steps 24 --requests 3 --seed "${seed}" \
      --d-query 8 --d-key 8 --out "${work}/rec/${set}/${workload}.h5" >/dev/null || fail "trace gen ${set} ${workload}"
    seed=$((seed + 1))
  done
done

study=(--out "${work}/out" --context 4096 --budget 0.15 --live-samples 0 --threads 1
       --train-traces "${work}/rec/train/*.h5" --heldout-traces "${work}/rec/heldout/*.h5"
       --train-eval-traces "${work}/rec/train_eval/*.h5"
       --indexer-flags "--steps 40 --min-steps 20 --eval-every 20 --batch 8 --dim 8 --reference off")
run_study() {
  checks=$((checks + 1))
  KVLAB="${kvlab}" bash "${script}" "$@" >"${work}/out.txt" 2>"${work}/err.txt"
}

run_study "${study[@]}" || fail "run.sh exited $?: $(tail -5 "${work}/err.txt")"
for set in heldout train_eval; do
  for workload in needle multi_hop; do
    json_check "${work}/out/replay/${set}/${workload}.json" \
      '[r["policy"].split(":")[0] for r in d] == ["lsa", "sliding_window", "lsa_oracle"] and d[2]["oracle"] and all(0 < r["critical_recall"] <= 1 for r in d)'
  done
done
# The sliding window gets the footprint LSA measured (LSA need not fill its budget).
json_check "${work}/out/replay/heldout/needle.json" 'abs(d[0]["footprint_mean_ratio"] - d[1]["footprint_mean_ratio"]) < 0.02'
checks=$((checks + 1))
[[ -s "${work}/out/sw_window.txt" ]] || fail "no sw_window.txt"
checks=$((checks + 1))
for heading in "Replay: heldout wording" "Replay: training wording" "heldout against training wording" \
               "| **all** | 6 | lsa |" "| needle | 3 | lsa_oracle (oracle) |" "Indexer training"; do
  grep -qF -- "${heading}" "${work}/out/REPORT.md" || fail "REPORT.md lacks '${heading}'"
done
# The pooled row weights by steps: its recall lies between the two tasks'.
checks=$((checks + 1))
python3 - "${work}/out" <<'PY' || fail "the pooled critical recall is not the steps-weighted mean"
import json, sys
from pathlib import Path
rows = [json.loads(f.read_text())[0] for f in sorted((Path(sys.argv[1]) / "replay/heldout").glob("*.json"))]
mean = sum(r["critical_recall"] * r["steps"] for r in rows) / sum(r["steps"] for r in rows)
report = (Path(sys.argv[1]) / "REPORT.md").read_text()
assert f"| **all** | 6 | lsa | " in report and f"{mean:.3f}" in report, (mean, report)
PY

# Everything is there: a second run trains, calibrates and replays nothing.
run_study "${study[@]}" || fail "second run.sh exited $?"
checks=$((checks + 1))
grep -qE "^(indexer train|replay:|sliding window)" "${work}/err.txt" && fail "a second run redid work: $(cat "${work}/err.txt")"

run_study "${study[@]}" --train-seed 3 --eval-seed 3
[[ $? -eq 2 ]] || fail "equal train and eval seeds: not exit 2"
run_study "${study[@]}" --heldout-traces "${work}/none_*.h5"
[[ $? -eq 2 ]] || fail "a glob matching nothing: not exit 2"
grep -qF "matches no file" "${work}/err.txt" || fail "a glob matching nothing: $(cat "${work}/err.txt")"
# A step that fails stops the run with exit 1, naming its log.
echo "not a trace" >"${work}/bad.h5"
run_study "${study[@]}" --out "${work}/out_bad" --train-traces "${work}/bad.h5"
[[ $? -eq 1 ]] || fail "a failing indexer training: not exit 1"
grep -qF "failed, see ${work}/out_bad/indexer.log" "${work}/err.txt" || fail "a failing step: $(cat "${work}/err.txt")"
run_study --colour blue
[[ $? -eq 2 ]] || fail "an unknown option: not exit 2"

echo "generalisation_cli_test: ${checks} checks, ${failures} failures"
[[ ${failures} -eq 0 ]]
