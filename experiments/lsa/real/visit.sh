#!/usr/bin/env bash
# The planned H200 visit for issue #11's open device work, from the carried checkout's root,
# after `BINS=kvlab scripts/device-carry.sh && scripts/device-model.sh split` here:
#
#   bash experiments/lsa/real/visit.sh              call 1: carry .carry/pack, .carry/gguf/a
#   bash experiments/lsa/real/visit.sh              call 2: carry .carry/gguf/b
#   bash experiments/lsa/real/visit.sh train_size   call 3: carry .carry/gguf/c (~4 min, estimated)
#   bash experiments/lsa/real/visit.sh prior 1      call 4: the prompt prior live, prompts of seed 1 (~5 min)
#   bash experiments/lsa/real/visit.sh prior 0      call 5: the same on seed 0, the live tables' prompts
#
# Calls 1-2 only stash the model's pieces (scripts/device-visit.sh); each call's outputs come
# back as $OUT/<part>.tgz. prior: the 12 cells (six tasks at 4K and 8K, 100 samples) with full,
# snapkv, pyramidkv, h2o at 0.15, lsa as in live-table-2026-12-04 (indexer_real_1008, window 64,
# budget 0.18 at 4K and 0.165 at 8K) and lsa with prompt_prior=true,prior_share=1 (the share
# chosen on CPU replays of seed-1 recordings, results/prompt-prior-cpu-2026-12-04).
part="${1:-stash}"
source scripts/device-visit.sh "$part"
el "model: $(ls models 2>/dev/null)"
[[ "$part" == stash ]] && exit 0
[[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]] || { echo "visit: the model is not joined yet (calls 1-2)" >&2; exit 1; }
case "$part" in
  train_size)
    experiments/lsa/real/train_size.sh "$O" >"$O/train_size.log" 2>&1
    el "train_size rc $?"; tail -n 12 "$O/train_size.log" ;;
  prior)
    seed="${2:-1}"
    I=experiments/lsa/real/results/indexer_real_1008.h5
    L="lsa:indexer=$I,window=64,sinks=64,tau=16"
    Z="snapkv:budget=0.15 pyramidkv:budget=0.15 h2o:budget=0.15"
    for ctx in 4096 8100; do
      b=0.18; [[ $ctx == 8100 ]] && b=0.165
      BUDGET_S=$(( (560 - ($(date +%s) - visit_t0)) / (ctx == 4096 ? 2 : 1) )) \
        POLICIES="full $Z $L,budget=$b $L,budget=$b,prompt_prior=true,prior_share=1" CONTEXTS=$ctx SAMPLES=100 SEED="$seed" \
        experiments/gpu/live_table.sh "$O/lt_$ctx" >"$O/lt_$ctx.log" 2>&1
      el "prior seed $seed context $ctx rc $?"; tail -n 4 "$O/lt_$ctx.log"
    done ;;
  *) echo "visit: unknown part '$part' (train_size | prior SEED)" >&2; exit 2 ;;
esac
