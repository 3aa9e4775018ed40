#!/usr/bin/env python3
"""Tables of experiments/lsa/train_size/run.sh's outputs: test recall@k per workload and size,
and where each default run's training stands on its validation set (the .out standing table)."""
import json
import os
import re
import sys

out = sys.argv[1]
sizes = sorted({int(m.group(1)) for f in os.listdir(os.path.join(out, "eval"))
                if (m := re.match(r"\w+?_(\d+)_", f))})
workloads = ["needle", "multi_hop", "diffuse"]
ks = [16, 64]
print("Test recall@k (held-out, candidates outside the last 8192 tokens):\n")
print("| training requests | indexer | " + " | ".join(f"{w} @{k}" for w in workloads for k in ks) + " | mean @16 |")
print("|---|---|" + "---|" * (len(workloads) * len(ks) + 1))
for n in sizes:
    for v in ["recipe", "defaults", "earlier", "flagless"]:
        cells, at16 = [], []
        for w in workloads:
            path = os.path.join(out, "eval", f"{v}_{n}_{w}.json")
            if not os.path.exists(path):
                continue
            d = json.load(open(path))
            cells += [f"{d[f'recall@{k}']:.3f}" for k in ks]
            at16.append(d["recall@16"])
        if not at16:
            continue
        mean = f"{sum(at16) / len(at16):.3f}"
        print(f"| {n} | {v} | " + " | ".join(cells) + f" | {mean} |")
print("\nDefaults' training, from each run's report (validation split of its own training set):\n")
for n in sizes:
    path = os.path.join(out, f"defaults_{n}.out")
    if os.path.exists(path):
        print(f"{n} requests:\n```\n" + open(path).read().strip() + "\n```")
