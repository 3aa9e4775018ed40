#!/usr/bin/env bash
# How a refresh turns scores into a selection (policies/lsa.hpp, `select`): top-k within the
# budget, a score threshold (sigmoid > 0.5, as FlashMemory deploys; meaningful for an indexer
# trained with the binary loss), and whole dense pages; for lsa and lsa_oracle, next to a
# sliding window at the same footprint. Footprint counts the summary and index tiers.
#
#   KVLAB=build/bin/kvlab IDX=listwise.h5 IDX_BINARY=binary.h5 TRACES="a.h5 b.h5" OUT=results/selection \
#     experiments/lsa/selection.sh
#
# The LSA window is fixed at 2048 (so a 15% budget leaves room for remote chunks at 32K:
# ~2300 tokens, two pages of 16 chunks); sliding_window gets the whole budget.
set -euo pipefail
KVLAB=${KVLAB:-build/bin/kvlab}
OUT=${OUT:-results/selection}
THREADS=${THREADS:-2}
BUDGET=${BUDGET:-0.15}
: "${IDX:?IDX=a listwise-trained indexer}" "${IDX_BINARY:?IDX_BINARY=an indexer trained with --loss binary}"
: "${TRACES:?TRACES=the traces to replay}"
mkdir -p "$OUT"
for trace in $TRACES; do
  n=$("$KVLAB" trace info "$trace" --json | python3 -c 'import json,sys; r=json.load(sys.stdin)["requests"][0]; print(r["prompt_tokens"] + r["decode_steps"])')
  sw=$(python3 -c "import sys; print(max(0, int($BUDGET * $n) - 64 - 128))")
  base="budget=$BUDGET,window=2048,sinks=64"
  "$KVLAB" replay --trace "$trace" --threads "$THREADS" --json \
    --policy "sliding_window:window=$sw,sinks=64" \
    --policy "lsa:indexer=$IDX,$base" \
    --policy "lsa:indexer=$IDX_BINARY,$base" \
    --policy "lsa:indexer=$IDX_BINARY,$base,select=threshold" \
    --policy "lsa:indexer=$IDX,$base,select=pages,page_chunks=16" \
    --policy "lsa:indexer=$IDX,$base,select=pages,page_chunks=4" \
    --policy "lsa_oracle:$base" \
    --policy "lsa_oracle:$base,select=threshold" \
    --policy "lsa_oracle:$base,select=pages,page_chunks=16" \
    --policy "lsa_oracle:$base,select=pages,page_chunks=4" \
    > "$OUT/$(basename "$trace" .h5).json" 2> "$OUT/$(basename "$trace" .h5).log"
done
python3 - "$OUT" "$IDX_BINARY" $TRACES <<'PY'
import json, os, sys
out, binary, traces = sys.argv[1], sys.argv[2], sys.argv[3:]
def f(v): return "–" if v is None else f"{v:.3f}"
def label(r):
    p = dict(kv.split("=", 1) for kv in r["policy"].split(":", 1)[1].split(","))
    name = r["name"] + (" †" if r["oracle"] else "")
    if r["name"] == "sliding_window":
        return name
    sel = p.get("select", "topk")
    if sel == "pages":
        sel += f" ({p.get('page_chunks', '16')})"
    if r["name"] == "lsa":
        sel += ", binary" if p["indexer"] == binary else ", listwise"
    return f"{name} {sel}"
print("| trace | policy | footprint | critical recall | mass recall | resolved | remote resolved | fetched |")
print("|---|---|---|---|---|---|---|---|")
for t in traces:
    stem = os.path.basename(t)[:-3]
    for r in json.load(open(f"{out}/{stem}.json")):
        print(f"| {stem} | {label(r)} | {f(r['footprint_mean_ratio'])} | {f(r['critical_recall'])} | {f(r['mass_recall'])} | "
              f"{f(r['resolved_fraction'])} | {f(r['remote_resolved_fraction'])} (of {r['remote_requests']}) | "
              f"{r['fetch_bytes'] / 1e6:.0f} MB |")
PY
