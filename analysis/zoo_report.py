#!/usr/bin/env python3
"""Writes OUT/REPORT.md (and, with matplotlib, OUT/pareto_<workload>_<ctx>.png) from
experiments/zoo/run.sh output: per workload and context, critical recall, mass recall and fetch
bytes of every policy at each budget, and a Pareto plot of footprint against recall (each policy
over the budgets, and the frontier of the deployable ones as a dotted staircase).

usage: python3 analysis/zoo_report.py [OUT]            (run.sh output; default results/zoo)
       python3 analysis/zoo_report.py --sweep DIR [OUT]  (DIR/results.json of a `kvlab sweep` of
                                                         experiments/zoo/study.toml; OUT defaults to DIR)

Standard library only; matplotlib is optional (the plots are skipped without it). Plot style
follows analysis/lsa_report.py.
"""
import json
import re
import sys
from pathlib import Path

from lsa_report import ctx_label, fmt_bytes, table

NO_PROMPT_SCORES = " (prompt_scores=false)"  # h2o's and tova's ablation: decoding-time feedback only
FAMILIES = ["sliding_window", "random", "h2o", "h2o" + NO_PROMPT_SCORES, "tova", "tova" + NO_PROMPT_SCORES, "quest",
            "infllm", "snapkv", "pyramidkv", "ada_kv", "oracle_topk"]
ORACLES = {"oracle_topk"}
BUDGETS = [0.05, 0.1, 0.15, 0.2]


def spec_params(spec):
    """"name:k=v,k=v" -> (name, {k: v})"""
    name, _, params = spec.partition(":")
    return name, dict(p.split("=", 1) for p in params.split(",") if "=" in p)


def family(spec):
    """The row a result belongs to: the policy's name, or for h2o and tova without prompt scores
    (the ablation) the name marked so; both are labelled, never merged."""
    name, kv = spec_params(spec)
    return name + NO_PROMPT_SCORES if kv.get("prompt_scores") == "false" else name


def budget_of(name):
    m = re.search(r"_b([0-9.]+?)(_infllm)?\.json$", name)
    return float(m.group(1)) if m else None


def load_runs(out):
    """{(workload, ctx): {family: {budget: row}}}"""
    runs = {}
    for path in sorted(out.glob("*.json")):
        m = re.match(r"(.+)_(\d+)_(full|b[0-9.]+(_infllm)?)\.json$", path.name)
        if not m:
            continue
        key = (m.group(1), int(m.group(2)))
        grid = runs.setdefault(key, {})
        for row in json.loads(path.read_text()):
            fam = family(row["policy"])
            b = 1.0 if fam == "full" else budget_of(path.name)
            grid.setdefault(fam, {})[b] = row
    return runs


CONTEXT_OF_TAG = {"32k": 32768, "128k": 131072}


def sweep_budget(spec, ctx):
    """The budget a cell's policy was matched to: its budget parameter, or for sliding_window the
    budget whose window (budget x context - sinks, as make_study.py writes it) it has."""
    fam, kv = spec_params(spec)
    if fam == "full":
        return 1.0
    if "budget" in kv:
        return float(kv["budget"])
    if fam == "sliding_window":
        window = int(kv["window"])
        return min(BUDGETS, key=lambda b: abs(max(int(b * ctx) - int(kv.get("sinks", 64)), 0) - window))
    return None


def load_sweep(sweep_dir):
    """The same {(workload, ctx): {family: {budget: row}}} from a sweep's merged results.json
    (one row per cell, with its source)."""
    runs = {}
    for row in json.loads((sweep_dir / "results.json").read_text()):
        source = row["source"].split("/")[-1]  # e.g. local_32k, or real_niah_2k
        workload, _, tag = source.rpartition("_")
        ctx = CONTEXT_OF_TAG.get(tag, 2048)
        if source.startswith("real_niah"):
            workload = "real_niah"
        fam = family(row["policy"])
        b = sweep_budget(row["policy"], ctx)
        if b is not None:
            runs.setdefault((workload, ctx), {}).setdefault(fam, {})[b] = row
    return runs


def metric_table(grid, metric, fmt):
    header = ["policy"] + [f"{b:.0%}" for b in BUDGETS]
    body = []
    for fam in FAMILIES:
        if fam not in grid:
            continue
        cells = [fam + (" †" if fam in ORACLES else "")]
        for b in BUDGETS:
            r = grid[fam].get(b)
            cells.append(f"{fmt(r[metric])} ({r['footprint_mean_ratio']:.3f})" if r else "n/a")
        body.append(cells)
    return table(header, body)


def pareto_frontier(points):
    """The (footprint, recall) points no other point beats on both (less footprint, more recall)."""
    frontier = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not frontier or y > frontier[-1][1]:
            frontier.append((x, y))
    return frontier


def plot(name, title, grid, out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.get_cmap("tab20").colors  # more families than the default cycle's 10 colours
    for ax, metric in zip(axes, ["critical_recall", "mass_recall"]):
        for i, fam in enumerate(FAMILIES):
            pts = sorted((r["footprint_mean_ratio"], r[metric]) for r in grid.get(fam, {}).values())
            if not pts:
                continue
            ablation = fam.endswith(NO_PROMPT_SCORES)
            style = "--" if fam in ORACLES else "-." if ablation else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="x" if ablation else "o",
                    color=colours[(2 * i) % 20 + (i * 2 >= 20)], label=fam + (" (oracle)" if fam in ORACLES else ""))
        frontier = pareto_frontier([(r["footprint_mean_ratio"], r[metric]) for fam in FAMILIES if fam not in ORACLES
                                    for r in grid.get(fam, {}).values()])
        if frontier:
            ax.step([p[0] for p in frontier], [p[1] for p in frontier], "k:", where="post", linewidth=1.2,
                    label="Pareto frontier (deployable)")
        ax.set_xscale("log")
        ax.set_xlabel("mean footprint (fraction of full KV)")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = out_dir / f"pareto_{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def main():
    args = sys.argv[1:]
    if args and args[0] == "--sweep":
        if len(args) < 2:
            sys.exit("zoo_report: --sweep needs the sweep's output folder")
        sweep_dir = Path(args[1])
        out = Path(args[2]) if len(args) > 2 else sweep_dir
        runs = load_sweep(sweep_dir)
        made_by = "`kvlab sweep --config experiments/zoo/study.toml` and `analysis/zoo_report.py --sweep`"
    else:
        out = Path(args[0] if args else "results/zoo")
        runs = load_runs(out)
        made_by = "`experiments/zoo/run.sh` and `analysis/zoo_report.py`"
    if not runs:
        sys.exit(f"zoo_report: no results found under {out}")
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Policy zoo at matched footprints", "",
             f"Generated by {made_by}. Each cell: the metric, then the mean",
             "footprint in parentheses. † = oracle (an upper bound, not deployable). n/a = the policy could not run at",
             "that budget (its fixed part exceeds it; the .err file beside the results says why).",
             "`h2o` and `tova` run with prompt scores (their default, as in the papers);",
             f"`h2o{NO_PROMPT_SCORES}` and `tova{NO_PROMPT_SCORES}` are the ablation without them. A policy missing",
             "from a table could not run on that source (the real trace has no prefill observation or query/key",
             "vectors; the real_niah_*.err files give kvlab's one-line reason).", ""]
    for (workload, ctx), grid in sorted(runs.items()):
        name = f"{workload}_{ctx_label(ctx)}"
        lines += [f"## {workload}, {ctx_label(ctx)}", ""]
        for metric, label, fmt in [("critical_recall", "critical recall", lambda v: f"{v:.3f}"),
                                   ("mass_recall", "mass recall", lambda v: f"{v:.3f}"),
                                   ("fetch_bytes", "fetch bytes", fmt_bytes)]:
            lines += [f"{label}:", "", metric_table(grid, metric, fmt), ""]
        png = plot(name, f"{workload} {ctx_label(ctx)}", grid, out)
        if png:
            lines += [f"![{name}]({png})", ""]
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'REPORT.md'}")


if __name__ == "__main__":
    main()
