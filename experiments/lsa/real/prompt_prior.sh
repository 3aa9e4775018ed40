#!/usr/bin/env bash
# LSA with a prompt prior (issue #11, item 5: where LSA misses, niah_multikey above all, SnapKV's
# prefill observation finds the needles): `lsa:prompt_prior=true,prior_share=S` fills S of every
# refresh's selection with the prompt chunks the prefill observation attends most, the rest by
# the indexer. Records SAMPLES requests per task (seed SEED: 1, prompts disjoint from the live
# tables' seed 0 and from the indexer's training seeds 1000 and 2000) at CONTEXT tokens, then
# replays, on each recording, lsa at every share in SHARES beside plain lsa, snapkv, pyramidkv, h2o
# and sliding_window at the zoo's footprint, and a ladder of ceilings: oracle_topk (each row its
# step's true top chunks), lsa_oracle per layer refreshed every step, per layer every τ = 16
# steps, one set for all layers every τ (LSA's design), and that with the prior. OUT/summary.md:
# critical recall, mass recall and footprint per task and policy.
#
#   experiments/lsa/real/prompt_prior.sh [OUT]
# Environment: BACKEND (cpu; cuda on the H200), CONTEXT (4096), SAMPLES (4), SEED (1), STEPS (32),
# TASKS (the six), SHARES ("0.25 0.5 0.75 1"), BUDGET (0.18: LSA's budget that gives the zoo's
# ~14% footprint at 4K with window 64), ZOO_BUDGET (0.15), INDEXER (indexer_real_1008.h5),
# THREADS (all cores). On this machine's 2 cores: ~35 s a 4K recording, ~15 min in all.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../../gpu/live_env.sh"
out="${1:-${OUT:-results/lsa_prompt_prior}}"
work="${WORK:-/tmp/kvlab_prompt_prior}"
backend="${BACKEND:-cpu}"
context="${CONTEXT:-4096}"
samples="${SAMPLES:-4}"
seed="${SEED:-1}"
steps="${STEPS:-32}"
tasks="${TASKS:-niah_single niah_multikey niah_multivalue vt cwe fwe}"
shares="${SHARES:-0.25 0.5 0.75 1}"
budget="${BUDGET:-0.18}"
zoo_budget="${ZOO_BUDGET:-0.15}"
indexer="${INDEXER:-$here/results/indexer_real_1008.h5}"
threads="${THREADS:-$(nproc)}"
[[ -x "$K" ]] || { echo "prompt_prior: $K missing" >&2; exit 1; }
[[ -f "$indexer" ]] || { echo "prompt_prior: INDEXER $indexer missing" >&2; exit 1; }
[[ -f "$model" ]] || { echo "prompt_prior: $model missing (scripts/fetch-model.sh)" >&2; exit 1; }
mkdir -p "$out/logs" "$out/replay" "$work"
t0=$(date +%s)
el() { echo "[$(($(date +%s) - t0)) s] $*"; }

for t in $tasks; do
  [[ -f "$work/$t.h5" ]] && continue
  "$K" record --model "$model" --backend "$backend" --task "$t" --context-tokens "$context" --samples "$samples" \
    --seed "$seed" --steps "$steps" --out "$work/$t.h5" >"$out/logs/record_$t.log" 2>&1 ||
    { echo "prompt_prior: record $t failed: $(tail -n 1 "$out/logs/record_$t.log")" >&2; exit 1; }
  el "recorded $t"
done

base="window=64,sinks=64,budget=$budget"
lsa="$base,tau=16"
policies=(--policy "sliding_window:window=$(python3 -c "print(int($context * $zoo_budget) - 64)"),sinks=64"
          --policy "snapkv:budget=$zoo_budget" --policy "pyramidkv:budget=$zoo_budget" --policy "h2o:budget=$zoo_budget"
          --policy "oracle_topk:budget=$zoo_budget" --policy "lsa_oracle:$base,tau=1,share=layer"
          --policy "lsa_oracle:$lsa,share=layer" --policy "lsa_oracle:$lsa" --policy "lsa_oracle:$lsa,prompt_prior=true"
          --policy "lsa:indexer=$indexer,$lsa")
for s in $shares; do policies+=(--policy "lsa:indexer=$indexer,$lsa,prompt_prior=true,prior_share=$s"); done
for t in $tasks; do
  "$K" replay --trace "$work/$t.h5" "${policies[@]}" --threads "$threads" --json --out-dir "$out/replay/$t" \
    >"$out/logs/replay_$t.log" 2>&1 || { echo "prompt_prior: replay $t failed: $(tail -n 1 "$out/logs/replay_$t.log")" >&2; exit 1; }
done
el replayed
python3 - "$out" $tasks >"$out/summary.md" <<'PY'
import json, os, re, sys
out, tasks = sys.argv[1], sys.argv[2:]
def short(policy):  # a column name: the policy and the settings this study varies
    name = policy.split(":")[0]
    share = re.search(r"prior_share=([0-9.]+)", policy)
    if "prompt_prior=true" in policy:
        name += f" prior {share.group(1) if share else '0.5'}"
    if "share=layer" in policy:
        name += " per layer"
    if name.startswith("lsa_oracle") and re.search(r"tau=1(,|$)", policy):
        name += " τ=1"
    return name
results = {t: json.load(open(os.path.join(out, "replay", t, "results.json"))) for t in tasks}
columns = [short(r["policy"]) for r in results[tasks[0]]]
for metric, title in (("critical_recall", "critical recall"), ("mass_recall", "mass recall"), ("footprint_mean_ratio", "footprint")):
    print(f"**{title}**\n")
    print("| task | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    means = [0.0] * len(columns)
    for t in tasks:
        row = [r[metric] for r in results[t]]
        means = [m + v / len(tasks) for m, v in zip(means, row)]
        print(f"| {t} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    print("| mean | " + " | ".join(f"{v:.3f}" for v in means) + " |\n")
PY
cat "$out/summary.md"
el done
