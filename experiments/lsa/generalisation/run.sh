#!/usr/bin/env bash
# Does LSA's indexer carry over to wording it never saw? (issue #11, item 4)
#
# 1. Record real traces under full attention (kvlab record) in three sets, per task:
#      train/       --template-set train,   --seed TRAIN_SEED  (the indexer's training data)
#      heldout/     --template-set heldout, --seed EVAL_SEED   (no template in common with train)
#      train_eval/  --template-set train,   --seed EVAL_SEED   (training wording, unseen prompts)
#    or take existing recordings (--train-traces, --heldout-traces, --train-eval-traces: globs).
# 2. Train one indexer on every train/ recording (kvlab indexer train).
# 3. Replay the two evaluation sets: lsa against sliding_window (with sinks) and lsa_oracle at
#    the same footprint (kvlab replay): footprint, critical recall, resolved fraction per task and
#    over all tasks (steps-weighted recall, request-weighted resolved fraction). LSA and its
#    oracle get --budget; the sliding window gets the footprint LSA measured on the first heldout
#    recording (--sw-window W sets it instead), since LSA need not fill its budget.
# 4. Live (unless --live-samples 0): kvlab run on the needle tasks with --template-set heldout
#    and, for comparison, train, both at EVAL_SEED: accuracy of full, lsa and sliding_window.
# report.py writes OUT/REPORT.md from what is there. Every stage is skipped when its output
# exists (a replay or live run: when it exists for the same policies), so a killed run continues
# where it stopped.
#
# usage: experiments/lsa/generalisation/run.sh [--out DIR] [--backend cpu|cuda] [--tasks "T ..."]
#          [--context N] [--train-samples N] [--eval-samples N] [--steps N] [--train-seed S]
#          [--eval-seed S] [--budget F] [--chunk-tokens N] [--sinks N] [--tau N] [--stride N]
#          [--batch N] [--live-tasks "T ..."] [--live-samples N] [--max-tokens N]
#          [--train-traces GLOB] [--heldout-traces GLOB] [--train-eval-traces GLOB]
#          [--indexer-flags "..."] [--baseline-traces GLOB | --baseline-indexer FILE] [--lsa-window W]
#          [--sw-window W] [--feature-layer L] [--threads N]
# --baseline-traces GLOB trains a second indexer the same way on other recordings (e.g. of the
# default wording, what kvlab's earlier indexers saw) into OUT/indexer_baseline.h5;
# --baseline-indexer FILE takes a trained one. Either adds a second lsa, the same but for its
# indexer, to every replay and live run: how much the varied training wording buys.
# Defaults are the GPU-size study (README.md); the CPU smoke run there is tiny.
set -euo pipefail
KVLAB=${KVLAB:-build/bin/kvlab}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=results/lsa_generalisation
BACKEND=cpu
TASKS="niah_single niah_multikey niah_multivalue vt cwe fwe"
CONTEXT=4096
TRAIN_SAMPLES=100
EVAL_SAMPLES=20
STEPS=32
TRAIN_SEED=1
EVAL_SEED=2
BUDGET=0.15
CHUNK=64
SINKS=64
TAU=16
STRIDE=4
BATCH=1
LIVE_TASKS="niah_single niah_multikey niah_multivalue"
LIVE_SAMPLES=20
MAX_TOKENS=64  # room for four UUID-like values (niah_multivalue); a run ends at its stop token
TRAIN_GLOB=""
HELDOUT_GLOB=""
TRAIN_EVAL_GLOB=""
INDEXER_FLAGS=""
BASELINE_INDEXER=""
BASELINE_GLOB=""
SW_WINDOW=""
LSA_WINDOW=""
FEATURE_LAYER=""
THREADS=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT=$2 ;;
    --backend) BACKEND=$2 ;;
    --tasks) TASKS=$2 ;;
    --context) CONTEXT=$2 ;;
    --train-samples) TRAIN_SAMPLES=$2 ;;
    --eval-samples) EVAL_SAMPLES=$2 ;;
    --steps) STEPS=$2 ;;
    --train-seed) TRAIN_SEED=$2 ;;
    --eval-seed) EVAL_SEED=$2 ;;
    --budget) BUDGET=$2 ;;
    --chunk-tokens) CHUNK=$2 ;;
    --sinks) SINKS=$2 ;;
    --tau) TAU=$2 ;;
    --stride) STRIDE=$2 ;;
    --batch) BATCH=$2 ;;
    --live-tasks) LIVE_TASKS=$2 ;;
    --live-samples) LIVE_SAMPLES=$2 ;;
    --max-tokens) MAX_TOKENS=$2 ;;
    --train-traces) TRAIN_GLOB=$2 ;;
    --heldout-traces) HELDOUT_GLOB=$2 ;;
    --train-eval-traces) TRAIN_EVAL_GLOB=$2 ;;
    --indexer-flags) INDEXER_FLAGS=$2 ;;
    --baseline-indexer) BASELINE_INDEXER=$2 ;;
    --baseline-traces) BASELINE_GLOB=$2 ;;
    --sw-window) SW_WINDOW=$2 ;;
    --lsa-window) LSA_WINDOW=$2 ;;
    --feature-layer) FEATURE_LAYER=$2 ;;
    --threads) THREADS=$2 ;;
    *) echo "run.sh: unknown option $1 (see the usage at the top of the script)" >&2; exit 2 ;;
  esac
  shift 2
done
if [[ "$TRAIN_SEED" == "$EVAL_SEED" ]]; then
  echo "run.sh: --train-seed and --eval-seed must differ (evaluation prompts must be unseen)" >&2
  exit 2
fi
mkdir -p "$OUT"

# LSA's fixed part (sinks, the window plus a chunk at each edge, one summary entry per 128
# tokens, a little index) must fit the budget: half of what is left goes to the window, half to
# the selection (--lsa-window W sets it instead).
[[ -n "$LSA_WINDOW" ]] || LSA_WINDOW=$(python3 -c "
left = $BUDGET * $CONTEXT - $SINKS - 2 * $CHUNK - $CONTEXT / 128 - 8
print(max($CHUNK, int(left / 2 // $CHUNK) * $CHUNK))")
INDEXER="$OUT/indexer.h5"
LSA="lsa:indexer=$INDEXER,budget=$BUDGET,window=$LSA_WINDOW,sinks=$SINKS,tau=$TAU"
ORACLE="lsa_oracle:budget=$BUDGET,window=$LSA_WINDOW,sinks=$SINKS,tau=$TAU"
extra_policies=()
if [[ -n "$BASELINE_GLOB" && -n "$BASELINE_INDEXER" ]]; then
  echo "run.sh: give --baseline-traces or --baseline-indexer, not both" >&2
  exit 2
fi
[[ -z "$BASELINE_GLOB" ]] || BASELINE_INDEXER="$OUT/indexer_baseline.h5"
if [[ -n "$BASELINE_INDEXER" ]]; then
  if [[ -z "$BASELINE_GLOB" && ! -f "$BASELINE_INDEXER" ]]; then
    echo "run.sh: --baseline-indexer $BASELINE_INDEXER: no such file" >&2
    exit 2
  fi
  BASELINE="lsa:indexer=$BASELINE_INDEXER,budget=$BUDGET,window=$LSA_WINDOW,sinks=$SINKS,tau=$TAU"
  extra_policies=(--policy "$BASELINE")
fi
backend_flags=()
[[ "$BACKEND" == cpu ]] || backend_flags=(--backend "$BACKEND")
# The layer whose hidden state gives the query and chunk features: recordings and live runs must
# agree (kvlab's default unless given).
[[ -z "$FEATURE_LAYER" ]] || backend_flags+=(--feature-layer "$FEATURE_LAYER")

cat > "$OUT/settings.json" <<EOF
{"backend": "$BACKEND", "tasks": "$TASKS", "context": $CONTEXT, "train_samples": $TRAIN_SAMPLES,
 "eval_samples": $EVAL_SAMPLES, "steps": $STEPS, "train_seed": $TRAIN_SEED, "eval_seed": $EVAL_SEED,
 "feature_layer": "$FEATURE_LAYER", "budget": $BUDGET, "chunk_tokens": $CHUNK, "sinks": $SINKS, "tau": $TAU, "stride": $STRIDE,
 "lsa": "$LSA", "lsa_oracle": "$ORACLE", "sw_window_flag": "$SW_WINDOW", "live_tasks": "$LIVE_TASKS",
 "live_samples": $LIVE_SAMPLES, "max_tokens": $MAX_TOKENS, "indexer_flags": "$INDEXER_FLAGS",
 "baseline_indexer": "$BASELINE_INDEXER", "baseline_traces": "$BASELINE_GLOB", "train_traces": "$TRAIN_GLOB", "heldout_traces": "$HELDOUT_GLOB", "train_eval_traces": "$TRAIN_EVAL_GLOB"}
EOF

# ---- 1. recordings ---------------------------------------------------------------------------
# A failed step names its log and shows its end before the run stops.
failed() {  # log
  echo "run.sh: failed, see $1:" >&2
  tail -n 3 "$1" >&2
  exit 1
}
record() {  # set-folder template-set seed samples task
  local file="$OUT/traces/$1/$5.h5"
  [[ -f "$file" ]] && return
  mkdir -p "$OUT/traces/$1"
  echo "record: $1/$5 ($4 prompts, --template-set $2, --seed $3)" >&2
  "$KVLAB" record "${backend_flags[@]}" --task "$5" --template-set "$2" --seed "$3" --samples "$4" \
    --context-tokens "$CONTEXT" --steps "$STEPS" --chunk-tokens "$CHUNK" --batch "$BATCH" --threads "$THREADS" \
    --out "$file" > "$OUT/traces/$1/$5.log" 2>&1 || failed "$OUT/traces/$1/$5.log"
}
# A set's files: the caller's glob, else this run's recordings of it (recorded here, in the
# main shell, so that a failed recording stops the run).
collect() {  # array-name glob set-folder template-set seed samples
  local -n files=$1
  files=()
  if [[ -n "$2" ]]; then
    mapfile -t files < <(compgen -G "$2" || true)
    [[ ${#files[@]} -gt 0 ]] || { echo "run.sh: '$2' matches no file" >&2; exit 2; }
    return
  fi
  for task in $TASKS; do
    record "$3" "$4" "$5" "$6" "$task"
    files+=("$OUT/traces/$3/$task.h5")
  done
}
collect train_traces "$TRAIN_GLOB" train train "$TRAIN_SEED" "$TRAIN_SAMPLES"
collect heldout_traces "$HELDOUT_GLOB" heldout heldout "$EVAL_SEED" "$EVAL_SAMPLES"
collect train_eval_traces "$TRAIN_EVAL_GLOB" train_eval train "$EVAL_SEED" "$EVAL_SAMPLES"

# ---- 2. the indexer(s) -----------------------------------------------------------------------
train_indexer() {  # out log trace...
  local out=$1 log=$2
  shift 2
  [[ -f "$out" ]] && return
  echo "indexer train: $# recording(s) -> $out (window $LSA_WINDOW, sinks $SINKS, tau $TAU)" >&2
  # shellcheck disable=SC2086  # INDEXER_FLAGS is a list of flags
  "$KVLAB" indexer train --traces "$@" --out "$out" --window "$LSA_WINDOW" --sinks "$SINKS" --tau "$TAU" \
    --stride "$STRIDE" --threads "$THREADS" $INDEXER_FLAGS > "$log" 2>&1 || failed "$log"
}
train_indexer "$INDEXER" "$OUT/indexer.log" "${train_traces[@]}"
if [[ -n "$BASELINE_GLOB" ]]; then
  collect baseline_traces "$BASELINE_GLOB"
  train_indexer "$BASELINE_INDEXER" "$OUT/indexer_baseline.log" "${baseline_traces[@]}"
fi

# The sliding window at LSA's footprint: sinks plus a window of whole chunks holding the tokens
# LSA keeps on average, measured by replaying lsa alone on the first heldout recording (kept in
# OUT/sw_window.txt, so a resumed run compares the same policies).
if [[ -z "$SW_WINDOW" ]]; then
  if [[ ! -s "$OUT/sw_window.txt" ]]; then
    footprint=$("$KVLAB" replay --trace "${heldout_traces[0]}" --policy "$LSA" --threads "$THREADS" --json |
      python3 -c "import json, sys; print(json.load(sys.stdin)[0]['footprint_mean_ratio'])")
    python3 -c "
w = round(($footprint * $CONTEXT - $SINKS) / $CHUNK) * $CHUNK
print(max($CHUNK, int(w)))" > "$OUT/sw_window.txt"
    echo "sliding window at lsa's footprint $footprint: window $(cat "$OUT/sw_window.txt")" >&2
  fi
  SW_WINDOW=$(cat "$OUT/sw_window.txt")
fi
SW="sliding_window:window=$SW_WINDOW,sinks=$SINKS"
policies=(--policy "$LSA" --policy "$SW" --policy "$ORACLE" "${extra_policies[@]}")
live_policies=(--policy full --policy "$LSA" --policy "$SW" "${extra_policies[@]}")

# A result is done when it exists and was made with the same policies.
done_for() {  # json policies
  [[ -s "$1" && -f "$1.policies" && "$(cat "$1.policies")" == "$2" ]]
}

# ---- 3. replay -------------------------------------------------------------------------------
replay_set() {  # folder trace...
  local set=$1
  shift
  mkdir -p "$OUT/replay/$set"
  for trace in "$@"; do
    local name
    name=$(basename "$trace" .h5)
    local json="$OUT/replay/$set/$name.json"
    done_for "$json" "${policies[*]}" && continue
    echo "replay: $set/$name" >&2
    "$KVLAB" replay --trace "$trace" "${policies[@]}" --threads "$THREADS" \
      --json --out-dir "$OUT/replay/$set/$name" > "$json.tmp"
    mv "$json.tmp" "$json"
    echo "${policies[*]}" > "$json.policies"
  done
}
replay_set heldout "${heldout_traces[@]}"
replay_set train_eval "${train_eval_traces[@]}"

# ---- 4. live ---------------------------------------------------------------------------------
if [[ "$LIVE_SAMPLES" -gt 0 ]]; then
  for set in heldout train; do
    mkdir -p "$OUT/live/$set"
    for task in $LIVE_TASKS; do
      json="$OUT/live/$set/$task.json"
      done_for "$json" "${live_policies[*]}" && continue
      echo "run: $set/$task ($LIVE_SAMPLES prompts, --template-set $set, --seed $EVAL_SEED)" >&2
      "$KVLAB" run "${backend_flags[@]}" --task "$task" --template-set "$set" --seed "$EVAL_SEED" \
        --samples "$LIVE_SAMPLES" --context-tokens "$CONTEXT" --max-tokens "$MAX_TOKENS" --chunk-tokens "$CHUNK" \
        --batch "$BATCH" --threads "$THREADS" --agreement off "${live_policies[@]}" \
        --json --out-dir "$OUT/live/$set/$task" > "$json.tmp" 2> "$OUT/live/$set/$task.log" ||
        failed "$OUT/live/$set/$task.log"
      mv "$json.tmp" "$json"
      echo "${live_policies[*]}" > "$json.policies"
    done
  done
fi

python3 "$HERE/report.py" "$OUT"
echo "wrote $OUT/REPORT.md" >&2
