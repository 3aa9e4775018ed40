#!/usr/bin/env bash
# The synthetic headline restated per request: at each context, the fraction of mix requests
# that lsa and sliding_window resolve (README, "Resolved requests") at LSA's operating
# footprint, remote requests separately. Uses run_all.sh's operating points and window rules.
#
#   KVLAB=build/bin/kvlab IDX=indexer.h5 OUT=results/headline_resolved experiments/lsa/headline_resolved.sh
#
# Sizes for 2 cores: 128 decode steps (the study: 256), 100 mix requests at 32K, 60 at 128K and
# 20 at 512K (10, 6 and 2 remote: one per block of ten), seed 1001 as the study's test traces.
set -euo pipefail
KVLAB=${KVLAB:-build/bin/kvlab}
OUT=${OUT:-results/headline_resolved}
THREADS=${THREADS:-2}
: "${IDX:?IDX=the indexer checkpoint lsa uses}"
mkdir -p "$OUT/traces" "$OUT/replay"
CONTEXTS=(${CONTEXTS:-32768 131072 524288})
declare -A REQ=([32768]=100 [131072]=60 [524288]=20 [1048576]=10)
SINKS=64
headline_fraction() { case $1 in 32768) echo 0.15 ;; 131072) echo 0.10 ;; 524288) echo 0.05 ;; *) echo 0.03 ;; esac; }
lsa_window() { python3 -c "import sys; f, n = float(sys.argv[1]), int(sys.argv[2]); w = 0.85 * (f * n - n / 128 - 3 * 64); print(max(0, min(8192, int(w) // 64 * 64)))" "$1" "$2"; }
sw_window() { python3 -c "import sys; f, n = float(sys.argv[1]), int(sys.argv[2]); print(max(0, int(f * n) - 64 - 128))" "$1" "$2"; }
for n in "${CONTEXTS[@]}"; do
  trace="$OUT/traces/test_mix_$n.h5"
  storage=auto; [[ $n -ge 524288 ]] && storage=sparse
  [[ -f "$trace" ]] || "$KVLAB" trace gen --workload mix --context-tokens "$n" --steps 128 --requests "${REQ[$n]}" \
    --seed 1001 --storage $storage --out "$trace" >/dev/null
  f=$(headline_fraction "$n"); w=$(lsa_window "$f" "$n")
  "$KVLAB" replay --trace "$trace" --threads "$THREADS" --json --policy full \
    --policy "sliding_window:window=$(sw_window "$f" "$n"),sinks=$SINKS" \
    --policy "lsa_oracle:budget=$f,window=$w,sinks=$SINKS" \
    --policy "lsa:indexer=$IDX,budget=$f,window=$w,sinks=$SINKS" > "$OUT/replay/headline_mix_$n.json"
  echo "context $n done"
done
python3 - "$OUT" "${CONTEXTS[@]}" <<'PY'
import json, sys
out, contexts = sys.argv[1], sys.argv[2:]
def f(v): return "–" if v is None else f"{v:.3f}"
print("| context | policy | footprint | critical recall | resolved (all) | remote resolved | local resolved |")
print("|---|---|---|---|---|---|---|")
for n in contexts:
    for r in json.load(open(f"{out}/replay/headline_mix_{n}.json")):
        name = r["name"] + (" †" if r["oracle"] else "")
        print(f"| {int(n)//1024}K | {name} | {f(r['footprint_mean_ratio'])} | {f(r['critical_recall'])} | "
              f"{f(r['resolved_fraction'])} ({r['resolved_requests']}/{r['remote_requests'] + r['local_requests']}) | "
              f"{f(r['remote_resolved_fraction'])} (of {r['remote_requests']}) | {f(r['local_resolved_fraction'])} (of {r['local_requests']}) |")
PY
