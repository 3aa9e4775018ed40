#!/usr/bin/env bash
# The live comparison table on the GPU (issue #10) and LSA's claim in kvlab's terms (issue #11,
# item 5): every policy that runs on `--backend cuda` at about 15% footprint, next to full
# attention, on TASKS at 4K and 8K (8100 prompt tokens: with 16 decoded tokens inside the
# model's 8K), SAMPLES (100) samples per cell. One `kvlab run` per (task, context) runs every
# policy from one prefill per prompt, 64 requests in flight. Columns: accuracy, footprint,
# critical recall, KL(full || policy), top-1 agreement with full (teacher-forced), and the
# device's decode rate. Then, per task and context, LSA's accuracy minus full's, and the mean
# footprint and accuracy delta over the cells (the report's 13.5% / +0.6% form).
#
# Policies: full, sliding_window (sinks 64, window filling 15%), random, h2o and tova at 15%
# (with their prompt scores, the default, from the decoder's prefill observation), with ZOO=1
# also quest, infllm, snapkv, pyramidkv, ada_kv (which need the GPU decoder's query/key vectors
# and prefill observation) and h2o and tova without prompt scores (prompt_scores=false, the
# ablation; the tables before 2026-12-02 ran them so), and lsa at 15% with the indexer INDEXER (an
# indexer checkpoint, e.g. one trained by experiments/lsa/real/record_train.sh on real GPU
# recordings; without it, and without POLICIES, one trained here on the shipped 2K trace). With
# several lsa settings in POLICIES, the claim table names each and sums it up on its own line. The prompts use seed SEED
# (default 0; the recordings that train indexers use seeds 1000 and 2000).
#
#   experiments/gpu/live_table.sh [OUT]     (OUT defaults to $OUT, else results/live_table)
# Environment: SAMPLES (100), CONTEXTS ("4096 8100"), TASKS ("niah_single niah_multikey
# niah_multivalue vt cwe fwe"), BATCH (64), ZOO (0), INDEXER, LSA_PARAMS ("window=256,sinks=64,
# budget=0.15,tau=16"), TEMPLATES (a --template-set for the prompts, if this kvlab has it),
# POLICIES (specs, space-separated, in place of all the above), BACKEND (cuda), BUDGET_S (560:
# each run gets what is left, so the whole stays in one 10-minute device call; runs that no
# longer fit are skipped and listed). Everything goes into WORK (default /tmp/kvlab_live_table)
# and is packed into OUT/live_table.tgz after every run; OUT/table.md is the table so far.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/live_env.sh"
out="${1:-${OUT:-results/live_table}}"
work="${WORK:-/tmp/kvlab_live_table}"
rm -rf "$work"
mkdir -p "$out" "$work"
budget="${BUDGET_S:-560}"
samples="${SAMPLES:-100}"
batch="${BATCH:-64}"
seed="${SEED:-0}"
backend="${BACKEND:-cuda}"
t_start=$(date +%s)
[[ -x "$K" ]] || { echo "live_table: $K missing" >&2; exit 1; }
[[ -f "$model" ]] || { echo "live_table: $model missing (scripts/fetch-model.sh)" >&2; exit 1; }

pack() {
  python3 - "$work" >"$work/table.md" <<'PY'
import json, os, sys
work = sys.argv[1]
def f(x, d=3):
    return "n/a" if x is None else f"{x:.{d}f}"
claim = []
print("| task | context | policy | accuracy | footprint | crit. recall | KL(full‖p) | top-1 | decode tok/s (device, in passes) |")
print("|---|---|---|---|---|---|---|---|---|")
for cell in sorted(os.listdir(work)):
    d = os.path.join(work, cell)
    try:
        r = json.load(open(os.path.join(d, "results.json")))
        c = json.load(open(os.path.join(d, "config.json")))
    except (OSError, ValueError, NotADirectoryError):
        continue
    task, ctx = cell.rsplit("_", 1)
    rate = c.get("device", {}).get("decode_tokens_per_s_in_passes")
    full = next((p for p in r if p['policy'] == 'full'), None)
    for p in r:
        print(f"| {task} | {ctx} | {p['policy']} | {f(p['accuracy'], 2)} | {f(p['footprint_mean_ratio'])} | "
              f"{f(p['critical_recall'])} | {f(p['kl_mean'], 4)} | {f(p['top1_agreement'])} | {f(rate, 0)} |")
        if p['policy'].startswith('lsa:') and full and p['accuracy'] is not None and full['accuracy'] is not None:
            # Other lsa settings of the run are not the policies the claim compares against.
            best = max((q['accuracy'] for q in r if q['policy'] != 'full' and not q['policy'].startswith('lsa:')
                        and q['accuracy'] is not None), default=None)
            claim.append((task, ctx, p['footprint_mean_ratio'], p['accuracy'] - full['accuracy'],
                          None if best is None else best - p['accuracy'], p['policy']))
if claim:
    # Several lsa settings in one run: a column names each (its spec without the indexer's path),
    # and each gets its own summary line.
    specs = list(dict.fromkeys(c[5] for c in claim))
    def short(spec):
        return ",".join(kv for kv in spec.split(":", 1)[1].split(",") if not kv.startswith("indexer="))
    several = len(specs) > 1
    print()
    print("| task | context |" + (" lsa setting |" if several else "") +
          " lsa footprint | lsa accuracy − full | best other policy's accuracy − lsa's |")
    print("|---|---|" + ("---|" if several else "") + "---|---|---|")
    for task, ctx, fp, delta, best, spec in claim:
        print(f"| {task} | {ctx} |" + (f" {short(spec)} |" if several else "") + f" {f(fp)} | {delta:+.3f} | "
              f"{'n/a' if best is None else f'{best:+.3f}'} |")
    for spec in specs:
        cells = [c for c in claim if c[5] == spec]
        n = len(cells)
        print(f"\nLSA{' (' + short(spec) + ')' if several else ''} over {n} cells: mean footprint "
              f"{sum(c[2] for c in cells) / n:.3f}, mean accuracy delta vs full {sum(c[3] for c in cells) / n:+.4f}; "
              f"cells within 0.02 of full: {sum(1 for c in cells if round(c[3], 9) >= -0.02)}/{n}")
PY
  tar czf "$out/live_table.tgz.tmp" --exclude='*.h5' -C "$(dirname "$work")" "$(basename "$work")" &&
    mv "$out/live_table.tgz.tmp" "$out/live_table.tgz"
  cp "$work/table.md" "$out/table.md"
}

indexer="${INDEXER:-}"
if [[ -z "$indexer" && -z "${POLICIES:-}" ]]; then  # POLICIES names its own indexers
  indexer="$work/indexer_real_2k.h5"
  "$K" indexer train --traces "$root/traces/data/smollm2_niah_single_2k.h5" --window 256 --sinks 64 --tau 16 \
    --stride 4 --out "$indexer" --threads 4 >"$work/indexer.log" 2>&1 ||
    echo "live_table: indexer training failed (lsa left out): $(tail -n 1 "$work/indexer.log")" >&2
fi
lsa_params="${LSA_PARAMS:-window=256,sinks=64,budget=0.15,tau=16}"
template_flags=()
[[ -n "${TEMPLATES:-}" ]] && template_flags=(--template-set "$TEMPLATES")

for ctx in ${CONTEXTS:-4096 8100}; do
  # 15% of the context for the sliding window with its 64 sinks.
  window=$((ctx * 15 / 100 - 64))
  policies=(--policy full --policy "sliding_window:window=$window,sinks=64" --policy random:budget=0.15
            --policy h2o:budget=0.15 --policy tova:budget=0.15)
  [[ "${ZOO:-0}" == 1 ]] &&
    policies+=(--policy quest:budget=0.15 --policy "infllm:budget=0.15,sinks=64,window=$((window / 4))"
               --policy snapkv:budget=0.15 --policy pyramidkv:budget=0.15 --policy ada_kv:budget=0.15
               --policy h2o:budget=0.15,prompt_scores=false --policy tova:budget=0.15,prompt_scores=false)
  [[ -f "$indexer" ]] && policies+=(--policy "lsa:indexer=$indexer,$lsa_params")
  if [[ -n "${POLICIES:-}" ]]; then  # space-separated specs in place of the six
    policies=()
    for p in ${POLICIES}; do policies+=(--policy "$p"); done
  fi
  for task in ${TASKS:-niah_single niah_multikey niah_multivalue vt cwe fwe}; do
    left=$((budget - ($(date +%s) - t_start)))
    name="${task}_${ctx}"
    if ((left < 30)); then
      echo "$name: skipped ($left s of the budget left)" | tee -a "$work/skipped.txt"
      continue
    fi
    timeout -k 5 "$left" "$K" run --model "$model" --backend "$backend" --task "$task" --context-tokens "$ctx" \
      --samples "$samples" --seed "$seed" --max-tokens 16 "${policies[@]}" "${template_flags[@]}" --batch "$batch" --json \
      --out-dir "$work/$name" >"$work/$name.log" 2>&1
    echo "$name rc=$? $(($(date +%s) - t_start)) s" | tee -a "$work/runs.txt"
    pack
  done
done
pack
cat "$out/table.md"
echo "live_table: $(($(date +%s) - t_start)) s; runs: $(tr '\n' ';' <"$work/runs.txt")"
