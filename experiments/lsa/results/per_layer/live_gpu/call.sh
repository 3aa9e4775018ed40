#!/usr/bin/env bash
# Visit 4, call 3: per-layer selection live (held out: the indexers of the layers study, trained
# on seeds 1000/2000, run on seed 0), shared set against one set per layer, on the GPU decoder.
set -u
cd /tmp/kv || { echo "machine went cold: /tmp/kv missing"; exit 3; }
cat /tmp/kvlab_model/b1 $OLDPWD/.carry/b2/b > /tmp/kvlab_model/b && bash scripts/device-model.sh join || exit 4
export LD_LIBRARY_PATH=$PWD/build/lib KVLAB_SOURCE_DIR=$PWD OMP_WAIT_POLICY=passive
M=$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf
O=$OUT/x3; mkdir -p $O
L="budget=0.15,window=64,sinks=64,tau=16"
for task in niah_multikey niah_single; do
  timeout 100 build/bin/kvlab run --backend cuda --model $M --task $task --context-tokens 4096 --samples 100 --batch 64 \
    --max-tokens 16 --feature-layers 15,8,22 --policy full --policy lsa:indexer=idx/l15.h5,$L \
    --policy lsa:indexer=idx/max.h5,$L --policy lsa:indexer=idx/max.h5,$L,share=layer \
    --json --out-dir $O/$task > $O/$task.json 2> $O/$task.log; echo "$task rc=$?"
  python3 - $O/$task.json <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    print(f"{r['policy'][:70]:70s} acc {r.get('accuracy', float('nan')):.2f} fp {r['footprint_mean_ratio']:.3f} crit {r['critical_recall']:.3f} KL {r.get('kl_mean') or 0:.3f}")
PY
done
cd $OUT && tar czf x3.tgz x3 && rm -rf x3
