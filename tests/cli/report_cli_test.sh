#!/usr/bin/env bash
# kvlab report: renders a small sweep (replay: a budget grid with an oracle and a tau sweep;
# live rows added by hand to the merged results) and checks the HTML: one table per source,
# the plots with as many points as cells, frontiers, every cell's config. With chromium present
# it loads the report headless and checks what the browser drew (plots sized, markers counted
# by the page's own script); without chromium that part skips, saying so.
# usage: report_cli_test.sh PATH/TO/kvlab
set -uo pipefail

kvlab="$1"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvlab_report_cli_test.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect_lib.sh"

cat > "${work}/study.toml" <<TOML
out_dir = "${work}/out"
[engine]
threads = 1
[artifact.needle]
command = ["trace", "gen", "--workload", "needle", "--context-tokens", "16384", "--steps", "64", "--requests", "1", "--seed", "5"]
[[source]]
traces = ["@needle"]
[[policy]]
name = "full"
[[policy]]
name = "sliding_window"
window = [1024, 2048, 4096]
sinks = 64
[[policy]]
name = "random"
budget = [0.1, 0.3]
[[policy]]
name = "oracle_topk"
budget = [0.1, 0.3]
[[policy]]
name = "lsa_oracle"
budget = 0.2
window = 1024
tau = [4, 16, 64]
TOML
expect 1 "results.json: missing" -- report "${work}/out"
expect 0 "11 cell(s) done" -- sweep --config "${work}/study.toml"
expect 0 "wrote ${work}/out/report.html" -- report "${work}/out"
expect 2 "usage" -- report
mkdir -p "${work}/bogus" && echo "{}" > "${work}/bogus/results.json"
expect 1 "not a sweep's results" -- report "${work}/bogus"

# The same sweep with live rows: copy the merged results and add two live cells by hand.
cp -r "${work}/out" "${work}/live"
python3 - "${work}/live" <<'PY'
import json, sys, os
d = sys.argv[1]
rows = json.load(open(os.path.join(d, "results.json")))
index = json.load(open(os.path.join(d, "sweep.json")))
for i, (policy, fp, acc) in enumerate([("full", 1.0, 0.9), ("sliding_window:sinks=64,window=512", 0.2, 0.4)]):
    h = "feed%012d" % i
    rows.append({"cell": h, "source": "niah_4k", "kind": "live", "seed": 0, "policy": policy, "name": policy.split(":")[0],
                 "oracle": False, "footprint_mean_ratio": fp, "critical_recall": acc, "mass_recall": acc, "fetch_bytes": 0,
                 "late_fetches": 0, "accuracy": acc, "kl_mean": 0.1, "top1_agreement": 0.8})
    index["cells"].append({"hash": h, "source": "niah_4k", "kind": "live", "policy": policy, "policy_name": policy.split(":")[0],
                           "oracle": False, "seed": 0, "config": {}})
json.dump(rows, open(os.path.join(d, "results.json"), "w"))
json.dump(index, open(os.path.join(d, "sweep.json"), "w"))
PY
expect 0 "wrote" -- report "${work}/live" --out "${work}/live.html"

# Expected plots: per replay source 2 Pareto plots of 11 points and a tau plot of 3; the live
# source adds an accuracy plot: 3 plots of 2 points.
checks=$((checks + 1))
python3 - "${work}/out/report.html" "${work}/live.html" <<'PY' || fail "report structure"
import re, sys
html = open(sys.argv[1]).read()
plots = re.findall(r'<svg class="plot"[^>]*data-points="(\d+)"', html)
assert plots == ["11", "11", "3"], plots
for svg in re.findall(r'<svg class="plot".*?</svg>', html, re.S):
    assert len(re.findall(r'class="pt', svg)) == int(re.search(r'data-points="(\d+)"', svg).group(1))
assert html.count('class="frontier"') == 2 and html.count('class="bound"') == 2, "frontier and oracle bound per Pareto plot"
assert html.count('class="pt oracle"') == 13  # 2 oracle_topk + 3 lsa_oracle per Pareto plot, 3 in the tau plot
assert html.count('<tr id="cell-') == 11 and html.count('git_revision') == 11
assert html.count("<table>") == 2  # the source's table and the cells' table
live = open(sys.argv[2]).read()
plots = re.findall(r'<svg class="plot"[^>]*data-points="(\d+)"', live)
assert plots == ["11", "11", "3", "2", "2", "2"], plots
assert "niah_4k: accuracy against footprint" in live
PY

# A real browser: loads the file, draws every plot, and the page's own count matches.
chromium_bin=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -n "${chromium_bin}" ]]; then
  checks=$((checks + 1))
  browse() { timeout 120 "${chromium_bin}" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
               --user-data-dir="${work}/chromium" "$@" 2>/dev/null; }
  browse --dump-dom "file://${work}/live.html" > "${work}/dom.html"
  grep -o 'id="render-check">[^<]*' "${work}/dom.html" > "${work}/check.txt"
  grep -q 'plots=6 drawn=6 points=31 mismatched=0 per-plot=11,11,3,2,2,2' "${work}/check.txt" ||
    fail "chromium render check: $(cat "${work}/check.txt")"
  browse --screenshot="${work}/shot.png" --window-size=1300,1800 "file://${work}/live.html" >/dev/null
  [[ -s "${work}/shot.png" ]] || fail "chromium wrote no screenshot"
  if [[ -n "${KVLAB_REPORT_SHOT:-}" ]]; then cp "${work}/shot.png" "${KVLAB_REPORT_SHOT}"; cp "${work}/live.html" "${KVLAB_REPORT_SHOT}.html"; fi
else
  echo "skip: headless browser check (no chromium; apt-get install chromium)"
fi

echo "${checks} checks, ${failures} failures"
[[ ${failures} -eq 0 ]]
