#!/usr/bin/env bash
# Per-layer selection (policies/lsa.hpp, `share`): one chunk set every layer holds (share=request)
# against a set per model layer (share=layer) with the same tokens per layer, so the same
# footprint; summary and index tiers counted in both. Replay on the shipped real traces, on the CPU:
#   - smollm2_niah_single_512_layers.h5 (features of layers 8, 15 and 22): lsa with indexers of a
#     tower pair per feature layer (--combine max and sum), trained here on that trace (so the
#     lsa rows are in-sample), and lsa_oracle;
#   - smollm2_gpu_cwe_4k.h5 and smollm2_niah_single_2k.h5 (one feature layer: lsa cannot select
#     per layer there): lsa_oracle only.
# Beside them a sliding window with the budget's tokens (less the sink and two chunk edges).
#
#   KVLAB=build/bin/kvlab OUT=experiments/lsa/results/per_layer experiments/lsa/per_layer.sh
#
# The indexers (about 0.6 MB each) go to WORK, a temporary folder unless given.
#
# The 512-token trace has 8 complete chunks: sinks 0 + window 64 (+ its edges) + summary take
# 196 tokens, so a 15% budget (80 tokens) holds no selection; its budgets are 0.55 (one chunk per
# layer) and 0.65 (two). The longer traces run at ~15% footprint.
set -euo pipefail
KVLAB=${KVLAB:-build/bin/kvlab}
OUT=${OUT:-experiments/lsa/results/per_layer}
THREADS=${THREADS:-2}
DATA=${DATA:-traces/data}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK"
layers="$DATA/smollm2_niah_single_512_layers.h5"

# Indexers: labels as the policy refreshes (window 64, sinks 0, tau 4).
for combine in max sum; do
  nice -n 10 "$KVLAB" indexer train --traces "$layers" --combine "$combine" --window 64 --sinks 0 --tau 4 --stride 2 \
    --steps 200 --reference off --threads "$THREADS" --seed 0 --out "$WORK/layers_$combine.h5" > "$OUT/train_$combine.log" 2>&1
done

# sliding_window with the budget's tokens at the request's full length, less the sink and two chunk edges.
window_for() {  # trace budget sinks
  local n
  n=$("$KVLAB" trace info "$1" --json | python3 -c 'import json,sys; r=json.load(sys.stdin)["requests"][0]; print(r["prompt_tokens"] + r["decode_steps"])')
  python3 -c "print(max(0, int($2 * $n) - $3 - 128))"
}

for budget in 0.55 0.65; do
  base="budget=$budget,window=64,sinks=0,tau=4"
  nice -n 10 "$KVLAB" replay --trace "$layers" --threads "$THREADS" --json \
    --policy "sliding_window:window=$(window_for "$layers" $budget 0),sinks=0" \
    --policy "lsa:indexer=$WORK/layers_max.h5,$base" --policy "lsa:indexer=$WORK/layers_max.h5,$base,share=layer" \
    --policy "lsa:indexer=$WORK/layers_sum.h5,$base" --policy "lsa:indexer=$WORK/layers_sum.h5,$base,share=layer" \
    --policy "lsa_oracle:$base" --policy "lsa_oracle:$base,share=layer" \
    > "$OUT/layers_512_budget$budget.json" 2> "$OUT/layers_512_budget$budget.log"
done

# The one-layer traces: budget 0.18 (4K) and 0.2 (2K) give a ~15% mean footprint with window 128.
for spec in "smollm2_gpu_cwe_4k 0.18" "smollm2_niah_single_2k 0.2"; do
  read -r stem budget <<< "$spec"
  trace="$DATA/$stem.h5"
  for tau in 8 16; do
    base="budget=$budget,window=128,sinks=64,tau=$tau"
    nice -n 10 "$KVLAB" replay --trace "$trace" --threads "$THREADS" --json \
      --policy "sliding_window:window=$(window_for "$trace" "$budget" 64),sinks=64" \
      --policy "lsa_oracle:$base" --policy "lsa_oracle:$base,share=layer" \
      > "$OUT/${stem}_tau$tau.json" 2> "$OUT/${stem}_tau$tau.log"
  done
done

find "$OUT" -name '*.log' -empty -delete  # keep only the logs that say something
python3 - "$OUT" <<'PY' | tee "$OUT/TABLE.md"
import glob, json, os, sys
out = sys.argv[1]
def label(r):
    if r["name"] == "sliding_window":
        return "sliding_window, window " + r["policy"].split("window=")[1].split(",")[0]
    p = dict(kv.split("=", 1) for kv in r["policy"].split(":", 1)[1].split(","))
    name = r["name"] + (" †" if r["oracle"] else "")
    if r["name"] == "lsa":
        name += " " + os.path.basename(p["indexer"])[len("layers_"):-3]
    return f"{name}, share={p.get('share', 'request')}"
print("| trace | settings | policy | footprint | critical recall | mass recall | fetched |")
print("|---|---|---|---|---|---|---|")
for path in sorted(glob.glob(f"{out}/*.json")):
    stem = os.path.basename(path)[:-5]
    rows = json.load(open(path))
    lsa = next(r for r in rows if r["name"] == "lsa_oracle")
    p = dict(kv.split("=", 1) for kv in lsa["policy"].split(":", 1)[1].split(","))
    settings = f"budget {p['budget']}, window {p['window']}, sinks {p['sinks']}, tau {p['tau']}"
    for r in rows:
        print(f"| {stem.rsplit('_', 1)[0]} | {settings} | {label(r)} | {r['footprint_mean_ratio']:.3f} | "
              f"{r['critical_recall']:.4f} | {r['mass_recall']:.4f} | {r['fetch_bytes'] / 1e6:.1f} MB |")
PY
