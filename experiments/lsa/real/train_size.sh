#!/usr/bin/env bash
# Indexer recall against training-set size on real recordings (issue #11, item 1: 20, 100, 300,
# 1000 requests): record SmolLM2 over the six RULER-style tasks at CONTEXT tokens, one training
# recording of the largest size (SIZES per task: 4, 17, 50, 167 → 24, 102, 300, 1002 requests;
# seed 3000) whose first 4, 17, ... requests per task are the smaller sets (nested, so the sizes
# differ only in how much was seen), and EVAL (16) held-out requests per task (seed 0, the live
# tables' prompts), train one indexer per size with experiments/lsa/real's labels (tau 16, window 256, sinks 64, stride 16;
# otherwise `kvlab indexer train`'s defaults), then per size: the training's own validation line
# (trained, closed-form bilinear, lsa_oracle), `kvlab indexer eval` on the held-out recordings,
# and a replay of lsa beside lsa_oracle and sliding_window at BUDGET (15%). OUT/summary.md is the table.
#
#   experiments/lsa/real/train_size.sh [OUT]      (on the H200: ~4 min, estimated; BACKEND=cpu works, slowly)
# Environment: BACKEND (cuda), CONTEXT (4096), SIZES ("4 17 50 167"), EVAL (16), STEPS (32),
# BATCH (64), THREADS (all cores), TASKS (the six), WINDOW (256) and BUDGET (0.15) for the labels
# and the replayed policies. Not yet run: the 2026-12-04 visit was refused
# for lack of a device, and the CPU here recorded 19 s a request at 1K (cores shared with CI).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../gpu/live_env.sh"
out="${1:-${OUT:-results/lsa_train_size_real}}"
work="${WORK:-/tmp/kvlab_train_size_real}"
backend="${BACKEND:-cuda}"
context="${CONTEXT:-4096}"
sizes="${SIZES:-4 17 50 167}"
n_eval="${EVAL:-16}"
steps="${STEPS:-32}"
batch="${BATCH:-64}"
threads="${THREADS:-$(nproc)}"
tasks="${TASKS:-niah_single niah_multikey niah_multivalue vt cwe fwe}"
window="${WINDOW:-256}"
budget="${BUDGET:-0.15}"
labels=(--tau 16 --window "$window" --sinks 64 --stride 16)
[[ -x "$K" ]] || { echo "train_size: $K missing" >&2; exit 1; }
[[ -f "$model" ]] || { echo "train_size: $model missing (scripts/fetch-model.sh)" >&2; exit 1; }
mkdir -p "$out/logs" "$out/eval" "$out/replay" "$work"
t0=$(date +%s)
el() { echo "[$(($(date +%s) - t0)) s] $*"; }

record() {  # SET SEED SAMPLES
  mkdir -p "$work/$1"
  for t in $tasks; do
    [[ -f "$work/$1/$t.h5" ]] && continue
    "$K" record --model "$model" --backend "$backend" --task "$t" --context-tokens "$context" --samples "$3" \
      --seed "$2" --steps "$steps" --batch "$batch" --out "$work/$1/$t.h5" >"$out/logs/record_$1_$t.log" 2>&1 ||
      { echo "train_size: record $1 $t failed: $(tail -n 1 "$out/logs/record_$1_$t.log")" >&2; return 1; }
  done
  el "recorded $1: $3 per task, seed $2"
}

record eval 0 "$n_eval" || exit 1
largest=$(tr ' ' '\n' <<<"$sizes" | sort -n | tail -n 1)
record train 3000 "$largest" || exit 1
names=()
declare -A per_task_of
for per_task in $sizes; do
  n=$((per_task * $(wc -w <<<"$tasks")))
  names+=("n$n")
  per_task_of["n$n"]=$per_task
done
policies=(--policy "sliding_window:window=$(python3 -c "print(int($context * $budget) - 64)"),sinks=64"
          --policy "lsa_oracle:window=$window,sinks=64,budget=$budget,tau=16")
eval_traces=()
for f in "$work/eval"/*.h5; do eval_traces+=(--trace "$f"); done
for name in "${names[@]}"; do
  "$K" indexer train --traces "$work/train"/*.h5 --requests-per-trace "${per_task_of[$name]}" "${labels[@]}" \
    --threads "$threads" --out "$work/indexer_$name.h5" \
    >"$out/logs/train_$name.log" 2>&1 || { echo "train_size: training $name failed" >&2; exit 1; }
  "$K" indexer eval --indexer "$work/indexer_$name.h5" "${eval_traces[@]}" --k 8,16,32,64 --json --threads "$threads" \
    >"$out/eval/$name.json" 2>"$out/logs/eval_$name.log" ||
    { echo "train_size: eval $name failed: $(tail -n 1 "$out/logs/eval_$name.log")" >&2; exit 1; }
  policies+=(--policy "lsa:indexer=$work/indexer_$name.h5,window=$window,sinks=64,budget=$budget,tau=16")
  el "trained and evaluated $name"
done
for f in "$work/eval"/*.h5; do
  b=$(basename "$f" .h5)
  "$K" replay --trace "$f" "${policies[@]}" --threads "$threads" --json --out-dir "$out/replay/$b" \
    >"$out/logs/replay_$b.log" 2>&1 || { echo "train_size: replay $b failed" >&2; exit 1; }
done
el replayed
python3 - "$out" "${names[@]}" >"$out/summary.md" <<'PY'
import glob, json, os, sys
out, names = sys.argv[1], sys.argv[2:]
def train_line(name, what):
    for line in open(os.path.join(out, "logs", f"train_{name}.log")):
        if line.strip().startswith(what):
            return " / ".join(line.split()[-4:])
    return "n/a"
print("| training requests | validation recall @8/16/32/64: trained | bilinear | lsa_oracle | held-out recall@16 | replay critical recall (lsa) |")
print("|---|---|---|---|---|---|")
replays = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "replay", "*", "results.json")))]
def replay_mean(pred):
    xs = [r["critical_recall"] for rs in replays for r in rs if pred(r["policy"])]
    return f"{sum(xs) / len(xs):.3f}" if xs else "n/a"
def held_out(name):  # recall@16 pooled over the held-out files (kvlab indexer eval)
    return f"{json.load(open(os.path.join(out, 'eval', f'{name}.json')))['recall@16']:.3f}"
for name in names:
    print(f"| {name[1:]} | {train_line(name, 'trained')} | {train_line(name, 'bilinear')} | {train_line(name, 'lsa_oracle')} | "
          f"{held_out(name)} | {replay_mean(lambda p, n=name: p.startswith('lsa:') and f'indexer_{n}.h5' in p)} |")
print()
print(f"sliding_window: {replay_mean(lambda p: p.startswith('sliding_window'))}, lsa_oracle: {replay_mean(lambda p: p.startswith('lsa_oracle'))}")
PY
cat "$out/summary.md"
el done
