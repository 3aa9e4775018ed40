#!/usr/bin/env bash
# The zoo live on the CPU: every zoo policy at about 15% footprint (and full attention as the
# reference) on niah_single and vt, closed loop on SmolLM2-135M: accuracy, KL against full and
# top-1 agreement (teacher-forced), footprint and recall. Small by design (the CPU decoder on two
# shared cores); the GPU table is experiments/gpu/live_table.sh.
#
# usage: experiments/zoo/live_cpu.sh [OUT] [CONTEXT] [SAMPLES]   (default results/zoo_live_4k 4096 4)
# Prints the markdown table (experiments/zoo/live_cpu_4k.md holds the committed one).
set -euo pipefail
KVLAB=${KVLAB:-build/bin/kvlab}
OUT=${1:-results/zoo_live_4k}
CTX=${2:-4096}
SAMPLES=${3:-4}
B=0.15
mkdir -p "$OUT"
window=$(python3 -c "print(int($B*$CTX/4))")  # InfLLM: sinks 64, a quarter of the budget as window
# h2o and tova with their prompt scores (the default) and without (prompt_scores=false, the ablation)
policies=(--policy full --policy h2o:budget=$B --policy tova:budget=$B --policy quest:budget=$B
          --policy h2o:budget=$B,prompt_scores=false --policy tova:budget=$B,prompt_scores=false
          --policy "infllm:budget=$B,sinks=64,window=$window" --policy snapkv:budget=$B
          --policy pyramidkv:budget=$B --policy ada_kv:budget=$B)
for task in niah_single vt; do
  [[ -s "$OUT/$task.json" ]] || "$KVLAB" run --task "$task" --context-tokens "$CTX" --samples "$SAMPLES" \
    --threads "${THREADS:-2}" "${policies[@]}" --json --out-dir "$OUT/$task" > "$OUT/$task.json" 2> "$OUT/$task.log"
done
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| task | policy | accuracy | footprint | critical recall | mass recall | KL(full ‖ p) | top-1 agreement |")
print("|---|---|---|---|---|---|---|---|")
for task in ["niah_single", "vt"]:
    path = out / f"{task}.json"
    if not path.exists() or not path.stat().st_size:
        continue
    for r in json.loads(path.read_text()):
        name = r['policy'].split(':')[0] + (" (prompt_scores=false)" if "prompt_scores=false" in r['policy'] else "")
        print(f"| {task} | {name} | {r['accuracy']:.2f} | {r['footprint_mean_ratio']:.3f} | "
              f"{r['critical_recall']:.3f} | {r['mass_recall']:.3f} | {r['kl_mean']:.3f} | {r['top1_agreement']:.3f} |")
PY
