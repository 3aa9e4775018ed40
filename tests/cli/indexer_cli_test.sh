#!/usr/bin/env bash
# LSA from the command line: kvlab indexer train | eval and the lsa policy in replay and policy
# check, with the exit codes and one-line errors of the CLI conventions (0 ok, 1 bad input file,
# 2 usage) for the bad inputs a user can give, and the checkpoint's atomic write.
# usage: indexer_cli_test.sh PATH/TO/kvlab
set -uo pipefail

kvlab="$1"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvlab_indexer_cli_test.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect_lib.sh"

# ---- traces: training, held-out, without features, with other widths --------------------
train="${work}/train.h5"
held_out="${work}/test.h5"
bare="${work}/bare.h5"
wide="${work}/wide.h5"
gen=(trace gen --workload needle --context-tokens 16384 --steps 96)
expect 0 "wrote ${train}" -- "${gen[@]}" --requests 6 --seed 1 --out "${train}"
expect 0 "wrote ${held_out}" -- "${gen[@]}" --requests 2 --seed 1001 --out "${held_out}"
expect 0 "wrote ${bare}" -- "${gen[@]}" --requests 1 --seed 1001 --features off --out "${bare}"
expect 0 "wrote ${wide}" -- "${gen[@]}" --requests 1 --seed 1001 --d-query 32 --out "${wide}"
expect 0 "" -- trace info "${bare}" --json
cp "${work}/out.txt" "${work}/bare_info.json"
json_check "${work}/bare_info.json" 'd["requests"][0]["d_query"] == 0 and d["requests"][0]["d_key"] == 0'
expect 2 "--features" -- trace gen --features maybe --out "${work}/x.h5"
expect 2 "--d-query" -- trace gen --d-query 0 --out "${work}/x.h5"

# ---- indexer train ----------------------------------------------------------------------
expect 0 "usage: kvlab indexer train" -- indexer train --help
expect 0 "usage: kvlab indexer eval" -- indexer eval --help
expect 2 "unknown verb 'frob'" -- indexer frob
idx="${work}/idx.h5"
train_flags=(--window 4096 --tau 32 --stride 8 --depth 0 --dim 16 --epochs 3 --query-pool 4 --seed 3)
expect 0 "wrote ${idx}" -- indexer train --traces "${train}" --out "${idx}" "${train_flags[@]}" --threads 2
checks=$((checks + 1))
grep -Eq "^step [0-9]+/[0-9]+ .*val recall@16 [0-9]" "${work}/err.txt" || fail "indexer train shows no per-validation loss and recall"
for row in untrained "trained (step" "bilinear, closed form" "lsa_oracle (true labels)"; do
  checks=$((checks + 1))
  grep -q "${row}" "${work}/out.txt" || fail "indexer train's standing table has no '${row}' row"
done
# The step schedule: --steps and --eval-every decide how many validations there are.
expect 0 "wrote" -- indexer train --traces "${train}" --out "${work}/idx_steps.h5" --window 4096 --tau 32 --stride 8 \
  --steps 30 --eval-every 10 --warmup 5 --reference off --threads 2
checks=$((checks + 1))
[[ $(grep -c "^step " "${work}/err.txt") -eq 3 ]] || fail "--steps 30 --eval-every 10 did not validate 3 times"
checks=$((checks + 1))
grep -q "bilinear" "${work}/out.txt" && fail "--reference off still fitted the bilinear reference"
checks=$((checks + 1))
grep -Eq "[0-9]+ refresh points/s" "${work}/out.txt" || fail "indexer train reports no samples per second"
checks=$((checks + 1))
ls "${work}" | grep -q '\.tmp' && fail "indexer train left a temporary file: $(ls "${work}")"
# Nested training sets: --requests-per-trace N reads the first N requests of each trace.
expect 0 "wrote" -- indexer train --traces "${train}" --out "${work}/idx_first.h5" "${train_flags[@]}" --requests-per-trace 1 \
  --reference off --threads 2
checks=$((checks + 1))
grep -q "^indexer: 1 requests," "${work}/err.txt" || fail "--requests-per-trace 1 did not read one request: $(head -n 1 "${work}/err.txt")"
expect 2 "--requests-per-trace must be >= 0" -- indexer train --traces "${train}" --out "${work}/x.h5" --requests-per-trace -1
# Deterministic for a seed, whatever the thread count: the same scores on held-out data.
expect 0 "wrote" -- indexer train --traces "${train}" --out "${work}/idx_again.h5" "${train_flags[@]}" --threads 1
expect 0 "" -- indexer eval --indexer "${idx}" --trace "${held_out}" --json --k 1,4,16
cp "${work}/out.txt" "${work}/eval.json"
expect 0 "" -- indexer eval --indexer "${work}/idx_again.h5" --trace "${held_out}" --json --k 1,4,16
sed 's/idx_again/idx/' "${work}/out.txt" >"${work}/eval_again.json"
checks=$((checks + 1))
cmp -s "${work}/eval.json" "${work}/eval_again.json" || fail "indexer train is not deterministic across thread counts"
json_check "${work}/eval.json" 'd["tau"] == 32 and d["window"] == 4096 and 0 <= d["recall@1"] <= d["recall@4"] <= d["recall@16"] <= 1'
json_check "${work}/eval.json" 'd["positives"] > 0 and d["groups"] == 2 * 3'
expect 0 "recall@16" -- indexer eval --indexer "${idx}" --trace "${held_out}"
# Several traces pool their refresh points: positives and groups add, and recall@k is the
# positives-weighted mean of each trace's own.
expect 0 "" -- indexer eval --indexer "${idx}" --trace "${train}" --json --k 1,4,16
cp "${work}/out.txt" "${work}/eval_train.json"
expect 0 "" -- indexer eval --indexer "${idx}" --trace "${held_out}" --trace "${train}" --json --k 1,4,16
cp "${work}/out.txt" "${work}/eval_both.json"
checks=$((checks + 1))
python3 - "${work}/eval.json" "${work}/eval_train.json" "${work}/eval_both.json" <<'PY' || fail "indexer eval over two traces is not the pooled figure"
import json, sys
a, b, both = (json.load(open(p)) for p in sys.argv[1:])
assert both["positives"] == a["positives"] + b["positives"] and both["groups"] == a["groups"] + b["groups"]
assert "trace" not in both and len(both["traces"]) == 2 and a["traces"] == [a["trace"]]
for k in ("recall@1", "recall@4", "recall@16"):
    pooled = (a[k] * a["positives"] + b[k] * b["positives"]) / both["positives"]
    assert abs(both[k] - pooled) < 1e-9, (k, both[k], pooled)
PY
expect 0 "on 2 traces" -- indexer eval --indexer "${idx}" --trace "${held_out}" --trace "${train}"

# Bad options name the flag (exit 2); bad files name the file (exit 1).
expect 2 "--tau" -- indexer train --traces "${train}" --out "${work}/x.h5" --tau 0
expect 2 "--tau" -- indexer train --traces "${train}" --out "${work}/x.h5" --tau -4
expect 2 "--query-pool" -- indexer train --traces "${train}" --out "${work}/x.h5" --query-pool 0
expect 2 "epochs" -- indexer train --traces "${train}" --out "${work}/x.h5" --epochs 0
expect 2 "steps" -- indexer train --traces "${train}" --out "${work}/x.h5" --steps 0
expect 2 "lr_final" -- indexer train --traces "${train}" --out "${work}/x.h5" --lr-final 0
expect 2 "--reference" -- indexer train --traces "${train}" --out "${work}/x.h5" --reference maybe
expect 2 "--skip" -- indexer train --traces "${train}" --out "${work}/x.h5" --skip sometimes
expect 2 "--traces" -- indexer train --out "${work}/x.h5"
expect 1 "${bare}" -- indexer train --traces "${bare}" --out "${work}/x.h5"
expect 1 "'query'" -- indexer train --traces "${bare}" --out "${work}/x.h5"
expect 1 "${work}/missing.h5" -- indexer train --traces "${work}/missing.h5" --out "${work}/x.h5"
expect 1 "d_query=32" -- indexer train --traces "${train}" "${wide}" --out "${work}/x.h5"
checks=$((checks + 1))
[[ -e "${work}/x.h5" ]] && fail "a failed training wrote its checkpoint"

# ---- indexer eval: missing, corrupt and mismatched checkpoints ----------------------------
echo "not an HDF5 file" >"${work}/corrupt.h5"
expect 1 "${work}/missing.h5" -- indexer eval --indexer "${work}/missing.h5" --trace "${held_out}"
expect 1 "--indexer" -- indexer eval --indexer "${work}/corrupt.h5" --trace "${held_out}"
expect 1 "kvlab_checkpoint_version" -- indexer eval --indexer "${train}" --trace "${held_out}"
expect 1 "d_query=32" -- indexer eval --indexer "${idx}" --trace "${wide}"
expect 1 "'query'" -- indexer eval --indexer "${idx}" --trace "${bare}"
expect 2 "--k" -- indexer eval --indexer "${idx}" --trace "${held_out}" --k 0

# ---- the checkpoint is written atomically ------------------------------------------------
cp "${idx}" "${work}/idx.before"
expect 1 "'query'" -- indexer train --traces "${bare}" --out "${idx}"
checks=$((checks + 1))
cmp -s "${idx}" "${work}/idx.before" || fail "a failed training changed the previous checkpoint"
# Interrupted mid-training: the previous checkpoint stays as it was.
"${kvlab}" indexer train --traces "${train}" --out "${idx}" --window 4096 --tau 32 --epochs 100000 --patience 0 \
  --threads 1 >/dev/null 2>"${work}/long.err" &
pid=$!
for _ in $(seq 1 300); do
  grep -q "^step " "${work}/long.err" 2>/dev/null && break
  sleep 0.1
done
# SIGTERM: a non-interactive shell starts background jobs with SIGINT ignored.
kill -TERM "${pid}" 2>/dev/null
wait "${pid}" 2>/dev/null
checks=$((checks + 1))
grep -q "^step " "${work}/long.err" || fail "the long training never finished an epoch"
checks=$((checks + 1))
cmp -s "${idx}" "${work}/idx.before" || fail "an interrupted training changed the previous checkpoint"

# ---- the lsa policy ---------------------------------------------------------------------
lsa_base="lsa:indexer=${idx},window=4096"
lsa="${lsa_base},tau=32,budget=0.35"
expect 0 "Lookahead Sparse Attention" -- policies
expect 0 "" -- replay --trace "${held_out}" --policy "${lsa}" --policy "lsa_oracle:window=4096,tau=32,budget=0.35" \
  --policy sliding_window:window=4096 --json
cp "${work}/out.txt" "${work}/replay.json"
json_check "${work}/replay.json" 'd[0]["name"] == "lsa" and not d[0]["oracle"] and d[1]["oracle"]'
json_check "${work}/replay.json" 'd[0]["footprint_mean_ratio"] <= 0.35 and d[0]["hbm_summary_mean_bytes"] > 0 and d[0]["hbm_index_mean_bytes"] > 0'
json_check "${work}/replay.json" 'd[0]["fetch_bytes"] > 0 and d[1]["critical_recall"] >= d[2]["critical_recall"]'
expect 0 "checks passed" -- policy check --policy "${lsa}" --trace "${held_out}" --requests 1 --steps 64

expect 2 "'indexer' is required" -- replay --trace "${held_out}" --policy lsa
expect 1 "parameter 'indexer'" -- replay --trace "${held_out}" --policy "lsa:indexer=${work}/missing.h5"
expect 1 "parameter 'indexer'" -- replay --trace "${held_out}" --policy "lsa:indexer=${work}/corrupt.h5"
expect 1 "d_query=32" -- replay --trace "${wide}" --policy "${lsa}"
expect 1 "'query'" -- replay --trace "${bare}" --policy "${lsa}"
expect 2 "'tau' must be positive" -- replay --trace "${held_out}" --policy "${lsa_base},tau=0"
expect 2 "'tau' must be positive" -- replay --trace "${held_out}" --policy "lsa_oracle:tau=-1"
expect 2 "'budget' must not be negative" -- replay --trace "${held_out}" --policy "${lsa_base},budget=-100"
expect 2 "larger than the context" -- replay --trace "${held_out}" --policy "${lsa_base},budget=99999999"
expect 2 "larger than the whole context" -- replay --trace "${held_out}" --policy "${lsa_base},budget=1.5"

# ---- the shipped real indexer on the shipped GPU recording ---------------------------------
# experiments/lsa/real's checkpoint (trained on 1008 requests recorded on the GPU) loads against a
# recording of the same features (layer-15 hidden state, mean keys) and carries information: at
# the same budget it keeps far more of the critical chunks than random does.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
real_idx="${root}/experiments/lsa/real/results/indexer_real_1008.h5"
real_trace="${root}/traces/data/smollm2_gpu_cwe_4k.h5"
expect 0 "" -- replay --trace "${real_trace}" --json --threads 2 \
  --policy "lsa:indexer=${real_idx},window=256,sinks=64,budget=0.15,tau=16" --policy random:budget=0.15
cp "${work}/out.txt" "${work}/real.json"
json_check "${work}/real.json" 'd[0]["footprint_mean_ratio"] <= 0.15 and d[0]["critical_recall"] > d[1]["critical_recall"] + 0.2'

# ---- features of several layers (a real CPU recording with --feature-layers 8,15,22) ----------
# Every combine mode trains, evaluates and replays; an indexer's layers must be the source's; an
# indexer that names no layer reads the first and says so.
layers_trace="${root}/traces/data/smollm2_niah_single_512_layers.h5"
small=(--window 64 --sinks 0 --tau 4 --stride 2 --steps 20 --threads 2 --reference off)
for combine in concat max sum; do
  expect 0 "(layers 8,15,22, ${combine})" -- indexer train --traces "${layers_trace}" --combine "${combine}" "${small[@]}" \
    --out "${work}/layers_${combine}.h5"
  expect 0 "recall@16" -- indexer eval --indexer "${work}/layers_${combine}.h5" --trace "${layers_trace}"
  expect 0 "" -- replay --trace "${layers_trace}" --json \
    --policy "lsa:indexer=${work}/layers_${combine}.h5,window=64,sinks=0,tau=4,budget=0.5"
  json_check "${work}/out.txt" 'd[0]["steps"] == 40 and 0 < d[0]["critical_recall"] <= 1'
done
# share=layer: each model layer ranks by the tower of its nearest feature layer; one score cannot.
layer_lsa="window=64,sinks=0,tau=4,budget=0.5,share=layer"
expect 0 "4/4 checks passed" -- policy check --policy "lsa:indexer=${work}/layers_max.h5,${layer_lsa}" \
  --trace "${layers_trace}" --steps 20
expect 0 "4/4 checks passed" -- policy check --policy "lsa_oracle:${layer_lsa}" --trace "${layers_trace}" --steps 20
expect 0 "" -- replay --trace "${layers_trace}" --json --policy "lsa:indexer=${work}/layers_sum.h5,${layer_lsa}"
json_check "${work}/out.txt" 'd[0]["steps"] == 40 and "share=layer" in d[0]["policy"] and 0 < d[0]["critical_recall"] <= 1'
expect 2 "parameter 'share': share=layer needs a score per feature layer, but indexer ${work}/layers_concat.h5 combines" -- \
  replay --trace "${layers_trace}" --policy "lsa:indexer=${work}/layers_concat.h5,${layer_lsa}"
expect 2 "parameter 'share' must be request or layer" -- replay --trace "${layers_trace}" --policy "lsa_oracle:share=head"
expect 0 "(layers 15, concat)" -- indexer train --traces "${layers_trace}" --layers 15 "${small[@]}" --out "${work}/layers_15.h5"
# One named layer on a one-layer recording (which names none): read as that layer.
expect 0 "" -- replay --trace "${real_trace}" --policy "lsa:indexer=${work}/layers_15.h5,window=64,sinks=0,tau=4,budget=0.5"
expect 1 "the indexer reads feature layers 8,15,22, but the features are of one unnamed layer" -- \
  replay --trace "${real_trace}" --policy "lsa:indexer=${work}/layers_max.h5,window=64,sinks=0,tau=4,budget=0.5"
expect 1 "the indexer reads feature layer 3, which the features lack (datasets 'query_layer3', 'chunk_features_layer3'" -- \
  indexer train --traces "${layers_trace}" --layers 15,3 "${small[@]}" --out "${work}/x.h5"
expect 2 "--layers: layer 15 is listed twice" -- indexer train --traces "${layers_trace}" --layers 15,15 --out "${work}/x.h5"
expect 2 "--combine must be concat, max or sum" -- indexer train --traces "${layers_trace}" --combine avg --out "${work}/x.h5"
expect 0 "names no feature layer; it reads the first of the source's 8,15,22 (layer 8)" -- \
  replay --trace "${layers_trace}" --policy "lsa:indexer=${real_idx},window=64,sinks=0,budget=0.9,tau=16"
expect 0 "feature layers 8,15,22" -- trace info "${layers_trace}"
expect 0 "" -- trace info "${layers_trace}" --json
json_check "${work}/out.txt" 'd["requests"][0]["feature_layers"] == [8, 15, 22] and d["requests"][0]["d_query"] == 3 * 576'

echo "indexer_cli_test: ${checks} checks, ${failures} failed"
[[ ${failures} -eq 0 ]]
