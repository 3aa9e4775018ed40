#!/usr/bin/env bash
# The live comparison table on the GPU: every policy that runs on `--backend cuda` at about 15%
# footprint, next to full attention, on niah_single, niah_multikey, vt and cwe at 4K and 8K
# (8100 prompt tokens: with 16 decoded tokens inside the model's 8K), SAMPLES (100) samples per
# cell. One `kvlab run` per (task, context) runs every policy from one prefill per prompt, 64
# requests in flight. Columns: accuracy, footprint, critical recall, KL(full || policy), top-1
# agreement with full (teacher-forced), and the device's decode rate.
#
# Policies: full, sliding_window (sinks 64, window filling 15%), random, h2o and tova at 15%,
# and lsa at 15% with an indexer trained on the shipped real trace (traces/data, 2K prompts of
# seed 0; the table's prompts use seed SEED, default 1). quest, infllm, snapkv, pyramidkv and
# ada_kv need query/key vectors or a prefill observation, which the GPU decoder does not report
# yet: run them with --backend cpu.
#
#   experiments/gpu/live_table.sh [OUT]     (OUT defaults to $OUT, else results/live_table)
# Environment: SAMPLES (100), CONTEXTS ("4096 8100"), TASKS ("niah_single niah_multikey vt
# cwe"), BATCH (64), POLICIES (specs, space-separated, in place of the six), BACKEND (cuda), BUDGET_S (560: each run gets what is left, so the whole stays in one
# 10-minute device call; runs that no longer fit are skipped and listed). Everything goes into
# WORK (default /tmp/kvlab_live_table) and is packed into OUT/live_table.tgz after every run;
# OUT/table.md is the table so far.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/live_env.sh"
out="${1:-${OUT:-results/live_table}}"
work="${WORK:-/tmp/kvlab_live_table}"
rm -rf "$work"
mkdir -p "$out" "$work"
budget="${BUDGET_S:-560}"
samples="${SAMPLES:-100}"
batch="${BATCH:-64}"
seed="${SEED:-1}"
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
    for p in r:
        print(f"| {task} | {ctx} | {p['policy']} | {f(p['accuracy'], 2)} | {f(p['footprint_mean_ratio'])} | "
              f"{f(p['critical_recall'])} | {f(p['kl_mean'], 4)} | {f(p['top1_agreement'])} | {f(rate, 0)} |")
PY
  tar czf "$out/live_table.tgz.tmp" --exclude='*.h5' -C "$(dirname "$work")" "$(basename "$work")" &&
    mv "$out/live_table.tgz.tmp" "$out/live_table.tgz"
  cp "$work/table.md" "$out/table.md"
}

"$K" indexer train --traces "$root/traces/data/smollm2_niah_single_2k.h5" --window 256 --sinks 64 --tau 16 --stride 4 \
  --epochs 10 --out "$work/indexer_real_2k.h5" --threads 4 >"$work/indexer.log" 2>&1 ||
  echo "live_table: indexer training failed (lsa left out): $(tail -n 1 "$work/indexer.log")" >&2

for ctx in ${CONTEXTS:-4096 8100}; do
  # 15% of the context for the sliding window with its 64 sinks.
  window=$((ctx * 15 / 100 - 64))
  policies=(--policy full --policy "sliding_window:window=$window,sinks=64" --policy random:budget=0.15
            --policy h2o:budget=0.15 --policy tova:budget=0.15)
  [[ -f "$work/indexer_real_2k.h5" ]] &&
    policies+=(--policy "lsa:indexer=$work/indexer_real_2k.h5,window=256,sinks=64,budget=0.15,tau=16")
  if [[ -n "${POLICIES:-}" ]]; then  # space-separated specs in place of the six
    policies=()
    for p in ${POLICIES}; do policies+=(--policy "$p"); done
  fi
  for task in ${TASKS:-niah_single niah_multikey vt cwe}; do
    left=$((budget - ($(date +%s) - t_start)))
    name="${task}_${ctx}"
    if ((left < 30)); then
      echo "$name: skipped ($left s of the budget left)" | tee -a "$work/skipped.txt"
      continue
    fi
    timeout -k 5 "$left" "$K" run --model "$model" --backend "$backend" --task "$task" --context-tokens "$ctx" \
      --samples "$samples" --seed "$seed" --max-tokens 16 "${policies[@]}" --batch "$batch" --json \
      --out-dir "$work/$name" >"$work/$name.log" 2>&1
    echo "$name rc=$? $(($(date +%s) - t_start)) s" | tee -a "$work/runs.txt"
    pack
  done
done
pack
cat "$out/table.md"
echo "live_table: $(($(date +%s) - t_start)) s; runs: $(tr '\n' ';' <"$work/runs.txt")"
