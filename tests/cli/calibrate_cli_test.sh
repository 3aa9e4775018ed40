#!/usr/bin/env bash
# kvlab calibrate: recovers a known timing model from a synthetic per-step CSV, predicts a
# held-out CSV, and refuses bad files with one line naming the file, line and column.
set -u
kvlab="$1"
work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect_lib.sh"

# Steps made with HBM 2 TB/s, overhead 500 us, link 40 GB/s (footprints 1..20 GB); the policy
# column is quoted with commas inside, as replay writes specs, and step 0 is a 10 s warm-up
# that the fit must skip.
make_csv() {  # make_csv FILE SEED
  python3 - "$1" "$2" <<'PY'
import random, sys
random.seed(int(sys.argv[2]))
with open(sys.argv[1], "w") as f:
    f.write("policy,request,step,footprint_bytes,step_seconds,fetch_bytes,fetch_seconds\n")
    for i in range(200):
        fp = random.randint(1, 20) * 10**9
        fb = random.randint(0, 64) * 2**20
        t = 10.0 if i == 0 else (fp / 2e12 + 500e-6) * (1 + random.gauss(0, 0.01))
        f.write(f'"lsa:budget=0.2,window=2048",0,{i},{fp},{t},{fb},{fb / 40e9}\n')
PY
}
if command -v python3 >/dev/null; then
  make_csv "${work}/a.csv" 1
  make_csv "${work}/b.csv" 2
  expect 0 "" -- calibrate --steps "${work}/a.csv" --check "${work}/b.csv" --json
  cp "${work}/out.txt" "${work}/fit.json"
  json_check "${work}/fit.json" "abs(d['hbm_tbps'] - 2.0) < 0.05 and abs(d['step_overhead_us'] - 500) < 50"
  json_check "${work}/fit.json" "abs(d['link_gbps'] - 40) < 1e-6 and d['steps'] == 199"
  json_check "${work}/fit.json" "d['checks'][0]['error']['median_relative'] < 0.02"
  json_check "${work}/fit.json" "d['checks'][0]['default_model_error']['median_relative'] > 0.2"
  expect 0 "--hbm-tbps 2" -- calibrate --steps "${work}/a.csv"
fi

printf 'footprint_bytes,step_seconds,fetch_bytes\n1,2,3\n' >"${work}/nocol.csv"
expect 1 "missing column 'fetch_seconds'" -- calibrate --steps "${work}/nocol.csv"
printf 'footprint_bytes,step_seconds,fetch_bytes,fetch_seconds\n1,2,3,4\n5,x,7,8\n' >"${work}/bad.csv"
expect 1 "bad.csv:3: column 'step_seconds'" -- calibrate --steps "${work}/bad.csv"
printf 'footprint_bytes,step_seconds,fetch_bytes,fetch_seconds\n1,2,3,4\n' >"${work}/one.csv"
expect 1 "at least 2 measured steps" -- calibrate --steps "${work}/one.csv"
expect 1 "cannot open" -- calibrate --steps "${work}/missing.csv"
expect 2 "--steps" -- calibrate

echo "calibrate CLI: ${checks} checks, ${failures} failures"
[[ ${failures} -eq 0 ]]
