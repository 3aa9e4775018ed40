#!/usr/bin/env bash
# LSA (Lookahead Sparse Attention) study: footprint vs recall, a tau sweep, the headline
# figures and the speed targets, on held-out synthetic traces. See experiments/lsa/README.md.
#
#   KVLAB=build/bin/kvlab OUT=results/lsa experiments/lsa/run_all.sh [--quick]
#
# Train seeds (1-99) and test seeds (1001+) never overlap. Every step writes JSON under $OUT;
# analysis/lsa_report.py turns them into $OUT/REPORT.md (+ PNG plots with matplotlib).
set -euo pipefail

KVLAB=${KVLAB:-build/bin/kvlab}
OUT=${OUT:-results/lsa}
THREADS=${THREADS:-2}
QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$arg' (--quick)" >&2; exit 2 ;;
  esac
done
[[ -x "$KVLAB" ]] || { echo "run_all.sh: KVLAB=$KVLAB is not an executable (build kvlab first)" >&2; exit 2; }
KVLAB=$(cd "$(dirname "$KVLAB")" && pwd)/$(basename "$KVLAB")
mkdir -p "$OUT"/traces "$OUT"/replay "$OUT"/eval
TR="$OUT/traces"

# ---- sizes ---------------------------------------------------------------------------------
if [[ $QUICK == 1 ]]; then
  CONTEXTS=(32768 131072)                # mix test contexts
  declare -A MIX_REQ=([32768]=10 [131072]=10) MIX_STEPS=([32768]=256 [131072]=128)
  SINGLE_CTX=32768; SINGLE_REQ=2; SINGLE_STEPS=256
  TRAIN_MIX32=10; TRAIN_REM32=10; TRAIN_MIX128=0; TRAIN_REM128=0; ABLATION_REM32=4
  SPEED_CTX=131072; SPEED_REQ=10; SPEED_STEPS=128; SPEED_EPOCHS=2
  ONE_M_STEPS=64; ONE_M_REQ=1
  FRACTIONS=(0.10 0.20)
  TAUS=(1 16 64 256)
else
  CONTEXTS=(32768 131072 524288 1048576)
  declare -A MIX_REQ=([32768]=20 [131072]=10 [524288]=10 [1048576]=10)
  declare -A MIX_STEPS=([32768]=256 [131072]=256 [524288]=256 [1048576]=256)
  SINGLE_CTX=131072; SINGLE_REQ=8; SINGLE_STEPS=256
  TRAIN_MIX32=30; TRAIN_REM32=300; TRAIN_MIX128=20; TRAIN_REM128=4; ABLATION_REM32=40
  SPEED_CTX=131072; SPEED_REQ=100; SPEED_STEPS=256; SPEED_EPOCHS=10
  ONE_M_STEPS=256; ONE_M_REQ=4
  FRACTIONS=(0.05 0.10 0.15 0.20)
  TAUS=(1 8 16 32 64 128 256)
fi
REMOTE=(needle multi_needle multi_hop diffuse)
SINKS=64
# LSA's chosen operating point per context (budget fraction); see README "Tuning".
headline_fraction() { case $1 in 32768) echo 0.15 ;; 131072) echo 0.10 ;; 524288) echo 0.05 ;; *) echo 0.03 ;; esac; }

gen() {  # gen WORKLOAD CONTEXT STEPS REQUESTS SEED FILE
  # Sparse rows from 512K on: a dense 512K request is just under the writer's 64 MiB switch and
  # replays ~4x slower; the stored values are the same either way (traces/FORMAT.md).
  local storage=auto; [[ $2 -ge 524288 ]] && storage=sparse
  [[ -f "$6" ]] || "$KVLAB" trace gen --workload "$1" --context-tokens "$2" --steps "$3" --requests "$4" \
                     --seed "$5" --storage $storage --out "$6" > /dev/null
}
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }

# LSA's recent window for a budget: 85% of what the budget leaves after sinks, chunk edges and
# the 128:1 summary tier, capped at 8192 (synthetic local attention spans at most ~8K tokens),
# rounded down to whole 64-token chunks.
lsa_window() {  # lsa_window FRACTION CONTEXT
  python3 -c "import sys; f, n = float(sys.argv[1]), int(sys.argv[2]); w = 0.85 * (f * n - n / 128 - 3 * 64); print(max(0, min(8192, int(w) // 64 * 64)))" "$1" "$2"
}
# sliding_window matched to a footprint fraction: sinks + window + edge chunks = fraction × context.
sw_window() { python3 -c "import sys; f, n = float(sys.argv[1]), int(sys.argv[2]); print(max(0, int(f * n) - 64 - 128))" "$1" "$2"; }

sweep_policies() {  # sweep_policies CONTEXT -> --policy ... for every fraction
  local n=$1 f w
  local out=(--policy full)
  for f in "${FRACTIONS[@]}"; do
    w=$(lsa_window "$f" "$n")
    out+=(--policy "sliding_window:window=$(sw_window "$f" "$n"),sinks=$SINKS"
          --policy "random:budget=$f" --policy "oracle_topk:budget=$f"
          --policy "lsa_oracle:budget=$f,window=$w,sinks=$SINKS"
          --policy "lsa:indexer=$IDX,budget=$f,window=$w,sinks=$SINKS")
  done
  printf '%s\n' "${out[@]}"
}

replay() {  # replay TRACE NAME POLICY-ARGS...
  local trace=$1 name=$2; shift 2
  local t0; t0=$(now)
  "$KVLAB" replay --trace "$trace" "$@" --threads "$THREADS" --json > "$OUT/replay/$name.json.tmp"
  mv "$OUT/replay/$name.json.tmp" "$OUT/replay/$name.json"
  echo "  replay $name: $(elapsed "$t0" "$(now)") s"
}

echo "== 1. traces (train seeds 1-4, test seeds 1001+)"
gen mix 32768 256 $TRAIN_MIX32 1 "$TR/train_mix_32k.h5"
TRAIN=("$TR/train_mix_32k.h5")
SMALL_TRAIN=("$TR/train_mix_32k.h5")  # the ablation's smaller set: the first ABLATION_REM32 requests per remote workload
for w in "${REMOTE[@]}"; do
  gen "$w" 32768 256 $TRAIN_REM32 2 "$TR/train_${w}_32k.h5"; TRAIN+=("$TR/train_${w}_32k.h5")
  gen "$w" 32768 256 $ABLATION_REM32 2 "$TR/train_${w}_32k_small.h5"; SMALL_TRAIN+=("$TR/train_${w}_32k_small.h5")
done
if [[ $TRAIN_MIX128 -gt 0 ]]; then
  gen mix 131072 256 $TRAIN_MIX128 3 "$TR/train_mix_128k.h5"; TRAIN+=("$TR/train_mix_128k.h5")
  for w in "${REMOTE[@]}"; do gen "$w" 131072 256 $TRAIN_REM128 4 "$TR/train_${w}_128k.h5"; TRAIN+=("$TR/train_${w}_128k.h5"); done
  SMALL_TRAIN+=("${TRAIN[@]:$((1 + ${#REMOTE[@]}))}")  # the same 128K traces
fi
for n in "${CONTEXTS[@]}"; do gen mix "$n" "${MIX_STEPS[$n]}" "${MIX_REQ[$n]}" 1001 "$TR/test_mix_$n.h5"; done
for w in local "${REMOTE[@]}"; do gen "$w" $SINGLE_CTX $SINGLE_STEPS $SINGLE_REQ 1002 "$TR/test_${w}_$SINGLE_CTX.h5"; done
gen mix 1048576 $ONE_M_STEPS $ONE_M_REQ 1003 "$TR/speed_mix_1m.h5"

echo "== 2. indexer training (backbone-free, on train traces only)"
IDX="$OUT/indexer.h5"
# Linear towers (depth 0): the synthetic features are linear projections of topic latents, and
# deeper towers overfit the few remote positives (README, "Tuning"). Window 8192: the labels
# then hold the remote chunks the indexer exists to find, not the local spill-over just past a
# short window, which no content feature predicts. Query pooling 8: the mean query of the last
# 8 steps (step 9 measures 1 against 8).
declare -A STUDY_FLAGS=([window]=8192 [sinks]=$SINKS [tau]=64 [stride]=16 [depth]=0 [dim]=64 [lr]=0.003 [epochs]=10
                        [patience]=3 [loss]=listwise [negatives]=256 [query-pool]=8 [seed]=0 [threads]=$THREADS)
train_flags() {  # train_flags [KEY=VALUE ...]: the study's training flags, some replaced (one per line)
  local -A f=()
  local k kv
  for k in "${!STUDY_FLAGS[@]}"; do f[$k]=${STUDY_FLAGS[$k]}; done
  for kv in "$@"; do f[${kv%%=*}]=${kv#*=}; done
  for k in $(printf '%s\n' "${!f[@]}" | sort); do printf -- '--%s\n%s\n' "$k" "${f[$k]}"; done
}
mapfile -t TRAIN_FLAGS < <(train_flags)
t0=$(now)
"$KVLAB" indexer train --traces "${TRAIN[@]}" --out "$IDX" "${TRAIN_FLAGS[@]}" 2> "$OUT/train.log" | tee "$OUT/train.out"
TRAIN_S=$(elapsed "$t0" "$(now)")
echo "  trained in $TRAIN_S s"

echo "== 3. training-speed target: ${SPEED_REQ} mix requests at ${SPEED_CTX} tokens, default model"
gen mix $SPEED_CTX $SPEED_STEPS $SPEED_REQ 5 "$TR/speed_train_mix.h5"
t0=$(now)
"$KVLAB" indexer train --traces "$TR/speed_train_mix.h5" --out "$OUT/indexer_speed.h5" --epochs $SPEED_EPOCHS --threads "$THREADS" \
  2> "$OUT/speed_train.log" | tee "$OUT/speed_train.out"
SPEED_S=$(elapsed "$t0" "$(now)")
echo "  speed training in $SPEED_S s"

echo "== 4. indexer eval on held-out traces"
for f in "$TR"/test_*.h5; do
  b=$(basename "$f" .h5)
  "$KVLAB" indexer eval --indexer "$IDX" --trace "$f" --json --threads "$THREADS" > "$OUT/eval/$b.json"
done

echo "== 5. footprint vs recall (budget sweep, one pass per trace)"
for n in "${CONTEXTS[@]}"; do
  mapfile -t P < <(sweep_policies "$n")
  replay "$TR/test_mix_$n.h5" "sweep_mix_$n" "${P[@]}"
done
mapfile -t P < <(sweep_policies $SINGLE_CTX)
for w in local "${REMOTE[@]}"; do replay "$TR/test_${w}_$SINGLE_CTX.h5" "sweep_${w}_$SINGLE_CTX" "${P[@]}"; done

echo "== 6. headline operating points (LSA's chosen budget per context)"
for n in "${CONTEXTS[@]}"; do
  f=$(headline_fraction "$n"); w=$(lsa_window "$f" "$n")
  replay "$TR/test_mix_$n.h5" "headline_mix_$n" --policy full \
    --policy "sliding_window:window=$(sw_window "$f" "$n"),sinks=$SINKS" --policy "random:budget=$f" \
    --policy "oracle_topk:budget=$f" --policy "lsa_oracle:budget=$f,window=$w,sinks=$SINKS" \
    --policy "lsa:indexer=$IDX,budget=$f,window=$w,sinks=$SINKS"
done

echo "== 7. tau sweep (lsa at 10%, ${SINGLE_CTX} tokens)"
w=$(lsa_window 0.10 $SINGLE_CTX)
P=()
for tau in "${TAUS[@]}"; do P+=(--policy "lsa:indexer=$IDX,budget=0.10,window=$w,sinks=$SINKS,tau=$tau"); done
replay "$TR/test_mix_$SINGLE_CTX.h5" "tau_mix_$SINGLE_CTX" "${P[@]}"
replay "$TR/test_multi_needle_$SINGLE_CTX.h5" "tau_multi_needle_$SINGLE_CTX" "${P[@]}"

echo "== 8. replay speed: 1M tokens, $ONE_M_REQ request(s), --threads 1"
w=$(lsa_window 0.03 1048576)
declare -A SPEED
for spec in "sliding_window:window=$(sw_window 0.03 1048576),sinks=$SINKS" "lsa:indexer=$IDX,budget=0.03,window=$w,sinks=$SINKS"; do
  t0=$(now)
  "$KVLAB" replay --trace "$TR/speed_mix_1m.h5" --policy "$spec" --threads 1 --json > /dev/null
  SPEED[${spec%%:*}]=$(elapsed "$t0" "$(now)")
done
echo "  sliding_window ${SPEED[sliding_window]} s, lsa ${SPEED[lsa]} s"

echo "== 9. indexer recipe ablation: query pooling, training-set size, tower shape (lsa at 15%, ${SINGLE_CTX} tokens)"
# Each variant changes one thing against the study's indexer (step 2). Trained on the same
# traces (SMALL_TRAIN: the first ABLATION_REM32 requests per remote workload at 32K, as the first
# study used), evaluated on the same held-out traces.
mkdir -p "$OUT/ablation"
ablate() {  # ablate NAME TRACE-SET [KEY=VALUE ...]: trains $OUT/ablation/NAME.h5 with the study's flags, some replaced
  local name=$1 set=$2; shift 2
  local -n traces=$set
  local flags; mapfile -t flags < <(train_flags "$@")
  local t0; t0=$(now)
  "$KVLAB" indexer train --traces "${traces[@]}" --out "$OUT/ablation/$name.h5" "${flags[@]}" \
    2> "$OUT/ablation/$name.log" > "$OUT/ablation/$name.out"
  echo "  $name: trained in $(elapsed "$t0" "$(now)") s"
}
cp "$IDX" "$OUT/ablation/study.h5"
ablate pool1 TRAIN query-pool=1
ablate small SMALL_TRAIN
ablate small_pool1 SMALL_TRAIN query-pool=1
ablate small_mlp SMALL_TRAIN depth=2 width=256 lr=0.001 skip=off
ablate small_mlp_skip SMALL_TRAIN depth=2 width=256 lr=0.001 skip=on
w=$(lsa_window 0.15 $SINGLE_CTX)
P=()
for v in study pool1 small small_pool1 small_mlp small_mlp_skip; do
  P+=(--policy "lsa:indexer=$OUT/ablation/$v.h5,budget=0.15,window=$w,sinks=$SINKS")
done
for wl in "${REMOTE[@]}"; do
  replay "$TR/test_${wl}_$SINGLE_CTX.h5" "ablation_${wl}_$SINGLE_CTX" "${P[@]}"
  for v in study pool1 small small_pool1 small_mlp small_mlp_skip; do
    "$KVLAB" indexer eval --indexer "$OUT/ablation/$v.h5" --trace "$TR/test_${wl}_$SINGLE_CTX.h5" --json \
      --threads "$THREADS" > "$OUT/ablation/eval_${v}_${wl}.json"
  done
done

python3 - "$OUT/timing.json" <<PY
import json, re, sys
def rate(path):
    text = open(path).read()
    m = re.search(r"([0-9.e+]+) refresh points/s, ([0-9.e+]+) candidates/s", text)
    return (float(m.group(1)), float(m.group(2))) if m else (None, None)
main_rate = rate("$OUT/train.out"); speed_rate = rate("$OUT/speed_train.out")
json.dump({
  "quick": $QUICK,
  "train_seconds": $TRAIN_S, "train_refresh_points_per_s": main_rate[0], "train_candidates_per_s": main_rate[1],
  "train_flags": "${TRAIN_FLAGS[*]}", "train_traces": "${TRAIN[*]}",
  "speed_train": {"requests": $SPEED_REQ, "context": $SPEED_CTX, "steps": $SPEED_STEPS, "epochs": $SPEED_EPOCHS,
                  "seconds": $SPEED_S, "refresh_points_per_s": speed_rate[0], "candidates_per_s": speed_rate[1]},
  "replay_1m": {"steps": $ONE_M_STEPS, "requests": $ONE_M_REQ, "sliding_window_s": ${SPEED[sliding_window]}, "lsa_s": ${SPEED[lsa]}},
  "sweep_fractions": [float(x) for x in "${FRACTIONS[*]}".split()],
}, open(sys.argv[1], "w"), indent=2)
PY
echo "== done: results in $OUT (python3 analysis/lsa_report.py $OUT)"
