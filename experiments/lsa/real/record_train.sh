#!/usr/bin/env bash
# LSA on real recordings (issue #11, items 2 and 6; the recording set of #10), in one device
# call: record SmolLM2-135M's attention on the GPU over the RULER-style tasks, train the LSA
# indexer on those recordings only (backbone-free), and replay held-out recordings to compare
# lsa, sliding_window and lsa_oracle at equal footprint. Parts, most important first, each under
# what is left of BUDGET_S (default 560 s); a part that no longer fits is skipped and says so.
#
#   1 record   train set: TASKS × CONTEXTS, TRAIN_A (25) samples of seed 1000 plus TRAIN_B (59)
#              of seed 2000 per cell: 6 × 2 × 84 = 1008 requests at 4K–8K, STEPS (32) steps
#              each; the evaluation set: EVAL (16) samples per cell of seed 0, the seed
#              `kvlab run` evaluates by default (disjoint from training: sample seeds are hashed
#              from the set seed and the sample index). With TEMPLATES set (e.g. "train"), the
#              train set uses `--template-set $TEMPLATES` and a second evaluation set the
#              held-out templates (`--template-set heldout`).
#   2 train    the indexer on every train file (tau 16, window 256, sinks 64, stride 16: the
#              live settings at 4K–8K), timed; then the same on the seed-1000 files alone (300
#              requests) with --query-pool 1 and 8 (the pooling comparison).
#   3 replay   the evaluation set(s): lsa (each indexer), sliding_window and lsa_oracle at 15%.
#   4 layers   LAYERS (default "8 22"): 300 train + the eval requests recorded with
#              --feature-layer L, an indexer trained on them, replayed as in 3 (the middle layer,
#              15, is the main set's).
# Outputs under OUT: summary.txt, results.tgz (logs, indexers, replay JSON, two small sample
# traces for test data); the full recordings stay in WORK (default /tmp/kvlab_real), on the
# device's disk: their size is printed.
#
#   experiments/lsa/real/record_train.sh [OUT]
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../gpu/live_env.sh"
out="${1:-${OUT:-results/lsa_real}}"
work="${WORK:-/tmp/kvlab_real}"
mkdir -p "$out" "$work"
budget="${BUDGET_S:-560}"
tasks="${TASKS:-niah_single niah_multikey niah_multivalue vt cwe fwe}"
contexts="${CONTEXTS:-4096 8000}"
steps="${STEPS:-32}"
train_a="${TRAIN_A:-25}"
train_b="${TRAIN_B:-59}"
n_eval="${EVAL:-16}"
batch="${BATCH:-64}"
backend="${BACKEND:-cuda}"
threads="${THREADS:-$(nproc)}"
templates="${TEMPLATES:-}"
layers="${LAYERS:-8 22}"
parts="${PARTS:-record train replay layers}"
t_start=$(date +%s)
summary="$work/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
want() { [[ " $parts " == *" $1 "* ]]; }
left() { echo $((budget - ($(date +%s) - t_start))); }
pack() {  # everything but recordings, plus the indexers and two small sample recordings
  (cd "$work" && { find . -type f ! -name '*.h5'; ls indexer_*.h5 recordings/sample_*.h5 2>/dev/null; } |
    tar czf "$out/results.tgz.tmp" -T -) && mv "$out/results.tgz.tmp" "$out/results.tgz"
  cp "$summary" "$out/summary.txt"
}
# run NAME MIN_S CMD...: CMD under the budget's remaining time, logged to WORK/logs/NAME.log.
run() {
  local name="$1" min="$2"
  shift 2
  local l
  l=$(left)
  if ((l < min)); then
    note "TABLE $name: skipped ($l s of the budget left, needs $min)"
    return 1
  fi
  mkdir -p "$work/logs"
  local t0
  t0=$(date +%s)
  timeout -k 5 "$l" "$@" >"$work/logs/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(($(date +%s) - t0))s" >>"$work/parts.txt"
  ((rc == 0)) || note "TABLE $name: rc=$rc: $(tail -n 2 "$work/logs/$name.log" | tr '\n' ' ' | head -c 300)"
  return $rc
}
[[ -x "$K" ]] || { echo "record_train: $K missing" >&2; exit 1; }
[[ -f "$model" ]] || { echo "record_train: $model missing" >&2; exit 1; }
tmpl_flag() { [[ -n "$1" ]] && echo "--template-set $1"; }

# record SET LAYER SEED SAMPLES TEMPLATES: one file per (task, context) under recordings/SET.
record_set() {
  local set="$1" layer="$2" seed="$3" samples="$4" tmpl="$5"
  mkdir -p "$work/recordings/$set"
  local t0 n=0
  t0=$(date +%s)
  for task in $tasks; do
    for ctx in $contexts; do
      local f="$work/recordings/$set/${task}_${ctx}.h5"
      [[ -f "$f" ]] && { n=$((n + samples)); continue; }
      # shellcheck disable=SC2046
      run "record_${set}_${task}_${ctx}" 20 "$K" record --model "$model" --backend "$backend" --task "$task" \
        --context-tokens "$ctx" --samples "$samples" --seed "$seed" --steps "$steps" --batch "$batch" \
        --feature-layer "$layer" $(tmpl_flag "$tmpl") --out "$f" || return 1
      n=$((n + samples))
    done
  done
  local sec=$(($(date +%s) - t0))
  note "TABLE record $set: $n requests (layer $layer, seed $seed, templates ${tmpl:-default}) in ${sec} s," \
       "$(du -sh "$work/recordings/$set" | cut -f1) on disk"
}

mid=15
if want record; then
  record_set train_a "$mid" 1000 "$train_a" "$templates"
  pack
  record_set train_b "$mid" 2000 "$train_b" "$templates"
  record_set eval "$mid" 0 "$n_eval" ""
  [[ -n "$templates" ]] && record_set eval_heldout "$mid" 0 "$n_eval" heldout
  first_eval=$(ls "$work"/recordings/eval/*.h5 2>/dev/null | head -n 1)
  [[ -n "$first_eval" ]] && cp "$first_eval" "$work/recordings/sample_eval_$(basename "$first_eval")"
  pack
fi

train_flags=(--tau 16 --window 256 --sinks 64 --stride 16 --threads "$threads")
train() {  # NAME FILES... (extra flags after --)
  local name="$1"
  shift
  local files=() extra=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do files+=("$1"); shift; done
  [[ "${1:-}" == "--" ]] && { shift; extra=("$@"); }
  local t0
  t0=$(date +%s)
  run "train_$name" 30 "$K" indexer train --traces "${files[@]}" "${train_flags[@]}" "${extra[@]}" \
    --out "$work/indexer_$name.h5" || return 1
  note "TABLE train $name: $((${#files[@]})) files, $(($(date +%s) - t0)) s on $threads threads:" \
       "$(grep -E '^  (untrained|trained|bilinear|lsa_oracle)' "$work/logs/train_$name.log" | tr -s ' ' | tr '\n' ';' | head -c 400)"
}
if want train; then
  train all "$work"/recordings/train_a/*.h5 "$work"/recordings/train_b/*.h5
  pack
  train a300_pool8 "$work"/recordings/train_a/*.h5 -- --query-pool 8
  train a300_pool1 "$work"/recordings/train_a/*.h5 -- --query-pool 1
  pack
fi

# replay SET INDEXER...: lsa per indexer, sliding_window and lsa_oracle at 15% on recordings/SET.
replay_set() {
  local set="$1"
  shift
  for f in "$work"/recordings/"$set"/*.h5; do
    local base ctx window
    base=$(basename "$f" .h5)
    ctx=${base##*_}
    window=$((ctx * 15 / 100 - 64))
    local policies=(--policy "sliding_window:window=$window,sinks=64"
                    --policy "lsa_oracle:window=256,sinks=64,budget=0.15,tau=16")
    for idx in "$@"; do
      [[ -f "$work/indexer_$idx.h5" ]] && policies+=(--policy "lsa:indexer=$work/indexer_$idx.h5,window=256,sinks=64,budget=0.15,tau=16")
    done
    run "replay_${set}_$base" 5 "$K" replay --trace "$f" "${policies[@]}" --threads "$threads" --json \
      --out-dir "$work/replay/$set/$base" || true
  done
}
if want replay; then
  replay_set eval all a300_pool8 a300_pool1
  [[ -n "$templates" ]] && replay_set eval_heldout all a300_pool8 a300_pool1
  pack
fi

if want layers; then
  for layer in $layers; do
    record_set "train_l$layer" "$layer" 1000 "$train_a" "$templates" || break
    record_set "eval_l$layer" "$layer" 0 "$n_eval" "" || break
    train "l${layer}_a300" "$work"/recordings/train_l"$layer"/*.h5 -- --query-pool 8 || break
    replay_set "eval_l$layer" "l${layer}_a300"
    pack
  done
fi

python3 - "$work" <<'PY' | tee -a "$summary"
import glob, json, os, sys
work = sys.argv[1]
rows = {}
for path in glob.glob(os.path.join(work, "replay", "*", "*", "results.json")):
    set_name = path.split(os.sep)[-3]
    for r in json.load(open(path)):
        key = (set_name, r["policy"].split(":")[0] + (":" + os.path.basename(r["policy"].split("indexer=")[1].split(",")[0]) if "indexer=" in r["policy"] else ""))
        rows.setdefault(key, []).append(r)
def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None
def f(x):
    return "n/a" if x is None else f"{x:.3f}"
for (set_name, pol), rs in sorted(rows.items()):
    print(f"TABLE replay {set_name:14s} {pol:36s} files {len(rs):2d} footprint {f(mean([r.get('footprint_mean_ratio') for r in rs]))} "
          f"crit.recall {f(mean([r.get('critical_recall') for r in rs]))} mass {f(mean([r.get('mass_recall') for r in rs]))} "
          f"resolved {f(mean([r.get('resolved_fraction') for r in rs]))}")
PY
note "TABLE record_train: $(($(date +%s) - t_start)) s; recordings in $work/recordings: $(du -sh "$work/recordings" 2>/dev/null | cut -f1)"
pack
