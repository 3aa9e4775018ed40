#!/usr/bin/env python3
"""Writes OUT/REPORT.md (and, with matplotlib, OUT/pareto_*.png) from experiments/lsa/run_all.sh output,
or from a `kvlab sweep` of experiments/lsa/study.toml (or study_quick.toml).

usage: python3 analysis/lsa_report.py [OUT]   (default results/lsa: run_all.sh's OUT)
       python3 analysis/lsa_report.py --sweep DIR [OUT]
         DIR/results.json: the sweep's merged cells; DIR/eval/*.json and DIR/ablation/eval_*.json:
         `kvlab indexer eval --json` of the study's indexers (experiments/lsa/run_study_sharded.sh
         writes them); OUT (default DIR) gets REPORT.md and keeps its timing.json (run_all.sh's
         steps 3 and 8: times, not cells of the grid) when it has one.

Standard library only; matplotlib is optional and used for the Pareto plots when importable.
"""
import importlib.util
import json
import re
import sys
from pathlib import Path

FAMILIES = ["full", "sliding_window", "random", "oracle_topk", "lsa_oracle", "lsa"]
ORACLES = {"oracle_topk", "lsa_oracle"}
SINGLES = ["local", "needle", "multi_needle", "multi_hop", "diffuse"]
# experiments/lsa/run_all.sh step 9: each variant changes one thing against the study's indexer.
ABLATION = [
    ("study", "the study's indexer: linear towers, query pool 8, 300 requests per remote workload at 32K"),
    ("pool1", "query pool 1 (the refresh step's own query)"),
    ("small", "40 requests per remote workload at 32K"),
    ("small_pool1", "40 per remote workload and query pool 1 (the first study's recipe)"),
    ("small_mlp", "40 per remote workload, MLP towers (depth 2, width 256, lr 0.001), no skip path"),
    ("small_mlp_skip", "as small_mlp, with linear skip paths (--skip on)"),
]


# study.toml's artifact names of the ablation's indexers -> the variants above.
ABLATION_ARTIFACTS = {"indexer": "study", **{f"indexer_{v}": v for v, _ in ABLATION[1:]}}


def make_study():
    """experiments/lsa/make_study.py as a module: the sizes and windows the study's cells were written with."""
    path = Path(__file__).resolve().parent.parent / "experiments" / "lsa" / "make_study.py"
    spec = importlib.util.spec_from_file_location("make_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def indexer_artifact(spec):
    """The study artifact an lsa spec's indexer is (…/artifacts/NAME.h5 -> NAME)."""
    m = re.search(r"indexer=[^,]*/([^/,]+)\.h5", spec)
    return m.group(1) if m else None


def sweep_groups(rows, kind):
    """run_all.sh's replay files ({name: rows}) from a sweep's cells, and the budget fractions: sweep_SOURCE
    (step 5), headline_mix_N (step 6), tau_SOURCE (step 7) and ablation_SOURCE (step 9). A cell can be in
    several (lsa at 10% with tau 64 is a point of the budget sweep and of the tau sweep), as in run_all.sh."""
    ms = make_study()
    size = ms.SIZES[kind]
    fractions, n1 = size["fractions"], size["single_ctx"]
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)

    def num(r, key):
        v = param(r["policy"], key)
        return None if v is None else float(v)

    def is_point(r, f, n):
        """r is the budget-sweep (or headline) cell of its family at footprint fraction f on context n."""
        fam = family(r["policy"])
        if fam == "full":
            return True
        if fam == "sliding_window":
            return num(r, "window") == ms.sw_window(f, n)
        if fam in ("random", "oracle_topk"):
            return num(r, "budget") == f
        if fam in ("lsa_oracle", "lsa"):
            return (num(r, "budget") == f and num(r, "window") == ms.lsa_window(f, n) and num(r, "tau") == 64
                    and (fam == "lsa_oracle" or indexer_artifact(r["policy"]) == "indexer"))
        return False

    def in_order(rs):
        return sorted(rs, key=lambda r: FAMILIES.index(family(r["policy"])))

    groups = {}
    for src, rs in by_source.items():
        n = int(src.rsplit("_", 1)[1])
        groups[f"sweep_{src}"] = [r for r in rs if any(is_point(r, f, n) for f in fractions)]
        if src.startswith("mix_"):
            f = ms.HEADLINE.get(n, 0.03)
            groups[f"headline_{src}"] = in_order(r for r in rs if is_point(r, f, n))
    for src in (f"mix_{n1}", f"multi_needle_{n1}"):
        groups[f"tau_{src}"] = [r for r in by_source.get(src, []) if family(r["policy"]) == "lsa"
                                and num(r, "budget") == 0.1 and num(r, "window") == ms.lsa_window(0.1, n1)
                                and indexer_artifact(r["policy"]) == "indexer"]
    for w in ms.REMOTE:
        groups[f"ablation_{w}_{n1}"] = [r for r in by_source.get(f"{w}_{n1}", []) if family(r["policy"]) == "lsa"
                                        and num(r, "budget") == 0.15 and num(r, "window") == ms.lsa_window(0.15, n1)
                                        and num(r, "tau") == 64]
    return {k: v for k, v in groups.items() if v}, fractions


def load(path):
    with open(path) as f:
        return json.load(f)


def family(spec):
    return spec.split(":", 1)[0]


def param(spec, key):
    m = re.search(r"[:,]" + key + r"=([^,]+)", spec)
    return m.group(1) if m else None


def ctx_label(n):
    n = int(n)
    return f"{n // 1048576}M" if n % 1048576 == 0 else f"{n // 1024}K"


def fraction_of(row, fractions):
    """The sweep point a row belongs to: its budget, or (sliding_window) the nearest footprint."""
    b = param(row["policy"], "budget")
    if b is not None:
        return float(b)
    return min(fractions, key=lambda f: abs(f - row["footprint_mean_ratio"]))


def short_spec(spec):
    """The policy spec without the indexer path and default-valued noise."""
    spec = re.sub(r"indexer=[^,]*,?", "", spec)
    spec = re.sub(r"(index_dtype_bytes|critical_mass|summary_ratio|per_row|seed)=[^,]*,?", "", spec)
    return spec.rstrip(",:")


def fmt_bytes(b):
    for unit in ["B", "KB", "MB", "GB", "TB"]:
        if abs(b) < 1000 or unit == "TB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.2f} {unit}"
        b /= 1000.0
    return str(b)


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def resolved_cell(r, key, count_key):
    """'0.800 (of 5)' from a result's resolved fields; '–' for results written before them."""
    v = r.get(key)
    if v is None:
        return "–"
    return f"{v:.3f} (of {r[count_key]})" if count_key else f"{v:.3f}"


def policy_table(rows):
    body = []
    for r in rows:
        name = short_spec(r["policy"]) + (" (oracle)" if r.get("oracle") else "")
        body.append([name, f"{r['footprint_mean_ratio']:.3f}", f"{r['critical_recall']:.4f}", f"{r['mass_recall']:.4f}",
                     resolved_cell(r, "resolved_fraction", None),
                     resolved_cell(r, "remote_resolved_fraction", "remote_requests"),
                     fmt_bytes(r["fetch_bytes"]), r["late_fetches"]])
    return table(["policy", "footprint", "critical recall", "mass recall", "resolved", "remote resolved", "fetch bytes",
                  "late fetches"], body)


def sweep_grid(rows, fractions):
    """{family: {fraction: row}}; full under fraction 1.0."""
    grid = {f: {} for f in FAMILIES}
    for r in rows:
        fam = family(r["policy"])
        if fam == "full":
            grid[fam][1.0] = r
        elif fam in grid:
            grid[fam][fraction_of(r, fractions)] = r
    return grid


def sweep_table(grid, fractions, metric):
    header = ["footprint target"] + [f + (" †" if f in ORACLES else "") for f in FAMILIES[1:]]
    body = []
    for f in fractions:
        line = [f"{f:.0%}"]
        for fam in FAMILIES[1:]:
            r = grid[fam].get(f)
            line.append(f"{r[metric]:.4f} ({r['footprint_mean_ratio']:.3f})" if r else "–")
        body.append(line)
    return table(header, body)


def pareto_frontier(grid, metric):
    """The deployable (non-oracle) points no other deployable point beats on both footprint and
    `metric`, by increasing footprint: [(footprint, value, family)]."""
    pts = [(r["footprint_mean_ratio"], r[metric], fam) for fam in FAMILIES if fam not in ORACLES
           for r in grid[fam].values()]
    frontier = []
    for fp, v, fam in sorted(pts, key=lambda p: (p[0], -p[1])):
        if not frontier or v > frontier[-1][1]:
            frontier.append((fp, v, fam))
    return frontier


def frontier_line(grid, metric):
    return "Pareto frontier (deployable policies): " + ", ".join(
        f"{fam} {v:.4f} at {fp:.3f}" for fp, v, fam in pareto_frontier(grid, metric))


def plot(name, title, grid, out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ["critical_recall", "mass_recall"]):
        for fam in FAMILIES:
            pts = sorted((r["footprint_mean_ratio"], r[metric]) for r in grid[fam].values())
            if not pts:
                continue
            style = "--" if fam in ORACLES else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=fam + (" (oracle)" if fam in ORACLES else ""))
        front = pareto_frontier(grid, metric)
        ax.step([p[0] for p in front], [p[1] for p in front], "k:", where="post", linewidth=2.5, alpha=0.5,
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


def ablation_section(eval_dir, replay):
    """Critical recall of lsa at 15% per indexer variant and workload, and the indexer's recall@128."""
    keys = sorted(k for k in replay if k.startswith("ablation_"))
    if not keys:
        return []
    workloads = [k[len("ablation_"):k.rfind("_")] for k in keys]
    def variant(spec):  # run_all.sh's ablation/NAME.h5, or the sweep's artifacts/indexer_NAME.h5
        name = indexer_artifact(spec)
        return ABLATION_ARTIFACTS.get(name, name)
    recall = {(variant(r["policy"]), wl): r for k, wl in zip(keys, workloads) for r in replay[k]}
    rows, eval_rows = [], []
    for name, what in ABLATION:
        if not any((name, wl) in recall for wl in workloads):
            continue
        rows.append([f"`{name}`", what] + [f"{recall[(name, wl)]['critical_recall']:.4f}" if (name, wl) in recall else "–"
                                           for wl in workloads])
        line = [f"`{name}`"]
        for wl in workloads:
            p = eval_dir / f"eval_{name}_{wl}.json"
            line.append(f"{load(p)['recall@128']:.3f}" if p.exists() else "–")
        eval_rows.append(line)
    n = int(keys[0].rsplit("_", 1)[1])
    return ["## 5. Indexer recipe (ablation)", "",
            f"lsa at a 15% budget on the held-out single workloads at {ctx_label(n)} tokens, one indexer per row; each "
            "variant changes one thing against the study's indexer (`experiments/lsa/run_all.sh`, step 9). Critical recall:", "",
            table(["variant", "what changes"] + workloads, rows), "",
            "The indexer alone (`kvlab indexer eval`): recall@128 of the lookahead-critical remote chunks:", "",
            table(["variant"] + workloads, eval_rows), ""]


def timing_lines(timing):
    """The speed targets (run_all.sh's steps 2, 3 and 8)."""
    lines = []
    st = timing["speed_train"]
    lines.append(f"- training speed: {st['requests']} mix requests × {ctx_label(st['context'])} × {st['steps']} steps, "
                 f"{st['epochs']} epochs: {st['seconds']:.0f} s, {st['refresh_points_per_s']} refresh points/s, "
                 f"{st['candidates_per_s']} candidates/s (target < 600 s: {check(st['seconds'] < 600)})")
    lines.append(f"- LSA indexer training (study model): {timing['train_seconds']:.0f} s, "
                 f"{timing['train_refresh_points_per_s']} refresh points/s, {timing['train_candidates_per_s']} candidates/s")
    rp = timing["replay_1m"]
    ratio = rp["lsa_s"] / rp["sliding_window_s"]
    lines.append(f"- 1M-token replay ({rp['steps']} steps, --threads 1): sliding_window {rp['sliding_window_s']:.2f} s, "
                 f"lsa {rp['lsa_s']:.2f} s, ratio {ratio:.2f} (target ≤ 3: {check(ratio <= 3)})")
    return lines


def check(ok):
    return "**met**" if ok else "**not met**"


def load_run_all(out):
    """run_all.sh's OUT: (replay files {name: rows}, timing, eval folder, ablation eval folder, source line)."""
    if not (out / "timing.json").exists():
        sys.exit(f"lsa_report.py: {out}/timing.json missing: run experiments/lsa/run_all.sh first")
    timing = load(out / "timing.json")
    replay = {p.stem: load(p) for p in sorted((out / "replay").glob("*.json"))}
    made_by = f"`{out}` ({'quick' if timing['quick'] else 'full'} run of `experiments/lsa/run_all.sh`)"
    return replay, timing, timing["sweep_fractions"], out / "eval", out / "ablation", made_by


def load_sweep(sweep_dir, out):
    """The same from a sweep of study.toml / study_quick.toml: its merged cells regrouped as run_all.sh's replay
    files; times from OUT/timing.json when there (the sweep has no timing steps)."""
    path = sweep_dir / "results.json"
    if not path.exists():
        sys.exit(f"lsa_report.py: {path} missing: run kvlab sweep (experiments/lsa/run_study_sharded.sh) first")
    rows = load(path)
    kind = "full" if any(r["source"].endswith("_1048576") for r in rows) else "quick"
    replay, fractions = sweep_groups(rows, kind)
    timing = load(out / "timing.json") if (out / "timing.json").exists() else None
    study = "study.toml" if kind == "full" else "study_quick.toml"
    made_by = (f"`kvlab sweep --config experiments/lsa/{study}` ({len(rows)} cells, `{path}`; indexer evals in "
               f"`{sweep_dir}/eval`, `{sweep_dir}/ablation`)")
    if timing is not None:
        made_by += f"; times from `{out}/timing.json` (`experiments/lsa/run_all.sh`'s steps 2, 3 and 8, not re-measured)"
    return replay, timing, fractions, sweep_dir / "eval", sweep_dir / "ablation", made_by


def main():
    args = sys.argv[1:]
    if args and args[0] == "--sweep":
        if len(args) < 2:
            sys.exit("lsa_report.py: --sweep needs the sweep's output folder (usage: --sweep DIR [OUT])")
        sweep_dir = Path(args[1])
        out = Path(args[2]) if len(args) > 2 else sweep_dir
        replay, timing, fractions, eval_dir, ablation_dir, made_by = load_sweep(sweep_dir, out)
    else:
        out = Path(args[0] if args else "results/lsa")
        replay, timing, fractions, eval_dir, ablation_dir, made_by = load_run_all(out)
    md = ["# LSA results", "", f"Generated by `analysis/lsa_report.py` from {made_by}. All test traces use seeds "
          "1001+ (train seeds 1-5). † = oracle (reads the true future attention; an upper bound, not a result). "
          "Footprint = mean (KV + summary tier + index) bytes / full KV bytes. Resolved = share of requests whose "
          "critical recall is >= 0.95 at 99% of their steps (README, \"Resolved requests\"); remote = mix's "
          "non-local requests.", ""]

    # ---- headline -------------------------------------------------------------------------
    heads = sorted((k for k in replay if k.startswith("headline_mix_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    md += ["## 1. Headline: LSA's operating point per context (mix workload)", ""]
    lsa_points = []
    for k in heads:
        n = int(k.rsplit("_", 1)[1])
        md += [f"### mix, {ctx_label(n)} tokens", "", policy_table(replay[k]), ""]
        lsa = next(r for r in replay[k] if family(r["policy"]) == "lsa")
        lsa_points.append((n, lsa))
    if lsa_points:
        mean_fp = sum(r["footprint_mean_ratio"] for _, r in lsa_points) / len(lsa_points)
        mean_cr = sum(r["critical_recall"] for _, r in lsa_points) / len(lsa_points)
        mean_mr = sum(r["mass_recall"] for _, r in lsa_points) / len(lsa_points)
        md += [table(["context", "LSA budget", "LSA window", "footprint", "critical recall", "mass recall"],
                     [[ctx_label(n), param(r["policy"], "budget"), param(r["policy"], "window"),
                       f"{r['footprint_mean_ratio']:.3f}", f"{r['critical_recall']:.4f}", f"{r['mass_recall']:.4f}"]
                      for n, r in lsa_points]
                     + [["**mean**", "", "", f"**{mean_fp:.3f}**", f"**{mean_cr:.4f}**", f"**{mean_mr:.4f}**"]]), ""]

    # ---- sweeps ---------------------------------------------------------------------------
    md += ["## 2. Footprint vs recall at matched footprints (budget sweep)", "",
           "Each cell: metric (measured mean footprint). sliding_window (sinks 64) is matched through its window; "
           "LSA's window is 85% of what the budget leaves after sinks and the summary tier, capped at 8192.", ""]
    sweeps = [k for k in replay if k.startswith("sweep_")]
    order = sorted((k for k in sweeps if k.startswith("sweep_mix_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    order += [k for w in SINGLES for k in sweeps if k.startswith(f"sweep_{w}_") and k not in order]
    grids = {}
    for k in order:
        n = int(k.rsplit("_", 1)[1])
        wl = k[len("sweep_"):k.rfind("_")]
        grid = grids[k] = sweep_grid(replay[k], fractions)
        title = f"{wl}, {ctx_label(n)} tokens"
        md += [f"### {title}", "", "Critical recall:", "", sweep_table(grid, fractions, "critical_recall"), "",
               frontier_line(grid, "critical_recall"), "",
               "Mass recall:", "", sweep_table(grid, fractions, "mass_recall"), "", frontier_line(grid, "mass_recall"), ""]
        png = plot(k[len("sweep_"):], title, grid, out)
        if png:
            md += [f"![{title}]({png})", ""]

    # ---- tau sweep ------------------------------------------------------------------------
    md += ["## 3. τ sweep (lsa, 10% budget)", ""]
    for k in sorted(k for k in replay if k.startswith("tau_")):
        rows = sorted(replay[k], key=lambda r: int(param(r["policy"], "tau")))
        md += [f"### {k[len('tau_'):]}", "",
               table(["tau", "footprint", "critical recall", "mass recall", "fetch bytes", "late fetches"],
                     [[param(r["policy"], "tau"), f"{r['footprint_mean_ratio']:.3f}", f"{r['critical_recall']:.4f}",
                       f"{r['mass_recall']:.4f}", fmt_bytes(r["fetch_bytes"]), r["late_fetches"]] for r in rows]), ""]

    # ---- indexer --------------------------------------------------------------------------
    evals = {p.stem: load(p) for p in sorted(eval_dir.glob("*.json"))}
    if evals:
        ks = sorted({int(k.split("@")[1]) for e in evals.values() for k in e if k.startswith("recall@")})
        md += ["## 4. Indexer alone (held-out traces, `kvlab indexer eval`)", "",
               "Fraction of lookahead-critical chunks (outside sinks and the window the labels use) in the indexer's top k.", "",
               table(["trace", "candidates/refresh", "positives"] + [f"recall@{k}" for k in ks],
                     [[name, f"{e['candidates_per_group']:.0f}", e["positives"]] + [f"{e[f'recall@{k}']:.3f}" for k in ks]
                      for name, e in evals.items()]), ""]

    # ---- ablation -------------------------------------------------------------------------
    md += ablation_section(ablation_dir, replay)

    # ---- targets --------------------------------------------------------------------------
    md += ["## 6. Targets", ""]
    lines = []
    for n, r in lsa_points:
        fp, cr = r["footprint_mean_ratio"], r["critical_recall"]
        lines.append(f"- mix {ctx_label(n)}: LSA footprint {fp:.3f}, critical recall {cr:.4f} "
                     f"(target ≥ 0.95 at ≤ 15%: {check(fp <= 0.15 and cr >= 0.95)})")
    if lsa_points:
        lines.append(f"- mean LSA footprint over the mix contexts: {mean_fp:.3f} (paper: 0.135), mean critical recall {mean_cr:.4f}")
    for n, r in lsa_points:
        if n >= 500000 and n < 600000:
            lines.append(f"- footprint at {ctx_label(n)}: {r['footprint_mean_ratio']:.3f} of full "
                         f"(target < 10%: {check(r['footprint_mean_ratio'] < 0.10)})")
    for k in order:
        if k.startswith("sweep_mix_"):
            continue
        grid = grids[k]
        ok15 = [f for f in fractions if f <= 0.15 and f in grid["lsa"]]
        if ok15:
            f = max(ok15)
            cr = grid["lsa"][f]["critical_recall"]
            lines.append(f"- {k[len('sweep_'):]}: LSA critical recall {cr:.4f} at {grid['lsa'][f]['footprint_mean_ratio']:.3f} "
                         f"(target ≥ 0.9: {check(cr >= 0.9)})")
        beats = []
        for f in fractions:
            l, s, rnd = (grid[x].get(f) for x in ("lsa", "sliding_window", "random"))
            if l and s and rnd:
                beats.append(f"{f:.0%}: lsa {l['critical_recall']:.3f} vs sw {s['critical_recall']:.3f} / random {rnd['critical_recall']:.3f}"
                             + (" ✓" if l["critical_recall"] > s["critical_recall"] and l["critical_recall"] > rnd["critical_recall"] else " ✗"))
        if beats:
            lines.append(f"  - vs sliding_window and random at equal footprint: " + "; ".join(beats))
    if timing is not None:
        lines += timing_lines(timing)
    md += lines + [""]
    (out / "REPORT.md").write_text("\n".join(md))
    print(f"wrote {out / 'REPORT.md'}")


if __name__ == "__main__":
    main()
