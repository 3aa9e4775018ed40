#!/usr/bin/env bash
# Tests of the live commands (kvlab generate | run | record) as a user sees them: --help,
# one-line errors for bad input (missing model, wrong architecture, truncated GGUF, context too
# long, empty prompt), and, with the real model present, a Paris completion, a small closed-loop
# run and a small recording that validates and replays with recall 1 under full attention.
# The model-dependent part is skipped (exit 0) when models/SmolLM2-135M-Instruct.Q4_1.gguf (or
# $KVLAB_MODEL) is absent: scripts/fetch-model.sh fetches it.
# usage: live_cli_test.sh PATH/TO/kvlab SOURCE_DIR
set -uo pipefail

kvlab="$1"
src="$2"
model="${KVLAB_MODEL:-${src}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvlab_live_cli_test.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
# Spinning OpenMP threads stall each other when tests run in parallel on few cores.
export OMP_WAIT_POLICY=passive
source "$(dirname "${BASH_SOURCE[0]}")/expect_lib.sh"

# ---- without the model ------------------------------------------------------------------
for sub in generate run record; do
  expect 0 "usage: kvlab ${sub}" -- "${sub}" --help
done
expect 1 "scripts/fetch-model.sh" -- generate --model "${work}/absent.gguf" --prompt hi
expect 2 "--rope-scaling" -- generate --model "${work}/absent.gguf" --prompt hi --rope-scaling cubic:2
expect 2 "--policy" -- run --model "${work}/absent.gguf" --policy oracle_topk
# Oracles are refused before the model is loaded, even next to live policies.
expect 2 "oracles read attention" -- run --model "${work}/absent.gguf" --policy full --policy oracle_topk
expect 2 "--summaries" -- run --model "${work}/absent.gguf" --policy full --summaries on
expect 2 "--arrival" -- run --model "${work}/absent.gguf" --policy full --arrival late
expect 2 "--prompt" -- generate --model "${work}/absent.gguf"
expect 2 "give exactly one of --prompt, --prompt-file and --task" -- generate --prompt hi --task vt
expect 2 "--chat" -- generate --model "${work}/absent.gguf" --task vt --chat
expect 2 "--template-set is only for --task" -- generate --model "${work}/absent.gguf" --prompt hi --template-set train
expect 2 "--template-set: unknown template set" -- generate --model "${work}/absent.gguf" --task vt --template-set x

# A well-formed GGUF of another architecture.
python3 - "${work}/gpt2.gguf" <<'PY'
import struct, sys
def s(x): b = x.encode(); return struct.pack("<Q", len(b)) + b
kv = s("general.architecture") + struct.pack("<I", 8) + s("gpt2")
open(sys.argv[1], "wb").write(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv)
PY
expect 1 "gpt2" -- generate --model "${work}/gpt2.gguf" --prompt hi

if [[ ! -f "${model}" ]]; then
  echo "live_cli_test: ${model} absent (scripts/fetch-model.sh fetches it): model checks skipped;" \
       "${checks} checks, ${failures} failures"
  [[ ${failures} -eq 0 ]]
  exit $?
fi

# ---- with the model ---------------------------------------------------------------------
head -c 3000000 "${model}" >"${work}/truncated.gguf"
expect 1 "truncated.gguf" -- generate --model "${work}/truncated.gguf" --prompt hi
expect 1 "no tokens" -- generate --model "${model}" --prompt ""
expect 1 "--rope-scaling" -- record --model "${model}" --context-tokens 9000 --samples 1 --steps 4 \
  --out "${work}/long.h5"
expect 0 "Paris" -- generate --model "${model}" --prompt "The capital of France is" --max-tokens 4
expect 0 "" -- generate --model "${model}" --prompt "Once upon a time" --max-tokens 4 --temperature 0.8 --seed 3 \
  --policy sliding_window:window=64,sinks=4 --chunk-tokens 4

trace="${work}/real.h5"
expect 0 "wrote ${trace}" -- record --model "${model}" --context-tokens 256 --samples 2 --steps 3 --out "${trace}"
expect 0 "valid" -- trace validate "${trace}"
expect 0 "" -- replay --trace "${trace}" --policy full --json
checks=$((checks + 1))
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert abs(d[0]["critical_recall"]-1)<1e-9 and d[0]["steps"]==6, d' \
  "${work}/out.txt" || fail "replay of a recorded trace under full attention: recall is not 1"

# Features of several layers (--feature-layers): a valid trace whose indexer trains in each
# combine mode and replays; --feature-layers L alone writes what --feature-layer L writes.
expect 2 "--feature-layer and --feature-layers: give one of them" -- record --model "${model}" --feature-layer 8 \
  --feature-layers 8,15 --out "${work}/x.h5"
expect 2 "--feature-layers: 'x' is not a whole number" -- record --model "${model}" --feature-layers 8,x --out "${work}/x.h5"
expect 2 "feature layer 15 is listed twice" -- record --model "${model}" --context-tokens 256 --samples 1 --steps 1 \
  --feature-layers 15,15 --out "${work}/x.h5"
layers="${work}/layers.h5"
expect 0 "wrote ${layers}" -- record --model "${model}" --context-tokens 256 --samples 1 --steps 3 \
  --feature-layers 8,15,22 --out "${layers}"
expect 0 "valid" -- trace validate "${layers}"
# (One decoder thread: summed in parallel, a recording's floats depend on how the threads split.)
expect 0 "wrote" -- record --model "${model}" --context-tokens 256 --samples 1 --steps 2 --feature-layers 15 \
  --threads 1 --out "${work}/one_a.h5"
expect 0 "wrote" -- record --model "${model}" --context-tokens 256 --samples 1 --steps 2 --feature-layer 15 \
  --threads 1 --out "${work}/one_b.h5"
checks=$((checks + 1))
cmp -s "${work}/one_a.h5" "${work}/one_b.h5" || fail "--feature-layers 15 and --feature-layer 15 wrote different files"
small=(--window 64 --sinks 0 --tau 2 --stride 1 --steps 5 --threads 1 --reference off)
for combine in concat max sum; do
  expect 0 "wrote ${work}/idx_${combine}.h5" -- indexer train --traces "${layers}" --out "${work}/idx_${combine}.h5" \
    --combine "${combine}" "${small[@]}"
  expect 0 "" -- replay --trace "${layers}" --policy "lsa:indexer=${work}/idx_${combine}.h5,window=64,sinks=0,tau=2,budget=0.9" --json
  json_check "${work}/out.txt" 'len(d) == 1 and d[0]["steps"] == 3'
  expect 0 "recall@8" -- indexer eval --indexer "${work}/idx_${combine}.h5" --trace "${layers}" --window 64 --sinks 0 --tau 2
done
expect 2 "--combine must be concat, max or sum, got 'mean'" -- indexer train --traces "${layers}" --out "${work}/x.h5" \
  --combine mean
expect 1 "the indexer reads feature layer 7, which the features lack" -- indexer train --traces "${layers}" \
  --out "${work}/x.h5" --layers 15,7
# A three-layer indexer needs a source of those layers: a one-layer trace, or a live run without
# --feature-layers (refused before the prefill), stops with one line naming the layers.
expect 1 "the indexer reads feature layers 8,15,22, but the features are of one unnamed layer" -- replay --trace "${trace}" \
  --policy "lsa:indexer=${work}/idx_max.h5,window=64,sinks=0,tau=2,budget=0.9"
expect 1 "the indexer reads feature layer 8, which the features lack" -- run --model "${model}" --context-tokens 256 \
  --samples 1 --max-tokens 2 --policy "lsa:indexer=${work}/idx_max.h5,window=64,sinks=0,tau=2,budget=0.9"
expect 0 "" -- run --model "${model}" --context-tokens 256 --samples 1 --max-tokens 3 --feature-layers 8,15,22 \
  --agreement off --policy "lsa:indexer=${work}/idx_max.h5,window=64,sinks=0,tau=2,budget=0.9" --json
json_check "${work}/out.txt" 'len(d) == 1 and d[0]["steps"] == 2'

# Task wording (--template-set): a recording names its set and the templates each request drew
# (the default set writes neither attribute); the prompt still fits the context with the real
# tokenizer; run's generations say the same.
expect 0 "" -- trace info "${trace}" --json
json_check "${work}/out.txt" 'all("template_set" not in r and "template_variants" not in r for r in d["requests"])'
expect 2 "--template-set: unknown template set 'test'" -- record --model "${model}" --template-set test --out "${work}/x.h5"
expect 0 "wrote" -- record --model "${model}" --context-tokens 256 --samples 1 --steps 1 --template-set heldout \
  --task niah_multikey --out "${work}/heldout.h5"
expect 0 "" -- trace info "${work}/heldout.h5" --json
json_check "${work}/out.txt" 'all(r["template_set"] == "heldout" and "needle=" in r["template_variants"] and 230 <= r["prompt_tokens"] <= 256 for r in d["requests"])'
# generate --task: kvlab run's first sample of the seed, with its expected answer and score.
expect 0 "task niah_single (heldout templates: filler=" -- generate --model "${model}" --task niah_single \
  --context-tokens 256 --template-set heldout --task-seed 4 --max-tokens 2
grep -qE "tokens\): expected [^;]+; score (0|1)" "${work}/err.txt" || fail "generate --task: no score line: $(cat "${work}/err.txt")"
expect 0 "" -- run --model "${model}" --context-tokens 256 --samples 1 --max-tokens 2 --agreement off --template-set train \
  --task vt --policy full --out-dir "${work}/train_run"
json_check "${work}/train_run/generations.json" 'd[0]["template_set"] == "train" and "statements=" in d[0]["template_variants"]'
json_check "${work}/train_run/config.json" 'd["flags"]["template-set"] == ["train"]'

expect 0 "" -- run --model "${model}" --context-tokens 256 --samples 1 --max-tokens 4 \
  --policy full --policy sliding_window:window=64,sinks=64 --json
checks=$((checks + 1))
python3 - "${work}/out.txt" <<'PY' || fail "kvlab run --json fields"
import json, sys
d = json.load(open(sys.argv[1]))
assert [r["name"] for r in d] == ["full", "sliding_window"], d
full, win = d
assert full["top1_agreement"] == 1 and full["kl_mean"] == 0, full
assert 0 <= win["accuracy"] <= 1 and win["kl_mean"] >= 0 and 0 <= win["top1_agreement"] <= 1, win
assert win["footprint_mean_ratio"] < full["footprint_mean_ratio"], d
assert all(r["arrival"] == "modelled" for r in d), d
# The teacher-forced pass covers full attention's steps; full's is its own free-running pass.
assert win["teacher_forced"]["steps"] == full["steps"] and full["teacher_forced"]["critical_recall"] == full["critical_recall"], d
assert 0 < win["teacher_forced"]["critical_recall"] < 1, d
PY

# Measured arrival on the synchronous CPU backend: every fetch has landed, so none is late.
expect 0 "" -- run --model "${model}" --context-tokens 256 --samples 1 --max-tokens 4 --agreement off \
  --policy sliding_window:window=64,sinks=64 --arrival measured --json --out-dir "${work}/measured"
json_check "${work}/out.txt" 'd[0]["arrival"] == "measured" and d[0]["late_fetches"] == 0 and d[0]["kl_mean"] is None and d[0]["teacher_forced"] is None'
json_check "${work}/measured/config.json" 'd["arrival"] == "measured"'

# The policy zoo on a recording and live. The recording ends where a free-running run ends
# (--stop eos; record --steps N covers run --max-tokens N+1), so replay and run of full
# attention cover the same steps and positions. 16-token chunks: 256 tokens make 16 of them.
zoo=(--policy full --policy h2o:budget=0.3 --policy tova:budget=0.3 --policy quest:budget=0.3
     --policy infllm:budget=0.5,sinks=16,window=32 --policy snapkv:budget=0.3 --policy pyramidkv:budget=0.3
     --policy ada_kv:budget=0.3)
expect 2 "--stop" -- record --model "${model}" --stop sometimes --out "${work}/x.h5"
expect 2 "--qk-vectors" -- record --model "${model}" --qk-vectors maybe --out "${work}/x.h5"
expect 0 "wrote" -- record --model "${model}" --context-tokens 256 --samples 1 --steps 5 --stop eos --qk-vectors on \
  --chunk-tokens 16 --heads per-head --mass-dtype f32 --out "${work}/zoo.h5"
expect 0 "valid" -- trace validate "${work}/zoo.h5"
expect 0 "" -- replay --trace "${work}/zoo.h5" "${zoo[@]}" --json
cp "${work}/out.txt" "${work}/zoo_replay.json"
json_check "${work}/zoo_replay.json" 'len(d) == 8 and all(0 < r["critical_recall"] <= 1 for r in d) and all(r["footprint_mean_ratio"] < 0.7 for r in d[1:])'
expect 0 "" -- run --model "${model}" --context-tokens 256 --samples 1 --max-tokens 6 --agreement off --chunk-tokens 16 \
  "${zoo[@]}" --json
cp "${work}/out.txt" "${work}/zoo_live.json"
json_check "${work}/zoo_live.json" 'len(d) == 8 and all(0 < r["critical_recall"] <= 1 for r in d) and all(r["footprint_mean_ratio"] < 0.7 for r in d[1:])'
checks=$((checks + 1))
python3 - "${work}/zoo_replay.json" "${work}/zoo_live.json" <<'PY' || fail "replay and run of full attention cover different steps"
import json, sys
replay, live = (json.load(open(p))[0] for p in sys.argv[1:])
assert replay["steps"] == live["steps"] and replay["footprint_peak_bytes"] == live["footprint_peak_bytes"], (replay, live)
PY
# Without a prefill observation the snapkv family stops with the flag that gives one.
expect 1 "prefill" -- run --model "${model}" --context-tokens 256 --samples 1 --max-tokens 2 --agreement off \
  --prefill-window 0 --policy snapkv:budget=0.3

# One token comes from the prefill alone: there is no decode step to average a footprint over.
expect 0 "mean footprint n/a (no decode steps)" -- generate --model "${model}" --prompt "The capital of France is" \
  --max-tokens 1
checks=$((checks + 1))
grep -q nan "${work}/err.txt" && fail "generate --max-tokens 1 prints nan: $(cat "${work}/err.txt")"

# An LSA budget below its sinks, window and tiers is refused from the lengths, before the
# prefill (which takes tens of seconds at 4K); the message names the parameter and the sizes.
"${kvlab}" trace gen --workload needle --context-tokens 4096 --steps 40 --d-query 4 --d-key 4 \
  --out "${work}/needle.h5" >/dev/null
"${kvlab}" indexer train --traces "${work}/needle.h5" --out "${work}/idx.h5" --window 1024 --tau 16 --stride 8 \
  --depth 0 --dim 4 --epochs 1 --threads 1 >/dev/null 2>&1 || fail "indexer train for the fit check"
expect 2 "policy lsa: parameter 'budget' (512 tokens at step 0) is smaller than sinks + window + summary and index tiers (1249 tokens)" \
  -- run --model "${model}" --context-tokens 4096 --samples 1 --max-tokens 8 \
  --policy "lsa:indexer=${work}/idx.h5,budget=512,window=1024"

echo "live_cli_test: ${checks} checks, ${failures} failures"
[[ ${failures} -eq 0 ]]
