#!/usr/bin/env python3
"""Writes the policy zoo study (experiments/zoo/run.sh's replays) as a kvlab sweep config,
study.toml. Windows depend on the budget and the context, so they are computed here with
run.sh's formulas and written into zipped lists scoped to each context's sources.

    python3 experiments/zoo/make_study.py          # rewrites study.toml
    kvlab sweep --config experiments/zoo/study.toml && kvlab report results/zoo_study
    python3 analysis/zoo_report.py --sweep results/zoo_study   # the tables and Pareto plots

Every synthetic workload at 32K and 128K (2 requests x 128 steps, query/key vectors of width
16 and a prefill observation of 32 positions), the zoo and the baselines at budgets 5/10/15/20%,
oracle_topk as the bound, and h2o and tova also without prompt scores (prompt_scores=false, the
ablation); then the shipped real trace (mass only), where the policies that need query/key
vectors or a prefill observation cannot run (kvlab says so; run.sh records it): there h2o and
tova run as the ablation only.
"""
import os

WORKLOADS = ["local", "needle", "multi_needle", "multi_hop", "diffuse"]
CONTEXTS = {32768: "32k", 131072: "128k"}
BUDGETS = [0.05, 0.1, 0.15, 0.2]
SINKS = 64
SHARED = ["random", "oracle_topk", "h2o", "tova", "quest", "snapkv", "pyramidkv", "ada_kv"]
ABLATIONS = {"h2o": {"prompt_scores": False}, "tova": {"prompt_scores": False}}  # need no prefill observation
MASS_ONLY = ["random", "oracle_topk"]
REAL = "traces/data/smollm2_niah_single_2k.h5"


def toml_value(x):
    if isinstance(x, bool):
        return "true" if x else "false"
    return f'"{x}"' if isinstance(x, str) else repr(x)


def toml_list(xs):
    return "[" + ", ".join(toml_value(x) for x in xs) + "]"


def sw_window(b, n):
    return max(int(b * n) - SINKS, 0)


def infllm_window(b, n):
    return int(b * n / 4)


def policy(name, sources, **params):
    out = f"[[policy]]\nname = \"{name}\"\nsources = {toml_list(sources)}\n"
    zipped = [k for k, v in params.items() if isinstance(v, list)]
    for k, v in params.items():
        out += f"{k} = {toml_list(v) if isinstance(v, list) else toml_value(v)}\n"
    if len(zipped) > 1:
        out += f"zip = {toml_list(zipped)}\n"
    return out + "\n"


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    text = [__doc__.strip().replace("\n", "\n# ").join(["# ", ""]) + "\n",
            'out_dir = "results/zoo_study"\n\n[engine]\nthreads = 2\n\n']
    for n, tag in CONTEXTS.items():
        for w in WORKLOADS:
            cmd = ["trace", "gen", "--workload", w, "--context-tokens", str(n), "--steps", "128", "--requests", "2",
                   "--seed", "7", "--features", "off", "--qk-dim", "16", "--prefill-window", "32"]
            text.append(f"[artifact.{w}_{tag}]\ncommand = {toml_list(cmd)}\n")
    text.append("\n")
    for n, tag in CONTEXTS.items():
        text.append(f"[[source]]\nname = \"synthetic_{tag}\"\ntraces = {toml_list(['@' + w + '_' + tag for w in WORKLOADS])}\n\n")
    text.append(f"[[source]]\nname = \"real_niah_2k\"\ntraces = [\"{REAL}\"]\n\n")
    text.append(policy("full", ["*"]))
    for n, tag in CONTEXTS.items():
        src = [f"synthetic_{tag}*"]
        for p in SHARED:
            text.append(policy(p, src, budget=BUDGETS))
        for p, params in ABLATIONS.items():
            text.append(policy(p, src, budget=BUDGETS, **params))
        text.append(policy("sliding_window", src, sinks=SINKS, window=[sw_window(b, n) for b in BUDGETS]))
        text.append(policy("infllm", src, sinks=SINKS, budget=BUDGETS, window=[infllm_window(b, n) for b in BUDGETS]))
    for p in MASS_ONLY:
        text.append(policy(p, ["real_niah_2k*"], budget=BUDGETS))
    for p, params in ABLATIONS.items():
        text.append(policy(p, ["real_niah_2k*"], budget=BUDGETS, **params))
    text.append(policy("sliding_window", ["real_niah_2k*"], sinks=SINKS, window=[sw_window(b, 2048) for b in BUDGETS]))
    with open(os.path.join(here, "study.toml"), "w") as f:
        f.write("".join(text))


if __name__ == "__main__":
    main()
