#!/usr/bin/env python3
"""Writes OUT/REPORT.md from experiments/fidelity/run.sh output: per task and context, every
policy's footprint, critical recall and mass recall from replay of the recording (made under
full attention) and measured live on the same prompts, the difference live − replay, and the
steps each covered; then the largest difference per policy over all tasks.

usage: python3 analysis/fidelity_report.py [OUT] [--goal 0.02]   (default results/fidelity)

Standard library only. Exits 1 with one line when OUT holds no replay results. A policy whose
live run failed (its .log says why) shows n/a.
"""
import json
import re
import sys
from pathlib import Path

from lsa_report import table


def ctx_label(n):
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def family(row):
    """A row's label: the policy's name, and its ablation where one family runs in two variants
    (h2o and tova with and without their prompt scores)."""
    name = row["policy"].split(":", 1)[0]
    return name + " (prompt_scores=false)" if "prompt_scores=false" in row["policy"] else name


def load_pairs(out):
    """[(task, ctx, {family: (replay_row, live_row or None)})], sorted by task and context.

    Results come as <task>_<ctx>_replay[_<group>].json and <task>_<ctx>_live[_<group>].json
    (run.sh runs its policy groups apart); a family with no live row ran on replay only."""
    found = {}
    for path in sorted(out.glob("*.json")):
        m = re.match(r"(.+)_(\d+)_(replay|live)(_\w+)?\.json$", path.name)
        if not m:
            continue
        try:
            rows = json.loads(path.read_text())
            by_family = {family(r): r for r in rows}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            sys.exit(f"fidelity_report: {path}: not kvlab --json output ({e})")
        found.setdefault((m.group(1), int(m.group(2))), {"replay": {}, "live": {}})[m.group(3)].update(by_family)
    pairs = []
    for (task, ctx), sides in sorted(found.items()):
        both = {f: (r, sides["live"].get(f)) for f, r in sides["replay"].items()}
        if both:
            pairs.append((task, ctx, both))
    return pairs


def mark(delta, goal):
    return f"{delta:+.3f}" + ("" if abs(delta) <= goal else " ✗")


def forced(live):
    """The teacher-forced figures of a live row (None when the run had --agreement off)."""
    return live.get("teacher_forced") or None


def task_table(both, goal):
    header = ["policy", "footprint replay / live / forced", "critical recall replay", "live", "Δ", "forced", "Δ forced",
              "mass recall replay", "live", "Δ", "forced", "Δ forced", "steps replay / live / forced", "KL(full ‖ p)", "accuracy live"]
    body = []
    for fam, (r, l) in both.items():
        if l is None:
            body.append([fam, f"{r['footprint_mean_ratio']:.3f} / n/a / n/a", f"{r['critical_recall']:.3f}"] + ["n/a"] * 4 +
                        [f"{r['mass_recall']:.3f}"] + ["n/a"] * 4 + [f"{r['steps']} / n/a / n/a", "n/a", "n/a"])
            continue
        f = forced(l)
        cells = [fam, f"{r['footprint_mean_ratio']:.3f} / {l['footprint_mean_ratio']:.3f} / "
                      + (f"{f['footprint_mean_ratio']:.3f}" if f else "n/a")]
        for metric in ("critical_recall", "mass_recall"):
            cells += [f"{r[metric]:.3f}", f"{l[metric]:.3f}", mark(l[metric] - r[metric], goal)]
            cells += [f"{f[metric]:.3f}", mark(f[metric] - r[metric], goal)] if f else ["n/a", "n/a"]
        kl = l.get("kl_mean")
        cells += [f"{r['steps']} / {l['steps']} / {f['steps'] if f else 'n/a'}", "n/a" if kl is None else f"{kl:.3f}",
                  f"{l.get('accuracy', float('nan')):.2f}"]
        body.append(cells)
    return table(header, body)


def summary_table(pairs, goal):
    """Per policy, the difference of largest magnitude over all tasks, free running and forced."""
    worst = {}
    for task, ctx, both in pairs:
        for fam, (r, l) in both.items():
            f = forced(l) if l else None
            w = worst.setdefault(fam, {})
            for key, row in (("live", l), ("forced", f)):
                if row is None:
                    continue
                for metric in ("critical_recall", "mass_recall"):
                    d = row[metric] - r[metric]
                    if abs(d) >= abs(w.get((key, metric), (0.0, ""))[0]):
                        w[(key, metric)] = (d, f"{task} {ctx_label(ctx)}")
    body = []
    for fam, w in worst.items():
        cells = [fam]
        for key in ("live", "forced"):
            for metric in ("critical_recall", "mass_recall"):
                d, where = w.get((key, metric), (None, ""))
                cells.append("n/a" if d is None else f"{mark(d, goal)} ({where})")
        body.append(cells)
    return table(["policy", "Δ critical recall, live", "Δ mass recall, live", "Δ critical recall, forced",
                  "Δ mass recall, forced"], body)


def reach(pairs, goal, kl_cut=0.5):
    """Where replay predicts live: per (policy, cell) with a live run, the critical-recall
    difference teacher-forced and free running, split by how far the policy moves the model
    (KL(full ‖ p) below or above kl_cut). Returns the section's lines."""
    points = []  # (policy, cell, kl, delta forced or None, delta free running)
    for task, ctx, both in pairs:
        for fam, (r, l) in both.items():
            if l is None or l.get("kl_mean") is None:
                continue
            f = forced(l)
            d_forced = f["critical_recall"] - r["critical_recall"] if f else None
            points.append((fam, f"{task} {ctx_label(ctx)}", l["kl_mean"], d_forced,
                           l["critical_recall"] - r["critical_recall"]))
    if not points:
        return []

    def within(ds):
        ds = [d for d in ds if d is not None]
        return f"{sum(abs(d) <= goal for d in ds)} of {len(ds)}"

    def worst(ds):
        ds = [abs(d) for d in ds if d is not None]
        return f"{max(ds):.3f}" if ds else "n/a"

    close = [p for p in points if p[2] < kl_cut]
    far = [p for p in points if p[2] >= kl_cut]
    lines = ["## Where replay predicts live", "",
             f"Critical recall, over the {len(points)} (policy, cell) pairs with a live run: within {goal} of replay "
             f"in {within(p[3] for p in points)} teacher-forced and {within(p[4] for p in points)} free running.", "",
             "| pairs | count | within the goal, forced | largest \|Δ\| forced | within the goal, free running | largest \|Δ\| free running |",
             "|---|---|---|---|---|---|"]
    for name, group in ((f"KL(full ‖ p) < {kl_cut}", close), (f"KL(full ‖ p) ≥ {kl_cut}", far)):
        lines.append(f"| {name} | {len(group)} | {within(p[3] for p in group)} | {worst(p[3] for p in group)} | "
                     f"{within(p[4] for p in group)} | {worst(p[4] for p in group)} |")
    misses = sorted((p for p in points if p[3] is not None and abs(p[3]) > goal), key=lambda p: -abs(p[3]))
    if misses:
        lines += ["", "Teacher-forced misses (policy, cell: Δ, KL): " +
                  "; ".join(f"{p[0]}, {p[1]}: {p[3]:+.3f}, {p[2]:.2f}" for p in misses) + "."]
    return lines + [""]


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    goal = 0.02
    if "--goal" in argv:
        goal = float(argv[argv.index("--goal") + 1])
        args = [a for a in args if a != argv[argv.index("--goal") + 1]]
    out = Path(args[0] if args else "results/fidelity")
    pairs = load_pairs(out)
    if not pairs:
        sys.exit(f"fidelity_report: {out}: no <task>_<context>_replay*.json")
    command = (out / "command.txt").read_text().strip() if (out / "command.txt").exists() else "(no command.txt)"
    lines = ["# Replay against live recall", "",
             "Generated by `experiments/fidelity/run.sh` and `analysis/fidelity_report.py`:", "",
             "```", command, "```", "",
             "Replay: the policy on a trace recorded under full attention (open loop). Live: the same policy "
             "deciding what the model attends to while it generates (closed loop, free running), on the same "
             f"prompts; forced: live again, teacher-forced on full attention's tokens (kvlab run's agreement pass), "
             "so it covers the recording's tokens and steps and differs from replay only through the policy's "
             f"effect on the model's state. Δ = live − replay; ✗ where |Δ| > {goal}. Steps: decode steps covered "
             "(all requests). KL(full ‖ p): kvlab run's mean next-token KL from full attention, teacher-forced "
             "(how far the policy moves the model).", ""]
    for task, ctx, both in pairs:
        lines += [f"## {task}, {ctx_label(ctx)}", "", task_table(both, goal), ""]
    lines += ["## Largest difference per policy (over the tasks above)", "", summary_table(pairs, goal), ""]
    lines += reach(pairs, goal)
    (out / "REPORT.md").write_text("\n".join(lines))
    print(f"wrote {out / 'REPORT.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
