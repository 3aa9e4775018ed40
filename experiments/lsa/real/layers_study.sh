#!/usr/bin/env bash
# Which feature layers, combined how, predict the next τ steps' critical chunks best (issue #11,
# item 2): one recording with the features of three layers (kvlab record --feature-layers), an
# indexer trained on each choice of layers, all compared on held-out recordings of the same
# prompts. The variants:
#
#   l8, l15, l22   one layer (--layers L): the seed's "current hidden states" at that depth
#   concat         layers 15,8,22 side by side, one tower pair (--combine concat)
#   max            a tower pair per layer, the chunk score the max of the three (FlashMemory's
#                  released indexer: the cross-layer max of per-layer scores)
#   sum            a tower pair per layer, the scores summed
#
# Parts (PARTS, default "record train evaluate"), each well under 5 minutes on the H200 at the
# default sizes; WORK keeps what a part made for the next, so they can run in separate calls:
#   record     TASKS × CONTEXTS: TRAIN_A (25) samples of seed 1000 and TRAIN_B (59) of seed 2000
#              per cell (1008 requests at 4K–8K, the set of record_train.sh) and EVAL (16) of
#              seed 0 (held out), STEPS (32) steps each, --feature-layers LAYERS (15,8,22: the
#              middle layer first, in `query` and `chunk_features`, where a one-layer indexer
#              such as results/indexer_real_1008.h5 reads).
#              H200: ~2.5 min (1008 requests took 101 s with one layer).
#   train      one indexer per variant (VARIANTS), tau 16, window 256, sinks 64, stride STRIDE (16) on
#              THREADS threads. H200 host, 16 threads: ~25 s per one-layer variant, about three
#              times that for a three-layer one: ~4.5 min for all six (run "train" twice with
#              VARIANTS="l8 l15 l22" and VARIANTS="concat max sum" to stay far under 5 min).
#   evaluate   per variant, kvlab indexer eval (recall@k on the held-out requests) and replay of
#              the held-out recordings: lsa of each variant, sliding_window (window 15% − 64,
#              sinks 64) and lsa_oracle at a 15% budget. ~1 min.
# Prints a table (also WORK/table.md): validation recall@16 from training, held-out recall@8/16/
# 32/64, replay critical recall and mean footprint, training seconds.
#
#   experiments/lsa/real/layers_study.sh [WORK]
#   (on the CPU, tiny: BACKEND=cpu TASKS="niah_single niah_multikey" CONTEXTS=2048 TRAIN_A=6
#    TRAIN_B=0 EVAL=3 STEPS=48 STRIDE=4 BATCH=1 THREADS=2 experiments/lsa/real/layers_study.sh /tmp/layers)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../gpu/live_env.sh"
work="${1:-${WORK:-/tmp/kvlab_layers}}"
tasks="${TASKS:-niah_single niah_multikey niah_multivalue vt cwe fwe}"
contexts="${CONTEXTS:-4096 8000}"
train_a="${TRAIN_A:-25}"
train_b="${TRAIN_B:-59}"
n_eval="${EVAL:-16}"
steps="${STEPS:-32}"
batch="${BATCH:-64}"
backend="${BACKEND:-cuda}"
threads="${THREADS:-$(nproc)}"
layers="${LAYERS:-15,8,22}"  # the middle layer first: where one-layer readers and indexers look
variants="${VARIANTS:-l8 l15 l22 concat max sum}"
parts="${PARTS:-record train evaluate}"
budget="${BUDGET_S:-0.15}"
stride="${STRIDE:-16}"
mkdir -p "$work/rec" "$work/logs" "$work/idx" "$work/replay" "$work/recall"
[[ -x "$K" ]] || { echo "layers_study: $K missing" >&2; exit 1; }
want() { [[ " $parts " == *" $1 "* ]]; }
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

# record SET SEED SAMPLES: one file per (task, context), skipped when it exists.
record() {
  local set="$1" seed="$2" samples="$3"
  ((samples > 0)) || return 0
  for task in $tasks; do
    for ctx in $contexts; do
      local f="$work/rec/${set}_${task}_${ctx}.h5"
      [[ -f "$f" ]] && continue
      "$K" record --model "$model" --backend "$backend" --task "$task" --context-tokens "$ctx" --samples "$samples" \
        --seed "$seed" --steps "$steps" --batch "$batch" --feature-layers "$layers" --out "$f" \
        >"$work/logs/record_${set}_${task}_${ctx}.log" 2>&1 ||
        { echo "layers_study: record $f failed: $(tail -n 1 "$work/logs/record_${set}_${task}_${ctx}.log")" >&2; exit 1; }
    done
  done
}

# The layers and combine mode of a variant, as indexer train flags.
variant_flags() {
  case "$1" in
    l[0-9]*) echo "--layers ${1#l}" ;;
    concat | max | sum) echo "--layers $layers --combine $1" ;;
    *) echo "layers_study: unknown variant '$1'" >&2; exit 2 ;;
  esac
}

if want record; then
  t0=$(date +%s)
  record train_a 1000 "$train_a"
  record train_b 2000 "$train_b"
  record eval 0 "$n_eval"
  stamp "record: $(ls "$work"/rec/*.h5 | wc -l) files, $(du -sh "$work/rec" | cut -f1), $(($(date +%s) - t0)) s"
fi

if want train; then
  for v in $variants; do
    t0=$(date +%s)
    # shellcheck disable=SC2046
    "$K" indexer train --traces "$work"/rec/train_*.h5 --tau 16 --window 256 --sinks 64 --stride "$stride" \
      --threads "$threads" $(variant_flags "$v") --out "$work/idx/$v.h5" >"$work/logs/train_$v.log" 2>&1 ||
      { echo "layers_study: train $v failed: $(tail -n 1 "$work/logs/train_$v.log")" >&2; exit 1; }
    echo "$(($(date +%s) - t0))" >"$work/logs/train_$v.seconds"
    stamp "train $v: $(cat "$work/logs/train_$v.seconds") s: $(grep '^wrote' "$work/logs/train_$v.log" | cut -c1-160)"
  done
fi

if want evaluate; then
  for f in "$work"/rec/eval_*.h5; do
    base=$(basename "$f" .h5)
    ctx=${base##*_}
    policies=(--policy "sliding_window:window=$((ctx * 15 / 100 - 64)),sinks=64"
              --policy "lsa_oracle:window=256,sinks=64,budget=$budget,tau=16")
    for v in $variants; do
      [[ -f "$work/idx/$v.h5" ]] || continue
      policies+=(--policy "lsa:indexer=$work/idx/$v.h5,window=256,sinks=64,budget=$budget,tau=16")
      mkdir -p "$work/recall/$v"
      "$K" indexer eval --indexer "$work/idx/$v.h5" --trace "$f" --k 8,16,32,64 --json \
        >"$work/recall/$v/$base.json" 2>"$work/logs/eval_${v}_$base.log" ||
        echo "layers_study: indexer eval $v on $base failed: $(tail -n 1 "$work/logs/eval_${v}_$base.log")" >&2
    done
    "$K" replay --trace "$f" "${policies[@]}" --threads "$threads" --json --out-dir "$work/replay/$base" \
      >"$work/logs/replay_$base.log" 2>&1 || echo "layers_study: replay $base failed" >&2
  done
  python3 - "$work" "$variants" <<'PY' | tee "$work/table.md"
import glob, json, os, re, sys
work, variants = sys.argv[1], sys.argv[2].split()
def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None
def f(x):
    return "n/a" if x is None else f"{x:.3f}"
replays = [r for p in sorted(glob.glob(os.path.join(work, "replay", "eval_*", "results.json"))) for r in json.load(open(p))]
def policy_rows(pred):
    return [r for r in replays if pred(r["policy"])]
print("| variant | train s | val recall@16 | held-out recall@8 / @16 / @32 / @64 | replay critical recall | footprint |")
print("|---|---|---|---|---|---|")
for v in variants:
    log = os.path.join(work, "logs", f"train_{v}.log")
    val = re.search(r"val recall@16 ([0-9.]+)", open(log).read()) if os.path.exists(log) else None
    secs = open(os.path.join(work, "logs", f"train_{v}.seconds")).read().strip() if os.path.exists(os.path.join(work, "logs", f"train_{v}.seconds")) else "n/a"
    evals = [json.load(open(p)) for p in glob.glob(os.path.join(work, "recall", v, "*.json")) if os.path.getsize(p) > 0]
    recall = " / ".join(f(mean([e.get(f"recall@{k}") for e in evals])) for k in (8, 16, 32, 64))
    rows = policy_rows(lambda p: p.startswith("lsa:") and f"/idx/{v}.h5" in p)
    print(f"| {v} | {secs} | {val.group(1) if val else 'n/a'} | {recall} | "
          f"{f(mean([r.get('critical_recall') for r in rows]))} | {f(mean([r.get('footprint_mean_ratio') for r in rows]))} |")
for name in ("sliding_window", "lsa_oracle"):
    rows = policy_rows(lambda p: p.startswith(name + ":"))
    print(f"| {name} | | | | {f(mean([r.get('critical_recall') for r in rows]))} | "
          f"{f(mean([r.get('footprint_mean_ratio') for r in rows]))} |")
files = len(glob.glob(os.path.join(work, "replay", "eval_*", "results.json")))
print(f"\nMeans over {files} held-out files (one per task and context), each file's requests averaged first.")
PY
fi
